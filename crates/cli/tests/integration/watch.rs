//! `tidemark watch`: after each kind of change the sealed snapshot equals the tree; `kill -9`
//! at random moments never loses a change the log acknowledged; `recover` and `status`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::common::{restored, tree_difference_except_atime, Repo};

/// A running `tidemark watch --json`, with its output lines collected.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Daemon {
    pub fn start(repo: &Repo, src: &Path, state: &Path, ack: Option<&Path>) -> Daemon {
        Self::start_with(repo, src, state, ack, &[])
    }

    /// Like [`Daemon::start`] with extra `watch` flags.
    pub fn start_with(
        repo: &Repo,
        src: &Path,
        state: &Path,
        ack: Option<&Path>,
        flags: &[&str],
    ) -> Daemon {
        let mut cmd = repo.cmd();
        cmd.args(["watch", "--json", "--seal-interval", "100ms"])
            .args(flags)
            .arg("--state-dir")
            .arg(state)
            .arg(src)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(a) = ack {
            cmd.arg("--ack-log").arg(a);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    l.lock().unwrap().push(v);
                }
            }
        });
        let d = Daemon { child, lines };
        d.wait_for("reconciled", Duration::from_secs(60));
        d
    }

    /// The first output line of type `message`, waiting up to `timeout` for it.
    pub fn wait_for(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["message_type"] == message)
            {
                return v.clone();
            }
            assert!(
                t.elapsed() < timeout,
                "no {message:?} from the daemon within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) -> serde_json::Value {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "watch exits 0 on SIGTERM, got {status:?}");
        self.wait_for("stopped", Duration::from_secs(5))
    }

    /// Output lines of type `message` so far.
    pub fn count(&self, message: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message_type"] == message)
            .count()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and returns how the process exited (whatever it was).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }

    /// Seals reported so far.
    pub fn seals(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message_type"] == "sealed")
            .count()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Restores `latest` into a fresh directory and returns where `src` landed.
fn restore_latest(repo: &Repo, src: &Path, n: &mut u32) -> PathBuf {
    *n += 1;
    let target = repo.dir.path().join(format!("restore-{n}"));
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    restored(&target, src)
}

/// Waits until the latest snapshot equals `src` (the daemon captures, then seals).
pub fn converge(repo: &Repo, src: &Path, n: &mut u32, what: &str) {
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let got = restore_latest(repo, src, n);
        match tree_difference_except_atime(src, &got) {
            None => return,
            Some(diff) => assert!(
                t.elapsed() < Duration::from_secs(20),
                "after {what}, the sealed snapshot does not match the tree: {diff}"
            ),
        }
    }
}

#[test]
fn every_kind_of_change_is_sealed() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    std::fs::write(src.join("docs/a.txt"), b"first version").unwrap();
    std::fs::write(src.join("docs/deep/b.bin"), vec![7u8; 300_000]).unwrap();
    let state = repo.dir.path().join("state");
    let d = Daemon::start(&repo, &src, &state, None);
    let mut n = 0;
    converge(&repo, &src, &mut n, "the initial reconcile");

    type Step = Box<dyn Fn(&Path)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "create",
            Box::new(|s: &Path| std::fs::write(s.join("new.txt"), b"hello").unwrap()),
        ),
        (
            "append",
            Box::new(|s: &Path| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(s.join("docs/a.txt"))
                    .unwrap();
                f.write_all(b" and more").unwrap();
            }),
        ),
        (
            "overwrite",
            Box::new(|s: &Path| std::fs::write(s.join("docs/a.txt"), b"replaced").unwrap()),
        ),
        (
            "truncate",
            Box::new(|s: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(s.join("docs/deep/b.bin"))
                    .unwrap()
                    .set_len(1000)
                    .unwrap();
            }),
        ),
        (
            "rename file",
            Box::new(|s: &Path| {
                std::fs::rename(s.join("new.txt"), s.join("docs/renamed.txt")).unwrap();
            }),
        ),
        (
            "rename directory with contents",
            Box::new(|s: &Path| std::fs::rename(s.join("docs/deep"), s.join("moved")).unwrap()),
        ),
        (
            "symlink",
            Box::new(|s: &Path| {
                std::os::unix::fs::symlink("docs/renamed.txt", s.join("link")).unwrap();
            }),
        ),
        (
            "chmod",
            Box::new(|s: &Path| {
                std::fs::set_permissions(
                    s.join("docs/a.txt"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }),
        ),
        (
            "hardlink",
            Box::new(|s: &Path| std::fs::hard_link(s.join("docs/a.txt"), s.join("hard")).unwrap()),
        ),
        (
            "new directory with files",
            Box::new(|s: &Path| {
                std::fs::create_dir_all(s.join("fresh/a/b")).unwrap();
                for i in 0..20 {
                    std::fs::write(s.join(format!("fresh/a/b/{i}")), format!("{i}")).unwrap();
                }
            }),
        ),
        (
            "delete tree",
            Box::new(|s: &Path| std::fs::remove_dir_all(s.join("fresh")).unwrap()),
        ),
        (
            "delete file",
            Box::new(|s: &Path| std::fs::remove_file(s.join("hard")).unwrap()),
        ),
        (
            "a directory over the paging threshold",
            Box::new(|s: &Path| {
                std::fs::create_dir(s.join("big")).unwrap();
                for i in 0..1300 {
                    std::fs::write(s.join(format!("big/f-{i:04}")), format!("{i}")).unwrap();
                }
            }),
        ),
        (
            "overwrite and delete in a paged directory",
            Box::new(|s: &Path| {
                std::fs::write(s.join("big/f-0500"), b"changed").unwrap();
                std::fs::remove_file(s.join("big/f-0900")).unwrap();
            }),
        ),
    ];
    for (what, step) in &steps {
        step(&src);
        converge(&repo, &src, &mut n, what);
    }
    let stopped = d.stop();
    assert!(stopped["capture"]["files_read"].as_u64().unwrap() >= 5);
    // The moved directory was not read again: its big file was read once, at the start.
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert!(
        snaps.as_array().unwrap().len() >= steps.len(),
        "a snapshot per change"
    );
    let files: u64 = super::common::describe(&src)
        .keys()
        .map(|p| src.join(p))
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum();
    let latest = snaps.as_array().unwrap().last().unwrap();
    assert_eq!(
        latest["summary"]["bytes_total"].as_u64(),
        Some(files),
        "the latest snapshot records the files' total size: {latest}"
    );
}

