//! The binary on real trees: every entry kind round-trips; listing, diff, check, keys, errors.

use std::path::Path;

use super::common::{assert_same_tree, every_kind_tree, is_root, restored, Repo};

fn backup_json(repo: &Repo, src: &Path) -> serde_json::Value {
    let out = repo.ok(&["backup", "--json", src.to_str().unwrap()]);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .expect("summary line");
    serde_json::from_str(summary).unwrap()
}

#[test]
fn every_entry_kind_round_trips() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    let s = backup_json(&repo, &src);
    assert_eq!(s["errors"], 0);
    let target = repo.dir.path().join("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn second_backup_reads_nothing_and_dedups() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    let first = backup_json(&repo, &src);
    let second = backup_json(&repo, &src);
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged files must not be read: {second}"
    );
    assert_eq!(second["data_blobs"], 0, "{second}");
    // Only trees of the ancestors above the test's temp dir (e.g. /tmp, which other tests
    // change concurrently) may be new.
    assert!(second["data_added"].as_u64().unwrap() < 4096, "{second}");
    assert_eq!(second["parent"], first["snapshot_id"]);
    // Two identical 5 MiB files are stored once; the 32 MiB sparse file is mostly one 4 MiB
    // zero chunk. Without dedup this would be over 18 MiB.
    let stats: serde_json::Value = serde_json::from_str(&repo.ok(&["stats", "--json"])).unwrap();
    assert!(
        stats["total_uncompressed_size"].as_u64().unwrap() < 15 << 20,
        "{stats}"
    );
}

#[test]
fn ls_diff_snapshots_cat() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    backup_json(&repo, &src);
    std::fs::write(src.join("dir/small.txt"), b"changed").unwrap();
    std::fs::write(src.join("added"), b"new").unwrap();
    std::fs::remove_file(src.join("empty-file")).unwrap();
    backup_json(&repo, &src);
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let (a, b) = (
        snaps[0]["short_id"].as_str().unwrap(),
        snaps[1]["short_id"].as_str().unwrap(),
    );
    let diff = repo.ok(&["diff", a, b]);
    let base = src.display().to_string();
    assert!(
        diff.contains(&format!("M    {base}/dir/small.txt")),
        "{diff}"
    );
    assert!(diff.contains(&format!("+    {base}/added")), "{diff}");
    assert!(diff.contains(&format!("-    {base}/empty-file")), "{diff}");
    assert!(!diff.contains("big.bin"), "{diff}");
    let ls = repo.ok(&["ls", "latest", &format!("{base}/dir")]);
    assert!(
        ls.lines().any(|l| l == format!("{base}/dir/sub/big.bin")),
        "{ls}"
    );
    let long = repo.ok(&["ls", "-l", "latest"]);
    assert!(
        long.lines()
            .any(|l| l.starts_with("l0777") && l.ends_with("/link-rel")),
        "{long}"
    );
    let cat: serde_json::Value = serde_json::from_str(&repo.ok(&["cat", "snapshot", b])).unwrap();
    assert_eq!(cat["paths"][0], base);
    let tree: serde_json::Value =
        serde_json::from_str(&repo.ok(&["cat", "tree", cat["tree"].as_str().unwrap()])).unwrap();
    assert!(tree["nodes"].is_array());
    let config: serde_json::Value = serde_json::from_str(&repo.ok(&["cat", "config"])).unwrap();
    assert_eq!(config["chunker"]["algorithm"], "fastcdc-v2020");
}

#[test]
fn restore_include_only_restores_that_subtree() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    backup_json(&repo, &src);
    let target = repo.dir.path().join("t");
    let inc = src.join("dir/sub");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        inc.to_str().unwrap(),
    ]);
    assert!(restored(&target, &inc).join("big.bin").exists());
    assert!(!restored(&target, &src).join("empty-file").exists());
    assert_same_tree(&inc, &restored(&target, &inc));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        std::fs::write(src.join(format!("a-rather-long-file-name-{i:05}")), "x").unwrap();
    }
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    // `tidemark ls latest | head -1`: ~200 KiB of names, more than a pipe holds.
    let mut child = repo
        .cmd()
        .args(["ls", "latest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(141),
        "exits as a process killed by SIGPIPE shows"
    );
}

