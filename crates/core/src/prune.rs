//! `prune`: frees what no snapshot uses, while other writers keep writing (`docs/format.md` §19).
//!
//! ```text
//! session ─▶ plan:    sessions ─▶ deletion records ─▶ snapshots ─▶ index (per pack) ─▶ mark
//!                       ─▶ sweep old records (delete, or resurrect what is used again)
//!                       ─▶ unused / sparse / small packs                     ─▶ PrunePlan
//!        ─▶ execute: delete swept packs ─▶ repack ─▶ new index files ─▶ condemn (one deletion
//!                       record) ─▶ delete old index files and swept records ─▶ end session
//! ```
//! A dry run is the plan alone, made without a session: it stores nothing. A plan is carried out
//! only under the session it was made under, so what it decided about other writers still holds.
//! Nothing is deleted that a snapshot, or a writer that may not know yet, could use: packs are
//! only condemned here, and deleted by a later prune once every live writer has seen the
//! record. Memory: the per-pack entry lists (~60 bytes a blob), the index (~56 bytes a blob) and
//! the mark set (~40 bytes a used blob).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::crypto::Crypto;
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, ObjectId, PackId};
use crate::lifecycle::{self, DeletionRecord, LeaseClock, Liveness, Session};
use crate::pack::{BlobEntry, FinishedPack, Packer};
use crate::repo::Repository;
use crate::store::Store;

/// How `prune` decides.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// [`prune`] only plans: it stores and deletes nothing, and reports the plan.
    pub dry_run: bool,
    /// Condemned packs are deleted only after this long (and once every writer has seen it).
    pub keep_condemned: Duration,
    /// A pack whose unused share is at least this is repacked.
    pub repack_threshold: f64,
    /// Repacking stops once the unused bytes left are at most this share of the repository as it
    /// will be after the prune.
    pub max_unused: f64,
    /// At most this many bytes of packs are repacked in one run.
    pub max_repack_bytes: Option<u64>,
    /// Recorded in the session.
    pub hostname: String,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            keep_condemned: Duration::from_secs(3600),
            repack_threshold: 0.10,
            max_unused: 0.05,
            max_repack_bytes: None,
            hostname: String::new(),
        }
    }
}

/// What `prune` found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Snapshots marked from.
    pub snapshots: usize,
    /// Indexed packs and their bytes before.
    pub packs: usize,
    /// Bytes in indexed packs before.
    pub bytes: u64,
    /// Blobs in use.
    pub blobs_used: usize,
    /// Indexed blobs no snapshot uses.
    pub blobs_unused: usize,
    /// Packs deleted now (condemned by an earlier prune, and unused since).
    pub packs_deleted: usize,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Condemned packs found in use again and kept.
    pub packs_resurrected: usize,
    /// Condemned packs not deleted yet: too recent, or a writer has not seen the record.
    pub packs_waiting: usize,
    /// Why some waiting packs wait (sessions that have not seen their record).
    pub waiting_for: Vec<String>,
    /// Packs condemned now because nothing in them is used.
    pub packs_unused: usize,
    /// Packs repacked (their used blobs copied to new packs, then condemned).
    pub packs_repacked: usize,
    /// Bytes of the packs repacked.
    pub bytes_repacked: u64,
    /// Bytes written to new packs.
    pub bytes_written: u64,
    /// New packs.
    pub packs_new: usize,
    /// Bytes condemned now (freed by a later prune).
    pub bytes_condemned: u64,
    /// Unused bytes left in live packs afterwards.
    pub bytes_unused_left: u64,
    /// Index files written / removed.
    pub index_written: usize,
    /// Index files removed.
    pub index_removed: usize,
    /// Estimated bytes of memory per indexed blob used by this run's tables.
    pub bytes_per_blob: u64,
}

/// One pack as prune sees it.
struct PackInfo {
    entries: Vec<BlobEntry>,
    used: u64,
    total: u64,
}

/// One pack in a [`PrunePlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedPack {
    /// The pack.
    pub pack: PackId,
    /// Bytes of its blobs as indexed (0 for a condemned pack no index file lists any more).
    pub bytes: u64,
    /// Of those, the bytes of used blobs; a blob stored twice counts in one pack only (the
    /// fullest). 0 for condemned packs that wait or are deleted.
    pub used: u64,
}

