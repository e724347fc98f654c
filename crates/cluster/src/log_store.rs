//! The write-ahead log as openraft's log storage.
//!
//! `append` writes the entries to the log at once and hands the flush to a syncer thread; the
//! thread drains every pending flush, makes the log durable with one fsync (group commit), and only
//! then reports each append as flushed to openraft. Votes and truncations are synced before their
//! call returns; the committed log id rides along with the next fsync (openraft treats it as a hint).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use tidemark_core::wal::{Lsn, Wal, SLOT_COMMITTED, SLOT_VOTE};

use crate::{codec, io_err, Entry, LogId, TypeConfig, Vote};

struct Flush {
    upto: Lsn,
    callback: IOFlushed<TypeConfig>,
}

/// The log storage: the WAL plus its syncer thread. Clones share both.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    flushes: mpsc::Sender<Flush>,
    /// The first write or sync of the log that failed, in one line for the user: openraft stops
    /// on it, and its own message names the entry, not the cause.
    failure: Arc<Mutex<Option<String>>>,
}

/// One line for a failed write or sync of the log.
fn describe_log_error(e: &tidemark_core::Error) -> String {
    let what = match e {
        tidemark_core::Error::Io { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => "the log's disk is full",
            Some(libc::EIO) => "the log's disk failed",
            Some(libc::EROFS | libc::EACCES | libc::EPERM) => "the log is not writable",
            _ => "writing the log failed",
        },
        _ => "writing the log failed",
    };
    format!("{what}: {e}")
}

impl LogStore {
    /// Log storage over `wal`; starts the syncer thread, which ends when the last clone is dropped.
    pub fn new(wal: Arc<Wal>) -> Self {
        let (tx, rx) = mpsc::channel::<Flush>();
        let syncer = wal.clone();
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let upto = batch.iter().map(|f| f.upto).max().expect("non-empty");
                    let result = syncer.sync(upto);
                    if let Err(e) = &result {
                        note_failure(&failed, e);
                    }
                    for f in batch {
                        f.callback.io_completed(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io_err(e)),
                        });
                    }
                }
            })
            .expect("spawning the log sync thread");
        LogStore {
            wal,
            flushes: tx,
            failure,
        }
    }

    /// Why the log stopped taking entries, if a write or sync of it failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("log failure").clone()
    }

    /// The log underneath.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// The entries at indexes `start..end` that the log holds (purged ones are gone).
    pub fn read_entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.wal
            .read_range(start..end)
            .map_err(io_err)?
            .into_iter()
            .map(|(i, b)| {
                codec::decode_entry(i, &b).map_err(|r| io_err(format!("log entry {i}: {r}")))
            })
            .collect()
    }

    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        match self.wal.bounds().map_err(io_err)? {
            Some((_, last)) => Ok(self.read_entries(last, last + 1)?.pop().map(|e| e.log_id)),
            None => self.purged(),
        }
    }

    fn purged(&self) -> io::Result<Option<LogId>> {
        self.wal
            .last_purged()
            .map(|(i, b)| codec::decode_purged(i, &b).map_err(io_err))
            .transpose()
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.read_entries(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.wal
            .meta(SLOT_VOTE)
            .map(|b| codec::decode_vote(&b).map_err(io_err))
            .transpose()
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        // Bound one read to ~64 entries so a far-behind follower is fed in pieces.
        self.read_entries(start, end.min(start.saturating_add(64)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(LogState {
            last_purged_log_id: self.purged()?,
            last_log_id: self.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let lsn = self
            .wal
            .set_meta(SLOT_VOTE, &codec::encode_vote(vote))
            .map_err(io_err)?;
        self.wal.sync(lsn).map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.wal
            .set_meta(SLOT_COMMITTED, &codec::encode_committed(committed.as_ref()))
            .map(|_| ())
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.wal
            .meta(SLOT_COMMITTED)
            .map(|b| codec::decode_committed(&b).map_err(io_err))
            .transpose()
            .map(Option::flatten)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, codec::encode_entry(&e)))
            .collect();
        let upto = self.wal.append(encoded).map_err(|e| {
            note_failure(&self.failure, &e);
            io_err(e)
        })?;
        self.flushes
            .send(Flush { upto, callback })
            .map_err(|_| io_err("the log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let lsn = self
            .wal
            .truncate_after(last_log_id.map(|l| l.index))
            .map_err(io_err)?;
        self.wal.sync(lsn).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut id = Vec::with_capacity(16);
        codec::leader_bytes(&log_id, &mut id);
        self.wal.purge(log_id.index, &id).map_err(io_err)
    }
}

fn note_failure(slot: &Mutex<Option<String>>, e: &tidemark_core::Error) {
    let mut slot = slot.lock().expect("log failure");
    if slot.is_none() {
        let msg = describe_log_error(e);
        tracing::error!("{msg}");
        *slot = Some(msg);
    }
}
