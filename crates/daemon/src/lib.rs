//! tidemark-daemon: the continuous engine at run time, for one watched directory.
//!
//! ```text
//! inotify ─▶ RawWatcher ─▶ Translator ─▶ Coalescer (debounce) ─▶ Capturer ─▶ Engine::write (log, apply)
//!                                                           (main loop, one thread)      │
//!                                     seal task: every 25 ms, Engine::seal when due ◀────┘
//!                                     status task: status.json every second
//! ```
//! [`watch`] runs until its stop flag is set, then captures what is pending, seals and returns.
//! [`recover`] replays a state directory's log into a snapshot without watching anything.

mod state;
mod watcher;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tidemark_cluster::{
    Engine, EngineOptions, EngineParts, EngineStatus, SealedSnapshot, SmOptions,
};
use tidemark_core::batch::Batch;
use tidemark_core::capture::{CaptureOptions, CaptureStats, Capturer, LiveTree, Sink};
use tidemark_core::id::SnapshotId;
use tidemark_core::repo::Repository;
use tidemark_core::source::{node_from_metadata, Excludes};
use tidemark_core::wal::{Recovery, WalOptions};
use tidemark_core::watch::{Change, CoalesceOptions, Coalescer, Event};

pub use state::{default_state_dir, write_atomic, StateDir, WatchJson};
pub use watcher::{RawWatcher, Translator};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the repository, the log or the file system.
    #[error(transparent)]
    Core(#[from] tidemark_core::Error),
    /// From the engine.
    #[error(transparent)]
    Engine(#[from] tidemark_cluster::Error),
    /// The file-system watcher failed (e.g. the inotify watch limit).
    #[error("watcher: {0}")]
    Watch(String),
    /// A request that cannot be satisfied.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    fn io(op: &'static str, path: &Path, e: std::io::Error) -> Self {
        Error::Core(tidemark_core::Error::io(op, path, e))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The watched directory (absolute, canonical).
    pub root: PathBuf,
    /// The state directory (`docs/format.md` §11).
    pub state_dir: PathBuf,
    /// Where the repository is (recorded in `watch.json`).
    pub repository: String,
    /// Exclude patterns, as for `backup`.
    pub excludes: Vec<String>,
    /// Debounce and cap.
    pub coalesce: CoalesceOptions,
    /// Seal at least this often while something changes.
    pub seal_interval: Duration,
    /// Seal after this many bytes of new chunks.
    pub seal_bytes: u64,
    /// A slow full reconcile scan this often (none by default).
    pub reconcile_every: Option<Duration>,
    /// Log segment size etc.
    pub wal: WalOptions,
    /// Recorded in snapshots.
    pub hostname: String,
    /// Recorded in snapshots.
    pub username: String,
}

impl WatchOptions {
    /// Defaults for watching `root` with state in `state_dir`.
    pub fn new(root: PathBuf, state_dir: PathBuf, repository: String) -> Self {
        WatchOptions {
            root,
            state_dir,
            repository,
            excludes: Vec::new(),
            coalesce: CoalesceOptions::default(),
            seal_interval: Duration::from_millis(500),
            seal_bytes: 4 << 20,
            reconcile_every: None,
            wal: WalOptions::default(),
            hostname: String::new(),
            username: String::new(),
        }
    }
}

/// Something worth telling the user while `watch` runs.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The engine is up: what recovery found, and whether a recovered log was sealed.
    Started {
        recovery: Recovery,
        sealed: Option<SnapshotId>,
        state_dir: PathBuf,
    },
    /// The initial reconcile scan finished.
    Reconciled { ms: u64 },
    /// A seal wrote a snapshot.
    Sealed {
        snapshot: SnapshotId,
        revision: Option<u64>,
        ms: f64,
    },
    /// A problem that did not stop the engine.
    Warning(String),
    /// The repository cannot be written (full, failing, unreachable): capture goes on into the
    /// log and the seal is retried with backoff. The reason is one line.
    StoreFailed(String),
    /// The repository works again and the engine caught up with the log.
    StoreRecovered {
        /// How long it was unavailable, ms.
        after_ms: u64,
    },
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// What opening the log found.
    pub recovery: Recovery,
    /// The snapshot of the last seal.
    pub snapshot: Option<SnapshotId>,
    /// Capture counters.
    pub capture: CaptureStats,
}

