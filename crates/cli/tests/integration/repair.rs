//! `repair index` rebuilds lost and damaged index files from the pack headers, a crash at any of
//! its writes or deletes loses nothing, and `check --read-data-subset` reads the part it names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tidemark_core::id::Kind;
use tidemark_core::repair::repair_index;
use tidemark_core::store::Store;

use super::common::{every_kind_tree, restored, tree_difference_except_atime, Repo};
use super::crash::open;
use super::prune::{assert_intact, repository_with_garbage, DyingStore};

fn json(repo: &Repo, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = repo.run(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn index_dir(repo: &Repo) -> std::path::PathBuf {
    repo.path.join("index")
}

fn index_files(repo: &Repo) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(index_dir(repo))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

/// A repository with several packs: small packs, a tree of every kind and some larger files.
fn repo_with_packs() -> (Repo, std::path::PathBuf) {
    let repo = Repo::init_with(&["--pack-size", "65536"], &[]);
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    for i in 0..8u64 {
        std::fs::write(
            src.join(format!("data-{i}")),
            tidemark_testkit::seeded_bytes(100_000, i),
        )
        .unwrap();
    }
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    (repo, src)
}

fn assert_restores(repo: &Repo, src: &std::path::Path, name: &str) {
    let target = repo.dir.path().join(name);
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    if let Some(d) = tree_difference_except_atime(src, &restored(&target, src)) {
        panic!("{name}: {d}");
    }
}

#[test]
fn repair_index_rebuilds_lost_and_damaged_index_files() {
    let (repo, src) = repo_with_packs();
    let before = json(&repo, &["check"]);
    let packs = before["packs"].as_u64().unwrap();
    assert!(packs >= 8, "{before}");

    // Every index file lost: check fails, naming blobs that are in no index.
    for f in index_files(&repo) {
        std::fs::remove_file(f).unwrap();
    }
    let out = repo.run(&["check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not in any index"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A dry run reads and reports but writes nothing.
    let dry = json(&repo, &["repair", "index", "--dry-run"]);
    assert_eq!(dry["packs_added"].as_u64(), Some(packs), "{dry}");
    assert_eq!(dry["index_files_to_write"], 1, "the plan is printed: {dry}");
    assert!(index_files(&repo).is_empty());
    let r = json(&repo, &["repair", "index"]);
    assert_eq!(r["packs_indexed"].as_u64(), Some(packs), "{r}");
    assert_eq!(r["index_files_written"], 1, "{r}");
    repo.ok(&["check", "--read-data"]);
    assert_restores(&repo, &src, "r1");

    // A damaged index file: replaced; the packs it listed are indexed again.
    let files = index_files(&repo);
    std::fs::write(&files[0], b"not an index file").unwrap();
    let out = repo.run(&["check"]);
    assert!(!out.status.success());
    let r = json(&repo, &["repair", "index"]);
    assert_eq!(r["index_files_damaged"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["index_files_deleted"], 1, "{r}");
    repo.ok(&["check", "--read-data"]);
    assert_restores(&repo, &src, "r2");
    // The next backup after a repair finds every data blob: no file content is stored again
    // (trees are, as reading the source for the comparisons moved atimes).
    let again = json(&repo, &["backup", src.to_str().unwrap()]);
    assert_eq!(again["data_blobs"], 0, "{again}");
}

#[test]
fn a_crash_at_every_write_or_delete_of_repair_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut crashes = 0;
    for budget in 0.. {
        let mem = repository_with_garbage(&src);
        // Lose one index file, so the repair has something to do.
        let (lost, _) = mem.list(Kind::Index).unwrap()[0];
        mem.delete(Kind::Index, &lost).unwrap();
        let dying = Arc::new(DyingStore {
            inner: mem.clone(),
            budget: AtomicUsize::new(budget),
        });
        let mut repo = open(dying.clone());
        let finished = repair_index(&mut repo, "test", false).is_ok();
        let spent = budget - dying.budget.load(Ordering::SeqCst);
        if finished {
            assert!(spent >= 3, "only {spent} mutations");
            break;
        }
        crashes += 1;
        // The crashed repair's session would expire; clear it, then a full repair finishes.
        for (id, _) in mem.list(Kind::Session).unwrap() {
            mem.delete(Kind::Session, &id).unwrap();
        }
        let mut repo = open(mem.clone());
        repair_index(&mut repo, "test", false).unwrap();
        let target = tmp.path().join(format!("t{budget}"));
        assert_intact(
            &mem,
            &src,
            &target,
            &format!("repair crashed after {budget} mutations"),
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    assert!(crashes >= 3, "only {crashes} crash points");
}

#[test]
fn check_read_data_subset_reads_the_part_it_names() {
    let (repo, _src) = repo_with_packs();
    let all = json(&repo, &["check", "--read-data"]);
    let packs = all["packs_read"].as_u64().unwrap();
    assert_eq!(all["packs"].as_u64(), Some(packs));
    let mut sum = 0;
    let mut blobs = 0;
    for n in 1..=3 {
        let part = json(&repo, &["check", "--read-data-subset", &format!("{n}/3")]);
        sum += part["packs_read"].as_u64().unwrap();
        blobs += part["blobs_read"].as_u64().unwrap();
    }
    assert_eq!(sum, packs, "the three parts read every pack once");
    assert_eq!(blobs, all["blobs_read"].as_u64().unwrap());
    let half = json(&repo, &["check", "--read-data-subset", "50%"]);
    assert_eq!(
        half["packs_read"].as_u64(),
        Some(packs.div_ceil(2)),
        "{half}"
    );
    let one = json(&repo, &["check", "--read-data-subset", "1KiB"]);
    assert_eq!(one["packs_read"], 1, "{one}");
    for bad in ["0/3", "4/3", "0%", "101%", "lots"] {
        let out = repo.run(&["check", "--read-data-subset", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--read-data-subset"), "{bad}: {err}");
    }

    // A damaged pack is read, and named, by the part that holds it only.
    let data = repo.path.join("data");
    let mut packs_on_disk: Vec<_> = walk(&data);
    packs_on_disk.sort();
    let victim = &packs_on_disk[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    let head = u32::from_str_radix(&name[..8], 16).unwrap();
    let part = head % 3 + 1;
    let out = repo.run(&["check", "--read-data-subset", &format!("{part}/3")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&name[..8]),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Another part does not read that pack. (If the damaged bytes hold a tree, the structural
    // check, which reads every tree, still reports the tree, but not the pack.)
    let other = part % 3 + 1;
    let out = repo.run(&["check", "--read-data-subset", &format!("{other}/3")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains(&format!("pack {}", &name[..8])),
        "{stdout}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}
