//! tidemark-daemon: the continuous engine at run time, for one watched directory, as a server.
//!
//! ```text
//! inotify ─▶ RawWatcher ─▶ Translator ─▶ Coalescer (debounce) ─▶ Capturer ─▶ Engine::write (log, apply)
//!                                               capture loop (capture.rs, the caller's thread) │
//!                        seal schedule (seal.rs): every 25 ms, Engine::seal when due ◀─────────┘
//!                        status (status.rs): status.json every second
//!                        view (view.rs): prune's deletion records, every few minutes
//! ```
//! [`run`] (server.rs) composes them; it serves until its [`Shutdown`] is signalled, then
//! captures what is pending, stops and drains the tasks, seals and returns a [`Report`].
//! [`recover`] replays a state directory's log into a snapshot without watching anything.
//!
//! ```no_run
//! # fn demo(repo: tidemark_core::repo::Repository) -> tidemark_daemon::Result<()> {
//! use tidemark_daemon::{shutdown, Config, WatchOptions};
//! let options = WatchOptions::new("/srv/share".into(), "/var/lib/tidemark/share".into(), "/backup".into());
//! let (trigger, shutdown) = shutdown::channel();
//! // e.g. from a SIGTERM handler: trigger.trigger();
//! # drop(trigger);
//! let report = tidemark_daemon::run(Config { repo, options }, shutdown, &mut |notice| eprintln!("{notice:?}"))?;
//! println!("last snapshot: {:?}", report.snapshot);
//! # Ok(()) }
//! ```

mod capture;
mod seal;
mod server;
pub mod shutdown;
mod state;
mod status;
mod view;
mod watcher;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tidemark_cluster::EngineOptions;
use tidemark_core::capture::CaptureStats;
use tidemark_core::id::SnapshotId;
use tidemark_core::repo::Repository;
use tidemark_core::wal::{Recovery, WalOptions};
use tidemark_core::watch::CoalesceOptions;

pub use server::{run, Config};
pub use shutdown::{Shutdown, Trigger};
pub use state::{default_state_dir, write_atomic, StateDir, WatchJson};
pub use status::{RpoSummary, Status};
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

/// How the daemon runs.
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
    /// How often prune's deletion records are taken in (tests shorten it; default
    /// `lifecycle::RENEW_EVERY`).
    pub view_every: Duration,
    /// Test hook: a file that gets one line per captured path (relative to the root) once the
    /// change is durable in the log, written after the fsync, so a line present means
    /// acknowledged. Crash tests compare it with what a restore finds.
    pub ack_log: Option<PathBuf>,
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
            view_every: tidemark_core::lifecycle::RENEW_EVERY,
            ack_log: None,
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

/// Replays the log of `state_dir` into a snapshot (nothing is watched; the source may be gone).
pub fn recover(
    repo: Repository,
    state_dir: &Path,
    wal: WalOptions,
    hostname: &str,
) -> Result<Report> {
    let owner = StateDir::owner(state_dir)?;
    let _state = StateDir::open(state_dir, &owner, false)?;
    let rt = server::runtime()?;
    rt.block_on(async {
        let mut opts = EngineOptions::new(server::sm_options(&owner.path, hostname, ""));
        opts.wal = wal;
        let (engine, recovery) = server::open_standalone(state_dir, repo, opts).await?;
        let sealed = engine.shutdown().await?;
        Ok(Report {
            recovery,
            snapshot: sealed.map(|s| s.id),
            capture: CaptureStats::default(),
        })
    })
}

/// A path relative to the watched root as bytes (for messages).
pub fn rel_display(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}
