//! A crash at every write point of a backup leaves a repository that passes `check`, and the
//! next backup completes, reusing what the interrupted one stored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tidemark_core::backup::{backup, BackupOptions, BackupProgress};
use tidemark_core::check::{check, CheckOptions};
use tidemark_core::chunk::ChunkerParams;
use tidemark_core::crypto::KdfParams;
use tidemark_core::id::Kind;
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
use tidemark_core::store::Store;
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
    let r = Repository::open(store, &mut || Ok(b"pw".to_vec())).unwrap();
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

/// Stores `blobs` (id, kind, plaintext) in `repo`, each once.
fn store_blobs(
    repo: &Repository,
    blobs: &[(
        tidemark_core::id::BlobId,
        tidemark_core::pack::BlobKind,
        &[u8],
    )],
) {
    let w = tidemark_core::repo::BlobWriter::new(repo);
    for (id, kind, plain) in blobs {
        let (flags, env) = repo.encode_blob(None, plain);
        if let Some(p) = w.add(*id, *kind, flags, plain.len() as u32, &env).unwrap() {
            w.upload(p).unwrap();
        }
    }
    w.finish_all().unwrap();
}

/// Stores a tree of `nodes` and returns its id and bytes.
fn tree_of(
    repo: &Repository,
    nodes: Vec<tidemark_core::snapshot::Node>,
) -> tidemark_core::id::BlobId {
    let bytes = tidemark_core::snapshot::Tree::listing(nodes).encode();
    let id = repo.crypto().blob_id(&bytes);
    store_blobs(repo, &[(id, tidemark_core::pack::BlobKind::Tree, &bytes)]);
    id
}

/// Every file below `dir` with its bytes and mtime, and every other entry by name.
fn snapshot_of(
    dir: &Path,
) -> Vec<(
    std::path::PathBuf,
    Option<Vec<u8>>,
    Option<std::time::SystemTime>,
)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            let bytes = m.is_file().then(|| std::fs::read(&p).unwrap());
            out.push((p, bytes, m.is_file().then(|| m.modified().unwrap())));
        }
    }
    out.sort();
    out
}

#[test]
fn malicious_tree_names_never_escape_the_target() {
    use tidemark_core::pack::BlobKind;
    use tidemark_core::snapshot::{Node, NodeType, NodeTypeField, Snapshot};
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("inner");
    let target = inner.join("target");
    // Beside the target, in its parent: a sentinel and a fake etc/passwd that the test owns.
    // Crafted names aim at these; the real /etc/passwd is only ever read, to show it unchanged.
    std::fs::create_dir_all(inner.join("etc")).unwrap();
    let fake_passwd = inner.join("etc/passwd");
    std::fs::write(&fake_passwd, b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(inner.join("sentinel"), b"sentinel").unwrap();
    let real_passwd = || {
        std::fs::metadata("/etc/passwd")
            .ok()
            .map(|m| (std::fs::read("/etc/passwd").unwrap(), m.modified().unwrap()))
    };
    let real_before = real_passwd();
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let repo = open(mem.clone());
    let content = b"pwned".to_vec();
    let cid = repo.crypto().blob_id(&content);
    store_blobs(&repo, &[(cid, BlobKind::Data, &content)]);
    let repo = open(mem.clone());
    std::fs::create_dir_all(&target).unwrap();
    let outside_before = snapshot_of(tmp.path());
    let outside_untouched = |what: &str| {
        let now: Vec<_> = snapshot_of(tmp.path())
            .into_iter()
            .filter(|(p, _, _)| !p.starts_with(&target))
            .collect();
        let before: Vec<_> = outside_before
            .iter()
            .filter(|(p, _, _)| !p.starts_with(&target))
            .cloned()
            .collect();
        assert_eq!(now, before, "{what}: something outside the target changed");
        assert_eq!(real_passwd(), real_before, "{what}: /etc/passwd changed");
    };
    let file = |name: &str| Node {
        name: Some(name.into()),
        node_type: NodeTypeField(NodeType::File),
        mode: 0o644,
        size: 5,
        content: vec![cid],
        ..Node::default()
    };
    let fake_str = fake_passwd.to_str().unwrap();
    for bad in [
        "..",
        "../escape",
        "/etc/passwd",
        "../etc/passwd",
        "../../inner/etc/passwd",
        fake_str,
        "etc/passwd",
        "../sentinel",
        "a/../../x",
        ".",
    ] {
        let tid = tree_of(&repo, vec![file(bad)]);
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
        let r = restore(
            &repo,
            &tid,
            &RestoreOptions {
                target: target.clone(),
                ..RestoreOptions::default()
            },
            &RestoreProgress::default(),
        );
        // Refused, with an error that names the entry.
        let errors: Vec<String> = match r {
            Ok(stats) => stats
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path.display(), e.error))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        assert!(
            errors.iter().any(|e| e.contains(&format!("{bad:?}"))),
            "{bad}: the error must name the entry: {errors:?}"
        );
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "{bad}: nothing may be restored from a bad tree"
        );
        outside_untouched(bad);
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

    // Well-formed names, crafted symlinks: a first snapshot plants symlinks aimed at the fake
    // etc, the fake passwd and the target's parent; a second, restored over it, has a directory
    // or file under each name. The second must replace the symlinks, never write through them.
    let link = |name: &str, to: &Path| Node {
        name: Some(name.into()),
        node_type: NodeTypeField(NodeType::Symlink),
        mode: 0o777,
        target: Some(to.to_str().unwrap().into()),
        ..Node::default()
    };
    let dir = |name: &str, subtree| Node {
        name: Some(name.into()),
        node_type: NodeTypeField(NodeType::Dir),
        mode: 0o755,
        subtree: Some(subtree),
        ..Node::default()
    };
    let links = tree_of(
        &repo,
        vec![
            link("etc", &inner.join("etc")),
            link("passwd", &fake_passwd),
            link("up", &inner),
        ],
    );
    let etc = tree_of(&repo, vec![file("passwd")]);
    let up = tree_of(&repo, vec![file("sentinel")]);
    let real = tree_of(&repo, vec![dir("etc", etc), file("passwd"), dir("up", up)]);
    let repo = open(mem.clone());
    for (tree, what) in [(links, "symlinks"), (real, "entries over the symlinks")] {
        let stats = restore(
            &repo,
            &tree,
            &RestoreOptions {
                target: target.clone(),
                ..RestoreOptions::default()
            },
            &RestoreProgress::default(),
        )
        .unwrap();
        assert!(stats.errors.is_empty(), "{what}: {:?}", stats.errors);
        outside_untouched(what);
    }
    for p in ["etc/passwd", "passwd", "up/sentinel"] {
        let restored = target.join(p);
        assert!(
            !restored.symlink_metadata().unwrap().is_symlink(),
            "{p} is still a symlink"
        );
        assert_eq!(std::fs::read(&restored).unwrap(), b"pwned", "{p}");
    }
    outside_untouched("the end");
}
