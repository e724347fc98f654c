//! The raw file-system watcher: inotify through `notify`, translated into `core::watch` events.
//!
//! The notify callback only forwards into a bounded channel; a full channel sets an overflow
//! flag, which becomes a rescan of everything (as inotify's own queue overflow does: notify
//! reports it as an event with the `Rescan` flag and no paths). Renames arrive as `From`, `To`
//! and, when inotify paired them, `Both`: a `Both` is a move inside the tree, an unpaired `From`
//! a move out (a removal), an unpaired `To` a move in (a rescan of what arrived). A new directory
//! is rescanned, since files created in it before its watch was added are never reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event as RawEvent, EventKind, RecursiveMode, Watcher as _};
use tidemark_core::watch::Event;

use crate::{Error, Result};

/// How many raw events may wait before the watcher declares an overflow.
pub const QUEUE: usize = 1 << 16;

/// The running inotify watcher and the receiving end of its events.
pub struct RawWatcher {
    _watcher: notify::RecommendedWatcher,
    /// Raw events (or watcher errors), in order.
    pub events: Receiver<notify::Result<RawEvent>>,
    /// Set when events were dropped because the queue was full.
    pub overflowed: Arc<AtomicBool>,
}

fn limit_hint() -> String {
    let current = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    format!(
        "the inotify watch limit is reached (fs.inotify.max_user_watches = {current}); raise it, \
         e.g. `sysctl fs.inotify.max_user_watches=1048576` (and persist it in /etc/sysctl.d/)"
    )
}

/// A watcher error in words a user can act on.
pub fn describe(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => limit_hint(),
        _ => e.to_string(),
    }
}

impl RawWatcher {
    /// Watches `root` and every directory below it.
    pub fn start(root: &Path) -> Result<Self> {
        let (tx, rx): (Sender<_>, Receiver<_>) = crossbeam_channel::bounded(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<RawEvent>| {
            // Opens and reads (our own capture reads among them) change nothing; dropping them
            // here keeps them from filling the queue and forcing a rescan.
            if let Ok(RawEvent {
                kind: EventKind::Access(a),
                ..
            }) = &ev
            {
                if !matches!(a, AccessKind::Close(AccessMode::Write)) {
                    return;
                }
            }
            if let Err(TrySendError::Full(_)) = tx.try_send(ev) {
                flag.store(true, Ordering::Release);
            }
        })
        .map_err(|e| Error::Watch(describe(&e)))?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| Error::Watch(format!("watching {}: {}", root.display(), describe(&e))))?;
        Ok(RawWatcher {
            _watcher: watcher,
            events: rx,
            overflowed,
        })
    }
}

/// Turns raw events into `core::watch` events with paths relative to the watched root.
pub struct Translator {
    root: PathBuf,
    /// A `From` waiting for its `To`: tracker, relative path, when it arrived.
    pending_from: Option<(usize, PathBuf, Duration)>,
    /// How long an unpaired `From` waits before it counts as a move out.
    pair_window: Duration,
}

impl Translator {
    /// A translator for the watched directory `root`.
    pub fn new(root: PathBuf) -> Self {
        Translator {
            root,
            pending_from: None,
            pair_window: Duration::from_millis(20),
        }
    }

