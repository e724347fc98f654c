//! Capture: turns the watcher's changes into batch edits, reading what changed on disk.
//!
//! ```text
//! watch::Change ──▶ Capturer::handle ──lstat / read, chunk, hash──▶ pending Batch ──▶ Sink (the log)
//!                        ▲ compares with the LiveTree (the catalog) so unchanged files are not read
//! ```
//! A changed file is read once, cut into chunks, and only chunks the repository lacks are
//! compressed and sealed into the batch. A file that changes while being read is read again; after
//! three tries it is deferred (the caller retries it later), never recorded torn. A file larger
//! than the batch limit is carried by several batches: blob-only ones first, then the one with its
//! `put`, so it appears at once. Moves become `move` edits when the live tree has the source (no
//! re-read: the moved node keeps its chunks when size, mtime and inode still match); anything the
//! live tree cannot explain becomes a rescan of that subtree.
//!
//! A path that is gone when capture looks at it (ENOENT, ENOTDIR) is not taken as deleted: it
//! may have been carried away by the move of an ancestor whose event has not been handled yet
//! (issue 15). It is remembered as *vanished* instead. The `Remove` of it (or of an ancestor)
//! settles it; a `Move` from it (or from an ancestor) carries it to the new path, where it is
//! read (or rescanned) again; only when no event has explained it after
//! [`CaptureOptions::vanish_grace`] and two more rounds is it looked at once more and, if still
//! gone, deleted.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{path_problem, Batch, Edit, NewBlob, MAX_PATH};
use crate::chunk::Chunker;
use crate::crypto::Crypto;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::pack::BlobKind;
use crate::repo::Repository;
use crate::snapshot::{Node, NodeType};
use crate::source::{stable, unchanged, Excludes, Fs, StdFs};
use crate::watch::Change;

/// Read access to the live tree as applied so far (the catalog).
pub trait LiveTree {
    /// The node at `path` (`""` is the watched directory), if the live tree has it.
    fn node(&self, path: &[u8]) -> Result<Option<Node>>;
    /// The children of the directory at `path`, in name order, with their names set.
    fn children(&self, path: &[u8]) -> Result<Vec<Node>>;
}

/// Where batches go: the log. `write` returns once the batch is durable and applied, with the
/// paths the state machine could not apply (to be rescanned).
pub trait Sink {
    /// Makes `batch` durable and applies it.
    fn write(&mut self, batch: Batch) -> Result<Vec<Vec<u8>>>;
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// A batch is written once its blobs reach this many bytes (4 MiB).
    pub batch_bytes: usize,
    /// Reads of a file that keeps changing before it is deferred.
    pub attempts: usize,
    /// How long a path found gone waits for the event that explains it (its removal, or the
    /// move of an ancestor) before it is looked at again and deleted if still gone (1 s).
    pub vanish_grace: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            batch_bytes: 4 << 20,
            attempts: 3,
            vanish_grace: Duration::from_secs(1),
        }
    }
}

/// What capture did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Files read.
    pub files_read: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// New chunks sealed into batches.
    pub blobs_new: u64,
    /// Edits emitted.
    pub edits: u64,
    /// Batches written.
    pub batches: u64,
    /// Files deferred because they kept changing while read.
    pub deferred: u64,
    /// Paths that could not be read (permissions, I/O errors); they stay as last captured.
    pub errors: u64,
}

/// The capture stage of one watched directory.
pub struct Capturer {
    root: PathBuf,
    /// The disk, as capture reads it.
    fs: Arc<dyn Fs>,
    repo: Repository,
    crypto: Crypto,
    chunker: Chunker,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    excludes: Excludes,
    opts: CaptureOptions,
    pending: Batch,
    pending_bytes: usize,
    /// Chunks sent in earlier batches (they may sit in the state machine's open pack, not yet in
    /// the index); a bounded memory of ids, cleared when it grows large.
    sent: HashSet<BlobId>,
    followups: Vec<Change>,
    deferred: Vec<PathBuf>,
    /// Directories whose listing changed (a child was created, removed or renamed): their own
    /// mtime changed, but inotify reports only the child. Refreshed by `finish_round`.
    touched_dirs: std::collections::BTreeSet<Vec<u8>>,
    /// Paths the pending batch edits: the live tree is stale at and below them until it is written.
    pending_paths: HashSet<Vec<u8>>,
    /// Strict ancestors of `pending_paths`: their listings are stale.
    pending_above: HashSet<Vec<u8>>,
    /// Paths found gone that no event has explained yet (see the module doc).
    vanished: BTreeMap<Vec<u8>, Vanished>,
    /// Rounds finished so far.
    round: u64,
    /// Set while a vanished path whose grace ran out is looked at again: gone now means deleted.
    confirming: bool,
    /// Counters.
    pub stats: CaptureStats,
    /// The last error met, for status output.
    pub last_error: Option<String>,
}

