//! Integration tests for the `tidemark` binary and the core library behind it.

mod integration {
    pub mod cli;
    pub mod common;
    pub mod copy;
    pub mod crash;
    pub mod forget;
    pub mod golden;
    pub mod kill;
    pub mod logging;
    pub mod mount;
    pub mod props;
    pub mod prune;
    pub mod repair;
    pub mod s3;
    pub mod snapshots;
    pub mod watch;
}
