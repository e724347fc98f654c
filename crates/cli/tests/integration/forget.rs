//! `forget` and `policy` on real repositories: plans, dry runs, ids, the stored default.

use super::common::{assert_same_tree, restored, Repo};

fn count(repo: &Repo) -> usize {
    let v: serde_json::Value = serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    v.as_array().unwrap().len()
}

/// Ten snapshots of `src`, six hours apart from 2026-06-01T00:00Z.
fn history(repo: &Repo) -> std::path::PathBuf {
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for k in 0..10 {
        std::fs::write(src.join("f"), format!("version {k}")).unwrap();
        let t = format!("2026-06-{:02}T{:02}:00:00Z", 1 + k * 6 / 24, k * 6 % 24);
        repo.ok(&[
            "backup",
            "--quiet",
            "--host",
            "h",
            "--time",
            &t,
            src.to_str().unwrap(),
        ]);
    }
    src
}

#[test]
fn forget_by_policy_by_id_and_by_the_stored_default() {
    let repo = Repo::init();
    let src = history(&repo);
    assert_eq!(count(&repo), 10);

    let plan: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "--json",
        "forget",
        "--keep-last",
        "2",
        "--keep-daily",
        "2",
        "--dry-run",
    ]))
    .unwrap();
    assert_eq!(count(&repo), 10, "a dry run deletes nothing");
    assert_eq!(plan["forgotten"], 7, "{plan}");
    let keep = plan["groups"][0]["keep"].as_array().unwrap();
    let reasons: Vec<String> = keep
        .iter()
        .map(|k| format!("{} {}", k["time"], k["reasons"]))
        .collect();
    assert_eq!(
        reasons,
        [
            r#""2026-06-03T06:00:00+00:00" ["last","daily"]"#,
            r#""2026-06-03T00:00:00+00:00" ["last"]"#,
            r#""2026-06-02T18:00:00+00:00" ["daily"]"#,
        ],
        "{plan}"
    );

    let out = repo.ok(&["forget", "--keep-last", "2", "--keep-daily", "2"]);
    assert!(out.contains("forgot 7 of 10 snapshots"), "{out}");
    assert_eq!(count(&repo), 3);
    let target = repo.dir.path().join("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));

    // By id.
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    let oldest = snaps[0]["short_id"].as_str().unwrap().to_string();
    repo.ok(&["forget", &oldest]);
    assert_eq!(count(&repo), 2);
    let both = repo.run(&["forget", &oldest[..4], "--keep-last", "1"]);
    assert!(!both.status.success());

    // The stored default applies without flags.
    let shown = repo.ok(&["policy", "show"]);
    assert!(shown.contains("built-in default"), "{shown}");
    repo.ok(&["policy", "set", "--keep-last", "1"]);
    let shown = repo.ok(&["policy", "show"]);
    assert!(shown.starts_with("last 1 (repository)"), "{shown}");
    repo.ok(&["forget"]);
    assert_eq!(count(&repo), 1);
    repo.ok(&["policy", "reset"]);
    assert!(repo.ok(&["policy", "show"]).contains("built-in default"));
    let refused = repo.run(&["policy", "set"]);
    assert!(!refused.status.success());
    repo.ok(&["check"]);
}

#[test]
fn the_built_in_default_keeps_recent_half_second_snapshots() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    // Six snapshots half a second apart two hours ago, and one now-ish: the default keeps all
    // within an hour of the newest, and one per minute before that.
    for k in 0..6 {
        let t = format!("2026-06-01T10:00:0{}.{}Z", k / 2, (k % 2) * 5);
        repo.ok(&["backup", "--quiet", "--time", &t, src.to_str().unwrap()]);
    }
    repo.ok(&[
        "backup",
        "--quiet",
        "--time",
        "2026-06-01T12:00:00Z",
        src.to_str().unwrap(),
    ]);
    let out = repo.ok(&["forget", "--dry-run"]);
    assert!(out.contains("would forget 5 of 7"), "{out}");
}