/// A path found gone while capture worked on it.
#[derive(Debug, Clone, Copy)]
struct Vanished {
    /// It was to be rescanned (a directory's subtree), not only read.
    subtree: bool,
    /// The round it was last found gone in, and when.
    round: u64,
    at: Instant,
}

/// Whether an error says the path is not there (itself, or an ancestor is no directory now).
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Whether `path` is `root` or lies below it (by components; `""` is above everything).
fn at_or_below(root: &[u8], path: &[u8]) -> bool {
    root.is_empty()
        || path == root
        || (path.starts_with(root) && path.get(root.len()) == Some(&b'/'))
}

fn rel_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Metadata equality for non-files: the node without name, content and subtree.
fn same_meta(old: &Node, new: &Node) -> bool {
    let strip = |n: &Node| Node {
        name: None,
        name_hex: None,
        subtree: None,
        content: Vec::new(),
        atime_ns: 0,
        ..n.clone()
    };
    strip(old) == strip(new)
}

impl Capturer {
    /// A capturer for the directory `root` (absolute) writing into `repo` (index loaded).
    pub fn new(root: PathBuf, repo: Repository, excludes: Excludes, opts: CaptureOptions) -> Self {
        Self::with_fs(root, repo, excludes, opts, Arc::new(StdFs))
    }

    /// A capturer that reads the disk through `fs` (a [`crate::source::MemFs`] in tests).
    pub fn with_fs(
        root: PathBuf,
        repo: Repository,
        excludes: Excludes,
        opts: CaptureOptions,
        fs: Arc<dyn Fs>,
    ) -> Self {
        let (crypto, chunker, compressor) = (
            repo.crypto().clone(),
            repo.chunker().clone(),
            repo.compressor(),
        );
        let buf = chunker.buffer();
        Capturer {
            root,
            fs,
            repo,
            crypto,
            chunker,
            compressor,
            buf,
            scratch: Vec::new(),
            excludes,
            opts,
            pending: Batch::default(),
            pending_bytes: 0,
            sent: HashSet::new(),
            followups: Vec::new(),
            deferred: Vec::new(),
            touched_dirs: std::collections::BTreeSet::new(),
            pending_paths: HashSet::new(),
            pending_above: HashSet::new(),
            vanished: BTreeMap::new(),
            round: 0,
            confirming: false,
            stats: CaptureStats::default(),
            last_error: None,
        }
    }

    /// Changes the state machine asked for (rescans), and files deferred because they kept
    /// changing; the caller feeds both back to the watcher.
    pub fn take_followups(&mut self) -> (Vec<Change>, Vec<PathBuf>) {
        (
            std::mem::take(&mut self.followups),
            std::mem::take(&mut self.deferred),
        )
    }

    /// Edits waiting in the pending batch.
    pub fn pending_edits(&self) -> usize {
        self.pending.edits.len()
    }

    /// Paths found gone that no event has explained yet; capture is not done before this is 0.
    pub fn unresolved(&self) -> usize {
        self.vanished.len()
    }

    /// Remembers that `rel` was gone when capture looked (see the module doc).
    fn vanish(&mut self, rel: &[u8], subtree: bool) {
        let (round, at) = (self.round, Instant::now());
        self.vanished
            .entry(rel.to_vec())
            .and_modify(|v| {
                v.subtree |= subtree;
                (v.round, v.at) = (round, at);
            })
            .or_insert(Vanished { subtree, round, at });
    }

    /// Takes the vanished entries at or below `root`.
    fn take_vanished(&mut self, root: &[u8]) -> Vec<(Vec<u8>, Vanished)> {
        let keys: Vec<Vec<u8>> = self
            .vanished
            .range(root.to_vec()..)
            .take_while(|(k, _)| k.starts_with(root))
            .filter(|(k, _)| at_or_below(root, k))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .map(|k| {
                let v = self.vanished.remove(&k).expect("just listed");
                (k, v)
            })
            .collect()
    }