/// What a prune decided, from one listing of the repository; [`execute`] carries it out.
///
/// Every indexed pack is in exactly one of `keep`, `repack`, `condemn`, `delete` and `waiting`
/// (the last two may also name packs no index lists). Each list is sorted by pack id.
#[derive(Debug, Serialize)]
pub struct PrunePlan {
    /// The plan in numbers, as a dry run reports it ([`execute`] adds what it wrote).
    #[serde(skip)]
    pub report: PruneReport,
    /// Live packs left as they are.
    pub keep: Vec<PlannedPack>,
    /// Live packs whose used blobs are copied into new packs; then they are condemned.
    pub repack: Vec<PlannedPack>,
    /// Live packs nothing uses: condemned as they are (deleted by a later prune).
    pub condemn: Vec<PlannedPack>,
    /// Packs condemned by earlier prunes that every live writer has seen condemned: deleted now.
    pub delete: Vec<PlannedPack>,
    /// Condemned packs found in use again: live again, so also in `keep`, `repack` or `condemn`.
    pub resurrect: Vec<PlannedPack>,
    /// Condemned packs not deleted yet: their record is too recent, or a writer has not seen it.
    pub waiting: Vec<PlannedPack>,
    #[serde(skip)]
    work: Work,
}

/// What [`execute`] needs beyond the lists: the tables the decisions were made from.
struct Work {
    /// The session the plan was made under (`None`: a dry run's plan, which is only shown).
    writer: Option<String>,
    /// Every indexed pack, with its entries.
    packs: HashMap<PackId, PackInfo>,
    /// For each used blob, the one pack whose copy counts (the one a repack copies from).
    owner: HashMap<BlobId, PackId>,
    /// The index files read: replaced by new ones.
    index_files: HashSet<ObjectId>,
    /// Deletion records swept: deleted once the new index is stored.
    swept_records: Vec<ObjectId>,
    /// Session objects of dead writers.
    dead_sessions: Vec<ObjectId>,
    /// The repository's target pack size.
    pack_size: u64,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("writer", &self.writer)
            .field("packs", &self.packs.len())
            .field("index_files", &self.index_files.len())
            .field("swept_records", &self.swept_records)
            .field("dead_sessions", &self.dead_sessions)
            .finish_non_exhaustive()
    }
}

impl Work {
    /// The plan may be carried out only under the session it was made under, and while that
    /// session's lease holds: the exclusion of other prunes and the sightings were decided under it.
    fn check_session(&self, repo: &Repository) -> Result<()> {
        let session = repo
            .session()
            .filter(|s| self.writer.as_ref() == Some(&s.info().writer))
            .ok_or_else(|| {
                Error::Invalid(
                    "this prune plan was not made under the session that would carry it out (a \
                     dry run's plan is only shown): plan again"
                        .into(),
                )
            })?;
        session.check()
    }
}

/// Index files per new index file written.
const PACKS_PER_INDEX: usize = 4096;

/// Runs prune on `repo` (opened, index not necessarily loaded): [`plan`], then, unless it is a
/// dry run, [`execute`], under a session of its own.
pub fn prune(repo: &mut Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let clock = std::sync::Arc::clone(repo.clock());
    prune_with_clock(repo, opts, &*clock)
}

/// Like [`prune`], judging times by `clock` (tests: prune's clock against skewed writers').
pub fn prune_with_clock(
    repo: &mut Repository,
    opts: &PruneOptions,
    clock: &dyn LeaseClock,
) -> Result<PruneReport> {
    if opts.dry_run {
        return plan(repo, opts, clock).map(|p| p.report);
    }
    repo.begin_session("prune", &opts.hostname)?;
    let result = plan(repo, opts, clock).and_then(|p| execute(repo, p, clock));
    if result.is_ok() {
        repo.end_session()?;
    }
    result
}

