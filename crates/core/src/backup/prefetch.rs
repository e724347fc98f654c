//! Lists directories and loads their parent-snapshot trees ahead of the walker.
//!
//! The walker is one thread and, in a backup where little changed, it is the whole backup:
//! listing, lstat of every entry and decoding parent trees. When it enters a directory it queues
//! every subdirectory here; helper threads list them (with their entries' metadata) and load
//! their old trees while the walker is busy with the earlier siblings. The walker then takes the
//! finished work, waits for work in progress, or does queued work itself. Memory is bounded by
//! the listings of the siblings along the current path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::Entry;
use crate::error::Result;
use crate::id::BlobId;
use crate::snapshot::Tree;

/// A directory's listing and its tree in the parent snapshot.
pub(super) struct Listing {
    pub entries: std::io::Result<Vec<Entry>>,
    pub old: Option<(BlobId, Result<Tree>)>,
}

enum State {
    Queued,
    Running,
    Done(Listing),
    Taken,
}

pub(super) struct Slot {
    state: Mutex<State>,
    ready: Condvar,
}

/// A queued directory.
pub(super) struct Job {
    pub path: PathBuf,
    pub old: Option<BlobId>,
    slot: std::sync::Arc<Slot>,
}

/// The shared table of queued and finished listings.
#[derive(Default)]
pub(super) struct Prefetch {
    slots: Mutex<HashMap<PathBuf, std::sync::Arc<Slot>>>,
}

impl Prefetch {
    /// Queues `path` unless the queue is full (then the walker does it itself).
    pub fn queue(&self, tx: &Sender<Job>, path: PathBuf, old: Option<BlobId>) {
        let slot = std::sync::Arc::new(Slot {
            state: Mutex::new(State::Queued),
            ready: Condvar::new(),
        });
        let job = Job {
            path: path.clone(),
            old,
            slot: std::sync::Arc::clone(&slot),
        };
        if tx.try_send(job).is_ok() {
            self.slots.lock().expect("prefetch lock").insert(path, slot);
        }
    }

    /// Runs queued jobs until the channel closes.
    pub fn serve(rx: &Receiver<Job>, work: &dyn Fn(&Path, Option<BlobId>) -> Listing) {
        for job in rx {
            {
                let mut st = job.slot.state.lock().expect("slot lock");
                if !matches!(*st, State::Queued) {
                    continue; // the walker took it
                }
                *st = State::Running;
            }
            let listing = work(&job.path, job.old);
            let mut st = job.slot.state.lock().expect("slot lock");
            *st = State::Done(listing);
            job.slot.ready.notify_all();
        }
    }

    /// The listing of `path`: prefetched, awaited, or made now by `work`.
    pub fn take(
        &self,
        path: &Path,
        old: Option<BlobId>,
        work: &dyn Fn(&Path, Option<BlobId>) -> Listing,
    ) -> Listing {
        let slot = self.slots.lock().expect("prefetch lock").remove(path);
        let Some(slot) = slot else {
            return work(path, old);
        };
        let mut st = slot.state.lock().expect("slot lock");
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(listing) => return listing,
                State::Queued => {
                    drop(st);
                    return work(path, old);
                }
                State::Running => {
                    *st = State::Running;
                    st = slot.ready.wait(st).expect("slot lock");
                }
                State::Taken => unreachable!("a slot is taken once, by the walker"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(p: &Path, _: Option<BlobId>) -> Listing {
        let name = p.file_name().unwrap().to_owned();
        Listing {
            entries: Ok(vec![Entry::Real {
                path: p.to_owned(),
                name,
                meta: None,
            }]),
            old: None,
        }
    }

    fn listed(l: &Listing) -> Vec<PathBuf> {
        l.entries
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| match e {
                Entry::Real { path, .. } | Entry::Virtual { path, .. } => path.clone(),
            })
            .collect()
    }

    #[test]
    fn take_returns_prefetched_queued_or_fresh_work() {
        let p = Prefetch::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        p.queue(&tx, PathBuf::from("/a"), None);
        p.queue(&tx, PathBuf::from("/b"), None); // queue full: not queued
                                                 // Served by a helper, then taken.
        std::thread::scope(|s| {
            s.spawn(|| Prefetch::serve(&rx, &work));
            assert_eq!(
                listed(&p.take(Path::new("/a"), None, &work)),
                vec![PathBuf::from("/a")]
            );
            drop(tx);
        });
        // Never queued: done by the caller.
        assert_eq!(
            listed(&p.take(Path::new("/b"), None, &work)),
            vec![PathBuf::from("/b")]
        );
    }
}
