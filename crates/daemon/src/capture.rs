//! The capture loop, on the thread that called [`crate::run`]: raw events from the watcher are
//! translated, coalesced (debounce and cap) and captured into the engine's log; each round also
//! announces seals and store failures, writes the test ack log and keeps the latency figures.
//!
//! ```text
//! RawWatcher ─▶ Translator ─▶ Coalescer ─▶ Capturer ─▶ EngineSink ─▶ Engine::write (durable)
//!                                 ▲            │
//!                                 └─ follow-ups, deferred paths, rescans after a store failure
//! ```
//! On shutdown it stops waiting for events, captures everything pending, and returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidemark_cluster::Engine;
use tidemark_core::batch::Batch;
use tidemark_core::capture::{CaptureOptions, CaptureStats, Capturer, LiveTree, Sink};
use tidemark_core::repo::Repository;
use tidemark_core::source::Excludes;
use tidemark_core::watch::{Change, CoalesceOptions, Coalescer, Event};

use crate::seal::Sealed;
use crate::shutdown::{Drain, Shutdown, TaskEnd};
use crate::status::{CaptureFigures, RpoSummary};
use crate::watcher::{self, RawWatcher, Translator};
use crate::{Error, Notice, Result};

/// Longest wait for events in one round, so shutdown and the tasks are noticed.
const ROUND: Duration = Duration::from_millis(50);
/// How often the figures for `status.json` are refreshed.
const FIGURES_EVERY: Duration = Duration::from_millis(200);

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

/// Writes captured batches through the engine, from the blocking capture thread.
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

/// What the capture loop needs from the composition.
pub(crate) struct Parts {
    pub(crate) root: PathBuf,
    pub(crate) repo: Repository,
    pub(crate) engine: Arc<Engine>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) excludes: Excludes,
    pub(crate) coalesce: CoalesceOptions,
    pub(crate) reconcile_every: Option<Duration>,
    /// Test hook (`WatchOptions::ack_log`): one line per captured path once it is durable.
    pub(crate) ack_log: Option<PathBuf>,
    /// Where the figures for `status.json` go.
    pub(crate) figures: Arc<Mutex<CaptureFigures>>,
    /// Seals made by the schedule, announced here.
    pub(crate) sealed: Sealed,
    /// The signal to stop: the loop then captures what is pending and returns.
    pub(crate) shutdown: Shutdown,
}

/// The capture loop's state between rounds.
pub(crate) struct CaptureLoop {
    parts: Parts,
    capturer: Capturer,
    coalescer: Coalescer,
    translator: Translator,
    first_seen: BTreeMap<PathBuf, Instant>,
    latencies: Latencies,
    ack_log: Option<File>,
    started: Instant,
    reconciling: bool,
    last_reconcile: Instant,
    last_figures: Instant,
    store_down: Option<Instant>,
    /// A task that ended before shutdown, and what it ended with.
    pub(crate) task_ended: Option<TaskEnd>,
}

