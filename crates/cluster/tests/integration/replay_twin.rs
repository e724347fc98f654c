//! Issue 10: seals are log entries, so an engine fed another engine's log seals the same
//! snapshots. Engine A runs a realistic mix of batches and seals (creates, overwrites, deletes,
//! moves, and a seal that fails on a full repository and is stored later by the catch-up); then
//! its whole log is handed, as a leader's AppendEntries would, to engine B, which has its own
//! repository (same master key, so the same blob ids; its own key file, id and nonces), its own
//! catalog, and different local options (host, watched path, ancestors). Every seal must have the
//! same revision, root tree, time, host and path in both repositories.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::EntryPayload;
use redb::backends::InMemoryBackend;
use tidemark_cluster::{Catalog, Engine, EngineParts, NoPeers, Request, SmOptions, Vote};
use tidemark_core::batch::{Batch, Edit};
use tidemark_core::crypto::KdfParams;
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::snapshot::Node;
use tidemark_testkit::{seeded_bytes, FlakyStore, MemLogDir, MemStore};

use super::common::{assert_complete, dir, init_repo, options, put_files, rt};

/// What must be equal for a seal in every replica: revision → (root tree, time, host, paths).
type Seals = BTreeMap<u64, (String, String, String, Vec<String>)>;

fn seals(repo: &Repository) -> Seals {
    repo.snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| {
            let revision = s.revision.expect("a sealed snapshot has a revision");
            (revision, (s.tree.to_hex(), s.time, s.hostname, s.paths))
        })
        .collect()
}

/// An ancestor with metadata a default directory does not have, so that a replica wrapping the
/// root in its own ancestors gets another root tree.
fn ancestor(name: &str, mode: u32) -> Node {
    let mut n = dir();
    n.mode = mode;
    n.mtime_ns = 1_600_000_000_000_000_000;
    n.set_name(std::ffi::OsStr::new(name));
    n
}

