//! The engine over a real repository: writes become snapshots, restarts replay the log, and the
//! sealed tree matches the catalog.

use tidemark_cluster::Engine;
use tidemark_core::batch::{Batch, Edit};
use tidemark_core::repo::Repository;
use tidemark_core::snapshot::Node;

use std::collections::BTreeMap;

use super::common::{assert_complete, dir, open_engine, put_files, repo, rt, snapshot_nodes};

/// `path → (type, size)` for every entry below the watched directory in the snapshot.
fn snapshot_listing(
    repo: &Repository,
    id: &tidemark_core::id::SnapshotId,
) -> Vec<(String, String, u64)> {
    let mut out: Vec<_> = snapshot_nodes(repo, id)
        .into_iter()
        .map(|(path, n)| (path, format!("{:?}", n.kind()), n.size))
        .collect();
    out.sort();
    out
}

fn catalog_listing(engine: &Engine) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = engine
        .state_machine()
        .with_catalog(|c| c.walk().unwrap())
        .into_iter()
        .map(|(p, n): (Vec<u8>, Node)| {
            (
                String::from_utf8(p).unwrap(),
                format!("{:?}", n.kind()),
                n.size,
            )
        })
        .collect();
    v.sort();
    v
}

/// Builds a batch of files.
fn batch(repo: &Repository, files: &[(&str, &[u8])]) -> Batch {
    put_files(repo, files)
}

#[test]
fn writes_become_a_snapshot_that_matches_the_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        // A new catalog has never been sealed: its first seal is the empty tree.
        assert!(engine.seal_due().is_some());
        engine.seal().await.unwrap().expect("the empty tree");
        assert_eq!(engine.seal_due(), None, "nothing changed since");
        let b = put_files(
            &repo,
            &[
                ("docs/a.txt", b"hello"),
                ("docs/sub/b.txt", b"world!"),
                ("empty", b""),
            ],
        );
        let r = engine.write(b).await.unwrap();
        assert!(r.rescan.is_empty());
        let mut mv = Batch::default();
        mv.edits.push(Edit::Put {
            path: b"docs/newdir".to_vec(),
            node: dir(),
        });
        mv.edits.push(Edit::Move {
            from: b"docs/sub".to_vec(),
            to: b"moved".to_vec(),
        });
        mv.edits.push(Edit::Move {
            from: b"nothing".to_vec(),
            to: b"x".to_vec(),
        });
        let r = engine.write(mv).await.unwrap();
        assert_eq!(
            r.rescan,
            vec![b"x".to_vec()],
            "a move from an unknown path asks for a rescan"
        );
        assert!(engine.state_machine().changed_since_seal());
        assert_eq!(engine.seal_due(), None, "not before the seal interval");
        std::thread::sleep(std::time::Duration::from_millis(550));
        assert_eq!(
            engine.seal_due(),
            Some(tidemark_cluster::SealTrigger::Interval)
        );

        let sealed = engine.seal().await.unwrap().expect("a snapshot");
        let want = vec![
            ("docs".to_string(), "Dir".to_string(), 0),
            ("docs/a.txt".into(), "File".into(), 5),
            ("docs/newdir".into(), "Dir".into(), 0),
            ("empty".into(), "File".into(), 0),
            ("moved".into(), "Dir".into(), 0),
            ("moved/b.txt".into(), "File".into(), 6),
        ];
        assert_eq!(catalog_listing(&engine), want);
        assert_eq!(snapshot_listing(&repo, &sealed.id), want);
        let snap = repo.load_snapshot(&sealed.id).unwrap();
        assert!(snap.revision.unwrap() >= 2);
        // The file's bytes are in the repository.
        let tree_blob = repo.read_blob(&repo.crypto().blob_id(b"world!")).unwrap();
        assert_eq!(tree_blob, b"world!");
        let status = engine.status().unwrap();
        assert_eq!(status.state_machine.seals, 2);
        assert_eq!(status.wal.entries, 0, "the log is purged up to the seal");

        // Sealing again without changes writes nothing.
        assert_eq!(engine.seal_due(), None);
        assert_eq!(engine.seal().await.unwrap().unwrap().id, sealed.id);
        engine.shutdown().await.unwrap();
    });
}

