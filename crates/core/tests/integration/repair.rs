//! `repair index` as plan, then execute: the rebuilt index of a repository with a damaged index
//! file, what executing it leaves in the store, and that a dry run changes nothing.

use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::repair::{self, RepairIndexPlan};
use tidemark_core::repo::index;
use tidemark_core::store::Store;

use super::common::{everything, ids, known, open};

/// The index file that lists `pack`.
fn index_file_of(k: &super::common::Known, pack: ObjectId) -> ObjectId {
    let repo = open(&k.mem);
    ids(&*k.mem, Kind::Index)
        .into_iter()
        .find(|f| {
            let bytes = k.mem.get(Kind::Index, f, None).unwrap();
            index::open(repo.crypto(), f, &bytes)
                .unwrap()
                .iter()
                .any(|(p, _)| *p == pack)
        })
        .unwrap()
}

#[test]
fn the_plan_rebuilds_from_headers_and_a_dry_run_changes_nothing() {
    let k = known();
    let damaged = index_file_of(&k, k.sparse);
    k.mem.corrupt(Kind::Index, &damaged, 3);
    let before = everything(&*k.mem);

    let plan: RepairIndexPlan = repair::plan(&open(&k.mem)).unwrap();
    let r = &plan.report;
    assert!(r.dry_run);
    assert_eq!(
        (r.index_files_before, r.index_files_damaged.len()),
        (3, 1),
        "{r:?}"
    );
    assert_eq!(
        (r.packs, r.packs_indexed, r.packs_added),
        (3, 3, 1),
        "{r:?}"
    );
    assert_eq!((r.packs_missing, r.blobs), (0, 5), "{r:?}");
    assert_eq!((r.index_files_written, r.index_files_deleted), (0, 0));
    let mut packs = vec![k.keep, k.unused, k.sparse];
    packs.sort();
    let planned: Vec<ObjectId> = plan.packs().iter().map(|(p, _)| *p).collect();
    assert_eq!(planned, packs, "every pack, in id order");
    let sparse = &plan.packs()[packs.iter().position(|p| *p == k.sparse).unwrap()].1;
    let sparse: Vec<_> = sparse.iter().map(|e| e.id).collect();
    assert_eq!(
        sparse,
        vec![k.blobs["b"].0, k.blobs["y"].0],
        "read from its header"
    );
    assert_eq!(plan.files_to_write(), 1);
    assert_eq!(plan.files_to_delete().len(), 3);
    assert_eq!(
        everything(&*k.mem),
        before,
        "planning without a session stores nothing"
    );

    let dry = repair::repair_index(&mut open(&k.mem), "here", true).unwrap();
    assert!(dry.dry_run && dry.packs_added == 1, "{dry:?}");
    assert_eq!(
        everything(&*k.mem),
        before,
        "a dry run stored or deleted something"
    );

    // A dry run's plan is only shown.
    let mut repo = open(&k.mem);
    repo.begin_session("repair-index", "here").unwrap();
    let e = repair::execute(&repo, plan).unwrap_err();
    assert!(e.to_string().contains("not made under the session"), "{e}");
    repo.end_session().unwrap();
    assert_eq!(everything(&*k.mem), before);
}

#[test]
fn execute_replaces_the_index_files() {
    let k = known();
    let damaged = index_file_of(&k, k.sparse);
    k.mem.corrupt(Kind::Index, &damaged, 3);
    let mut repo = open(&k.mem);
    repo.begin_session("repair-index", "here").unwrap();
    let plan = repair::plan(&repo).unwrap();
    let r = repair::execute(&repo, plan).unwrap();
    repo.end_session().unwrap();
    assert!(!r.dry_run);
    assert_eq!(
        (r.index_files_written, r.index_files_deleted),
        (1, 3),
        "{r:?}"
    );
    assert_eq!(ids(&*k.mem, Kind::Index).len(), 1);
    assert!(ids(&*k.mem, Kind::Session).is_empty());
    let repo = open(&k.mem);
    repo.load_index().unwrap();
    for (name, (id, data)) in &k.blobs {
        assert_eq!(&repo.read_blob(id).unwrap(), data, "blob {name}");
    }
}
