//! `copy` between repositories with other keys (re-encrypted) and with shared keys
//! (`init --from-repo`: envelopes moved as they are), sending only what the target lacks.

use super::common::{every_kind_tree, restored, tree_difference_except_atime, Repo};

pub fn copy_json(to: &Repo, from: &Repo, extra: &[&str]) -> serde_json::Value {
    let mut cmd = to.cmd();
    cmd.envs(from.env.iter().copied())
        .env("TIDEMARK_FROM_PASSWORD", "test password")
        .args(["--json", "copy", "--from-repo"])
        .arg(&from.path)
        .args(extra);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_restores(repo: &Repo, src: &std::path::Path, name: &str) {
    let target = repo.dir.path().join(name);
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    if let Some(d) = tree_difference_except_atime(src, &restored(&target, src)) {
        panic!("{name}: {d}");
    }
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn copy_between_repositories_sends_only_what_is_missing() {
    let a = Repo::init();
    let src = a.dir.path().join("src");
    every_kind_tree(&src);
    a.ok(&["backup", "--quiet", src.to_str().unwrap()]);

    // Other keys: everything is re-encrypted, trees rewritten.
    let b = Repo::init();
    let r = copy_json(&b, &a, &[]);
    assert_eq!(r["same_keys"], false, "{r}");
    assert_eq!(r["snapshots_copied"], 1, "{r}");
    assert_restores(&b, &src, "b1");
    let again = copy_json(&b, &a, &[]);
    assert_eq!(again["snapshots_copied"], 0, "{again}");
    assert_eq!(again["snapshots_skipped"], 1, "{again}");

    // A change in the source: only its new data moves.
    std::fs::write(src.join("added.txt"), "new file").unwrap();
    a.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    let more = copy_json(&b, &a, &[]);
    assert_eq!(more["snapshots_copied"], 1, "{more}");
    assert!(
        more["bytes_copied"].as_u64().unwrap() < r["bytes_copied"].as_u64().unwrap() / 4,
        "{more} after {r}"
    );
    assert_restores(&b, &src, "b2");

    // Shared keys: envelopes as they are.
    let c = Repo::init_with(
        &["--from-repo", a.path.to_str().unwrap()],
        &[("TIDEMARK_FROM_PASSWORD", "test password")],
    );
    let r = copy_json(&c, &a, &["latest"]);
    assert_eq!(r["same_keys"], true, "{r}");
    assert_eq!(r["snapshots_copied"], 1, "{r}");
    assert_restores(&c, &src, "c1");
    let again = copy_json(&c, &a, &["latest"]);
    assert_eq!(again["snapshots_copied"], 0, "{again}");
}
