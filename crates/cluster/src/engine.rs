//! One watched tree's engine: a Raft node over the log and the state machine, with the seal
//! schedule (every `seal_interval` or `seal_bytes` of log, and never while nothing changed).
//!
//! The engine is given its parts ([`EngineParts`]: node id, network, log directory, catalog);
//! a standalone device is a group of one over [`NoPeers`], so a cluster adds a network and
//! members, not a second code path. Opening never initialises a group: a new group is
//! initialised by an explicit [`Engine::initialize`]. Who leads is observable
//! ([`Engine::leadership`]). The seal trigger is computed from what has been applied since the
//! last seal, not from idleness, so snapshots keep coming while writes do.
//!
//! ```text
//! let (engine, recovery) = Engine::open(EngineParts::standalone(dir)?, repo, opts).await?;
//! if !engine.is_initialized().await? { engine.initialize(Engine::standalone_members()).await?; }
//! engine.ready(timeout).await?;    // leads (a group of one elects itself) and replayed the log
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, Fatal, InitializeError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::impls::BasicNode;
use openraft::metrics::WaitError;
use openraft::network::{NetSnapshot, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{AnyError, Config, ServerState, SnapshotPolicy};
use serde::Serialize;
use tidemark_core::batch::Batch;
use tidemark_core::repo::Repository;
use tidemark_core::wal::{FileLogDir, LogDir, Recovery, Wal, WalOptions, WalStats};

use crate::catalog::{Catalog, CatalogStats};
use crate::request::Request;
use crate::state_machine::{ApplyResult, SealedSnapshot, SmOptions, SmStats, StateMachine};
use crate::{Error, LogStore, Result, TypeConfig, Vote, STANDALONE_NODE};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// What an engine is made of besides the repository: who it is, how it reaches its peers, and
/// where its log and catalog live.
pub struct EngineParts<N> {
    /// This node's id in its group ([`STANDALONE_NODE`] for a group of one).
    pub node: u64,
    /// How openraft reaches the other members ([`NoPeers`] for a group of one).
    pub network: N,
    /// The log's segments (`docs/format.md` §12): files in the state directory's `wal/`, or a
    /// test's in-memory or crash-simulating directory.
    pub log_dir: Arc<dyn LogDir>,
    /// The catalog (§14): `catalog.redb` in the state directory, or redb's in-memory backend
    /// ([`Catalog::open_backend`]).
    pub catalog: Catalog,
}

impl EngineParts<NoPeers> {
    /// A standalone device's parts in state directory `dir` (`docs/format.md` §11): node
    /// [`STANDALONE_NODE`], no peers, the log in `wal/` and the catalog in `catalog.redb`. The
    /// directory is created with mode 0700 if needed.
    pub fn standalone(dir: &Path) -> Result<Self> {
        // Mode 0700, each new directory fsynced into its parent (as the daemon's StateDir does).
        tidemark_core::dir::create_all(dir, 0o700)
            .map_err(|e| tidemark_core::Error::io("creating state directory", dir, e))?;
        let wal = dir.join("wal");
        let log_dir = FileLogDir::new(&wal)
            .map_err(|e| tidemark_core::Error::io("creating log directory", &wal, e))?;
        Ok(EngineParts {
            node: STANDALONE_NODE,
            network: NoPeers,
            log_dir: Arc::new(log_dir),
            catalog: Catalog::open(&dir.join("catalog.redb"))?,
        })
    }
}

/// Who leads the group, as this node sees it ([`Engine::leadership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The leader's node id, when one is known.
    pub leader: Option<u64>,
    /// Whether this node leads (it takes writes and proposes seals).
    pub leading: bool,
    /// The current term.
    pub term: u64,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Log segment size and recovery behaviour.
    pub wal: WalOptions,
    /// Seal at least this often while something changes.
    pub seal_interval: Duration,
    /// Seal once this many bytes of blobs were applied since the last seal.
    pub seal_bytes: u64,
    /// Snapshot stamping.
    pub sm: SmOptions,
    /// Entries the log keeps before the last seal when it is purged (0: purge up to the seal).
    /// A longer tail serves lagging followers and tests that read the whole log.
    pub log_tail: u64,
}

impl EngineOptions {
    /// Defaults: seal every 500 ms or 4 MiB; purge the log up to each seal.
    pub fn new(sm: SmOptions) -> Self {
        EngineOptions {
            wal: WalOptions::default(),
            seal_interval: Duration::from_millis(500),
            seal_bytes: 4 << 20,
            sm,
            log_tail: 0,
        }
    }
}

/// Why a seal is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealTrigger {
    /// `seal_interval` passed since the last seal and something changed.
    Interval,
    /// `seal_bytes` of log since the last seal.
    Bytes,
}

/// What `tidemark status` shows about the engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// The state machine's counters.
    pub state_machine: SmStats,
    /// The log's figures.
    #[serde(serialize_with = "ser_wal")]
    pub wal: WalStats,
    /// The catalog's size.
    pub catalog: CatalogStats,
}

