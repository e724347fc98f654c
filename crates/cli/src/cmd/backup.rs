//! `tidemark backup`: files and directories into a new snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tidemark_core::backup::{self, BackupOptions, BackupProgress};

use super::{partial, peak_rss, print_path_errors};
use crate::args::Global;
use crate::output::outln;
use crate::progress::{self, Display, Mode, Tick};
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Exclude a pattern (name glob like `*.tmp`, or a path glob containing `/`); repeatable.
    #[arg(short, long)]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line; repeatable.
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Do not cross filesystem boundaries.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Snapshot to compare against (default: the latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent's metadata.
    #[arg(long)]
    pub force: bool,
    /// Tag the snapshot; repeatable.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Hostname to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Record this time (RFC 3339) as the snapshot's instead of now, e.g. when importing history.
    #[arg(long, value_name = "TIME")]
    pub time: Option<chrono::DateTime<chrono::FixedOffset>>,
}

pub fn run(g: &Global, a: &BackupArgs, cancel: &Arc<AtomicBool>) -> Result<Outcome> {
    let mut paths = Vec::new();
    for p in &a.paths {
        let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
        // Canonicalise the parent, keep the last component: backing up a symlink stores the link.
        let canon = match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => parent
                .canonicalize()
                .with_context(|| format!("{} does not exist", p.display()))?
                .join(name),
            _ => abs.clone(),
        };
        std::fs::symlink_metadata(&canon)
            .with_context(|| format!("{} does not exist", p.display()))?;
        paths.push(canon);
    }
    paths.sort();
    paths.dedup();
    let excludes = open::excludes(&a.exclude, &a.exclude_file)?;
    let mut repo = open::open(g)?;
    let t0 = Instant::now();
    let hostname = a.host.clone().unwrap_or_else(open::hostname);
    repo.begin_session("backup", &hostname)?;
    repo.load_index().context("loading the index")?;
    let parent = if a.force {
        None
    } else if let Some(p) = &a.parent {
        Some(repo.find_snapshot(p)?.0)
    } else {
        backup::find_parent(&repo, &paths, &hostname)?
    };
    let opts = BackupOptions {
        paths: paths.clone(),
        excludes,
        one_file_system: a.one_file_system,
        parent,
        tags: a.tag.clone(),
        hostname,
        username: open::username(),
        readers: 0,
        time: a.time.map(|t| t.with_timezone(&chrono::Utc)),
    };
    let progress = Arc::new(BackupProgress::default());
    let mode = Mode::choose(g.json, g.quiet);
    let est_stop = Arc::new(AtomicBool::new(false));
    let estimator = (mode != Mode::None).then(|| {
        let (p, c, paths) = (Arc::clone(&progress), Arc::clone(&est_stop), paths.clone());
        let ex = tidemark_core::source::Excludes::new(&opts.excludes).unwrap_or_default();
        std::thread::spawn(move || backup::estimate(&paths, &ex, &p, &c))
    });
    let p = Arc::clone(&progress);
    let display = Display::start(mode, "backup", move || Tick {
        files: p.files.load(Ordering::Relaxed),
        bytes: p.bytes.load(Ordering::Relaxed),
        total_files: p.total_files.load(Ordering::Relaxed),
        total_bytes: p.total_bytes.load(Ordering::Relaxed),
    });
    let result = backup::backup(&mut repo, &opts, &progress, cancel);
    display.finish();
    if let Some(h) = estimator {
        est_stop.store(true, Ordering::Relaxed);
        let _ = h.join();
    }
    let r = result?;
    repo.end_session()?;
    print_path_errors(
        g,
        r.errors
            .iter()
            .map(|e| (e.path.as_path(), e.error.as_str())),
    )?;
    let s = &r.snapshot.summary;
    let secs = t0.elapsed().as_secs_f64();
    if g.json {
        outln!(
            "{}",
            json!({"message_type": "summary", "snapshot_id": r.id, "parent": r.snapshot.parent, "files_new": s.files_new, "files_changed": s.files_changed,
                "files_unmodified": s.files_unmodified, "dirs": s.dirs, "other": s.other, "errors": s.errors, "data_blobs": s.data_blobs_new, "tree_blobs": s.tree_blobs_new,
                "data_added": s.data_added, "data_added_packed": s.data_added_packed, "bytes_read": s.bytes_read, "total_bytes_processed": s.bytes_total,
                "adopted_packs": r.adopted_packs, "total_duration": secs, "peak_rss_bytes": peak_rss()})
        )?;
    } else if !g.quiet {
        if r.adopted_packs > 0 {
            outln!(
                "reused {} packs left by an interrupted backup",
                r.adopted_packs
            )?;
        }
        if let Some(p) = r.snapshot.parent {
            outln!("using parent snapshot {}", p.short())?;
        }
        outln!(
            "Files:       {} new, {} changed, {} unmodified",
            s.files_new,
            s.files_changed,
            s.files_unmodified
        )?;
        outln!("Dirs:        {}", s.dirs)?;
        outln!(
            "Added:       {} ({} stored)",
            progress::bytes(s.data_added),
            progress::bytes(s.data_added_packed)
        )?;
        outln!(
            "processed {} files, {} in {:.1}s (peak memory {})",
            s.files_new + s.files_changed + s.files_unmodified,
            progress::bytes(s.bytes_total),
            secs,
            progress::bytes(peak_rss())
        )?;
        outln!("snapshot {} saved", r.id.short())?;
    }
    Ok(partial(
        g,
        r.errors.len(),
        "entries could not be read; the snapshot was saved without them",
    ))
}
