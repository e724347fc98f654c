//! The state machine: applies committed batches to the catalog and the blob store, and seals.
//!
//! Applying a batch packs its new blobs (already compressed and encrypted at capture) and edits
//! the catalog in one non-durable redb commit. A seal is a log entry carrying its stamp
//! (`docs/format.md` §15.2): the proposer first stores the open pack of file data without the
//! lock ([`StateMachine::prepare_seal`]); applying the entry writes the changed trees bottom-up,
//! stores their pack and an index file, then the snapshot object with the entry's index as its
//! revision, and commits the catalog durably. Nothing it decides on comes from this process, so
//! every replica seals the same root at the same index. The repository snapshot is the Raft
//! snapshot (openraft's `build_snapshot` hands over the last seal), and after a crash the catalog
//! is back at the last seal while the log, purged only up to it, replays the rest.
//!
//! Store failures (a full disk, EIO, an object store outage, a permission change) are not fatal.
//! The state machine *falls behind*: it rewinds the catalog to the last seal (nothing since is
//! durable, `catalog.rs`), forgets the open pack, and replays the log since the seal without
//! storing anything, keeping only the ids of the blobs the log holds. Capture goes on into the
//! log, and reads an up-to-date live tree. Each later seal first *catches up*: it rewinds again
//! and replays the log since the seal, this time packing and storing, and only then seals. The
//! log is purged only up to a seal, so everything since is always there to replay.
//!
//! ```text
//!            store call fails (apply, pack flush, seal, revalidate)
//!   Normal ────────────────────────────────────────────────▶ Behind { reason, deferred blob ids }
//!     ▲        rewind to the seal, replay the log without storing      │
//!     └────────────────────────────────────────────────────────────────┘
//!            seal entry: rewind, replay the log storing packs (earlier seal entries seal
//!            with their own stamps); then seal as usual
//! ```

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tidemark_core::batch::{Batch, Edit, NewBlob};
use tidemark_core::clock::Clock;
use tidemark_core::id::{BlobId, Kind, PackId, SnapshotId};
use tidemark_core::pack::{BlobKind, FinishedPack, Packer};
use tidemark_core::repo::Repository;
use tidemark_core::snapshot::{LogPosition, Node, NodeType, Snapshot, Summary, Tree};

use crate::catalog::Catalog;
use crate::codec::{LogIdJson, MembershipJson, StoredMembershipJson};
use crate::log_store::LogStore;
use crate::request::{Request, Seal};
use crate::{io_err, Error, LogId, Result, StoredMembership, TypeConfig};

type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
type RaftSnapshot = openraft::alias::SnapshotOf<TypeConfig, SealedSnapshot>;
type Payload = EntryPayload<Request, u64, openraft::impls::BasicNode>;

/// What a seal produced: the Raft snapshot's data is the id of a repository snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSnapshot {
    /// The repository snapshot.
    pub id: SnapshotId,
}

/// What applying one entry did (the response to a client write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyResult {
    /// Log index of the entry.
    pub index: u64,
    /// Paths whose edit could not be applied (a move from a path the catalog does not have, or a
    /// file whose chunks are missing): the capture stage rescans them.
    pub rescan: Vec<Vec<u8>>,
    /// A seal entry: the repository snapshot that stands for it (a new one, or the last seal's
    /// when the root tree did not change). `None` for other entries and for a seal not stored.
    pub sealed: Option<SnapshotId>,
    /// A seal entry whose repository write failed, in one line: this replica is behind, and a
    /// later seal entry stores this one (with this entry's stamp, at this entry's index) first.
    pub store_error: Option<String>,
}

/// Where this replica's snapshots come from. The watched path, its ancestors and the hostname
/// go into the seals this replica proposes ([`SmOptions::stamp`]); a seal entry is applied with
/// its own stamp, whoever proposed it. The user and group are this replica's.
#[derive(Debug, Clone, Default)]
pub struct SmOptions {
    /// The watched directory (absolute).
    pub watched: PathBuf,
    /// Its ancestor directories, outermost first, each with its name (`docs/format.md` §14).
    pub ancestors: Vec<Node>,
    /// Stamped on the seals this replica proposes.
    pub hostname: String,
    /// Recorded in snapshots.
    pub username: String,
    /// Recorded in snapshots.
    pub uid: u32,
    /// Recorded in snapshots.
    pub gid: u32,
}

impl SmOptions {
    /// The stamp of a seal proposed at `time_ns` (ns since the epoch) by this replica.
    pub fn stamp(&self, time_ns: i64) -> Seal {
        Seal {
            version: 1,
            time_ns,
            host: self.hostname.clone(),
            path: self.watched.to_string_lossy().into_owned(),
            ancestors: self.ancestors.clone(),
        }
    }
}

/// Counters for `status` and the seal trigger.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SmStats {
    /// Last applied log index.
    pub applied: Option<u64>,
    /// Log index of the last seal.
    pub sealed: Option<u64>,
    /// The last seal's repository snapshot.
    pub sealed_snapshot: Option<String>,
    /// Seals done by this process.
    pub seals: u64,
    /// Duration of the last seal, ms.
    pub last_seal_ms: f64,
    /// Edits applied since the last seal.
    pub edits_since_seal: u64,
    /// Blob bytes applied since the last seal.
    pub bytes_since_seal: u64,
    /// Capture time of the newest applied batch, ns since the epoch.
    pub last_captured_ns: i64,
    /// Packs written by this process.
    pub packs: u64,
    /// Edits skipped (see [`ApplyResult::rescan`]).
    pub skipped: u64,
    /// Why the repository cannot be written now (the state machine is behind the log), in one
    /// line: "repository full: No space left on device writing PATH". `None` while it works.
    pub store_error: Option<String>,
    /// How long the state machine has been behind, ms.
    pub behind_ms: Option<u64>,
    /// Store failures met by this process.
    pub store_failures: u64,
    #[serde(skip)]
    last_seal_at: Option<Instant>,
}

