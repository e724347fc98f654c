//! Issue 15: a lagging capture must not lose files when directories move. Several threads
//! create, overwrite, rename and delete files and directories, moving ancestors too, while
//! big files keep capture behind; at quiescence the sealed snapshot must equal the tree.
//! `TIDEMARK_ISSUE15_ROUNDS` sets the number of rounds (default 20) for a soak.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::common::{restored, tree_difference_except_atime, Repo};
use super::watch::Daemon;

/// A file's bytes: `len` bytes derived from `seed`, so overwrites change the content.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((k as u64).wrapping_mul(31).wrapping_add(seed * 17) % 251) as u8)
        .collect()
}

/// Every path at or below `dir` (directories and files), in no order.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        out.push((e.path(), is_dir));
        if is_dir {
            walk(&e.path(), out);
        }
    }
}

/// One worker's random operations under its own client directory, which it also moves
/// (`cI` ↔ `cI-moved`). Failures (a path another step moved away) are part of the game.
fn work(src: &Path, worker: usize, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    let names = [
        PathBuf::from(format!("c{worker}")),
        PathBuf::from(format!("c{worker}-moved")),
    ];
    let mut base = src.join(&names[0]);
    let _ = std::fs::create_dir_all(base.join("PM"));
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let mut entries = Vec::new();
        walk(&base, &mut entries);
        let dirs: Vec<PathBuf> = std::iter::once(base.clone())
            .chain(entries.iter().filter(|e| e.1).map(|e| e.0.clone()))
            .collect();
        let files: Vec<PathBuf> = entries
            .iter()
            .filter(|e| !e.1)
            .map(|e| e.0.clone())
            .collect();
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        let file = (!files.is_empty()).then(|| &files[rng.gen_range(0..files.len())]);
        match rng.gen_range(0..100) {
            0..=29 => {
                let _ = std::fs::write(
                    dir.join(format!("f{n}.doc")),
                    bytes(n, rng.gen_range(0..20_000)),
                );
            }
            30..=34 => {
                // A big file: capture falls behind while it reads it.
                let _ = std::fs::write(
                    dir.join(format!("big{n}.bin")),
                    bytes(n, rng.gen_range(2..6) << 20),
                );
            }
            35..=49 => {
                if let Some(f) = file {
                    let _ = std::fs::write(f, bytes(n, rng.gen_range(0..30_000)));
                }
            }
            50..=59 => {
                // A temp file created and deleted: the directory's mtime moves.
                let tmp = dir.join(format!("~tmp{n}.TMP"));
                let _ = std::fs::write(&tmp, b"scratch");
                let _ = std::fs::remove_file(&tmp);
            }
            60..=69 => {
                if let Some(f) = file {
                    let to = dirs[rng.gen_range(0..dirs.len())].join(format!("r{n}.doc"));
                    let _ = std::fs::rename(f, to);
                }
            }
            70..=74 => {
                if let Some(f) = file {
                    let _ = std::fs::remove_file(f);
                }
            }
            75..=82 => {
                let _ = std::fs::create_dir(dir.join(format!("d{n}")));
            }
            83..=89 => {
                // Move a directory (with everything below it) somewhere else in the client's tree.
                if *dir != base {
                    let target = &dirs[rng.gen_range(0..dirs.len())];
                    if !target.starts_with(dir) {
                        let _ = std::fs::rename(dir, target.join(format!("m{n}")));
                    }
                }
            }
            90..=92 => {
                if *dir != base && entries.len() > 20 {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            _ => {
                // Move the client's own directory: an ancestor of everything queued under it.
                let next = if base.ends_with(&names[0]) {
                    &names[1]
                } else {
                    &names[0]
                };
                if std::fs::rename(&base, src.join(next)).is_ok() {
                    base = src.join(next);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
    }
    // As in the issue: the moment the work ends, the directory moves once more.
    let next = if base.ends_with(&names[0]) {
        &names[1]
    } else {
        &names[0]
    };
    let _ = std::fs::rename(&base, src.join(next));
}

#[test]
fn issue_15_a_lagging_capture_keeps_files_when_directories_move() {
    let rounds: usize = std::env::var("TIDEMARK_ISSUE15_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("TIDEMARK_ISSUE15_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let state = repo.dir.path().join("state");
    let d = Daemon::start(&repo, &src, &state, None);
    let mut restores = 0;
    for round in 0..rounds {
        let until = Instant::now() + Duration::from_millis(400);
        std::thread::scope(|s| {
            for w in 0..4 {
                let src = &src;
                let seed = seed ^ ((round as u64) << 8) ^ w as u64;
                s.spawn(move || work(src, w, seed, until));
            }
        });
        // Quiescence: the latest seal must come to equal the tree, and stay equal.
        let started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            restores += 1;
            let target = repo.dir.path().join(format!("restore-{restores}"));
            repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
            let diff = tree_difference_except_atime(&src, &restored(&target, &src));
            let _ = std::fs::remove_dir_all(&target);
            match diff {
                None => break,
                Some(diff) => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "round {round} (TIDEMARK_ISSUE15_SEED={seed}): the sealed snapshot does not \
                     match the tree at quiescence: {diff}"
                ),
            }
        }
    }
    d.stop();
}
