//! Turns raw file-system events into ordered, debounced [`Change`]s for the capture stage
//! (step 1, "Watch", of the design's data flow).
//!
//! This module owns the decision of *when* and *in what order* the capture stage should look at a
//! path; it does no I/O and keeps no clock. The daemon owns the watcher (`notify`/inotify), turns
//! its events into [`Event`]s with paths relative to the watched root (`""` is the root), pushes
//! them with a monotonic timestamp, and calls [`Coalescer::poll`] at [`Coalescer::next_deadline`].
//! The capture stage reads the disk *at the time it handles* a [`Change`], so a `Read` emitted after
//! a `Move` reads the new path, and a `Rescan` sees every change made before it is handled.
//!
//! ```text
//! notify ──daemon──▶ Event ──push(now)──▶ Coalescer ──poll(now)──▶ Change ──▶ capture
//!                                          pending: path → Read | Rescan (first, last event)
//!                                          queued:  Remove, Move (in arrival order)
//! ```
//!
//! Semantics, per event:
//! - `Changed(p)`: `p` becomes a pending `Read`. It is due when it has been quiet for
//!   [`CoalesceOptions::debounce`] (`now >= last event + debounce`) or when
//!   [`CoalesceOptions::max_delay`] has passed since its first pending event, whichever comes first,
//!   so a file that never stops changing is still captured. Many events on one path give one `Read`.
//! - `Rescan(p)`: pending and debounced the same way. A pending `Rescan(p)` subsumes pending `Read`s
//!   and `Rescan`s at or below `p`: they are dropped and the rescan keeps the earliest first-event
//!   time among them (so `max_delay` still bounds their latency). Later `Changed` or `Rescan` events
//!   at or below `p` are absorbed while it is pending and count as activity on it: they restart its
//!   debounce (never past its `max_delay` cap), so a rescan of a directory being filled runs once
//!   the burst is over. `Rescan("")` covers everything.
//! - `Removed(p)`: drops pending entries at or below `p` and queues `Remove(p)` for the next poll,
//!   not debounced. A pending `Rescan` of an ancestor of `p` stays.
//! - `Moved { from, to }`: queues `Move { from, to }` for the next poll, not debounced. Pending
//!   entries at or below `to` are dropped (the target was replaced); then pending entries at or
//!   below `from` are re-keyed under `to` keeping their timers, so their read happens at the new
//!   path. If a pending `Rescan` covers `to`, the re-keyed entries are absorbed by it instead
//!   (their timers merge into it). A move onto itself is ignored.
//!
//! Ordering contract, per [`Coalescer::poll`]: structural changes (`Remove`, `Move`) come out in
//! exactly the order they were pushed and before every `Read`/`Rescan` due in the same poll; since
//! every queued structural change comes out at the next poll, a `Read` or `Rescan` is never emitted
//! before a structural change pushed earlier. Due `Read`s and `Rescan`s come out sorted by path
//! (component order: parents before children, `a/b` before `a.b`).
//!
//! Paths are compared, never normalised: the caller gives clean relative paths. "At or below" is by
//! components: `a/b` is below `a`, `ab` and `a.txt` are not.
//!
//! Cost: `push` of a `Changed` event is O(log n) in the number of pending paths (plus the path's
//! depth while a `Rescan` is pending); `Removed`, `Moved` and `Rescan` add the size of the subtree
//! they touch; `poll` costs O(k log n) for k due paths, or one O(n) pass when a burst of at least a
//! quarter of the pending paths comes due at once.

use std::collections::btree_map::{BTreeMap, Entry};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long events on one path are coalesced before the capture stage is asked to look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoalesceOptions {
    /// A pending path is due once no event touched it for this long (default 20 ms).
    pub debounce: Duration,
    /// A pending path is due at the latest this long after its first pending event, however busy
    /// it stays (default 250 ms). If shorter than `debounce`, it alone decides.
    pub max_delay: Duration,
}

impl Default for CoalesceOptions {
    fn default() -> Self {
        CoalesceOptions {
            debounce: Duration::from_millis(20),
            max_delay: Duration::from_millis(250),
        }
    }
}