#[test]
fn wrong_password_and_missing_repository_are_one_line_errors() {
    let repo = Repo::init();
    let out = repo
        .cmd()
        .env("TIDEMARK_PASSWORD", "wrong")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong password") && err.lines().count() == 1,
        "{err}"
    );
    let missing = Repo {
        dir: tempfile::tempdir().unwrap(),
        path: repo.dir.path().join("nope"),
        env: Vec::new(),
    };
    let out = missing.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("no repository at") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn damaged_files_are_reported_with_ids_and_paths() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    backup_json(&repo, &src);
    // Flip one bit in the middle of the biggest pack (data blobs), and truncate the config's twin:
    let mut packs: Vec<_> = walkdir(&repo.path.join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    repo.ok(&["check"]); // structure is intact: headers and index still agree
    let out = repo.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BLAKE3 mismatch"), "{text}");
    assert!(
        text.contains("error: blob ") && text.contains("affects snapshot"),
        "{text}"
    );
    // Restore fails only the files using the damaged blob, names them, exit code 3.
    let target = repo.dir.path().join("t");
    let out = repo.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(restored(&target, &src).join("dir/small.txt").exists() || err.contains("small.txt"));
    // A truncated pack is a clear error for check too.
    std::fs::write(victim, &bytes[..bytes.len() - 3]).unwrap();
    let out = repo.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("magic"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn garbage_objects_give_clear_errors_not_panics() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    backup_json(&repo, &src);
    for dir in ["snapshots", "index"] {
        for f in walkdir(&repo.path.join(dir)) {
            std::fs::write(&f, b"garbage").unwrap();
        }
    }
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = repo.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(repo.path.join("config"), b"{\"version\": 9}").unwrap();
    let out = repo.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config") && !err.contains("panicked"), "{err}");
}

#[test]
fn keys_add_list_remove() {
    let repo = Repo::init();
    let out = repo
        .cmd()
        .env("TIDEMARK_NEW_PASSWORD", "second")
        .args(["key", "add"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: serde_json::Value =
        serde_json::from_str(&repo.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let current = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The new password opens the repository.
    let out = repo
        .cmd()
        .env("TIDEMARK_PASSWORD", "second")
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(out.status.success());
    // The key in use cannot be removed; with the other password it can.
    assert!(!repo.run(&["key", "remove", &current[..8]]).status.success());
    let out = repo
        .cmd()
        .env("TIDEMARK_PASSWORD", "second")
        .args(["key", "remove", &current[..8]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !repo.run(&["snapshots"]).status.success(),
        "the removed password must no longer work"
    );
}

#[test]
fn unencrypted_repository_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo {
        path: dir.path().join("plain"),
        dir,
        env: Vec::new(),
    };
    let out = repo
        .cmd()
        .env_remove("TIDEMARK_PASSWORD")
        .args(["init", "--insecure-no-encryption"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    let out = repo
        .cmd()
        .env_remove("TIDEMARK_PASSWORD")
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = repo.dir.path().join("t");
    let out = repo
        .cmd()
        .env_remove("TIDEMARK_PASSWORD")
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn excludes_and_one_file_system() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(src.join("cache/x")).unwrap();
    std::fs::write(src.join("keep.txt"), b"k").unwrap();
    std::fs::write(src.join("skip.tmp"), b"s").unwrap();
    std::fs::write(src.join("cache/x/f"), b"c").unwrap();
    let ex = repo.dir.path().join("excludes");
    std::fs::write(&ex, "# comment\ncache\n").unwrap();
    repo.ok(&[
        "backup",
        "-x",
        "--exclude",
        "*.tmp",
        "--exclude-file",
        ex.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let ls = repo.ok(&["ls", "latest"]);
    assert!(
        ls.contains("keep.txt") && !ls.contains("skip.tmp") && !ls.contains("cache"),
        "{ls}"
    );
}

#[test]
fn unreadable_file_gives_exit_code_3_and_a_snapshot() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    std::fs::write(src.join("locked"), b"no").unwrap();
    std::fs::set_permissions(
        src.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let mut cmd = repo.cmd();
    if is_root() {
        // root reads everything: drop to nobody, with a repository and tree it may use.
        for p in [&repo.dir.path().to_path_buf(), &repo.path, &src] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
        for e in super::cli::walkdir(&repo.path)
            .into_iter()
            .chain([src.join("ok"), src.join("locked")])
        {
            std::os::unix::fs::chown(&e, Some(65534), Some(65534)).unwrap();
        }
        chown_dirs(&repo.path);
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(super::common::bin());
        c.env_clear()
            .env("TIDEMARK_PASSWORD", "test password")
            .env("HOME", repo.dir.path())
            .arg("--repo")
            .arg(&repo.path);
        cmd = c;
    }
    let out = cmd
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"));
    assert!(repo.ok(&["ls", "latest"]).contains("/ok"));
}

fn chown_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        if p.is_dir() {
            chown_dirs(&p);
        }
    }
}

#[test]
fn restore_refuses_to_follow_a_symlink_in_the_target() {
    // A pre-existing symlink where the snapshot has a directory must be replaced, not followed.
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"inside").unwrap();
    repo.ok(&["backup", src.to_str().unwrap()]);
    let target = repo.dir.path().join("t");
    let outside = repo.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let d = restored(&target, &src).join("d");
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &d).unwrap();
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(
        !outside.join("f").exists(),
        "restore wrote through a symlink"
    );
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"inside");
}

#[test]
fn embedded_default_repository_is_created_once_with_a_private_password_file() {
    let home = tempfile::tempdir().unwrap();
    let src = home.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"hello").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(super::common::bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["backup", src.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created the default repository"), "{err}");
    let pw = home.path().join(".local/share/tidemark/password");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&pw).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "the password file must be readable only by the user"
    );
    assert!(home
        .path()
        .join(".local/share/tidemark/repository/config")
        .exists());
    // Said once: the second run is quiet about it and finds the first snapshot as parent.
    let out = run(&["backup", src.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("created"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("using parent snapshot"));
    let out = run(&["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // The repository is really encrypted with that password.
    let config: serde_json::Value =
        serde_json::from_slice(&run(&["cat", "config"]).stdout).unwrap();
    assert_eq!(config["encryption"], "xchacha20poly1305-argon2id");
}

#[test]
fn a_huge_file_streams_in_bounded_memory() {
    // 4 GiB, sparse on disk: reading it costs time, not disk. Memory must not follow the size.
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("huge.img")).unwrap();
    f.set_len(4 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"marker", 3 << 30).unwrap();
    drop(f);
    let s = backup_json(&repo, &src);
    assert_eq!(s["bytes_read"], 4u64 << 30);
    let rss = s["peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss > 0 && rss < 200 << 20,
        "peak RSS {rss} for a 4 GiB file"
    );
    let target = repo.dir.path().join("t");
    let out = repo.ok(&[
        "restore",
        "latest",
        "--json",
        "--target",
        target.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(
        summary["peak_rss_bytes"].as_u64().unwrap() < 200 << 20,
        "{summary}"
    );
    let restored = restored(&target, &src).join("huge.img");
    let m = std::fs::metadata(&restored).unwrap();
    assert_eq!(m.len(), 4 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 1 << 20,
        "holes must stay holes"
    );
    let mut buf = [0u8; 6];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&restored).unwrap(),
        &mut buf,
        3 << 30,
    )
    .unwrap();
    assert_eq!(&buf, b"marker");
}

#[test]
fn huge_directories_are_paged_and_round_trip() {
    // Page sizes are geometric (mean 256, boundaries keyed per repository), so the page holding
    // the changed entry is size-biased: with 3000 entries it held over a third of them about one
    // run in ten. With 20,000 entries a page of a fifth (4000) has odds below 1e-5.
    const FILES: usize = 20_000;
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    let flat = src.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for i in 0..FILES {
        std::fs::write(flat.join(format!("file-{i:05}")), format!("{i}\n")).unwrap();
    }
    let first = backup_json(&repo, &src);
    let target = repo.dir.path().join("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));

    // Reading the files in the first backup may have changed their atimes; back up once more so
    // that only the next change differs.
    backup_json(&repo, &src);
    // One changed entry rewrites one page (or two) and the index, not the whole listing.
    std::fs::write(flat.join("file-01234"), "changed\n").unwrap();
    let second = backup_json(&repo, &src);
    let whole = first["data_added"].as_u64().unwrap();
    let one = second["data_added"].as_u64().unwrap();
    // Pages hold 256 entries on average but vary (the boundaries are content-defined), so
    // compare with a fifth of the whole listing (~78 pages here).
    assert!(
        one * 5 < whole && second["tree_blobs"].as_u64().unwrap() <= 8,
        "trees written: {whole} bytes for the whole listing, {one} after one change: {second}"
    );
    let diff = repo.ok(&[
        "diff",
        "--json",
        first["snapshot_id"].as_str().unwrap(),
        "latest",
    ]);
    let changed: Vec<&str> = diff.lines().filter(|l| l.contains("file-")).collect();
    assert_eq!(changed.len(), 1, "{diff}");
    assert!(changed[0].contains("file-01234"), "{diff}");
    let ls = repo.ok(&["ls", "latest"]);
    assert_eq!(
        ls.lines().filter(|l| l.contains("/flat/file-")).count(),
        FILES
    );
    std::fs::remove_dir_all(&target).unwrap();
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
    repo.ok(&["check", "--read-data"]);
}
