//! The byte-bounded LRU behind the tree and chunk caches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use fuser::Errno;
use tidemark_core::id::BlobId;

/// A least-recently-used map bounded by the sum of its values' weights (at least one value
/// stays, however heavy).
pub(super) struct Lru<V> {
    map: HashMap<BlobId, (V, u64, usize)>,
    order: BTreeMap<u64, BlobId>,
    tick: u64,
    used: usize,
    capacity: usize,
}

impl<V: Clone> Lru<V> {
    pub(super) fn new(capacity: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            used: 0,
            capacity,
        }
    }

    pub(super) fn get(&mut self, id: &BlobId) -> Option<V> {
        let (value, tick, _) = self.map.get_mut(id)?;
        self.order.remove(tick);
        self.tick += 1;
        *tick = self.tick;
        self.order.insert(self.tick, *id);
        Some(value.clone())
    }

    pub(super) fn insert(&mut self, id: BlobId, value: V, weight: usize) {
        if let Some((_, tick, w)) = self.map.remove(&id) {
            self.order.remove(&tick);
            self.used -= w;
        }
        self.tick += 1;
        self.map.insert(id, (value, self.tick, weight));
        self.order.insert(self.tick, id);
        self.used += weight;
        while self.used > self.capacity && self.order.len() > 1 {
            let (_, old) = self.order.pop_first().expect("more than one entry");
            if let Some((_, _, w)) = self.map.remove(&old) {
                self.used -= w;
            }
        }
    }
}

pub(super) type Loading = Arc<OnceLock<Result<Arc<Vec<u8>>, Errno>>>;

/// Decrypted chunks: an LRU bounded in bytes, and the loads in flight (so that readahead
/// requests for one chunk on several threads read it once).
pub(super) struct Blobs {
    pub(super) cached: Lru<Arc<Vec<u8>>>,
    pub(super) loading: HashMap<BlobId, Loading>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn lru_evicts_least_recently_used_by_weight() {
        let mut lru = Lru::new(10);
        lru.insert(id(1), 1, 4);
        lru.insert(id(2), 2, 4);
        assert_eq!(lru.get(&id(1)), Some(1)); // 2 is now the oldest
        lru.insert(id(3), 3, 4);
        assert_eq!(lru.get(&id(2)), None);
        assert_eq!(lru.get(&id(1)), Some(1));
        assert_eq!(lru.get(&id(3)), Some(3));
        assert_eq!(lru.used, 8);
        // One value heavier than the whole cache still stays (alone).
        lru.insert(id(4), 4, 100);
        assert_eq!(lru.get(&id(4)), Some(4));
        assert_eq!(lru.map.len(), 1);
    }
}
