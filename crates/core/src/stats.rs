//! What `stats` reports: the repository's totals (objects, blobs, bytes before and after
//! compression) and a snapshot's restore size; and [`subtree`], the tree at a path inside a
//! snapshot. Only reads; printing is the caller's.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use serde::Serialize;

use crate::id::{BlobId, Kind};
use crate::pack::BlobKind;
use crate::repo::Repository;
use crate::snapshot::NodeType;
use crate::{Error, Result};

/// A snapshot's restore size: what walking its tree finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    /// Regular files.
    pub files: u64,
    /// Directories below the root.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
}

/// The repository's totals (the index must be loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RepoStats {
    /// Snapshot objects.
    pub snapshots: usize,
    /// Pack files.
    pub packs: usize,
    /// Bytes of the pack files.
    pub pack_bytes: u64,
    /// Bytes of the index files.
    pub index_bytes: u64,
    /// Data blobs in the index.
    pub data_blobs: u64,
    /// Tree blobs in the index.
    pub tree_blobs: u64,
    /// Bytes of the indexed blobs before compression and encryption.
    pub raw_bytes: u64,
    /// Bytes of the indexed blobs as stored.
    pub stored_bytes: u64,
}

impl RepoStats {
    /// Raw bytes per stored byte; 0 for an empty repository.
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes > 0 {
            self.raw_bytes as f64 / self.stored_bytes as f64
        } else {
            0.0
        }
    }
}

/// Walks the tree `root` and counts its files, directories and file bytes.
pub fn snapshot_stats(repo: &Repository, root: &BlobId) -> Result<SnapshotStats> {
    let mut stats = SnapshotStats::default();
    let mut stack = vec![*root];
    while let Some(t) = stack.pop() {
        for n in repo.load_tree(&t)?.nodes {
            match n.kind() {
                NodeType::File => {
                    stats.files += 1;
                    stats.bytes += n.size;
                }
                NodeType::Dir => stats.dirs += 1,
                _ => {}
            }
            stack.extend(n.subtree);
        }
    }
    Ok(stats)
}

/// Counts the repository's objects and the blobs of its loaded index.
pub fn repo_stats(repo: &Repository) -> Result<RepoStats> {
    let packs = repo.store().list(Kind::Pack)?;
    let mut stats = RepoStats {
        snapshots: repo.store().list(Kind::Snapshot)?.len(),
        packs: packs.len(),
        pack_bytes: packs.iter().map(|(_, l)| l).sum(),
        index_bytes: repo.store().list(Kind::Index)?.iter().map(|(_, l)| l).sum(),
        ..RepoStats::default()
    };
    for (_, _, loc) in repo.index().iter() {
        stats.raw_bytes += u64::from(loc.raw_len);
        stats.stored_bytes += u64::from(loc.stored_len);
        if loc.kind() == BlobKind::Tree {
            stats.tree_blobs += 1;
        } else {
            stats.data_blobs += 1;
        }
    }
    Ok(stats)
}

/// The tree of the directory at `path` inside the tree `root` (`/` or empty is `root` itself).
pub fn subtree(repo: &Repository, root: &BlobId, path: &Path) -> Result<BlobId> {
    let mut id = *root;
    for c in path.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        let tree = repo.load_tree(&id)?;
        let node = tree
            .find(name.as_bytes())
            .ok_or_else(|| Error::Invalid(format!("{} is not in the snapshot", path.display())))?;
        id = node
            .subtree
            .ok_or_else(|| Error::Invalid(format!("{} is not a directory", path.display())))?;
    }
    Ok(id)
}
