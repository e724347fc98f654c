//! Repository verification.
//!
//! Structure (always): key files parse; every index file opens; every indexed pack exists, its
//! header matches the index; every snapshot opens; every tree reachable from a snapshot decodes
//! and every blob it references is indexed. `read_data` additionally reads every pack, checks its
//! BLAKE3 name and opens every blob (decrypt, decompress, id check); with a [`DataSubset`] it does
//! so for a part of the packs, so that a large repository can be read through over several runs.
//!
//! Each problem names the damaged object and, when blobs or trees are affected, the snapshots
//! and paths that use them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, ObjectId, PackId, SnapshotId};
use crate::repo::{index, Index, Repository};
use crate::snapshot::Snapshot;

/// What to verify.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Read and authenticate every blob (of the packs `subset` picks).
    pub read_data: bool,
    /// Which packs `read_data` reads.
    pub subset: DataSubset,
}

/// Which packs `check --read-data` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum DataSubset {
    /// Every pack.
    #[default]
    All,
    /// Part `n` of `of` (1-based), by pack id: deterministic, so the runs `1/of` … `of/of`
    /// together read every pack once.
    Part { n: u32, of: u32 },
    /// A random fraction of the packs (at least one when there are any).
    Fraction(f64),
    /// Random packs until at least this many bytes are chosen.
    Bytes(u64),
}

