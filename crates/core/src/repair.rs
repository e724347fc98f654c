//! `repair index`: rebuild the index from the pack headers, after index files were lost or
//! damaged (`docs/format.md` §7.1).
//!
//! Index files are listed first, then packs: a writer stores a pack before the index file that
//! lists it, so every pack an old index file names is in the pack listing (unless prune deleted
//! it). New index files are stored before the old ones are deleted, so a crash leaves at worst
//! entries listed twice, which readers accept.
//!
//! It never runs beside `prune` (`docs/format.md` §19): a pack it read a header of could be
//! deleted by a prune before its index file is stored, which would then list a deleted pack. So
//! each stores its session, then lists the sessions, and refuses if the other is live: whichever
//! lists second sees the other.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId, PackId};
use crate::lifecycle::{self, Liveness, Session};
use crate::pack::BlobEntry;
use crate::repo::{index, Repository};

/// Packs per rebuilt index file.
const PACKS_PER_INDEX_FILE: usize = 256;
/// Pack headers read at once (each is two ranged reads; on object stores latency dominates).
const READERS: usize = 8;

/// What `repair index` found and did.
#[derive(Debug, Default, Serialize)]
pub struct RepairIndexReport {
    /// Index files before the repair.
    pub index_files_before: usize,
    /// Of those, files that could not be read or opened (now replaced).
    pub index_files_damaged: Vec<String>,
    /// Packs in the store.
    pub packs: usize,
    /// Packs indexed from their headers.
    pub packs_indexed: usize,
    /// Packs whose header could not be read: `(pack, why)`. Their entries are carried over from a
    /// readable old index file when there is one.
    pub packs_damaged: Vec<(String, String)>,
    /// Of the damaged packs, those whose old index entries were kept.
    pub packs_carried_over: usize,
    /// Packs that were in the store but in no index file (now indexed).
    pub packs_added: usize,
    /// Packs an old index file listed that are not in the store (their entries are dropped).
    pub packs_missing: usize,
    /// Blobs in the new index.
    pub blobs: usize,
    /// Index files written.
    pub index_files_written: usize,
    /// Old index files deleted.
    pub index_files_deleted: usize,
    /// Nothing was written (`--dry-run`).
    pub dry_run: bool,
}

/// What `repair index` decided: the index rebuilt from the pack headers, and the old index
/// files it replaces. [`execute`] carries it out.
#[derive(Debug)]
pub struct RepairIndexPlan {
    /// What was found, as a dry run reports it ([`execute`] adds what it wrote).
    pub report: RepairIndexReport,
    /// The rebuilt index, in pack-id order.
    packs: Vec<(PackId, Vec<BlobEntry>)>,
    /// The index files listed first: deleted once the new ones are stored.
    old_files: Vec<ObjectId>,
    /// The session the plan was made under (`None`: a dry run's plan, which is only shown).
    writer: Option<String>,
}

impl RepairIndexPlan {
    /// The rebuilt index: every pack with its entries, in pack-id order.
    pub fn packs(&self) -> &[(PackId, Vec<BlobEntry>)] {
        &self.packs
    }

    /// Index files the rebuilt index is stored in.
    pub fn files_to_write(&self) -> usize {
        self.packs.len().div_ceil(PACKS_PER_INDEX_FILE)
    }

    /// Old index files deleted after that (one a new file equals byte for byte is kept).
    pub fn files_to_delete(&self) -> &[ObjectId] {
        &self.old_files
    }
}

/// Rebuilds the index from every pack's header and replaces the old index files: [`plan`],
/// then, unless it is a dry run, [`execute`], under a session of its own.
pub fn repair_index(
    repo: &mut Repository,
    hostname: &str,
    dry_run: bool,
) -> Result<RepairIndexReport> {
    if dry_run {
        return plan(repo).map(|p| p.report);
    }
    repo.begin_session("repair-index", hostname)?;
    let plan = match plan(repo) {
        Ok(p) => p,
        Err(e) => {
            // Refused beside a prune, or a header could not be read: this run is over.
            repo.end_session()?;
            return Err(e);
        }
    };
    let report = execute(repo, plan)?;
    repo.end_session()?;
    Ok(report)
}

/// Fails if a live prune (judged as prune judges, by this machine's clock) has a session.
fn refuse_beside_prune(repo: &Repository) -> Result<()> {
    let (store, crypto) = (repo.store(), repo.crypto());
    let now = chrono::Utc::now();
    let records = lifecycle::deletions(&**store, crypto)?;
    let lease = repo.lease();
    let liveness = Liveness::judge(lifecycle::sessions(&**store, crypto)?, &records, now, lease);
    let own = repo.session().map(|s| s.info().writer);
    // Sighting the prune's session lets a later prune or repair find it dead if it crashed.
    liveness.sight(
        &**store,
        crypto,
        now,
        repo.session().map(Session::id).as_ref(),
    )?;
    match liveness.running(&["prune"], own.as_deref()) {
        Some(p) => Err(Error::Invalid(format!(
            "a prune is running (host {}, pid {}, started {}): run repair index after it; if it \
             died, its session is dead {} minutes after this",
            p.host,
            p.pid,
            p.started,
            lease.dead_after().as_secs().div_ceil(60)
        ))),
        None => Ok(()),
    }
}

