//! Snapshots and trees: a point-in-time tree of paths → metadata + chunk ids, and the diff of two.

mod diff;
mod tree;

use serde::{Deserialize, Serialize};

pub use diff::{diff, Change, ChangeKind};
pub use tree::{Node, NodeType, NodeTypeField, Tree, Xattr};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{BlobId, ObjectId, SnapshotId};
use crate::store::Kind;

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
        if ObjectId::of(bytes) != *id {
            return Err(Error::corrupt(
                Kind::Snapshot,
                id,
                "content does not match its name (BLAKE3 mismatch)",
            ));
        }
        let plain = crypto.open(Domain::Snapshot, bytes, Kind::Snapshot, id)?;
        Self::decode(&plain).map_err(|r| Error::corrupt(Kind::Snapshot, id, r))
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

    /// The snapshot time as a `DateTime`.
    pub fn datetime(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    }
}
