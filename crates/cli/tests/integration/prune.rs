//! `prune`: it frees what no snapshot uses, a crash at any of its writes or deletes leaves a
//! repository that passes `check` with every kept snapshot intact, and it waits for writers that
//! have not seen its deletion records.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::lifecycle::{self, Lease, LeaseClock, ManualClock, Session};
use tidemark_core::prune::{prune, prune_with_clock, PruneOptions};
use tidemark_core::repair::repair_index;
use tidemark_core::repo::Repository;
use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
use tidemark_core::store::Store;
use tidemark_core::{Error, Result};
use tidemark_testkit::MemStore;

use super::common::{assert_same_tree, restored, tree_difference_except_atime, Repo};
use super::crash::{check_all, open, run_backup, small_repo_options};
use super::watch::Daemon;

/// After `budget` mutations (puts and deletes) every mutation fails, as if the process died.
pub struct DyingStore {
    pub inner: Arc<MemStore>,
    pub budget: AtomicUsize,
}

impl DyingStore {
    fn spend(&self, what: &'static str) -> Result<()> {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .map(|_| ())
            .map_err(|_| Error::io(what, "store", std::io::Error::other("simulated crash")))
    }
}

impl Store for DyingStore {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        self.spend("writing")?;
        self.inner.put(kind, id, bytes)
    }
    fn get(
        &self,
        kind: Kind,
        id: &ObjectId,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Vec<u8>> {
        self.inner.get(kind, id, range)
    }
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        self.spend("deleting")?;
        self.inner.delete(kind, id)
    }
    fn location(&self) -> String {
        "dying".into()
    }
}

fn write_version(src: &Path, v: u64) {
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..6u64 {
        // Half the files change between versions.
        let seed = if i % 2 == 0 { i } else { i + 100 * v };
        std::fs::write(
            src.join(format!("d/f{i}")),
            tidemark_testkit::seeded_bytes(200_000, seed),
        )
        .unwrap();
    }
}

fn pack_bytes(mem: &MemStore) -> u64 {
    mem.list(Kind::Pack).unwrap().iter().map(|(_, l)| l).sum()
}

fn now_opts() -> PruneOptions {
    PruneOptions {
        keep_condemned: Duration::ZERO,
        ..PruneOptions::default()
    }
}

/// Two snapshots, the first forgotten: returns the store and the kept snapshot's tree.
pub fn repository_with_garbage(src: &Path) -> Arc<MemStore> {
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    write_version(src, 1);
    let mut repo = open(mem.clone());
    let first = run_backup(&mut repo, src).unwrap();
    write_version(src, 2);
    run_backup(&mut repo, src).unwrap();
    let first_id = mem
        .list(Kind::Snapshot)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| repo.load_snapshot(id).unwrap().tree == first.snapshot.tree)
        .unwrap();
    mem.delete(Kind::Snapshot, &first_id).unwrap();
    mem
}

pub fn assert_intact(mem: &Arc<MemStore>, src: &Path, target: &Path, what: &str) {
    let repo = open(mem.clone());
    let report = check_all(&repo);
    assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1, "{what}");
    let _ = std::fs::remove_dir_all(target);
    restore(
        &repo,
        &snaps[0].1.tree,
        &RestoreOptions {
            target: target.to_path_buf(),
            ..RestoreOptions::default()
        },
        &RestoreProgress::default(),
    )
    .unwrap();
    // The test itself reads the source, so atimes move; everything else must be equal.
    if let Some(d) = tree_difference_except_atime(src, &restored(target, src)) {
        panic!("{what}: the kept snapshot does not restore the source: {d}");
    }
}

#[test]
fn prune_frees_unused_data_in_two_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mem = repository_with_garbage(&src);
    let before = pack_bytes(&mem);
    let mut repo = open(mem.clone());
    let r = prune(&mut repo, &now_opts()).unwrap();
    assert!(r.blobs_unused > 0 && r.packs_deleted == 0, "{r:?}");
    assert!(r.bytes_condemned > 0, "{r:?}");
    assert_intact(&mem, &src, &tmp.path().join("t1"), "after condemning");
    let mut repo = open(mem.clone());
    let r = prune(&mut repo, &now_opts()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    assert_intact(&mem, &src, &tmp.path().join("t2"), "after deleting");
    // What the second run repacked (small packs merged) is deleted by a third.
    let mut repo = open(mem.clone());
    let r = prune(&mut repo, &now_opts()).unwrap();
    let after = pack_bytes(&mem);
    // Three of six files changed: a third of the data was the forgotten snapshot's alone (the
    // ideal is 2/3 left; allow for packs below the repack threshold).
    eprintln!("{before} → {after} bytes of packs; {r:?}");
    assert!(after * 4 < before * 3, "{before} → {after} bytes of packs");
    assert!(
        mem.list(Kind::Session).unwrap().is_empty(),
        "sessions are ended"
    );
}