    /// `rel` is gone: while confirming, a delete (if the live tree has it); otherwise vanished.
    fn gone(
        &mut self,
        rel: &[u8],
        subtree: bool,
        tree: &dyn LiveTree,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        if !self.confirming {
            self.vanish(rel, subtree);
            return Ok(());
        }
        self.fresh_view(rel, false, sink)?;
        if !rel.is_empty() && tree.node(rel)?.is_some() {
            self.push(Edit::Delete { path: rel.to_vec() });
        }
        Ok(())
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn error(&mut self, path: &Path, what: impl std::fmt::Display) {
        self.stats.errors += 1;
        let msg = format!("{}: {what}", path.display());
        self.last_error = Some(msg);
    }

    fn push(&mut self, edit: Edit) {
        self.stats.edits += 1;
        match &edit {
            Edit::Put { path, .. } | Edit::Delete { path } => self.note_pending(path.clone()),
            Edit::Move { from, to } => {
                self.note_pending(from.clone());
                self.note_pending(to.clone());
            }
        }
        self.pending.edits.push(edit);
    }

    fn note_pending(&mut self, path: Vec<u8>) {
        let mut end = path.len();
        while let Some(i) = path[..end].iter().rposition(|b| *b == b'/') {
            if !self.pending_above.insert(path[..i].to_vec()) {
                break;
            }
            end = i;
        }
        if !path.is_empty() {
            self.pending_above.insert(Vec::new());
        }
        self.pending_paths.insert(path);
    }

    /// Whether the live tree's view of `q` (and, with `below`, of its listing) is stale because
    /// the pending batch edits `q`, an ancestor of it, or (with `below`) something under it.
    fn stale(&self, q: &[u8], below: bool) -> bool {
        if self.pending_paths.is_empty() {
            return false;
        }
        if self.pending_paths.contains(q) || (below && self.pending_above.contains(q)) {
            return true;
        }
        let mut end = q.len();
        while let Some(i) = q[..end].iter().rposition(|b| *b == b'/') {
            if self.pending_paths.contains(&q[..i]) {
                return true;
            }
            end = i;
        }
        false
    }

    /// Writes the pending batch first if it makes the live tree's view of `q` stale.
    fn fresh_view(&mut self, q: &[u8], below: bool, sink: &mut dyn Sink) -> Result<()> {
        if self.stale(q, below) {
            self.flush(sink)?;
        }
        Ok(())
    }

    /// Writes the pending batch, if it holds anything.
    pub fn flush(&mut self, sink: &mut dyn Sink) -> Result<()> {
        if self.pending.edits.is_empty() && self.pending.blobs.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_paths.clear();
        self.pending_above.clear();
        batch.captured_ns = now_ns();
        self.stats.batches += 1;
        for path in sink.write(batch)? {
            self.followups
                .push(Change::Rescan(PathBuf::from(OsStr::from_bytes(&path))));
        }
        if self.sent.len() > 1 << 20 {
            self.sent.clear();
        }
        Ok(())
    }

    fn touch_parent(&mut self, rel: &[u8]) {
        if rel.is_empty() {
            return;
        }
        let parent = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => rel[..i].to_vec(),
            None => Vec::new(),
        };
        self.touched_dirs.insert(parent);
    }

    /// Ends a round of changes: refreshes the metadata of the directories whose listing changed
    /// (deepest first), then writes the pending batch.
    pub fn finish_round(&mut self, tree: &dyn LiveTree, sink: &mut dyn Sink) -> Result<()> {
        let dirs = std::mem::take(&mut self.touched_dirs);
        for dir in dirs.iter().rev() {
            // Only directories that still are: a directory that went away or became something
            // else has its own event.
            let is_dir = match self.fs.lstat(&self.abs(dir)) {
                Ok(n) => n.kind() == NodeType::Dir,
                Err(e) => {
                    // Gone because an ancestor moved: its new mtime is read where it went.
                    if is_gone(&e) {
                        self.vanish(dir, false);
                    }
                    false
                }
            };
            if is_dir && !self.excluded(dir) {
                self.read_path(dir, tree, sink)?;
            }
        }
        self.round += 1;
        self.confirm_vanished(tree, sink)?;
        self.flush(sink)
    }

