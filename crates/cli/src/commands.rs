//! One function per command: turn parsed flags into a core call and print the result.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tidemark_core::backup::{self, BackupOptions, BackupProgress};
use tidemark_core::check::{self, CheckOptions, DataSubset};
use tidemark_core::chunk::ChunkerParams;
use tidemark_core::crypto::KdfParams;
use tidemark_core::id::{BlobId, ObjectId, SnapshotId};
use tidemark_core::repo::{InitOptions, Repository, DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL};
use tidemark_core::restore::{self, RestoreOptions, RestoreProgress};
use tidemark_core::snapshot::{
    self, CacheStats, ChangeKind, LogPosition, Node, NodeType, Selector, Snapshot, SnapshotFilter,
    Summary,
};
use tidemark_core::store::{Kind, CONFIG_ID};

use crate::args::{
    BackupArgs, CatArgs, CheckArgs, Cli, Command, DiffArgs, Global, InitArgs, KeyCommand, LsArgs,
    RepairArgs, RepairCommand, RestoreArgs, SnapshotsArgs,
};
use crate::open;
use crate::output::outln;
use crate::parse::TimeSpec;
use crate::progress::{self, Display, Mode, Tick};
use crate::Outcome;

/// Runs the parsed command.
pub fn run(
    cli: &Cli,
    cancel: &Arc<AtomicBool>,
    trigger: &tidemark_daemon::Trigger,
) -> Result<Outcome> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init(g, a),
        Command::Backup(a) => backup(g, a, cancel),
        Command::Snapshots(a) => snapshots(g, a),
        Command::Ls(a) => ls(g, a),
        Command::Diff(a) => diff(g, a),
        Command::Restore(a) => restore(g, a),
        Command::Check(a) => check(g, a),
        Command::Repair(a) => repair(g, a),
        Command::Cat(a) => cat(g, a),
        Command::Stats(a) => stats(g, a.snapshot.as_deref()),
        Command::Key(a) => key(g, &a.command),
        Command::Forget(a) => crate::forget::forget(g, a),
        Command::Policy(a) => crate::forget::policy(g, a),
        Command::Prune(a) => crate::forget::prune(g, a),
        Command::Copy(a) => crate::copy::copy(g, a),
        Command::Watch(a) => crate::watch::watch(g, a, trigger),
        Command::Recover(a) => crate::watch::recover(g, a),
        Command::Status(a) => crate::watch::status(g, a),
        Command::Mount(a) => crate::mount::mount(g, a, cancel),
    }
}