/// Decides what a prune does: lists sessions, deletion records, snapshots and the index, in that
/// order (`docs/format.md` §19), marks what the snapshots use and plans the sweep, the repack and
/// the condemnation. Refuses while another prune or a `repair index` is live.
///
/// Only a plan made under the repository's session ([`Repository::begin_session`], before this
/// call) can be carried out by [`execute`], under that same session; making it then also does
/// what every lister of sessions does (names unnamed session objects in a record, declares the
/// records it read seen). Without a session (a dry run) nothing is stored.
pub fn plan(
    repo: &mut Repository,
    opts: &PruneOptions,
    clock: &dyn LeaseClock,
) -> Result<PrunePlan> {
    let store = std::sync::Arc::clone(repo.store());
    let crypto = repo.crypto().clone();
    let own = repo.session().map(|s| s.info().writer);
    let own_object = repo.session().map(Session::id);
    let mut report = PruneReport {
        dry_run: true,
        ..PruneReport::default()
    };

    // 1. Sessions, then deletion records, snapshots, index: in that order (§19). Every safety
    // decision below uses prune's own clock or record ids, never a writer's clock.
    let now = clock.wall();
    let listed = lifecycle::sessions(&*store, &crypto)?;
    let records = lifecycle::deletions(&*store, &crypto)?;
    let lease = repo.lease();
    let liveness = Liveness::judge(listed, &records, now, lease);
    if own_object.is_some() {
        liveness.sight(&*store, &crypto, now, own_object.as_ref())?;
    }
    // Two prunes would be safe together, but the second would leave index entries of packs the
    // first deleted; so one waits, and so does `repair index` (which re-lists every pack it
    // finds). A prune killed on this host is recognised by its pid (only here: sweeping never
    // trusts pids, host names can repeat across machines).
    let crashed_here = |s: &lifecycle::SessionInfo| {
        s.command == "prune"
            && s.host == opts.hostname
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
    };
    if let Some(other) = liveness.live.iter().map(|(_, s)| s).find(|s| {
        ["prune", "repair-index"].contains(&s.command.as_str())
            && Some(&s.writer) != own.as_ref()
            && !crashed_here(s)
    }) {
        return Err(Error::Invalid(format!(
            "{} is running (host {}, pid {}, started {}); wait for it, or, if it died, run prune \
             again {} minutes after this",
            if other.command == "prune" {
                "another prune"
            } else {
                "repair index"
            },
            other.host,
            other.pid,
            other.started,
            lease.dead_after().as_secs().div_ceil(60)
        )));
    }
    let sessions: Vec<lifecycle::SessionInfo> = liveness
        .live
        .iter()
        .map(|(_, s)| s)
        .filter(|s| Some(&s.writer) != own.as_ref())
        .cloned()
        .collect();
    // Snapshots before the index: a writer indexes its packs before it stores the snapshot that
    // uses them, so every snapshot listed here finds its blobs in the index read next. One stored
    // later may use a pack that looks unused here; it is only condemned, and the sweep of a later
    // prune (or the writer, copying what it needs) keeps what it uses.
    let snapshots = repo.snapshots()?;
    let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
    let mut index_files: HashSet<ObjectId> = HashSet::new();
    repo.load_index_visit(&mut |file, pack, entries| {
        index_files.insert(*file);
        packs.entry(pack).or_insert_with(|| PackInfo {
            entries: entries.to_vec(),
            used: 0,
            total: entries.iter().map(|e| u64::from(e.stored_len)).sum(),
        });
    })?;
    report.snapshots = snapshots.len();
    report.packs = packs.len();
    report.bytes = packs.values().map(|p| p.total).sum();

    // 2. Mark.
    let mut used: HashSet<BlobId> = HashSet::new();
    let roots: Vec<BlobId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    repo.walk_trees(&roots, &mut |id, tree| {
        used.insert(*id);
        used.extend(tree.pages.iter().map(|p| p.tree));
        for n in &tree.nodes {
            used.extend(n.content.iter().copied());
        }
        Ok(())
    })?;
    for p in packs.values_mut() {
        p.used = p
            .entries
            .iter()
            .filter(|e| used.contains(&e.id))
            .map(|e| u64::from(e.stored_len))
            .sum();
    }
    let indexed_blobs: usize = packs.values().map(|p| p.entries.len()).sum();
    report.blobs_used = used.len();
    report.blobs_unused = packs
        .values()
        .flat_map(|p| p.entries.iter())
        .filter(|e| !used.contains(&e.id))
        .count();
    report.bytes_per_blob = if indexed_blobs == 0 {
        0
    } else {
        let tables = indexed_blobs * (std::mem::size_of::<BlobEntry>() + 56)
            + used.capacity() * (std::mem::size_of::<BlobId>() + 8);
        (tables / indexed_blobs) as u64
    };

    // Blobs with a copy in a pack no record condemns: a condemned copy of them is not needed.
    let all_condemned: HashSet<PackId> = records
        .iter()
        .flat_map(|(_, r)| r.packs.iter().copied())
        .collect();
    let mut live_blobs: HashSet<BlobId> = HashSet::new();
    for (id, p) in &packs {
        if !all_condemned.contains(id) {
            live_blobs.extend(
                p.entries
                    .iter()
                    .filter(|e| used.contains(&e.id))
                    .map(|e| e.id),
            );
        }
    }

    // 3. Sweep records that every live writer has seen (by id) and that are old enough. The
    // grace period compares the record's time with prune's clock: both are prunes' clocks, and
    // safety does not rest on it.
    let existing: std::collections::HashSet<ObjectId> = liveness
        .live
        .iter()
        .map(|(id, _)| *id)
        .chain(liveness.unsighted.iter().copied())
        .collect();
    let mut condemned: HashMap<PackId, chrono::DateTime<Utc>> = HashMap::new();
    let mut swept_records = Vec::new();
    let mut to_delete: HashSet<PackId> = HashSet::new();
    let mut resurrected: HashSet<PackId> = HashSet::new();
    for (rid, r) in &records {
        if r.packs.is_empty() {
            // Sightings only: needed while a session they name is there (dead ones go below).
            if !r.sessions.iter().any(|s| existing.contains(s)) {
                swept_records.push(*rid);
            }
            continue;
        }
        let t = r.time_or(now);
        let old_enough = now
            .signed_duration_since(t)
            .to_std()
            .is_ok_and(|age| age >= opts.keep_condemned);
        let blockers: Vec<&lifecycle::SessionInfo> =
            sessions.iter().filter(|s| !s.has_seen(rid)).collect();
        if !old_enough || !blockers.is_empty() {
            for b in blockers {
                let w = format!(
                    "{} on {} (pid {}, since {})",
                    b.command, b.host, b.pid, b.started
                );
                if !report.waiting_for.contains(&w) {
                    report.waiting_for.push(w);
                }
            }
            for p in &r.packs {
                condemned.entry(*p).or_insert(t);
            }
            continue;
        }
        swept_records.push(*rid);
        for p in &r.packs {
            let needed = packs.get(p).is_some_and(|info| {
                info.entries
                    .iter()
                    .any(|e| used.contains(&e.id) && !live_blobs.contains(&e.id))
            });
            if needed {
                report.packs_resurrected += 1;
                resurrected.insert(*p);
            } else {
                to_delete.insert(*p);
            }
        }
    }
    // A pack a waiting record condemns is not deleted by an eligible one.
    to_delete.retain(|p| !condemned.contains_key(p));
    report.packs_waiting = condemned.len();

    // 4. Plan. A blob stored twice (two writers raced, or an interrupted repack) counts as used
    // in one pack only: the fullest, so the others can go.
    let live_ids: Vec<PackId> = packs
        .keys()
        .filter(|id| !condemned.contains_key(*id) && !to_delete.contains(*id))
        .copied()
        .collect();
    let mut order: Vec<(f64, PackId)> = live_ids
        .iter()
        .map(|id| (packs[id].used as f64 / packs[id].total.max(1) as f64, *id))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1 .0.cmp(&b.1 .0)));
    let mut owner: HashMap<BlobId, PackId> = HashMap::new();
    for (_, id) in &order {
        let p = packs.get_mut(id).expect("listed");
        p.used = 0;
        for e in &p.entries {
            if used.contains(&e.id) && !owner.contains_key(&e.id) {
                owner.insert(e.id, *id);
                p.used += u64::from(e.stored_len);
            }
        }
    }
    let target = u64::from(repo.config().pack_size);
    let live: Vec<(&PackId, &PackInfo)> = live_ids.iter().map(|id| (id, &packs[id])).collect();
    let unused: Vec<PackId> = live
        .iter()
        .filter(|(_, p)| p.used == 0)
        .map(|(id, _)| **id)
        .collect();
    let mut candidates: Vec<(PackId, f64, bool)> = live
        .iter()
        .filter(|(_, p)| p.used > 0)
        .filter_map(|(id, p)| {
            let share = (p.total - p.used) as f64 / p.total.max(1) as f64;
            let small = p.total < target / 4;
            (share >= opts.repack_threshold || small).then_some((**id, share, small))
        })
        .collect();
    // Small packs are only worth merging when there are several.
    if candidates
        .iter()
        .filter(|c| c.2 && c.1 < opts.repack_threshold)
        .count()
        < 2
    {
        candidates.retain(|c| c.1 >= opts.repack_threshold);
    }
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0 .0.cmp(&b.0 .0)));
    let mut unused_left: u64 = live
        .iter()
        .filter(|(_, p)| p.used > 0)
        .map(|(_, p)| p.total - p.used)
        .sum();
    // At most `max_unused` of the repository *after* this prune may be unused (as restic counts
    // it): unused <= f * (used + unused), i.e. unused <= f / (1 - f) * used. Measured against the
    // size before, the unused packs about to go would inflate the allowance and leave the work to
    // the next prune.
    let used_live: u64 = live.iter().map(|(_, p)| p.used).sum();
    let allowed_unused = if opts.max_unused >= 1.0 {
        u64::MAX
    } else {
        (opts.max_unused / (1.0 - opts.max_unused) * used_live as f64) as u64
    };
    let mut repack: Vec<PackId> = Vec::new();
    let mut repack_bytes = 0u64;
    for (id, share, small) in candidates {
        let p = &packs[&id];
        if !small && share < 1.0 && unused_left <= allowed_unused {
            continue;
        }
        if opts
            .max_repack_bytes
            .is_some_and(|max| repack_bytes + p.total > max)
        {
            continue;
        }
        repack_bytes += p.total;
        unused_left -= p.total - p.used;
        repack.push(id);
    }
    report.packs_unused = unused.len();
    report.packs_repacked = repack.len();
    report.bytes_repacked = repack_bytes;
    report.bytes_unused_left = unused_left;
    report.bytes_condemned = unused.iter().map(|id| packs[id].total).sum::<u64>() + repack_bytes;
    report.packs_deleted = to_delete.len();
    report.bytes_deleted = to_delete
        .iter()
        .filter_map(|id| packs.get(id))
        .map(|p| p.total)
        .sum();

    let live_now: HashSet<&PackId> = live_ids.iter().collect();
    let planned = |ids: &mut dyn Iterator<Item = &PackId>| -> Vec<PlannedPack> {
        let mut out: Vec<PlannedPack> = ids
            .map(|id| {
                let (bytes, used) = packs.get(id).map_or((0, 0), |p| {
                    (p.total, if live_now.contains(id) { p.used } else { 0 })
                });
                PlannedPack {
                    pack: *id,
                    bytes,
                    used,
                }
            })
            .collect();
        out.sort_by_key(|p| p.pack.0);
        out
    };
    let moving: HashSet<&PackId> = unused.iter().chain(&repack).collect();
    Ok(PrunePlan {
        keep: planned(&mut live_ids.iter().filter(|id| !moving.contains(id))),
        repack: planned(&mut repack.iter()),
        condemn: planned(&mut unused.iter()),
        delete: planned(&mut to_delete.iter()),
        resurrect: planned(&mut resurrected.iter()),
        waiting: planned(&mut condemned.keys()),
        report,
        work: Work {
            writer: own,
            packs,
            owner,
            index_files,
            swept_records,
            dead_sessions: liveness.dead,
            pack_size: target,
        },
    })
}

