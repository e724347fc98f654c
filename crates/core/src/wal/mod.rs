//! The write-ahead log: makes each record durable before it is acknowledged, and replays the log
//! after a crash (`docs/format.md` §12).
//!
//! ```text
//! append(entries) ──one write──▶ active segment ──▶ Lsn      (not yet durable)
//! sync(lsn) ──group commit: one fsync for every waiter──▶ durable ≥ lsn      (acknowledge now)
//!           └─ then a durable mark "0..offset of this segment was fsynced" (no fsync of its own)
//! rotate at segment_size: fsync, next segment starts with a checkpoint (meta + purge records)
//! purge(index): purge record, fsync, delete whole segments from the front
//! open: replay segments in order; in the last one cut whatever lies past the durable point the
//!       marks prove (unsynced bytes a power cut left in any state); damage before it is an error
//! ```
//! The log is generic: an entry is an index and opaque bytes, a meta slot holds opaque bytes. The
//! Raft encoding of entries, votes and log ids lives in `tidemark-cluster`, which makes this log
//! openraft's `RaftLogStorage`. A failed write or sync poisons the handle (later calls fail with
//! [`Error::Poisoned`]); reopening recovers from what is on disk.

mod device;
pub mod record;
mod recovery;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use device::{FileLogDir, LogDevice, LogDir};
pub use record::{Record, SLOT_COMMITTED, SLOT_VOTE};
pub use recovery::Recovery;

use crate::error::{Error, Result};
use record::{Decoded, SegmentHeader, FRAME_LEN, HEADER_LEN, MAX_BODY, SLOTS, VERSION, VERSION_1};

/// Default segment size: a segment is rotated once it reaches this many bytes.
pub const DEFAULT_SEGMENT_SIZE: u64 = 8 << 20;

/// How the log behaves.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Rotate the active segment once it is at least this long.
    pub segment_size: u64,
    /// On open, cut the log at damage followed by intact records instead of failing (loses
    /// whatever follows the damage; for `tidemark recover --discard-after-corruption`).
    pub discard_after_corruption: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            discard_after_corruption: false,
        }
    }
}

/// A position in the log: segment and byte offset. Everything before a durable `Lsn` survives a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn {
    /// Segment number.
    pub seq: u64,
    /// Byte offset just past the record.
    pub offset: u64,
}

/// Figures for `tidemark status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Live segment files.
    pub segments: usize,
    /// Their total size.
    pub bytes: u64,
    /// Entries held (not purged or truncated).
    pub entries: u64,
    /// First entry index held.
    pub first: Option<u64>,
    /// Last entry index held.
    pub last: Option<u64>,
    /// Where the log is durable up to.
    pub durable: Lsn,
    /// Where the log is written up to.
    pub written: Lsn,
    /// fsyncs done for [`Wal::sync`] callers since open (group commit shares them).
    pub syncs: u64,
}

/// Where an entry's record sits.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

/// One live segment.
struct Segment {
    seq: u64,
    /// Format version of its header; only [`VERSION`] segments are written to.
    version: u8,
    device: Arc<dyn LogDevice>,
    len: u64,
    /// The `upto` of the last durable mark written to it (0: none).
    marked: u64,
    /// Highest entry index ever written to it (it may since have been truncated away).
    max_index: Option<u64>,
}

/// The log's logical content, built by replay and kept up to date by writes.
#[derive(Default)]
struct LogState {
    /// Index of `entries[0]`.
    first: u64,
    entries: VecDeque<Loc>,
    /// The index the next entry must follow (the last entry, or a purge or truncation point).
    last: Option<u64>,
    meta: [Option<Vec<u8>>; SLOTS],
    purged: Option<(u64, Vec<u8>)>,
    /// During replay: entries before this index were in segments deleted after a purge.
    gap: Option<u64>,
}

impl LogState {
    fn last_entry(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }

