//! Test doubles and conformance suites for tidemark: an in-memory [`MemStore`], a
//! [`CrashStore`] that stops accepting writes after a countdown (a simulated crash at each write
//! point), a [`CountingStore`], the [`store_suite`] every `Store` must pass, seeded data, and the log
//! devices: [`MemLogDir`], [`CrashLogDir`] (power cut at a chosen sync) and [`log_device_suite`];
//! [`S3Server`] runs a real S3 server (`s3s-fs`) for tests.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::{RngCore, SeedableRng};
use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::store::{Store, CONFIG_ID};
use tidemark_core::{Error, Result};

mod flaky;
mod log;
pub mod s3;
pub use flaky::FlakyStore;
pub use log::{log_device_suite, CrashLogDir, MemDevice, MemLogDir, Unsynced};
pub use s3::S3Server;

/// The methods of a wrapper that only changes `put`: everything else goes to `self.inner`.
macro_rules! forward_to_inner {
    () => {
        fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
            self.inner.get(kind, id, range)
        }
        fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
            self.inner.list(kind)
        }
        fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
            self.inner.delete(kind, id)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
    };
}

/// A store in memory.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<(Kind, ObjectId), Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flips one bit of an object (to test damage detection).
    pub fn corrupt(&self, kind: Kind, id: &ObjectId, byte: usize) {
        let mut o = self.objects.lock().unwrap();
        let v = o.get_mut(&(kind, *id)).expect("object exists");
        let i = byte % v.len();
        v[i] ^= 0x10;
    }
}

fn slice(v: &[u8], range: Option<Range<u64>>) -> Vec<u8> {
    match range {
        None => v.to_vec(),
        Some(r) => {
            let s = (r.start as usize).min(v.len());
            let e = (r.end as usize).min(v.len());
            v[s..e.max(s)].to_vec()
        }
    }
}

impl Store for MemStore {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        self.objects
            .lock()
            .unwrap()
            .insert((kind, *id), bytes.to_vec());
        Ok(())
    }
    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        let mut o = self.objects.lock().unwrap();
        match o.entry((kind, *id)) {
            std::collections::btree_map::Entry::Occupied(_) => Ok(false),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(bytes.to_vec());
                Ok(true)
            }
        }
    }
    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        let o = self.objects.lock().unwrap();
        let v = o.get(&(kind, *id)).ok_or_else(|| Error::NotFound {
            kind,
            id: id.to_hex(),
        })?;
        Ok(slice(v, range))
    }
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, id), v)| (*id, v.len() as u64))
            .collect())
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        self.objects.lock().unwrap().remove(&(kind, *id));
        Ok(())
    }
    fn location(&self) -> String {
        "memory".into()
    }
}

/// Wraps a store; after `budget` successful puts every put fails, as if the process died there.
/// Reads keep working, so the test can then inspect what a crash at that point leaves behind.
pub struct CrashStore<S> {
    inner: S,
    budget: AtomicUsize,
    /// Puts that went through.
    pub puts: AtomicUsize,
}

impl<S: Store> CrashStore<S> {
    /// Allows `budget` puts, then fails.
    pub fn new(inner: S, budget: usize) -> Self {
        CrashStore {
            inner,
            budget: AtomicUsize::new(budget),
            puts: AtomicUsize::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for CrashStore<S> {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        if self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err()
        {
            return Err(Error::io(
                "writing",
                format!("{kind} {}", id.short()),
                std::io::Error::other("simulated crash"),
            ));
        }
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(kind, id, bytes)
    }
    forward_to_inner!();
}

/// Counts bytes put into a store (to show that a second backup re-sends nothing).
pub struct CountingStore<S> {
    inner: S,
    /// Bytes of pack objects put.
    pub pack_bytes: AtomicU64,
}

impl<S: Store> CountingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            pack_bytes: AtomicU64::new(0),
        }
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        if kind == Kind::Pack {
            self.pack_bytes
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        self.inner.put(kind, id, bytes)
    }
    forward_to_inner!();
}

