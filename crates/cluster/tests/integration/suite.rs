//! openraft's storage test suite (`Suite::test_all`) over `LogStore` (the WAL) and `StateMachine`.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;
use tidemark_cluster::{Catalog, LogStore, SmOptions, StateMachine, TypeConfig};
use tidemark_core::repo::Repository;
use tidemark_core::wal::{FileLogDir, Wal, WalOptions};

/// Each build gets its own log and catalog; all share one repository, so a snapshot built by one
/// state machine can be installed by another (as after replication).
struct Builder {
    repo: Repository,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let tmp = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_size: 4096,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(
            Arc::new(FileLogDir::new(tmp.path().join("wal")).unwrap()),
            opts,
        )
        .unwrap();
        let catalog = Catalog::open(&tmp.path().join("catalog.redb")).unwrap();
        let sm_opts = SmOptions {
            watched: "/srv/share".into(),
            ..SmOptions::default()
        };
        let sm = StateMachine::open(catalog, self.repo.clone(), sm_opts).unwrap();
        Ok((tmp, LogStore::new(Arc::new(wal)), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        Suite::test_all(Builder {
            repo: super::common::repo(),
        })
        .await
        .unwrap();
    });
}
