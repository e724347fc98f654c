//! `copy` and `init --from-repo`: moving snapshots between repositories.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tidemark_core::repo::Repository;

use crate::args::Global;
use crate::open;
use crate::Outcome;

/// The source repository of `copy` and `init --from-repo`.
#[derive(Debug, Args)]
pub struct FromArgs {
    /// The source repository (a directory).
    #[arg(long, value_name = "REPO", env = "TIDEMARK_FROM_REPOSITORY")]
    pub from_repo: Option<PathBuf>,
    /// Read the source's password from this file (TIDEMARK_FROM_PASSWORD holds it directly).
    #[arg(long, value_name = "FILE", env = "TIDEMARK_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub from: FromArgs,
    /// Snapshots to copy (ids or prefixes, `latest`); default: all.
    pub snapshots: Vec<String>,
    /// Only snapshots from this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots that include this path (repeatable).
    #[arg(long)]
    pub path: Vec<PathBuf>,
}

fn from_password(a: &FromArgs) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if let Some(f) = &a.from_password_file {
        return open::read_password_file(f);
    }
    if let Ok(p) = std::env::var("TIDEMARK_FROM_PASSWORD") {
        return Ok(zeroize::Zeroizing::new(p.into_bytes()));
    }
    if std::io::stdin().is_terminal() {
        return Ok(zeroize::Zeroizing::new(
            rpassword::prompt_password("enter password for the source repository: ")
                .context("reading the password")?
                .into_bytes(),
        ));
    }
    bail!("no password for the source repository: set TIDEMARK_FROM_PASSWORD, TIDEMARK_FROM_PASSWORD_FILE or --from-password-file")
}

/// Opens the source repository named by `a`.
pub fn open_from(g: &Global, a: &FromArgs) -> Result<Repository> {
    let Some(dir) = &a.from_repo else {
        bail!("name the source repository with --from-repo (or TIDEMARK_FROM_REPOSITORY)");
    };
    let fg = Global {
        repo: Some(dir.clone()),
        password_file: None,
        json: g.json,
        quiet: g.quiet,
        no_cache: g.no_cache,
        cache_dir: g.cache_dir.clone(),
        lease_for_testing: g.lease_for_testing,
    };
    let (store, _) = open::store(&fg)?;
    let mut repo = Repository::open(store, &mut || {
        from_password(a)
            .map(open::take)
            .map_err(|e| tidemark_core::Error::Invalid(format!("{e:#}")))
    })
    .with_context(|| format!("opening the source repository {}", dir.display()))?;
    repo.set_cache_dir(open::cache_dir(&fg));
    Ok(repo)
}

/// The source's master key, for `init --from-repo`.
pub fn master_key(g: &Global, a: &FromArgs) -> Result<tidemark_core::crypto::MasterKey> {
    let repo = open_from(g, a)?;
    if !repo.crypto().is_encrypted() {
        bail!("the source repository is not encrypted; --from-repo needs an encrypted one");
    }
    let pw = from_password(a)?;
    Ok(Repository::master_key(&**repo.store(), &pw)?)
}

pub fn run(g: &Global, a: &CopyArgs) -> Result<Outcome> {
    let from = open_from(g, &a.from)?;
    from.load_index().context("loading the source's index")?;
    let mut to = open::open(g)?;
    to.begin_session("copy", &open::hostname())?;
    to.load_index().context("loading the index")?;
    let filter = crate::cmd::snapshot_filter(a.host.as_ref(), &a.path)?;
    let all = from.snapshots()?;
    let chosen: Vec<_> = if a.snapshots.is_empty() {
        all.into_iter().filter(|(_, s)| filter.matches(s)).collect()
    } else {
        let mut v = Vec::new();
        for spec in &a.snapshots {
            v.push(from.find_snapshot(spec)?);
        }
        v
    };
    let t = std::time::Instant::now();
    let r = tidemark_core::copy::copy(&from, &mut to, &chosen)?;
    to.end_session()?;
    let mut out = std::io::stdout().lock();
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = t.elapsed().as_secs_f64().into();
        writeln!(out, "{v}")?;
    } else if !g.quiet {
        writeln!(
            out,
            "copied {} snapshots ({} already there): {} blobs, {} in {} packs{}",
            r.snapshots_copied,
            r.snapshots_skipped,
            r.blobs_copied,
            crate::progress::bytes(r.bytes_copied),
            r.packs,
            if r.same_keys {
                " (same keys: envelopes copied as they are)"
            } else {
                " (different keys: re-encrypted)"
            }
        )?;
    }
    Ok(Outcome::Ok)
}
