//! `tidemark_core::stats`, behind `tidemark stats` and `ls PATH`: counts over a backup whose
//! contents are known, and the tree lookup by path.

use std::sync::Arc;

use tidemark_core::repo::Repository;
use tidemark_core::stats::{repo_stats, snapshot_stats, subtree, SnapshotStats};
use tidemark_testkit::MemStore;

use super::crash::{open, run_backup, small_repo_options};

#[test]
fn stats_count_a_known_tree_and_subtree_finds_directories_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a"), vec![1u8; 10]).unwrap();
    std::fs::write(src.join("sub/b"), vec![2u8; 20]).unwrap();
    std::fs::write(
        src.join("sub/deeper/c"),
        tidemark_testkit::seeded_bytes(300_000, 7),
    )
    .unwrap();
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let mut repo = open(mem.clone());
    let tree = run_backup(&mut repo, &src).unwrap().snapshot.tree;
    let repo = open(mem);

    let at_src = subtree(&repo, &tree, &src).unwrap();
    assert_eq!(
        snapshot_stats(&repo, &at_src).unwrap(),
        SnapshotStats {
            files: 3,
            dirs: 2,
            bytes: 300_030
        },
        "a symlink is neither a file nor a directory"
    );
    let deeper = subtree(&repo, &tree, &src.join("sub/deeper")).unwrap();
    assert_eq!(snapshot_stats(&repo, &deeper).unwrap().files, 1);
    // From the root, the directories leading to `src` count too.
    let whole = snapshot_stats(&repo, &tree).unwrap();
    let ancestors = src.components().count() as u64 - 1;
    assert_eq!((whole.files, whole.dirs), (3, 2 + ancestors));
    assert_eq!(
        subtree(&repo, &tree, std::path::Path::new("/")).unwrap(),
        tree
    );

    let missing = subtree(&repo, &tree, &src.join("nope")).unwrap_err();
    assert!(
        missing.to_string().ends_with("nope is not in the snapshot"),
        "{missing}"
    );
    let file = subtree(&repo, &tree, &src.join("sub/b")).unwrap_err();
    assert!(
        file.to_string().ends_with("sub/b is not a directory"),
        "{file}"
    );

    let r = repo_stats(&repo).unwrap();
    assert_eq!(r.snapshots, 1);
    assert!(
        r.packs >= 1 && r.pack_bytes > 0 && r.index_bytes > 0,
        "{r:?}"
    );
    // One tree per directory of the snapshot, the root's included; three distinct contents.
    assert_eq!(r.tree_blobs, whole.dirs + 1, "{r:?}");
    assert!(r.data_blobs >= 3, "{r:?}");
    assert!(r.raw_bytes >= 300_030, "{r:?}");
    assert!(r.compression_ratio() > 0.0);
}
