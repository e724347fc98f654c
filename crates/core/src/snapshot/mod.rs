//! Snapshots and trees: a point-in-time tree of paths → metadata + chunk ids, the diff of two,
//! and the choice of one snapshot among many ([`Selector`], [`SnapshotFilter`]).
//!
//! [`cache`] keeps the plaintexts of a repository's snapshots in one local file, so listing
//! 100,000 of them reads one file instead of 100,000 objects; the repository decides when to use
//! it (`Repository::snapshot_list`).

pub mod cache;
mod diff;
mod tree;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use cache::{CacheStats, SnapshotList};
pub use diff::{diff, Change, ChangeKind, LoadTree};
pub use tree::{paginate, Node, NodeType, NodeTypeField, PageRef, Tree, Xattr, PAGED_OVER};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, ObjectId, SnapshotId};

/// What one backup did; stored in its snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Files not in the parent.
    pub files_new: u64,
    /// Files whose metadata changed since the parent (re-read).
    pub files_changed: u64,
    /// Files taken from the parent without reading.
    pub files_unmodified: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, sockets.
    pub other: u64,
    /// Entries that could not be read.
    pub errors: u64,
    /// New data chunks stored.
    pub data_blobs_new: u64,
    /// New trees stored.
    pub tree_blobs_new: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Total size of all files in the snapshot.
    pub bytes_total: u64,
    /// Plaintext bytes of new blobs.
    pub data_added: u64,
    /// Stored bytes of new blobs (compressed, encrypted).
    pub data_added_packed: u64,
    /// Start time (RFC 3339).
    pub start: String,
    /// End time (RFC 3339).
    pub end: String,
}

/// A snapshot object (`docs/format.md` §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version (1).
    pub version: u32,
    /// When the backup started (RFC 3339, UTC, ns).
    pub time: String,
    /// Host.
    pub hostname: String,
    /// User.
    pub username: String,
    /// Uid of the user.
    pub uid: u32,
    /// Gid of the user.
    pub gid: u32,
    /// Absolute source paths.
    pub paths: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Snapshot used for change detection.
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    /// Root tree.
    pub tree: BlobId,
    /// Writer version.
    pub program_version: String,
    /// Counters.
    #[serde(default)]
    pub summary: Summary,
    /// The log index this snapshot was sealed at (continuous capture, `docs/format.md` §15);
    /// `None` for a one-shot backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The leader of the entry at `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogPosition>,
    /// The cluster membership in force at the seal (JSON as in `docs/format.md` §13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<serde_json::Value>,
}

/// Who created a log entry: the leader's term and node id (`docs/format.md` §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// Raft term.
    pub term: u64,
    /// Node id of the leader.
    pub node: u64,
}

impl Snapshot {
    /// Seals; returns the id and stored bytes.
    pub fn seal(&self, crypto: &Crypto) -> (SnapshotId, Vec<u8>) {
        let bytes = crypto.seal(
            Domain::Snapshot,
            &serde_json::to_vec(self).expect("snapshots serialize"),
        );
        (ObjectId::of(&bytes), bytes)
    }

    /// Opens stored bytes.
    pub fn open(crypto: &Crypto, id: &SnapshotId, bytes: &[u8]) -> Result<Self> {
        Self::open_plain(crypto, id, bytes).map(|(s, _)| s)
    }

    /// Opens stored bytes; also returns the checked JSON plaintext (what the local cache keeps).
    pub fn open_plain(crypto: &Crypto, id: &SnapshotId, bytes: &[u8]) -> Result<(Self, Vec<u8>)> {
        if ObjectId::of(bytes) != *id {
            return Err(Error::corrupt(
                Kind::Snapshot,
                id,
                "content does not match its name (BLAKE3 mismatch)",
            ));
        }
        let plain = crypto.open(Domain::Snapshot, bytes, Kind::Snapshot, id)?;
        let s = Self::decode(&plain).map_err(|r| Error::corrupt(Kind::Snapshot, id, r))?;
        Ok((s, plain))
    }

    /// Parses a snapshot's plaintext.
    pub fn decode(plain: &[u8]) -> std::result::Result<Self, String> {
        let s: Snapshot =
            serde_json::from_slice(plain).map_err(|e| format!("not a snapshot: {e}"))?;
        if s.version != 1 {
            return Err(format!("unknown snapshot version {}", s.version));
        }
        Ok(s)
    }

    /// The snapshot time as a `DateTime` (the epoch when `time` does not parse).
    pub fn datetime(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.time)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// The snapshot time in ns since the epoch: the sort key of listings (with the id).
    pub fn time_ns(&self) -> i64 {
        nanos(self.datetime())
    }
}

/// `t` in ns since the epoch, clamped to what an `i64` holds (years 1677 to 2262).
pub fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Which snapshot to pick among those a [`SnapshotFilter`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// The newest.
    Latest,
    /// The newest whose time is at or before this instant.
    AtOrBefore(DateTime<Utc>),
    /// The one with the greatest `revision` at or below this one (snapshots without a revision
    /// never qualify); among equal revisions, the newest.
    Revision(u64),
}

/// Restricts a selection to some snapshots; the default lets every snapshot through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFilter {
    /// Only snapshots taken on this host.
    pub hostname: Option<String>,
    /// Only snapshots whose `paths` include every one of these.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// Whether the filter lets every snapshot through.
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none() && self.paths.is_empty()
    }

    /// Whether `s` passes.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.hostname.as_ref().is_none_or(|h| *h == s.hostname)
            && self.paths.iter().all(|p| s.paths.contains(p))
    }
}

/// The snapshot `selector` picks from `list` among those `filter` lets through. `list` is in
/// listing order (oldest first, ties by id), as `Repository::snapshots` returns it.
pub fn select<'a>(
    list: &'a [(SnapshotId, Snapshot)],
    filter: &SnapshotFilter,
    selector: Selector,
) -> Option<&'a (SnapshotId, Snapshot)> {
    let mut candidates = list.iter().filter(|(_, s)| filter.matches(s));
    match selector {
        Selector::Latest => candidates.next_back(),
        Selector::AtOrBefore(t) => {
            let t = nanos(t);
            candidates.rfind(|(_, s)| s.time_ns() <= t)
        }
        // `max_by_key` keeps the last of equal keys: the newest of equal revisions.
        Selector::Revision(r) => candidates
            .filter_map(|e| e.1.revision.filter(|&rev| rev <= r).map(|rev| (rev, e)))
            .max_by_key(|(rev, _)| *rev)
            .map(|(_, e)| e),
    }
}
