//! Snapshots and retention policies: storing (under the writer's lease), loading, listing
//! through the local snapshot cache, and resolving `latest` or an id prefix.

use super::Repository;
use crate::crypto::Domain;
use crate::error::{Error, Result};
use crate::forget::StoredPolicy;
use crate::id::{Kind, ObjectId, SnapshotId};
use crate::lifecycle;
use crate::snapshot::cache::{self, CacheFile, CacheStats, SnapshotList};
use crate::snapshot::{Selector, Snapshot, SnapshotFilter};

impl Repository {
    /// The repository's default retention policy, if one was set (the newest, `docs/format.md`
    /// §18).
    pub fn load_policy(&self) -> Result<Option<StoredPolicy>> {
        let mut best: Option<StoredPolicy> = None;
        let all: Vec<(ObjectId, StoredPolicy)> =
            lifecycle::load_all(&*self.store, &self.crypto, Kind::Policy, Domain::Policy)?;
        for (id, p) in all {
            p.check(&id)?;
            if best.as_ref().is_none_or(|b| b.time < p.time) {
                best = Some(p);
            }
        }
        Ok(best)
    }

    /// Stores `policy` as the default, then deletes the older ones.
    pub fn save_policy(&self, policy: &StoredPolicy) -> Result<ObjectId> {
        let (id, bytes) = policy.seal(&self.crypto);
        let old = self.store.list(Kind::Policy)?;
        self.store.put(Kind::Policy, &id, &bytes)?;
        for (o, _) in old {
            if o != id {
                self.store.delete(Kind::Policy, &o)?;
            }
        }
        Ok(id)
    }

    /// Stores a snapshot object; call only after everything it references is indexed.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        self.check_lease()?;
        let (id, bytes) = snap.seal(&self.crypto);
        self.store.put(Kind::Snapshot, &id, &bytes)?;
        // Stopped between the check and the put, past the lease: a prune may have deleted packs
        // it uses, so the snapshot is taken back.
        if let Err(e) = self.check_lease() {
            let _ = self.store.delete(Kind::Snapshot, &id);
            return Err(e);
        }
        Ok(id)
    }

    /// Loads one snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.load_snapshot_plain(id).map(|(s, _)| s)
    }

    /// Loads one snapshot; also returns its checked JSON plaintext.
    fn load_snapshot_plain(&self, id: &SnapshotId) -> Result<(Snapshot, Vec<u8>)> {
        let bytes = self.store.get(Kind::Snapshot, id, None)?;
        Snapshot::open_plain(&self.crypto, id, &bytes)
    }

    /// The ids of every snapshot: one store listing; nothing is read or opened.
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        self.store.list_ids(Kind::Snapshot)
    }

    /// Every snapshot, oldest first, each parsed on demand. With a cache directory set, only
    /// the snapshots the cache does not hold yet are read from the store, and the cache is
    /// brought up to date; a damaged cache is rebuilt and reported in the stats, never an error.
    pub fn snapshot_list(&self) -> Result<(SnapshotList, CacheStats)> {
        let file = self
            .cache_dir
            .as_deref()
            .map(|dir| CacheFile::new(dir, &self.config.id));
        cache::sync(file.as_ref(), &self.crypto, &self.snapshot_ids()?, &|id| {
            self.load_snapshot_plain(id)
        })
    }

    /// All snapshots, oldest first (equal times by id).
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        self.snapshot_list()?.0.parse_all()
    }

    /// The snapshot `selector` picks among those `filter` lets through, if any.
    pub fn select_snapshot(
        &self,
        filter: &SnapshotFilter,
        selector: Selector,
    ) -> Result<Option<(SnapshotId, Snapshot)>> {
        self.snapshot_list()?.0.select(filter, selector)
    }

    /// Resolves `latest` (through the cache; one snapshot is parsed) or a unique id prefix
    /// (one listing, one snapshot read).
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            return self
                .select_snapshot(&SnapshotFilter::default(), Selector::Latest)?
                .ok_or_else(|| Error::Invalid("the repository has no snapshots yet".into()));
        }
        let spec = spec.to_ascii_lowercase();
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "{spec:?} is neither `latest` nor a hex snapshot id prefix"
            )));
        }
        let ids: Vec<ObjectId> = self
            .snapshot_ids()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec))
            .collect();
        match ids.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(Error::Invalid(format!("no snapshot with id prefix {spec}"))),
            _ => Err(Error::Invalid(format!(
                "snapshot prefix {spec} is ambiguous ({} matches); give more characters",
                ids.len()
            ))),
        }
    }
}