#[test]
fn a_restart_replays_what_was_not_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let first = rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        engine.write(batch(&repo, &[("a", b"one")])).await.unwrap();
        let first = engine.seal().await.unwrap().unwrap();
        engine
            .write(batch(&repo, &[("b", b"two"), ("c/d", b"three")]))
            .await
            .unwrap();
        let mut del = Batch::default();
        del.edits.push(Edit::Delete {
            path: b"a".to_vec(),
        });
        engine.write(del).await.unwrap();
        // As after an error exit or a signal: the last writes are only in the log, and the
        // catalog is dropped without a seal. (redb makes pending non-durable commits durable
        // when a database closes; before issue 9 that sealed blobs that were never stored.)
        engine.stop_without_seal().await.unwrap();
        first
    });
    rt().block_on(async {
        let (engine, rec) = open_engine(repo.clone(), tmp.path()).await;
        assert_eq!(rec.torn_bytes, 0);
        let want = vec![
            ("b".to_string(), "File".to_string(), 3),
            ("c".into(), "Dir".into(), 0),
            ("c/d".into(), "File".into(), 5),
        ];
        assert_eq!(catalog_listing(&engine), want, "the log was replayed");
        let sealed = engine.shutdown().await.unwrap().unwrap();
        assert_ne!(sealed.id, first.id);
        assert_eq!(snapshot_listing(&repo, &sealed.id), want);
        let contents: BTreeMap<String, Vec<u8>> = [("b", &b"two"[..]), ("c/d", b"three")]
            .into_iter()
            .map(|(p, d)| (p.to_string(), d.to_vec()))
            .collect();
        assert_complete(&repo, &sealed.id, &contents, "replayed");
    });
}

/// Issue 10: a state directory from the release before seals were entries opens. Its log holds
/// bare batches (request version 1); they replay and seal as before.
#[test]
fn issue_10_a_log_of_the_previous_release_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        let last = engine.log().wal().last_index().unwrap().unwrap();
        let leader = engine.log().read_entries(last, last + 1).unwrap()[0].log_id;
        engine.stop_without_seal().await.unwrap();
        // The previous release's encoder: term ‖ node ‖ type 1 ‖ the batch's own bytes.
        let old = batch(&repo, &[("old", b"from the last release")]);
        let mut body = Vec::new();
        body.extend_from_slice(&leader.leader_id.term.to_le_bytes());
        body.extend_from_slice(&leader.leader_id.node_id.to_le_bytes());
        body.push(1);
        old.encode_into(&mut body);
        let dir = tidemark_core::wal::FileLogDir::new(tmp.path().join("wal")).unwrap();
        let (wal, _) = tidemark_core::wal::Wal::open(
            std::sync::Arc::new(dir),
            tidemark_core::wal::WalOptions::default(),
        )
        .unwrap();
        let lsn = wal.append([(last + 1, body)]).unwrap();
        wal.sync(lsn).unwrap();
        drop(wal);

        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        assert!(catalog_listing(&engine).contains(&("old".into(), "File".into(), 21)));
        let sealed = engine.seal().await.unwrap().expect("a seal");
        let want = BTreeMap::from([("old".to_string(), b"from the last release".to_vec())]);
        assert_complete(&repo, &sealed.id, &want, "old log");
        engine.shutdown().await.unwrap();
    });
}

/// Issue 10: leadership is observable; a group of one leads once initialised.
#[test]
fn issue_10_leadership_after_initialize() {
    let tmp = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let parts = tidemark_cluster::EngineParts::standalone(tmp.path()).unwrap();
        let (engine, _) = Engine::open(parts, repo(), super::common::options())
            .await
            .unwrap();
        let mut leadership = engine.leadership();
        assert!(
            !leadership.borrow().leading,
            "nobody leads an uninitialised group"
        );
        assert!(!engine.is_initialized().await.unwrap());
        engine
            .initialize(Engine::standalone_members())
            .await
            .unwrap();
        let led = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            leadership.wait_for(|l| l.leading),
        )
        .await
        .expect("leads within 30 s")
        .map(|l| *l)
        .unwrap();
        assert_eq!(led.leader, Some(tidemark_cluster::STANDALONE_NODE));
        assert!(led.term >= 1);
        assert!(matches!(
            engine.initialize(Engine::standalone_members()).await,
            Err(tidemark_cluster::Error::Refused(_))
        ));
        engine.shutdown().await.unwrap();
    });
}