#[test]
fn status_and_state_directory_checks() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let state = repo.dir.path().join("state");
    let d = Daemon::start(&repo, &src, &state, None);
    std::thread::sleep(Duration::from_millis(1200));
    let st: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "status",
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(st["running"], true);
    assert!(st["engine"]["state_machine"]["sealed"].as_u64().is_some());
    let human = repo.ok(&["status", "--state-dir", state.to_str().unwrap()]);
    assert!(
        human.contains("running") && human.contains("revision"),
        "{human}"
    );
    // A second daemon on the same state directory is refused.
    let out = repo.run(&[
        "watch",
        "--state-dir",
        state.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop();
    let st: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "status",
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(st["running"], false);
    // The state directory belongs to this path.
    let other = repo.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let out = repo.run(&[
        "watch",
        "--state-dir",
        state.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn content(i: u64) -> Vec<u8> {
    let len = 100 + (i * 7919) % 20_000;
    (0..len)
        .map(|k| (k.wrapping_mul(31).wrapping_add(i * 17) % 251) as u8)
        .collect()
}

#[test]
fn kill_9_never_loses_an_acknowledged_change() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let state = repo.dir.path().join("state");
    let ack = repo.dir.path().join("ack.log");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = src.join(format!(".tmp-{i}"));
                std::fs::write(&tmp, content(i)).unwrap();
                std::fs::rename(&tmp, src.join(format!("f-{i}"))).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            i
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut n = 0;
    let rounds = 8;
    for round in 0..rounds {
        let d = Daemon::start(&repo, &src, &state, Some(&ack));
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        d.kill9();
        if round % 2 == 1 {
            // Seal the log without watching, then check that every acknowledged file is there.
            repo.ok(&["recover", "--state-dir", state.to_str().unwrap()]);
            let got = restore_latest(&repo, &src, &mut n);
            check_acknowledged(&ack, &got);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    let d = Daemon::start(&repo, &src, &state, Some(&ack));
    d.stop();
    let got = restore_latest(&repo, &src, &mut n);
    let acked = check_acknowledged(&ack, &got);
    assert!(
        acked > 100,
        "the daemon acknowledged {acked} of {written} files"
    );
    assert_eq!(
        tree_difference_except_atime(&src, &got),
        None,
        "the final snapshot is the tree"
    );
}

/// Every acknowledged `f-<i>` is in the restored tree with exactly its content; returns how many.
fn check_acknowledged(ack: &Path, restored: &Path) -> usize {
    let text = std::fs::read_to_string(ack).unwrap_or_default();
    let mut count = 0;
    for name in text.lines().filter(|l| l.starts_with("f-")) {
        let i: u64 = name[2..].parse().unwrap();
        let got = std::fs::read(restored.join(name))
            .unwrap_or_else(|e| panic!("acknowledged {name} is missing after recovery: {e}"));
        assert!(
            got == content(i),
            "acknowledged {name} is not byte-exact after recovery"
        );
        count += 1;
    }
    // Nothing torn either: every file there is some complete version.
    if let Ok(rd) = std::fs::read_dir(restored) {
        for e in rd.map(Result::unwrap) {
            let name = e.file_name().into_string().unwrap();
            if let Some(i) = name.strip_prefix("f-") {
                assert_eq!(
                    std::fs::read(e.path()).unwrap(),
                    content(i.parse().unwrap()),
                    "{name} is torn"
                );
            }
        }
    }
    count
}

/// `tidemark watch --json | …` whose reader is gone from the start: the first notice cannot be
/// written, which stops the daemon as a signal would: it captures what is there, seals it and
/// exits 141 without a word (before, a panic hook exited at once and nothing was sealed).
#[test]
fn watch_into_a_closed_pipe_seals_and_exits_quietly() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept"), b"sealed on the way out").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = repo
        .cmd()
        .args(["watch", "--json", "--state-dir"])
        .arg(repo.dir.path().join("state"))
        .arg(&src)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let listed: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let target = repo.dir.path().join("restored");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored_file = target.join(src.strip_prefix("/").unwrap()).join("kept");
    assert_eq!(
        std::fs::read(&restored_file).unwrap(),
        b"sealed on the way out"
    );
}