    /// Looks again at the vanished paths no event explained within the grace: still gone now
    /// means deleted.
    fn confirm_vanished(&mut self, tree: &dyn LiveTree, sink: &mut dyn Sink) -> Result<()> {
        let grace = self.opts.vanish_grace;
        let round = self.round;
        let due: Vec<Vec<u8>> = self
            .vanished
            .iter()
            .filter(|(_, v)| v.round + 2 <= round && v.at.elapsed() >= grace)
            .map(|(k, _)| k.clone())
            .collect();
        self.confirming = true;
        let mut result = Ok(());
        for path in due {
            let Some(v) = self.vanished.remove(&path) else {
                continue; // settled by an entry above it
            };
            let settled = if v.subtree {
                self.take_vanished(&path);
                self.rescan(&path, tree, sink)
            } else {
                self.read_path(&path, tree, sink)
            };
            if let Err(e) = settled {
                result = Err(e);
                break;
            }
        }
        self.confirming = false;
        result
    }

    /// Handles one change. Edits collect in the pending batch; before the live tree is consulted
    /// about a path the pending batch touches (the path, an ancestor, or for listings anything
    /// below), the batch is written, so every check sees a current tree and a round of unrelated
    /// changes costs one batch (one fsync).
    pub fn handle(
        &mut self,
        change: &Change,
        tree: &dyn LiveTree,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        match change {
            Change::Read(p) | Change::Remove(p) | Change::Rescan(p) => {
                self.touch_parent(rel_bytes(p));
            }
            Change::Move { from, to } => {
                self.touch_parent(rel_bytes(from));
                self.touch_parent(rel_bytes(to));
            }
        }
        match change {
            Change::Read(p) => {
                let p = rel_bytes(p);
                match self.vanished.remove(p) {
                    Some(v) if v.subtree => self.rescan(p, tree, sink),
                    _ => self.read_path(p, tree, sink),
                }
            }
            Change::Remove(p) => {
                let p = rel_bytes(p);
                // What vanished there is explained: it was deleted.
                self.take_vanished(p);
                self.fresh_view(p, false, sink)?;
                if !p.is_empty() && tree.node(p)?.is_some() {
                    self.push(Edit::Delete { path: p.to_vec() });
                }
                Ok(())
            }
            Change::Move { from, to } => {
                let (f, t) = (rel_bytes(from), rel_bytes(to));
                // What was at the target is replaced; what vanished below the source went along.
                self.take_vanished(t);
                let carried = if f.is_empty() {
                    Vec::new()
                } else {
                    self.take_vanished(f)
                };
                self.moved(f, t, tree, sink)?;
                // Look at what vanished where it is now (a later move may carry it further).
                for (path, v) in carried {
                    let new = [t, &path[f.len()..]].concat();
                    if v.subtree {
                        self.rescan(&new, tree, sink)?;
                    } else {
                        self.read_path(&new, tree, sink)?;
                    }
                }
                Ok(())
            }
            Change::Rescan(p) => {
                self.take_vanished(rel_bytes(p));
                self.fresh_view(rel_bytes(p), true, sink)?;
                self.rescan(rel_bytes(p), tree, sink)
            }
        }
    }

    /// The live tree's side of a move from `f` to `t`.
    fn moved(
        &mut self,
        f: &[u8],
        t: &[u8],
        tree: &dyn LiveTree,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.fresh_view(f, false, sink)?;
        self.fresh_view(t, true, sink)?;
        let old = if f.is_empty() { None } else { tree.node(f)? };
        match old {
            Some(old) if !self.excluded(t) && path_problem(t).is_none() && t.len() <= MAX_PATH => {
                self.push(Edit::Move {
                    from: f.to_vec(),
                    to: t.to_vec(),
                });
                self.refresh_moved(t, &old);
                Ok(())
            }
            old => {
                if old.is_some() {
                    self.push(Edit::Delete { path: f.to_vec() });
                }
                self.rescan(t, tree, sink)
            }
        }
    }

    /// After a move, records the moved entry's new metadata (a rename changes its ctime) without
    /// reading it again: a file whose size, mtime and inode match the moved node keeps its chunks.
    /// Anything else is left to the events that follow (or the next rescan).
    fn refresh_moved(&mut self, t: &[u8], old: &Node) {
        let abs = self.abs(t);
        let mut node = match self.fs.lstat(&abs) {
            Ok(n) => n,
            Err(e) => {
                // Moved on again (or removed): the event that says so settles it.
                if is_gone(&e) {
                    self.vanish(t, false);
                }
                return;
            }
        };
        node.xattrs = self.fs.xattrs(&abs).unwrap_or_default();
        let same_file = node.kind() == old.kind()
            && node.size == old.size
            && node.mtime_ns == old.mtime_ns
            && node.inode == old.inode;
        match node.kind() {
            NodeType::File if same_file => node.content.clone_from(&old.content),
            NodeType::Dir if old.kind() == NodeType::Dir => {}
            NodeType::Symlink if same_file => {
                node.target.clone_from(&old.target);
                node.target_hex.clone_from(&old.target_hex);
            }
            _ => {
                self.followups
                    .push(Change::Read(PathBuf::from(OsStr::from_bytes(t))));
                return;
            }
        }
        if !same_meta(old, &node) || node.kind() == NodeType::File {
            self.push(Edit::Put {
                path: t.to_vec(),
                node,
            });
        }
    }