impl DataSubset {
    /// The packs to read, from `(pack, size)`.
    pub fn select(&self, mut packs: Vec<(PackId, u64)>) -> HashSet<PackId> {
        use rand::seq::SliceRandom;
        match *self {
            DataSubset::All => packs.into_iter().map(|(p, _)| p).collect(),
            DataSubset::Part { n, of } => packs
                .into_iter()
                .filter(|(p, _)| {
                    let head = u32::from_be_bytes([p.0[0], p.0[1], p.0[2], p.0[3]]);
                    head % of.max(1) == n.saturating_sub(1)
                })
                .map(|(p, _)| p)
                .collect(),
            DataSubset::Fraction(f) => {
                packs.shuffle(&mut rand::thread_rng());
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let want = ((packs.len() as f64) * f.clamp(0.0, 1.0)).ceil() as usize;
                let want = if packs.is_empty() { 0 } else { want.max(1) };
                packs.into_iter().take(want).map(|(p, _)| p).collect()
            }
            DataSubset::Bytes(limit) => {
                packs.shuffle(&mut rand::thread_rng());
                let mut total = 0u64;
                packs
                    .into_iter()
                    .take_while(|(_, len)| {
                        let take = total < limit;
                        total += len;
                        take
                    })
                    .map(|(p, _)| p)
                    .collect()
            }
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The damaged or missing object, e.g. `pack 1a2b…`.
    pub object: String,
    /// What is wrong.
    pub error: String,
    /// Snapshots and paths that depend on it (capped at 20 per problem).
    pub affected: Vec<String>,
}

/// The outcome of a check.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Errors: the repository is damaged.
    pub errors: Vec<Problem>,
    /// Harmless findings, e.g. packs left unindexed by an interrupted backup.
    pub warnings: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees checked.
    pub trees: usize,
    /// Packs in the store.
    pub packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Blobs read and authenticated (with `read_data`).
    pub blobs_read: usize,
    /// Bytes read from packs (with `read_data`).
    pub bytes_read: u64,
    /// Packs read (with `read_data`; fewer than `packs` with a subset).
    pub packs_read: usize,
}

enum Bad {
    Blob(BlobId, String),
    Tree(BlobId, String),
}

/// Checks the repository. Returns `Err` only when checking itself cannot proceed (store down).
pub fn check(repo: &Repository, opts: CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let crypto = repo.crypto();
    let store = repo.store();

    for (id, _) in store.list(Kind::Key)? {
        if let Err(e) = store
            .get(Kind::Key, &id, None)
            .and_then(|b| crate::crypto::KeyFile::decode(&b, &id))
        {
            report
                .errors
                .push(problem(format!("key {}", id.short()), &e));
        }
    }

    // Packs condemned by prune (`docs/format.md` §19): a later prune deletes them, so one that
    // is already gone while the index still lists it is not damage.
    let condemned: HashSet<PackId> = match crate::lifecycle::deletions(&**store, crypto) {
        Ok(records) => records.into_iter().flat_map(|(_, r)| r.packs).collect(),
        Err(e) => {
            report.errors.push(problem("deletion records".into(), &e));
            HashSet::new()
        }
    };
    let mut idx = Index::default();
    let mut indexed: HashMap<PackId, Vec<crate::pack::BlobEntry>> = HashMap::new();
    for (id, _) in store.list(Kind::Index)? {
        match store
            .get(Kind::Index, &id, None)
            .and_then(|b| index::open(crypto, &id, &b))
        {
            Ok(packs) => {
                for (p, entries) in packs {
                    // A pack listed by two index files (after an interrupted `repair index`)
                    // has the same entries in both.
                    if let std::collections::hash_map::Entry::Vacant(v) = indexed.entry(p) {
                        idx.add_pack(p, &entries);
                        v.insert(entries);
                    }
                }
            }
            Err(e) => report
                .errors
                .push(problem(format!("index {}", id.short()), &e)),
        }
    }
    report.blobs = idx.len();

    let stored: HashMap<PackId, u64> = store.list(Kind::Pack)?.into_iter().collect();
    report.packs = stored.len();
    let mut bad_packs: HashSet<PackId> = HashSet::new();
    let gone: HashSet<PackId> = indexed
        .keys()
        .filter(|p| !stored.contains_key(*p) && condemned.contains(*p))
        .copied()
        .collect();
    if !gone.is_empty() {
        // Their blobs are not available: rebuild the lookup without them.
        idx = Index::default();
        for (p, entries) in indexed.iter().filter(|(p, _)| !gone.contains(*p)) {
            idx.add_pack(*p, entries);
        }
    }
    let waiting = indexed
        .keys()
        .filter(|p| condemned.contains(*p) && !gone.contains(*p))
        .count();
    if waiting > 0 {
        report.warnings.push(format!(
            "{waiting} packs are condemned by prune and await deletion by a later prune"
        ));
    }
    for (pack, entries) in &indexed {
        if gone.contains(pack) {
            continue;
        }
        let Some(&len) = stored.get(pack) else {
            report.errors.push(Problem {
                object: format!("pack {}", pack.short()),
                error: format!(
                    "listed in the index with {} blobs but missing from the store",
                    entries.len()
                ),
                affected: vec![],
            });
            bad_packs.insert(*pack);
            continue;
        };
        match repo.read_pack_header(pack, len) {
            Ok(header) => {
                let set: HashSet<_> = header
                    .iter()
                    .map(|e| (e.id, e.offset, e.stored_len))
                    .collect();
                if let Some(e) = entries
                    .iter()
                    .find(|e| !set.contains(&(e.id, e.offset, e.stored_len)))
                {
                    report.errors.push(Problem {
                        object: format!("pack {}", pack.short()),
                        error: format!(
                            "index lists blob {} that the pack header does not",
                            e.id.short()
                        ),
                        affected: vec![],
                    });
                    bad_packs.insert(*pack);
                }
            }
            Err(e) => {
                report
                    .errors
                    .push(problem(format!("pack {}", pack.short()), &e));
                bad_packs.insert(*pack);
            }
        }
    }
    for id in stored
        .keys()
        .filter(|p| !indexed.contains_key(*p) && condemned.contains(*p))
    {
        report.warnings.push(format!(
            "pack {} is condemned by prune and no longer indexed; a later prune deletes it",
            id.short()
        ));
    }
    for id in stored
        .keys()
        .filter(|p| !indexed.contains_key(*p) && !condemned.contains(*p))
    {
        report.warnings.push(format!("pack {} is not in any index (left by an interrupted backup; the next backup adopts it)", id.short()));
    }

    let mut snapshots: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for (id, _) in store.list(Kind::Snapshot)? {
        match repo.load_snapshot(&id) {
            Ok(s) => snapshots.push((id, s)),
            Err(e) => report
                .errors
                .push(problem(format!("snapshot {}", id.short()), &e)),
        }
    }
    report.snapshots = snapshots.len();

    // Trees: walk everything reachable, each tree once, through a view that uses our index.
    let mut bad: Vec<Bad> = Vec::new();
    let mut seen: HashSet<BlobId> = HashSet::new();
    let mut stack: Vec<BlobId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    let mut missing_data: HashSet<BlobId> = HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let tree = match repo.load_tree_in(&idx, &id) {
            Ok(t) => t,
            Err(e) => {
                bad.push(Bad::Tree(id, e.to_string()));
                continue;
            }
        };
        report.trees += 1 + tree.pages.len();
        for n in &tree.nodes {
            if let Some(sub) = n.subtree {
                stack.push(sub);
            }
            for c in &n.content {
                if !idx.contains(c) && missing_data.insert(*c) {
                    bad.push(Bad::Blob(
                        *c,
                        "referenced by a tree but not in any index".into(),
                    ));
                }
            }
        }
    }