#[test]
fn prune_waits_for_a_writer_that_has_not_seen_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mem = repository_with_garbage(&src);
    let repo = open(mem.clone());
    // A writer that started before the packs were condemned.
    let writer = Session::start(mem.clone(), repo.crypto(), "backup", "other").unwrap();
    let mut repo = open(mem.clone());
    prune(&mut repo, &now_opts()).unwrap();
    let mut repo = open(mem.clone());
    let r = prune(&mut repo, &now_opts()).unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert!(
        r.packs_waiting > 0 && r.waiting_for[0].contains("backup on other"),
        "{r:?}"
    );
    writer.end().unwrap();
    let mut repo = open(mem.clone());
    let r = prune(&mut repo, &now_opts()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    // A second prune at the same time is refused, not raced.
    let repo = open(mem.clone());
    let other = Session::start(mem.clone(), repo.crypto(), "prune", "other").unwrap();
    let mut repo = open(mem.clone());
    let e = prune(&mut repo, &now_opts()).unwrap_err();
    assert!(e.to_string().contains("another prune is running"), "{e}");
    other.end().unwrap();
}

/// A writer whose wall clock is an hour ahead of, or behind, prune's: while it runs and has not
/// seen the deletion record, nothing is deleted (an hour ahead, its `view` is later than the
/// record; an hour behind, its `refreshed` looks an hour old: both fooled the old time rules).
/// Once it declares the record seen, the packs go; once it stops renewing, prune finds it dead
/// by its own clock, and the writer, waking, refuses to go on.
#[test]
fn prune_with_writers_skewed_an_hour_either_way() {
    let tmp = tempfile::tempdir().unwrap();
    for skew in [-3600i64, 3600] {
        let src = tmp.path().join(format!("src{skew}"));
        let mem = repository_with_garbage(&src);
        let crypto = open(mem.clone()).crypto().clone();
        let prune_clock = ManualClock::new(chrono::Utc::now());
        let writer_clock = Arc::new(ManualClock::new(
            chrono::Utc::now() + chrono::Duration::seconds(skew),
        ));
        // Started (and read the deletion records: none) before the packs were condemned; it
        // renews by hand here.
        let writer = Session::start_with(
            mem.clone(),
            &crypto,
            "backup",
            "skewed",
            Lease::DEFAULT,
            Duration::from_secs(24 * 3600),
            writer_clock.clone(),
        )
        .unwrap();
        writer.set_seen(&[], writer_clock.wall()).unwrap();
        let prune_at = |clock: &ManualClock| {
            let mut repo = open(mem.clone());
            prune_with_clock(&mut repo, &now_opts(), clock).unwrap()
        };
        let r = prune_at(&prune_clock);
        assert!(r.bytes_condemned > 0, "{r:?}");
        // Two hours of prunes every four minutes while the writer runs.
        for step in 0..30 {
            prune_clock.advance(Duration::from_secs(240));
            writer_clock.advance(Duration::from_secs(240));
            writer.renew().unwrap();
            let r = prune_at(&prune_clock);
            assert_eq!(
                r.packs_deleted, 0,
                "skew {skew}s, step {step}: deleted packs a running writer has not seen condemned"
            );
            assert!(r.packs_waiting > 0, "{r:?}");
        }
        assert_intact(&mem, &src, &tmp.path().join(format!("t{skew}")), "skewed");
        if skew > 0 {
            // It takes the record in: now the packs can go.
            let records: Vec<ObjectId> = lifecycle::deletions(&*mem, &crypto)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            writer.set_seen(&records, writer_clock.wall()).unwrap();
            let r = prune_at(&prune_clock);
            assert!(r.packs_deleted > 0, "skew {skew}s: {r:?}");
            writer.end().unwrap();
            continue;
        }
        // It stops (a laptop lid closed): prune, by its own clock, finds it dead after
        // `dead_after` and deletes what the record condemned.
        let mut deleted = Vec::new();
        for _ in 0..12 {
            prune_clock.advance(Duration::from_secs(240));
            deleted.push(prune_at(&prune_clock).packs_deleted);
        }
        let first = deleted.iter().position(|d| *d > 0);
        assert!(
            first.is_some_and(|k| (k as u64 + 1) * 240 > lifecycle::DEAD_AFTER.as_secs()),
            "skew {skew}s: packs deleted at these steps after the writer stopped: {deleted:?}"
        );
        assert!(
            mem.list(Kind::Session).unwrap().is_empty(),
            "the dead session was deleted"
        );
        writer_clock.advance(Duration::from_secs(12 * 240));
        let e = writer.check().unwrap_err().to_string();
        assert!(e.contains("paused too long"), "{e}");
        assert!(writer.renew().is_err());
        drop(writer);
        assert_intact(&mem, &src, &tmp.path().join(format!("u{skew}")), "after");
    }
}

