//! Composition: [`run`] opens the state directory and the engine, seals a recovered log, starts
//! the tasks (seal schedule, status, prune's deletion records) and the capture loop, and on
//! shutdown drains them in order, seals the rest and writes the last status.
//!
//! ```text
//! run ─┬─ capture loop (this thread) ── hears `shutdown`, captures what is pending, ends
//!      │      └─ then `tasks` is triggered ─▶ seal schedule · status · view  (tokio tasks)
//!      ├─ Drain::wait: until every task dropped its Done (as mini-redis drains connections)
//!      └─ Engine::close: the last seal; status.json; Report
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tidemark_cluster::{Engine, EngineOptions, EngineParts, SmOptions};
use tidemark_core::repo::Repository;
use tidemark_core::source::{node_from_metadata, Excludes};

use crate::capture::{CaptureLoop, Parts};
use crate::seal::lease_check;
use crate::shutdown::{self, Shutdown};
use crate::state::{StateDir, WatchJson};
use crate::status::{CaptureFigures, StatusFile};
use crate::watcher::RawWatcher;
use crate::{seal, view, Error, Notice, Report, Result, WatchOptions};

/// What [`run`] serves: an opened repository (index loaded, session begun) and how to watch.
pub struct Config {
    /// The repository snapshots are sealed into.
    pub repo: Repository,
    /// The watched directory, the state directory, schedules and test hooks.
    pub options: WatchOptions,
}

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

pub(crate) fn sm_options(root: &Path, hostname: &str, username: &str) -> SmOptions {
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
pub(crate) async fn open_standalone(
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tidemark-rt")
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the async runtime: {e}")))
}

/// Watches `cfg.options.root` until `shutdown`: every change is captured into the log and sealed
/// into snapshots; on shutdown, what is pending is captured and sealed before returning.
/// `notify` hears what is worth telling the user, on the calling thread.
pub fn run(cfg: Config, shutdown: Shutdown, notify: &mut dyn FnMut(Notice)) -> Result<Report> {
    serve(cfg, shutdown, notify).map_err(|e| match e {
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

fn serve(cfg: Config, shutdown: Shutdown, notify: &mut dyn FnMut(Notice)) -> Result<Report> {
    let Config {
        repo,
        options: opts,
    } = cfg;
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
    let status = StatusFile {
        path: state.path().join("status.json"),
        watched: root.clone(),
        repository: opts.repository.clone(),
        figures: Arc::new(Mutex::new(CaptureFigures::default())),
    };
    let sealed = seal::Sealed::default();
    // The tasks stop when capture has drained, not at the outer signal: a seal may still be
    // due for what capture takes in while stopping.
    let (stop_tasks, tasks_shutdown) = shutdown::channel();
    let (done, mut drain) = shutdown::drain();
    rt.spawn(seal::task(
        engine.clone(),
        repo.clone(),
        sealed.clone(),
        tasks_shutdown.clone(),
        done.clone(),
    ));
    rt.spawn(
        status
            .clone()
            .task(engine.clone(), tasks_shutdown.clone(), done.clone()),
    );
    // Every few minutes: take in new deletion records, so prune can free space while we run.
    rt.spawn(view::task(
        engine.clone(),
        repo.clone(),
        opts.view_every,
        tasks_shutdown,
        done,
    ));

    let mut capture = CaptureLoop::new(Parts {
        root: root.clone(),
        repo: repo.clone(),
        engine: engine.clone(),
        rt: rt.handle().clone(),
        excludes,
        coalesce: opts.coalesce,
        reconcile_every: opts.reconcile_every,
        ack_log: opts.ack_log.clone(),
        figures: status.figures.clone(),
        sealed,
        shutdown,
    });
    let result = capture.run(&raw, &mut drain, notify);
    stop_tasks.trigger();
    let mut ended = rt.block_on(drain.wait());
    ended.extend(capture.task_ended.take());
    let sealer_result = ended
        .into_iter()
        .find_map(|(name, r)| (name == "seal").then_some(r))
        .unwrap_or(Ok(()));
    // A writer stopped past its lease must stop (`docs/format.md` §19): say so, whatever the
    // seal that refused made of it on its way through openraft.
    let failed = result.is_err() || sealer_result.is_err();
    if let (true, Err(lapsed)) = (failed, lease_check(&repo)) {
        status.write(&engine, Some(lapsed.to_string()));
        return Err(lapsed.into());
    }
    // The seal task's own error is the cause; the loop only noticed that it stopped.
    if let Err(e) = sealer_result {
        status.write(&engine, Some(e.to_string()));
        return Err(e);
    }
    if let Err(e) = result {
        status.write(&engine, Some(e.to_string()));
        return Err(e);
    }
    let before = engine.state_machine().seal_snapshot_id();
    let last = match rt.block_on(engine.close()) {
        Ok(s) => s,
        Err(tidemark_cluster::Error::Store(_)) if lease_check(&repo).is_err() => {
            let lapsed = lease_check(&repo).expect_err("checked");
            status.write(&engine, Some(lapsed.to_string()));
            return Err(lapsed.into());
        }
        Err(tidemark_cluster::Error::Store(why)) => {
            let st = engine.state_machine().stats();
            let msg = format!(
                "{why}: the changes since revision {} are safe in the log in {} and will be sealed by the next `tidemark watch` or `tidemark recover`",
                st.sealed.map_or_else(|| "0".into(), |r| r.to_string()),
                state.path().display()
            );
            status.write(&engine, Some(msg.clone()));
            return Err(Error::Invalid(msg));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(s) = last.filter(|s| Some(s.id) != before) {
        let st = engine.state_machine().stats();
        notify(Notice::Sealed {
            snapshot: s.id,
            revision: st.sealed,
            ms: st.last_seal_ms,
        });
    }
    status.write_from(engine.status()?, capture.figures(true), None);
    Ok(Report {
        recovery,
        snapshot: last.map(|s| s.id),
        capture: capture.stats(),
    })
}