/// Latencies from the first event on a path to its change being durable in the log.
#[derive(Default)]
struct Latencies {
    samples: Vec<f32>,
    next: usize,
}

impl Latencies {
    const KEEP: usize = 100_000;

    fn add(&mut self, ms: f32) {
        if self.samples.len() < Self::KEEP {
            self.samples.push(ms);
        } else {
            self.samples[self.next] = ms;
            self.next = (self.next + 1) % Self::KEEP;
        }
    }

    fn summary(&self) -> RpoSummary {
        let mut v = self.samples.clone();
        v.sort_by(f32::total_cmp);
        let q = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        RpoSummary {
            samples: v.len(),
            p50: q(0.5),
            p99: q(0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// Event-to-durable latency figures (ms) over the last 100k changes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RpoSummary {
    /// Changes measured.
    pub samples: usize,
    /// Median.
    pub p50: f32,
    /// 99th percentile.
    pub p99: f32,
    /// Largest.
    pub max: f32,
}

/// `status.json`, refreshed every second by a running `watch` (`docs/format.md` §11).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Format version (1).
    pub version: u32,
    /// The daemon's process id.
    pub pid: u32,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// The watched directory.
    pub watched: PathBuf,
    /// The repository.
    pub repository: String,
    /// Engine figures: applied and sealed revision, log, catalog.
    pub engine: EngineStatus,
    /// Milliseconds since the last seal (by this process).
    pub last_seal_age_ms: Option<u64>,
    /// Changes waiting in the coalescer.
    pub pending_changes: usize,
    /// Age of the oldest change not yet in the log, ms.
    pub capture_lag_ms: u64,
    /// Capture counters.
    pub capture: CaptureStats,
    /// Event-to-durable latency.
    pub rpo_ms: RpoSummary,
    /// The last error met while capturing.
    pub last_error: Option<String>,
}

/// What the capture loop reports to the status writer.
#[derive(Debug, Clone, Default)]
struct CaptureFigures {
    capture: CaptureStats,
    last_error: Option<String>,
    pending: usize,
    lag_ms: u64,
    rpo: RpoSummary,
}

impl Status {
    fn new(engine: EngineStatus, watched: &Path, repository: &str, f: CaptureFigures) -> Self {
        Status {
            version: 1,
            pid: std::process::id(),
            updated: chrono::Utc::now().to_rfc3339(),
            watched: watched.to_path_buf(),
            repository: repository.to_owned(),
            last_seal_age_ms: engine
                .state_machine
                .since_seal()
                .map(|d| d.as_millis() as u64),
            pending_changes: f.pending,
            capture_lag_ms: f.lag_ms,
            capture: f.capture,
            rpo_ms: f.rpo,
            last_error: engine.state_machine.store_error.clone().or(f.last_error),
            engine,
        }
    }
}

struct EngineSink<'a> {
    rt: &'a tokio::runtime::Handle,
    engine: &'a Engine,
}

impl Sink for EngineSink<'_> {
    fn write(&mut self, batch: Batch) -> tidemark_core::Result<Vec<Vec<u8>>> {
        self.rt
            .block_on(self.engine.write(batch))
            .map(|r| r.rescan)
            .map_err(|e| match e {
                // Already one line that names the cause.
                tidemark_cluster::Error::Log(why) => tidemark_core::Error::Invalid(why),
                e => tidemark_core::Error::Poisoned(format!("the engine stopped: {e}")),
            })
    }
}