    if opts.read_data {
        let chosen = opts.subset.select(
            indexed
                .keys()
                .filter_map(|p| stored.get(p).map(|len| (*p, *len)))
                .collect(),
        );
        report.packs_read = chosen.len();
        let by_pack: Mutex<Vec<(&PackId, &Vec<crate::pack::BlobEntry>)>> = Mutex::new(
            indexed
                .iter()
                .filter(|(p, _)| chosen.contains(*p))
                .collect(),
        );
        let found: Mutex<(Vec<Problem>, Vec<Bad>, usize, u64)> =
            Mutex::new((Vec::new(), Vec::new(), 0, 0));
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let Some((pack, entries)) = by_pack.lock().expect("queue lock").pop() else {
                        return;
                    };
                    let r = read_pack(repo, &idx, pack, entries);
                    let mut f = found.lock().expect("found lock");
                    f.0.extend(r.0);
                    f.1.extend(r.1);
                    f.2 += r.2;
                    f.3 += r.3;
                });
            }
        });
        let (problems, bads, n, bytes) = found.into_inner().expect("found lock");
        report.errors.extend(problems);
        bad.extend(bads);
        report.blobs_read = n;
        report.bytes_read = bytes;
    }

    if !bad.is_empty() {
        let affected = affected_paths(repo, &idx, &snapshots, &bad);
        for b in bad {
            let (object, error, id) = match b {
                Bad::Blob(id, e) => (format!("blob {}", id.short()), e, id),
                Bad::Tree(id, e) => (format!("tree {}", id.short()), e, id),
            };
            report.errors.push(Problem {
                object,
                error,
                affected: affected.get(&id).cloned().unwrap_or_default(),
            });
        }
    }
    Ok(report)
}

fn problem(object: String, e: &Error) -> Problem {
    Problem {
        object,
        error: e.to_string(),
        affected: vec![],
    }
}

