//! Integration tests for the `tidemark` binary and the core library behind it.

mod integration {
    pub mod cli;
    pub mod common;
    pub mod config;
    pub mod copy;
    pub mod crash;
    pub mod forget;
    pub mod full_disk;
    pub mod issue_15;
    pub mod kill;
    pub mod logging;
    pub mod mount;
    pub mod props;
    pub mod prune;
    pub mod prune_paused;
    pub mod repair;
    pub mod repo_handle;
    pub mod restore_race;
    pub mod s3;
    pub mod snapshots;
    pub mod stats;
    pub mod watch;
}