/// A long-running writer (watch) that took in a record's packs as condemned but failed before
/// what it needs from them was copied, stored and indexed has not revalidated the record: it
/// keeps being offered, the session does not list it, and prune keeps the packs.
#[test]
fn a_record_counts_as_seen_only_once_revalidated() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mem = repository_with_garbage(&src);
    let mut writer = open(mem.clone());
    writer.begin_session("watch", "here").unwrap();
    writer.load_index().unwrap();
    prune(&mut open(mem.clone()), &now_opts()).unwrap();
    let pending = writer.unrevalidated().unwrap();
    assert!(!pending.records.is_empty(), "{pending:?}");
    assert!(!pending.packs.is_empty());
    // Condemned in memory, then the copy failed.
    writer.condemn_packs(&pending.packs);
    let again = writer.unrevalidated().unwrap();
    assert_eq!(
        again.records, pending.records,
        "condemned is not revalidated"
    );
    let r = prune(&mut open(mem.clone()), &now_opts()).unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert!(r.waiting_for[0].contains("watch on here"), "{r:?}");
    // Copied, stored and indexed: now it is declared, and prune deletes.
    writer.mark_revalidated(&again).unwrap();
    assert!(writer.unrevalidated().unwrap().records.is_empty());
    assert!(!writer.session().unwrap().info().seen.is_empty());
    let r = prune(&mut open(mem.clone()), &now_opts()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    writer.end_session().unwrap();
    assert_intact(&mem, &src, &tmp.path().join("t"), "after");
}

/// `repair index` re-lists every pack it reads a header of; a prune deleting one of them meanwhile
/// would leave an index naming a deleted pack. So whichever of the two lists sessions second
/// refuses to run.
#[test]
fn repair_index_and_prune_refuse_to_run_together() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mem = repository_with_garbage(&src);
    let crypto = open(mem.clone()).crypto().clone();
    prune(&mut open(mem.clone()), &now_opts()).unwrap();

    let running = Session::start(mem.clone(), &crypto, "prune", "other").unwrap();
    let e = repair_index(&mut open(mem.clone()), "here", false).unwrap_err();
    assert!(e.to_string().contains("a prune is running"), "{e}");
    running.end().unwrap();

    let running = Session::start(mem.clone(), &crypto, "repair-index", "other").unwrap();
    let e = prune(&mut open(mem.clone()), &now_opts()).unwrap_err();
    assert!(e.to_string().contains("repair index is running"), "{e}");
    running.end().unwrap();

    // A refusal leaves no session behind: both run now.
    let r = prune(&mut open(mem.clone()), &now_opts()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    repair_index(&mut open(mem.clone()), "here", false).unwrap();
    assert!(mem.list(Kind::Session).unwrap().is_empty());
    assert_intact(&mem, &src, &tmp.path().join("t"), "after repair");
}

