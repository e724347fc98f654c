//! tidemark-cluster: the continuous engine as a Raft state machine (openraft 0.10).
//!
//! ```text
//! Batch ──Engine::write──▶ Raft (group of one today) ──append──▶ LogStore (core::wal, group commit)
//!                                │ committed
//!                                ▼
//!                          StateMachine::apply ──▶ Catalog (redb: the live tree) + packs (Repository)
//!                                │ seal every 500 ms / 4 MiB of log
//!                                ▼
//!                          trees bottom-up + snapshot object = the Raft snapshot ──▶ log purged
//! ```
//! Principal types: [`TypeConfig`] (openraft's type configuration), [`LogStore`] (the WAL as
//! `RaftLogStorage`), [`StateMachine`] (the catalog and blob store as `RaftStateMachine`), and
//! [`Engine`] (one watched tree: a Raft group of one with its seal schedule). Byte layouts are
//! in `docs/format.md` §11–15. openraft stays behind this crate: no other crate names its types.

mod catalog;
/// Record bodies of the log (public for the `cluster_entry` fuzz target).
#[doc(hidden)]
pub mod codec;
mod engine;
mod log_store;
mod request;
mod state_machine;

pub use catalog::{check_row, Catalog, CatalogStats, ROOT_DIR};
pub use engine::{Engine, EngineOptions, EngineStatus, SealTrigger};
pub use log_store::LogStore;
pub use request::{Request, Seal};
pub use state_machine::{ApplyResult, SealedSnapshot, SmOptions, SmStats, StateMachine};

openraft::declare_raft_types!(
    /// tidemark's Raft types: node ids are `u64`, normal entries carry a [`Request`].
    pub TypeConfig:
        D = Request,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
);

/// A Raft log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A Raft entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A Raft vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A membership with the log id that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// The node id of a standalone device (a group of one).
pub const STANDALONE_NODE: u64 = 1;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the repository, the log or the file system.
    #[error(transparent)]
    Core(#[from] tidemark_core::Error),
    /// The catalog database failed or holds something unexpected.
    #[error("catalog {path}: {reason}")]
    Catalog { path: String, reason: String },
    /// openraft stopped or refused (its errors are fatal to the engine).
    #[error("raft: {0}")]
    Raft(String),
    /// The repository failed (a full disk, an I/O error, an object store outage). Not fatal:
    /// the state machine went back to its last seal and follows the log without storing, capture
    /// goes on into the log, and the next seal retries (`StateMachine::seal`).
    #[error("{0}; capture goes on into the log and the seal is retried")]
    Store(String),
    /// The log's own storage failed (its disk is full, say): capture stops, and nothing after
    /// the last acknowledged change was acknowledged.
    #[error("{0}")]
    Log(String),
    /// A request that cannot be satisfied.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    fn catalog(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Error::Catalog {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
