//! The seal schedule: seals when the engine says one is due, independent of capture so a long
//! file read cannot hold it up. While the repository fails, seals are retried with exponential
//! backoff ([`STORE_RETRY_FIRST`] to [`STORE_RETRY_MAX`]); each retry first replays the log since
//! the last seal into the repository. A writer paused past its lease stops instead of retrying.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidemark_cluster::{Engine, SealedSnapshot};
use tidemark_core::repo::Repository;

use crate::shutdown::{Done, Shutdown};
use crate::{Error, Result};

/// First wait before retrying a seal after a store failure; it doubles up to [`STORE_RETRY_MAX`].
const STORE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between seal retries while the repository fails.
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the schedule asks the engine whether a seal is due.
const TICK: Duration = Duration::from_millis(25);

/// Whether this writer's lease still holds (`docs/format.md` §19); `Ok` without a session.
pub(crate) fn lease_check(repo: &Repository) -> tidemark_core::Result<()> {
    repo.session()
        .map_or(Ok(()), tidemark_core::lifecycle::Session::check)
}

/// Seals made by the schedule, for the capture loop to announce (it owns the notices).
pub(crate) type Sealed = Arc<Mutex<Vec<SealedSnapshot>>>;

/// Runs the schedule until shutdown, or until a seal fails for a reason a retry cannot mend
/// (then that error is what the task ends with).
pub(crate) async fn task(
    engine: Arc<Engine>,
    repo: Repository,
    sealed: Sealed,
    shutdown: Shutdown,
    done: Done,
) {
    let result = schedule(&engine, &repo, &sealed, &shutdown).await;
    done.finish("seal", result);
}

async fn schedule(
    engine: &Engine,
    repo: &Repository,
    sealed: &Mutex<Vec<SealedSnapshot>>,
    shutdown: &Shutdown,
) -> Result<()> {
    let mut retry: Option<(Instant, Duration)> = None;
    while !shutdown.is_shutdown() {
        tokio::time::sleep(TICK).await;
        let due = match retry {
            Some((at, _)) => Instant::now() >= at,
            None => engine.seal_due().is_some(),
        };
        if !due {
            continue;
        }
        match engine.seal().await {
            Ok(s) => {
                retry = None;
                if let Some(s) = s {
                    sealed.lock().expect("seal list").push(s);
                }
            }
            Err(tidemark_cluster::Error::Store(why)) => {
                // Paused past the lease: prune may have deleted what this writer
                // needs, so it must stop, not retry (`docs/format.md` §19).
                if let Err(lapsed) = lease_check(repo) {
                    return Err(Error::Engine(tidemark_cluster::Error::Core(lapsed)));
                }
                let wait = retry.map_or(STORE_RETRY_FIRST, |(_, d)| (d * 2).min(STORE_RETRY_MAX));
                tracing::warn!("seal failed: {why}; retrying in {wait:?}");
                retry = Some((Instant::now() + wait, wait));
            }
            Err(e) => {
                tracing::error!("seal failed: {e}");
                return Err(e.into());
            }
        }
    }
    Ok(())
}
