//! `kill -9` of a real backup process at random moments: the repository always passes
//! `check`, and the next backup finishes without re-sending what was stored.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::common::{assert_same_tree, restored, Repo};

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    n
}

#[test]
fn kill_9_during_backup_leaves_a_usable_repository() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // ~96 MiB of incompressible data in 24 files: a few seconds of work to interrupt.
    for i in 0..24u64 {
        std::fs::write(
            src.join(format!("f{i:02}")),
            tidemark_testkit::seeded_bytes(4 << 20, i),
        )
        .unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut killed = 0;
    for round in 0..5 {
        let mut child = repo
            .cmd()
            .args(["backup", "--quiet", src.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..1500)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let out = repo.run(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "round {round}: check failed after kill -9:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        killed > 0,
        "no backup was interrupted; the test proves nothing"
    );
    let stored = dir_bytes(&repo.path.join("data"));
    let out = repo.ok(&["backup", "--json", src.to_str().unwrap()]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let added = summary["data_added_packed"].as_u64().unwrap();
    assert!(
        added + stored <= (96 << 20) + (8 << 20),
        "re-sent data: stored {stored} before, added {added}"
    );
    let target = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
}