impl CaptureLoop {
    pub(crate) fn new(parts: Parts) -> Self {
        let capturer = Capturer::new(
            parts.root.clone(),
            parts.repo.clone(),
            parts.excludes.clone(),
            CaptureOptions::default(),
        );
        // Written after the fsync, so a line present means acknowledged; a file that cannot be
        // opened only loses the hook.
        let ack_log = parts.ack_log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let mut coalescer = Coalescer::new(parts.coalesce);
        // The reconcile scan: compare the catalog with the disk (unchanged files are not read).
        coalescer.push(Event::Rescan(PathBuf::new()), Duration::ZERO);
        CaptureLoop {
            capturer,
            coalescer,
            translator: Translator::new(parts.root.clone()),
            first_seen: BTreeMap::new(),
            latencies: Latencies::default(),
            ack_log,
            started: Instant::now(),
            reconciling: true,
            last_reconcile: Instant::now(),
            last_figures: Instant::now(),
            store_down: None,
            task_ended: None,
            parts,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Captures until the shutdown signal, then captures what is pending and returns; or returns the
    /// first error, or an error when a task (the seal schedule) ended before shutdown.
    pub(crate) fn run(
        &mut self,
        raw: &RawWatcher,
        tasks: &mut Drain,
        notify: &mut dyn FnMut(Notice),
    ) -> Result<()> {
        let engine = self.parts.engine.clone();
        let rt = self.parts.rt.clone();
        let mut sink = EngineSink {
            rt: &rt,
            engine: &engine,
        };
        let tree: &dyn LiveTree = engine.state_machine();
        let mut events = Vec::new();
        loop {
            let stopping = self.parts.shutdown.is_shutdown();
            let t = self.receive(raw, stopping, &mut events, notify)?;
            let due = self.capture_due(t, stopping, &mut events, tree, &mut sink)?;
            if self.reconciling
                && due
                    .iter()
                    .any(|c| matches!(c, Change::Rescan(p) if p.as_os_str().is_empty()))
            {
                self.reconciling = false;
                notify(Notice::Reconciled {
                    ms: self.started.elapsed().as_millis() as u64,
                });
            }
            self.announce(notify);
            if let Some((name, result)) = tasks.try_ended() {
                // Its error is what `run` reports; this only stops the loop.
                let msg = format!("the {name} task stopped");
                self.task_ended = Some((name, result));
                return Err(Error::Invalid(msg));
            }
            if self.last_figures.elapsed() >= FIGURES_EVERY {
                let figures = self.figures(false);
                *self.parts.figures.lock().expect("status figures") = figures;
                self.last_figures = Instant::now();
            }
            if stopping
                && self.coalescer.pending() == 0
                && self.capturer.pending_edits() == 0
                && self.capturer.unresolved() == 0
            {
                return Ok(());
            }
        }
    }

    /// Waits for raw events until the next deadline (at most [`ROUND`]; not at all when
    /// stopping), translates them into `events` and returns the time they were taken at.
    fn receive(
        &mut self,
        raw: &RawWatcher,
        stopping: bool,
        events: &mut Vec<Event>,
        notify: &mut dyn FnMut(Notice),
    ) -> Result<Duration> {
        let t = self.now();
        let deadline = [self.coalescer.next_deadline(), self.translator.deadline()]
            .into_iter()
            .flatten()
            .min();
        let wait = deadline.map_or(ROUND, |d| d.saturating_sub(t)).min(ROUND);
        let mut raw_events = Vec::new();
        // Stopping still waits for the events that explain paths capture found gone.
        if !stopping || self.capturer.unresolved() > 0 {
            if let Ok(ev) = raw.events.recv_timeout(wait) {
                raw_events.push(ev);
            }
        }
        raw_events.extend(raw.events.try_iter().take(65_536));
        let t = self.now();
        for ev in raw_events {
            match ev {
                Ok(ev) => self.translator.translate(&ev, t, events),
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
        self.translator.expire(t, events);
        Ok(t)
    }

    /// Queues `events`, captures every change that is due (everything when stopping) and
    /// queues what capture asks to look at again. Returns the changes captured.
    fn capture_due(
        &mut self,
        t: Duration,
        stopping: bool,
        events: &mut Vec<Event>,
        tree: &dyn LiveTree,
        sink: &mut EngineSink<'_>,
    ) -> Result<Vec<Change>> {
        let arrived = Instant::now();
        for ev in events.drain(..) {
            let (Event::Changed(p)
            | Event::Rescan(p)
            | Event::Moved { to: p, .. }
            | Event::Removed(p)) = &ev;
            self.first_seen.entry(p.clone()).or_insert(arrived);
            self.coalescer.push(ev, t);
        }
        if let Some(every) = self.parts.reconcile_every {
            if self.last_reconcile.elapsed() >= every {
                self.coalescer.push(Event::Rescan(PathBuf::new()), t);
                self.last_reconcile = Instant::now();
            }
        }
        // Everything pending is due when stopping.
        let due = self.coalescer.poll(if stopping {
            t + Duration::from_secs(3600)
        } else {
            t
        });
        let mut handled = Vec::with_capacity(due.len());
        for change in &due {
            self.capturer.handle(change, tree, sink)?;
            match change {
                Change::Read(p) | Change::Remove(p) => handled.push((p.clone(), false)),
                Change::Rescan(p) => handled.push((p.clone(), true)),
                Change::Move { from, to } => {
                    handled.push((from.clone(), true));
                    handled.push((to.clone(), true));
                }
            }
        }
        self.capturer.finish_round(tree, sink)?;
        let durable = Instant::now();
        let (followups, deferred) = self.capturer.take_followups();
        handled.retain(|(p, _)| !deferred.contains(p));
        self.acknowledge(&handled);
        for (p, subtree) in handled {
            self.measure(&p, subtree, durable);
        }
        for c in followups {
            match c {
                Change::Rescan(p) => self.coalescer.push(Event::Rescan(p), t),
                Change::Read(p) => self.coalescer.push(Event::Changed(p), t),
                Change::Remove(p) => self.coalescer.push(Event::Removed(p), t),
                Change::Move { from, to } => self.coalescer.push(Event::Moved { from, to }, t),
            }
        }
        for p in deferred {
            self.coalescer.push(Event::Changed(p), t);
        }
        // Paths a replay after a store failure could not apply: read them again.
        for p in self.parts.engine.state_machine().take_rescans() {
            self.coalescer.push(
                Event::Rescan(PathBuf::from(std::ffi::OsStr::from_bytes(&p))),
                t,
            );
        }
        Ok(due)
    }

    /// The ack log: one line per captured path, after the change is durable.
    fn acknowledge(&mut self, handled: &[(PathBuf, bool)]) {
        let Some(f) = &mut self.ack_log else {
            return;
        };
        use std::io::Write as _;
        let mut lines = Vec::new();
        for (p, _) in handled {
            if !p.as_os_str().is_empty() {
                lines.extend_from_slice(p.as_os_str().as_bytes());
                lines.push(b'\n');
            }
        }
        let _ = f.write_all(&lines);
    }

    /// Records the event-to-durable latency of `p` (and, for a subtree, of everything below).
    fn measure(&mut self, p: &Path, subtree: bool, durable: Instant) {
        let mut done = Vec::new();
        if subtree {
            // Everything at or below `p` was covered (`PathBuf` orders by component).
            for (k, at) in self.first_seen.range(p.to_path_buf()..) {
                if !k.starts_with(p) {
                    break;
                }
                done.push((k.clone(), *at));
            }
        } else if let Some(at) = self.first_seen.get(p) {
            done.push((p.to_path_buf(), *at));
        }
        for (k, at) in done {
            self.first_seen.remove(&k);
            self.latencies
                .add(durable.duration_since(at).as_secs_f32() * 1e3);
        }
    }

    /// Tells of store failures and recoveries, and of the seals the schedule made.
    fn announce(&mut self, notify: &mut dyn FnMut(Notice)) {
        let sm = self.parts.engine.state_machine();
        match (sm.store_error(), self.store_down) {
            (Some(why), None) => {
                self.store_down = Some(Instant::now());
                notify(Notice::StoreFailed(why));
            }
            (None, Some(since)) => {
                self.store_down = None;
                notify(Notice::StoreRecovered {
                    after_ms: since.elapsed().as_millis() as u64,
                });
            }
            _ => {}
        }
        for s in self.parts.sealed.lock().expect("seal list").drain(..) {
            let st = sm.stats();
            notify(Notice::Sealed {
                snapshot: s.id,
                revision: st.sealed,
                ms: st.last_seal_ms,
            });
        }
    }

    /// The figures for `status.json`; `stopped` when nothing is pending any more.
    pub(crate) fn figures(&self, stopped: bool) -> CaptureFigures {
        let lag = if stopped {
            0
        } else {
            self.first_seen
                .values()
                .min()
                .map_or(0, |t| t.elapsed().as_millis() as u64)
        };
        CaptureFigures {
            capture: self.capturer.stats,
            last_error: self.capturer.last_error.clone(),
            pending: if stopped { 0 } else { self.coalescer.pending() },
            lag_ms: lag,
            rpo: self.latencies.summary(),
        }
    }

    /// Capture counters so far.
    pub(crate) fn stats(&self) -> CaptureStats {
        self.capturer.stats
    }
}