    fn excluded(&self, rel: &[u8]) -> bool {
        !rel.is_empty() && self.excludes.matches(&self.abs(rel))
    }

    /// The current state of one path: put, delete, or nothing when unchanged.
    fn read_path(&mut self, rel: &[u8], tree: &dyn LiveTree, sink: &mut dyn Sink) -> Result<()> {
        if self.excluded(rel) {
            return Ok(());
        }
        if rel.len() > MAX_PATH || path_problem(rel).is_some() {
            let p = self.abs(rel);
            self.error(&p, "path too long or not representable; skipped");
            return Ok(());
        }
        self.fresh_view(rel, false, sink)?;
        let abs = self.abs(rel);
        let mut node = match self.fs.lstat(&abs) {
            Ok(n) => n,
            Err(e) if is_gone(&e) => return self.gone(rel, false, tree, sink),
            Err(e) => {
                self.error(&abs, e);
                return Ok(());
            }
        };
        let old = tree.node(rel)?;
        match self.fs.xattrs(&abs) {
            Ok(x) => node.xattrs = x,
            Err(e) => self.error(&abs, format!("reading extended attributes: {e}")),
        }
        match node.kind() {
            NodeType::File => {
                if let Some(old) = &old {
                    if unchanged(old, &node) && old.xattrs == node.xattrs && old.mode == node.mode {
                        return Ok(());
                    }
                }
                if let Some(file) = self.read_file(rel, &abs, tree, sink)? {
                    self.push(Edit::Put {
                        path: rel.to_vec(),
                        node: file,
                    });
                }
                Ok(())
            }
            NodeType::Dir => {
                let was_dir = old.as_ref().is_some_and(|o| o.kind() == NodeType::Dir);
                if !old.as_ref().is_some_and(|o| same_meta(o, &node)) {
                    self.push(Edit::Put {
                        path: rel.to_vec(),
                        node,
                    });
                }
                if !was_dir {
                    // A new directory: files may have been created in it before its watch existed.
                    self.flush(sink)?;
                    self.rescan_children(rel, &abs, tree, sink)?;
                }
                Ok(())
            }
            _ => {
                if node.kind() == NodeType::Symlink {
                    match self.fs.read_link(&abs) {
                        Ok(t) => node.set_target(t.as_os_str()),
                        Err(e) if is_gone(&e) => return self.gone(rel, false, tree, sink),
                        Err(e) => {
                            self.error(&abs, e);
                            return Ok(());
                        }
                    }
                }
                if !old.as_ref().is_some_and(|o| {
                    same_meta(o, &node)
                        && o.target == node.target
                        && o.target_hex == node.target_hex
                }) {
                    self.push(Edit::Put {
                        path: rel.to_vec(),
                        node,
                    });
                }
                Ok(())
            }
        }
    }

    /// Brings the live tree at and below `rel` in line with the disk: deletes what is gone, reads
    /// what is new or changed (by size, mtime, ctime, inode), descends into directories.
    fn rescan(&mut self, rel: &[u8], tree: &dyn LiveTree, sink: &mut dyn Sink) -> Result<()> {
        self.read_path(rel, tree, sink)?;
        if let Some(v) = self.vanished.get_mut(rel) {
            v.subtree = true; // the subtree is still to be compared, wherever it went
            return Ok(());
        }
        let abs = self.abs(rel);
        if self.fs.lstat(&abs).is_ok_and(|n| n.kind() == NodeType::Dir) && !self.excluded(rel) {
            self.rescan_children(rel, &abs, tree, sink)?;
        }
        Ok(())
    }