/// A raw file-system event, as the daemon translates it from the watcher. Paths are relative to
/// the watched root; `""` is the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Created, written, closed after writing, or metadata changed: a file, a symlink or a
    /// directory itself (not its contents).
    Changed(PathBuf),
    /// Deleted, or moved out of the watched tree.
    Removed(PathBuf),
    /// Renamed inside the watched tree; a directory moves with its contents.
    Moved {
        /// The old path.
        from: PathBuf,
        /// The new path; whatever was there before is replaced.
        to: PathBuf,
    },
    /// This subtree must be scanned: a new directory, a move into the tree, a lost watch, a queue
    /// overflow (`""`: everything).
    Rescan(PathBuf),
}

/// What the capture stage should do, in the order [`Coalescer::poll`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Read this path (file, symlink or directory metadata) from disk as it is now.
    Read(PathBuf),
    /// The path and everything below it are gone.
    Remove(PathBuf),
    /// The path and everything below it now live at `to`, replacing what was there.
    Move {
        /// The old path.
        from: PathBuf,
        /// The new path.
        to: PathBuf,
    },
    /// Walk this subtree and compare it with the catalog (`""`: everything).
    Rescan(PathBuf),
}

/// What a pending path is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Rescan,
}

/// One pending path: its kind and the times of its first and last events.
#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: Kind,
    first: Duration,
    last: Duration,
    /// Unique per entry: with the deadline, the entry's key in `Coalescer::deadlines`.
    seq: u64,
}

impl Pending {
    /// When this entry is due: quiet for `debounce`, or `max_delay` after its first event.
    fn deadline(&self, opts: &CoalesceOptions) -> Duration {
        let quiet = self.last.saturating_add(opts.debounce);
        let cap = self.first.saturating_add(opts.max_delay);
        quiet.min(cap)
    }

    /// Widens the entry to also span events from `first` to `last`, moving its key in
    /// `deadlines`.
    fn merge(
        &mut self,
        first: Duration,
        last: Duration,
        opts: &CoalesceOptions,
        deadlines: &mut BTreeMap<(Duration, u64), PathBuf>,
    ) {
        let before = self.deadline(opts);
        self.first = self.first.min(first);
        self.last = self.last.max(last);
        let after = self.deadline(opts);
        if before != after {
            let path = deadlines
                .remove(&(before, self.seq))
                .expect("every pending entry has its deadline");
            deadlines.insert((after, self.seq), path);
        }
    }
}

/// The watch stage's decision logic: coalesces [`Event`]s per path and releases [`Change`]s when
/// they are due. Sans-IO: time comes in as the `now` arguments, a monotonic [`Duration`] from any
/// fixed origin the caller chooses.
#[derive(Debug)]
pub struct Coalescer {
    opts: CoalesceOptions,
    /// Pending `Read`s and `Rescan`s. Invariant: no entry lies strictly below a `Rescan` entry.
    pending: BTreeMap<PathBuf, Pending>,
    /// `(deadline, seq) → path` for every entry of `pending`, so the next due path is the first.
    /// Keyed by numbers rather than paths because it is re-keyed on every event.
    deadlines: BTreeMap<(Duration, u64), PathBuf>,
    /// The `seq` of the next new pending entry.
    next_seq: u64,
    /// How many entries of `pending` are `Rescan`s; zero lets `Changed` skip the ancestor walk.
    rescans: usize,
    /// `Remove`s and `Move`s for the next poll, in arrival order.
    structural: Vec<Change>,
    /// When the oldest entry of `structural` arrived.
    structural_since: Option<Duration>,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new(opts: CoalesceOptions) -> Self {
        Coalescer {
            opts,
            pending: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
            rescans: 0,
            structural: Vec::new(),
            structural_since: None,
        }
    }

    /// The options this coalescer was built with.
    pub fn options(&self) -> CoalesceOptions {
        self.opts
    }

    /// Records `event`, which happened at `now`. Nothing is emitted until [`Coalescer::poll`].
    pub fn push(&mut self, event: Event, now: Duration) {
        match event {
            Event::Changed(path) => self.changed(path, now),
            Event::Rescan(path) => self.rescan(path, now),
            Event::Removed(path) => {
                self.drain_subtree(&path);
                self.queue(Change::Remove(path), now);
            }
            Event::Moved { from, to } => self.moved(from, to, now),
        }
    }