/// The behaviour every `Store` must show. Panics on the first violation.
pub fn store_suite(store: &dyn Store) {
    let a = ObjectId([0xaa; 32]);
    let b = ObjectId([0xbb; 32]);
    for kind in [Kind::Key, Kind::Snapshot, Kind::Index, Kind::Pack] {
        assert!(
            store.list(kind).unwrap().is_empty(),
            "{kind}: new store lists nothing"
        );
        assert!(
            matches!(store.get(kind, &a, None), Err(Error::NotFound { .. })),
            "{kind}: missing object is NotFound"
        );
        store.put(kind, &a, b"hello world").unwrap();
        store.put(kind, &a, b"hello world").unwrap(); // idempotent
        store.put(kind, &b, b"").unwrap();
        assert_eq!(store.get(kind, &a, None).unwrap(), b"hello world");
        assert_eq!(store.get(kind, &a, Some(6..11)).unwrap(), b"world");
        assert_eq!(store.get(kind, &b, None).unwrap(), b"");
        let mut l = store.list(kind).unwrap();
        l.sort();
        assert_eq!(l, vec![(a, 11), (b, 0)], "{kind}: list gives ids and sizes");
        store.delete(kind, &a).unwrap();
        store.delete(kind, &a).unwrap(); // deleting a missing object is fine
        assert_eq!(store.list(kind).unwrap(), vec![(b, 0)]);
        store.delete(kind, &b).unwrap();
    }
    // Kinds are separate namespaces.
    store.put(Kind::Index, &a, b"i").unwrap();
    assert!(store.get(Kind::Snapshot, &a, None).is_err());
    store.delete(Kind::Index, &a).unwrap();
    // The config has a fixed id and can be replaced.
    store.put(Kind::Config, &CONFIG_ID, b"{}").unwrap();
    assert_eq!(store.get(Kind::Config, &CONFIG_ID, None).unwrap(), b"{}");
    assert_eq!(store.list(Kind::Config).unwrap(), vec![(CONFIG_ID, 2)]);
    store.delete(Kind::Config, &CONFIG_ID).unwrap();
    assert!(store.list(Kind::Config).unwrap().is_empty());

    // Every stored kind round-trips; a range past the end is cut at the end.
    for kind in Kind::STORED {
        let id = if kind == Kind::Config { CONFIG_ID } else { a };
        store.put(kind, &id, b"0123456789").unwrap();
        assert_eq!(store.get(kind, &id, Some(8..20)).unwrap(), b"89", "{kind}");
        assert_eq!(store.get(kind, &id, Some(12..20)).unwrap(), b"", "{kind}");
        assert_eq!(store.list(kind).unwrap(), vec![(id, 10)], "{kind}");
        store.delete(kind, &id).unwrap();
        assert!(store.list(kind).unwrap().is_empty(), "{kind}");
    }

    // Create-if-absent: the first creator wins, the object keeps its bytes.
    let c = ObjectId([0xcc; 32]);
    assert!(store.put_new(Kind::Config, &CONFIG_ID, b"first").unwrap());
    assert!(!store.put_new(Kind::Config, &CONFIG_ID, b"other").unwrap());
    assert_eq!(store.get(Kind::Config, &CONFIG_ID, None).unwrap(), b"first");
    store.delete(Kind::Config, &CONFIG_ID).unwrap();
    assert!(store.put_new(Kind::Key, &c, b"k").unwrap());
    assert_eq!(store.get(Kind::Key, &c, None).unwrap(), b"k");
    store.delete(Kind::Key, &c).unwrap();

    // A large object (multipart on object stores) comes back whole and by range.
    let big = seeded_bytes(20 << 20, 7);
    store.put(Kind::Pack, &c, &big).unwrap();
    assert_eq!(store.list(Kind::Pack).unwrap(), vec![(c, big.len() as u64)]);
    assert!(
        store.get(Kind::Pack, &c, None).unwrap() == big,
        "large object round-trips"
    );
    let r = (9 << 20) - 5..(9 << 20) + 5;
    assert_eq!(
        store.get(Kind::Pack, &c, Some(r.clone())).unwrap(),
        &big[r.start as usize..r.end as usize]
    );
    store.delete(Kind::Pack, &c).unwrap();

    // Listings are complete past one page of an object store's answer (S3 pages by 1000).
    let many: Vec<ObjectId> = (0..1005u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            ObjectId(id)
        })
        .collect();
    for id in &many {
        store.put(Kind::Snapshot, id, b"s").unwrap();
    }
    let mut listed = store.list_ids(Kind::Snapshot).unwrap();
    listed.sort();
    assert_eq!(listed, many, "a listing of 1005 objects is complete");
    for id in &many {
        store.delete(Kind::Snapshot, id).unwrap();
    }
}