/// A store that counts pack puts, and those made on one of the async runtime's worker threads
/// (where `Handle::block_on` refuses to run).
struct WorkerWatch {
    inner: tidemark_testkit::MemStore,
    packs: std::sync::atomic::AtomicUsize,
    on_worker: std::sync::atomic::AtomicUsize,
}

impl tidemark_core::store::Store for WorkerWatch {
    fn put(
        &self,
        kind: tidemark_core::id::Kind,
        id: &tidemark_core::id::ObjectId,
        bytes: &[u8],
    ) -> tidemark_core::Result<()> {
        use std::sync::atomic::Ordering;
        if kind == tidemark_core::id::Kind::Pack {
            self.packs.fetch_add(1, Ordering::SeqCst);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let blocking = std::panic::catch_unwind(|| handle.block_on(async {}));
                if blocking.is_err() {
                    self.on_worker.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        self.inner.put(kind, id, bytes)
    }
    fn get(
        &self,
        kind: tidemark_core::id::Kind,
        id: &tidemark_core::id::ObjectId,
        range: Option<std::ops::Range<u64>>,
    ) -> tidemark_core::Result<Vec<u8>> {
        self.inner.get(kind, id, range)
    }
    fn list(
        &self,
        kind: tidemark_core::id::Kind,
    ) -> tidemark_core::Result<Vec<(tidemark_core::id::ObjectId, u64)>> {
        self.inner.list(kind)
    }
    fn delete(
        &self,
        kind: tidemark_core::id::Kind,
        id: &tidemark_core::id::ObjectId,
    ) -> tidemark_core::Result<()> {
        self.inner.delete(kind, id)
    }
    fn location(&self) -> String {
        "worker-watch".into()
    }
}

/// Issue 10: the packs an apply fills are stored off the async runtime's worker threads, and
/// the snapshot still holds every file.
#[test]
fn issue_10_apply_stores_packs_off_the_runtime_workers() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(WorkerWatch {
        inner: tidemark_testkit::MemStore::new(),
        packs: 0.into(),
        on_worker: 0.into(),
    });
    let repo = super::common::init_repo(store.clone(), 64 * 1024);
    let files: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|i| (format!("f{i}"), tidemark_testkit::seeded_bytes(30_000, i)))
        .collect();
    rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        for pair in files.chunks(2) {
            let refs: Vec<(&str, &[u8])> = pair
                .iter()
                .map(|(p, d)| (p.as_str(), d.as_slice()))
                .collect();
            engine.write(batch(&repo, &refs)).await.unwrap();
        }
        let before_seal = store.packs.load(Ordering::SeqCst);
        let sealed = engine.seal().await.unwrap().expect("a snapshot");
        let want: BTreeMap<String, Vec<u8>> = files.iter().cloned().collect();
        assert_complete(&repo, &sealed.id, &want, "packs stored off the runtime");
        engine.shutdown().await.unwrap();
        assert!(before_seal >= 4, "applies filled {before_seal} packs");
    });
    assert_eq!(
        store.on_worker.load(Ordering::SeqCst),
        0,
        "pack puts ran on an async worker"
    );
}

/// Issue 10: a seal is stamped with the repository's clock (the `Clock` seam), not the process's,
/// and the stamp is what the snapshot says.
#[test]
fn issue_10_a_seal_takes_its_time_from_the_repositorys_clock() {
    use chrono::TimeZone;
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = repo();
    let when = chrono::Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 9).unwrap();
    let clock = std::sync::Arc::new(tidemark_core::clock::ManualClock::new(when));
    repo.set_clock(clock.clone());
    rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        engine.write(batch(&repo, &[("a", b"1")])).await.unwrap();
        let first = engine.seal().await.unwrap().expect("a snapshot");
        clock.advance(std::time::Duration::from_secs(90));
        engine.write(batch(&repo, &[("b", b"2")])).await.unwrap();
        let second = engine.seal().await.unwrap().expect("a snapshot");
        let time = |id| {
            let s = repo.load_snapshot(id).unwrap();
            chrono::DateTime::parse_from_rfc3339(&s.time).unwrap()
        };
        assert_eq!(time(&first.id), when);
        assert_eq!(time(&second.id), when + chrono::Duration::seconds(90));
        engine.shutdown().await.unwrap();
    });
}