    fn rel(&self, p: &Path) -> Option<PathBuf> {
        p.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    /// An unpaired `From` older than the pair window becomes a removal.
    pub fn expire(&mut self, now: Duration, out: &mut Vec<Event>) {
        if let Some((_, p, at)) = &self.pending_from {
            if now.saturating_sub(*at) >= self.pair_window {
                out.push(Event::Removed(p.clone()));
                self.pending_from = None;
            }
        }
    }

    /// When an unpaired `From` would expire, if one is waiting.
    pub fn deadline(&self) -> Option<Duration> {
        self.pending_from
            .as_ref()
            .map(|(_, _, at)| *at + self.pair_window)
    }

    /// Translates one raw event (appending to `out`).
    pub fn translate(&mut self, ev: &RawEvent, now: Duration, out: &mut Vec<Event>) {
        if ev.need_rescan() {
            out.push(Event::Rescan(PathBuf::new()));
            return;
        }
        let tracker = ev.tracker();
        // Anything but the matching `To`/`Both` settles a waiting `From` as a move out.
        let pairs = matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        ) && tracker.is_some()
            && self.pending_from.as_ref().map(|f| f.0) == tracker;
        if !pairs {
            if let Some((_, p, _)) = self.pending_from.take() {
                out.push(Event::Removed(p));
            }
        }
        let paths: Vec<PathBuf> = ev.paths.iter().filter_map(|p| self.rel(p)).collect();
        match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                // MOVE_SELF comes without a tracker and repeats what the parent reported.
                if let (Some(t), Some(p)) = (tracker, paths.first()) {
                    self.pending_from = Some((t, p.clone(), now));
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                if !pairs {
                    out.extend(paths.into_iter().map(Event::Rescan)); // moved in from outside
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                self.pending_from = None;
                match (
                    ev.paths.first().and_then(|p| self.rel(p)),
                    ev.paths.get(1).and_then(|p| self.rel(p)),
                ) {
                    (Some(from), Some(to)) => {
                        // A directory moved: inotify may have missed what was created in it
                        // while it had no watch yet (it moved before notify added one), so its
                        // new place is compared with the catalog (by metadata: nothing
                        // unchanged is read again).
                        let is_dir = ev.paths.get(1).is_some_and(|p| {
                            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                        });
                        out.push(Event::Moved {
                            from,
                            to: to.clone(),
                        });
                        if is_dir {
                            out.push(Event::Rescan(to));
                        }
                    }
                    (None, Some(to)) => out.push(Event::Rescan(to)),
                    (Some(from), None) => out.push(Event::Removed(from)),
                    (None, None) => {}
                }
            }
            EventKind::Create(CreateKind::Folder) => {
                out.extend(paths.into_iter().map(Event::Rescan));
            }
            EventKind::Remove(_) => out.extend(paths.into_iter().map(Event::Removed)),
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Any
            | EventKind::Other => out.extend(paths.into_iter().map(Event::Changed)),
            EventKind::Access(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str], tracker: Option<usize>) -> RawEvent {
        let mut e = RawEvent::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        if let Some(t) = tracker {
            e = e.set_tracker(t);
        }
        e
    }

    fn run(events: &[RawEvent]) -> Vec<Event> {
        let mut t = Translator::new(PathBuf::from("/w"));
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            t.translate(e, Duration::from_millis(i as u64), &mut out);
        }
        t.expire(Duration::from_secs(1), &mut out);
        out
    }

    #[test]
    fn renames_inside_out_and_in() {
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(
            run(&[
                ev(from, &["/w/a"], Some(7)),
                ev(to, &["/w/b"], Some(7)),
                ev(both, &["/w/a", "/w/b"], Some(7))
            ]),
            vec![Event::Moved {
                from: "a".into(),
                to: "b".into()
            }]
        );
        assert_eq!(
            run(&[ev(from, &["/w/a"], Some(8))]),
            vec![Event::Removed("a".into())],
            "moved out"
        );
        assert_eq!(
            run(&[ev(to, &["/w/n"], Some(9))]),
            vec![Event::Rescan("n".into())],
            "moved in"
        );
        assert_eq!(
            run(&[
                ev(from, &["/w/a"], Some(1)),
                ev(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &["/w/c"],
                    None
                )
            ]),
            vec![Event::Removed("a".into()), Event::Changed("c".into())]
        );
        assert_eq!(
            run(&[ev(from, &["/w/self"], None)]),
            vec![],
            "MOVE_SELF is ignored"
        );
    }

    #[test]
    fn a_moved_directory_is_also_rescanned_where_it_went() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("b")).expect("mkdir");
        std::fs::write(dir.path().join("g"), b"file").expect("write");
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let mut t = Translator::new(dir.path().to_path_buf());
        let mut out = Vec::new();
        for (from, to) in [("a", "b"), ("f", "g")] {
            let e = ev(both, &[], Some(1))
                .add_path(dir.path().join(from))
                .add_path(dir.path().join(to));
            t.translate(&e, Duration::ZERO, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Event::Moved {
                    from: "a".into(),
                    to: "b".into()
                },
                Event::Rescan("b".into()),
                Event::Moved {
                    from: "f".into(),
                    to: "g".into()
                },
            ],
            "a directory's move brings a rescan of its new place, a file's does not"
        );
    }

    #[test]
    fn kinds() {
        let out = run(&[
            ev(EventKind::Create(CreateKind::Folder), &["/w/d"], None),
            ev(EventKind::Create(CreateKind::File), &["/w/d/f"], None),
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/w/d/f"],
                None,
            ),
            ev(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &["/w/d/f"],
                None,
            ),
            ev(EventKind::Remove(RemoveKind::File), &["/w/d/f"], None),
            ev(EventKind::Other, &["/elsewhere/x"], None),
            RawEvent::new(EventKind::Other).set_flag(notify::event::Flag::Rescan),
        ]);
        assert_eq!(
            out,
            vec![
                Event::Rescan("d".into()),
                Event::Changed("d/f".into()),
                Event::Changed("d/f".into()),
                Event::Removed("d/f".into()),
                Event::Rescan(PathBuf::new()),
            ]
        );
    }
}