/// The part of the conformance suite only stores with an atomic create-if-absent pass: of eight
/// threads racing to create the config, exactly one wins. (`s3s-fs` checks, then writes, so two
/// can win there; S3 itself decides `If-None-Match: *` atomically.)
pub fn store_create_race(store: &dyn Store) {
    let wins: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..8u8)
            .map(|i| s.spawn(move || store.put_new(Kind::Config, &CONFIG_ID, &[i]).unwrap()))
            .collect();
        racers
            .into_iter()
            .map(|r| usize::from(r.join().unwrap()))
            .sum()
    });
    assert_eq!(wins, 1, "exactly one put_new of the config wins");
    store.delete(Kind::Config, &CONFIG_ID).unwrap();
}

/// Listing while another thread deletes: an object deleted between the directory read and its
/// `stat` is simply not listed (not an error), an object never deleted is always listed with its
/// size, and no listing names an object twice. Leaves the store empty.
pub fn store_list_while_deleting(store: &dyn Store) {
    let object = |i: u32, stays: bool| {
        let mut id = [u8::from(stays); 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        ObjectId(id)
    };
    for kind in [Kind::Index, Kind::Pack] {
        let stay: Vec<ObjectId> = (0..20).map(|i| object(i, true)).collect();
        let go: Vec<ObjectId> = (0..400).map(|i| object(i, false)).collect();
        for id in stay.iter().chain(&go) {
            store.put(kind, id, b"0123").unwrap();
        }
        let done = AtomicBool::new(false);
        let listings = std::thread::scope(|s| {
            let lister = s.spawn(|| {
                let mut listings = 0;
                // At least a few listings even if the deleter finishes first.
                while listings < 3 || !done.load(Ordering::SeqCst) {
                    let mut listed = store
                        .list(kind)
                        .unwrap_or_else(|e| panic!("{kind}: listing while deleting: {e}"));
                    assert!(listed.iter().all(|(_, len)| *len == 4), "{kind}: sizes");
                    listed.sort();
                    let n = listed.len();
                    listed.dedup();
                    assert_eq!(listed.len(), n, "{kind}: an object is listed twice");
                    for id in &stay {
                        assert!(
                            listed.binary_search(&(*id, 4)).is_ok(),
                            "{kind}: an object never deleted is missing from a listing"
                        );
                    }
                    listings += 1;
                }
                listings
            });
            for id in &go {
                store.delete(kind, id).unwrap();
            }
            done.store(true, Ordering::SeqCst);
            lister.join().unwrap()
        });
        assert!(listings >= 3);
        let mut listed = store.list_ids(kind).unwrap();
        listed.sort();
        assert_eq!(listed, stay, "{kind}: what is left after the deletes");
        for id in &stay {
            store.delete(kind, id).unwrap();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn seeded_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_conformance() {
        store_suite(&MemStore::new());
        store_create_race(&MemStore::new());
    }

    #[test]
    fn crash_store_stops_after_budget() {
        let s = CrashStore::new(MemStore::new(), 1);
        s.put(Kind::Index, &ObjectId([1; 32]), b"a").unwrap();
        assert!(s.put(Kind::Index, &ObjectId([2; 32]), b"b").is_err());
        assert_eq!(s.list(Kind::Index).unwrap().len(), 1);
    }
}