    /// Every change due at `now`, in a safe order to apply: all queued `Remove`s and `Move`s in
    /// arrival order, then the due `Read`s and `Rescan`s sorted by path.
    pub fn poll(&mut self, now: Duration) -> Vec<Change> {
        let mut out = std::mem::take(&mut self.structural);
        self.structural_since = None;
        // Every key below `(now, u64::MAX)` is due; no entry gets that `seq`.
        let later = self.deadlines.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.deadlines, later);
        let mut ready = Vec::with_capacity(due.len());
        if due.len().saturating_mul(4) >= self.pending.len() {
            // A burst came due: one ordered pass over everything pending is cheaper than a
            // search per due path, and it yields them already sorted.
            let mut keep = Vec::with_capacity(self.pending.len() - due.len());
            for (path, entry) in std::mem::take(&mut self.pending) {
                if entry.deadline(&self.opts) <= now {
                    ready.push((path, entry.kind));
                } else {
                    keep.push((path, entry));
                }
            }
            debug_assert_eq!(ready.len(), due.len(), "the deadline map mirrors `pending`");
            self.pending = keep.into_iter().collect();
        } else {
            for path in due.into_values() {
                let entry = self
                    .pending
                    .remove(&path)
                    .expect("every deadline has its pending entry");
                ready.push((path, entry.kind));
            }
            ready.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        self.rescans -= ready
            .iter()
            .filter(|(_, kind)| *kind == Kind::Rescan)
            .count();
        out.extend(ready.into_iter().map(|(path, kind)| match kind {
            Kind::Read => Change::Read(path),
            Kind::Rescan => Change::Rescan(path),
        }));
        out
    }

    /// When [`Coalescer::poll`] would next return something; `None` when nothing is pending. A
    /// queued `Remove` or `Move` is due from its arrival time, so the result can be in the past:
    /// poll right away then.
    pub fn next_deadline(&self) -> Option<Duration> {
        let read = self.deadlines.first_key_value().map(|((at, _), _)| *at);
        match (self.structural_since, read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many changes are waiting: pending `Read`s and `Rescan`s plus queued `Remove`s and
    /// `Move`s. Zero exactly when [`Coalescer::next_deadline`] is `None`.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.structural.len()
    }

    fn changed(&mut self, path: PathBuf, now: Duration) {
        // If `path` itself is pending, no Rescan lies above it (the invariant), so this finds
        // nothing and the entry below is the only one to touch.
        if let Some(ancestor) = self.covering_rescan(&path) {
            let ancestor = ancestor.to_path_buf();
            self.merge(&ancestor, now, now);
            return;
        }
        // One map search for the common case: the path is new, or already pending (a Read, or a
        // Rescan of the path itself) and just gets busier.
        match self.pending.entry(path) {
            Entry::Occupied(mut entry) => {
                entry
                    .get_mut()
                    .merge(now, now, &self.opts, &mut self.deadlines);
            }
            Entry::Vacant(entry) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let pending = Pending {
                    kind: Kind::Read,
                    first: now,
                    last: now,
                    seq,
                };
                self.deadlines
                    .insert((pending.deadline(&self.opts), seq), entry.key().clone());
                entry.insert(pending);
            }
        }
    }

    fn rescan(&mut self, path: PathBuf, now: Duration) {
        if self
            .pending
            .get(&path)
            .is_some_and(|e| e.kind == Kind::Rescan)
        {
            self.merge(&path, now, now);
            return;
        }
        if let Some(ancestor) = self.covering_rescan(&path) {
            let ancestor = ancestor.to_path_buf();
            self.merge(&ancestor, now, now);
            return;
        }
        let subsumed = self.drain_subtree(&path);
        let first = subsumed
            .iter()
            .map(|(_, e)| e.first)
            .fold(now, Duration::min);
        let last = subsumed
            .iter()
            .map(|(_, e)| e.last)
            .fold(now, Duration::max);
        self.insert(path, Kind::Rescan, first, last);
    }

    fn moved(&mut self, from: PathBuf, to: PathBuf, now: Duration) {
        if from == to {
            return;
        }
        let moving = self.drain_subtree(&from);
        self.drain_subtree(&to);
        if !moving.is_empty() {
            if let Some(ancestor) = self.covering_rescan(&to) {
                let ancestor = ancestor.to_path_buf();
                for (_, entry) in &moving {
                    self.merge(&ancestor, entry.first, entry.last);
                }
            } else {
                for (path, entry) in moving {
                    let rest = path
                        .strip_prefix(&from)
                        .expect("drained entries lie at or below `from`");
                    let new = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    self.insert(new, entry.kind, entry.first, entry.last);
                }
            }
        }
        self.queue(Change::Move { from, to }, now);
    }

