//! Issue 9: a restore cannot be steered outside its target, even when someone swaps a directory
//! inside the target for a symlink while the restore runs (as root, where it matters most).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidemark_core::repo::Repository;
use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
use tidemark_testkit::MemStore;

use super::common::restored;
use super::crash::{open, run_backup, small_repo_options};

/// Names, modes and mtimes of a directory and what is in it.
fn listing(dir: &Path) -> Vec<(PathBuf, u32, i64, i64)> {
    let mut out = Vec::new();
    let m = std::fs::symlink_metadata(dir).unwrap();
    out.push((dir.to_owned(), m.mode(), m.mtime(), m.mtime_nsec()));
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p, m.mode(), m.mtime(), m.mtime_nsec()));
    }
    out.sort();
    out
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn issue_9_restore_never_follows_a_directory_swapped_for_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Many entries below `d`, one level down too: the walk makes `d/sub`, the writers open every
    // file below `d`, the last pass sets the modes of `d/sub` and `d`.
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    for i in 0..40u64 {
        std::fs::write(
            src.join(format!("d/f{i}")),
            tidemark_testkit::seeded_bytes(2000 + 100 * i as usize, i),
        )
        .unwrap();
    }
    for i in 0..20u64 {
        std::fs::write(
            src.join(format!("d/sub/g{i}")),
            tidemark_testkit::seeded_bytes(500, 100 + i),
        )
        .unwrap();
    }
    std::fs::set_permissions(src.join("d/sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(src.join("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let mem = Arc::new(MemStore::new());
    Repository::init(mem.clone(), &small_repo_options()).unwrap();
    let tree = run_backup(&mut open(mem.clone()), &src)
        .unwrap()
        .snapshot
        .tree;
    let repo = open(mem.clone());

    // The directory the symlink points at: the test's own, beside the targets.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = listing(&outside);

    // The swapper: while a restore runs, move `d` aside, put a symlink to `outside` in its
    // place, hold it a moment, then put `d` back.
    let current: Mutex<Option<PathBuf>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let swaps = AtomicU64::new(0);
    let started = Instant::now();
    let mut restores = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(d) = current.lock().unwrap().as_ref() {
                    let aside = d.with_file_name("d.aside");
                    if std::fs::rename(d, &aside).is_ok() {
                        if std::os::unix::fs::symlink(&outside, d).is_ok() {
                            swaps.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros(100));
                            let _ = std::fs::remove_file(d);
                        }
                        let _ = std::fs::rename(&aside, d);
                    }
                }
                std::thread::yield_now();
            }
        });
        // Stops the swapper even when an assertion below panics (else the scope would wait).
        let _stop = StopOnDrop(&stop);
        for i in 0..200 {
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
            let target = tmp.path().join(format!("t{i}"));
            *current.lock().unwrap() = Some(restored(&target, &src).join("d"));
            let stats = restore(
                &repo,
                &tree,
                &RestoreOptions {
                    target: target.clone(),
                    ..RestoreOptions::default()
                },
                &RestoreProgress::default(),
            );
            *current.lock().unwrap() = None;
            restores += 1;
            let stats = stats.expect("a restore under attack reports paths, it does not stop");
            for e in &stats.errors {
                assert!(
                    e.path.starts_with(&target),
                    "restore {i}: an error names a path outside the target: {e:?}"
                );
            }
            assert_eq!(
                listing(&outside),
                before,
                "restore {i} wrote outside its target ({} swaps so far)",
                swaps.load(Ordering::Relaxed)
            );
            std::fs::remove_dir_all(&target).unwrap();
        }
    });
    assert_eq!(
        std::fs::read(outside.join("sentinel")).unwrap(),
        b"untouched"
    );
    // The race must really have been run: many swaps, over many restores.
    let swaps = swaps.into_inner();
    eprintln!(
        "{restores} restores, {swaps} swaps, {:?}",
        started.elapsed()
    );
    assert!(
        restores >= 20 && swaps >= 20,
        "only {swaps} swaps over {restores} restores"
    );
}
