//! Issue 9: a store writer cannot forge the config into a downgrade (`docs/format.md` §3), key
//! files cannot ask for unbounded Argon2 costs, and empty passwords are refused (§4).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::common::Repo;

/// A change to a stored config: what the error must name, and the change.
type Forgery = (&'static str, fn(&mut serde_json::Value));

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` failed with a one-line error containing `what`.
fn refused(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(what) && err.lines().count() == 1,
        "expected one line with {what:?}, got: {err}"
    );
}

fn config(repo: &Repo) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo.path.join("config")).unwrap()).unwrap()
}

fn write_config(repo: &Repo, v: &serde_json::Value) {
    std::fs::write(
        repo.path.join("config"),
        serde_json::to_vec_pretty(v).unwrap(),
    )
    .unwrap();
}

fn edit_config(repo: &Repo, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v = config(repo);
    f(&mut v);
    write_config(repo, &v);
}

fn source(repo: &Repo) -> PathBuf {
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.txt"), b"nobody may read this\n").unwrap();
    src
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, std::iter::Iterator::count)
}

#[test]
fn issue_9_config_turning_encryption_off_is_refused_while_key_files_exist() {
    let repo = Repo::init();
    let src = source(&repo);
    edit_config(&repo, |v| {
        let o = v.as_object_mut().unwrap();
        o.insert("version".into(), 1.into());
        o.insert("encryption".into(), "none".into());
        o.remove("mac");
        o.insert(
            "plain_keys".into(),
            serde_json::json!({ "id_key": "ab".repeat(32), "chunker_seed": 7 }),
        );
    });
    // The next backup would have stored the file in plaintext.
    let out = repo.run(&["backup", src.to_str().unwrap()]);
    refused(
        &out,
        "says the repository is not encrypted, but the repository holds key files",
    );
    assert_eq!(files_under(&repo.path.join("snapshots")), 0);
    assert_eq!(files_under(&repo.path.join("data")), 0);
}

#[test]
fn issue_9_changed_chunker_or_pack_size_is_not_authenticated() {
    let repo = Repo::init();
    repo.ok(&["snapshots"]);
    let original = config(&repo);
    let forgeries: [fn(&mut serde_json::Value); 4] = [
        |v| v["chunker"]["min_size"] = 65536.into(),
        |v| v["chunker"]["avg_size"] = 262_144.into(),
        |v| v["pack_size"] = (64 << 20).into(),
        // Rolled back to a version-1 config, which carries no MAC.
        |v| {
            v["version"] = 1.into();
            v.as_object_mut().unwrap().remove("mac");
        },
    ];
    for forge in forgeries {
        let mut v = original.clone();
        forge(&mut v);
        write_config(&repo, &v);
        refused(
            &repo.run(&["snapshots"]),
            "config file is damaged: it is not authenticated by this repository's key: refusing \
             (it may have been replaced)",
        );
    }
    write_config(&repo, &original);
    repo.ok(&["snapshots"]);
}

#[test]
fn issue_9_absurd_sizes_are_refused_naming_the_field() {
    let repo = Repo::init();
    let cases: [Forgery; 3] = [
        ("chunker.min_size 64 is outside 1024..=1048576", |v| {
            v["chunker"]["min_size"] = 64.into();
            v["chunker"]["avg_size"] = 256.into();
            v["chunker"]["max_size"] = 1024.into();
        }),
        ("pack_size 1073741824 is outside 65536..=134217728", |v| {
            v["pack_size"] = (1u32 << 30).into();
        }),
        ("pack_size 1024 is outside", |v| {
            v["pack_size"] = 1024.into();
        }),
    ];
    let original = config(&repo);
    for (field, forge) in cases {
        let mut v = original.clone();
        forge(&mut v);
        write_config(&repo, &v);
        refused(&repo.run(&["snapshots"]), field);
    }
    // init refuses them as well.
    let other = empty_location();
    let out = other.run(&["init", "--pack-size", "1073741824"]);
    refused(&out, "pack_size 1073741824 is outside");
    assert!(!other.path.exists());
}

/// A location where no repository exists yet.
fn empty_location() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    Repo {
        path: dir.path().join("repo"),
        dir,
        env: Vec::new(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A repository written by the previous release (config version 1), password "test password".
fn version_1_repository() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-encrypted"),
        &path,
    );
    Repo {
        dir,
        path,
        env: Vec::new(),
    }
}

#[test]
fn issue_9_version_1_repository_opens_and_a_writer_authenticates_its_config() {
    let repo = version_1_repository();
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(config(&repo)["version"], 1, "reading does not rewrite it");
    let before = config(&repo);

    // A writer upgrades it: same settings, version 2, with a MAC.
    let src = source(&repo);
    repo.ok(&["backup", src.to_str().unwrap()]);
    let after = config(&repo);
    assert_eq!(after["version"], 2);
    assert_eq!(after["mac"].as_str().unwrap().len(), 64);
    for field in ["id", "encryption", "compression", "chunker", "pack_size"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let target = repo.dir.path().join("restored");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);

    // From now on a changed config is refused ...
    let mut forged = after.clone();
    forged["pack_size"] = (64 << 20).into();
    write_config(&repo, &forged);
    refused(&repo.run(&["snapshots"]), "not authenticated");
    // ... and so is the rollback to version 1, for a key added since (documented: the old
    // key, written before configs were authenticated, cannot tell).
    write_config(&repo, &after);
    let out = repo
        .cmd()
        .env("TIDEMARK_NEW_PASSWORD", "second")
        .args(["key", "add"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    write_config(&repo, &before);
    refused(
        &repo
            .cmd()
            .env("TIDEMARK_PASSWORD", "second")
            .arg("snapshots")
            .output()
            .unwrap(),
        "not authenticated",
    );
    repo.ok(&["snapshots"]);
}

#[test]
fn issue_9_key_add_on_a_version_1_repository_authenticates_the_config_first() {
    let repo = version_1_repository();
    let out = repo
        .cmd()
        .env("TIDEMARK_NEW_PASSWORD", "second")
        .args(["key", "add"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(config(&repo)["version"], 2);
    for pw in ["second", "test password"] {
        let out = repo
            .cmd()
            .env("TIDEMARK_PASSWORD", pw)
            .arg("snapshots")
            .output()
            .unwrap();
        assert!(out.status.success(), "{pw}: {}", stderr(&out));
    }
}

#[test]
fn issue_9_key_file_with_absurd_argon2_costs_is_refused_quickly() {
    let repo = Repo::init();
    let keys = repo.path.join("keys");
    let key = std::fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut kf: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    // 64 MiB and 100 passes: within the old bounds, and seconds of work for each open.
    kf["m_cost_kib"] = 65536.into();
    kf["t_cost"] = 100.into();
    std::fs::write(&key, serde_json::to_vec(&kf).unwrap()).unwrap();
    let start = Instant::now();
    let out = repo.run(&["snapshots"]);
    let took = start.elapsed();
    refused(&out, "Argon2id t_cost 100 is outside 1..=10");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // 64 GiB of memory: refused before anything is allocated.
    kf["m_cost_kib"] = (64u64 << 20).into();
    kf["t_cost"] = 3.into();
    std::fs::write(&key, serde_json::to_vec(&kf).unwrap()).unwrap();
    let start = Instant::now();
    refused(
        &repo.run(&["snapshots"]),
        "Argon2id m_cost_kib 67108864 is outside",
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn issue_9_empty_passwords_are_refused() {
    const EMPTY: &str = "an empty password is not allowed";
    let fresh = empty_location();
    let out = fresh
        .cmd()
        .env("TIDEMARK_PASSWORD", "")
        .args(["init", "--kdf-memory-kib", "1024", "--kdf-time", "1"])
        .output()
        .unwrap();
    refused(&out, EMPTY);
    assert!(!fresh.path.join("config").exists());

    let repo = Repo::init();
    let out = repo
        .cmd()
        .env("TIDEMARK_NEW_PASSWORD", "")
        .args(["key", "add"])
        .output()
        .unwrap();
    refused(&out, EMPTY);
    assert_eq!(files_under(&repo.path.join("keys")), 1);

    let out = repo
        .cmd()
        .env("TIDEMARK_PASSWORD", "")
        .arg("snapshots")
        .output()
        .unwrap();
    refused(&out, EMPTY);
    let empty_file = repo.dir.path().join("empty-password");
    std::fs::write(&empty_file, "\n").unwrap();
    let out = repo
        .cmd()
        .arg("--password-file")
        .arg(&empty_file)
        .arg("snapshots")
        .output()
        .unwrap();
    refused(&out, EMPTY);
}
