//! Progress display: an indicatif bar on a terminal, JSON status lines with --json, nothing when
//! quiet or not on a terminal. Runs on its own thread, reading the core's atomic counters.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::outln;

/// A snapshot of counters for one tick.
pub struct Tick {
    pub files: u64,
    pub bytes: u64,
    pub total_files: u64,
    pub total_bytes: u64,
}

/// Which display to use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Json,
    None,
}

impl Mode {
    pub fn choose(json: bool, quiet: bool) -> Self {
        if json {
            Mode::Json
        } else if quiet || !std::io::stderr().is_terminal() {
            Mode::None
        } else {
            Mode::Bar
        }
    }
}

/// A running display; `finish` stops it.
pub struct Display {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Display {
    pub fn start<F>(mode: Mode, what: &'static str, read: F) -> Self
    where
        F: Fn() -> Tick + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        if mode == Mode::None {
            return Display { stop, handle: None };
        }
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let bar = (mode == Mode::Bar).then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                        .expect("valid template"),
                );
                b
            });
            let mut last_json = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let t = read();
                if let Some(b) = &bar {
                    b.set_length(t.total_bytes.max(t.bytes));
                    b.set_position(t.bytes);
                    b.set_message(format!(
                        "{} / {} files",
                        t.files,
                        t.total_files.max(t.files)
                    ));
                } else if last_json.elapsed() >= Duration::from_secs(1) {
                    last_json = Instant::now();
                    let secs = start.elapsed().as_secs_f64();
                    let pct = if t.total_bytes > 0 {
                        t.bytes as f64 / t.total_bytes as f64
                    } else {
                        0.0
                    };
                    let eta = if t.bytes > 0 && t.total_bytes > t.bytes {
                        (secs / t.bytes as f64 * (t.total_bytes - t.bytes) as f64) as u64
                    } else {
                        0
                    };
                    let line = outln!(
                        "{}",
                        serde_json::json!({"message_type": "status", "operation": what, "seconds_elapsed": secs as u64, "percent_done": pct,
                            "files_done": t.files, "total_files": t.total_files, "bytes_done": t.bytes, "total_bytes": t.total_bytes, "seconds_remaining": eta})
                    );
                    // Nobody reads the progress any more; the command's own output will say so.
                    if line.is_err() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Display {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `1.23 GiB`.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