#[test]
fn issue_10_replay_twin_seals_the_same_roots() {
    let tmp = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // Engine A: standalone, on a store that can fail, keeping its whole log to hand it on.
        let store_a = Arc::new(FlakyStore::new(MemStore::new(), usize::MAX));
        let repo_a = init_repo(store_a.clone(), 64 * 1024);
        let mut opts = options();
        opts.sm.ancestors = vec![ancestor("srv", 0o711)];
        opts.log_tail = 1 << 20;
        let parts = EngineParts::standalone(tmp.path()).unwrap();
        let (a, _) = Engine::open(parts, repo_a.clone(), opts).await.unwrap();
        a.initialize(Engine::standalone_members()).await.unwrap();
        a.ready(Duration::from_secs(30)).await.unwrap();

        let mut want = BTreeMap::new();
        let files = |spec: &[(&str, Vec<u8>)]| -> Batch {
            let refs: Vec<(&str, &[u8])> = spec.iter().map(|(p, d)| (*p, d.as_slice())).collect();
            put_files(&repo_a, &refs)
        };
        let put = |spec: Vec<(&str, Vec<u8>)>, want: &mut BTreeMap<String, Vec<u8>>| {
            let b = files(&spec);
            for (p, d) in spec {
                want.insert(p.to_string(), d);
            }
            b
        };
        // Creates, in a new directory too.
        let mut mkdir = Batch::default();
        mkdir.edits.push(Edit::Put {
            path: b"d".to_vec(),
            node: dir(),
        });
        a.write(mkdir).await.unwrap();
        let b1 = put(
            vec![
                ("a", seeded_bytes(30_000, 1)),
                ("b", seeded_bytes(40_000, 2)),
                ("d/e", seeded_bytes(25_000, 3)),
            ],
            &mut want,
        );
        a.write(b1).await.unwrap();
        a.seal().await.unwrap().expect("first seal");
        // An overwrite, a new file, and a copy of another's content (deduplicated).
        let b2 = put(
            vec![
                ("a", seeded_bytes(33_000, 5)),
                ("f", seeded_bytes(50_000, 4)),
                ("b2", seeded_bytes(40_000, 2)),
            ],
            &mut want,
        );
        a.write(b2).await.unwrap();
        a.seal().await.unwrap().expect("second seal");
        // A move and a delete.
        let mut edits = Batch::default();
        edits.edits.push(Edit::Move {
            from: b"d".to_vec(),
            to: b"g".to_vec(),
        });
        edits.edits.push(Edit::Delete {
            path: b"b".to_vec(),
        });
        a.write(edits).await.unwrap();
        let e = want.remove("d/e").unwrap();
        want.insert("g/e".into(), e);
        want.remove("b");
        a.seal().await.unwrap().expect("third seal");

        // The repository fills up while the seal entry is applied (the data pack stored before
        // it was proposed is the last write that fits): the seal fails, capture goes on.
        let b3 = put(vec![("h", seeded_bytes(20_000, 6))], &mut want);
        a.write(b3).await.unwrap();
        store_a.fail_after(1);
        let failed = a.seal().await;
        assert!(
            matches!(failed, Err(tidemark_cluster::Error::Store(_))),
            "a seal on a full repository fails with a store error: {failed:?}"
        );
        let failed_at = a.log().wal().last_index().unwrap().expect("the seal entry");
        let entry = a.log().read_entries(failed_at, failed_at + 1).unwrap();
        assert!(
            matches!(&entry[0].payload, EntryPayload::Normal(Request::Seal(_))),
            "the failed seal is an entry: {entry:?}"
        );
        let mut more = put(vec![("i", seeded_bytes(10_000, 7))], &mut want);
        more.edits.push(Edit::Delete {
            path: b"f".to_vec(),
        });
        want.remove("f");
        a.write(more).await.unwrap();
        // Space again: the next seal first stores the failed one, with its own stamp.
        store_a.heal();
        let last_a = a.seal().await.unwrap().expect("a seal after the recovery");
        assert_complete(&repo_a, &last_a.id, &want, "engine A");
        let a_seals = seals(&repo_a);
        assert!(
            a_seals.contains_key(&failed_at),
            "the failed seal at {failed_at} was stored by the catch-up: {:?}",
            a_seals.keys()
        );
        assert!(a_seals.len() >= 5, "every seal is a snapshot: {a_seals:?}");

        // A's whole log.
        let (first, last) = a.log().wal().bounds().unwrap().expect("a log");
        let entries = a.log().read_entries(first, last + 1).unwrap();
        assert_eq!(entries.first().map(|e| e.log_id.index), Some(0));
        assert_eq!(entries.len() as u64, last + 1, "nothing was purged");
        let leader = entries.last().expect("entries").log_id;
        a.stop_without_seal().await.unwrap();

        // Engine B: same master key, its own repository, catalog, log and local options.
        let password = b"twin".to_vec();
        let master = Repository::master_key(store_a.inner(), b"pw").unwrap();
        let repo_b = Repository::init(
            Arc::new(MemStore::new()),
            &InitOptions {
                password: Some(password.into()),
                kdf: KdfParams {
                    m_cost_kib: 64,
                    t_cost: 1,
                    p_cost: 1,
                },
                pack_size: 256 * 1024,
                master: Some(master),
                ..InitOptions::default()
            },
        )
        .unwrap();
        repo_b.load_index().unwrap();
        assert_ne!(
            repo_b.config().id,
            repo_a.config().id,
            "B has its own repository"
        );
        let mut opts_b = options();
        opts_b.sm = SmOptions {
            watched: "/mnt/copy/share".into(),
            ancestors: vec![ancestor("mnt", 0o700), ancestor("copy", 0o750)],
            hostname: "twin".into(),
            ..SmOptions::default()
        };
        let parts_b = EngineParts {
            node: 2,
            network: NoPeers,
            log_dir: Arc::new(MemLogDir::new()),
            catalog: Catalog::open_backend(InMemoryBackend::new(), "twin catalog").unwrap(),
        };
        let (b, _) = Engine::open(parts_b, repo_b.clone(), opts_b).await.unwrap();
        assert!(!b.is_initialized().await.unwrap());
        // A's log as its leader would send it: in a few requests, everything committed.
        let vote = Vote::new_committed(leader.leader_id.term, leader.leader_id.node_id);
        let mut prev = None;
        for chunk in entries.chunks(7) {
            let resp = b
                .append_entries(AppendEntriesRequest {
                    vote,
                    prev_log_id: prev,
                    entries: chunk.to_vec(),
                    leader_commit: Some(leader),
                })
                .await
                .unwrap();
            assert!(resp.is_success(), "B takes A's entries: {resp:?}");
            prev = chunk.last().map(|e| e.log_id);
        }
        let sm = b.state_machine().clone();
        for _ in 0..600 {
            if sm.stats().applied == Some(last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sm.stats().applied, Some(last), "B applied A's whole log");
        assert_eq!(sm.stats().store_error, None);

        let b_seals = seals(&repo_b);
        assert_eq!(b_seals, a_seals, "every seal is the same in both replicas");
        let last_b = sm.seal_snapshot_id().expect("B sealed");
        assert_complete(&repo_b, &last_b, &want, "engine B");
        b.stop_without_seal().await.unwrap();
    });
}
