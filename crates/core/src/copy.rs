//! `copy`: snapshots from one repository into another, sending only what the target lacks.
//!
//! ```text
//! same keys (init --from-repo):  trees walked in the source ─▶ blobs the target's index lacks
//!                                 ─▶ envelopes copied as they are, grouped by source pack
//! other keys:                     every tree rewritten bottom-up: chunks decrypted, re-keyed
//!                                 (blob ids are keyed), re-encrypted; trees re-encoded
//! ```
//! Either way the target's packs and index files are written before its snapshot objects, and a
//! snapshot already in the target (same time, host, paths and tree contents) is skipped, so an
//! interrupted copy is simply run again. The replication path of a cluster uses the same-keys
//! branch.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::id::{BlobId, Kind, PackId, SnapshotId};
use crate::pack::BlobKind;
use crate::repo::{BlobWriter, Repository};
use crate::snapshot::{Node, Snapshot};

/// What `copy` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Whether the repositories share keys (envelopes were copied as they are).
    pub same_keys: bool,
    /// Snapshots stored in the target.
    pub snapshots_copied: usize,
    /// Snapshots the target already had.
    pub snapshots_skipped: usize,
    /// Blobs stored in the target.
    pub blobs_copied: u64,
    /// Their stored bytes.
    pub bytes_copied: u64,
    /// Packs and index files written.
    pub packs: u64,
}

/// What makes two snapshots the same for `copy`: their metadata; the tree id is compared only
/// when both repositories share keys (otherwise ids differ for equal trees).
fn identity(s: &Snapshot, with_tree: bool) -> String {
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        s.time,
        s.hostname,
        s.paths.join("\u{1}"),
        if with_tree {
            s.tree.to_hex()
        } else {
            String::new()
        }
    )
}

/// Copies `snapshots` (of `from`) into `to`. Both have their index loaded; `to` has begun its
/// session before loading it (`docs/format.md` §19).
pub fn copy(
    from: &Repository,
    to: &mut Repository,
    snapshots: &[(SnapshotId, Snapshot)],
) -> Result<CopyReport> {
    let same = from.crypto().same_keys(to.crypto());
    let mut report = CopyReport {
        same_keys: same,
        ..CopyReport::default()
    };
    let have: HashSet<String> = to
        .snapshots()?
        .iter()
        .map(|(_, s)| identity(s, same))
        .collect();
    let todo: Vec<&(SnapshotId, Snapshot)> = snapshots
        .iter()
        .filter(|(_, s)| !have.contains(&identity(s, same)))
        .collect();
    report.snapshots_skipped = snapshots.len() - todo.len();
    if todo.is_empty() {
        return Ok(report);
    }
    let mut trees: HashMap<BlobId, BlobId> = HashMap::new();
    let (stats, indexed) = {
        let writer = BlobWriter::new(to);
        if same {
            copy_envelopes(from, to, &writer, &todo, &mut report)?;
        } else {
            let mut r = Rewriter {
                from,
                to,
                writer: &writer,
                trees: HashMap::new(),
                chunks: HashMap::new(),
                written: HashSet::new(),
                z: to.compressor(),
                report: &mut report,
            };
            for (_, s) in &todo {
                r.tree(&s.tree)?;
            }
            trees = r.trees;
        }
        writer.finish_all()?
    };
    report.packs = stats.packs;
    to.shared_index().add_packs(&indexed);
    for (_, s) in todo {
        let mut snap = s.clone();
        if !same {
            snap.tree = trees[&s.tree];
        }
        // The source's parent id means nothing in the target.
        snap.parent = None;
        to.save_snapshot(&snap)?;
        report.snapshots_copied += 1;
    }
    Ok(report)
}

/// Same keys: every blob the snapshots reach that the target lacks, envelope as it is.
fn copy_envelopes(
    from: &Repository,
    to: &Repository,
    writer: &BlobWriter<'_>,
    todo: &[&(SnapshotId, Snapshot)],
    report: &mut CopyReport,
) -> Result<()> {
    let mut need: HashSet<BlobId> = HashSet::new();
    let roots: Vec<BlobId> = todo.iter().map(|(_, s)| s.tree).collect();
    from.walk_trees(&roots, &mut |id, tree| {
        for b in std::iter::once(*id)
            .chain(tree.pages.iter().map(|p| p.tree))
            .chain(tree.nodes.iter().flat_map(|n| n.content.iter().copied()))
        {
            if !to.index().contains(&b) {
                need.insert(b);
            }
        }
        Ok(())
    })?;
    // Group by source pack, so each pack is read once (ranges in one request each).
    let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
    for id in need {
        let (pack, _) = from.index().get(&id).ok_or_else(|| {
            crate::Error::corrupt(
                Kind::Blob,
                id,
                "reachable in the source but not in its index",
            )
        })?;
        by_pack.entry(pack).or_default().push(id);
    }
    for ids in by_pack.into_values() {
        for id in ids {
            let (_, loc, env) = from.read_envelope(&id)?;
            report.blobs_copied += 1;
            report.bytes_copied += env.len() as u64;
            if let Some(p) = writer.add(id, loc.kind(), loc.flags(), loc.raw_len, &env)? {
                writer.upload(p)?;
            }
        }
    }
    Ok(())
}

/// Other keys: rewrites trees from `from` into `to`, re-keying and re-encrypting every blob.
struct Rewriter<'a> {
    from: &'a Repository,
    to: &'a Repository,
    writer: &'a BlobWriter<'a>,
    /// Source tree id → target tree id.
    trees: HashMap<BlobId, BlobId>,
    /// Source chunk id → target chunk id.
    chunks: HashMap<BlobId, BlobId>,
    /// Blobs added to the target in this run (its index learns them at the end).
    written: HashSet<BlobId>,
    z: Option<zstd::bulk::Compressor<'static>>,
    report: &'a mut CopyReport,
}

impl Rewriter<'_> {
    /// The tree `id` of the source rewritten into the target; returns its id there.
    fn tree(&mut self, id: &BlobId) -> Result<BlobId> {
        if let Some(t) = self.trees.get(id) {
            return Ok(*t);
        }
        let tree = self.from.load_tree(id)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(tree.nodes.len());
        for mut n in tree.nodes {
            if let Some(sub) = n.subtree {
                n.subtree = Some(self.tree(&sub)?);
            }
            for c in &mut n.content {
                *c = if let Some(b) = self.chunks.get(c) {
                    *b
                } else {
                    let plain = self.from.read_blob(c)?;
                    let b = self.to.crypto().blob_id(&plain);
                    self.store(b, BlobKind::Data, &plain)?;
                    self.chunks.insert(*c, b);
                    b
                };
            }
            nodes.push(n);
        }
        let mut top = None;
        for (blob, bytes) in self.to.tree_blobs(nodes) {
            self.store(blob, BlobKind::Tree, &bytes)?;
            top = Some(blob);
        }
        let top = top.expect("a listing has a blob");
        self.trees.insert(*id, top);
        Ok(top)
    }

    fn store(&mut self, id: BlobId, kind: BlobKind, plain: &[u8]) -> Result<()> {
        if self.to.index().contains(&id) || !self.written.insert(id) {
            return Ok(());
        }
        let (flags, env) = self.to.encode_blob(self.z.as_mut(), plain);
        self.report.blobs_copied += 1;
        self.report.bytes_copied += env.len() as u64;
        if let Some(p) = self.writer.add(id, kind, flags, plain.len() as u32, &env)? {
            self.writer.upload(p)?;
        }
        Ok(())
    }
}
