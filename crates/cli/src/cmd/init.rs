//! `tidemark init`: create a repository (optionally sharing another one's keys).

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use tidemark_core::chunk::ChunkerParams;
use tidemark_core::crypto::KdfParams;
use tidemark_core::repo::{InitOptions, Repository, DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL};

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store data unencrypted (integrity is still checked). Only for trusted storage.
    #[arg(long)]
    pub insecure_no_encryption: bool,
    /// Chunker minimum size in bytes (fixed for the repository's life).
    #[arg(long, help_heading = "Advanced")]
    pub chunk_min: Option<u32>,
    /// Chunker average size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub chunk_avg: Option<u32>,
    /// Chunker maximum size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub chunk_max: Option<u32>,
    /// Target pack size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub pack_size: Option<u32>,
    /// zstd level, 0 = no compression.
    #[arg(long, help_heading = "Advanced")]
    pub compression: Option<i32>,
    /// Argon2id memory for the first key, in KiB (default 65536).
    #[arg(long, help_heading = "Advanced")]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id passes for the first key (default 3).
    #[arg(long, help_heading = "Advanced")]
    pub kdf_time: Option<u32>,
    /// Share the keys and chunker settings of this repository, so `copy` between the two moves
    /// data as it is and dedups across both.
    #[command(flatten)]
    pub from: crate::cmd::copy::FromArgs,
}

pub fn run(g: &Global, a: &InitArgs) -> Result<Outcome> {
    let (store, _) = open::store(g)?;
    // With --from-repo: the source's keys and chunker, so the two dedup against each other.
    let (master, d, pack_size) = if a.from.from_repo.is_some() {
        if a.insecure_no_encryption {
            bail!("--from-repo shares the source's encryption key; it cannot be combined with --insecure-no-encryption");
        }
        let src = crate::cmd::copy::open_from(g, &a.from)?;
        (
            Some(crate::cmd::copy::master_key(g, &a.from)?),
            src.config().chunker,
            Some(src.config().pack_size),
        )
    } else {
        (None, ChunkerParams::default(), None)
    };
    let chunker = ChunkerParams {
        min_size: a.chunk_min.unwrap_or(d.min_size),
        avg_size: a.chunk_avg.unwrap_or(d.avg_size),
        max_size: a.chunk_max.unwrap_or(d.max_size),
        ..d
    };
    let k = KdfParams::default();
    let password = if a.insecure_no_encryption {
        None
    } else {
        Some(open::new_password_or_given(g)?)
    };
    let opts = InitOptions {
        password,
        kdf: KdfParams {
            m_cost_kib: a.kdf_memory_kib.unwrap_or(k.m_cost_kib),
            t_cost: a.kdf_time.unwrap_or(k.t_cost),
            ..k
        },
        chunker,
        pack_size: a.pack_size.or(pack_size).unwrap_or(DEFAULT_PACK_SIZE),
        compression_level: a.compression.unwrap_or(DEFAULT_ZSTD_LEVEL),
        hostname: open::hostname(),
        username: open::username(),
        master,
    };
    let location = store.location();
    let repo = Repository::init(store, &opts)?;
    if g.json {
        outln!(
            "{}",
            json!({"message_type": "initialized", "id": repo.config().id, "repository": location})
        )?;
    } else if !g.quiet {
        outln!(
            "created tidemark repository {} at {location}",
            repo.config().id.short()
        )?;
        if a.insecure_no_encryption {
            outln!("WARNING: this repository is NOT encrypted")?;
        }
    }
    Ok(Outcome::Ok)
}
