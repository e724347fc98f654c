//! The catalog (`docs/format.md` §14) against a `BTreeMap` model while its storage fails, as
//! redb's own fuzzer does: random puts, deletes and renames of files, seals (durable commits),
//! rewinds and reopens, with the storage failing after a countdown. After every step the live
//! tree equals the model; after a failure or a reopen the catalog holds exactly the last durable
//! commit (or, when the failure hit that commit itself, the one it was making), and its
//! `applied` meta is that commit's: nothing uncommitted ever reaches the storage (issue 9).
//!
//! Input: a sequence of 3-byte steps `op, a, b`.
#![no_main]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use redb::StorageBackend;

/// The error type of `StorageBackend`'s I/O methods (without redb's experimental API).
type BackendIoError = std::io::Error;
use tidemark_cluster::Catalog;
use tidemark_core::snapshot::{Node, NodeType, NodeTypeField};

/// Storage bytes shared across reopens, and how many more writes or syncs succeed (-1: all).
#[derive(Debug, Default)]
struct Disk {
    bytes: Mutex<Vec<u8>>,
    writes_left: AtomicI64,
}

#[derive(Debug, Clone)]
struct Faulty(Arc<Disk>);

impl Faulty {
    fn admit(&self) -> Result<(), BackendIoError> {
        let left = &self.0.writes_left;
        match left.load(Ordering::SeqCst) {
            -1 => Ok(()),
            0 => Err(std::io::Error::other("injected I/O failure")),
            _ => {
                left.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> Result<u64, BackendIoError> {
        Ok(self.0.bytes.lock().unwrap().len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        let b = self.0.bytes.lock().unwrap();
        let at = offset as usize;
        let src = b
            .get(at..at + out.len())
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.admit()?;
        self.0.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.admit()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.admit()?;
        let mut b = self.0.bytes.lock().unwrap();
        let at = offset as usize;
        if b.len() < at + data.len() {
            b.resize(at + data.len(), 0);
        }
        b[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

type Model = BTreeMap<Vec<u8>, u64>;

fn path(x: u8) -> Vec<u8> {
    format!("d{}/f{}", x % 3, (x / 3) % 8).into_bytes()
}

fn file(size: u64) -> Node {
    Node {
        node_type: NodeTypeField(NodeType::File),
        mode: 0o644,
        size,
        ..Node::default()
    }
}

/// The files in the catalog (directories are implied by the paths) and its `applied` meta.
fn files(c: &Catalog) -> (Model, Option<u64>) {
    let files = c
        .walk()
        .expect("walk after a successful step")
        .into_iter()
        .filter(|(_, n)| n.kind() == NodeType::File)
        .map(|(p, n)| (p, n.size))
        .collect();
    (files, c.meta::<u64>("applied").expect("meta"))
}

fn open(disk: &Arc<Disk>) -> Catalog {
    disk.writes_left.store(-1, Ordering::SeqCst);
    Catalog::open_backend(Faulty(disk.clone()), "fuzz.redb").expect("opening a healthy storage")
}

/// After a failure or a reopen: the catalog must be at `durable`, or at `pending` when the
/// failing step was the durable commit that would have made it.
fn reopen_and_check(
    disk: &Arc<Disk>,
    durable: &mut (Model, Option<u64>),
    pending: Option<&(Model, Option<u64>)>,
) -> Catalog {
    let c = open(disk);
    let got = files(&c);
    if got != *durable {
        match pending {
            Some(p) if got == *p => *durable = p.clone(),
            _ => panic!("after reopening: {got:?}, last durable commit {durable:?}, pending {pending:?}"),
        }
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let disk = Arc::new(Disk::default());
    let mut cat = open(&disk);
    let mut live: (Model, Option<u64>) = (Model::new(), None);
    let mut durable = live.clone();
    let mut seals = 0u64;
    for step in data.chunks_exact(3).take(64) {
        let (op, a, b) = (step[0] % 8, step[1], step[2]);
        let mut next = live.clone();
        let result = match op {
            0 | 1 => {
                let size = u64::from(b);
                next.0.insert(path(a), size);
                cat.begin().and_then(|mut t| {
                    t.put(&path(a), &file(size))?;
                    t.commit(false)
                })
            }
            2 => {
                next.0.remove(&path(a));
                cat.begin().and_then(|mut t| {
                    t.delete(&path(a))?;
                    t.commit(false)
                })
            }
            3 => {
                let (from, to) = (path(a), path(b));
                if from == to || !live.0.contains_key(&from) || live.0.contains_key(&to) {
                    continue;
                }
                let size = next.0.remove(&from).expect("checked");
                next.0.insert(to.clone(), size);
                cat.begin().and_then(|mut t| {
                    assert!(t.rename(&from, &to)?, "rename of an existing file");
                    t.commit(false)
                })
            }
            4 => {
                // A seal: the durable commit, with the applied index it records.
                seals += 1;
                next.1 = Some(seals);
                cat.begin().and_then(|mut t| {
                    t.set_meta("applied", &seals)?;
                    t.commit(true)
                })
            }
            5 => {
                next = durable.clone();
                cat.rewind()
            }
            6 => {
                drop(cat);
                cat = reopen_and_check(&disk, &mut durable, None);
                live = durable.clone();
                continue;
            }
            _ => {
                disk.writes_left
                    .store(i64::from(a % 16), Ordering::SeqCst);
                continue;
            }
        };
        match result {
            Ok(()) => {
                live = next;
                if op == 4 {
                    durable = live.clone();
                }
                assert_eq!(files(&cat), live, "live tree after step {step:?}");
            }
            Err(_) => {
                // A failed step leaves the process to start again from the storage.
                drop(cat);
                let pending = (op == 4).then_some(&next);
                cat = reopen_and_check(&disk, &mut durable, pending);
                live = durable.clone();
            }
        }
    }
    drop(cat);
    reopen_and_check(&disk, &mut durable, None);
});