fn init(g: &Global, a: &InitArgs) -> Result<Outcome> {
    let (store, _) = open::store(g)?;
    // With --from-repo: the source's keys and chunker, so the two dedup against each other.
    let (master, d, pack_size) = if a.from.from_repo.is_some() {
        if a.insecure_no_encryption {
            bail!("--from-repo shares the source's encryption key; it cannot be combined with --insecure-no-encryption");
        }
        let src = crate::copy::open_from(g, &a.from)?;
        (
            Some(crate::copy::master_key(g, &a.from)?),
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

fn backup(g: &Global, a: &BackupArgs, cancel: &Arc<AtomicBool>) -> Result<Outcome> {
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
        let ex = backup::Excludes::new(&opts.excludes).unwrap_or_default();
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

/// Per-path errors of a backup or restore: JSON lines on stdout with --json, else stderr.
fn print_path_errors<'a>(
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
fn partial(g: &Global, failed: usize, what: &str) -> Outcome {
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

/// Says on stderr that a damaged snapshot cache was ignored (it has been rebuilt).
fn cache_note(g: &Global, stats: &CacheStats) {
    if let (Some(note), false) = (&stats.damaged, g.quiet) {
        eprintln!("note: {note}");
    }
}

fn snapshots(g: &Global, a: &SnapshotsArgs) -> Result<Outcome> {
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

fn type_char(t: NodeType) -> char {
    match t {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Chardev => 'c',
        NodeType::Blockdev => 'b',
        NodeType::Socket => 's',
        NodeType::File => '-',
    }
}

fn ls(g: &Global, a: &LsArgs) -> Result<Outcome> {
    let mut repo = open::open(g)?;
    repo.load_index()?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let start = a.path.clone().unwrap_or_else(|| PathBuf::from("/"));
    // A path naming a file lists just that file.
    let (dir, only) = if let Ok(id) = tidemark_core::stats::subtree(&repo, &snap.tree, &start) {
        (id, None)
    } else {
        let parent = start.parent().context("no such path")?;
        (
            tidemark_core::stats::subtree(&repo, &snap.tree, parent)?,
            start.file_name().map(std::ffi::OsStr::to_os_string),
        )
    };
    let base = if only.is_some() {
        start.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        start.clone()
    };
    let mut stack = vec![(dir, base)];
    while let Some((id, dirpath)) = stack.pop() {
        let tree = repo.load_tree(&id)?;
        for n in tree.nodes.iter().rev() {
            if only.as_ref().is_some_and(|o| *o != n.os_name()) {
                continue;
            }
            if let (Some(sub), None) = (n.subtree, &only) {
                stack.push((sub, dirpath.join(n.os_name())));
            }
        }
        for n in &tree.nodes {
            if only.as_ref().is_some_and(|o| *o != n.os_name()) {
                continue;
            }
            print_node(g, a.long, &dirpath.join(n.os_name()), n)?;
        }
    }
    Ok(Outcome::Ok)
}

fn print_node(g: &Global, long: bool, path: &Path, n: &Node) -> std::io::Result<()> {
    if g.json {
        outln!(
            "{}",
            json!({"path": path, "type": n.kind(), "mode": n.mode, "uid": n.uid, "gid": n.gid, "size": n.size, "mtime_ns": n.mtime_ns, "target": n.target, "links": n.links})
        )?;
    } else if long {
        let t = chrono::DateTime::from_timestamp(n.mtime_ns.div_euclid(1_000_000_000), 0)
            .unwrap_or_default()
            .with_timezone(&chrono::Local);
        outln!(
            "{}{:04o} {:>5} {:>5} {:>12} {} {}",
            type_char(n.kind()),
            n.mode,
            n.uid,
            n.gid,
            n.size,
            t.format("%Y-%m-%d %H:%M:%S"),
            path.display()
        )?;
    } else {
        outln!("{}", path.display())?;
    }
    Ok(())
}

fn diff(g: &Global, a: &DiffArgs) -> Result<Outcome> {
    let mut repo = open::open(g)?;
    repo.load_index()?;
    let (id1, s1) = repo.find_snapshot(&a.first)?;
    let (id2, s2) = repo.find_snapshot(&a.second)?;
    let changes = snapshot::diff(&repo, &s1.tree, &s2.tree)?;
    let count = |k: ChangeKind| changes.iter().filter(|c| c.kind == k).count();
    if g.json {
        for c in &changes {
            outln!(
                "{}",
                json!({"message_type": "change", "path": c.path, "modifier": c.kind, "type": c.node_type})
            )?;
        }
        outln!(
            "{}",
            json!({"message_type": "statistics", "source_snapshot": id1, "target_snapshot": id2, "added": count(ChangeKind::Added),
            "removed": count(ChangeKind::Removed), "modified": count(ChangeKind::Modified), "metadata": count(ChangeKind::Metadata)})
        )?;
        return Ok(Outcome::Ok);
    }
    if !g.quiet {
        outln!("comparing snapshot {} to {}:", id1.short(), id2.short())?;
    }
    for c in &changes {
        let m = match c.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'U',
        };
        let slash = if c.node_type == NodeType::Dir {
            "/"
        } else {
            ""
        };
        outln!("{m}    {}{slash}", c.path.display())?;
    }
    if !g.quiet {
        outln!(
            "\n{} added, {} removed, {} modified, {} metadata only",
            count(ChangeKind::Added),
            count(ChangeKind::Removed),
            count(ChangeKind::Modified),
            count(ChangeKind::Metadata)
        )?;
    }
    Ok(Outcome::Ok)
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

fn restore(g: &Global, a: &RestoreArgs) -> Result<Outcome> {
    let mut repo = open::open(g)?;
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

fn check(g: &Global, a: &CheckArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let subset = a.read_data_subset.unwrap_or_default();
    let read_data = a.read_data || a.read_data_subset.is_some();
    if !g.quiet && !g.json {
        let what = match subset {
            _ if !read_data => String::new(),
            DataSubset::All => " (reading all data)".into(),
            DataSubset::Part { n, of } => format!(" (reading data of pack part {n}/{of})"),
            DataSubset::Fraction(f) => format!(" (reading data of {}% of the packs)", f * 100.0),
            DataSubset::Bytes(b) => format!(" (reading {} of data)", progress::bytes(b)),
        };
        outln!("checking repository {}{what}", repo.store().location())?;
    }
    let r = check::check(&repo, CheckOptions { read_data, subset })?;
    if g.json {
        outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        for w in &r.warnings {
            outln!("warning: {w}")?;
        }
        for e in &r.errors {
            outln!("error: {}: {}", e.object, e.error)?;
            for a in &e.affected {
                outln!("       affects {a}")?;
            }
        }
        if !g.quiet {
            outln!(
                "{} snapshots, {} trees, {} packs, {} blobs checked",
                r.snapshots,
                r.trees,
                r.packs,
                r.blobs
            )?;
            if read_data {
                outln!(
                    "{} blobs in {} of {} packs read and authenticated ({})",
                    r.blobs_read,
                    r.packs_read,
                    r.packs,
                    progress::bytes(r.bytes_read)
                )?;
            }
        }
        if r.errors.is_empty() {
            if !g.quiet {
                outln!("no errors were found")?;
            }
        } else {
            eprintln!("{} errors found: the repository is damaged", r.errors.len());
        }
    }
    Ok(if r.errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Damaged
    })
}

fn repair(g: &Global, a: &RepairArgs) -> Result<Outcome> {
    match a.what {
        RepairCommand::Index { dry_run } => {
            let mut repo = open::open(g)?;
            let r = tidemark_core::repair::repair_index(&mut repo, &open::hostname(), dry_run)?;
            if g.json {
                outln!("{}", serde_json::to_string(&r)?)?;
                return Ok(Outcome::Ok);
            }
            for f in &r.index_files_damaged {
                outln!("damaged: {f}")?;
            }
            for (p, e) in &r.packs_damaged {
                outln!("damaged: pack {}: {e}", &p[..16])?;
            }
            if !g.quiet {
                outln!(
                    "{} packs read ({} not in any index before, {} damaged of which {} kept from \
                     the old index), {} blobs; old index: {} files ({} damaged), {} packs it \
                     listed are gone",
                    r.packs_indexed,
                    r.packs_added,
                    r.packs_damaged.len(),
                    r.packs_carried_over,
                    r.blobs,
                    r.index_files_before,
                    r.index_files_damaged.len(),
                    r.packs_missing
                )?;
                if dry_run {
                    outln!("dry run: nothing written")?;
                } else {
                    outln!(
                        "wrote {} index files, deleted {} old ones",
                        r.index_files_written,
                        r.index_files_deleted
                    )?;
                }
            }
            Ok(Outcome::Ok)
        }
    }
}

fn parse_object_id(kind: &str, id: Option<&String>) -> Result<ObjectId> {
    let id = id.with_context(|| format!("cat {kind} needs an id"))?;
    ObjectId::from_hex(id).with_context(|| format!("{id:?} is not a 64-character hex id"))
}

fn cat(g: &Global, a: &CatArgs) -> Result<Outcome> {
    let mut repo = open::open(g)?;
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

fn stats(g: &Global, snap: Option<&str>) -> Result<Outcome> {
    let mut repo = open::open(g)?;
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

fn key(g: &Global, cmd: &KeyCommand) -> Result<Outcome> {
    let repo = open::open(g)?;
    match cmd {
        KeyCommand::List => {
            let keys = repo.keys()?;
            if g.json {
                let v: Vec<_> = keys.iter().map(|(id, k)| json!({"id": id, "current": Some(*id) == repo.key_id(), "created": k.created, "hostname": k.hostname, "username": k.username})).collect();
                outln!("{}", serde_json::to_string(&v)?)?;
            } else {
                outln!(" {:<10} {:<12} {:<16} Created", "ID", "User", "Host")?;
                for (id, k) in keys {
                    let cur = if Some(id) == repo.key_id() { '*' } else { ' ' };
                    outln!(
                        "{cur}{:<10} {:<12} {:<16} {}",
                        id.short(),
                        k.username,
                        k.hostname,
                        k.created
                    )?;
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let current = current_password(g)?;
            let new = open::new_password(new_password_file.as_deref())?;
            let id = repo.add_key(
                &new,
                KdfParams::default(),
                &open::hostname(),
                &open::username(),
                &current,
            )?;
            if g.json {
                outln!("{}", json!({"added": id}))?;
            } else {
                outln!("saved new key {}", id.short())?;
            }
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(id)?;
            if g.json {
                outln!("{}", json!({"removed": removed}))?;
            } else {
                outln!("removed key {}", removed.short())?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The password that opened the repository, read again (the core does not keep it).
fn current_password(g: &Global) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if g.repo.is_none()
        && g.password_file.is_none()
        && std::env::var_os("TIDEMARK_PASSWORD").is_none()
    {
        let (_, pw_file) = open::default_location()?;
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(&pw_file)
                .with_context(|| format!("reading {}", pw_file.display()))?,
        );
        return Ok(zeroize::Zeroizing::new(s.trim_end().as_bytes().to_vec()));
    }
    open::password(g, "enter current password: ")
}
