//! One module per command, each with its clap arguments and a `run` that turns them into one
//! call into core or the daemon and prints the outcome; [`run`] picks the command. The helpers
//! below are the output conventions several commands share.

pub mod backup;
pub mod cat;
pub mod check;
pub mod copy;
pub mod diff;
pub mod forget;
pub mod init;
pub mod key;
pub mod ls;
pub mod mount;
pub mod policy;
pub mod prune;
pub mod recover;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod stats;
pub mod status;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;
use tidemark_core::snapshot::{CacheStats, SnapshotFilter};

use crate::args::{Cli, Command, Global};
use crate::output::outln;
use crate::Outcome;

/// Runs the parsed command.
pub fn run(
    cli: &Cli,
    cancel: &Arc<AtomicBool>,
    trigger: &tidemark_daemon::Trigger,
) -> Result<Outcome> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a, cancel),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Diff(a) => diff::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Check(a) => check::run(g, a),
        Command::Repair(a) => repair::run(g, a),
        Command::Cat(a) => cat::run(g, a),
        Command::Stats(a) => stats::run(g, a.snapshot.as_deref()),
        Command::Key(a) => key::run(g, &a.command),
        Command::Forget(a) => forget::run(g, a),
        Command::Policy(a) => policy::run(g, a),
        Command::Prune(a) => prune::run(g, a),
        Command::Copy(a) => copy::run(g, a),
        Command::Watch(a) => watch::run(g, a, trigger),
        Command::Recover(a) => recover::run(g, a),
        Command::Status(a) => status::run(g, a),
        Command::Mount(a) => mount::run(g, a, cancel),
    }
}

/// Per-path errors of a backup or restore: JSON lines on stdout with --json, else stderr.
pub fn print_path_errors<'a>(
    g: &Global,
    errors: impl Iterator<Item = (&'a Path, &'a str)>,
) -> std::io::Result<()> {
    for (path, error) in errors {
        if g.json {
            outln!(
                "{}",
                json!({"message_type": "error", "item": path, "error": error})
            )?;
        } else {
            eprintln!("error: {}: {error}", path.display());
        }
    }
    Ok(())
}

/// Exit 3 with a warning when `failed` paths were skipped; success otherwise.
pub fn partial(g: &Global, failed: usize, what: &str) -> Outcome {
    if failed == 0 {
        return Outcome::Ok;
    }
    if !g.json {
        eprintln!("warning: {failed} {what}");
    }
    Outcome::Partial
}

/// Peak resident memory of this process so far, in bytes (reported after backup and restore).
pub fn peak_rss() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map_or(0, |u| u64::try_from(u.max_rss()).unwrap_or(0) * 1024)
}

/// Says on stderr that a damaged snapshot cache was ignored (it has been rebuilt).
pub fn cache_note(g: &Global, stats: &CacheStats) {
    if let (Some(note), false) = (&stats.damaged, g.quiet) {
        eprintln!("note: {note}");
    }
}

/// The filter of `--host H --path P…` as snapshots record them: absolute paths, without a
/// trailing `/` or `.` parts.
pub fn snapshot_filter(host: Option<&String>, paths: &[PathBuf]) -> Result<SnapshotFilter> {
    Ok(SnapshotFilter {
        hostname: host.cloned(),
        paths: paths
            .iter()
            .map(|p| {
                let abs =
                    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
                // Through components: drops a trailing `/` and `.` parts.
                Ok(abs
                    .components()
                    .collect::<PathBuf>()
                    .to_string_lossy()
                    .into_owned())
            })
            .collect::<Result<_>>()?,
    })
}