/// Carries out `plan` under the session it was made under (see [`plan`]): deletes the packs
/// every writer has seen condemned, repacks, stores the new index, condemns, then removes the
/// old index files, the swept records and dead writers' sessions. A crash at any point leaves
/// every snapshot readable; the next prune carries on.
pub fn execute(repo: &Repository, plan: PrunePlan, clock: &dyn LeaseClock) -> Result<PruneReport> {
    let PrunePlan {
        mut report,
        repack: to_repack,
        condemn,
        delete,
        work,
        ..
    } = plan;
    work.check_session(repo)?;
    report.dry_run = false;
    let store = std::sync::Arc::clone(repo.store());
    let crypto = repo.crypto().clone();

    // Deletions first: every live writer has seen these records, and nothing uses the packs.
    let mut deleted: HashSet<PackId> = HashSet::new();
    for p in &delete {
        store.delete(Kind::Pack, &p.pack)?;
        deleted.insert(p.pack);
    }

    // 5. Repack: copy used blobs, envelopes unchanged, into new packs.
    let repack_ids: Vec<PackId> = to_repack.iter().map(|p| p.pack).collect();
    let new_packs = repack(
        &*store,
        &crypto,
        &work.packs,
        &work.owner,
        &repack_ids,
        work.pack_size,
        &mut report,
    )?;
    report.packs_new = new_packs.len();

    // 6. New index files: every pack not deleted, condemned ones included, and the new packs.
    let mut keep: Vec<(PackId, Vec<BlobEntry>)> = work
        .packs
        .into_iter()
        .filter(|(id, _)| !deleted.contains(id))
        .map(|(id, p)| (id, p.entries))
        .collect();
    keep.sort_by_key(|(id, _)| id.0);
    keep.extend(new_packs);
    let mut written = HashSet::new();
    for part in keep.chunks(PACKS_PER_INDEX) {
        written.insert(repo.write_index(part)?);
    }
    report.index_written = written.len();

    // 7. Condemn what is unused now, and what was repacked.
    let mut newly: Vec<PackId> = condemn.iter().chain(&to_repack).map(|p| p.pack).collect();
    newly.sort_by_key(|p| p.0);
    if !newly.is_empty() {
        DeletionRecord::at(clock.wall(), newly, Vec::new()).store(&*store, &crypto)?;
    }

    // 8. Old index files, then the records that were swept.
    for f in work.index_files.difference(&written) {
        store.delete(Kind::Index, f)?;
        report.index_removed += 1;
    }
    for r in work.swept_records {
        store.delete(Kind::Deletion, &r)?;
    }
    // Dead writers' sessions: they store nothing more (their lease lapsed long ago).
    for id in &work.dead_sessions {
        store.delete(Kind::Session, id)?;
    }
    Ok(report)
}