impl SmStats {
    /// Time since the last seal by this process.
    pub fn since_seal(&self) -> Option<Duration> {
        self.last_seal_at.map(|t| t.elapsed())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealedMeta {
    snapshot: String,
    tree: String,
    log: Option<LogIdJson>,
    membership: StoredMembershipJson,
}

/// Packs blobs for the state machine: core's [`Packer`] with one open pack, stored when full
/// and at each seal, with the state machine's view of which blobs are known.
///
/// A full pack closed by an apply is not stored there: it waits in `full` (its blobs counted as
/// known through `storing`) until the apply stores it off the async runtime
/// ([`StateMachine::store_full_packs`]). A failed store loses the open pack: [`SmInner::fall_behind`]
/// then forgets its blobs (and those of a pack being stored), so no later batch or tree dedups
/// against blobs that are gone.
struct SmPacker {
    repo: Repository,
    packer: Packer,
    in_pack: HashSet<BlobId>,
    /// Blobs of packs being stored outside the lock (by a seal's first step or an apply).
    storing: HashSet<BlobId>,
    /// Packs an apply closed, to be stored by it outside the lock.
    full: Vec<FinishedPack>,
    /// Packs being stored outside the lock by applies; a seal waits for them.
    in_flight: usize,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    packs: u64,
    trees_new: u64,
    data_new: u64,
    data_added: u64,
    data_packed: u64,
    /// Blobs copied out of condemned packs.
    copied: u64,
}

impl SmPacker {
    fn known(&self, id: &BlobId) -> bool {
        self.in_pack.contains(id) || self.storing.contains(id) || self.repo.index().contains(id)
    }

    fn add(&mut self, id: BlobId, kind: BlobKind, flags: u8, raw_len: u32, envelope: &[u8]) {
        if self.known(&id) {
            return;
        }
        if let Some(full) = self.packer.add(id, kind, flags, raw_len, envelope) {
            for e in &full.entries {
                self.in_pack.remove(&e.id);
                self.storing.insert(e.id);
            }
            self.full.push(full);
        }
        self.in_pack.insert(id);
    }

    /// Whether blob `id` is usable: known and live, or copied now out of a pack that prune
    /// condemned (`docs/format.md` §19), so that nothing this state machine seals depends on a
    /// condemned pack. `false`: the repository does not have it.
    fn ensure_live(&mut self, id: &BlobId) -> Result<bool> {
        if self.known(id) {
            return Ok(true);
        }
        let (loc, envelope) = match self.repo.read_envelope(id) {
            Ok((_, loc, envelope)) => (loc, envelope),
            // Not indexed, or its pack deleted or cut short meanwhile: the blob is gone.
            Err(tidemark_core::Error::NotFound { .. } | tidemark_core::Error::Corrupt { .. }) => {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        };
        self.add(*id, loc.kind(), loc.flags(), loc.raw_len, &envelope);
        self.copied += 1;
        Ok(true)
    }

    fn add_blob(&mut self, b: &NewBlob) {
        if !self.known(&b.id) {
            self.data_new += 1;
            self.data_added += u64::from(b.raw_len);
            self.data_packed += b.envelope.len() as u64;
        }
        self.add(b.id, b.kind, b.flags, b.raw_len, &b.envelope);
    }

    fn store_tree(&mut self, tree: &Tree) -> BlobId {
        let plain = tree.encode();
        let id = self.repo.crypto().blob_id(&plain);
        if !self.known(&id) {
            let (flags, env) = self.repo.encode_blob(self.compressor.as_mut(), &plain);
            self.trees_new += 1;
            self.add(id, BlobKind::Tree, flags, plain.len() as u32, &env);
        }
        id
    }

    /// Stores every closed and open pack here, under the caller's lock (a seal proper, a
    /// revalidation or a catch-up: all on blocking threads).
    fn flush(&mut self) -> Result<()> {
        let mut packs = std::mem::take(&mut self.full);
        packs.extend(self.packer.flush());
        for pack in packs {
            // On failure the pack is gone and `in_pack`/`storing` still name its blobs: the
            // caller falls behind, which clears them.
            store_pack(&self.repo, &pack)?;
            self.stored(pack);
        }
        self.in_pack.clear();
        Ok(())
    }

    /// Takes in a stored pack: indexed in memory, its index file written at the next seal.
    fn stored(&mut self, pack: FinishedPack) {
        for e in &pack.entries {
            self.storing.remove(&e.id);
        }
        self.repo.index_add(pack.id, &pack.entries);
        self.packer.stored(pack);
        self.packs += 1;
    }

    fn write_index(&mut self) -> Result<()> {
        let unindexed = self.packer.take_unindexed();
        if !unindexed.is_empty() {
            if let Err(e) = self.repo.write_index(&unindexed) {
                // Written by the next seal, or by the catch-up after a failure.
                self.packer.put_back_unindexed(unindexed);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Stores one pack (no lock of the repository is held: the index learns it afterwards).
fn store_pack(repo: &Repository, pack: &FinishedPack) -> Result<()> {
    Ok(repo.store().put(Kind::Pack, &pack.id, &pack.bytes)?)
}

struct SmInner {
    catalog: Catalog,
    packer: SmPacker,
    opts: SmOptions,
    applied: Option<LogId>,
    membership: StoredMembership,
    sealed: Option<SealedMeta>,
    stats: SmStats,
    seal_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Set while the repository cannot be written (see the module doc).
    behind: Option<Behind>,
    /// The log, to replay what was applied since the last seal ([`StateMachine::attach_log`]).
    log: Option<LogStore>,
    /// Paths whose edit a replay could not apply: capture rescans them ([`StateMachine::take_rescans`]).
    rescans: Vec<Vec<u8>>,
}

/// Why, and since when, the state machine follows the log without storing.
struct Behind {
    /// One line for the user (see [`describe_store_error`]).
    reason: String,
    since: Instant,
    /// Ids of the blobs in the entries applied since the last seal: their bytes are in the log,
    /// and a catch-up stores them.
    deferred: HashSet<BlobId>,
}

/// What a store failure means to the user, in one line: the kind of trouble first, then what
/// the store said ("repository full: No space left on device (os error 28) writing PATH").
pub fn describe_store_error(e: &Error) -> String {
    let core = match e {
        Error::Core(c) => c,
        other => return format!("repository unavailable: {other}"),
    };
    let io = match core {
        tidemark_core::Error::Io { source, .. } => Some(source),
        _ => None,
    };
    let what = match io.and_then(std::io::Error::raw_os_error) {
        Some(libc::ENOSPC | libc::EDQUOT) => "repository full",
        Some(libc::EACCES | libc::EPERM) => "repository not writable",
        Some(libc::EROFS) => "repository on a read-only file system",
        Some(libc::EIO) => "repository I/O error",
        _ => "repository unavailable",
    };
    match core {
        tidemark_core::Error::Io { op, path, source } => {
            format!("{what}: {source} {op} {}", path.display())
        }
        other => format!("{what}: {other}"),
    }
}

/// The state machine. Clones share it; every method locks it, so applies never overlap each other
/// or the seal proper (only a seal's first step, storing the data pack, runs beside applies).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
    /// One seal at a time (its first step runs without `inner`'s lock).
    sealing: Arc<Mutex<()>>,
    /// Notified when an apply's packs are stored ([`SmPacker::in_flight`] went down).
    idle: Arc<Condvar>,
    /// The repository's clock: a seal proposed here is stamped with its time.
    clock: Arc<dyn Clock>,
}

impl StateMachine {
    /// Opens the state machine over `catalog` and `repo` (whose index must be loaded). Its applied
    /// state is the catalog's last durable commit, i.e. the last seal.
    pub fn open(catalog: Catalog, repo: Repository, opts: SmOptions) -> Result<Self> {
        let clock = Arc::clone(repo.clock());
        let applied = catalog
            .meta::<LogIdJson>("applied")?
            .map(LogIdJson::to_log_id);
        let membership = match catalog.meta::<StoredMembershipJson>("membership")? {
            Some(m) => m
                .into_stored()
                .map_err(|r| Error::catalog(catalog.path(), r))?,
            None => StoredMembership::default(),
        };
        let sealed: Option<SealedMeta> = catalog.meta("sealed")?;
        let compressor = repo.compressor();
        let packer = Packer::new(
            repo.crypto().clone(),
            repo.config().pack_size as usize,
            1,
            usize::MAX,
        );
        let stats = SmStats {
            applied: applied.map(|a| a.index),
            sealed: sealed.as_ref().and_then(|s| s.log.map(|l| l.index)),
            sealed_snapshot: sealed.as_ref().map(|s| s.snapshot.clone()),
            ..SmStats::default()
        };
        let mut inner = SmInner {
            catalog,
            packer: SmPacker {
                repo,
                packer,
                in_pack: HashSet::new(),
                storing: HashSet::new(),
                full: Vec::new(),
                in_flight: 0,
                compressor,
                packs: 0,
                trees_new: 0,
                data_new: 0,
                data_added: 0,
                data_packed: 0,
                copied: 0,
            },
            opts,
            applied,
            membership,
            sealed,
            stats,
            seal_start: None,
            behind: None,
            log: None,
            rescans: Vec::new(),
        };
        let sealed_at = inner
            .sealed
            .as_ref()
            .and_then(|s| s.log)
            .map(LogIdJson::to_log_id);
        if inner.applied != sealed_at {
            // Only a catalog written before issue 9 can be durably past its seal (redb made
            // pending non-durable commits durable on close). The blobs of those entries may never
            // have been stored: go back to the seal; openraft then replays the log after it.
            tracing::warn!(
                "catalog {}: applied index {:?} is past the last seal {:?}; going back to the seal and replaying the log",
                inner.catalog.path().display(),
                inner.applied.map(|a| a.index),
                sealed_at.map(|a| a.index)
            );
            if let Some(cur) = inner.current() {
                inner.install(&cur.meta, &cur.snapshot)?;
            } else {
                let mut txn = inner.catalog.begin()?;
                txn.reset_root()?;
                txn.remove_meta("applied")?;
                txn.commit(true)?;
                inner.applied = None;
                inner.stats.applied = None;
            }
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            sealing: Arc::new(Mutex::new(())),
            idle: Arc::new(Condvar::new()),
            clock,
        })
    }

    /// A seal stamp for now: the repository's clock ([`Repository::set_clock`]) and this
    /// replica's host, path and ancestors. Only the proposer stamps; every replica applies the
    /// stamp it finds in the log.
    pub fn stamp_now(&self) -> Seal {
        let ns = self
            .clock
            .now()
            .timestamp_nanos_opt()
            .expect("the clock is between 1677 and 2262");
        self.lock().opts.stamp(ns)
    }

    /// Gives the state machine the log it applies, so that it can replay what it applied since
    /// the last seal after a store failure. Without it, a store failure is fatal.
    pub fn attach_log(&self, log: LogStore) {
        self.lock().log = Some(log);
    }

    /// Paths whose edit a replay could not apply (its chunks are gone): capture must read them
    /// again. Drains the list.
    pub fn take_rescans(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().rescans)
    }

    /// Why the repository cannot be written now, if it cannot.
    pub fn store_error(&self) -> Option<String> {
        self.lock().behind.as_ref().map(|b| b.reason.clone())
    }

    fn lock(&self) -> MutexGuard<'_, SmInner> {
        self.inner.lock().expect("state machine lock")
    }

    /// The lock, once no apply is storing packs: everything applied so far is stored and
    /// indexed in memory (a seal or a revalidation then writes the index file).
    fn lock_idle(&self) -> MutexGuard<'_, SmInner> {
        let mut g = self.lock();
        while g.packer.in_flight > 0 {
            g = self.idle.wait(g).expect("state machine lock");
        }
        g
    }

    /// Stores the packs an apply closed, on a blocking thread (not on the async runtime's
    /// workers, and without the state machine's lock); then indexes them in memory. A store
    /// failure makes the state machine fall behind, as a failed apply does; only a fatal error
    /// is returned.
    async fn store_full_packs(&self, full: Vec<FinishedPack>, repo: Repository) -> Result<()> {
        let sm = self.clone();
        let n = full.len();
        tokio::task::spawn_blocking(move || {
            let mut failed = None;
            let mut done = Vec::with_capacity(n);
            for pack in full {
                match store_pack(&repo, &pack) {
                    Ok(()) => done.push(pack),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let mut g = sm.lock();
            for pack in done {
                g.packer.stored(pack);
            }
            g.packer.in_flight -= n;
            let result = match failed.map(|e| g.store_failed(e)) {
                None | Some(Error::Store(_)) => Ok(()),
                Some(fatal) => Err(fatal),
            };
            drop(g);
            sm.idle.notify_all();
            result
        })
        .await
        .map_err(|e| Error::Invalid(format!("storing a pack: {e}")))?
    }

    /// Counters.
    pub fn stats(&self) -> SmStats {
        let g = self.lock();
        let mut s = g.stats.clone();
        s.packs = g.packer.packs;
        s.store_error = g.behind.as_ref().map(|b| b.reason.clone());
        s.behind_ms = g
            .behind
            .as_ref()
            .map(|b| b.since.elapsed().as_millis() as u64);
        s
    }

    /// Whether the live tree changed since the last seal.
    pub fn changed_since_seal(&self) -> bool {
        let g = self.lock();
        g.stats.edits_since_seal > 0 || !g.catalog.is_sealed().unwrap_or(false)
    }

    /// Runs `f` on the catalog (for status and tests).
    pub fn with_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.lock().catalog)
    }

    /// The repository snapshot of the last seal.
    pub fn seal_snapshot_id(&self) -> Option<SnapshotId> {
        self.lock()
            .sealed
            .as_ref()
            .and_then(|s| SnapshotId::from_hex(&s.snapshot))
    }

    /// Takes in packs that prune newly condemned (`docs/format.md` §19): from now on no blob
    /// only they hold is reused, and every blob the catalog refers to that only they hold is
    /// copied into a new pack, which is stored and indexed before this returns. Afterwards this
    /// writer no longer depends on them. Returns the number of blobs copied.
    pub fn revalidate(&self, packs: &[(PackId, chrono::DateTime<chrono::Utc>)]) -> Result<u64> {
        let mut g = self.lock_idle();
        g.packer.repo.condemn_packs(packs);
        if let Some(b) = &g.behind {
            // The catch-up replay copies what is needed, as apply does.
            return Err(Error::Store(b.reason.clone()));
        }
        let mut refs = Vec::new();
        g.catalog.referenced_blobs(&mut |id| refs.push(id))?;
        let before = g.packer.copied;
        let copied = (|| {
            for id in refs {
                g.packer.ensure_live(&id)?;
            }
            g.packer.flush()?;
            g.packer.write_index()
        })();
        match copied {
            Ok(()) => Ok(g.packer.copied - before),
            Err(e) => Err(g.store_failed(e)),
        }
    }

    /// Prepares a seal before it is proposed: stores the open pack (the file data applied since
    /// the last seal) without the lock. Its fsync is the slow part of a seal (58 ms measured
    /// under a 100/s writer, while the log's own syncs took 0.3 ms); holding the lock through it,
    /// or doing it while applying the seal entry, stalls capture, which waits for apply. This is
    /// what an apply does when a pack fills, minus the lock: the catalog is not touched, the
    /// pack's blobs count as known meanwhile, and its index file is written by the seal entry,
    /// which then only stores the trees' small pack, the index and the snapshot. Skipping this
    /// changes nothing a seal produces (pack boundaries do not reach trees).
    ///
    /// A store failure returns [`Error::Store`] and leaves the state machine behind and working.
    pub fn prepare_seal(&self) -> Result<()> {
        let _one = self.sealing.lock().expect("seal lock");
        self.store_open_pack()
    }

    /// Applies one entry and records it as applied. A seal entry waits for a seal being
    /// prepared ([`Self::prepare_seal`]), so that its snapshot never names a pack not yet stored.
    fn apply_one(&self, log_id: &LogId, payload: &Payload) -> Result<ApplyResult> {
        let seal = matches!(payload, EntryPayload::Normal(Request::Seal(_)));
        let _one = seal.then(|| self.sealing.lock().expect("seal lock"));
        // A seal names every pack applied so far: it waits for the applies' stores.
        let mut g = if seal { self.lock_idle() } else { self.lock() };
        let result = g.apply_entry(log_id, payload)?;
        g.applied = Some(*log_id);
        g.stats.applied = Some(log_id.index);
        Ok(result)
    }

    /// The Raft snapshot for openraft (after a seal entry, the engine asks for one to purge the
    /// log): the last seal. Entries applied after it that changed nothing (blank, membership)
    /// move the seal up to them, keeping its snapshot; changes are left to the next seal entry,
    /// which stamps them. Only a state machine that was never sealed through the log (openraft's
    /// storage suite drives it directly) seals here with its own stamp.
    fn build(&self) -> Result<RaftSnapshot> {
        let _one = self.sealing.lock().expect("seal lock");
        let mut g = self.lock_idle();
        let at = g.applied;
        let changed = g.stats.edits_since_seal > 0 || !g.catalog.is_sealed()?;
        if let Some(cur) = g.current() {
            if g.behind.is_some() || changed || cur.meta.last_log_id == at {
                return Ok(cur);
            }
        }
        let ns = self
            .clock
            .now()
            .timestamp_nanos_opt()
            .expect("the clock is between 1677 and 2262");
        let stamp = g.opts.stamp(ns);
        match g.seal(at.as_ref(), &stamp, Instant::now()) {
            Ok(s) => Ok(s),
            Err(e) => Err(g.store_failed(e)),
        }
    }

    /// The packs applies closed, counted as in flight until [`Self::store_full_packs`] has
    /// stored them; `None` when there are none.
    fn take_full(&self) -> Option<(Vec<FinishedPack>, Repository)> {
        let mut g = self.lock();
        if g.packer.full.is_empty() {
            return None;
        }
        let full = std::mem::take(&mut g.packer.full);
        g.packer.in_flight += full.len();
        Some((full, g.packer.repo.clone()))
    }

    /// Stores the open pack without holding the state machine's lock (sealed there too).
    fn store_open_pack(&self) -> Result<()> {
        let (open, repo) = {
            let mut g = self.lock();
            let open = g.packer.packer.take_open();
            if open.is_empty() {
                return Ok(());
            }
            let in_pack = std::mem::take(&mut g.packer.in_pack);
            g.packer.storing.extend(in_pack);
            (open, g.packer.repo.clone())
        };
        for builder in open {
            let (id, bytes, entries) = builder.finish(repo.crypto());
            let pack = FinishedPack { id, bytes, entries };
            let put = store_pack(&repo, &pack);
            let mut g = self.lock();
            match put {
                Ok(()) => g.packer.stored(pack),
                Err(e) => return Err(g.store_failed(e)),
            }
        }
        Ok(())
    }
}

/// Applies a batch's edits to the catalog's open transaction and records `log_id` as applied. A
/// put whose chunks are not all `present` is skipped, as is a move from a path the catalog does
/// not have: their paths are returned for capture to rescan.
fn apply_edits(
    catalog: &mut Catalog,
    log_id: &LogId,
    batch: &Batch,
    present: &mut dyn FnMut(&BlobId) -> Result<bool>,
) -> Result<ApplyResult> {
    let mut result = ApplyResult {
        index: log_id.index,
        ..ApplyResult::default()
    };
    let mut txn = catalog.begin()?;
    for edit in &batch.edits {
        match edit {
            Edit::Put { path, node } => {
                let mut have_all = true;
                if node.kind() == NodeType::File {
                    for id in &node.content {
                        have_all &= present(id)?;
                    }
                }
                if !have_all {
                    tracing::warn!(path = %String::from_utf8_lossy(path), "put refers to chunks the repository does not have; rescanning");
                    result.rescan.push(path.clone());
                    continue;
                }
                txn.put(path, node)?;
            }
            Edit::Delete { path } => {
                txn.delete(path)?;
            }
            Edit::Move { from, to } => {
                if !txn.rename(from, to)? {
                    result.rescan.push(to.clone());
                }
            }
        }
    }
    txn.set_meta("applied", &LogIdJson::from(log_id))?;
    txn.commit(false)?;
    Ok(result)
}

impl SmInner {
    /// Applies one entry. A store failure is not an error here: the state machine falls behind
    /// (which covers this entry too, from the log) and the entry counts as applied.
    ///
    /// A seal entry applied while behind first catches up (replays the log since the last seal,
    /// storing, which seals the earlier seal entries with their own stamps); if the store still
    /// fails, the seal entry too is only recorded, and its result says why.
    fn apply_entry(&mut self, log_id: &LogId, payload: &Payload) -> Result<ApplyResult> {
        if matches!(payload, EntryPayload::Normal(Request::Seal(_))) && self.behind.is_some() {
            match self.catch_up() {
                Ok(()) | Err(Error::Store(_)) => {}
                Err(fatal) => return Err(fatal),
            }
        }
        match self.apply_payload(log_id, payload) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.applied = Some(*log_id);
                match self.store_failed(e) {
                    Error::Store(why) => Ok(ApplyResult {
                        index: log_id.index,
                        store_error: Some(why),
                        ..ApplyResult::default()
                    }),
                    fatal => Err(fatal),
                }
            }
        }
    }

