//! `tidemark stats`: repository totals or a snapshot's restore size (computed by `core::stats`).

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::args::Global;
use crate::output::outln;
use crate::{open, progress, Outcome};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Report this snapshot's restore size instead of the repository totals.
    pub snapshot: Option<String>,
}

pub fn run(g: &Global, snap: Option<&str>) -> Result<Outcome> {
    let repo = open::open(g)?;
    repo.load_index()?;
    if let Some(spec) = snap {
        let (id, s) = repo.find_snapshot(spec)?;
        let st = tidemark_core::stats::snapshot_stats(&repo, &s.tree)?;
        if g.json {
            outln!(
                "{}",
                json!({"snapshot": id, "total_file_count": st.files, "total_dir_count": st.dirs, "total_size": st.bytes})
            )?;
        } else {
            outln!(
                "snapshot {}: {} files, {} dirs, {} restore size",
                id.short(),
                st.files,
                st.dirs,
                progress::bytes(st.bytes)
            )?;
        }
        return Ok(Outcome::Ok);
    }
    let st = tidemark_core::stats::repo_stats(&repo)?;
    if g.json {
        outln!(
            "{}",
            json!({"snapshots_count": st.snapshots, "packs": st.packs, "pack_bytes": st.pack_bytes, "index_bytes": st.index_bytes,
            "data_blobs": st.data_blobs, "tree_blobs": st.tree_blobs, "total_uncompressed_size": st.raw_bytes, "total_stored_size": st.stored_bytes,
            "compression_ratio": st.compression_ratio()})
        )?;
    } else {
        outln!("repository {}", repo.store().location())?;
        outln!("  snapshots:        {}", st.snapshots)?;
        outln!(
            "  packs:            {} ({})",
            st.packs,
            progress::bytes(st.pack_bytes)
        )?;
        outln!("  index files:      {}", progress::bytes(st.index_bytes))?;
        outln!(
            "  blobs:            {} data, {} trees",
            st.data_blobs,
            st.tree_blobs
        )?;
        outln!(
            "  unique data:      {} uncompressed, {} stored ({:.2}x)",
            progress::bytes(st.raw_bytes),
            progress::bytes(st.stored_bytes),
            st.compression_ratio()
        )?;
    }
    Ok(Outcome::Ok)
}