/// Copies the used blobs of the packs `repack` (those `owner` assigns to them), envelopes
/// unchanged, into new packs of about `target` bytes; returns the new packs with their entries.
fn repack(
    store: &dyn Store,
    crypto: &Crypto,
    packs: &HashMap<PackId, PackInfo>,
    owner: &HashMap<BlobId, PackId>,
    repack: &[PackId],
    target: u64,
    report: &mut PruneReport,
) -> Result<Vec<(PackId, Vec<BlobEntry>)>> {
    let mut new_packs: Vec<(PackId, Vec<BlobEntry>)> = Vec::new();
    let mut copied: HashSet<BlobId> = HashSet::new();
    let packer = Packer::new(crypto.clone(), target as usize, 1, usize::MAX);
    let mut store_pack = |pack: FinishedPack| -> Result<()> {
        store.put(Kind::Pack, &pack.id, &pack.bytes)?;
        report.bytes_written += pack.bytes.len() as u64;
        packer.stored(pack);
        Ok(())
    };
    for id in repack {
        let bytes = store.get(Kind::Pack, id, None)?;
        if ObjectId::of(&bytes) != *id {
            return Err(Error::corrupt(
                Kind::Pack,
                id,
                "content does not match its name (BLAKE3 mismatch); not repacking it. Run \
                 `tidemark check --read-data`",
            ));
        }
        for e in &packs[id].entries {
            if owner.get(&e.id) != Some(id) || !copied.insert(e.id) {
                continue;
            }
            let range = e.offset as usize..(e.offset + e.stored_len) as usize;
            let envelope = bytes.get(range).ok_or_else(|| {
                Error::corrupt(
                    Kind::Pack,
                    id,
                    format!("blob {} lies past the end", e.id.short()),
                )
            })?;
            if let Some(full) = packer.add(e.id, e.kind, e.flags, e.raw_len, envelope) {
                store_pack(full)?;
            }
        }
    }
    for last in packer.flush() {
        store_pack(last)?;
    }
    new_packs.extend(packer.take_unindexed());
    Ok(new_packs)
}
