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
//! [`Engine`] (one watched tree: a Raft node with its seal schedule, made of [`EngineParts`]: a
//! node id, a network — [`NoPeers`] for a standalone device, a group of one — a log directory
//! and a catalog). A normal entry carries a [`Request`]: a batch, or a [`Seal`] stamped by the
//! proposer, so that every replica seals the same snapshots. Byte layouts are
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
pub use engine::{
    Engine, EngineOptions, EngineParts, EngineStatus, Leadership, NoPeers, SealTrigger,
};
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
    /// This node cannot take the request because it does not lead its group: send it to
    /// `leader`, or, when no leader is known (an election is under way), retry later.
    #[error("{}", match leader {
        Some(id) => format!("this node is not the leader: forward the request to node {id}"),
        None => "this node is not the leader and no leader is known yet: retry later".to_owned(),
    })]
    ForwardToLeader {
        /// The leader's node id, when known.
        leader: Option<u64>,
    },
    /// The entry was appended but dropped when another leader took over: it may or may not
    /// commit through the new leader, so a retry must tolerate a duplicate.
    #[error("the entry was dropped by a change of leader and may still commit{}", match leader {
        Some(id) => format!(" (node {id} leads now)"),
        None => String::new(),
    })]
    Discarded {
        /// The new leader's node id, when known.
        leader: Option<u64>,
    },
    /// The group refused the request in its current state (initializing a group that is
    /// initialized, a membership change while another is under way); nothing changed.
    #[error("raft refused the request: {0}")]
    Refused(String),
    /// Raft stopped (a storage failure, a panic, or a shutdown): this engine takes no more work;
    /// reopen it.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// Waiting for the group (a leader, the replay, a purge) took longer than allowed.
    #[error("timed out {0}")]
    Timeout(String),
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
