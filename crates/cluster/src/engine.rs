//! One watched tree's engine: a Raft group of one over the log and the state machine, with the
//! seal schedule (every `seal_interval` or `seal_bytes` of log, and never while nothing changed).
//!
//! A standalone device is a group of one, so a cluster later adds a network and members, not a
//! second code path. The seal trigger is computed from what has been applied since the last seal,
//! not from idleness, so snapshots keep coming while writes do.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, Config, SnapshotPolicy};
use serde::Serialize;
use tidemark_core::batch::Batch;
use tidemark_core::repo::Repository;
use tidemark_core::wal::{FileLogDir, Recovery, Wal, WalOptions, WalStats};

use crate::catalog::{Catalog, CatalogStats};
use crate::state_machine::{ApplyResult, SealedSnapshot, SmOptions, SmStats, StateMachine};
use crate::{Error, LogStore, Result, TypeConfig, Vote, STANDALONE_NODE};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The state directory (`docs/format.md` §11): `wal/` and `catalog.redb` live here.
    pub state_dir: PathBuf,
    /// Log segment size and recovery behaviour.
    pub wal: WalOptions,
    /// Seal at least this often while something changes.
    pub seal_interval: Duration,
    /// Seal once this many bytes of blobs were applied since the last seal.
    pub seal_bytes: u64,
    /// Snapshot stamping.
    pub sm: SmOptions,
}

impl EngineOptions {
    /// Defaults: seal every 500 ms or 4 MiB.
    pub fn new(state_dir: PathBuf, sm: SmOptions) -> Self {
        EngineOptions {
            state_dir,
            wal: WalOptions::default(),
            seal_interval: Duration::from_millis(500),
            seal_bytes: 4 << 20,
            sm,
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
}

impl Engine {
    /// Opens (or creates) the state in `opts.state_dir`, replays the log, and becomes the leader of
    /// its group of one. Everything that reached the log before a crash is applied on return.
    pub async fn open(repo: Repository, opts: EngineOptions) -> Result<(Engine, Recovery)> {
        // Mode 0700, each new directory fsynced into its parent (as the daemon's StateDir does).
        tidemark_core::dir::create_all(&opts.state_dir, 0o700).map_err(|e| {
            tidemark_core::Error::io("creating state directory", &opts.state_dir, e)
        })?;
        let dir = FileLogDir::new(opts.state_dir.join("wal")).map_err(|e| {
            tidemark_core::Error::io("creating log directory", opts.state_dir.join("wal"), e)
        })?;
        let (wal, recovery) = Wal::open(Arc::new(dir), opts.wal)?;
        let log = LogStore::new(Arc::new(wal));
        let catalog = Catalog::open(&opts.state_dir.join("catalog.redb"))?;
        let sm = StateMachine::open(catalog, repo, opts.sm.clone())?;
        sm.attach_log(log.clone());
        let config = Config {
            cluster_name: "tidemark".into(),
            heartbeat_interval: 250,
            election_timeout_min: 600,
            election_timeout_max: 900,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Config::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let raft = Raft::new(
            STANDALONE_NODE,
            Arc::new(config),
            NoPeers,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?
        {
            let members = BTreeMap::from([(STANDALONE_NODE, BasicNode::new(""))]);
            raft.initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .current_leader(STANDALONE_NODE, "a group of one elects itself")
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let engine = Engine {
            raft,
            sm,
            log,
            opts,
        };
        // The leader's first entry commits everything before it; wait until it is applied.
        let last = engine.log.wal().last_index()?.unwrap_or(0);
        engine
            .raft
            .wait(Some(Duration::from_secs(300)))
            .applied_index_at_least(Some(last), "replaying the log")
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok((engine, recovery))
    }

    /// Appends a batch to the log and applies it; returns once it is durable and applied. A
    /// repository failure does not fail it (the state machine falls behind); a failure of the
    /// log itself is [`Error::Log`], after which nothing more is acknowledged.
    pub async fn write(&self, batch: Batch) -> Result<ApplyResult> {
        let resp = self
            .raft
            .client_write(Arc::new(batch))
            .await
            .map_err(|e| self.raft_error(&e))?;
        Ok(resp.data)
    }

    /// An openraft error in the user's words: the log's own failure when there was one.
    fn raft_error(&self, e: &impl std::fmt::Display) -> Error {
        match self.log.failure() {
            Some(why) => Error::Log(format!(
                "{why}: capture stopped; every change acknowledged before is in the log"
            )),
            None => Error::Raft(e.to_string()),
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
    /// The seal runs here, on the blocking pool, before openraft is asked for a snapshot: a
    /// store failure comes back as [`Error::Store`] and leaves the engine running (behind, and
    /// retried by the next call), whereas a failed snapshot build would stop openraft. openraft's
    /// build then finds the seal done and only purges the log.
    pub async fn seal(&self) -> Result<Option<SealedSnapshot>> {
        if self.sm.stats().applied.is_none() {
            return Ok(None);
        }
        if self.sm.changed_since_seal() || self.sm.store_error().is_some() {
            let sm = self.sm.clone();
            let sealed = tokio::task::spawn_blocking(move || sm.seal())
                .await
                .map_err(|e| Error::Invalid(format!("the seal task failed: {e}")))??;
            let target = sealed.meta.last_log_id.map(|l| l.index);
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| self.raft_error(&e))?;
            self.raft
                .wait(Some(Duration::from_secs(600)))
                .metrics(
                    |m| m.snapshot.map(|s| s.index) >= target,
                    "purging the log after a seal",
                )
                .await
                .map_err(|e| self.raft_error(&e))?;
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
            .map_err(|e| Error::Raft(e.to_string()))
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
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(sealed)
    }
}

/// The network of a group of one: there is nobody to talk to.
struct NoPeers;

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