fn read_pack(
    repo: &Repository,
    idx: &Index,
    pack: &ObjectId,
    entries: &[crate::pack::BlobEntry],
) -> (Vec<Problem>, Vec<Bad>, usize, u64) {
    let mut problems = Vec::new();
    let mut bad = Vec::new();
    let bytes = match repo.store().get(Kind::Pack, pack, None) {
        Ok(b) => b,
        Err(e) => {
            problems.push(problem(format!("pack {}", pack.short()), &e));
            bad.extend(
                entries
                    .iter()
                    .map(|e| Bad::Blob(e.id, format!("pack {} unreadable", pack.short()))),
            );
            return (problems, bad, 0, 0);
        }
    };
    if ObjectId::of(&bytes) != *pack {
        problems.push(Problem {
            object: format!("pack {}", pack.short()),
            error: "content does not match its name (BLAKE3 mismatch): the file is damaged".into(),
            affected: vec![],
        });
    }
    let mut n = 0;
    for e in entries {
        let Some((_, loc)) = idx.get(&e.id).filter(|(p, _)| p == pack) else {
            continue;
        };
        let r = bytes
            .get(loc.range().start as usize..loc.range().end as usize)
            .ok_or_else(|| Error::corrupt(Kind::Pack, pack, "blob beyond the end of the pack"))
            .and_then(|env| repo.decode_blob(&e.id, &loc, env));
        n += 1;
        if let Err(err) = r {
            let tree = loc.kind() == crate::pack::BlobKind::Tree;
            let msg = format!("in pack {}: {err}", pack.short());
            bad.push(if tree {
                Bad::Tree(e.id, msg)
            } else {
                Bad::Blob(e.id, msg)
            });
        }
    }
    (problems, bad, n, bytes.len() as u64)
}

/// Maps each bad blob or tree to up to 20 `snapshot:path` strings that use it.
fn affected_paths(
    repo: &Repository,
    idx: &Index,
    snapshots: &[(SnapshotId, Snapshot)],
    bad: &[Bad],
) -> HashMap<BlobId, Vec<String>> {
    let targets: HashSet<BlobId> = bad
        .iter()
        .map(|b| match b {
            Bad::Blob(id, _) | Bad::Tree(id, _) => *id,
        })
        .collect();
    let mut out: HashMap<BlobId, Vec<String>> = HashMap::new();
    let mut note = |id: &BlobId, snap: &SnapshotId, path: &Path| {
        let v = out.entry(*id).or_default();
        if v.len() < 20 {
            v.push(format!("snapshot {} {}", snap.short(), path.display()));
        }
    };
    for (sid, snap) in snapshots {
        if targets.contains(&snap.tree) {
            note(&snap.tree, sid, Path::new("/"));
        }
        let mut stack: Vec<(BlobId, PathBuf)> = vec![(snap.tree, PathBuf::from("/"))];
        while let Some((tid, dir)) = stack.pop() {
            let Ok(tree) = repo.load_tree_in(idx, &tid) else {
                continue;
            };
            for n in &tree.nodes {
                let p = dir.join(n.os_name());
                for c in &n.content {
                    if targets.contains(c) {
                        note(c, sid, &p);
                    }
                }
                if let Some(sub) = n.subtree {
                    if targets.contains(&sub) {
                        note(&sub, sid, &p);
                    }
                    stack.push((sub, p));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod subset_tests {
    use super::*;

    fn packs(n: u8) -> Vec<(PackId, u64)> {
        (0..n)
            .map(|i| (ObjectId([i.wrapping_mul(37); 32]), 100))
            .collect()
    }

    #[test]
    fn parts_cover_every_pack_once() {
        let all = packs(200);
        let mut seen = HashSet::new();
        for n in 1..=7 {
            for p in (DataSubset::Part { n, of: 7 }).select(all.clone()) {
                assert!(seen.insert(p), "pack in two parts");
            }
        }
        assert_eq!(seen.len(), all.len());
    }

    #[test]
    fn fractions_and_bytes_pick_enough() {
        assert_eq!(DataSubset::Fraction(0.1).select(packs(200)).len(), 20);
        assert_eq!(DataSubset::Fraction(0.001).select(packs(200)).len(), 1);
        assert_eq!(DataSubset::Fraction(1.0).select(packs(200)).len(), 200);
        assert_eq!(DataSubset::Bytes(1000).select(packs(200)).len(), 10);
        assert_eq!(DataSubset::Bytes(1001).select(packs(200)).len(), 11);
        assert!(DataSubset::Fraction(0.5).select(Vec::new()).is_empty());
    }
}