    fn apply_payload(&mut self, log_id: &LogId, payload: &Payload) -> Result<ApplyResult> {
        match payload {
            EntryPayload::Blank => {
                self.set_applied(log_id, None)?;
                Ok(ApplyResult {
                    index: log_id.index,
                    ..ApplyResult::default()
                })
            }
            EntryPayload::Membership(m) => {
                self.set_applied(
                    log_id,
                    Some(StoredMembership::new(Some(*log_id), m.clone())),
                )?;
                Ok(ApplyResult {
                    index: log_id.index,
                    ..ApplyResult::default()
                })
            }
            EntryPayload::Normal(Request::Batch(batch)) if self.behind.is_some() => {
                self.apply_deferred(log_id, batch)
            }
            EntryPayload::Normal(Request::Batch(batch)) => self.apply_batch(log_id, batch),
            EntryPayload::Normal(Request::Seal(stamp)) => self.apply_seal(log_id, stamp),
        }
    }

    /// Seals at `log_id` with the entry's stamp. While behind it is only recorded as applied:
    /// the catch-up replays it, storing, and seals it then.
    fn apply_seal(&mut self, log_id: &LogId, stamp: &Seal) -> Result<ApplyResult> {
        let mut result = ApplyResult {
            index: log_id.index,
            ..ApplyResult::default()
        };
        if let Some(b) = &self.behind {
            result.store_error = Some(b.reason.clone());
            self.set_applied(log_id, None)?;
            return Ok(result);
        }
        let sealed = self.seal(Some(log_id), stamp, Instant::now())?;
        result.sealed = Some(sealed.snapshot.id);
        Ok(result)
    }

