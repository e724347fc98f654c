//! `tidemark recover`: seal a watched directory's log without watching.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tidemark_core::wal::WalOptions;

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

use super::watch::resolve_state_dir;

/// `tidemark recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The watched directory whose log to seal (or give --state-dir).
    pub path: Option<PathBuf>,
    /// The state directory to recover.
    #[arg(long, env = "TIDEMARK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// If the log is damaged before its end, cut it there instead of failing (loses what follows).
    #[arg(long)]
    pub discard_after_corruption: bool,
}

pub fn run(g: &Global, a: &RecoverArgs) -> Result<Outcome> {
    let state_dir = resolve_state_dir(g, a.state_dir.as_deref(), a.path.as_deref())?;
    let mut repo = open::open(g)?;
    repo.begin_session("recover", &open::hostname())?;
    repo.load_index().context("loading the index")?;
    let wal = WalOptions {
        discard_after_corruption: a.discard_after_corruption,
        ..WalOptions::default()
    };
    let report = tidemark_daemon::recover(repo, &state_dir, wal, &open::hostname())?;
    if g.json {
        outln!(
            "{}",
            serde_json::json!({"state_dir": state_dir, "records": report.recovery.records, "torn_bytes": report.recovery.torn_bytes, "unsynced_bytes": report.recovery.unsynced_bytes,
                "discarded_at": report.recovery.discarded_at, "snapshot": report.snapshot.map(|s| s.to_hex())})
        )?;
    } else {
        if let Some((file, offset)) = &report.recovery.discarded_at {
            eprintln!(
                "the log was damaged at byte {offset} of {file}; everything after it was discarded"
            );
        }
        match report.snapshot {
            Some(s) => outln!(
                "recovered {} log records from {}; snapshot {}",
                report.recovery.records,
                state_dir.display(),
                s.to_hex()
            )?,
            None => outln!("nothing to recover in {}", state_dir.display())?,
        }
    }
    Ok(Outcome::Ok)
}
