//! Property: backup then restore is the identity, for random trees.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use tidemark_core::repo::Repository;
use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
use tidemark_testkit::MemStore;

use super::common::{assert_same_tree, restored};
use super::crash::{open, run_backup, small_repo_options};

#[derive(Debug, Clone)]
enum Item {
    File {
        name: String,
        len: usize,
        seed: u64,
        mode: u32,
    },
    Dir {
        name: String,
        children: Vec<Item>,
    },
    Link {
        name: String,
        target: String,
    },
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._\u{e9}-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn item() -> impl Strategy<Value = Item> {
    let leaf = prop_oneof![
        (
            name(),
            prop_oneof![Just(0usize), 1usize..2000, 60_000usize..400_000],
            any::<u64>(),
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755)]
        )
            .prop_map(|(name, len, seed, mode)| Item::File {
                name,
                len,
                seed,
                mode
            }),
        (name(), "[a-z/.]{1,20}").prop_map(|(name, target)| Item::Link { name, target }),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        (name(), prop::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Item::Dir { name, children })
    })
}

fn build(dir: &Path, items: &[Item]) {
    for it in items {
        match it {
            Item::File {
                name,
                len,
                seed,
                mode,
            } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::write(&p, tidemark_testkit::seeded_bytes(*len, *seed)).unwrap();
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .unwrap();
            }
            Item::Dir { name, children } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::create_dir(&p).unwrap();
                build(&p, children);
            }
            Item::Link { name, target } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::os::unix::fs::symlink(target, &p).unwrap();
            }
        }
    }
}

/// The tree id of directory `path` inside a snapshot's root tree.
fn subtree_of(
    repo: &Repository,
    root: tidemark_core::id::BlobId,
    path: &Path,
) -> tidemark_core::id::BlobId {
    let mut id = root;
    for c in path.components().skip(1) {
        let tree = repo.load_tree(&id).unwrap();
        let name = std::os::unix::ffi::OsStrExt::as_bytes(c.as_os_str());
        id = tree.find(name).unwrap().subtree.unwrap();
    }
    id
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn backup_then_restore_is_identity(items in prop::collection::vec(item(), 0..8)) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build(&src, &items);
        let mem = Arc::new(MemStore::new());
        Repository::init(mem.clone(), &small_repo_options()).unwrap();
        let mut repo = open(mem.clone());
        let r = run_backup(&mut repo, &src).unwrap();
        prop_assert!(r.errors.is_empty(), "{:?}", r.errors);
        // A second backup on top must give the same root tree.
        let mut repo = open(mem.clone());
        let r2 = run_backup(&mut repo, &src).unwrap();
        // (Compared below the temp dir: /tmp itself changes as other tests run.)
        prop_assert_eq!(subtree_of(&repo, r.snapshot.tree, &src), subtree_of(&repo, r2.snapshot.tree, &src));
        let target = tmp.path().join("t");
        let stats = restore(&repo, &r.snapshot.tree, &RestoreOptions { target: target.clone(), ..RestoreOptions::default() }, &RestoreProgress::default()).unwrap();
        prop_assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_same_tree(&src, &restored(&target, &src));
    }
}
