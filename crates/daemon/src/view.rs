//! Taking in prune's deletion records while the daemon runs (`docs/format.md` §19), so prune can
//! free space under a long-running writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_cluster::Engine;
use tidemark_core::repo::Repository;

use crate::shutdown::{Done, Shutdown};
use crate::Result;

/// Reads the deletion records; when there are new ones, stops reusing their packs and copies
/// out what the catalog still needs; only then declares them seen in the session, which lets
/// prune delete those packs (`docs/format.md` §19). Returns the blobs copied.
fn advance_view(engine: &Engine, repo: &Repository) -> Result<u64> {
    let pending = repo.unrevalidated()?;
    let copied = if pending.packs.is_empty() {
        0
    } else {
        engine.state_machine().revalidate(&pending.packs)?
    };
    repo.mark_revalidated(&pending)?;
    Ok(copied)
}

/// Every `every`, takes in new deletion records on a blocking thread, until shutdown. Failures
/// are warnings: the next round tries again, and the lease check stops a writer that fell behind.
pub(crate) async fn task(
    engine: Arc<Engine>,
    repo: Repository,
    every: Duration,
    shutdown: Shutdown,
    done: Done,
) {
    let mut last = Instant::now();
    while !shutdown.is_shutdown() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let (engine, repo) = (engine.clone(), repo.clone());
        match tokio::task::spawn_blocking(move || advance_view(&engine, &repo)).await {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => tracing::info!("copied {n} blobs out of packs condemned by prune"),
            Ok(Err(e)) => tracing::warn!("taking in prune's deletion records: {e}"),
        }
    }
    done.finish("view", Ok(()));
}