    fn queue(&mut self, change: Change, now: Duration) {
        if self.structural.is_empty() {
            self.structural_since = Some(now);
        }
        self.structural.push(change);
    }

    /// The nearest strict ancestor of `path` with a pending `Rescan`.
    fn covering_rescan<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        if self.rescans == 0 {
            return None;
        }
        path.ancestors()
            .skip(1)
            .find(|a| self.pending.get(*a).is_some_and(|e| e.kind == Kind::Rescan))
    }

    /// Adds a new pending entry; `path` must not be pending.
    fn insert(&mut self, path: PathBuf, kind: Kind, first: Duration, last: Duration) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Pending {
            kind,
            first,
            last,
            seq,
        };
        self.deadlines
            .insert((entry.deadline(&self.opts), seq), path.clone());
        if kind == Kind::Rescan {
            self.rescans += 1;
        }
        let old = self.pending.insert(path, entry);
        debug_assert!(old.is_none(), "insert() over a pending entry");
    }

    /// Widens the pending entry at `path` to also span events from `first` to `last`, moving its
    /// deadline. Returns false if `path` is not pending.
    fn merge(&mut self, path: &Path, first: Duration, last: Duration) -> bool {
        let Some(entry) = self.pending.get_mut(path) else {
            return false;
        };
        entry.merge(first, last, &self.opts, &mut self.deadlines);
        true
    }

    /// Removes and returns the pending entries at or below `root`, in path order.
    fn drain_subtree(&mut self, root: &Path) -> Vec<(PathBuf, Pending)> {
        // `PathBuf` orders by components, so a subtree is one contiguous run of keys starting at
        // `root` itself (`a`, `a/b`, `a/c/d`, then `a.txt`, `a0`, `ab`).
        let keys: Vec<PathBuf> = self
            .pending
            .range::<Path, _>((Bound::Included(root), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(root))
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .map(|key| {
                let entry = self.pending.remove(&key).expect("key was just listed");
                let found = self
                    .deadlines
                    .remove(&(entry.deadline(&self.opts), entry.seq));
                debug_assert!(found.is_some(), "every pending entry has its deadline");
                if entry.kind == Kind::Rescan {
                    self.rescans -= 1;
                }
                (key, entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn changed(s: &str) -> Event {
        Event::Changed(p(s))
    }

    fn removed(s: &str) -> Event {
        Event::Removed(p(s))
    }

    fn rescan(s: &str) -> Event {
        Event::Rescan(p(s))
    }

    fn moved(from: &str, to: &str) -> Event {
        Event::Moved {
            from: p(from),
            to: p(to),
        }
    }

    fn read(s: &str) -> Change {
        Change::Read(p(s))
    }

    fn remove(s: &str) -> Change {
        Change::Remove(p(s))
    }

    fn move_(from: &str, to: &str) -> Change {
        Change::Move {
            from: p(from),
            to: p(to),
        }
    }

    fn rescan_c(s: &str) -> Change {
        Change::Rescan(p(s))
    }

    /// Default options: debounce 20 ms, max_delay 250 ms.
    fn coalescer() -> Coalescer {
        Coalescer::new(CoalesceOptions::default())
    }

    #[test]
    fn debounce_merges_bursts() {
        let mut c = coalescer();
        for t in [0, 5, 10] {
            c.push(changed("f"), ms(t));
        }
        c.push(changed("g"), ms(3));
        assert_eq!(c.pending(), 2);
        assert_eq!(c.poll(ms(22)), vec![]);
        assert_eq!(c.poll(ms(23)), vec![read("g")]);
        assert_eq!(c.poll(ms(29)), vec![]);
        assert_eq!(c.poll(ms(30)), vec![read("f")]);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.poll(ms(1000)), vec![]);
    }

    #[test]
    fn a_few_due_paths_among_many_come_out_sorted() {
        let mut c = coalescer();
        c.push(changed("z"), ms(0));
        c.push(changed("a/b"), ms(1));
        for i in 0..10 {
            c.push(changed(&format!("m{i}")), ms(10));
        }
        c.push(changed("a"), ms(2));
        assert_eq!(c.poll(ms(25)), vec![read("a"), read("a/b"), read("z")]);
        assert_eq!(c.pending(), 10);
        assert_eq!(c.poll(ms(30)).len(), 10);
    }

    #[test]
    fn max_delay_caps_a_continuously_changing_file() {
        let mut c = coalescer();
        let mut reads_at = Vec::new();
        for t in (0..=600).step_by(10) {
            c.push(changed("log"), ms(t));
            let out = c.poll(ms(t));
            if !out.is_empty() {
                assert_eq!(out, vec![read("log")]);
                reads_at.push(t);
            }
        }
        // First pending event at 0 → due at 250; the next starts at 260 → 510.
        assert_eq!(reads_at, vec![250, 510]);
        assert_eq!(c.next_deadline(), Some(ms(620)));
        assert_eq!(c.poll(ms(620)), vec![read("log")]);
    }

    #[test]
    fn max_delay_shorter_than_debounce_decides_alone() {
        let mut c = Coalescer::new(CoalesceOptions {
            debounce: ms(100),
            max_delay: ms(30),
        });
        c.push(changed("f"), ms(0));
        assert_eq!(c.next_deadline(), Some(ms(30)));
        assert_eq!(c.poll(ms(30)), vec![read("f")]);
    }

    #[test]
    fn remove_cancels_pending_reads_at_and_below() {
        let mut c = coalescer();
        for s in ["a", "a/x", "a/y/z", "ab", "b"] {
            c.push(changed(s), ms(0));
        }
        c.push(removed("a"), ms(5));
        assert_eq!(c.pending(), 3);
        assert_eq!(c.poll(ms(5)), vec![remove("a")]);
        assert_eq!(c.poll(ms(100)), vec![read("ab"), read("b")]);
    }

    #[test]
    fn changed_after_remove_is_read_after_the_remove() {
        let mut c = coalescer();
        c.push(changed("f"), ms(0));
        c.push(removed("f"), ms(1));
        c.push(changed("f"), ms(2));
        assert_eq!(c.poll(ms(100)), vec![remove("f"), read("f")]);
    }

    #[test]
    fn move_rekeys_pending_reads_and_emits_move() {
        let mut c = coalescer();
        c.push(changed("a"), ms(0));
        c.push(changed("a/x"), ms(0));
        c.push(changed("a/y/z"), ms(4));
        c.push(changed("ab"), ms(0));
        c.push(moved("a", "b"), ms(10));
        assert_eq!(c.poll(ms(10)), vec![move_("a", "b")]);
        // Timers are kept: due at 20 and 24, under the new names.
        assert_eq!(c.next_deadline(), Some(ms(20)));
        assert_eq!(c.poll(ms(20)), vec![read("ab"), read("b"), read("b/x")]);
        assert_eq!(c.poll(ms(24)), vec![read("b/y/z")]);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn move_of_a_file_into_a_subdirectory_keeps_clean_paths() {
        let mut c = coalescer();
        c.push(changed("f"), ms(0));
        c.push(moved("f", "d/e/f"), ms(1));
        c.push(moved("d", ""), ms(2));
        assert_eq!(c.poll(ms(2)), vec![move_("f", "d/e/f"), move_("d", "")]);
        let out = c.poll(ms(100));
        assert_eq!(out, vec![read("e/f")]);
        let Change::Read(path) = &out[0] else {
            unreachable!()
        };
        assert_eq!(path.as_os_str(), "e/f");
    }

    #[test]
    fn move_replacing_a_pending_target() {
        let mut c = coalescer();
        c.push(changed("b"), ms(0));
        c.push(changed("b/old"), ms(0));
        c.push(changed("bb"), ms(0));
        c.push(changed("a"), ms(5));
        c.push(moved("a", "b"), ms(10));
        assert_eq!(c.pending(), 3); // b (was a), bb, the Move
        assert_eq!(c.poll(ms(10)), vec![move_("a", "b")]);
        assert_eq!(c.poll(ms(20)), vec![read("bb")]);
        assert_eq!(c.poll(ms(25)), vec![read("b")]);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn move_of_an_unwatched_path_still_replaces_the_target() {
        let mut c = coalescer();
        c.push(changed("t"), ms(0));
        c.push(moved("s", "t"), ms(1));
        assert_eq!(c.poll(ms(100)), vec![move_("s", "t")]);
    }

    #[test]
    fn move_onto_itself_is_ignored() {
        let mut c = coalescer();
        c.push(changed("a"), ms(0));
        c.push(moved("a", "a"), ms(1));
        assert_eq!(c.pending(), 1);
        assert_eq!(c.poll(ms(1)), vec![]);
        assert_eq!(c.poll(ms(20)), vec![read("a")]);
    }

    #[test]
    fn move_under_a_pending_rescan_is_absorbed_by_it() {
        let mut c = coalescer();
        c.push(changed("x"), ms(0));
        c.push(rescan("d"), ms(10));
        c.push(moved("x", "d/x"), ms(12));
        assert_eq!(c.pending(), 2); // Rescan d, the Move
        assert_eq!(c.poll(ms(12)), vec![move_("x", "d/x")]);
        assert_eq!(c.poll(ms(30)), vec![rescan_c("d")]);
    }

    #[test]
    fn rescan_subsumes_reads_below_and_is_debounced() {
        let mut c = coalescer();
        c.push(changed("d/x"), ms(0));
        c.push(changed("d"), ms(0));
        c.push(changed("dd"), ms(0));
        c.push(rescan("d/sub"), ms(2));
        c.push(rescan("d"), ms(10));
        assert_eq!(c.pending(), 2); // Rescan d, Read dd
        c.push(changed("d/y"), ms(15)); // absorbed, and restarts the debounce
        c.push(rescan("d/sub"), ms(16)); // absorbed too
        assert_eq!(c.pending(), 2);
        assert_eq!(c.poll(ms(35)), vec![read("dd")]);
        assert_eq!(c.next_deadline(), Some(ms(36)));
        assert_eq!(c.poll(ms(36)), vec![rescan_c("d")]);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn rescan_keeps_the_max_delay_of_what_it_subsumes() {
        let mut c = coalescer();
        c.push(changed("d/x"), ms(0));
        for t in (100..=400).step_by(10) {
            c.push(changed("d/y"), ms(t));
            if t == 100 {
                c.push(rescan("d"), ms(t));
            }
            let out = c.poll(ms(t));
            if t < 250 {
                assert_eq!(out, vec![], "at {t}");
            } else if t == 250 {
                assert_eq!(out, vec![rescan_c("d")]);
            }
        }
    }

    #[test]
    fn rescan_of_root_covers_everything() {
        let mut c = coalescer();
        c.push(changed("a"), ms(0));
        c.push(changed("b/c"), ms(0));
        c.push(rescan(""), ms(5));
        c.push(changed("z"), ms(6));
        c.push(changed(""), ms(7));
        c.push(rescan("b"), ms(8));
        c.push(removed("q"), ms(9));
        assert_eq!(c.pending(), 2);
        assert_eq!(c.poll(ms(9)), vec![remove("q")]);
        assert_eq!(c.next_deadline(), Some(ms(28)));
        assert_eq!(c.poll(ms(28)), vec![rescan_c("")]);
        // Once emitted, the root rescan no longer absorbs anything.
        c.push(changed("z"), ms(30));
        assert_eq!(c.poll(ms(50)), vec![read("z")]);
    }

    #[test]
    fn structural_changes_come_first_and_in_push_order() {
        let mut c = coalescer();
        c.push(changed("a"), ms(0));
        c.push(removed("b"), ms(10));
        c.push(changed("b"), ms(11));
        c.push(moved("c", "d"), ms(12));
        c.push(moved("d", "e"), ms(13));
        c.push(removed("e"), ms(14));
        c.push(moved("x", "c"), ms(15));
        assert_eq!(
            c.poll(ms(31)),
            vec![
                remove("b"),
                move_("c", "d"),
                move_("d", "e"),
                remove("e"),
                move_("x", "c"),
                read("a"),
                read("b"),
            ]
        );
    }

    #[test]
    fn reads_come_out_sorted_parents_before_children() {
        let mut c = coalescer();
        for s in ["a/b", "a.b", "a", "", "a/a/z", "a-b", "ab", "a0"] {
            c.push(changed(s), ms(0));
        }
        assert_eq!(
            c.poll(ms(20)),
            ["", "a", "a/a/z", "a/b", "a-b", "a.b", "a0", "ab"]
                .into_iter()
                .map(read)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn subtrees_are_matched_by_component_not_by_prefix() {
        let all = ["a", "a/b", "a/b/c", "a-b", "a.txt", "a0", "ab", "b"];
        let mut c = coalescer();
        for s in all {
            c.push(changed(s), ms(0));
        }
        c.push(removed("a"), ms(1));
        assert_eq!(
            c.poll(ms(20)),
            vec![
                remove("a"),
                read("a-b"),
                read("a.txt"),
                read("a0"),
                read("ab"),
                read("b")
            ]
        );

        let mut c = coalescer();
        for s in all {
            c.push(changed(s), ms(0));
        }
        c.push(moved("a", "z"), ms(1));
        c.push(rescan("a/b"), ms(1)); // a new a/b: nothing pending below it any more
        assert_eq!(
            c.poll(ms(20)),
            vec![
                move_("a", "z"),
                read("a-b"),
                read("a.txt"),
                read("a0"),
                read("ab"),
                read("b"),
                read("z"),
                read("z/b"),
                read("z/b/c"),
            ]
        );
        assert_eq!(c.poll(ms(21)), vec![rescan_c("a/b")]);

        let mut c = coalescer();
        for s in all {
            c.push(changed(s), ms(0));
        }
        c.push(rescan("a"), ms(0));
        assert_eq!(
            c.poll(ms(20)),
            vec![
                rescan_c("a"),
                read("a-b"),
                read("a.txt"),
                read("a0"),
                read("ab"),
                read("b")
            ]
        );
    }

    #[test]
    fn next_deadline_values() {
        let mut c = Coalescer::new(CoalesceOptions {
            debounce: ms(20),
            max_delay: ms(50),
        });
        assert_eq!(c.next_deadline(), None);
        c.push(changed("f"), ms(0));
        assert_eq!(c.next_deadline(), Some(ms(20)));
        c.push(changed("f"), ms(10));
        assert_eq!(c.next_deadline(), Some(ms(30)));
        c.push(changed("g"), ms(11));
        assert_eq!(c.next_deadline(), Some(ms(30)));
        c.push(removed("h"), ms(12));
        assert_eq!(c.next_deadline(), Some(ms(12)));
        c.push(removed("i"), ms(13));
        assert_eq!(c.next_deadline(), Some(ms(12)));
        assert_eq!(c.poll(ms(13)), vec![remove("h"), remove("i")]);
        assert_eq!(c.next_deadline(), Some(ms(30)));
        c.push(changed("f"), ms(25));
        c.push(changed("f"), ms(40));
        // Quiet at 60, but capped at first (0) + 50.
        assert_eq!(c.next_deadline(), Some(ms(31)));
        assert_eq!(c.poll(ms(31)), vec![read("g")]);
        assert_eq!(c.next_deadline(), Some(ms(50)));
        assert_eq!(c.poll(ms(50)), vec![read("f")]);
        assert_eq!(c.next_deadline(), None);
        // A structural change that waited past a read's deadline: the earlier one wins.
        c.push(changed("f"), ms(60));
        c.push(removed("x"), ms(100));
        assert_eq!(c.next_deadline(), Some(ms(80)));
    }

    #[test]
    fn a_burst_of_100k_paths_is_coalesced_quickly() {
        let started = std::time::Instant::now();
        let mut c = coalescer();
        let paths: Vec<PathBuf> = (0..100_000u32)
            .map(|i| p(&format!("d{}/f{:05}", i % 97, i)))
            .collect();
        for (i, path) in paths.iter().enumerate() {
            c.push(Event::Changed(path.clone()), ms(i as u64 / 10_000));
        }
        // Every path twice: the second round must merge, not add.
        for path in &paths {
            c.push(Event::Changed(path.clone()), ms(10));
        }
        assert_eq!(c.pending(), 100_000);
        assert_eq!(c.poll(ms(29)), vec![]);
        let out = c.poll(ms(30));
        let elapsed = started.elapsed();
        let mut expected = paths;
        expected.sort();
        assert_eq!(out.len(), expected.len());
        assert!(out
            .into_iter()
            .zip(expected)
            .all(|(got, want)| got == Change::Read(want)));
        assert_eq!(c.pending(), 0);
        // About 0.3 s unoptimised; a quadratic implementation would take minutes.
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }

    /// One step of a random run: an event at the current time, or time passing then a poll.
    #[derive(Debug, Clone)]
    enum Step {
        Push(Event),
        Wait(u64),
    }

    const PATHS: [&str; 9] = ["", "a", "a/b", "a/b/c", "a/c", "ab", "a.b", "b", "b/a"];

    fn path_strategy() -> impl Strategy<Value = PathBuf> {
        prop::sample::select(&PATHS[..]).prop_map(PathBuf::from)
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => path_strategy().prop_map(|p| Step::Push(Event::Changed(p))),
            2 => path_strategy().prop_map(|p| Step::Push(Event::Removed(p))),
            2 => (path_strategy(), path_strategy())
                .prop_map(|(from, to)| Step::Push(Event::Moved { from, to })),
            1 => path_strategy().prop_map(|p| Step::Push(Event::Rescan(p))),
            4 => (0u64..40).prop_map(Step::Wait),
        ]
    }

    /// Whether `ancestor` is `path` or one of its ancestors.
    fn covers(ancestor: &Path, path: &Path) -> bool {
        path.starts_with(ancestor)
    }

    proptest! {
        #[test]
        fn random_runs_keep_the_contract(steps in prop::collection::vec(step_strategy(), 0..60)) {
            let opts = CoalesceOptions { debounce: ms(20), max_delay: ms(100) };
            let mut c = Coalescer::new(opts);
            let mut now = Duration::ZERO;
            // The events pushed, and (number of events pushed before the poll, change) emitted.
            let mut events: Vec<Event> = Vec::new();
            let mut emitted: Vec<(usize, Change)> = Vec::new();
            let mut run = |c: &mut Coalescer, now: Duration, events: &[Event]| {
                let out = c.poll(now);
                emitted.extend(out.into_iter().map(|change| (events.len(), change)));
            };
            for step in steps {
                match step {
                    Step::Push(event) => {
                        c.push(event.clone(), now);
                        events.push(event);
                    }
                    Step::Wait(n) => {
                        now += ms(n);
                        run(&mut c, now, &events);
                    }
                }
                prop_assert_eq!(c.pending() == 0, c.next_deadline().is_none());
            }
            now += opts.max_delay;
            run(&mut c, now, &events);
            prop_assert_eq!(c.pending(), 0);
            prop_assert_eq!(c.next_deadline(), None);

            // Structural changes come out exactly in push order.
            let pushed: Vec<Change> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Removed(p) => Some(Change::Remove(p.clone())),
                    Event::Moved { from, to } if from != to => {
                        Some(Change::Move { from: from.clone(), to: to.clone() })
                    }
                    _ => None,
                })
                .collect();
            let out: Vec<Change> = emitted
                .iter()
                .filter(|(_, c)| matches!(c, Change::Remove(_) | Change::Move { .. }))
                .map(|(_, c)| c.clone())
                .collect();
            prop_assert_eq!(out, pushed);

            // Does event `e` make a pending read of `path` obsolete, or could it put one there?
            let kills = |e: &Event, path: &Path| match e {
                Event::Removed(q) => covers(q, path),
                Event::Moved { from, to } if from != to => covers(from, path) || covers(to, path),
                _ => false,
            };
            let revives = |e: &Event, path: &Path| match e {
                Event::Changed(q) => q == path,
                Event::Moved { from, to } if from != to => covers(to, path),
                _ => false,
            };

            // Safety: a Read never follows a Remove of its path (or an ancestor) unless the path
            // was changed again (or something was moved onto it) after that Remove.
            for (at, change) in &emitted {
                let Change::Read(path) = change else { continue };
                let before = &events[..*at];
                let last_remove = before
                    .iter()
                    .rposition(|e| matches!(e, Event::Removed(q) if covers(q, path)));
                if let Some(r) = last_remove {
                    prop_assert!(
                        before[r + 1..].iter().any(|e| revives(e, path)),
                        "Read({:?}) after its Remove with nothing bringing it back", path
                    );
                }
            }

            // Liveness: every Changed path not later removed or moved is read, or covered by a
            // Rescan, after its last Changed event.
            for (i, event) in events.iter().enumerate() {
                let Event::Changed(path) = event else { continue };
                let later = &events[i + 1..];
                if later.iter().any(|e| kills(e, path) || matches!(e, Event::Changed(q) if q == path)) {
                    continue;
                }
                let seen = emitted.iter().any(|(at, change)| {
                    *at > i
                        && match change {
                            Change::Read(q) => q == path,
                            Change::Rescan(q) => covers(q, path),
                            _ => false,
                        }
                });
                prop_assert!(seen, "Changed({:?}) at event {} was never read", path, i);
            }
        }
    }
}