/// Decides the rebuilt index: opens the old index files, then reads every pack's header.
///
/// Only a plan made under the repository's session ([`Repository::begin_session`], before this
/// call) can be carried out by [`execute`]; making it then first refuses if a prune is live (the
/// two exclude each other, see the module doc). Without a session (a dry run) nothing is stored.
pub fn plan(repo: &Repository) -> Result<RepairIndexPlan> {
    if repo.session().is_some() {
        refuse_beside_prune(repo)?;
    }
    let store = repo.store();
    let mut report = RepairIndexReport {
        dry_run: true,
        ..RepairIndexReport::default()
    };

    // 1. The old index files, as far as they open.
    let old_files: Vec<ObjectId> = store.list_ids(Kind::Index)?;
    report.index_files_before = old_files.len();
    let mut old: HashMap<PackId, Vec<BlobEntry>> = HashMap::new();
    for id in &old_files {
        match store
            .get(Kind::Index, id, None)
            .and_then(|b| index::open(repo.crypto(), id, &b))
        {
            Ok(packs) => {
                for (p, entries) in packs {
                    old.entry(p).or_insert(entries);
                }
            }
            Err(
                e @ (Error::Corrupt { .. }
                | Error::UnsupportedVersion { .. }
                | Error::NotFound { .. }),
            ) => {
                report
                    .index_files_damaged
                    .push(format!("index {}: {e}", id.short()));
            }
            Err(e) => return Err(e),
        }
    }

    // 2. Every pack's header.
    let packs = store.list(Kind::Pack)?;
    report.packs = packs.len();
    let queue = Mutex::new(packs);
    let results: Mutex<Vec<(PackId, Result<Vec<BlobEntry>>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..READERS {
            s.spawn(|| loop {
                let Some((id, len)) = queue.lock().expect("queue lock").pop() else {
                    return;
                };
                let r = repo.read_pack_header(&id, len);
                results.lock().expect("results lock").push((id, r));
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(id, _)| *id);
    let mut new: Vec<(PackId, Vec<BlobEntry>)> = Vec::with_capacity(results.len());
    for (id, r) in results {
        match r {
            Ok(entries) => {
                if !old.contains_key(&id) {
                    report.packs_added += 1;
                }
                report.packs_indexed += 1;
                new.push((id, entries));
            }
            Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => {
                // NotFound: deleted by a concurrent prune between listing and reading.
                if matches!(e, Error::NotFound { .. }) {
                    continue;
                }
                report.packs_damaged.push((id.to_hex(), e.to_string()));
                if let Some(entries) = old.get(&id) {
                    report.packs_carried_over += 1;
                    new.push((id, entries.clone()));
                }
            }
            Err(e) => return Err(e),
        }
    }
    let in_store: std::collections::HashSet<PackId> = new.iter().map(|(p, _)| *p).collect();
    report.packs_missing = old.keys().filter(|p| !in_store.contains(*p)).count();
    report.blobs = new.iter().map(|(_, e)| e.len()).sum();
    Ok(RepairIndexPlan {
        report,
        packs: new,
        old_files,
        writer: repo.session().map(|s| s.info().writer),
    })
}

/// Carries out `plan` under the session it was made under (see [`plan`]): stores the new index
/// files, then deletes the old ones.
pub fn execute(repo: &Repository, plan: RepairIndexPlan) -> Result<RepairIndexReport> {
    let RepairIndexPlan {
        mut report,
        packs,
        old_files,
        writer,
    } = plan;
    let session = repo
        .session()
        .filter(|s| writer.as_ref() == Some(&s.info().writer))
        .ok_or_else(|| {
            Error::Invalid(
                "this repair plan was not made under the session that would carry it out (a dry \
                 run's plan is only shown): plan again"
                    .into(),
            )
        })?;
    session.check()?;
    report.dry_run = false;
    let store = repo.store();

    // 3. New index files, then the old ones go.
    let mut written = std::collections::HashSet::new();
    for group in packs.chunks(PACKS_PER_INDEX_FILE) {
        written.insert(repo.write_index(group)?);
        report.index_files_written += 1;
    }
    for id in &old_files {
        // Without encryption a rebuilt file can have an old one's bytes, hence its name.
        if !written.contains(id) {
            store.delete(Kind::Index, id)?;
            report.index_files_deleted += 1;
        }
    }
    Ok(report)
}
