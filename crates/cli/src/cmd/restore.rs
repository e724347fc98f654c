//! `tidemark restore`: a snapshot (named, or chosen by time or revision) into a directory.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tidemark_core::id::SnapshotId;
use tidemark_core::repo::Repository;
use tidemark_core::restore::{self, RestoreOptions, RestoreProgress};
use tidemark_core::snapshot::{Selector, Snapshot};

use super::{cache_note, partial, peak_rss, print_path_errors, snapshot_filter};
use crate::args::Global;
use crate::output::outln;
use crate::parse::TimeSpec;
use crate::progress::{self, Display, Mode, Tick};
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest` (not with --at or --revision).
    #[arg(required_unless_present_any = ["at", "revision"], conflicts_with_all = ["at", "revision"])]
    pub snapshot: Option<String>,
    /// Restore the newest snapshot taken at or before TIME: RFC 3339 (`2026-11-23T20:15:00+01:00`),
    /// a local date and time (`2026-11-23 20:15:00`, `2026-11-23 20:15`, `2026-11-23` = its
    /// midnight), or a time ago (`-10m`, `-2h`, `-1d`; units s, m, h, d, w).
    #[arg(
        long,
        value_name = "TIME",
        value_parser = crate::parse::time,
        allow_hyphen_values = true,
        conflicts_with = "revision"
    )]
    pub at: Option<crate::parse::TimeSpec>,
    /// Restore the snapshot with the greatest revision (log index) at or below R.
    #[arg(long, value_name = "R")]
    pub revision: Option<u64>,
    /// With `latest`, --at or --revision: only snapshots of this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// With `latest`, --at or --revision: only snapshots whose paths include PATH; repeatable.
    #[arg(long, value_name = "PATH")]
    pub path: Vec<PathBuf>,
    /// Directory to restore into.
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only this path of the snapshot (and below); repeatable.
    #[arg(short, long)]
    pub include: Vec<PathBuf>,
}

pub fn run(g: &Global, a: &RestoreArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let (id, snap) = pick_snapshot(g, &repo, a)?;
    repo.load_index()?;
    let t0 = Instant::now();
    let progress = Arc::new(RestoreProgress::default());
    let p = Arc::clone(&progress);
    let display = Display::start(Mode::choose(g.json, g.quiet), "restore", move || Tick {
        files: p.files.load(Ordering::Relaxed),
        bytes: p.bytes.load(Ordering::Relaxed),
        total_files: 0,
        total_bytes: p.total_bytes.load(Ordering::Relaxed),
    });
    let opts = RestoreOptions {
        target: a.target.clone(),
        include: a.include.clone(),
        threads: 0,
    };
    let result = restore::restore(&repo, &snap.tree, &opts, &progress);
    display.finish();
    let stats = result?;
    print_path_errors(
        g,
        stats
            .errors
            .iter()
            .map(|e| (e.path.as_path(), e.error.as_str())),
    )?;
    if g.json {
        outln!(
            "{}",
            json!({"message_type": "summary", "snapshot_id": id, "files_restored": stats.files, "dirs": stats.dirs, "other": stats.other,
            "bytes_restored": stats.bytes, "errors": stats.errors.len(), "seconds_elapsed": t0.elapsed().as_secs_f64(), "peak_rss_bytes": peak_rss()})
        )?;
    } else if !g.quiet {
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s (peak memory {})",
            id.short(),
            a.target.display(),
            stats.files,
            stats.dirs,
            progress::bytes(stats.bytes),
            t0.elapsed().as_secs_f64(),
            progress::bytes(peak_rss())
        )?;
    }
    Ok(partial(
        g,
        stats.errors.len(),
        "paths could not be restored",
    ))
}

/// The snapshot restore's flags name: an id prefix, or a selection (`latest`, --at,
/// --revision) among the snapshots --host and --path let through.
fn pick_snapshot(g: &Global, repo: &Repository, a: &RestoreArgs) -> Result<(SnapshotId, Snapshot)> {
    let filter = snapshot_filter(a.host.as_ref(), &a.path)?;
    let selector = match (a.snapshot.as_deref(), a.at, a.revision) {
        (Some(spec), _, _) if spec != "latest" => {
            if !filter.is_empty() {
                bail!(
                    "--host and --path choose among snapshots: \
                     give `latest`, --at or --revision instead of an id"
                );
            }
            return Ok(repo.find_snapshot(spec)?);
        }
        (_, Some(at), _) => Selector::AtOrBefore(resolve_time(at)?),
        (_, _, Some(r)) => Selector::Revision(r),
        _ => Selector::Latest,
    };
    let (list, stats) = repo.snapshot_list()?;
    cache_note(g, &stats);
    if let Some(found) = list.select(&filter, selector)? {
        return Ok(found);
    }
    let among = if filter.is_empty() {
        ""
    } else {
        " matching --host/--path"
    };
    match selector {
        Selector::Latest => bail!("no snapshot{among} in the repository"),
        Selector::AtOrBefore(t) => {
            let oldest = if list.is_empty() || !filter.is_empty() {
                String::new()
            } else {
                let first = chrono::DateTime::from_timestamp_nanos(list.time_ns(0));
                format!("; the oldest snapshot is from {}", local_datetime(first))
            };
            bail!(
                "no snapshot{among} at or before {} ({}){oldest}",
                local_datetime(t),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        }
        Selector::Revision(r) => bail!("no snapshot{among} with a revision at or below {r}"),
    }
}

/// The instant `spec` names, now.
fn resolve_time(spec: TimeSpec) -> Result<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone as _;
    Ok(match spec {
        TimeSpec::Instant(t) => t,
        TimeSpec::Local(t) => chrono::Local
            .from_local_datetime(&t)
            .earliest()
            .with_context(|| {
                format!("{t} does not exist in the local time zone (a daylight-saving gap)")
            })?
            .with_timezone(&chrono::Utc),
        TimeSpec::Ago(d) => chrono::Utc::now() - d,
    })
}

fn local_datetime(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}
