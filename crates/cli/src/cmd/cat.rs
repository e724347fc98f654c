//! `tidemark cat`: print one repository object.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tidemark_core::id::{BlobId, Kind, ObjectId};
use tidemark_core::store::CONFIG_ID;

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct CatArgs {
    /// config, key, snapshot, index, pack, tree or blob.
    pub kind: String,
    /// Object id (a prefix for snapshots; `latest` too).
    pub id: Option<String>,
}

pub fn run(g: &Global, a: &CatArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let store = Arc::clone(repo.store());
    match a.kind.as_str() {
        "config" => {
            std::io::Write::write_all(
                &mut std::io::stdout(),
                &store.get(Kind::Config, &CONFIG_ID, None)?,
            )?;
            outln!()?;
        }
        "key" => {
            let id = parse_object_id("key", a.id.as_ref())?;
            std::io::Write::write_all(&mut std::io::stdout(), &store.get(Kind::Key, &id, None)?)?;
            outln!()?;
        }
        "snapshot" => {
            let (_, s) =
                repo.find_snapshot(a.id.as_deref().context("cat snapshot needs an id")?)?;
            outln!("{}", serde_json::to_string_pretty(&s)?)?;
        }
        "index" => {
            let id = parse_object_id("index", a.id.as_ref())?;
            let packs = tidemark_core::repo::index::open(
                repo.crypto(),
                &id,
                &store.get(Kind::Index, &id, None)?,
            )?;
            let v: Vec<_> = packs
                .iter()
                .map(|(p, e)| json!({"pack": p, "blobs": e}))
                .collect();
            outln!("{}", serde_json::to_string_pretty(&v)?)?;
        }
        "pack" => {
            let id = parse_object_id("pack", a.id.as_ref())?;
            let len = store
                .list(Kind::Pack)?
                .into_iter()
                .find(|(p, _)| *p == id)
                .map(|(_, l)| l)
                .context("no such pack")?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&repo.read_pack_header(&id, len)?)?
            )?;
        }
        "tree" | "blob" => {
            repo.load_index()?;
            let id: BlobId =
                a.id.as_deref()
                    .context("cat tree/blob needs an id")?
                    .parse()
                    .map_err(anyhow::Error::msg)?;
            if a.kind == "tree" {
                outln!("{}", serde_json::to_string_pretty(&repo.load_tree(&id)?)?)?;
            } else {
                std::io::Write::write_all(&mut std::io::stdout(), &repo.read_blob(&id)?)?;
            }
        }
        other => bail!(
            "unknown object kind {other:?}: use config, key, snapshot, index, pack, tree or blob"
        ),
    }
    Ok(Outcome::Ok)
}

fn parse_object_id(kind: &str, id: Option<&String>) -> Result<ObjectId> {
    let id = id.with_context(|| format!("cat {kind} needs an id"))?;
    ObjectId::from_hex(id).with_context(|| format!("{id:?} is not a 64-character hex id"))
}
