//! `tidemark mount`: the mounted latest snapshot equals the source (contents, symlink targets,
//! modes, sizes, owners, times, xattrs), a large file reads right at random offsets, a snapshot
//! made while mounted shows up, and SIGINT unmounts and exits 0. Needs root and a usable
//! /dev/fuse; skipped (with a message) otherwise, unless `TIDEMARK_REQUIRE_FUSE` is set.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::common::{every_kind_tree, is_root, restored, Repo};

/// Skips a mount test with a message, or fails it when `TIDEMARK_REQUIRE_FUSE` is set (the test
/// script sets it, so CI cannot pass without running them).
fn skip(why: &str) {
    assert!(
        std::env::var_os("TIDEMARK_REQUIRE_FUSE").is_none(),
        "TIDEMARK_REQUIRE_FUSE is set but the mount test cannot run: {why}"
    );
    eprintln!("skipping the mount test: {why}");
}

/// Why FUSE cannot be used here, if it cannot.
pub fn fuse_unusable() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse: {e}")),
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let want = mountpoint.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(want))
}

/// A `tidemark mount` process; dropping it (on a failed assertion) kills it and detaches the
/// mount so the temp directory can go.
pub struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr: PathBuf,
}

impl Mounted {
    /// Starts the mount and waits until it serves; `Err` carries the process's stderr if it
    /// exited first.
    pub fn start(repo: &Repo, mountpoint: &Path) -> Result<Mounted, String> {
        let stderr = repo.dir.path().join("mount.stderr");
        let child = repo
            .cmd()
            .args(["mount", "--refresh", "300ms"])
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child: Some(child),
            mountpoint: mountpoint.to_owned(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if is_mounted(mountpoint) && mountpoint.join("snapshots").is_dir() {
                return Ok(m);
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                return Err(format!("exited with {status}: {}", m.stderr_text()));
            }
            assert!(
                Instant::now() < deadline,
                "the mount did not become ready: {}",
                m.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the mount did not exit after {signal}: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// Compares the mounted copy with the source entry by entry: type, mode, owner, mtime (and
/// ctime for non-directories), size, link count, file bytes, symlink targets, device numbers,
/// xattrs. Returns how many entries were compared.
fn assert_same_as_source(source: &Path, mounted: &Path) -> usize {
    let mut compared = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (dir_a, dir_b) = (source.join(&rel), mounted.join(&rel));
        let list = names(&dir_a);
        assert_eq!(list, names(&dir_b), "listing of {}", rel.display());
        for name in list {
            let (a, b) = (dir_a.join(&name), dir_b.join(&name));
            let what = rel.join(&name);
            let what = what.display();
            let (ma, mb) = (
                std::fs::symlink_metadata(&a).unwrap(),
                std::fs::symlink_metadata(&b).unwrap(),
            );
            let ft = ma.file_type();
            assert_eq!(ft, mb.file_type(), "type of {what}");
            if !ft.is_symlink() {
                assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {what}");
            }
            assert_eq!(
                (ma.uid(), ma.gid()),
                (mb.uid(), mb.gid()),
                "owner of {what}"
            );
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "mtime of {what}"
            );
            if !ft.is_dir() {
                assert_eq!(
                    (ma.ctime(), ma.ctime_nsec()),
                    (mb.ctime(), mb.ctime_nsec()),
                    "ctime of {what}"
                );
                assert_eq!(ma.rdev(), mb.rdev(), "rdev of {what}");
            }
            if ft.is_file() {
                assert_eq!(ma.len(), mb.len(), "size of {what}");
                assert_eq!(ma.nlink(), mb.nlink(), "link count of {what}");
                let (ca, cb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                assert!(ca == cb, "contents of {what} differ");
            }
            if ft.is_symlink() {
                assert_eq!(ma.len(), mb.len(), "size of symlink {what}");
                assert_eq!(
                    std::fs::read_link(&a).unwrap(),
                    std::fs::read_link(&b).unwrap(),
                    "target of {what}"
                );
            } else {
                let mut xa: Vec<_> = xattr::list(&a).unwrap().collect();
                let mut xb: Vec<_> = xattr::list(&b).unwrap().collect();
                xa.sort();
                xb.sort();
                assert_eq!(xa, xb, "xattr names of {what}");
                for x in xa {
                    assert_eq!(
                        xattr::get(&a, &x).unwrap(),
                        xattr::get(&b, &x).unwrap(),
                        "xattr {} of {what}",
                        x.display()
                    );
                }
            }
            if ft.is_dir() {
                stack.push(rel.join(&name));
            }
            compared += 1;
        }
    }
    compared
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
fn read_at(f: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], offset + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn wait_until(what: &str, mounted: &Mounted, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; mount stderr: {}",
            mounted.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mount_shows_snapshots_reads_files_and_unmounts_on_sigint() {
    if let Some(why) = fuse_unusable() {
        skip(&why);
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    every_kind_tree(&src);
    let large = tidemark_testkit::seeded_bytes(24 << 20, 7);
    std::fs::write(src.join("large.bin"), &large).unwrap();
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);

    let mnt = repo.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = match Mounted::start(&repo, &mnt) {
        Ok(m) => m,
        Err(e) if e.contains("Operation not permitted") => {
            skip(&format!("mounting is not permitted here: {e}"));
            return;
        }
        Err(e) => panic!("tidemark mount failed: {e}"),
    };

    let mut top = names(&mnt);
    top.sort();
    assert_eq!(top, ["ids", "latest", "snapshots"]);
    assert_eq!(names(&mnt.join("snapshots")).len(), 1);
    assert_eq!(names(&mnt.join("ids")).len(), 1);
    let latest = restored(&mnt.join("latest"), &src);
    let compared = assert_same_as_source(&src, &latest);
    assert!(compared >= 15, "only {compared} entries compared");

    // Random reads of the large file, against the source bytes, ending at and past its end too.
    let f = std::fs::File::open(latest.join("large.bin")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let size = large.len() as u64;
    for _ in 0..300 {
        let offset = rng.gen_range(0..size);
        let len = rng.gen_range(1..=(1usize << 20));
        let end = (offset as usize + len).min(large.len());
        assert!(
            read_at(&f, offset, len) == large[offset as usize..end],
            "bytes {offset}..{end} of large.bin differ"
        );
    }
    assert_eq!(read_at(&f, size - 10, 100), large[large.len() - 10..]);
    assert!(read_at(&f, size + 5, 10).is_empty());
    drop(f);

    // A snapshot made while mounted appears (in snapshots/, ids/ and as latest).
    std::fs::write(src.join("added-later.txt"), b"made while mounted\n").unwrap();
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    wait_until("snapshots/ lists both snapshots", &mounted, || {
        names(&mnt.join("snapshots")).len() == 2
    });
    assert_eq!(names(&mnt.join("ids")).len(), 2);
    wait_until("latest shows the new file", &mounted, || {
        std::fs::read(latest.join("added-later.txt"))
            .ok()
            .as_deref()
            == Some(b"made while mounted\n".as_slice())
    });
    // The first snapshot is still there as it was.
    let first = names(&mnt.join("snapshots")).remove(0);
    let old = restored(&mnt.join("snapshots").join(first), &src);
    assert!(!old.join("added-later.txt").exists());
    assert_eq!(
        std::fs::read(old.join("dir/small.txt")).unwrap(),
        b"hello tidemark\n"
    );

    let stderr = mounted.stderr.clone();
    let status = mounted.stop(nix::sys::signal::Signal::SIGINT);
    assert!(
        status.success(),
        "tidemark mount exited with {status}: {}",
        std::fs::read_to_string(stderr).unwrap_or_default()
    );
    assert!(!is_mounted(&mnt), "still mounted after SIGINT");
}

#[test]
fn mount_exits_0_when_unmounted_from_outside() {
    if let Some(why) = fuse_unusable() {
        skip(&why);
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    repo.ok(&["backup", "--quiet", src.to_str().unwrap()]);
    let mnt = repo.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mounted = match Mounted::start(&repo, &mnt) {
        Ok(m) => m,
        Err(e) if e.contains("Operation not permitted") => {
            skip(&format!("mounting is not permitted here: {e}"));
            return;
        }
        Err(e) => panic!("tidemark mount failed: {e}"),
    };
    assert_eq!(
        std::fs::read(restored(&mnt.join("latest"), &src).join("f")).unwrap(),
        b"x"
    );
    let out = std::process::Command::new("umount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "umount: {out:?}");
    let mut child = mounted.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after umount");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exited with {status}: {}",
        mounted.stderr_text()
    );
}
