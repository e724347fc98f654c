//! Inode numbers and the inodes the kernel holds references to.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, OnceLock};

use tidemark_core::id::BlobId;
use tidemark_core::snapshot::Node;

/// Root, `snapshots/`, `ids/` and `latest` have fixed numbers; hashed ones start above.
pub(super) const ROOT: u64 = 1;
pub(super) const SNAPSHOTS: u64 = 2;
pub(super) const IDS: u64 = 3;
pub(super) const LATEST: u64 = 4;
pub(super) const FIRST_HASHED: u64 = 16;

/// The inode number of `key` (a name, or for a snapshot directory its name, NUL and id) in
/// `parent`, before collision probing.
pub(super) fn hashed(parent: u64, key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u64(parent);
    h.write(key);
    let v = h.finish();
    if v < FIRST_HASHED {
        v + FIRST_HASHED
    } else {
        v
    }
}

/// What an inode is.
#[derive(Clone)]
pub(super) enum Entry {
    Root,
    Snapshots,
    Ids,
    Latest,
    /// A snapshot's directory: its root tree.
    Snapshot {
        tree: BlobId,
        time_ns: i64,
    },
    /// An entry of a tree.
    Node(Arc<TreeEntry>),
}

pub(super) struct TreeEntry {
    pub(super) node: Node,
    /// Where each chunk starts, and the end of the last (files; set by the first `open`).
    pub(super) offsets: OnceLock<Arc<[u64]>>,
}

pub(super) struct Inode {
    pub(super) parent: u64,
    pub(super) key: Vec<u8>,
    /// Lookups the kernel has not forgotten yet.
    pub(super) lookups: u64,
    pub(super) entry: Entry,
}

/// The inodes the kernel holds references to (plus the fixed ones).
#[derive(Default)]
pub(super) struct Inodes {
    pub(super) map: HashMap<u64, Inode>,
}

impl Inodes {
    pub(super) fn get(&self, ino: u64) -> Option<(Entry, u64)> {
        match ino {
            ROOT => Some((Entry::Root, ROOT)),
            SNAPSHOTS => Some((Entry::Snapshots, ROOT)),
            IDS => Some((Entry::Ids, ROOT)),
            LATEST => Some((Entry::Latest, ROOT)),
            _ => self.map.get(&ino).map(|i| (i.entry.clone(), i.parent)),
        }
    }

    /// The inode of `key` in `parent`, counting one lookup.
    pub(super) fn remember(&mut self, parent: u64, key: Vec<u8>, entry: Entry) -> u64 {
        let mut ino = hashed(parent, &key);
        loop {
            match self.map.get_mut(&ino) {
                None => {
                    self.map.insert(
                        ino,
                        Inode {
                            parent,
                            key,
                            lookups: 1,
                            entry,
                        },
                    );
                    return ino;
                }
                Some(i) if i.parent == parent && i.key == key => {
                    i.lookups += 1;
                    return ino;
                }
                // A hash collision: probe on (readdir's number for this name is then stale,
                // which only `ls -i` could notice).
                Some(_) => ino = ino.checked_add(1).unwrap_or(FIRST_HASHED),
            }
        }
    }

    pub(super) fn forget(&mut self, ino: u64, lookups: u64) {
        if let Some(i) = self.map.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(lookups);
            if i.lookups == 0 {
                self.map.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn inodes_count_lookups_and_probe_past_collisions() {
        let mut inodes = Inodes::default();
        let entry = || Entry::Snapshot {
            tree: id(0),
            time_ns: 0,
        };
        let a = inodes.remember(ROOT, b"a".to_vec(), entry());
        assert_eq!(a, hashed(ROOT, b"a"));
        assert!(a >= FIRST_HASHED);
        assert_eq!(inodes.remember(ROOT, b"a".to_vec(), entry()), a);
        // Another key that lands on the same number is moved along.
        inodes.map.get_mut(&a).unwrap().key = b"other".to_vec();
        let b = inodes.remember(ROOT, b"a".to_vec(), entry());
        assert_eq!(b, a + 1);
        inodes.map.get_mut(&a).unwrap().key = b"a".to_vec();
        inodes.forget(a, 1);
        assert!(inodes.get(a).is_some());
        inodes.forget(a, 1);
        assert!(inodes.get(a).is_none());
        assert!(inodes.get(ROOT).is_some());
    }
}