/// Reads the deletion records; when there are new ones, stops reusing their packs and copies
/// out what the catalog still needs; only then declares them seen in the session, which lets
/// prune delete those packs (`docs/format.md` §19). Returns the blobs copied.
fn advance_view(engine: &Engine, repo: &Repository) -> Result<u64> {
    let pending = repo.unrevalidated()?;
    let copied = if pending.packs.is_empty() {
        0
    } else {
        engine.state_machine().revalidate(&pending.packs)?
    };
    repo.mark_revalidated(&pending)?;
    Ok(copied)
}

/// Whether this writer's lease still holds (`docs/format.md` §19); `Ok` without a session.
fn lease_check(repo: &Repository) -> tidemark_core::Result<()> {
    repo.session()
        .map_or(Ok(()), tidemark_core::lifecycle::Session::check)
}

/// First wait before retrying a seal after a store failure; it doubles up to [`STORE_RETRY_MAX`].
const STORE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between seal retries while the repository fails.
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Glob-escapes a literal path for an exclude pattern.
fn escape_glob(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// The metadata of the watched directory's ancestors, outermost first, each named.
fn ancestors(root: &Path) -> Vec<tidemark_core::snapshot::Node> {
    let mut out = Vec::new();
    let mut acc = PathBuf::from("/");
    let comps: Vec<_> = root.components().skip(1).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        acc.push(c);
        let mut node = std::fs::symlink_metadata(&acc)
            .map(|m| node_from_metadata(&m))
            .unwrap_or_default();
        node.set_name(c.as_os_str());
        out.push(node);
    }
    out
}

