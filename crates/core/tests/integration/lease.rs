//! The lease is the repository handle's (`docs/format.md` §19): the sessions it begins lapse by
//! it, and its prunes judge other writers dead by it, whatever the process environment says.

use std::sync::Arc;
use std::time::Duration;

use tidemark_core::clock::ManualClock;
use tidemark_core::lifecycle::{Lease, Session};
use tidemark_core::prune::{self, PruneOptions};
use tidemark_core::repo::Repository;

use super::common::{init, known, open, snapshot, tree};

fn two_seconds() -> Lease {
    Lease::new(Duration::from_secs(2)).unwrap()
}

/// A handle opened with the default lease, on a manual clock.
fn open_at(mem: &Arc<tidemark_testkit::MemStore>, clock: &Arc<ManualClock>) -> Repository {
    let mut repo = open(mem);
    repo.set_clock(clock.clone());
    repo
}

/// A session begun through a handle with a 2 s lease lapses 3 s later by the handle's clock, for
/// every clone that shares it, and the handle then stores no snapshot; the same gap under the
/// default lease is nothing.
#[test]
fn a_session_lapses_by_the_lease_of_its_repository() {
    let (mem, repo) = init();
    assert_eq!(repo.lease(), Lease::DEFAULT);
    let (root, _) = tree(&repo, &[]);
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));

    let mut default = open_at(&mem, &clock);
    default.begin_session("backup", "h").unwrap();
    let mut short = open_at(&mem, &clock);
    short.set_lease(two_seconds());
    let before = short.clone();
    short.begin_session("backup", "h").unwrap();
    let after = short.clone();
    assert_eq!(
        (before.lease(), after.lease()),
        (two_seconds(), two_seconds())
    );

    clock.advance(Duration::from_secs(3));
    for handle in [&short, &after] {
        let e = handle.session().unwrap().check().unwrap_err().to_string();
        assert!(
            e.contains("paused too long") && e.contains("limit 2s"),
            "{e}"
        );
    }
    let e = short.save_snapshot(&empty_snapshot(root)).unwrap_err();
    assert!(e.to_string().contains("paused too long"), "{e}");
    default.session().unwrap().check().unwrap();
    snapshot(&default, root);
}

/// A snapshot of the tree `root`, as [`snapshot`] stores it.
fn empty_snapshot(root: tidemark_core::id::BlobId) -> tidemark_core::snapshot::Snapshot {
    tidemark_core::snapshot::Snapshot {
        version: 1,
        time: "2026-12-01T00:00:00Z".into(),
        hostname: "h".into(),
        username: "u".into(),
        uid: 0,
        gid: 0,
        paths: vec!["/src".into()],
        tags: Vec::new(),
        parent: None,
        tree: root,
        program_version: "test".into(),
        summary: tidemark_core::snapshot::Summary::default(),
        revision: None,
        log: None,
        membership: None,
    }
}

/// A writer that stopped renewing, sighted by a prune, is dead to a later prune whose handle has
/// a 2 s lease once 6 s passed by that prune's clock (its condemned packs go), and not before;
/// to a handle with the default lease it is still live (they wait for it).
#[test]
fn prune_judges_writers_by_the_lease_of_its_repository() {
    let k = known();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let opts = PruneOptions {
        keep_condemned: Duration::ZERO,
        hostname: "here".into(),
        ..PruneOptions::default()
    };
    // Started before the packs are condemned; it never sees the record (it is stopped).
    let crypto = open(&k.mem).crypto().clone();
    let writer = Session::start(k.mem.clone(), &crypto, "backup", "other").unwrap();
    let mut repo = open_at(&k.mem, &clock);
    let first = prune::prune_with_clock(&mut repo, &opts, &*clock).unwrap();
    assert!(first.packs_unused + first.packs_repacked > 0, "{first:?}");

    let plan_with = |lease: Lease| {
        let mut repo = open_at(&k.mem, &clock);
        repo.set_lease(lease);
        prune::plan(&mut repo, &opts, &*clock).unwrap()
    };
    let mut condemned = vec![k.unused, k.sparse];
    condemned.sort();
    clock.advance(Duration::from_secs(5));
    let plan = plan_with(two_seconds());
    assert!(plan.delete.is_empty(), "5 s < 3 × 2 s: {plan:?}");
    clock.advance(Duration::from_secs(2));
    let plan = plan_with(Lease::DEFAULT);
    assert!(plan.delete.is_empty(), "{plan:?}");
    assert!(
        plan.report.waiting_for[0].contains("backup on other"),
        "{plan:?}"
    );
    let plan = plan_with(two_seconds());
    let deleted: Vec<_> = plan.delete.iter().map(|p| p.pack).collect();
    assert_eq!(deleted, condemned, "{plan:?}");
    assert!(plan.report.waiting_for.is_empty(), "{plan:?}");
    writer.end().unwrap();
}
