//! The binary's log: `tracing` events (here the daemon's warning about a deletion record it cannot
//! read) reach stderr, as plain text when stderr is not a terminal, filtered by `TIDEMARK_LOG`
//! (default: warnings and worse).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::common::Repo;

const WARNING: &str = "taking in prune's deletion records";

/// Runs `watch` with `TIDEMARK_LOG` set to `log` (unset for `None`); once it has started, plants
/// a deletion record that cannot be opened (the daemon refuses to start with one). Runs until its
/// stderr contains `WARNING` or `run_for` has passed, stops it with SIGTERM and returns its stderr.
fn watch_stderr(repo: &Repo, src: &Path, log: Option<&str>, run_for: Duration) -> String {
    let name = log.unwrap_or("default");
    let record = repo.path.join("deletions").join("ab".repeat(32));
    let _ = std::fs::remove_file(&record);
    let err_path = repo.dir.path().join(format!("stderr-{name}"));
    let mut cmd = repo.cmd();
    // The daemon takes in deletion records every 100 ms instead of every few minutes.
    cmd.args([
        "watch",
        "--json",
        "--seal-interval",
        "100ms",
        "--view-every",
        "100ms",
    ])
    .arg("--state-dir")
    .arg(repo.dir.path().join(format!("state-{name}")))
    .arg(src)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&err_path).unwrap());
    if let Some(log) = log {
        cmd.env("TIDEMARK_LOG", log);
    }
    let mut child = cmd.spawn().unwrap();
    let read = || std::fs::read_to_string(&err_path).unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines.any(|l| l.is_ok_and(|l| l.contains("\"reconciled\"")));
    assert!(started, "watch did not start: {}", read());
    std::thread::spawn(move || lines.for_each(drop));
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(&record, b"not a sealed record").unwrap();

    let start = Instant::now();
    while start.elapsed() < run_for && !read().contains(WARNING) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "watch exited early: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    read()
}

#[test]
fn daemon_warnings_reach_stderr_and_tidemark_log_filters_them() {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    // With a deletion record that cannot be opened, each time the daemon takes in deletion
    // records it fails, logs a warning, and carries on.
    let start = Instant::now();
    let stderr = watch_stderr(&repo, &src, None, Duration::from_secs(60));
    let took = start.elapsed();
    let line = stderr
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning on stderr within 60 s:\n{stderr}"));
    assert!(line.contains("WARN"), "the level is named: {line}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when stderr is a file: {stderr:?}"
    );

    // The same run with only errors logged: quiet, for three times as long.
    let quiet = watch_stderr(
        &repo,
        &src,
        Some("error"),
        (took * 3).max(Duration::from_secs(3)),
    );
    assert!(
        !quiet.contains(WARNING),
        "TIDEMARK_LOG=error still warns:\n{quiet}"
    );
}