    /// Applies one record; `replay` tolerates the gap left by purged segments.
    fn apply(&mut self, record: &Record<'_>, loc: Loc, replay: bool) -> Result<(), String> {
        match *record {
            Record::Entry { index, .. } => {
                if let Some(last) = self.last {
                    if index <= last {
                        return Err(format!("entry {index} does not follow entry {last}"));
                    }
                    if index > last + 1 {
                        if !replay {
                            return Err(format!("entry {index} leaves a gap after {last}"));
                        }
                        self.entries.clear();
                        self.gap = Some(index - 1);
                    }
                }
                if self.entries.is_empty() {
                    self.first = index;
                }
                self.entries.push_back(loc);
                self.last = Some(index);
            }
            Record::Meta { slot, value } => self.meta[usize::from(slot)] = Some(value.to_vec()),
            Record::Durable { .. } => {} // says how far the bytes were fsynced, not what they mean
            Record::Truncate { after } => {
                if let (Some((p, _)), Some(a)) = (&self.purged, after) {
                    if a < *p {
                        return Err(format!("truncation after {a} reaches purged entry {p}"));
                    }
                }
                match after {
                    None => self.entries.clear(),
                    Some(a) if a < self.first => self.entries.clear(),
                    Some(a) => self.entries.truncate((a - self.first + 1) as usize),
                }
                self.last = match (self.last, after) {
                    (Some(l), Some(a)) => Some(l.min(a)),
                    _ => after.or(self.purged.as_ref().map(|p| p.0)),
                };
            }
            Record::Purge { index, log_id } => {
                if self.purged.as_ref().is_some_and(|p| p.0 > index) {
                    return Ok(()); // an older purge point (checkpoint before a newer purge)
                }
                if !self.entries.is_empty() && index >= self.first {
                    let n = ((index - self.first + 1) as usize).min(self.entries.len());
                    self.entries.drain(..n);
                    self.first += n as u64;
                }
                self.purged = Some((index, log_id.to_vec()));
                self.last = Some(self.last.map_or(index, |l| l.max(index)));
            }
        }
        Ok(())
    }
}

struct Inner {
    log_id: u64,
    segments: VecDeque<Segment>,
    state: LogState,
    scratch: Vec<u8>,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("a log always has an active segment")
    }

    fn written(&self) -> Lsn {
        let a = self.active();
        Lsn {
            seq: a.seq,
            offset: a.len,
        }
    }
}

#[derive(Default)]
struct SyncState {
    durable: Lsn,
    syncing: bool,
    syncs: u64,
}

/// The write-ahead log. All methods take `&self`; appends are serialised, syncs are shared.
pub struct Wal {
    dir: Arc<dyn LogDir>,
    opts: WalOptions,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    poison: Mutex<Option<String>>,
}

