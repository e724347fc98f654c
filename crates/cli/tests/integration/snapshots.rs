//! Choosing and listing snapshots: `restore --at` / `--revision`, `snapshots --latest`, the local
//! snapshot cache (damage, `--no-cache`), and listing 100,000 snapshots.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_core::repo::Repository;
use tidemark_core::snapshot::{LogPosition, Snapshot};
use tidemark_store::LocalStore;

use super::common::{restored, Repo};

/// The repository through the library, with the password `Repo` gives the binary.
fn open_core(repo: &Repo) -> Repository {
    Repository::open(Arc::new(LocalStore::new(&repo.path)), &mut || {
        Ok(b"test password".to_vec())
    })
    .unwrap()
}

/// Backs up `src` and returns the new snapshot's id.
fn backup(repo: &Repo, src: &Path) -> String {
    let out = repo.ok(&["backup", "--json", src.to_str().unwrap()]);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .expect("summary line");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    v["snapshot_id"].as_str().unwrap().to_owned()
}

fn list(repo: &Repo, extra: &[&str]) -> Vec<serde_json::Value> {
    let args: Vec<&str> = ["snapshots", "--json"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    serde_json::from_str::<Vec<serde_json::Value>>(&repo.ok(&args)).unwrap()
}

/// Restores with `selection` into a fresh directory and returns the content of `file`.
fn restore_content(repo: &Repo, selection: &[&str], src: &Path, file: &str) -> String {
    let target = tempfile::tempdir_in(repo.dir.path()).unwrap();
    let mut args = vec!["restore", "--target", target.path().to_str().unwrap()];
    args.extend_from_slice(selection);
    repo.ok(&args);
    std::fs::read_to_string(restored(target.path(), src).join(file)).unwrap()
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[test]
fn restore_at_picks_the_newest_snapshot_before_the_time() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let before_all = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(20));
    let mut between = Vec::new();
    for version in ["one", "two", "three"] {
        std::fs::write(src.join("f.txt"), version).unwrap();
        backup(&repo, &src);
        std::thread::sleep(Duration::from_millis(20));
        between.push(chrono::Utc::now());
        std::thread::sleep(Duration::from_millis(20));
    }
    for (at, want) in between.iter().zip(["one", "two", "three"]) {
        let got = restore_content(&repo, &["--at", &rfc3339(*at)], &src, "f.txt");
        assert_eq!(got, want, "--at {at}");
    }
    // Relative and local forms resolve to now-ish: the newest.
    assert_eq!(
        restore_content(&repo, &["--at", "-0s"], &src, "f.txt"),
        "three"
    );
    let local_now = (chrono::Local::now() + chrono::TimeDelta::seconds(2))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert_eq!(
        restore_content(&repo, &["--at", &local_now], &src, "f.txt"),
        "three"
    );
    // Filters narrow the choice.
    let canonical = src.canonicalize().unwrap();
    let src_arg = canonical.to_str().unwrap();
    assert_eq!(
        restore_content(&repo, &["--at", "-0s", "--path", src_arg], &src, "f.txt"),
        "three"
    );

    let target = repo.dir.path().join("none");
    let t = target.to_str().unwrap();
    for (args, message) in [
        (
            vec!["--at", &rfc3339(before_all) as &str],
            "no snapshot at or before",
        ),
        (vec!["--at", "-1d"], "the oldest snapshot is from"),
        (
            vec!["--at", "-0s", "--host", "elsewhere"],
            "no snapshot matching --host/--path at or before",
        ),
        (vec!["--revision", "5"], "with a revision at or below 5"),
        (vec!["--at", "whenever"], "is not a time"),
        (vec!["latest", "--at", "-1h"], "cannot be used with"),
        (vec![], "required"),
    ] {
        let mut full = vec!["restore", "--target", t];
        full.extend(args.iter().copied());
        let out = repo.run(&full);
        assert!(!out.status.success(), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{full:?}: {err}");
    }
    assert!(!target.exists(), "nothing was restored");
}

#[test]
fn restore_revision_picks_the_greatest_revision_at_or_below() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut ids = Vec::new();
    for version in ["a", "b", "c"] {
        std::fs::write(src.join("f.txt"), version).unwrap();
        ids.push(backup(&repo, &src));
    }
    // Seal copies with revisions whose order differs from the order in time, as a cluster
    // whose clocks disagree could: a → 30, b → 10, c → 20.
    let core = open_core(&repo);
    for (id, revision) in ids.iter().zip([30u64, 10, 20]) {
        let (_, mut snap) = core.find_snapshot(id).unwrap();
        snap.revision = Some(revision);
        snap.log = Some(LogPosition { term: 1, node: 1 });
        snap.membership = Some(serde_json::json!({"configs": [[1]], "nodes": {"1": {}}}));
        core.save_snapshot(&snap).unwrap();
    }
    for (revision, want) in [
        ("10", "b"),
        ("15", "b"),
        ("25", "c"),
        ("30", "a"),
        ("99", "a"),
    ] {
        let got = restore_content(&repo, &["--revision", revision], &src, "f.txt");
        assert_eq!(got, want, "--revision {revision}");
    }
    let out = repo.run(&["restore", "--target", "/nonexistent", "--revision", "9"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot with a revision at or below 9")
    );

    let table = repo.ok(&["snapshots"]);
    assert!(table.lines().next().unwrap().contains("Rev"), "{table}");
    assert!(table.contains("      30 "), "{table}");
    let json = list(&repo, &[]);
    assert_eq!(json.len(), 6);
    let revisions: Vec<_> = json.iter().map(|s| s["revision"].as_u64()).collect();
    assert_eq!(revisions.iter().filter(|r| r.is_none()).count(), 3);
    let sealed = json.iter().find(|s| s["revision"] == 10).unwrap();
    assert_eq!(sealed["log"], serde_json::json!({"term": 1, "node": 1}));
    assert_eq!(sealed["membership"]["configs"], serde_json::json!([[1]]));
    assert!(
        json.iter().any(|s| s.get("revision").is_none()),
        "absent, not null"
    );
}

#[test]
fn snapshots_latest_and_the_cache() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join("f.txt"), format!("{i}")).unwrap();
        backup(&repo, &src);
    }
    let all = list(&repo, &[]);
    assert_eq!(all.len(), 4);
    assert_eq!(list(&repo, &["--latest", "2"]), all[2..]);
    assert_eq!(list(&repo, &["--latest", "9"]), all);
    assert_eq!(list(&repo, &["--no-cache"]), all);
    let table = repo.ok(&["snapshots", "--latest", "1"]);
    assert!(table.contains("1 of 4 snapshots"), "{table}");
    assert!(!table.lines().next().unwrap().contains("Rev"), "{table}");

    // The cache lives under $HOME/.cache (the tests' HOME is the temp dir), by repository id.
    let core = open_core(&repo);
    let cache = repo
        .dir
        .path()
        .join(".cache/tidemark")
        .join(core.config().id.to_hex())
        .join("snapshots");
    assert!(cache.exists());
    assert!(repo
        .dir
        .path()
        .join(".cache/tidemark/CACHEDIR.TAG")
        .exists());

    // A warm listing reads no snapshot object: a damaged one goes unnoticed until --no-cache.
    let object = repo
        .path
        .join("snapshots")
        .join(all[1]["id"].as_str().unwrap());
    let original = std::fs::read(&object).unwrap();
    std::fs::write(&object, b"garbage").unwrap();
    assert_eq!(list(&repo, &[]), all);
    let out = repo.run(&["snapshots", "--no-cache"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is damaged"));
    std::fs::write(&object, original).unwrap();

    // A damaged cache is noted, ignored and rebuilt; never an error.
    let mut bytes = std::fs::read(&cache).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&cache, &bytes).unwrap();
    let out = repo.run(&["snapshots", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged snapshot cache"));
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap(),
        all
    );
    assert_ne!(std::fs::read(&cache).unwrap(), bytes, "rewritten");
    let out = repo.run(&["snapshots", "--json"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A snapshot removed from the repository leaves the listing; one added appears.
    let gone = all[0]["id"].as_str().unwrap();
    std::fs::remove_file(repo.path.join("snapshots").join(gone)).unwrap();
    std::fs::write(src.join("f.txt"), "new").unwrap();
    let added = backup(&repo, &src);
    let now = list(&repo, &[]);
    let ids: Vec<_> = now.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&gone));
    assert_eq!(ids[3], added);
    assert_eq!(restore_content(&repo, &["latest"], &src, "f.txt"), "new");

    // --no-cache and an explicit directory.
    let elsewhere = repo.dir.path().join("other-cache");
    repo.ok(&["snapshots", "--cache-dir", elsewhere.to_str().unwrap()]);
    assert!(elsewhere
        .join(core.config().id.to_hex())
        .join("snapshots")
        .exists());
    let nowhere = repo.dir.path().join("no-cache");
    repo.ok(&[
        "snapshots",
        "--no-cache",
        "--cache-dir",
        nowhere.to_str().unwrap(),
    ]);
    assert!(!nowhere.exists());
}

const MANY: usize = 100_000;

/// 100,000 snapshots (a continuous capture's 14 hours at one per 500 ms) listed through the
/// cache. The objects are sealed by the library and written straight into `snapshots/`: the
/// store's fsync per object would make building them take minutes.
#[test]
fn listing_100k_snapshots_is_fast_with_a_warm_cache() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo {
        path: dir.path().join("repo"),
        dir,
        env: Vec::new(),
    };
    repo.ok(&["init", "--insecure-no-encryption"]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f.txt"), "x").unwrap();
    let first = backup(&repo, &src);
    let core = open_core(&repo);
    let (_, template) = core.find_snapshot(&first).unwrap();
    let snapshots_dir = repo.path.join("snapshots");
    let t0 = Instant::now();
    let start = template.datetime();
    for i in 1..MANY {
        let snap = Snapshot {
            time: rfc3339(start + chrono::TimeDelta::milliseconds(500 * i as i64)),
            revision: Some(i as u64),
            ..template.clone()
        };
        let (id, bytes) = snap.seal(core.crypto());
        std::fs::write(snapshots_dir.join(id.to_hex()), bytes).unwrap();
    }
    eprintln!("created {MANY} snapshots in {:.2?}", t0.elapsed());

    let timed = |args: &[&str]| {
        let t = Instant::now();
        let out = repo.ok(args);
        (t.elapsed(), out)
    };
    let (cold, out) = timed(&["snapshots", "--json"]);
    let cold_list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(cold_list.len(), MANY);
    let (warm, out) = timed(&["snapshots", "--json"]);
    assert_eq!(
        out.len(),
        serde_json::to_string(&cold_list).unwrap().len() + 1
    );
    let (uncached, _) = timed(&["snapshots", "--json", "--no-cache"]);
    let (latest, out) = timed(&["snapshots", "--json", "--latest", "1"]);
    let newest: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(newest[0]["revision"], MANY as u64 - 1);
    let (restore_at, _) = timed(&[
        "restore",
        "--target",
        repo.dir.path().join("r").to_str().unwrap(),
        "--at",
        &rfc3339(start + chrono::TimeDelta::seconds(60)),
    ]);
    eprintln!(
        "snapshots --json with {MANY} snapshots: cold cache {cold:.2?}, warm {warm:.2?}, \
         --no-cache {uncached:.2?}; --latest 1 {latest:.2?}; restore --at {restore_at:.2?}"
    );
    // A release build lists them in under a second. Tests run a debug binary, where parsing
    // and printing 100,000 JSON objects at opt-level 0 alone takes ~3 s, on a machine shared
    // with other builds and tests: hence the generous bounds. `--latest 1` shows what the
    // cache saves: one listing and one file, however many snapshots.
    let (list_bound, latest_bound) = if cfg!(debug_assertions) {
        (Duration::from_secs(12), Duration::from_secs(3))
    } else {
        (Duration::from_secs(2), Duration::from_secs(1))
    };
    assert!(warm < list_bound, "warm listing took {warm:.2?}");
    assert!(latest < latest_bound, "warm --latest 1 took {latest:.2?}");
}