    /// Handles a failed operation: a catalog failure (the state directory) is returned as it is
    /// (fatal); anything else was the store, and the state machine falls behind. Returns the
    /// error to report: [`Error::Store`] with the cause in one line, or a fatal one.
    fn store_failed(&mut self, e: Error) -> Error {
        if matches!(e, Error::Catalog { .. } | Error::Store(_) | Error::Log(_)) {
            return e;
        }
        let reason = describe_store_error(&e);
        match self.fall_behind(reason.clone()) {
            Ok(()) => Error::Store(reason),
            Err(fatal) => fatal,
        }
    }

    /// Goes back to the last seal and replays the log since without storing (module doc).
    fn fall_behind(&mut self, reason: String) -> Result<()> {
        if self.log.is_none() {
            return Err(Error::Invalid(format!(
                "{reason} (and no log to replay from)"
            )));
        }
        tracing::error!(
            "{reason}: following the log without storing until the repository works again"
        );
        self.stats.store_failures += 1;
        let since = self.behind.as_ref().map_or_else(Instant::now, |b| b.since);
        self.behind = Some(Behind {
            reason,
            since,
            deferred: HashSet::new(),
        });
        self.rewind()?;
        self.replay()
    }

    /// Rewinds and replays the log since the last seal, storing; then the state machine is
    /// normal again. On a store failure it falls behind again and returns [`Error::Store`].
    fn catch_up(&mut self) -> Result<()> {
        let Some(behind) = self.behind.take() else {
            return Ok(());
        };
        let replayed = self.rewind().and_then(|()| self.replay());
        match replayed {
            Ok(()) => {
                tracing::warn!(
                    "the repository works again after {:.1} s: caught up with the log",
                    behind.since.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Err(e) => {
                self.behind = Some(behind);
                Err(self.store_failed(e))
            }
        }
    }

    /// Back to the last seal: the catalog's open transaction is discarded, and the open pack
    /// with every blob known only from it (or from a pack being stored) is forgotten. Packs
    /// that were stored stay indexed in memory; the next seal writes their index file.
    fn rewind(&mut self) -> Result<()> {
        self.catalog.rewind()?;
        let p = &mut self.packer;
        p.packer.discard();
        p.full.clear();
        p.in_pack.clear();
        p.storing.clear();
        (p.trees_new, p.data_new, p.data_added, p.data_packed) = (0, 0, 0, 0);
        self.stats.edits_since_seal = 0;
        self.stats.bytes_since_seal = 0;
        self.membership = match self.catalog.meta::<StoredMembershipJson>("membership")? {
            Some(m) => m
                .into_stored()
                .map_err(|r| Error::catalog(self.catalog.path(), r))?,
            None => StoredMembership::default(),
        };
        if let Some(b) = &mut self.behind {
            b.deferred.clear();
        }
        Ok(())
    }

    /// Applies the log's entries after the last seal up to `applied` again (after [`Self::rewind`]).
    fn replay(&mut self) -> Result<()> {
        let Some(log) = self.log.clone() else {
            return Err(Error::Invalid("no log to replay from".into()));
        };
        let Some(last) = self.applied.map(|a| a.index) else {
            return Ok(());
        };
        let from = match self.sealed.as_ref().and_then(|s| s.log) {
            Some(l) => l.index + 1,
            None => log.wal().bounds()?.map_or(last + 1, |(first, _)| first),
        };
        let mut next = from;
        while next <= last {
            let end = (next + 64).min(last + 1);
            let entries = log
                .read_entries(next, end)
                .map_err(|e| Error::Invalid(format!("replaying log entries {next}..{end}: {e}")))?;
            if entries.is_empty() {
                return Err(Error::Invalid(format!(
                    "replaying the log: entries {next}..{end} are missing"
                )));
            }
            for entry in entries {
                next = entry.log_id.index + 1;
                let r = self.apply_payload(&entry.log_id, &entry.payload)?;
                self.rescans.extend(r.rescan);
            }
        }
        Ok(())
    }

    /// Applies a batch while behind: catalog edits only; its blobs stay in the log.
    fn apply_deferred(&mut self, log_id: &LogId, batch: &Batch) -> Result<ApplyResult> {
        let behind = self
            .behind
            .as_mut()
            .expect("apply_deferred is called while behind");
        for b in &batch.blobs {
            behind.deferred.insert(b.id);
            self.stats.bytes_since_seal += b.envelope.len() as u64;
        }
        if self.seal_start.is_none() {
            self.seal_start = Some(chrono::Utc::now());
        }
        let repo = &self.packer.repo;
        // Present: stored, or in the log since the seal, or in a condemned pack (the catch-up
        // copies it out, or finds it gone and has the path rescanned).
        let result = apply_edits(&mut self.catalog, log_id, batch, &mut |id| {
            Ok(behind.deferred.contains(id) || repo.index().get(id).is_some())
        })?;
        self.count_applied(batch, &result);
        Ok(result)
    }

    fn apply_batch(&mut self, log_id: &LogId, batch: &Batch) -> Result<ApplyResult> {
        if self.seal_start.is_none() {
            self.seal_start = Some(chrono::Utc::now());
        }
        for b in &batch.blobs {
            self.packer.add_blob(b);
            self.stats.bytes_since_seal += b.envelope.len() as u64;
        }
        let packer = &mut self.packer;
        let result = apply_edits(&mut self.catalog, log_id, batch, &mut |id| {
            packer.ensure_live(id)
        })?;
        self.count_applied(batch, &result);
        Ok(result)
    }

    fn count_applied(&mut self, batch: &Batch, result: &ApplyResult) {
        self.stats.edits_since_seal += batch.edits.len() as u64;
        self.stats.skipped += result.rescan.len() as u64;
        self.stats.last_captured_ns = batch.captured_ns;
    }

    fn set_applied(&mut self, log_id: &LogId, membership: Option<StoredMembership>) -> Result<()> {
        let mut txn = self.catalog.begin()?;
        txn.set_meta("applied", &LogIdJson::from(log_id))?;
        if let Some(m) = membership {
            txn.set_meta("membership", &StoredMembershipJson::from(&m))?;
            self.membership = m;
        }
        txn.commit(false)
    }

    fn current(&self) -> Option<RaftSnapshot> {
        let s = self.sealed.as_ref()?;
        let id = SnapshotId::from_hex(&s.snapshot)?;
        let membership = s.membership.clone().into_stored().ok()?;
        Some(RaftSnapshot {
            meta: SnapshotMeta {
                last_log_id: s.log.map(LogIdJson::to_log_id),
                last_membership: membership,
            },
            snapshot: SealedSnapshot { id },
        })
    }

    /// The seal proper, under the lock: seals the live tree as of log entry `at` (the seal
    /// entry; `None` only for a state machine that applied nothing) with `stamp`. Everything that decides the root tree id and the snapshot's revision,
    /// time, host and path comes from the log; only the snapshot's user, parent and summary are
    /// this replica's.
    fn seal(&mut self, at: Option<&LogId>, stamp: &Seal, started: Instant) -> Result<RaftSnapshot> {
        let mut txn = self.catalog.begin()?;
        let packer = &mut self.packer;
        let crypto = packer.repo.crypto().clone();
        let (_, mut node) = txn.seal_trees(&mut |t| Ok(packer.store_tree(t)), &|name| {
            crypto.ends_page(name)
        })?;
        // Wrap the watched directory in its ancestors, as `backup` does (`docs/format.md` §8):
        // recorded metadata where the caller gave it, a plain directory otherwise.
        let watched = std::path::Path::new(&stamp.path);
        let components: Vec<&std::ffi::OsStr> = watched
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let Some((watched_name, ancestors)) = components.split_last() else {
            return Err(Error::Invalid(
                "the watched path has no name (watching / is not supported)".into(),
            ));
        };
        node.set_name(watched_name);
        for (i, name) in ancestors.iter().enumerate().rev() {
            let mut tree = Tree::new();
            tree.nodes.push(node);
            let id = packer.store_tree(&tree);
            node = match stamp.ancestors.get(i) {
                Some(a) if a.os_name() == **name => a.clone(),
                _ => crate::catalog::default_dir(),
            };
            node.set_name(name);
            node.subtree = Some(id);
        }
        let mut top = Tree::new();
        top.nodes.push(node);
        let tree = packer.store_tree(&top);
        packer.flush()?;
        packer.write_index()?;

        let bytes_total = txn.bytes_total()?;
        let membership = StoredMembershipJson::from(&self.membership);
        let same_tree = self
            .sealed
            .as_ref()
            .is_some_and(|s| s.tree == tree.to_hex());
        let snapshot_id = if let (Some(s), true) = (&self.sealed, same_tree) {
            s.snapshot.clone()
        } else {
            let now = chrono::Utc::now();
            let time = chrono::DateTime::from_timestamp_nanos(stamp.time_ns);
            let o = &self.opts;
            let snap = Snapshot {
                version: 1,
                time: time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                hostname: stamp.host.clone(),
                username: o.username.clone(),
                uid: o.uid,
                gid: o.gid,
                paths: vec![stamp.path.clone()],
                tags: Vec::new(),
                parent: self
                    .sealed
                    .as_ref()
                    .and_then(|s| SnapshotId::from_hex(&s.snapshot)),
                tree,
                program_version: format!("tidemark {}", env!("CARGO_PKG_VERSION")),
                summary: Summary {
                    files_changed: self.stats.edits_since_seal,
                    bytes_total,
                    data_blobs_new: packer.data_new,
                    tree_blobs_new: packer.trees_new,
                    data_added: packer.data_added,
                    data_added_packed: packer.data_packed,
                    start: self
                        .seal_start
                        .unwrap_or(now)
                        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    end: now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    ..Summary::default()
                },
                revision: at.map(|a| a.index),
                log: at.map(|a| LogPosition {
                    term: a.leader_id.term,
                    node: a.leader_id.node_id,
                }),
                membership: serde_json::to_value(MembershipJson::from(
                    self.membership.membership(),
                ))
                .ok(),
            };
            packer.repo.save_snapshot(&snap)?.to_hex()
        };
        let sealed = SealedMeta {
            snapshot: snapshot_id,
            tree: tree.to_hex(),
            log: at.map(LogIdJson::from),
            membership,
        };
        txn.set_meta("sealed", &sealed)?;
        if let Some(a) = at {
            txn.set_meta("applied", &LogIdJson::from(a))?;
        }
        txn.set_meta("membership", &StoredMembershipJson::from(&self.membership))?;
        txn.commit(true)?;
        self.sealed = Some(sealed);
        self.seal_start = None;
        let p = &mut self.packer;
        (p.trees_new, p.data_new, p.data_added, p.data_packed) = (0, 0, 0, 0);
        let s = &mut self.stats;
        s.seals += 1;
        s.last_seal_ms = started.elapsed().as_secs_f64() * 1e3;
        s.last_seal_at = Some(Instant::now());
        s.edits_since_seal = 0;
        s.bytes_since_seal = 0;
        s.sealed = at.map(|a| a.index);
        s.sealed_snapshot = self.sealed.as_ref().map(|x| x.snapshot.clone());
        Ok(self.current().expect("just sealed"))
    }

    fn install(&mut self, meta: &SnapshotMeta, data: &SealedSnapshot) -> Result<()> {
        let repo = self.packer.repo.clone();
        let snap = repo.load_snapshot(&data.id)?;
        // Descend from the top tree through the ancestors to the watched directory's node.
        let watched: Vec<Vec<u8>> =
            std::path::Path::new(snap.paths.first().map_or("/", String::as_str))
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(n) => {
                        Some(std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec())
                    }
                    _ => None,
                })
                .collect();
        let mut tree_id = snap.tree;
        let mut node = None;
        for name in &watched {
            let tree = repo.load_tree(&tree_id)?;
            let n = tree.find(name).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "snapshot {} does not contain its path",
                    data.id.short()
                ))
            })?;
            tree_id = n.subtree.unwrap_or(tree_id);
            node = Some(n);
        }
        let root = node.ok_or_else(|| {
            Error::Invalid(format!("snapshot {} has no watched path", data.id.short()))
        })?;
        let mut txn = self.catalog.begin()?;
        txn.import(&root, &mut |id| Ok(repo.load_tree(id)?))?;
        let sealed = SealedMeta {
            snapshot: data.id.to_hex(),
            tree: snap.tree.to_hex(),
            log: meta.last_log_id.as_ref().map(LogIdJson::from),
            membership: StoredMembershipJson::from(&meta.last_membership),
        };
        txn.set_meta("sealed", &sealed)?;
        if let Some(a) = &meta.last_log_id {
            txn.set_meta("applied", &LogIdJson::from(a))?;
        }
        txn.set_meta("membership", &sealed.membership)?;
        txn.commit(true)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.sealed = Some(sealed);
        self.stats.applied = self.applied.map(|a| a.index);
        self.stats.sealed = self.stats.applied;
        Ok(())
    }
}

