//! `tidemark watch`: the daemon in the foreground (`tidemark_daemon::run`), its notices printed;
//! and the state directory lookup that `recover` and `status` share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tidemark_core::id::Kind;
use tidemark_core::repo::Config;
use tidemark_core::store::CONFIG_ID;
use tidemark_daemon::{Notice, StateDir, Trigger, WatchOptions};

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

/// `tidemark watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The directory to watch.
    pub path: PathBuf,
    /// Where the log and catalog live (default: a directory per repository and path under
    /// $XDG_STATE_HOME/tidemark).
    #[arg(long, env = "TIDEMARK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Exclude a pattern (as for backup); repeatable.
    #[arg(short = 'e', long)]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Seal a snapshot at least this often while something changes.
    #[arg(long, default_value = "500ms", value_parser = crate::parse::duration)]
    pub seal_interval: Duration,
    /// Seal once this much new data reached the log.
    #[arg(long, default_value = "4MiB", value_parser = crate::parse::size)]
    pub seal_bytes: u64,
    /// Wait this long after the last event on a path before capturing it.
    #[arg(long, default_value = "20ms", value_parser = crate::parse::duration)]
    pub debounce: Duration,
    /// Capture a path that keeps changing at least this often.
    #[arg(long, default_value = "250ms", value_parser = crate::parse::duration)]
    pub max_delay: Duration,
    /// Also compare the whole tree with the disk this often (e.g. 1h); off by default.
    #[arg(long, value_parser = crate::parse::duration)]
    pub reconcile_every: Option<Duration>,
    /// Hostname recorded in snapshots.
    #[arg(long)]
    pub host: Option<String>,
    /// Test hook: append each captured path to FILE once its change is durable in the log.
    #[arg(long, hide = true, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
    /// Test hook: take in prune's deletion records this often (default every 5 minutes).
    #[arg(long, hide = true, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub view_every: Option<Duration>,
}

/// The repository id, read from the plain config (no password needed).
fn repo_id(g: &Global) -> Result<String> {
    let (store, _) = open::store(g)?;
    let bytes = store
        .get(Kind::Config, &CONFIG_ID, None)
        .with_context(|| format!("no repository at {}", store.location()))?;
    Ok(Config::decode(&bytes)?.id.to_hex())
}

fn state_home() -> Result<PathBuf> {
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .context(
            "cannot find the state directory (set HOME or XDG_STATE_HOME), or pass --state-dir",
        )
}

fn canonical_dir(path: &Path) -> Result<PathBuf> {
    let p = path
        .canonicalize()
        .with_context(|| format!("{} does not exist", path.display()))?;
    if !p.is_dir() {
        bail!("{} is not a directory", p.display());
    }
    if p.parent().is_none() {
        bail!("watching / itself is not supported; watch its top-level directories");
    }
    Ok(p)
}

/// The state directory for `path` (or the flag), or the only one of this repository.
pub(super) fn resolve_state_dir(
    g: &Global,
    explicit: Option<&Path>,
    path: Option<&Path>,
) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let id = repo_id(g)?;
    if let Some(p) = path {
        let abs = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        return Ok(tidemark_daemon::default_state_dir(
            &state_home()?,
            &id,
            &abs,
        ));
    }
    let base = state_home()?.join("tidemark");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&id[..16]))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no watched directory of this repository has state here ({}); give the PATH or --state-dir", base.display()),
        _ => {
            let list: Vec<String> = found
                .iter()
                .map(|d| StateDir::owner(d).map_or_else(|_| d.display().to_string(), |o| o.path.display().to_string()))
                .collect();
            bail!("several watched directories use this repository: {}; name one", list.join(", "))
        }
    }
}

