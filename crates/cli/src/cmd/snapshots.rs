//! `tidemark snapshots`: the snapshot list, as a table or one JSON array.

use std::io::Write as _;

use anyhow::Result;
use clap::Args;
use tidemark_core::id::{BlobId, SnapshotId};
use tidemark_core::snapshot::{LogPosition, Snapshot, Summary};

use super::cache_note;
use crate::args::Global;
use crate::{open, progress, Outcome};

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only the newest N snapshots.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
}

fn local_time(s: &Snapshot) -> String {
    s.datetime()
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// One snapshot in `snapshots --json` (the fields restic prints, then tidemark's own).
#[derive(serde::Serialize)]
struct SnapshotLine<'a> {
    id: &'a SnapshotId,
    short_id: String,
    time: &'a str,
    hostname: &'a str,
    username: &'a str,
    paths: &'a [String],
    tags: &'a [String],
    parent: &'a Option<SnapshotId>,
    tree: &'a BlobId,
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogPosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: &'a Option<serde_json::Value>,
}

/// Snapshots parsed at once by `snapshots --json`.
const JSON_BATCH: usize = 8192;

pub fn run(g: &Global, a: &SnapshotsArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let (list, stats) = repo.snapshot_list()?;
    cache_note(g, &stats);
    let start = a.latest.map_or(0, |n| list.len().saturating_sub(n));
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if g.json {
        // One JSON array, parsed and printed a batch at a time: 100,000 snapshots need not be
        // in memory twice.
        out.write_all(b"[")?;
        for from in (start..list.len()).step_by(JSON_BATCH) {
            let part = list.parse(from..(from + JSON_BATCH).min(list.len()))?;
            for (i, (id, s)) in part.iter().enumerate() {
                if from + i > start {
                    out.write_all(b",")?;
                }
                let line = SnapshotLine {
                    id,
                    short_id: id.short(),
                    time: &s.time,
                    hostname: &s.hostname,
                    username: &s.username,
                    paths: &s.paths,
                    tags: &s.tags,
                    parent: &s.parent,
                    tree: &s.tree,
                    summary: &s.summary,
                    revision: s.revision,
                    log: s.log,
                    membership: &s.membership,
                };
                serde_json::to_writer(&mut out, &line)?;
            }
        }
        out.write_all(b"]\n")?;
        out.flush()?;
        return Ok(Outcome::Ok);
    }
    let shown = list.parse(start..list.len())?;
    // The revision column appears only when a listed snapshot was sealed by `watch`.
    let with_rev = shown.iter().any(|(_, s)| s.revision.is_some());
    let rev = |r: Option<u64>| {
        if with_rev {
            format!(" {:>8}", r.map(|r| r.to_string()).unwrap_or_default())
        } else {
            String::new()
        }
    };
    let rule = "-".repeat(if with_rev { 99 } else { 90 });
    writeln!(
        out,
        "{:<10} {:<20}{} {:<16} {:<12} {:>10}  Paths",
        "ID",
        "Time",
        if with_rev {
            format!(" {:>8}", "Rev")
        } else {
            String::new()
        },
        "Host",
        "Tags",
        "Size"
    )?;
    writeln!(out, "{rule}")?;
    for (id, s) in &shown {
        writeln!(
            out,
            "{:<10} {:<20}{} {:<16} {:<12} {:>10}  {}",
            id.short(),
            local_time(s),
            rev(s.revision),
            s.hostname,
            s.tags.join(","),
            progress::bytes(s.summary.bytes_total),
            s.paths.join(", ")
        )?;
    }
    writeln!(out, "{rule}")?;
    if shown.len() < list.len() {
        writeln!(out, "{} of {} snapshots", shown.len(), list.len())?;
    } else {
        writeln!(out, "{} snapshots", list.len())?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}