impl Wal {
    /// Opens the log in `dir`, creating it when empty, and replays it (see [`Recovery`]).
    pub fn open(dir: Arc<dyn LogDir>, opts: WalOptions) -> Result<(Wal, Recovery)> {
        let (log_id, segments, state, recovery) = recovery::replay(&*dir, &opts)?;
        let wal = Wal {
            dir,
            opts,
            inner: Mutex::new(Inner {
                log_id,
                segments: VecDeque::new(),
                state,
                scratch: Vec::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            poison: Mutex::new(None),
        };
        {
            let mut inner = wal.lock()?;
            if segments.is_empty() {
                let seg = wal.create_segment(&inner, 1)?;
                inner.segments.push_back(seg);
            } else {
                inner.segments = segments.into();
                if inner.active().version == VERSION_1 {
                    // Marks go only into version-2 segments.
                    wal.rotate(&mut inner)?;
                } else {
                    // A process that died without a power cut leaves written bytes unsynced;
                    // nothing may count as durable (or be marked so) before this fsync.
                    let (seq, device) = (inner.active().seq, inner.active().device.clone());
                    device
                        .sync()
                        .map_err(|e| wal.poisoned("syncing log segment", seq, e))?;
                    let durable = inner.written();
                    wal.mark(&mut inner, durable)?;
                }
            }
            // Everything up to the active segment's mark is durable; the mark itself is not.
            let durable = Lsn {
                seq: inner.active().seq,
                offset: inner.active().marked,
            };
            wal.sync.lock().expect("sync lock").durable = durable;
        }
        Ok((wal, recovery))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        if let Some(why) = &*self.poison.lock().expect("poison lock") {
            return Err(Error::Poisoned(why.clone()));
        }
        Ok(self.inner.lock().expect("wal lock"))
    }

    fn poisoned(&self, op: &'static str, seq: u64, e: std::io::Error) -> Error {
        let file = self.dir.describe(seq);
        let mut p = self.poison.lock().expect("poison lock");
        if p.is_none() {
            *p = Some(format!("{op} {file}: {e}"));
        }
        Error::io(op, file, e)
    }

    /// Creates segment `seq` holding the header and a checkpoint of the current state, durably.
    fn create_segment(&self, inner: &Inner, seq: u64) -> Result<Segment> {
        let mut buf = SegmentHeader {
            version: VERSION,
            seq,
            log_id: inner.log_id,
        }
        .encode()
        .to_vec();
        for (slot, value) in inner.state.meta.iter().enumerate() {
            if let Some(value) = value {
                let slot = u8::try_from(slot).expect("SLOTS fits in a byte");
                Record::Meta { slot, value }.encode_into(&mut buf);
            }
        }
        if let Some((index, log_id)) = &inner.state.purged {
            Record::Purge {
                index: *index,
                log_id,
            }
            .encode_into(&mut buf);
        }
        let device = self
            .dir
            .create(seq)
            .map_err(|e| self.poisoned("creating log segment", seq, e))?;
        device
            .append(&buf)
            .and_then(|_| device.sync())
            .map_err(|e| self.poisoned("writing log segment", seq, e))?;
        self.dir
            .sync()
            .map_err(|e| self.poisoned("syncing the log directory for", seq, e))?;
        let len = buf.len() as u64;
        let mark = record::durable_mark(inner.log_id, seq, len);
        device
            .append(&mark)
            .map_err(|e| self.poisoned("appending to log segment", seq, e))?;
        Ok(Segment {
            seq,
            version: VERSION,
            device,
            len: len + mark.len() as u64,
            marked: len,
            max_index: None,
        })
    }

    /// Appends a durable mark for `upto` to the active segment when `upto` lies in it and is
    /// past the last mark. `upto` must be durable already: the mark itself is not synced.
    fn mark(&self, inner: &mut Inner, upto: Lsn) -> Result<()> {
        let log_id = inner.log_id;
        let seg = inner
            .segments
            .back_mut()
            .expect("a log always has an active segment");
        if seg.seq != upto.seq || seg.version != VERSION || upto.offset <= seg.marked {
            return Ok(());
        }
        let mark = record::durable_mark(log_id, seg.seq, upto.offset);
        if let Err(e) = seg.device.append(&mark) {
            let seq = seg.seq;
            return Err(self.poisoned("appending to log segment", seq, e));
        }
        seg.len += mark.len() as u64;
        seg.marked = upto.offset;
        Ok(())
    }

    /// Writes the records in `inner.scratch` (already applied to nothing) and applies them.
    fn write_scratch(&self, inner: &mut Inner, records: &[(usize, usize)]) -> Result<Lsn> {
        let (seq, at) = {
            let a = inner.active();
            (a.seq, a.len)
        };
        let buf = std::mem::take(&mut inner.scratch);
        if let Err(e) = inner.active().device.append(&buf) {
            // A write cut short (ENOSPC) may have left part of a record: take it back, so the
            // next open finds a clean end rather than unsynced bytes to discard. Best effort:
            // recovery cuts them anyway, as they were never synced.
            let _ = inner.active().device.truncate(at);
            inner.scratch = buf;
            inner.scratch.clear();
            return Err(self.poisoned("appending to log segment", seq, e));
        }
        inner.segments.back_mut().expect("active segment").len += buf.len() as u64;
        for &(start, len) in records {
            let Decoded::Record { record, .. } = record::decode(&buf[start..start + len]) else {
                unreachable!("records were just encoded");
            };
            if let Record::Entry { index, .. } = record {
                let seg = inner.segments.back_mut().expect("active segment");
                seg.max_index = Some(seg.max_index.map_or(index, |m| m.max(index)));
            }
            let loc = Loc {
                seq,
                offset: at + start as u64,
                len: len as u32,
            };
            inner
                .state
                .apply(&record, loc, false)
                .expect("records were validated before writing");
        }
        inner.scratch = buf;
        inner.scratch.clear();
        let lsn = inner.written();
        if inner.active().len >= self.opts.segment_size {
            self.rotate(inner)?;
        }
        Ok(lsn)
    }

    fn rotate(&self, inner: &mut Inner) -> Result<()> {
        let (seq, device) = {
            let a = inner.active();
            (a.seq, a.device.clone())
        };
        device
            .sync()
            .map_err(|e| self.poisoned("syncing log segment", seq, e))?;
        let seg = self.create_segment(inner, seq + 1)?;
        inner.segments.push_back(seg);
        Ok(())
    }

    /// Appends entries `(index, bytes)`; each index must follow the previous one. Returns the
    /// position to [`Wal::sync`] before acknowledging them.
    pub fn append<B: AsRef<[u8]>>(
        &self,
        entries: impl IntoIterator<Item = (u64, B)>,
    ) -> Result<Lsn> {
        let mut inner = self.lock()?;
        let mut next = inner.state.last;
        let mut records = Vec::new();
        let mut scratch = std::mem::take(&mut inner.scratch);
        for (index, data) in entries {
            let data = data.as_ref();
            if let Some(last) = next {
                if index != last + 1 {
                    inner.scratch = scratch;
                    return Err(Error::Invalid(format!(
                        "log append: entry {index} does not follow entry {last}"
                    )));
                }
            }
            if data.len() + 8 > MAX_BODY as usize {
                inner.scratch = scratch;
                return Err(Error::Invalid(format!(
                    "log entry {index} of {} bytes exceeds the record limit of {MAX_BODY}",
                    data.len()
                )));
            }
            let start = scratch.len();
            Record::Entry { index, data }.encode_into(&mut scratch);
            records.push((start, scratch.len() - start));
            next = Some(index);
        }
        inner.scratch = scratch;
        if records.is_empty() {
            return Ok(inner.written());
        }
        self.write_scratch(&mut inner, &records)
    }

    /// Records a new value for a meta slot (vote, committed); durable after [`Wal::sync`].
    pub fn set_meta(&self, slot: u8, value: &[u8]) -> Result<Lsn> {
        assert!(usize::from(slot) < SLOTS, "meta slot {slot} does not exist");
        self.write_one(&Record::Meta { slot, value })
    }

    /// Discards entries after `after` (all when `None`); durable after [`Wal::sync`].
    pub fn truncate_after(&self, after: Option<u64>) -> Result<Lsn> {
        if let (Some((p, _)), Some(a)) = (self.last_purged(), after) {
            if a < p {
                return Err(Error::Invalid(format!(
                    "cannot truncate after {a}: entries up to {p} are purged"
                )));
            }
        }
        self.write_one(&Record::Truncate { after })
    }

    fn write_one(&self, record: &Record<'_>) -> Result<Lsn> {
        let mut inner = self.lock()?;
        let start = inner.scratch.len();
        record.encode_into(&mut inner.scratch);
        let len = inner.scratch.len() - start;
        self.write_scratch(&mut inner, &[(start, len)])
    }

    /// Discards entries up to and including `index` for good, durably, and deletes the segment
    /// files that held only purged entries. `log_id` is stored with it (the caller's encoding).
    pub fn purge(&self, index: u64, log_id: &[u8]) -> Result<()> {
        if self.last_purged().is_some_and(|(p, _)| p >= index) {
            return Ok(());
        }
        let lsn = self.write_one(&Record::Purge { index, log_id })?;
        self.sync(lsn)?;
        let mut inner = self.lock()?;
        let mut removed = false;
        while inner.segments.len() > 1 && inner.segments[0].max_index.is_none_or(|m| m <= index) {
            let seq = inner.segments[0].seq;
            self.dir
                .remove(seq)
                .map_err(|e| self.poisoned("removing log segment", seq, e))?;
            inner.segments.pop_front();
            removed = true;
        }
        if removed {
            self.dir
                .sync()
                .map_err(|e| self.poisoned("syncing the log directory after removing", 0, e))?;
        }
        Ok(())
    }

    /// Blocks until everything up to `upto` is durable. Concurrent callers share one fsync: the
    /// caller that finds none running syncs everything written so far; the others wait for it.
    pub fn sync(&self, upto: Lsn) -> Result<()> {
        let mut st = self.sync.lock().expect("sync lock");
        loop {
            if let Some(why) = &*self.poison.lock().expect("poison lock") {
                return Err(Error::Poisoned(why.clone()));
            }
            if st.durable >= upto {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).expect("sync lock");
                continue;
            }
            st.syncing = true;
            drop(st);
            let (seq, device, target) = {
                let inner = self.inner.lock().expect("wal lock");
                let a = inner.active();
                (a.seq, a.device.clone(), inner.written())
            };
            let res = device.sync();
            st = self.sync.lock().expect("sync lock");
            st.syncing = false;
            match res {
                Ok(()) => {
                    st.durable = st.durable.max(target);
                    st.syncs += 1;
                }
                Err(e) => {
                    self.synced.notify_all();
                    return Err(self.poisoned("syncing log segment", seq, e));
                }
            }
            self.synced.notify_all();
            drop(st);
            // Waiters are released; now vouch for what this fsync covered (see `mark`).
            self.mark(&mut *self.lock()?, target)?;
            st = self.sync.lock().expect("sync lock");
        }
    }

    /// Where the log is durable up to.
    pub fn durable(&self) -> Lsn {
        self.sync.lock().expect("sync lock").durable
    }

    /// Reads the entry at `index`, if the log holds it.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read_range(index..index.saturating_add(1))?
            .pop()
            .map(|e| e.1))
    }

    /// Reads the entries in `range` that the log holds, in order.
    pub fn read_range(&self, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let locs: Vec<(u64, Loc, Arc<dyn LogDevice>)> = {
            let inner = self.lock()?;
            let st = &inner.state;
            let Some(last) = st.last_entry() else {
                return Ok(Vec::new());
            };
            let start = range.start.max(st.first);
            let end = range.end.min(last + 1);
            (start..end)
                .map(|i| {
                    let loc = st.entries[(i - st.first) as usize];
                    let seg = inner
                        .segments
                        .iter()
                        .find(|s| s.seq == loc.seq)
                        .expect("entries live in live segments");
                    (i, loc, seg.device.clone())
                })
                .collect()
        };
        let mut out = Vec::with_capacity(locs.len());
        for (index, loc, device) in locs {
            let mut buf = vec![0u8; loc.len as usize];
            device
                .read_at(loc.offset, &mut buf)
                .map_err(|e| Error::io("reading log segment", self.dir.describe(loc.seq), e))?;
            match record::decode(&buf) {
                Decoded::Record {
                    record: Record::Entry { index: i, data },
                    ..
                } if i == index => {
                    out.push((index, data.to_vec()));
                }
                other => {
                    return Err(Error::LogCorrupt {
                        file: self.dir.describe(loc.seq),
                        offset: loc.offset,
                        reason: format!("entry {index} no longer reads back: {other:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The first and last entry indexes held, when any.
    pub fn bounds(&self) -> Result<Option<(u64, u64)>> {
        let inner = self.lock()?;
        Ok(inner
            .state
            .last_entry()
            .map(|last| (inner.state.first, last)))
    }

    /// The index a new entry must follow (last entry, or the purge or truncation point).
    pub fn last_index(&self) -> Result<Option<u64>> {
        Ok(self.lock()?.state.last)
    }

    /// The last purge point and its log id bytes.
    pub fn last_purged(&self) -> Option<(u64, Vec<u8>)> {
        self.inner.lock().expect("wal lock").state.purged.clone()
    }

    /// The current value of a meta slot.
    pub fn meta(&self, slot: u8) -> Option<Vec<u8>> {
        self.inner.lock().expect("wal lock").state.meta[usize::from(slot)].clone()
    }

    /// Figures for status output.
    pub fn stats(&self) -> WalStats {
        let (durable, syncs) = {
            let st = self.sync.lock().expect("sync lock");
            (st.durable, st.syncs)
        };
        let inner = self.inner.lock().expect("wal lock");
        let st = &inner.state;
        WalStats {
            segments: inner.segments.len(),
            bytes: inner.segments.iter().map(|s| s.len).sum(),
            entries: st.entries.len() as u64,
            first: st.last_entry().map(|_| st.first),
            last: st.last_entry(),
            durable,
            written: inner.written(),
            syncs,
        }
    }
}

const _: () = assert!(HEADER_LEN > FRAME_LEN);
