//! A crash at every write point of a backup leaves a repository that passes `check`, and the
//! next backup completes, reusing what the interrupted one stored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tidemark_core::backup::{backup, BackupOptions, BackupProgress};
use tidemark_core::check::{check, CheckOptions};
use tidemark_core::chunk::ChunkerParams;
use tidemark_core::crypto::KdfParams;
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
use tidemark_core::store::{Kind, Store};
use tidemark_testkit::{CountingStore, CrashStore, MemStore};

use super::common::{assert_same_tree, restored};

pub fn small_repo_options() -> InitOptions {
    InitOptions {
        password: Some(b"pw".to_vec().into()),
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        chunker: ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
            ..ChunkerParams::default()
        },
        pack_size: 256 << 10,
        ..InitOptions::default()
    }
}

/// `check --read-data` on `repo`.
pub fn check_all(repo: &Repository) -> tidemark_core::check::CheckReport {
    check(
        repo,
        CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        },
    )
    .unwrap()
}

pub fn open(store: Arc<dyn Store>) -> Repository {
    let mut r = Repository::open(store, &mut || Ok(b"pw".to_vec())).unwrap();
    r.load_index().unwrap();
    r
}

pub fn run_backup(
    repo: &mut Repository,
    src: &Path,
) -> tidemark_core::Result<tidemark_core::backup::BackupResult> {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        readers: 2,
        ..BackupOptions::default()
    };
    backup(
        repo,
        &opts,
        &BackupProgress::default(),
        &AtomicBool::new(false),
    )
}