    fn rescan_children(
        &mut self,
        rel: &[u8],
        abs: &Path,
        tree: &dyn LiveTree,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let mut names: Vec<Vec<u8>> = match self.fs.read_dir(abs) {
            Ok(names) => names.into_iter().map(|n| n.as_bytes().to_vec()).collect(),
            Err(e) if is_gone(&e) => return self.gone(rel, true, tree, sink),
            Err(e) => {
                self.error(abs, format!("listing: {e}"));
                return Ok(());
            }
        };
        names.sort();
        self.fresh_view(rel, true, sink)?;
        let known = tree.children(rel)?;
        let on_disk: HashSet<&[u8]> = names.iter().map(Vec::as_slice).collect();
        for child in &known {
            let name = child.name_bytes().unwrap_or_default();
            if !on_disk.contains(name.as_slice()) {
                self.push(Edit::Delete {
                    path: join_rel(rel, &name),
                });
            }
        }
        for name in names {
            let child = join_rel(rel, &name);
            if self.excluded(&child) {
                continue;
            }
            self.read_path(&child, tree, sink)?;
            if let Some(v) = self.vanished.get_mut(&child) {
                v.subtree = true;
                continue;
            }
            if self.pending_bytes >= self.opts.batch_bytes || self.pending.edits.len() >= 4096 {
                self.flush(sink)?;
            }
            let p = self.abs(&child);
            if self.fs.lstat(&p).is_ok_and(|n| n.kind() == NodeType::Dir) {
                // read_path rescanned a new directory already; a known one is descended here.
                if tree
                    .node(&child)?
                    .is_some_and(|n| n.kind() == NodeType::Dir)
                {
                    self.flush(sink)?;
                    self.rescan_children(&child, &p, tree, sink)?;
                }
            }
        }
        Ok(())
    }

    /// Reads a file into chunk ids, sealing new chunks into the pending batch (written out
    /// whenever it reaches the batch size). `None` when the file vanished or kept changing.
    fn read_file(
        &mut self,
        rel: &[u8],
        abs: &Path,
        tree: &dyn LiveTree,
        sink: &mut dyn Sink,
    ) -> Result<Option<Node>> {
        for _ in 0..self.opts.attempts.max(1) {
            let mut file = match self.fs.open(abs) {
                Ok(f) => f,
                Err(e) if is_gone(&e) => {
                    self.gone(rel, false, tree, sink)?;
                    return Ok(None);
                }
                Err(e) => {
                    self.error(abs, e);
                    return Ok(None);
                }
            };
            let before = file.stat().map_err(|e| Error::io("stat", abs, e))?;
            if before.kind() != NodeType::File {
                return Ok(None);
            }
            let mut content = Vec::new();
            let mut failure: Option<Error> = None;
            let Capturer {
                crypto,
                chunker,
                buf,
                repo,
                compressor,
                scratch,
                pending,
                pending_bytes,
                sent,
                stats,
                opts,
                followups,
                ..
            } = self;
            let read = chunker.stream(&mut *file, buf, |chunk| {
                let id = crypto.blob_id(chunk);
                content.push(id);
                stats.bytes_read += chunk.len() as u64;
                if sent.contains(&id) {
                    return Ok(());
                }
                if repo.index().contains(&id) {
                    return Ok(());
                }
                let mut envelope = Vec::new();
                let flags =
                    repo.encode_blob_into(compressor.as_mut(), chunk, scratch, &mut envelope);
                *pending_bytes += envelope.len();
                pending.blobs.push(NewBlob {
                    id,
                    kind: BlobKind::Data,
                    flags,
                    raw_len: chunk.len() as u32,
                    envelope,
                });
                sent.insert(id);
                stats.blobs_new += 1;
                if *pending_bytes >= opts.batch_bytes {
                    let mut batch = std::mem::take(pending);
                    *pending_bytes = 0;
                    batch.captured_ns = now_ns();
                    stats.batches += 1;
                    match sink.write(batch) {
                        Ok(rescan) => followups.extend(
                            rescan
                                .into_iter()
                                .map(|p| Change::Rescan(PathBuf::from(OsStr::from_bytes(&p)))),
                        ),
                        Err(e) => {
                            failure = Some(e);
                            return Err(io::Error::other("the log refused a batch"));
                        }
                    }
                }
                Ok(())
            });
            if let Some(e) = failure {
                return Err(e);
            }
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    self.error(abs, format!("reading: {e}"));
                    return Ok(None);
                }
            };
            self.stats.files_read += 1;
            let after = file.stat().map_err(|e| Error::io("stat", abs, e))?;
            if stable(&before, &after, bytes) {
                let mut node = after;
                node.content = content;
                node.xattrs = self.fs.xattrs(abs).unwrap_or_default();
                return Ok(Some(node));
            }
        }
        self.stats.deferred += 1;
        self.deferred.push(PathBuf::from(OsStr::from_bytes(rel)));
        Ok(None)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
