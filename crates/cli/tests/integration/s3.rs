//! Every command on a repository in an S3 bucket (a real server: `s3s-fs`, started per test).
//! Skipped with a message when `s3s-fs` is not installed, unless `TIDEMARK_REQUIRE_S3` is set.

use std::path::Path;

use tidemark_testkit::S3Server;

use super::common::{every_kind_tree, restored, tree_difference_except_atime, Repo};

fn assert_restores(repo: &Repo, src: &Path, name: &str) {
    let target = repo.dir.path().join(name);
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    if let Some(d) = tree_difference_except_atime(src, &restored(&target, src)) {
        panic!("{name}: {d}");
    }
}

fn json(repo: &Repo, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = repo.ok(&all);
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn every_command_works_on_an_s3_repository() {
    let Some(server) = S3Server::start() else {
        return;
    };
    // 32 MiB packs: the 20 MiB file below makes a pack above the multipart threshold.
    let repo = Repo::init_s3(&server, "nas/one", &["--pack-size", "33554432"]);
    // A second init on the same prefix is refused.
    let again = repo.run(&["init", "--kdf-memory-kib", "1024", "--kdf-time", "1"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    // Random, so it does not compress: one pack of ~20 MiB, uploaded in parts.
    std::fs::write(
        src.join("big.bin"),
        tidemark_testkit::seeded_bytes(20 << 20, 3),
    )
    .unwrap();
    let first = json(&repo, &["backup", src.to_str().unwrap()]);
    assert_eq!(first["message_type"], "summary", "{first}");
    std::fs::write(src.join("dir/small.txt"), "changed\n").unwrap();
    let second = json(&repo, &["backup", src.to_str().unwrap()]);

    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    assert!(repo.ok(&["ls", "latest"]).contains("small.txt"));
    let diff = repo.ok(&[
        "diff",
        first["snapshot_id"].as_str().unwrap(),
        second["snapshot_id"].as_str().unwrap(),
    ]);
    assert!(diff.contains("small.txt"), "{diff}");
    repo.ok(&["stats"]);
    repo.ok(&["cat", "config"]);
    repo.ok(&["key", "list"]);
    assert_restores(&repo, &src, "r1");
    repo.ok(&["check", "--read-data"]);
    repo.ok(&["check", "--read-data-subset", "1/2"]);
    let repaired = json(&repo, &["repair", "index"]);
    assert!(
        repaired["packs_indexed"].as_u64().unwrap() > 0,
        "{repaired}"
    );
    repo.ok(&["check"]);

    // Lifecycle: forget the first, prune, and everything kept still restores.
    repo.ok(&["policy", "show"]);
    repo.ok(&["forget", "--keep-last", "1"]);
    repo.ok(&["prune", "--keep-condemned", "0s"]);
    repo.ok(&["prune", "--keep-condemned", "0s"]);
    repo.ok(&["check", "--read-data"]);
    assert_restores(&repo, &src, "r2");

    // copy S3 → local directory, and init --from-repo from S3.
    let local = Repo::init();
    let copied = super::copy::copy_json(&local, &repo, &[]);
    assert_eq!(copied["snapshots_copied"], 1, "{copied}");
    assert_restores(&local, &src, "r3");

    // watch into the bucket: a change is sealed there.
    let state = repo.dir.path().join("state");
    let daemon = super::watch::Daemon::start(&repo, &src, &state, None);
    std::fs::write(src.join("while-watching.txt"), "seen by watch\n").unwrap();
    let mut n = 10;
    super::watch::converge(&repo, &src, &mut n, "a create under watch on S3");
    daemon.stop();
    repo.ok(&["status", "--state-dir", state.to_str().unwrap()]);

    // mount reads from the bucket.
    if let Some(why) = super::mount::fuse_unusable() {
        eprintln!("mount on S3 skipped: {why}");
    } else {
        let mnt = repo.dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let m = super::mount::Mounted::start(&repo, &mnt).unwrap();
        let latest = restored(&mnt.join("latest"), &src);
        let got = std::fs::read(latest.join("while-watching.txt")).unwrap();
        assert_eq!(got, b"seen by watch\n");
        let status = m.stop(nix::sys::signal::Signal::SIGINT);
        assert!(status.success());
    }
    repo.ok(&["check", "--read-data"]);
}
