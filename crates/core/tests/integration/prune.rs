//! `prune` as plan, then execute, on a repository whose packs are known byte for byte: what the
//! plan keeps, repacks, condemns and deletes, what executing it leaves in the store, and that a
//! dry run changes nothing.

use std::time::Duration;

use tidemark_core::id::{Kind, PackId};
use tidemark_core::lifecycle::{self, Session, SystemClock};
use tidemark_core::pack::BlobKind;
use tidemark_core::prune::{self, PlannedPack, PruneOptions, PrunePlan};
use tidemark_core::repo::Repository;
use tidemark_core::store::Store;

use super::common::{everything, ids, known, open, pack, snapshot, tree, Known, BLOB};

fn opts() -> PruneOptions {
    PruneOptions {
        keep_condemned: Duration::ZERO,
        hostname: "here".into(),
        ..PruneOptions::default()
    }
}

fn planned(pack: PackId, bytes: u64, used: u64) -> PlannedPack {
    PlannedPack { pack, bytes, used }
}

fn sorted(mut v: Vec<PlannedPack>) -> Vec<PlannedPack> {
    v.sort_by_key(|p| p.pack);
    v
}

/// Plans under a session of its own and executes the plan, as `prune` does.
fn plan_and_execute(repo: &mut Repository, opts: &PruneOptions) -> prune::PruneReport {
    repo.begin_session("prune", "here").unwrap();
    let plan = prune::plan(repo, opts, &SystemClock).unwrap();
    let report = prune::execute(repo, plan, &SystemClock).unwrap();
    repo.end_session().unwrap();
    report
}

/// The pack `execute` wrote: the one not among `old`.
fn new_pack(k: &Known, old: &[PackId]) -> PackId {
    let fresh: Vec<PackId> = ids(&*k.mem, Kind::Pack)
        .into_iter()
        .filter(|p| !old.contains(p))
        .collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    fresh[0]
}

#[test]
fn the_plan_of_a_known_repository() {
    let k = known();
    let before = everything(&*k.mem);
    let plan = prune::plan(&mut open(&k.mem), &opts(), &SystemClock).unwrap();
    let used_keep = BLOB + k.tree_len;
    assert_eq!(plan.keep, vec![planned(k.keep, used_keep, used_keep)]);
    assert_eq!(plan.repack, vec![planned(k.sparse, 2 * BLOB, BLOB)]);
    assert_eq!(plan.condemn, vec![planned(k.unused, BLOB, 0)]);
    assert!(
        plan.delete.is_empty() && plan.waiting.is_empty() && plan.resurrect.is_empty(),
        "{plan:?}"
    );
    let r = &plan.report;
    assert!(r.dry_run);
    assert_eq!(
        (r.snapshots, r.packs, r.bytes),
        (1, 3, 4 * BLOB + k.tree_len)
    );
    assert_eq!((r.blobs_used, r.blobs_unused), (3, 2));
    assert_eq!((r.packs_unused, r.packs_repacked), (1, 1));
    assert_eq!((r.bytes_repacked, r.bytes_condemned), (2 * BLOB, 3 * BLOB));
    assert_eq!(
        (r.bytes_unused_left, r.packs_deleted, r.bytes_deleted),
        (0, 0, 0)
    );
    assert_eq!(
        everything(&*k.mem),
        before,
        "planning without a session stores nothing"
    );
}

#[test]
fn a_dry_run_changes_nothing_and_its_plan_cannot_be_executed() {
    let k = known();
    let before = everything(&*k.mem);
    let dry = prune::prune(
        &mut open(&k.mem),
        &PruneOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.packs_unused, dry.packs_repacked), (1, 1), "{dry:?}");
    assert_eq!(dry.bytes_condemned, 3 * BLOB);
    assert_eq!(
        everything(&*k.mem),
        before,
        "a dry run stored or deleted something"
    );

    // A plan made without a session (a dry run's), or under another session, is refused: what it
    // decided about other writers was not decided under the session that would act on it.
    let mut repo = open(&k.mem);
    let plan = prune::plan(&mut repo, &opts(), &SystemClock).unwrap();
    repo.begin_session("prune", "here").unwrap();
    let e = prune::execute(&repo, plan, &SystemClock).unwrap_err();
    assert!(e.to_string().contains("not made under the session"), "{e}");
    let plan = prune::plan(&mut repo, &opts(), &SystemClock).unwrap();
    repo.end_session().unwrap();
    repo.begin_session("prune", "here").unwrap();
    let e = prune::execute(&repo, plan, &SystemClock).unwrap_err();
    assert!(e.to_string().contains("not made under the session"), "{e}");
    repo.end_session().unwrap();
    assert_eq!(ids(&*k.mem, Kind::Pack).len(), 3);
    assert_eq!(ids(&*k.mem, Kind::Index).len(), 3);
    assert!(ids(&*k.mem, Kind::Deletion).is_empty());
}