fn source(dir: &Path) {
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    for i in 0..6u64 {
        std::fs::write(
            dir.join(format!("a/file{i}")),
            tidemark_testkit::seeded_bytes(300_000, i),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("a/b/big"),
        tidemark_testkit::seeded_bytes(1_500_000, 99),
    )
    .unwrap();
    std::fs::write(dir.join("small"), b"small").unwrap();
}

#[test]
fn crash_at_every_write_point_of_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    // How many puts does a clean backup make (after init)?
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let counting = Arc::new(CrashStore::new(mem.clone(), usize::MAX));
    let mut repo = open(counting.clone());
    run_backup(&mut repo, &src).unwrap();
    let total_puts = counting.puts.load(Ordering::SeqCst);
    let full_pack_bytes: u64 = mem.list(Kind::Pack).unwrap().iter().map(|(_, l)| l).sum();
    assert!(
        total_puts > 8,
        "the test needs several write points, got {total_puts}"
    );

    // Pack grouping is random, so the number of writes varies a little between runs: go on
    // until a budget is large enough for the whole backup.
    let mut crashes = 0;
    for budget in 0.. {
        let mem = Arc::new(MemStore::new());
        Repository::init(mem.clone(), &small_repo_options()).unwrap();
        let crashing = Arc::new(CrashStore::new(mem.clone(), budget));
        let mut repo = open(crashing);
        if run_backup(&mut repo, &src).is_ok() {
            assert!(
                budget + 4 >= total_puts,
                "budget {budget}: backup succeeded with far fewer writes than {total_puts}"
            );
            break;
        }
        crashes += 1;
        // What the crash left behind passes check, and no snapshot references missing data.
        let repo = open(mem.clone());
        let report = check_all(&repo);
        assert!(
            report.errors.is_empty(),
            "budget {budget}: {:?}",
            report.errors
        );
        let before: u64 = mem.list(Kind::Pack).unwrap().iter().map(|(_, l)| l).sum();
        // The next backup completes and reuses what is there.
        let counting = Arc::new(CountingStore::new(mem.clone()));
        let mut repo = open(counting.clone());
        let r = run_backup(&mut repo, &src).unwrap();
        let sent = counting.pack_bytes.load(Ordering::SeqCst);
        // Packs hold blobs in random groupings, so allow a quarter of slack over the ideal.
        assert!(sent <= full_pack_bytes.saturating_sub(before) + full_pack_bytes / 4, "budget {budget}: re-sent {sent} bytes though {before} of {full_pack_bytes} were stored");
        let target = tmp.path().join(format!("t{budget}"));
        restore(
            &repo,
            &r.snapshot.tree,
            &RestoreOptions {
                target: target.clone(),
                ..RestoreOptions::default()
            },
            &RestoreProgress::default(),
        )
        .unwrap();
        assert_same_tree(&src, &restored(&target, &src));
        let report = check_all(&repo);
        assert!(
            report.errors.is_empty(),
            "budget {budget} after re-run: {:?}",
            report.errors
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    assert!(
        crashes + 4 >= total_puts,
        "only {crashes} of ~{total_puts} write points were crashed"
    );
}

#[test]
fn interrupted_backup_indexes_what_it_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let mut repo = open(mem.clone());
    let cancel = AtomicBool::new(true);
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    let r = backup(&mut repo, &opts, &BackupProgress::default(), &cancel);
    assert!(matches!(r, Err(tidemark_core::Error::Interrupted)), "{r:?}");
    assert!(mem.list(Kind::Snapshot).unwrap().is_empty());
    let repo = open(mem.clone());
    assert!(check(&repo, CheckOptions::default())
        .unwrap()
        .errors
        .is_empty());
}

#[test]
fn malicious_tree_names_never_escape_the_target() {
    use tidemark_core::pack::BlobKind;
    use tidemark_core::repo::BlobWriter;
    use tidemark_core::snapshot::{Node, NodeType, NodeTypeField, Snapshot, Tree};
    let tmp = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let repo = open(mem.clone());
    let content = b"pwned".to_vec();
    let cid = repo.crypto().blob_id(&content);
    for bad in ["..", "../escape", "/etc/passwd", "a/../../x", "."] {
        let node = Node {
            name: Some(bad.into()),
            node_type: NodeTypeField(NodeType::File),
            mode: 0o644,
            size: 5,
            content: vec![cid],
            ..Node::default()
        };
        let tree = Tree::listing(vec![node]);
        let bytes = tree.encode();
        let tid = repo.crypto().blob_id(&bytes);
        let w = BlobWriter::new(&repo);
        for (id, kind, plain) in [
            (cid, BlobKind::Data, &content),
            (tid, BlobKind::Tree, &bytes),
        ] {
            let (flags, env) = repo.encode_blob(None, plain);
            if let Some(p) = w.add(id, kind, flags, plain.len() as u32, &env).unwrap() {
                w.upload(p).unwrap();
            }
        }
        w.finish_all().unwrap();
        let snap = Snapshot {
            version: 1,
            time: "2026-01-01T00:00:00Z".into(),
            hostname: "h".into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec!["/x".into()],
            tags: vec![],
            parent: None,
            tree: tid,
            program_version: "test".into(),
            summary: tidemark_core::snapshot::Summary::default(),
            revision: None,
            log: None,
            membership: None,
        };
        repo.save_snapshot(&snap).unwrap();
        let repo = open(mem.clone());
        let target = tmp.path().join("inner/target");
        let r = restore(
            &repo,
            &tid,
            &RestoreOptions {
                target: target.clone(),
                ..RestoreOptions::default()
            },
            &RestoreProgress::default(),
        );
        match r {
            Ok(stats) => assert!(
                !stats.errors.is_empty(),
                "{bad}: a bad tree must be reported"
            ),
            Err(e) => assert!(
                e.to_string().contains("damaged") || e.to_string().contains("unsafe"),
                "{bad}: {e}"
            ),
        }
        for p in ["inner/escape", "inner/x", "escape", "x"] {
            assert!(
                !tmp.path().join(p).exists(),
                "{bad}: wrote {p} outside the target"
            );
        }
        // check names the bad tree.
        let report = check(&repo, CheckOptions::default()).unwrap();
        assert!(
            report.errors.iter().any(|e| e.object.starts_with("tree")),
            "{bad}: {:?}",
            report.errors
        );
        for (id, _) in mem.list(Kind::Snapshot).unwrap() {
            mem.delete(Kind::Snapshot, &id).unwrap();
        }
    }
}
