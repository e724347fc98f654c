//! Issue 9: a store that fails (a full repository disk) at any write of apply or seal loses
//! nothing. The engine keeps taking entries into the log while the store fails, names the cause,
//! and catches up once the store works again, in the same process or after a restart; the
//! repository then passes `check --read-data` and the last snapshot holds every acknowledged file.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tidemark_cluster::Engine;
use tidemark_core::batch::{Batch, Edit};
use tidemark_core::repo::Repository;
use tidemark_testkit::{seeded_bytes, FlakyStore, MemStore};

use super::common::{assert_complete, init_repo, open_engine, put_files, rt};

/// A repository with small packs, so that applies flush packs too, over a store that fails after
/// `budget` writes.
fn flaky_repo(budget: usize) -> (Arc<FlakyStore<MemStore>>, Repository) {
    let store = Arc::new(FlakyStore::new(MemStore::new(), usize::MAX));
    let r = init_repo(store.clone(), 64 * 1024);
    // The budget counts from here: init's own writes always go through.
    store.fail_after(budget);
    (store, r)
}

/// Files as `path → content` after each step of the scenario, and the batches that make them.
struct Scenario {
    want: BTreeMap<String, Vec<u8>>,
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    seeded_bytes(len, seed)
}

/// Runs the scenario's writes and seals on `engine`. Every write must be acknowledged whatever the
/// store does; seals may fail with a store error.
async fn run_scenario(engine: &Engine, repo: &Repository) -> Scenario {
    let mut want = BTreeMap::new();
    let files = |spec: &[(&str, Vec<u8>)]| -> Batch {
        let refs: Vec<(&str, &[u8])> = spec.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        put_files(repo, &refs)
    };
    let step1 = vec![
        ("a", data(30_000, 1)),
        ("b", data(40_000, 2)),
        ("d/e", data(25_000, 3)),
    ];
    let mut mkdir = Batch::default();
    mkdir.edits.push(Edit::Put {
        path: b"d".to_vec(),
        node: super::common::dir(),
    });
    engine.write(mkdir).await.expect("acknowledged");
    engine.write(files(&step1)).await.expect("acknowledged");
    for (p, d) in step1 {
        want.insert(p.to_string(), d);
    }
    let _ = engine.seal().await;
    // `b2` has `b`'s content: its blob must not be deduplicated against a pack that was lost.
    let step2 = vec![
        ("f", data(50_000, 4)),
        ("a", data(33_000, 5)),
        ("b2", data(40_000, 2)),
    ];
    engine.write(files(&step2)).await.expect("acknowledged");
    for (p, d) in step2 {
        want.insert(p.to_string(), d);
    }
    let _ = engine.seal().await;
    let mut edits = Batch::default();
    edits.edits.push(Edit::Move {
        from: b"d".to_vec(),
        to: b"g".to_vec(),
    });
    edits.edits.push(Edit::Delete {
        path: b"b".to_vec(),
    });
    engine.write(edits).await.expect("acknowledged");
    let e = want.remove("d/e").unwrap();
    want.insert("g/e".into(), e);
    want.remove("b");
    let step3 = vec![("h", data(70_000, 6)), ("g/i", data(1_000, 7))];
    engine.write(files(&step3)).await.expect("acknowledged");
    for (p, d) in step3 {
        want.insert(p.to_string(), d);
    }
    let _ = engine.seal().await;
    Scenario { want }
}

/// How many store writes the scenario makes when nothing fails.
fn writes_of_a_clean_run() -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let (store, repo) = flaky_repo(usize::MAX);
    let before = store.writes.load(Ordering::SeqCst);
    rt().block_on(async {
        let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
        let s = run_scenario(&engine, &repo).await;
        let sealed = engine.shutdown().await.unwrap().unwrap();
        assert_complete(&repo, &sealed.id, &s.want, "clean run");
    });
    store.writes.load(Ordering::SeqCst) - before
}

/// A store failure at each write of the scenario, healed in the same process: every write is
/// still acknowledged, the failure is named, and the next seal catches up.
#[test]
fn issue_9_store_failure_at_every_write_then_the_store_recovers() {
    let total = writes_of_a_clean_run();
    assert!(
        total >= 8,
        "the scenario writes packs, indexes and snapshots ({total})"
    );
    for k in 0..total {
        let tmp = tempfile::tempdir().unwrap();
        let (store, repo) = flaky_repo(k);
        rt().block_on(async {
            let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
            let s = run_scenario(&engine, &repo).await;
            assert!(
                store.refused.load(Ordering::SeqCst) > 0,
                "write {k} of {total} failed"
            );
            {
                let why = engine
                    .state_machine()
                    .store_error()
                    .expect("the failure is named");
                assert!(why.starts_with("repository full: "), "{why}");
                assert!(why.contains("No space left on device"), "{why}");
                let status = engine.status().unwrap();
                assert_eq!(
                    status.state_machine.store_error.as_deref(),
                    Some(why.as_str())
                );
            }
            store.heal();
            let sealed = engine.seal().await.expect("the seal catches up").unwrap();
            assert_eq!(engine.state_machine().store_error(), None);
            assert_complete(
                &repo,
                &sealed.id,
                &s.want,
                &format!("failure after {k} writes"),
            );
            engine.shutdown().await.unwrap();
        });
    }
}

/// A store failure at each write, then the process stops without a seal (an error exit, a
/// signal): the catalog holds only the last seal, and the next start replays the log into the
/// repository. On the code before issue 9, dropping the catalog made the applies durable and the
/// restart sealed snapshots naming blobs that were never stored.
#[test]
fn issue_9_store_failure_at_every_write_then_a_restart() {
    let total = writes_of_a_clean_run();
    for k in 0..total {
        let tmp = tempfile::tempdir().unwrap();
        let (store, repo) = flaky_repo(k);
        let s = rt().block_on(async {
            let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
            let s = run_scenario(&engine, &repo).await;
            engine.stop_without_seal().await.unwrap();
            s
        });
        store.heal();
        // A new process: the repository is opened again from the store.
        let fresh = Repository::open(store.clone(), &mut || Ok(b"pw".to_vec())).unwrap();
        fresh.load_index().unwrap();
        let repo = fresh;
        rt().block_on(async {
            let (engine, _) = open_engine(repo.clone(), tmp.path()).await;
            let sealed = engine.shutdown().await.unwrap().unwrap();
            assert_complete(
                &repo,
                &sealed.id,
                &s.want,
                &format!("restart after failing at write {k}"),
            );
        });
    }
}