#[test]
fn execute_condemns_and_a_later_prune_deletes() {
    let k = known();
    let old = [k.keep, k.unused, k.sparse];
    let r = plan_and_execute(&mut open(&k.mem), &opts());
    assert!(!r.dry_run);
    assert_eq!(
        (r.packs_new, r.index_written, r.index_removed),
        (1, 1, 3),
        "{r:?}"
    );
    // The sparse pack's used blob, b, alone in a new pack; every old pack is still there.
    let new = new_pack(&k, &old);
    let len = k.mem.get(Kind::Pack, &new, None).unwrap().len() as u64;
    assert_eq!(r.bytes_written, len);
    let repo = open(&k.mem);
    let entries = repo.read_pack_header(&new, len).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, k.blobs["b"].0);
    assert_eq!(u64::from(entries[0].stored_len), BLOB);
    // One record condemns the unused and the repacked pack; one index file lists all four.
    let records = lifecycle::deletions(&*k.mem, repo.crypto()).unwrap();
    assert_eq!(records.len(), 1);
    let mut condemned = vec![k.unused, k.sparse];
    condemned.sort();
    assert_eq!(records[0].1.packs, condemned);
    assert_eq!(ids(&*k.mem, Kind::Index).len(), 1);
    assert!(
        ids(&*k.mem, Kind::Session).is_empty(),
        "its session is ended"
    );

    // The next prune deletes the condemned packs (every writer has seen the record: there is
    // none), and keeps the full pack and the new one.
    let mut repo = open(&k.mem);
    repo.begin_session("prune", "here").unwrap();
    let plan = prune::plan(&mut repo, &opts(), &SystemClock).unwrap();
    let used_keep = BLOB + k.tree_len;
    assert_eq!(
        plan.delete,
        sorted(vec![
            planned(k.unused, BLOB, 0),
            planned(k.sparse, 2 * BLOB, 0)
        ])
    );
    assert_eq!(
        plan.keep,
        sorted(vec![
            planned(k.keep, used_keep, used_keep),
            planned(new, BLOB, BLOB)
        ])
    );
    assert!(
        plan.repack.is_empty() && plan.condemn.is_empty(),
        "{plan:?}"
    );
    assert_eq!(plan.report.bytes_deleted, 3 * BLOB);
    let r = prune::execute(&repo, plan, &SystemClock).unwrap();
    repo.end_session().unwrap();
    assert_eq!((r.packs_deleted, r.packs_new, r.index_removed), (2, 0, 1));
    assert_eq!(ids(&*k.mem, Kind::Pack), sorted_ids(vec![k.keep, new]));
    assert!(
        ids(&*k.mem, Kind::Deletion).is_empty(),
        "the record is swept"
    );
    let repo = open(&k.mem);
    repo.load_index().unwrap();
    for name in ["a", "b"] {
        let (id, data) = &k.blobs[name];
        assert_eq!(&repo.read_blob(id).unwrap(), data, "blob {name}");
    }
}

fn sorted_ids(mut v: Vec<PackId>) -> Vec<PackId> {
    v.sort();
    v
}

/// Condemned packs wait while their record is younger than `keep_condemned` or a live writer
/// has not seen it; a condemned pack a new snapshot uses is resurrected, not deleted.
#[test]
fn condemned_packs_wait_or_are_resurrected() {
    let k = known();
    plan_and_execute(&mut open(&k.mem), &opts());
    let new = new_pack(&k, &[k.keep, k.unused, k.sparse]);
    let waiting = sorted(vec![
        planned(k.unused, BLOB, 0),
        planned(k.sparse, 2 * BLOB, 0),
    ]);

    let young = PruneOptions {
        keep_condemned: Duration::from_secs(3600),
        ..opts()
    };
    let plan = prune::plan(&mut open(&k.mem), &young, &SystemClock).unwrap();
    assert_eq!(plan.waiting, waiting);
    assert!(
        plan.delete.is_empty() && plan.report.waiting_for.is_empty(),
        "{plan:?}"
    );

    // A writer that started before the packs were condemned, and has not seen the record.
    let crypto = open(&k.mem).crypto().clone();
    let writer = Session::start(k.mem.clone(), &crypto, "backup", "other").unwrap();
    let plan = prune::plan(&mut open(&k.mem), &opts(), &SystemClock).unwrap();
    assert_eq!(plan.waiting, waiting);
    assert!(plan.delete.is_empty(), "{plan:?}");
    assert!(
        plan.report.waiting_for[0].contains("backup on other"),
        "{plan:?}"
    );
    writer.end().unwrap();

    // A snapshot stored since uses x, which only the condemned `unused` pack holds.
    let repo = open(&k.mem);
    let (root, tree_bytes) = tree(&repo, &[&[k.blobs["x"].0]]);
    let tree_pack = pack(&repo, &[(BlobKind::Tree, &tree_bytes)]);
    snapshot(&repo, root);
    let plan: PrunePlan = prune::plan(&mut open(&k.mem), &opts(), &SystemClock).unwrap();
    assert_eq!(plan.resurrect, vec![planned(k.unused, BLOB, BLOB)]);
    assert_eq!(plan.delete, vec![planned(k.sparse, 2 * BLOB, 0)]);
    let used_keep = BLOB + k.tree_len;
    let tree_len = tree_bytes.len() as u64;
    assert_eq!(
        plan.keep,
        sorted(vec![
            planned(k.keep, used_keep, used_keep),
            planned(k.unused, BLOB, BLOB),
            planned(new, BLOB, BLOB),
            // Small, but alone: not worth merging.
            planned(tree_pack, tree_len, tree_len),
        ])
    );
    assert!(
        plan.repack.is_empty() && plan.condemn.is_empty(),
        "{plan:?}"
    );
    assert_eq!(plan.report.packs_resurrected, 1);
}
