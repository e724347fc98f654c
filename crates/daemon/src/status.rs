//! `status.json` (`docs/format.md` §11): what a running daemon tells `tidemark status`, rewritten
//! every second by the status task and once more when the daemon stops.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tidemark_cluster::{Engine, EngineStatus};
use tidemark_core::capture::CaptureStats;

use crate::shutdown::{Done, Shutdown};

/// Event-to-durable latency figures (ms) over the last 100k changes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RpoSummary {
    /// Changes measured.
    pub samples: usize,
    /// Median.
    pub p50: f32,
    /// 99th percentile.
    pub p99: f32,
    /// Largest.
    pub max: f32,
}

/// `status.json`, refreshed every second by a running `watch` (`docs/format.md` §11).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Format version (1).
    pub version: u32,
    /// The daemon's process id.
    pub pid: u32,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// The watched directory.
    pub watched: PathBuf,
    /// The repository.
    pub repository: String,
    /// Engine figures: applied and sealed revision, log, catalog.
    pub engine: EngineStatus,
    /// Milliseconds since the last seal (by this process).
    pub last_seal_age_ms: Option<u64>,
    /// Changes waiting in the coalescer.
    pub pending_changes: usize,
    /// Age of the oldest change not yet in the log, ms.
    pub capture_lag_ms: u64,
    /// Capture counters.
    pub capture: CaptureStats,
    /// Event-to-durable latency.
    pub rpo_ms: RpoSummary,
    /// The last error met while capturing.
    pub last_error: Option<String>,
}

/// What the capture loop reports to the status writer.
#[derive(Debug, Clone, Default)]
pub(crate) struct CaptureFigures {
    pub(crate) capture: CaptureStats,
    pub(crate) last_error: Option<String>,
    pub(crate) pending: usize,
    pub(crate) lag_ms: u64,
    pub(crate) rpo: RpoSummary,
}

impl Status {
    fn new(engine: EngineStatus, watched: &Path, repository: &str, f: CaptureFigures) -> Self {
        Status {
            version: 1,
            pid: std::process::id(),
            updated: chrono::Utc::now().to_rfc3339(),
            watched: watched.to_path_buf(),
            repository: repository.to_owned(),
            last_seal_age_ms: engine
                .state_machine
                .since_seal()
                .map(|d| d.as_millis() as u64),
            pending_changes: f.pending,
            capture_lag_ms: f.lag_ms,
            capture: f.capture,
            rpo_ms: f.rpo,
            last_error: engine.state_machine.store_error.clone().or(f.last_error),
            engine,
        }
    }
}

/// Writes `status.json` of one daemon: where, about what, from which figures.
#[derive(Clone)]
pub(crate) struct StatusFile {
    pub(crate) path: PathBuf,
    pub(crate) watched: PathBuf,
    pub(crate) repository: String,
    /// The capture loop's latest figures (it refreshes them every 200 ms).
    pub(crate) figures: Arc<Mutex<CaptureFigures>>,
}

impl StatusFile {
    /// Writes the engine's status with the latest capture figures; `last_error`, when given,
    /// replaces the one reported. A failure to write is not worth stopping for.
    pub(crate) fn write(&self, engine: &Engine, last_error: Option<String>) {
        let figures = self.figures.lock().expect("status figures").clone();
        if let Ok(es) = engine.status() {
            self.write_from(es, figures, last_error);
        }
    }

    /// Writes `status.json` from engine figures already read.
    pub(crate) fn write_from(
        &self,
        engine: EngineStatus,
        figures: CaptureFigures,
        last_error: Option<String>,
    ) {
        let mut status = Status::new(engine, &self.watched, &self.repository, figures);
        status.last_error = last_error.or(status.last_error);
        let _ = write_status(&self.path, &status);
    }

    /// The status task: rewrites the file every second until shutdown.
    pub(crate) async fn task(self, engine: Arc<Engine>, mut shutdown: Shutdown, done: Done) {
        while !shutdown.is_shutdown() {
            self.write(&engine, None);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.recv() => {}
            }
        }
        done.finish("status", Ok(()));
    }
}

fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status).expect("JSON"))?;
    std::fs::rename(&tmp, path)
}
