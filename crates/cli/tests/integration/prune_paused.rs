//! Writers paused past their lease (`kill -STOP`, as a laptop sleeps or a VM is suspended) while
//! `prune` runs twice: the writer either fails cleanly ("paused too long") or finishes, and the
//! repository passes `check --read-data` with every snapshot restoring (`docs/format.md` §19).
//!
//! Every process (the writer and each prune) is given the hidden `--lease-for-testing 2s`: a
//! session lapses after 2 s and is dead to prune after 6 s.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::common::Repo;

/// The flag that shortens the lease of every process here: all must agree on it (§19).
const LEASE: [&str; 2] = ["--lease-for-testing", "2s"];
/// Past `dead_after` (3 × the lease) by prune's clock.
const PAUSE: Duration = Duration::from_secs(7);

/// Kills the child if the test fails while it is stopped (it would hold the test's pipes).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Reaper {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaper {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn signal(child: &Child, s: Signal) {
    kill(Pid::from_raw(child.id() as i32), s).unwrap();
}

/// Whether the process is stopped (state `T` in /proc).
fn stopped(child: &Child) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // "pid (comm) S …": the state follows the last ')'.
    stat.rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('T'))
}

fn count_files(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn write_files(dir: &Path, n: u64, len: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("f{i:02}")),
            tidemark_testkit::seeded_bytes(len, seed + i),
        )
        .unwrap();
    }
}

fn prune_twice(repo: &Repo) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for k in 0..2 {
        if k == 1 {
            std::thread::sleep(PAUSE);
        }
        let o = repo
            .cmd()
            .args(LEASE)
            .args(["--json", "prune", "--keep-condemned", "0s"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "prune: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        eprintln!("prune {k}: {r}");
        out.push(r);
    }
    out
}

/// Stops `writer` (SIGSTOP) and, once it is stopped, prunes twice past its lease; asserts that the
/// second prune deleted packs, or the pause would test nothing.
fn stop_and_prune_twice(repo: &Repo, writer: &std::process::Child) {
    signal(writer, Signal::SIGSTOP);
    while !stopped(writer) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let prunes = prune_twice(repo);
    assert!(
        prunes[1]["packs_deleted"].as_u64().unwrap() > 0,
        "the second prune deleted nothing, so the pause tested nothing: {}",
        prunes[1]
    );
}

/// `check --read-data` passes and every snapshot restores.
fn assert_repository_intact(repo: &Repo) {
    repo.ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    for (k, s) in snaps.as_array().unwrap().iter().enumerate() {
        let target = repo.dir.path().join(format!("restore-{k}"));
        repo.ok(&[
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ]);
    }
}

/// Collects a child's stderr on a thread.
fn stderr_of(child: &mut Child) -> Arc<Mutex<String>> {
    let mut err = child.stderr.take().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A backup that has loaded the index and reuses the blobs of a forgotten snapshot is stopped;
/// prune condemns those blobs' packs, and after the writer's session looks dead, deletes them.
#[test]
fn prune_twice_while_a_backup_is_stopped_past_its_lease() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    // Data only a forgotten snapshot uses: the next backup finds it in the index and reuses it.
    write_files(&src.join("a"), 4, 300_000, 1);
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    repo.ok(&["forget", snaps[0]["id"].as_str().unwrap()]);
    // ~96 MiB of new data: seconds of work, so it can be stopped half way.
    write_files(&src.join("b"), 24, 4 << 20, 100);
    let data = repo.path.join("data");
    let packs_before = count_files(&data);

    let mut backup = Reaper(
        repo.cmd()
            .args(LEASE)
            .args(["backup", "--quiet", src.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = stderr_of(&mut backup);
    // Its first new pack means it has loaded the index (and the deletion records).
    let t = Instant::now();
    while count_files(&data) == packs_before {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup finished before it could be stopped"
        );
        assert!(t.elapsed() < Duration::from_secs(120), "no pack stored");
        std::thread::sleep(Duration::from_millis(2));
    }
    stop_and_prune_twice(&repo, &backup);
    signal(&backup, Signal::SIGCONT);
    let status = backup.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = err.lock().unwrap().clone();
    eprintln!("backup: {status:?}\n{err}");
    assert!(
        status.success() || err.contains("paused too long"),
        "the backup neither finished nor failed cleanly: {status:?}\n{err}"
    );
    assert_repository_intact(&repo);
}

/// `watch` is stopped after a file it had stored was deleted and its snapshots forgotten;
/// prune deletes that file's pack; the file comes back with the same bytes before `watch` wakes.
#[test]
fn prune_twice_while_watch_is_stopped_past_its_lease() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    write_files(&src.join("keep"), 2, 50_000, 1);
    let state = repo.dir.path().join("state");
    let mut watch = Reaper(
        repo.cmd()
            .args(LEASE)
            .args([
                "watch",
                "--json",
                "--seal-interval",
                "100ms",
                "--view-every",
                "200ms",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg(&src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = stderr_of(&mut watch);
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    {
        let (out, l) = (watch.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    l.lock().unwrap().push(v);
                }
            }
        });
    }
    let seals = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message_type"] == "sealed")
            .count()
    };
    let wait_seal = |after: usize| {
        let t = Instant::now();
        while seals() <= after {
            assert!(t.elapsed() < Duration::from_secs(60), "no seal");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let a seal of anything still pending follow.
        std::thread::sleep(Duration::from_millis(600));
    };
    wait_seal(0);
    let x = tidemark_testkit::seeded_bytes(300_000, 77);
    std::fs::write(src.join("x"), &x).unwrap();
    wait_seal(seals());
    std::fs::remove_file(src.join("x")).unwrap();
    wait_seal(seals());
    repo.ok(&["forget", "--keep-last", "1"]);

    stop_and_prune_twice(&repo, &watch);
    // The same bytes again: a watch that still trusts its old index would reuse the deleted blob.
    std::fs::write(src.join("x"), &x).unwrap();
    let before = seals();
    signal(&watch, Signal::SIGCONT);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break Some(s);
        }
        if seals() > before + 1 || t.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = status.unwrap_or_else(|| {
        signal(&watch, Signal::SIGTERM);
        watch.wait().unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    let err = err.lock().unwrap().clone();
    eprintln!("watch: {status:?}, {} seals after waking", seals() - before);
    assert!(
        status.success() || err.contains("paused too long"),
        "watch neither went on nor failed cleanly: {status:?}\n{err}"
    );
    assert_repository_intact(&repo);
}
