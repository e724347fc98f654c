//! Issue 9: a repository on a real file system that fills up while `watch` runs. Capture goes
//! on into the log (the state directory is elsewhere), the cause is named in `status`, the seal
//! is retried, and once space is freed the engine catches up by itself; a `watch` stopped while
//! the repository is full says where the changes are, and the next one seals them. Nothing
//! acknowledged is lost, and `check --read-data` passes.
//!
//! Needs root to loop-mount a small ext4 file system: the test fails, not skips, without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::{is_root, Repo};
use super::watch::{converge, Daemon};

/// A small ext4 file system in a file, mounted through a loop device; unmounted on drop.
struct LoopFs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(mib: u64) -> LoopFs {
        assert!(
            is_root(),
            "this test loop-mounts a file system and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .output()
            .expect("mkfs.ext4 (Debian: e2fsprogs)");
        assert!(mkfs.status.success(), "mkfs.ext4: {mkfs:?}");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            mount.status.success(),
            "loop-mounting a file system failed: {}",
            String::from_utf8_lossy(&mount.stderr)
        );
        LoopFs { mnt, _dir: dir }
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.mnt.join("filler")).unwrap();
        let block = vec![0x5a_u8; 1 << 16];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) /* ENOSPC */ => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.mnt.join("filler")).unwrap();
        nix::unistd::sync();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    tidemark_testkit::seeded_bytes(len, seed)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn acknowledged(ack: &Path, name: &str) -> bool {
    std::fs::read_to_string(ack)
        .unwrap_or_default()
        .lines()
        .any(|l| l.ends_with(name))
}

fn status(repo: &Repo, state: &Path) -> serde_json::Value {
    let out = repo.ok(&["status", "--json", "--state-dir", state.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn issue_9_a_full_repository_disk_loses_nothing() {
    let fs = LoopFs::new(48);
    let repo = Repo {
        dir: tempfile::tempdir().unwrap(),
        path: fs.mnt.join("repo"),
        env: Vec::new(),
    };
    repo.init_here(&[], &[]);
    let src = repo.dir.path().join("src");
    let state = repo.dir.path().join("state");
    let ack = repo.dir.path().join("ack.log");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("first.bin"), random(100_000, 1)).unwrap();
    let mut n = 0;

    let mut daemon = Daemon::start(&repo, &src, &state, Some(&ack));
    converge(&repo, &src, &mut n, "the first file");

    // The repository's disk fills up; a 1 MiB file is written and acknowledged all the same.
    fs.fill();
    std::fs::write(src.join("big.bin"), random(1 << 20, 2)).unwrap();
    wait_until("big.bin acknowledged", Duration::from_secs(20), || {
        acknowledged(&ack, "big.bin")
    });
    let failed = daemon.wait_for("store_failed", Duration::from_secs(20));
    let why = failed["reason"].as_str().unwrap().to_string();
    assert!(why.starts_with("repository full: "), "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    wait_until("status names the cause", Duration::from_secs(5), || {
        status(&repo, &state)["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("repository full: "))
    });
    // Capture goes on.
    std::fs::write(src.join("second.bin"), random(300_000, 3)).unwrap();
    wait_until("second.bin acknowledged", Duration::from_secs(20), || {
        acknowledged(&ack, "second.bin")
    });
    assert!(
        daemon.is_running(),
        "watch keeps running while the repository is full"
    );

    // Space comes back: the engine catches up by itself.
    fs.free();
    daemon.wait_for("store_recovered", Duration::from_secs(60));
    converge(&repo, &src, &mut n, "freeing space");
    // status.json is rewritten every second.
    let t = Instant::now();
    loop {
        let st = status(&repo, &state);
        let last = st["last_error"].clone();
        // (`last_error` may also hold an unrelated capture error, which stays until the next.)
        if st["engine"]["state_machine"]["store_error"].is_null()
            && !last.as_str().is_some_and(|e| e.starts_with("repository"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the repository works again, but status still says: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Full again, and `watch` is stopped meanwhile: it exits 1 saying where the changes are.
    fs.fill();
    std::fs::write(src.join("third.bin"), random(1 << 20, 4)).unwrap();
    wait_until("third.bin acknowledged", Duration::from_secs(20), || {
        acknowledged(&ack, "third.bin")
    });
    wait_until("the second failure", Duration::from_secs(20), || {
        daemon.count("store_failed") >= 2
    });
    let exit = daemon.terminate();
    assert_eq!(exit.code(), Some(1), "a stop that cannot seal fails");
    let last = status(&repo, &state)["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.contains("are safe in the log"), "{last}");
    fs.free();

    // The next `watch` seals what the log holds.
    let daemon = Daemon::start(&repo, &src, &state, Some(&ack));
    converge(&repo, &src, &mut n, "a restart after a full disk");
    daemon.stop();
    repo.ok(&["check", "--read-data"]);
}

/// The state directory's own disk fills up: then capture stops with a clear error, and every
/// change acknowledged before is sealed by the next `watch` once there is space again.
#[test]
fn issue_9_a_full_log_disk_stops_capture_with_a_clear_error() {
    let fs = LoopFs::new(16);
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    let state = fs.mnt.join("state");
    let ack = repo.dir.path().join("ack.log");
    std::fs::create_dir(&src).unwrap();
    let mut n = 0;
    let mut child = repo
        .cmd()
        .args(["watch", "--json", "--seal-interval", "100ms", "--ack-log"])
        .arg(&ack)
        .arg("--state-dir")
        .arg(&state)
        .arg(&src)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Changes are acknowledged path by path once the first reconcile is done.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0
        && !line.contains("reconciled")
    {
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    std::fs::write(src.join("first.bin"), random(100_000, 1)).unwrap();
    wait_until("first.bin acknowledged", Duration::from_secs(30), || {
        acknowledged(&ack, "first.bin")
    });
    fs.fill();
    // Bigger than any free scrap the filler left: the log cannot take it.
    std::fs::write(src.join("big.bin"), random(4 << 20, 2)).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "watch did not stop when its log's disk filled up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    // The log or the catalog beside it, whichever wrote first.
    assert!(
        stderr.contains("the log's disk is full")
            || stderr.contains("the state directory's disk is full"),
        "{stderr}"
    );
    assert!(
        !acknowledged(&ack, "big.bin"),
        "nothing is acknowledged after the log failed"
    );
    fs.free();
    let daemon = Daemon::start(&repo, &src, &state, Some(&ack));
    converge(
        &repo,
        &src,
        &mut n,
        "a restart after the log's disk was full",
    );
    daemon.stop();
    repo.ok(&["check", "--read-data"]);
}