fn ser_wal<S: serde::Serializer>(w: &WalStats, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(6))?;
    m.serialize_entry("segments", &w.segments)?;
    m.serialize_entry("bytes", &w.bytes)?;
    m.serialize_entry("entries", &w.entries)?;
    m.serialize_entry("first", &w.first)?;
    m.serialize_entry("last", &w.last)?;
    m.serialize_entry("fsyncs", &w.syncs)?;
    m.end()
}

/// The running engine.
pub struct Engine {
    raft: Raft,
    sm: StateMachine,
    log: LogStore,
    opts: EngineOptions,
    /// Fed by openraft's metrics ([`Engine::leadership`]).
    leadership: tokio::sync::watch::Sender<Leadership>,
}

impl Engine {
    /// Opens the engine over its parts: replays the log into openraft and starts the node. It
    /// neither initialises a group nor waits for a leader: a new group is initialised by
    /// [`Self::initialize`], and [`Self::ready`] waits until the log is replayed.
    pub async fn open<N>(
        parts: EngineParts<N>,
        repo: Repository,
        opts: EngineOptions,
    ) -> Result<(Engine, Recovery)>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SealedSnapshot>,
    {
        let (wal, recovery) = Wal::open(parts.log_dir, opts.wal)?;
        let log = LogStore::new(Arc::new(wal));
        let sm = StateMachine::open(parts.catalog, repo, opts.sm.clone())?;
        sm.attach_log(log.clone());
        let config = Config {
            cluster_name: "tidemark".into(),
            heartbeat_interval: 250,
            election_timeout_min: 600,
            election_timeout_max: 900,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: opts.log_tail,
            purge_batch_size: 1,
            ..Config::default()
        }
        .validate()
        .map_err(|e| Error::Invalid(format!("raft configuration: {e}")))?;
        let raft = Raft::new(
            parts.node,
            Arc::new(config),
            parts.network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(fatal)?;
        let (leadership, _) = tokio::sync::watch::channel(Leadership::default());
        let engine = Engine {
            raft,
            sm,
            log,
            opts,
            leadership,
        };
        engine.watch_leadership();
        Ok((engine, recovery))
    }

    /// The members of a standalone device's group of one, for [`Self::initialize`].
    pub fn standalone_members() -> BTreeMap<u64, String> {
        BTreeMap::from([(STANDALONE_NODE, String::new())])
    }

    /// Whether this node's group was initialised (by [`Self::initialize`], here or on a peer
    /// that replicated to it).
    pub async fn is_initialized(&self) -> Result<bool> {
        self.raft.is_initialized().await.map_err(fatal)
    }

    /// Initialises a new group with `members` (node id → network address; empty for a group of
    /// one). [`Error::Refused`] when the group already is initialised, or this node is not a
    /// member.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<()> {
        let members: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(
                e @ (InitializeError::NotAllowed(_) | InitializeError::NotInMembers(_)),
            ) => Error::Refused(e.to_string()),
            RaftError::Fatal(f) => fatal(f),
        })
    }

    /// Waits (at most `timeout`) until a leader is known and everything the log holds then is
    /// applied: after a crash, every acknowledged change is in the live tree.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "waiting for a leader")
            .await
            .map_err(waited)?;
        // The leader's first entry commits everything before it; wait until it is applied.
        if let Some(last) = self.log.wal().last_index()? {
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(last), "replaying the log")
                .await
                .map_err(waited)?;
        }
        Ok(())
    }

    /// Who leads, as a watch that changes with each election: capture starts and stops with
    /// it. The watch ends (its sender is dropped) when the engine stops.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Forwards openraft's metrics into [`Self::leadership`]'s watch while the node runs.
    fn watch_leadership(&self) {
        let mut metrics = self.raft.metrics();
        let tx = self.leadership.clone();
        let read = |m: &openraft::RaftMetrics<TypeConfig>| Leadership {
            leader: m.current_leader,
            leading: m.state == ServerState::Leader,
            term: m.current_term,
        };
        tx.send_replace(read(&metrics.borrow_watched()));
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let now = read(&metrics.borrow_watched());
                tx.send_if_modified(|l| std::mem::replace(l, now) != now);
            }
        });
    }

    /// Takes entries from the group's leader (the body of an AppendEntries RPC, for the
    /// network's server side): appends them to the log and applies what the leader says is
    /// committed, seals included.
    pub async fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>> {
        self.raft.append_entries(rpc).await.map_err(|e| match e {
            RaftError::Fatal(f) => self.fatal(f),
            RaftError::APIError(never) => match never {},
        })
    }

    /// The log (reading its entries, status).
    pub fn log(&self) -> &LogStore {
        &self.log
    }

    /// Appends a batch to the log and applies it; returns once it is durable and applied. A
    /// repository failure does not fail it (the state machine falls behind); a failure of the
    /// log itself is [`Error::Log`], after which nothing more is acknowledged.
    pub async fn write(&self, batch: Batch) -> Result<ApplyResult> {
        let resp = self
            .raft
            .client_write(Request::from(batch))
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(resp.data)
    }

    /// openraft stopped: the log's own failure when there was one (in the user's words), else
    /// [`Error::Fatal`].
    fn fatal(&self, e: Fatal<TypeConfig>) -> Error {
        match self.log.failure() {
            Some(why) => Error::Log(format!(
                "{why}: capture stopped; every change acknowledged before is in the log"
            )),
            None => fatal(e),
        }
    }

    /// A refused or failed write: where to send it instead, or why the engine stopped.
    fn write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
        match e {
            RaftError::Fatal(f) => self.fatal(f),
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::ForwardToLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => Error::Discarded {
                leader: f.leader_id,
            },
            RaftError::APIError(e) => Error::Refused(e.to_string()),
        }
    }

    /// A wait that ended early: the engine stopped (the log's failure, if that was why), or
    /// the time ran out.
    fn wait_error(&self, e: WaitError) -> Error {
        match (e, self.log.failure()) {
            (WaitError::ShuttingDown, Some(why)) => Error::Log(format!(
                "{why}: capture stopped; every change acknowledged before is in the log"
            )),
            (e, _) => waited(e),
        }
    }

    /// Why a seal is due now, if it is.
    pub fn seal_due(&self) -> Option<SealTrigger> {
        if !self.sm.changed_since_seal() {
            return None;
        }
        let stats = self.sm.stats();
        if stats.bytes_since_seal >= self.opts.seal_bytes {
            return Some(SealTrigger::Bytes);
        }
        match stats.since_seal() {
            Some(d) if d < self.opts.seal_interval => None,
            _ => Some(SealTrigger::Interval),
        }
    }

    /// Seals what was applied so far (no-op when nothing changed) and purges the log up to it.
    /// Returns the repository snapshot, if there is one.
    ///
    /// A seal is a log entry ([`crate::Seal`], stamped here by the proposer with the repository's
    /// clock and this replica's options: [`StateMachine::stamp_now`]), so that every replica seals the same revision and root tree at the
    /// same index. Before proposing it, the open data pack is stored on the blocking pool
    /// ([`StateMachine::prepare_seal`]), so applying the entry only writes trees, the index and
    /// the snapshot. A store failure comes back as [`Error::Store`] and leaves the engine running
    /// (behind; the next call proposes a new seal entry, whose apply first stores this one with
    /// its own stamp). After a seal, openraft is asked for a snapshot: it finds the seal done and
    /// purges the log up to it.
    pub async fn seal(&self) -> Result<Option<SealedSnapshot>> {
        if self.sm.stats().applied.is_none() {
            return Ok(None);
        }
        if self.sm.changed_since_seal() || self.sm.store_error().is_some() {
            let sm = self.sm.clone();
            tokio::task::spawn_blocking(move || sm.prepare_seal())
                .await
                .map_err(|e| Error::Invalid(format!("the seal task failed: {e}")))??;
            let stamp = self.sm.stamp_now();
            let applied = self
                .raft
                .client_write(Request::Seal(Arc::new(stamp)))
                .await
                .map_err(|e| self.write_error(e))?
                .data;
            if let Some(why) = applied.store_error {
                return Err(Error::Store(why));
            }
            let target = Some(applied.index);
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| self.fatal(e))?;
            self.raft
                .wait(Some(Duration::from_secs(600)))
                .metrics(
                    |m| m.snapshot.map(|s| s.index) >= target,
                    "purging the log after a seal",
                )
                .await
                .map_err(|e| self.wait_error(e))?;
        }
        Ok(self.sm.seal_snapshot_id().map(|id| SealedSnapshot { id }))
    }

    /// Status figures.
    pub fn status(&self) -> Result<EngineStatus> {
        Ok(EngineStatus {
            state_machine: self.sm.stats(),
            wal: self.log.wal().stats(),
            catalog: self.sm.with_catalog(Catalog::stats)?,
        })
    }

    /// The state machine (catalog access for tests and status).
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Stops without sealing: what was applied since the last seal stays only in the log, as
    /// after a crash (tests and `recover` use it).
    pub async fn stop_without_seal(self) -> Result<()> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(format!("stopping: {e}")))
    }

    /// Seals and stops.
    pub async fn shutdown(self) -> Result<Option<SealedSnapshot>> {
        self.close().await
    }

    /// Seals and stops, through a shared reference (the engine refuses work afterwards).
    pub async fn close(&self) -> Result<Option<SealedSnapshot>> {
        let sealed = self.seal().await?;
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(format!("stopping: {e}")))?;
        Ok(sealed)
    }
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Fatal(e.to_string())
}

fn waited(e: WaitError) -> Error {
    match e {
        WaitError::Timeout(after, what) => Error::Timeout(format!("after {after:?} {what}")),
        WaitError::ShuttingDown => Error::Fatal("raft is shutting down".into()),
    }
}

/// The network of a group of one: there is nobody to talk to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

fn unreachable() -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error("a standalone device has no peers"))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> Self::Network {
        NoPeers
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeers {
    type SnapshotData = SealedSnapshot;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> std::result::Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, SealedSnapshot>,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> std::result::Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}
