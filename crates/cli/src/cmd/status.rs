//! `tidemark status`: a watched directory's engine, from its status.json.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::args::Global;
use crate::output::outln;
use crate::Outcome;

use super::watch::resolve_state_dir;

/// `tidemark status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The watched directory (or give --state-dir; with neither, the only one of this repository).
    pub path: Option<PathBuf>,
    /// The state directory.
    #[arg(long, env = "TIDEMARK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

pub fn run(g: &Global, a: &StatusArgs) -> Result<Outcome> {
    let state_dir = resolve_state_dir(g, a.state_dir.as_deref(), a.path.as_deref())?;
    let path = state_dir.join("status.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no status in {} (has `tidemark watch` run there?)",
            state_dir.display()
        )
    })?;
    let status: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    // The daemon holds the state directory's lock while it runs.
    let running = std::fs::OpenOptions::new()
        .write(true)
        .open(state_dir.join("lock"))
        .ok()
        .is_some_and(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
        });
    if g.json {
        let mut v = status;
        v["running"] = serde_json::json!(running);
        outln!("{v}")?;
        return Ok(Outcome::Ok);
    }
    let e = &status["engine"];
    let sm = &e["state_machine"];
    let wal = &e["wal"];
    outln!(
        "watched:        {}",
        status["watched"].as_str().unwrap_or("?")
    )?;
    outln!(
        "state:          {} ({})",
        state_dir.display(),
        if running { "running" } else { "not running" }
    )?;
    outln!(
        "updated:        {}",
        status["updated"].as_str().unwrap_or("?")
    )?;
    outln!(
        "revision:       applied {}, sealed {}",
        sm["applied"],
        sm["sealed"]
    )?;
    outln!(
        "last snapshot:  {}",
        sm["sealed_snapshot"].as_str().unwrap_or("none")
    )?;
    if let Some(age) = status["last_seal_age_ms"].as_u64() {
        outln!(
            "last seal:      {:.1} s ago ({} ms)",
            age as f64 / 1000.0,
            sm["last_seal_ms"]
        )?;
    }
    outln!(
        "log:            {} bytes in {} segments, {} entries",
        wal["bytes"],
        wal["segments"],
        wal["entries"]
    )?;
    outln!(
        "watched dirs:   {} (entries: {})",
        e["catalog"]["dirs"],
        e["catalog"]["entries"]
    )?;
    outln!(
        "pending:        {} changes, capture lag {} ms",
        status["pending_changes"],
        status["capture_lag_ms"]
    )?;
    let r = &status["rpo_ms"];
    outln!(
        "event→durable:  p50 {} ms, p99 {} ms over {} changes",
        r["p50"],
        r["p99"],
        r["samples"]
    )?;
    if let Some(err) = status["last_error"].as_str() {
        outln!("last error:     {err}")?;
    }
    Ok(Outcome::Ok)
}