impl tidemark_core::capture::LiveTree for StateMachine {
    fn node(&self, path: &[u8]) -> tidemark_core::Result<Option<Node>> {
        self.with_catalog(|c| tidemark_core::capture::LiveTree::node(c, path))
    }
    fn children(&self, path: &[u8]) -> tidemark_core::Result<Vec<Node>> {
        self.with_catalog(|c| tidemark_core::capture::LiveTree::children(c, path))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SealedSnapshot;

    async fn build_snapshot(&mut self) -> std::result::Result<RaftSnapshot, io::Error> {
        // A seal blocks for its fsyncs; on a runtime worker that would also hold up whatever task
        // was queued behind it on that worker (its LIFO slot cannot be stolen): measured as 60 to
        // 120 ms of stalled capture. On the blocking pool it holds up nothing.
        // A store failure leaves the state machine behind, not broken: hand openraft the last
        // seal (it ignores a snapshot no newer than the one it has), and the engine retries.
        let sm = self.clone();
        tokio::task::spawn_blocking(move || match sm.build() {
            Err(Error::Store(why)) => sm.lock().current().ok_or(Error::Store(why)),
            other => other,
        })
        .await
        .map_err(|e| io::Error::other(format!("the seal task failed: {e}")))?
        .map_err(io_err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SealedSnapshot;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), io::Error> {
        let g = self.lock();
        Ok((g.applied, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::result::Result<(), io::Error>
    where
        Strm: Stream<Item = std::result::Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = if matches!(entry.payload, EntryPayload::Normal(Request::Seal(_))) {
                // A seal blocks for its fsyncs: on the blocking pool it holds up no runtime
                // worker (see `build_snapshot`).
                let sm = self.clone();
                tokio::task::spawn_blocking(move || sm.apply_one(&entry.log_id, &entry.payload))
                    .await
                    .map_err(|e| io::Error::other(format!("the seal task failed: {e}")))?
            } else {
                self.apply_one(&entry.log_id, &entry.payload)
            };
            let result = result.map_err(io_err)?;
            // Packs the apply filled are stored off the runtime's workers, without the lock.
            if let Some((full, repo)) = self.take_full() {
                self.store_full_packs(full, repo).await.map_err(io_err)?;
            }
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SealedSnapshot,
    ) -> std::result::Result<(), io::Error> {
        self.lock().install(meta, &snapshot).map_err(io_err)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<RaftSnapshot>, io::Error> {
        Ok(self.lock().current())
    }
}