#[test]
fn a_crash_at_every_write_or_delete_of_prune_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Count the mutations of two complete prunes (condemn, then delete).
    let mem = repository_with_garbage(&src);
    let dying = Arc::new(DyingStore {
        inner: mem.clone(),
        budget: AtomicUsize::new(usize::MAX),
    });
    for _ in 0..2 {
        let mut repo = open(dying.clone());
        prune(&mut repo, &now_opts()).unwrap();
    }
    let total = usize::MAX - dying.budget.load(Ordering::SeqCst);
    assert!(total > 6, "only {total} mutations");
    eprintln!("crashing prune at each of {total} writes and deletes");

    // Packs group blobs at random, so the number of mutations varies a little between runs: go
    // on until a budget is large enough for both prunes.
    let mut crashes = 0;
    for budget in 0.. {
        let mem = repository_with_garbage(&src);
        let dying = Arc::new(DyingStore {
            inner: mem.clone(),
            budget: AtomicUsize::new(budget),
        });
        let mut crashed = false;
        for _ in 0..2 {
            let mut repo = open(dying.clone());
            if prune(&mut repo, &now_opts()).is_err() {
                crashed = true;
                break;
            }
        }
        if !crashed {
            assert!(
                budget + 6 >= total,
                "budget {budget}: finished with far fewer than {total}"
            );
            break;
        }
        crashes += 1;
        let target = tmp.path().join(format!("t{budget}"));
        assert_intact(
            &mem,
            &src,
            &target,
            &format!("crash after {budget} mutations"),
        );
        // The crashed prune's session would expire after 30 minutes; here it is cleared.
        for (id, _) in mem.list(Kind::Session).unwrap() {
            mem.delete(Kind::Session, &id).unwrap();
        }
        // Later prunes finish the job.
        for _ in 0..2 {
            let mut repo = open(mem.clone());
            prune(&mut repo, &now_opts()).unwrap();
        }
        assert_intact(
            &mem,
            &src,
            &target,
            &format!("after recovering from {budget}"),
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    assert!(
        crashes + 6 >= total,
        "only {crashes} of ~{total} points were crashed"
    );
}

#[test]
fn forget_prune_and_check_from_the_command_line() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    write_version(&src, 1);
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    write_version(&src, 2);
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    let dry: serde_json::Value =
        serde_json::from_str(&repo.ok(&["--json", "prune", "--dry-run"])).unwrap();
    assert_eq!(dry["blobs_unused"], 0, "{dry}");
    repo.ok(&["forget", "--keep-last", "1"]);
    // A dry run prints the plan, pack by pack (which packs end up unused or sparse depends on
    // how blobs were grouped), and changes nothing.
    let dry: serde_json::Value =
        serde_json::from_str(&repo.ok(&["--json", "prune", "--dry-run"])).unwrap();
    let planned = |what: &str| dry["plan"][what].as_array().unwrap().len();
    assert!(planned("condemn") + planned("repack") > 0, "{dry}");
    let out = repo.ok(&["prune", "--dry-run"]);
    let lines = |verb: &str| out.matches(&format!("would {verb} pack")).count();
    assert_eq!(lines("condemn"), planned("condemn"), "{out}");
    assert_eq!(lines("repack"), planned("repack"), "{out}");
    let out = repo.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert!(out.contains("condemned"), "{out}");
    let out: serde_json::Value =
        serde_json::from_str(&repo.ok(&["--json", "prune", "--keep-condemned", "0s"])).unwrap();
    assert!(out["packs_deleted"].as_u64().unwrap() > 0, "{out}");
    assert!(out["peak_rss_bytes"].as_u64().unwrap() > 0, "{out}");
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
    let bad = repo.run(&["prune", "--max-unused", "150%"]);
    assert!(!bad.status.success());
}

/// Rounds of forget + prune (every third one killed) while `watch` seals every 100 ms (killed
/// every fourth round). `TIDEMARK_STRESS_ROUNDS` raises it: scripts/test.sh runs 200 rounds,
/// well over a thousand seals.
#[test]
fn prune_runs_while_watch_writes_and_both_are_killed() {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::AtomicBool;
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let state = repo.dir.path().join("state");
    // The daemon takes in deletion records every 200 ms instead of every 5 minutes.
    let mut daemon = Daemon::start_with(&repo, &src, &state, None, &["--view-every", "200ms"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = src.join(format!("f{}", i % 30));
                if i.is_multiple_of(11) {
                    let _ = std::fs::remove_file(&name);
                } else {
                    let tmp = src.join(format!(".f{}.tmp", i % 30));
                    std::fs::write(
                        &tmp,
                        tidemark_testkit::seeded_bytes(40_000 + (i % 7) as usize * 3000, i),
                    )
                    .unwrap();
                    std::fs::rename(&tmp, &name).unwrap();
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut deleted = 0;
    let mut prunes = 0;
    let mut seals = 0;
    let rounds: usize = std::env::var("TIDEMARK_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..900)));
        repo.ok(&["forget", "--quiet", "--keep-last", "3"]);
        let mut p = repo
            .cmd()
            .args(["--json", "prune", "--keep-condemned", "0s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if round % 3 == 1 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
            let _ = p.kill();
        }
        let out = p.wait_with_output().unwrap();
        if out.status.success() {
            prunes += 1;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            deleted += v["packs_deleted"].as_u64().unwrap();
        } else if round % 3 != 1 {
            panic!("prune failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if round % 4 == 3 {
            seals += daemon.seals();
            daemon.kill9();
            daemon = Daemon::start_with(&repo, &src, &state, None, &["--view-every", "200ms"]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    seals += daemon.seals();
    daemon.stop();
    eprintln!("{rounds} rounds: {prunes} prunes finished, {deleted} packs deleted, {seals} seals");
    assert!(seals >= rounds * 2, "only {seals} seals in {rounds} rounds");
    assert!(prunes >= rounds * 2 / 3, "{prunes} prunes finished");
    assert!(deleted > 0, "prune deleted nothing while watch ran");
    repo.ok(&["prune", "--keep-condemned", "0s"]);
    repo.ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert!(snaps.len() >= 3);
    for (k, s) in snaps.iter().enumerate() {
        let target = repo.dir.path().join(format!("r{k}"));
        repo.ok(&[
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ]);
        if k + 1 == snaps.len() {
            if let Some(d) = tree_difference_except_atime(&src, &restored(&target, &src)) {
                panic!("the latest snapshot differs from the tree: {d}");
            }
        }
    }
}