fn sm_options(root: &Path, hostname: &str, username: &str) -> SmOptions {
    SmOptions {
        watched: root.to_path_buf(),
        ancestors: ancestors(root),
        hostname: hostname.to_owned(),
        username: username.to_owned(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

/// Opens the engine of a standalone device (a group of one) in `state_dir`, initialises its
/// group when new, and waits until it leads with every change of its log applied.
async fn open_standalone(
    state_dir: &Path,
    repo: Repository,
    opts: EngineOptions,
) -> Result<(Engine, tidemark_core::wal::Recovery)> {
    let parts = EngineParts::standalone(state_dir)?;
    let (engine, recovery) = Engine::open(parts, repo, opts).await?;
    if !engine.is_initialized().await? {
        engine.initialize(Engine::standalone_members()).await?;
    }
    engine.ready(std::time::Duration::from_secs(300)).await?;
    Ok((engine, recovery))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tidemark-rt")
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the async runtime: {e}")))
}

/// Replays the log of `state_dir` into a snapshot (nothing is watched; the source may be gone).
pub fn recover(
    repo: Repository,
    state_dir: &Path,
    wal: WalOptions,
    hostname: &str,
) -> Result<Report> {
    let owner = StateDir::owner(state_dir)?;
    let _state = StateDir::open(state_dir, &owner, false)?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut opts = EngineOptions::new(sm_options(&owner.path, hostname, ""));
        opts.wal = wal;
        let (engine, recovery) = open_standalone(state_dir, repo, opts).await?;
        let sealed = engine.shutdown().await?;
        Ok(Report {
            recovery,
            snapshot: sealed.map(|s| s.id),
            capture: CaptureStats::default(),
        })
    })
}

/// Watches `opts.root` until `stop` is set: every change is captured into the log and sealed
/// into snapshots; on stop, what is pending is captured and sealed before returning.
pub fn watch(
    repo: &Repository,
    opts: &WatchOptions,
    stop: &AtomicBool,
    notify: &mut dyn FnMut(Notice),
) -> Result<Report> {
    watch_inner(repo, opts, stop, notify).map_err(|e| match e {
        // The catalog shares the state directory's disk with the log: say what that means.
        Error::Engine(tidemark_cluster::Error::Catalog { reason, path })
            if reason.contains("os error 28") =>
        {
            Error::Invalid(format!(
                "the state directory's disk is full: catalog {path}: {reason}: capture stopped; every change acknowledged before is in the log"
            ))
        }
        e => e,
    })
}

fn watch_inner(
    repo: &Repository,
    opts: &WatchOptions,
    stop: &AtomicBool,
    notify: &mut dyn FnMut(Notice),
) -> Result<Report> {
    let root = opts.root.clone();
    let owner = WatchJson {
        version: 1,
        repository: opts.repository.clone(),
        repository_id: repo.config().id.to_hex(),
        path: root.clone(),
    };
    let state = StateDir::open(&opts.state_dir, &owner, true)?;
    let mut excludes = opts.excludes.clone();
    // Never capture our own state or the repository, should they live inside the watched tree.
    for own in [state.path().to_path_buf(), PathBuf::from(&opts.repository)] {
        if let Ok(abs) = own.canonicalize() {
            if abs.starts_with(&root) {
                excludes.push(escape_glob(&abs));
            }
        }
    }
    let excludes = Excludes::new(&excludes)?;
    let rt = runtime()?;
    let mut engine_opts = EngineOptions::new(sm_options(&root, &opts.hostname, &opts.username));
    engine_opts.wal = opts.wal;
    engine_opts.seal_interval = opts.seal_interval;
    engine_opts.seal_bytes = opts.seal_bytes;
    let (engine, recovery) =
        rt.block_on(open_standalone(state.path(), repo.clone(), engine_opts))?;
    let engine = Arc::new(engine);
    // After a crash, what reached the log is sealed before anything new is captured (unless the
    // repository cannot be written: then the seal schedule retries it).
    let recovered = if engine.state_machine().changed_since_seal() && recovery.records > 0 {
        match rt.block_on(engine.seal()) {
            Ok(s) => s.map(|s| s.id),
            Err(tidemark_cluster::Error::Store(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    notify(Notice::Started {
        recovery: recovery.clone(),
        sealed: recovered,
        state_dir: state.path().to_path_buf(),
    });

    let raw = RawWatcher::start(&root)?;
    let capture_stats = Arc::new(Mutex::new(CaptureFigures::default()));
    let done = Arc::new(AtomicBool::new(false));
    let sealed_tx = Arc::new(Mutex::new(Vec::<SealedSnapshot>::new()));
    // The seal schedule, independent of capture so a long file read cannot hold it up. While
    // the repository fails, seals are retried with exponential backoff (250 ms to 30 s); each
    // retry first replays the log since the last seal into the repository.
    let sealer = {
        let (engine, done, sealed_tx, repo) = (
            engine.clone(),
            done.clone(),
            sealed_tx.clone(),
            repo.clone(),
        );
        rt.spawn(async move {
            let mut retry: Option<(Instant, Duration)> = None;
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let due = match retry {
                    Some((at, _)) => Instant::now() >= at,
                    None => engine.seal_due().is_some(),
                };
                if !due {
                    continue;
                }
                match engine.seal().await {
                    Ok(s) => {
                        retry = None;
                        if let Some(s) = s {
                            sealed_tx.lock().expect("seal list").push(s);
                        }
                    }
                    Err(tidemark_cluster::Error::Store(why)) => {
                        // Paused past the lease: prune may have deleted what this writer
                        // needs, so it must stop, not retry (`docs/format.md` §19).
                        if let Err(lapsed) = lease_check(&repo) {
                            return Err(tidemark_cluster::Error::Core(lapsed));
                        }
                        let wait =
                            retry.map_or(STORE_RETRY_FIRST, |(_, d)| (d * 2).min(STORE_RETRY_MAX));
                        tracing::warn!("seal failed: {why}; retrying in {wait:?}");
                        retry = Some((Instant::now() + wait, wait));
                    }
                    Err(e) => {
                        tracing::error!("seal failed: {e}");
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    };
    let status_task = {
        let (engine, done, cs) = (engine.clone(), done.clone(), capture_stats.clone());
        let (path, watched, repository) = (
            state.path().join("status.json"),
            root.clone(),
            opts.repository.clone(),
        );
        rt.spawn(async move {
            while !done.load(Ordering::Acquire) {
                if let Ok(es) = engine.status() {
                    let figures = cs.lock().expect("stats").clone();
                    let status = Status::new(es, &watched, &repository, figures);
                    let _ = write_status(&path, &status);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Every few minutes: take in new deletion records, so prune can free space while we run.
    let view_task = {
        let (engine, done, repo) = (engine.clone(), done.clone(), repo.clone());
        let every = std::env::var("TIDEMARK_VIEW_EVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(tidemark_core::lifecycle::RENEW_EVERY, Duration::from_millis);
        rt.spawn(async move {
            let mut last = Instant::now();
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let (engine, repo) = (engine.clone(), repo.clone());
                match tokio::task::spawn_blocking(move || advance_view(&engine, &repo)).await {
                    Ok(Ok(0)) | Err(_) => {}
                    Ok(Ok(n)) => tracing::info!("copied {n} blobs out of packs condemned by prune"),
                    Ok(Err(e)) => tracing::warn!("taking in prune's deletion records: {e}"),
                }
            }
        })
    };

    let started = Instant::now();
    let now = || started.elapsed();
    let handle = rt.handle().clone();
    let mut sink = EngineSink {
        rt: &handle,
        engine: &engine,
    };
    let mut capturer = Capturer::new(
        root.clone(),
        repo.clone(),
        excludes.clone(),
        CaptureOptions::default(),
    );
    let mut coalescer = Coalescer::new(opts.coalesce);
    let mut translator = Translator::new(root.clone());
    let mut first_seen: BTreeMap<PathBuf, Instant> = BTreeMap::new();
    let mut latencies = Latencies::default();
    // Test hook: TIDEMARK_ACK_LOG names a file that gets one line per captured path once the change
    // is durable in the log (written after the fsync, so a line present means acknowledged).
    let mut ack_log = std::env::var_os("TIDEMARK_ACK_LOG").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let mut events = Vec::new();
    // The reconcile scan: compare the catalog with the disk (unchanged files are not read).
    coalescer.push(Event::Rescan(PathBuf::new()), now());
    let mut reconciling = true;
    let mut last_reconcile = Instant::now();
    let mut last_stats = Instant::now();
    let mut store_down: Option<Instant> = None;
    let tree: &dyn LiveTree = engine.state_machine();
    let result: Result<()> = (|| {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            // Wait for events until the next deadline (at most 50 ms, to notice `stop`).
            let t = now();
            let deadline = [coalescer.next_deadline(), translator.deadline()]
                .into_iter()
                .flatten()
                .min();
            let wait = deadline
                .map_or(Duration::from_millis(50), |d| d.saturating_sub(t))
                .min(Duration::from_millis(50));
            let mut raw_events = Vec::new();
            // Stopping still waits for the events that explain paths capture found gone.
            if !stopping || capturer.unresolved() > 0 {
                if let Ok(ev) = raw.events.recv_timeout(wait) {
                    raw_events.push(ev);
                }
            }
            raw_events.extend(raw.events.try_iter().take(65_536));
            let t = now();
            for ev in raw_events {
                match ev {
                    Ok(ev) => translator.translate(&ev, t, &mut events),
                    Err(e) => {
                        let msg = watcher::describe(&e);
                        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                            return Err(Error::Watch(msg));
                        }
                        notify(Notice::Warning(format!("watcher: {msg}; rescanning")));
                        events.push(Event::Rescan(PathBuf::new()));
                    }
                }
            }
            if raw.overflowed.swap(false, Ordering::AcqRel) {
                notify(Notice::Warning(
                    "the event queue overflowed; rescanning everything".into(),
                ));
                events.push(Event::Rescan(PathBuf::new()));
            }
            translator.expire(t, &mut events);
            let arrived = Instant::now();
            for ev in events.drain(..) {
                let (Event::Changed(p)
                | Event::Rescan(p)
                | Event::Moved { to: p, .. }
                | Event::Removed(p)) = &ev;
                first_seen.entry(p.clone()).or_insert(arrived);
                coalescer.push(ev, t);
            }
            if let Some(every) = opts.reconcile_every {
                if last_reconcile.elapsed() >= every {
                    coalescer.push(Event::Rescan(PathBuf::new()), t);
                    last_reconcile = Instant::now();
                }
            }
            // Everything pending is due when stopping.
            let due = coalescer.poll(if stopping {
                t + Duration::from_secs(3600)
            } else {
                t
            });
            let mut handled = Vec::with_capacity(due.len());
            for change in &due {
                capturer.handle(change, tree, &mut sink)?;
                match change {
                    Change::Read(p) | Change::Remove(p) => handled.push((p.clone(), false)),
                    Change::Rescan(p) => handled.push((p.clone(), true)),
                    Change::Move { from, to } => {
                        handled.push((from.clone(), true));
                        handled.push((to.clone(), true));
                    }
                }
            }
            capturer.finish_round(tree, &mut sink)?;
            let durable = Instant::now();
            let (followups, deferred) = capturer.take_followups();
            handled.retain(|(p, _)| !deferred.contains(p));
            if let Some(f) = &mut ack_log {
                use std::io::Write as _;
                let mut lines = Vec::new();
                for (p, _) in &handled {
                    if !p.as_os_str().is_empty() {
                        lines.extend_from_slice(p.as_os_str().as_bytes());
                        lines.push(b'\n');
                    }
                }
                let _ = f.write_all(&lines);
            }
            for (p, subtree) in handled {
                let mut done = Vec::new();
                if subtree {
                    // Everything at or below `p` was covered (`PathBuf` orders by component).
                    for (k, at) in first_seen.range(p.clone()..) {
                        if !k.starts_with(&p) {
                            break;
                        }
                        done.push((k.clone(), *at));
                    }
                } else if let Some(at) = first_seen.get(&p) {
                    done.push((p.clone(), *at));
                }
                for (k, at) in done {
                    first_seen.remove(&k);
                    latencies.add(durable.duration_since(at).as_secs_f32() * 1e3);
                }
            }
            if reconciling
                && due
                    .iter()
                    .any(|c| matches!(c, Change::Rescan(p) if p.as_os_str().is_empty()))
            {
                reconciling = false;
                notify(Notice::Reconciled {
                    ms: started.elapsed().as_millis() as u64,
                });
            }
            for c in followups {
                match c {
                    Change::Rescan(p) => coalescer.push(Event::Rescan(p), t),
                    Change::Read(p) => coalescer.push(Event::Changed(p), t),
                    Change::Remove(p) => coalescer.push(Event::Removed(p), t),
                    Change::Move { from, to } => coalescer.push(Event::Moved { from, to }, t),
                }
            }
            for p in deferred {
                coalescer.push(Event::Changed(p), t);
            }
            // Paths a replay after a store failure could not apply: read them again.
            for p in engine.state_machine().take_rescans() {
                coalescer.push(
                    Event::Rescan(PathBuf::from(std::ffi::OsStr::from_bytes(&p))),
                    t,
                );
            }
            match (engine.state_machine().store_error(), store_down) {
                (Some(why), None) => {
                    store_down = Some(Instant::now());
                    notify(Notice::StoreFailed(why));
                }
                (None, Some(since)) => {
                    store_down = None;
                    notify(Notice::StoreRecovered {
                        after_ms: since.elapsed().as_millis() as u64,
                    });
                }
                _ => {}
            }
            for s in sealed_tx.lock().expect("seal list").drain(..) {
                let st = engine.state_machine().stats();
                notify(Notice::Sealed {
                    snapshot: s.id,
                    revision: st.sealed,
                    ms: st.last_seal_ms,
                });
            }
            if sealer.is_finished() {
                // Its error is reported below.
                return Err(Error::Invalid("the seal task stopped".into()));
            }
            if last_stats.elapsed() >= Duration::from_millis(200) {
                let lag = first_seen
                    .values()
                    .min()
                    .map_or(0, |t| t.elapsed().as_millis() as u64);
                *capture_stats.lock().expect("stats") = CaptureFigures {
                    capture: capturer.stats,
                    last_error: capturer.last_error.clone(),
                    pending: coalescer.pending(),
                    lag_ms: lag,
                    rpo: latencies.summary(),
                };
                last_stats = Instant::now();
            }
            if stopping
                && coalescer.pending() == 0
                && capturer.pending_edits() == 0
                && capturer.unresolved() == 0
            {
                return Ok(());
            }
        }
    })();
    done.store(true, Ordering::Release);
    let sealer_result = rt.block_on(sealer);
    let _ = rt.block_on(status_task);
    let _ = rt.block_on(view_task);
    let write_status_now = |last_error: Option<String>| {
        if let Ok(es) = engine.status() {
            let figures = capture_stats.lock().expect("stats").clone();
            let mut status = Status::new(es, &root, &opts.repository, figures);
            status.last_error = last_error.or(status.last_error);
            let _ = write_status(&state.path().join("status.json"), &status);
        }
    };
    // A writer stopped past its lease must stop (`docs/format.md` §19): say so, whatever the
    // seal that refused made of it on its way through openraft.
    let failed = result.is_err() || matches!(sealer_result, Ok(Err(_)));
    if let (true, Err(lapsed)) = (failed, lease_check(repo)) {
        write_status_now(Some(lapsed.to_string()));
        return Err(lapsed.into());
    }
    // The seal task's own error is the cause; the loop only noticed that it stopped.
    if let Ok(Err(e)) = sealer_result {
        write_status_now(Some(e.to_string()));
        return Err(e.into());
    }
    if let Err(e) = result {
        write_status_now(Some(e.to_string()));
        return Err(e);
    }
    let before = engine.state_machine().seal_snapshot_id();
    let sealed = match rt.block_on(engine.close()) {
        Ok(s) => s,
        Err(tidemark_cluster::Error::Store(_)) if lease_check(repo).is_err() => {
            let lapsed = lease_check(repo).expect_err("checked");
            write_status_now(Some(lapsed.to_string()));
            return Err(lapsed.into());
        }
        Err(tidemark_cluster::Error::Store(why)) => {
            let st = engine.state_machine().stats();
            let msg = format!(
                "{why}: the changes since revision {} are safe in the log in {} and will be sealed by the next `tidemark watch` or `tidemark recover`",
                st.sealed.map_or_else(|| "0".into(), |r| r.to_string()),
                state.path().display()
            );
            write_status_now(Some(msg.clone()));
            return Err(Error::Invalid(msg));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(s) = sealed.filter(|s| Some(s.id) != before) {
        let st = engine.state_machine().stats();
        notify(Notice::Sealed {
            snapshot: s.id,
            revision: st.sealed,
            ms: st.last_seal_ms,
        });
    }
    let final_status = Status::new(
        engine.status()?,
        &root,
        &opts.repository,
        CaptureFigures {
            capture: capturer.stats,
            last_error: capturer.last_error.clone(),
            pending: 0,
            lag_ms: 0,
            rpo: latencies.summary(),
        },
    );
    let _ = write_status(&state.path().join("status.json"), &final_status);
    Ok(Report {
        recovery,
        snapshot: sealed.map(|s| s.id),
        capture: capturer.stats,
    })
}

fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status).expect("JSON"))?;
    std::fs::rename(&tmp, path)
}

/// A path relative to the watched root as bytes (for messages).
pub fn rel_display(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}