pub fn run(g: &Global, a: &WatchArgs, trigger: &Trigger) -> Result<Outcome> {
    let root = canonical_dir(&a.path)?;
    let excludes = open::excludes(&a.exclude, &a.exclude_file)?;
    let mut repo = open::open(g)?;
    repo.begin_session("watch", &a.host.clone().unwrap_or_else(open::hostname))?;
    repo.load_index().context("loading the index")?;
    let (store, _) = open::store(g)?;
    let state_dir = match &a.state_dir {
        Some(d) => d.clone(),
        None => {
            tidemark_daemon::default_state_dir(&state_home()?, &repo.config().id.to_hex(), &root)
        }
    };
    let mut opts = WatchOptions::new(root.clone(), state_dir, store.location());
    opts.excludes = excludes;
    opts.coalesce.debounce = a.debounce;
    opts.coalesce.max_delay = a.max_delay;
    opts.seal_interval = a.seal_interval;
    opts.seal_bytes = a.seal_bytes;
    opts.reconcile_every = a.reconcile_every;
    opts.hostname = a.host.clone().unwrap_or_else(open::hostname);
    opts.username = open::username();
    opts.ack_log.clone_from(&a.ack_log);
    if let Some(every) = a.view_every {
        opts.view_every = every;
    }
    let (json, quiet) = (g.json, g.quiet);
    let mut printer = NoticePrinter {
        json,
        quiet,
        root: root.clone(),
        seals_since: 0,
        last_line: Instant::now(),
        last_seal: None,
    };
    let cfg = tidemark_daemon::Config {
        repo,
        options: opts,
    };
    // A closed stdout stops the daemon as a signal would (it seals what it has), then the
    // error is reported: `main` makes a broken pipe a quiet exit.
    let mut output_error = None;
    let report = tidemark_daemon::run(cfg, trigger.subscribe(), &mut |n| {
        if let Err(e) = printer.print(n) {
            trigger.trigger();
            output_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = output_error {
        return Err(e.into());
    }
    if json {
        outln!(
            "{}",
            serde_json::json!({"message_type": "stopped", "snapshot": report.snapshot.map(|s| s.to_hex()), "capture": report.capture})
        )?;
    } else if !quiet {
        match report.snapshot.or(printer.last_seal.map(|s| s.0)) {
            Some(s) => eprintln!("stopped; everything captured is in snapshot {}", s.short()),
            None => eprintln!("stopped"),
        }
    }
    Ok(Outcome::Ok)
}

/// Prints the daemon's notices: JSON lines on stdout with --json, else a few lines on stderr
/// (seals at most every 30 s).
struct NoticePrinter {
    json: bool,
    quiet: bool,
    root: PathBuf,
    seals_since: u64,
    last_line: Instant,
    last_seal: Option<(tidemark_core::id::SnapshotId, Option<u64>)>,
}

impl NoticePrinter {
    fn print(&mut self, n: Notice) -> std::io::Result<()> {
        match n {
            Notice::Started {
                recovery,
                sealed,
                state_dir,
            } => {
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({"message_type": "started", "watched": self.root, "state_dir": state_dir,
                        "recovered_records": recovery.records, "torn_bytes": recovery.torn_bytes, "unsynced_bytes": recovery.unsynced_bytes,
                        "recovered_snapshot": sealed.map(|s| s.to_hex())})
                    )?;
                } else if !self.quiet {
                    eprintln!(
                        "watching {} (state in {})",
                        self.root.display(),
                        state_dir.display()
                    );
                    for note in recovery.notes() {
                        eprintln!("{note}");
                    }
                    if let Some(s) = sealed {
                        eprintln!("sealed the recovered log as snapshot {}", s.short());
                    }
                }
            }
            Notice::Reconciled { ms } => {
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({"message_type": "reconciled", "ms": ms})
                    )?;
                } else if !self.quiet {
                    eprintln!(
                        "reconciled with the disk in {:.1} s; capturing changes",
                        ms as f64 / 1000.0
                    );
                }
            }
            Notice::Sealed {
                snapshot,
                revision,
                ms,
            } => {
                self.seals_since += 1;
                self.last_seal = Some((snapshot, revision));
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({"message_type": "sealed", "snapshot": snapshot.to_hex(), "revision": revision, "seal_ms": ms})
                    )?;
                } else if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(30) {
                    eprintln!(
                        "{} snapshots in the last {} s; latest {} at revision {}",
                        self.seals_since,
                        self.last_line.elapsed().as_secs(),
                        snapshot.short(),
                        revision.unwrap_or(0)
                    );
                    self.seals_since = 0;
                    self.last_line = Instant::now();
                }
            }
            Notice::Warning(w) => eprintln!("tidemark: warning: {w}"),
            Notice::StoreFailed(why) => {
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({"message_type": "store_failed", "reason": why})
                    )?;
                }
                eprintln!(
                "tidemark: error: {why}; capture goes on into the log and the seal is retried until the repository works again"
            );
            }
            Notice::StoreRecovered { after_ms } => {
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({"message_type": "store_recovered", "after_ms": after_ms})
                    )?;
                }
                eprintln!(
                    "tidemark: the repository works again after {:.1} s; caught up with the log",
                    after_ms as f64 / 1e3
                );
            }
        }
        Ok(())
    }
}
