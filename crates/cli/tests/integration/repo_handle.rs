//! Issue 10: the repository is a cheap `Clone` handle over one shared index, and no lock is
//! held across a store put: a writer whose put hangs blocks no reader and no other writer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::lifecycle::Session;
use tidemark_core::pack::BlobKind;
use tidemark_core::repo::{BlobWriter, InitOptions, Repository};
use tidemark_core::store::Store;
use tidemark_testkit::MemStore;

/// A store whose index-file puts, once armed, wait until released (a hanging S3 put).
#[derive(Default)]
struct HangingIndexPuts {
    inner: MemStore,
    armed: AtomicBool,
    /// (a put is waiting, released)
    gate: (Mutex<(bool, bool)>, Condvar),
}

impl HangingIndexPuts {
    fn wait_until_hanging(&self) {
        let (lock, cv) = &self.gate;
        let mut g = lock.lock().unwrap();
        while !g.0 {
            g = cv.wait(g).unwrap();
        }
    }

    fn release(&self) {
        let (lock, cv) = &self.gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl Store for HangingIndexPuts {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> tidemark_core::Result<()> {
        if kind == Kind::Index && self.armed.load(Ordering::SeqCst) {
            let (lock, cv) = &self.gate;
            let mut g = lock.lock().unwrap();
            g.0 = true;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        }
        self.inner.put(kind, id, bytes)
    }
    fn get(
        &self,
        kind: Kind,
        id: &ObjectId,
        range: Option<std::ops::Range<u64>>,
    ) -> tidemark_core::Result<Vec<u8>> {
        self.inner.get(kind, id, range)
    }
    fn list(&self, kind: Kind) -> tidemark_core::Result<Vec<(ObjectId, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> tidemark_core::Result<()> {
        self.inner.delete(kind, id)
    }
    fn location(&self) -> String {
        "hanging".into()
    }
}

/// Stores `data` as one blob through a writer of `repo`; returns the packs it indexed.
fn store_blob(repo: &Repository, data: &[u8]) -> tidemark_core::repo::PackEntries {
    let writer = BlobWriter::new(repo);
    let (flags, env) = repo.encode_blob(None, data);
    let id = repo.crypto().blob_id(data);
    if let Some(p) = writer
        .add(id, BlobKind::Data, flags, data.len() as u32, &env)
        .unwrap()
    {
        writer.upload(p).unwrap();
    }
    writer.finish_all().unwrap().1
}

#[test]
fn issue_10_clones_share_the_index_and_a_hanging_put_blocks_no_reader() {
    let store = Arc::new(HangingIndexPuts::default());
    let mut repo = Repository::init(store.clone(), &InitOptions::default()).unwrap();
    repo.begin_session("test", "here").unwrap();
    repo.load_index().unwrap();
    let reader = repo.clone();
    assert_eq!(
        reader.session().map(Session::id),
        repo.session().map(Session::id),
        "a clone made after begin_session writes under the same lease"
    );

    // A first blob, indexed through one handle, is seen through the other.
    let first = store_blob(&repo, b"first blob");
    repo.shared_index().add_packs(&first);
    let first_id = repo.crypto().blob_id(b"first blob");
    assert!(reader.index().contains(&first_id));

    // A writer whose index-file put hangs.
    store.armed.store(true, Ordering::SeqCst);
    let writing = {
        let repo = repo.clone();
        std::thread::spawn(move || store_blob(&repo, b"second blob"))
    };
    store.wait_until_hanging();
    let (tx, rx) = mpsc::channel();
    let other = {
        let reader = reader.clone();
        std::thread::spawn(move || {
            let found = reader.index().contains(&first_id);
            let read = reader.read_blob(&first_id).unwrap();
            reader.index_add(ObjectId([9; 32]), &[]);
            tx.send((found, read)).unwrap();
        })
    };
    let answered = rx.recv_timeout(Duration::from_secs(5));
    store.release();
    let second = writing.join().unwrap();
    other.join().unwrap();
    assert_eq!(
        answered,
        Ok((true, b"first blob".to_vec())),
        "a reader waited for a hanging put"
    );
    reader.shared_index().add_packs(&second);
    assert!(repo
        .index()
        .contains(&repo.crypto().blob_id(b"second blob")));
    assert!(repo.index().has_pack(&ObjectId([9; 32])));
    repo.end_session().unwrap();
}
