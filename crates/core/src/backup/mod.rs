//! One-shot backup: a pipeline that keeps every core busy.
//!
//! ```text
//! walker (this thread) ──FileJob──▶ readers ×R ──NewBlob──▶ sealers ×C ──FinishedPack──▶ uploader
//!   lstat, parent match             read, chunk, hash        zstd, seal, pack             Store::put,
//!   unchanged files skip reading    dedup against index                                   index files
//!          ▲                               │ fill node content
//!          └── PendingDir: a directory's tree is written when its last child completes ──┘
//! ```
//! Channels are bounded, so memory stays bounded whatever the tree size: at most the open packs,
//! one pack per uploader slot, the sealer queue and one chunk buffer per reader.
//!
//! A directory's tree is written bottom-up as soon as all its children are done, by whichever
//! thread completed the last child. The snapshot is written last, after the final index file, so
//! an interrupted backup never leaves a snapshot that references missing data; the packs it did
//! write are indexed (every 32 packs, or adopted from their headers by the next backup).

mod prefetch;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::pack::BlobKind;
use crate::repo::{BlobWriter, FinishedPack, Repository};
use crate::snapshot::{Node, NodeType, Snapshot, Summary, Tree};
use crate::source::{node_from_metadata, open_noatime, read_xattrs, stable, unchanged, Excludes};

/// What to back up and how.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Exclude patterns (see [`Excludes`]).
    pub excludes: Vec<String>,
    /// Do not descend into other filesystems.
    pub one_file_system: bool,
    /// Snapshot whose metadata lets unchanged files skip reading.
    pub parent: Option<SnapshotId>,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Recorded in the snapshot.
    pub hostname: String,
    /// Recorded in the snapshot.
    pub username: String,
    /// Reader threads (0 = number of cores).
    pub readers: usize,
    /// The snapshot's time instead of the start (importing history, tests).
    pub time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Live counters, readable from another thread for a progress display.
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Files finished (read or skipped as unchanged).
    pub files: AtomicU64,
    /// Bytes of finished or in-progress files (unchanged files count whole).
    pub bytes: AtomicU64,
    /// Directories finished.
    pub dirs: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    /// Set by a concurrent estimate: total files, or 0 while unknown.
    pub total_files: AtomicU64,
    /// Set by a concurrent estimate: total bytes, or 0 while unknown.
    pub total_bytes: AtomicU64,
    /// The estimate is complete.
    pub estimate_done: AtomicBool,
}

/// A source entry that could not be backed up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceError {
    /// The entry.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// The new snapshot.
    pub id: SnapshotId,
    /// It, as stored.
    pub snapshot: Snapshot,
    /// Entries that could not be read (the backup still completed without them).
    pub errors: Vec<SourceError>,
    /// Packs adopted from an earlier interrupted backup.
    pub adopted_packs: usize,
}

struct PendingDir {
    nodes: Mutex<Vec<Option<Node>>>,
    remaining: AtomicUsize,
    parent: Option<(Arc<PendingDir>, usize)>,
    /// The parent snapshot's tree for this directory: its nodes let unchanged files skip reading,
    /// and when the new nodes equal them the old id is reused without encoding anything.
    old: Mutex<Option<(BlobId, Tree)>>,
}

struct FileJob {
    path: PathBuf,
    dir: Arc<PendingDir>,
    slot: usize,
    is_new: bool,
}

struct NewBlob {
    id: BlobId,
    data: Vec<u8>,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    other: AtomicU64,
    data_blobs_new: AtomicU64,
    tree_blobs_new: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
    data_added: AtomicU64,
    data_added_packed: AtomicU64,
}

struct Ctx<'a> {
    repo: &'a Repository,
    writer: BlobWriter<'a>,
    excludes: Excludes,
    one_file_system: bool,
    progress: &'a BackupProgress,
    cancel: &'a AtomicBool,
    known: Mutex<HashSet<BlobId>>,
    counters: Counters,
    errors: Mutex<Vec<SourceError>>,
    fatal: Mutex<Option<Error>>,
    root: Mutex<Option<BlobId>>,
    /// Chunk buffers handed back by sealers for readers to reuse.
    chunk_pool: Mutex<Vec<Vec<u8>>>,
    /// Subdirectory listings made ahead of the walker.
    prefetch: prefetch::Prefetch,
    prefetch_tx: Mutex<Option<Sender<prefetch::Job>>>,
}

/// Chunk buffers kept for reuse: enough for every queued and in-flight chunk.
const CHUNK_POOL: usize = 8;

/// The senders one thread holds; dropping them all closes the pipeline stage by stage.
struct Sinks {
    blobs: Sender<NewBlob>,
    packs: Sender<FinishedPack>,
}

impl Ctx<'_> {
    fn stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn fail(&self, e: Error) {
        let mut f = self.fatal.lock().expect("fatal lock");
        if f.is_none() {
            *f = Some(e);
        }
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn source_error(&self, path: &Path, e: impl std::fmt::Display) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().expect("errors lock").push(SourceError {
            path: path.to_owned(),
            error: e.to_string(),
        });
    }

    /// True if the blob must be stored (not in the index, not already queued by this backup).
    fn claim(&self, id: &BlobId) -> bool {
        !self.repo.index().contains(id) && self.known.lock().expect("known lock").insert(*id)
    }

    fn store_blob(
        &self,
        packs: &Sender<FinishedPack>,
        id: BlobId,
        kind: BlobKind,
        plain: &[u8],
        z: Option<&mut zstd::bulk::Compressor<'_>>,
        buffers: &mut (Vec<u8>, Vec<u8>),
    ) {
        let (scratch, env) = buffers;
        let flags = self.repo.encode_blob_into(z, plain, scratch, env);
        self.counters
            .data_added
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        self.counters
            .data_added_packed
            .fetch_add(env.len() as u64, Ordering::Relaxed);
        match self.writer.add(id, kind, flags, plain.len() as u32, env) {
            Ok(Some(pack)) => {
                // The uploader only stops after every sender is gone, so this cannot fail
                // unless the backup is already failing.
                let _ = packs.send(pack);
            }
            Ok(None) => {}
            Err(e) => self.fail(e),
        }
    }

    /// One child of `dir` finished; finalizes the directory (and so on upwards) when it was the last.
    fn child_done(&self, sinks: &Sinks, dir: Arc<PendingDir>) {
        let mut dir = dir;
        loop {
            if dir.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let nodes = std::mem::take(&mut *dir.nodes.lock().expect("dir lock"));
            let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
            let old = dir.old.lock().expect("old lock").take();
            let (id, blobs) = match old {
                Some((old_id, old_tree)) if old_tree.nodes == nodes => (old_id, Vec::new()),
                _ => {
                    let blobs = self.repo.tree_blobs(nodes);
                    (blobs.last().expect("a listing has a blob").0, blobs)
                }
            };
            for (blob, bytes) in &blobs {
                if !self.claim(blob) {
                    continue;
                }
                self.counters.tree_blobs_new.fetch_add(1, Ordering::Relaxed);
                thread_local! {
                    // (level, compressor): creating a zstd context per directory is costly.
                    static TREE_COMPRESSOR: std::cell::RefCell<Option<(i32, Option<zstd::bulk::Compressor<'static>>)>> = const { std::cell::RefCell::new(None) };
                }
                let level = self.repo.config().compression.level;
                TREE_COMPRESSOR.with_borrow_mut(|slot| {
                    if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                        *slot = Some((level, self.repo.compressor()));
                    }
                    let z = &mut slot.as_mut().expect("just set").1;
                    self.store_blob(
                        &sinks.packs,
                        *blob,
                        BlobKind::Tree,
                        bytes,
                        z.as_mut(),
                        &mut (Vec::new(), Vec::new()),
                    );
                });
            }
            self.progress.dirs.fetch_add(1, Ordering::Relaxed);
            match &dir.parent {
                None => {
                    *self.root.lock().expect("root lock") = Some(id);
                    return;
                }
                Some((parent, slot)) => {
                    if let Some(n) = parent.nodes.lock().expect("dir lock")[*slot].as_mut() {
                        n.subtree = Some(id);
                    }
                    let parent = Arc::clone(parent);
                    dir = parent;
                }
            }
        }
    }

    /// Walks `children` of a directory (real or virtual) into a new PendingDir.
    fn walk_dir(
        &self,
        sinks: &Sinks,
        jobs: &Sender<FileJob>,
        parent: Option<(Arc<PendingDir>, usize)>,
        entries: Vec<Entry>,
        old: Option<(BlobId, Tree)>,
        root_dev: Option<u64>,
    ) {
        let dir = Arc::new(PendingDir {
            nodes: Mutex::new(vec![None; entries.len()]),
            remaining: AtomicUsize::new(1 + entries.len()),
            parent,
            old: Mutex::new(old),
        });
        {
            // Nobody else touches `old` before the walker's own count is released below.
            let old = dir.old.lock().expect("old lock");
            let old_tree = old.as_ref().map(|(_, t)| t);
            if let Some(tx) = &*self.prefetch_tx.lock().expect("prefetch lock") {
                for e in &entries {
                    let Entry::Real {
                        name,
                        path,
                        meta: Some(m),
                    } = e
                    else {
                        continue;
                    };
                    if !m.is_dir()
                        || (self.one_file_system && root_dev.is_some_and(|d| d != m.dev()))
                    {
                        continue;
                    }
                    let old_id = old_tree
                        .and_then(|t| {
                            t.find(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()))
                        })
                        .filter(|n| n.kind() == NodeType::Dir)
                        .and_then(|n| n.subtree);
                    self.prefetch.queue(tx, path.clone(), old_id);
                }
            }
            for (slot, entry) in entries.into_iter().enumerate() {
                if self.stopped() {
                    // Leave the directory unfinished: no snapshot will be written.
                    return;
                }
                self.entry(sinks, jobs, &dir, slot, entry, old_tree, root_dev);
            }
        }
        self.child_done(sinks, dir);
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        sinks: &Sinks,
        jobs: &Sender<FileJob>,
        dir: &Arc<PendingDir>,
        slot: usize,
        entry: Entry,
        old: Option<&Tree>,
        root_dev: Option<u64>,
    ) {
        let (name, path, virtual_children, listed) = match entry {
            Entry::Real { name, path, meta } => (name, path, None, meta),
            Entry::Virtual {
                name,
                path,
                children,
            } => (name, path, Some(children), None),
        };
        // Entries of a listed directory come with their lstat (fstatat on the directory: no
        // path walk); the top-level paths are looked up here.
        let meta = match listed.map_or_else(|| std::fs::symlink_metadata(&path), Ok) {
            Ok(m) => m,
            Err(e) => {
                self.source_error(&path, e);
                self.child_done(sinks, Arc::clone(dir));
                return;
            }
        };
        let mut node = node_from_metadata(&meta);
        node.set_name(&name);
        let old_node =
            old.and_then(|t| t.find(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str())));
        if node.kind() != NodeType::File {
            match read_xattrs(&path) {
                Ok(x) => node.xattrs = x,
                Err(e) => self.source_error(&path, format!("reading extended attributes: {e}")),
            }
        }
        match node.kind() {
            NodeType::Dir => {
                let root_dev = root_dev.or(Some(meta.dev()));
                let old_id = old_node
                    .filter(|n| n.kind() == NodeType::Dir)
                    .and_then(|n| n.subtree);
                let listing = match virtual_children {
                    Some(c) => prefetch::Listing {
                        entries: Ok(c),
                        old: old_id.map(|id| (id, self.repo.load_tree(&id))),
                    },
                    None if self.one_file_system && root_dev != Some(meta.dev()) => {
                        prefetch::Listing {
                            entries: Ok(Vec::new()),
                            old: None,
                        }
                    }
                    None => self.prefetch.take(&path, old_id, &|p, o| self.list(p, o)),
                };
                let children = match listing.entries {
                    Ok(c) => c,
                    Err(e) => {
                        self.source_error(&path, e);
                        Vec::new()
                    }
                };
                let old_tree = match listing.old {
                    Some((id, Ok(t))) => Some((id, t)),
                    Some((_, Err(e))) => {
                        // A damaged parent only costs speed: read everything below again.
                        self.source_error(
                            &path,
                            format!("parent tree unreadable, re-reading this directory: {e}"),
                        );
                        None
                    }
                    None => None,
                };
                dir.nodes.lock().expect("dir lock")[slot] = Some(node);
                self.walk_dir(
                    sinks,
                    jobs,
                    Some((Arc::clone(dir), slot)),
                    children,
                    old_tree,
                    root_dev,
                );
            }
            NodeType::File => {
                self.counters
                    .bytes_total
                    .fetch_add(node.size, Ordering::Relaxed);
                if let Some(o) = old_node.filter(|o| {
                    unchanged(o, &node) && {
                        // One index lookup guard for the file's chunks (nothing writes the index
                        // during a backup).
                        let index = self.repo.index();
                        o.content.iter().all(|c| {
                            index.contains(c) || self.known.lock().expect("known lock").contains(c)
                        })
                    }
                }) {
                    let mut n = o.clone();
                    n.set_name(&name);
                    // Metadata that does not imply a content change is taken fresh.
                    (n.mode, n.uid, n.gid, n.atime_ns, n.links, n.device_id) = (
                        node.mode,
                        node.uid,
                        node.gid,
                        node.atime_ns,
                        node.links,
                        node.device_id,
                    );
                    // Extended attributes are kept from the parent: setting one changes the
                    // ctime, which `unchanged` compared.
                    dir.nodes.lock().expect("dir lock")[slot] = Some(n);
                    self.counters
                        .files_unmodified
                        .fetch_add(1, Ordering::Relaxed);
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    self.progress.bytes.fetch_add(node.size, Ordering::Relaxed);
                    self.child_done(sinks, Arc::clone(dir));
                } else {
                    dir.nodes.lock().expect("dir lock")[slot] = Some(node);
                    let job = FileJob {
                        path,
                        dir: Arc::clone(dir),
                        slot,
                        is_new: old_node.is_none(),
                    };
                    if jobs.send(job).is_err() {
                        self.cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
            NodeType::Symlink => {
                match std::fs::read_link(&path) {
                    Ok(t) => {
                        node.set_target(t.as_os_str());
                        // readlink may update the link's atime (there is no O_NOATIME for it):
                        // record the time as it is now, so the next backup sees the same node.
                        if let Ok(m) = std::fs::symlink_metadata(&path) {
                            node.atime_ns = node_from_metadata(&m).atime_ns;
                        }
                        dir.nodes.lock().expect("dir lock")[slot] = Some(node);
                        self.counters.other.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => self.source_error(&path, e),
                }
                self.child_done(sinks, Arc::clone(dir));
            }
            _ => {
                dir.nodes.lock().expect("dir lock")[slot] = Some(node);
                self.counters.other.fetch_add(1, Ordering::Relaxed);
                self.child_done(sinks, Arc::clone(dir));
            }
        }
    }

    /// A directory's listing and its tree in the parent snapshot (run by the prefetchers or
    /// the walker).
    fn list(&self, path: &Path, old: Option<BlobId>) -> prefetch::Listing {
        prefetch::Listing {
            entries: self.read_dir(path),
            old: old.map(|id| (id, self.repo.load_tree(&id))),
        }
    }

    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            let p = e.path();
            if self.excludes.matches(&p) {
                continue;
            }
            // A vanished entry is looked up again later and reported then.
            let meta = e.metadata().ok();
            entries.push(Entry::Real {
                name: e.file_name(),
                path: p,
                meta,
            });
        }
        entries.sort_unstable_by(|a, b| {
            std::os::unix::ffi::OsStrExt::as_bytes(a.name())
                .cmp(std::os::unix::ffi::OsStrExt::as_bytes(b.name()))
        });
        Ok(entries)
    }

    /// Reads one file: chunks, hashes and queues new chunks; re-reads if it changed meanwhile.
    fn read_file(&self, sinks: &Sinks, job: FileJob, buf: &mut [u8]) {
        const ATTEMPTS: usize = 3;
        let mut result = None;
        for attempt in 1..=ATTEMPTS {
            match self.read_once(sinks, &job.path, buf) {
                Ok((content, before, after, bytes)) => {
                    let stable = stable(
                        &node_from_metadata(&before),
                        &node_from_metadata(&after),
                        bytes,
                    );
                    if stable || attempt == ATTEMPTS {
                        if !stable {
                            self.source_error(&job.path, "file kept changing while being read; the last read is stored and may mix versions");
                        }
                        result = Some(Ok((content, after)));
                        break;
                    }
                }
                Err(e) => {
                    result = Some(Err(e));
                    break;
                }
            }
        }
        let mut nodes = job.dir.nodes.lock().expect("dir lock");
        match result.expect("at least one attempt") {
            Ok((content, meta)) => {
                let slot = nodes[job.slot]
                    .as_mut()
                    .expect("file slot was filled by the walker");
                let name = slot.os_name();
                let xattrs = slot.xattrs.clone();
                *slot = node_from_metadata(&meta);
                slot.set_name(&name);
                slot.content = content;
                slot.xattrs = xattrs;
                match read_xattrs(&job.path) {
                    Ok(x) => slot.xattrs = x,
                    Err(e) => {
                        self.source_error(&job.path, format!("reading extended attributes: {e}"));
                    }
                }
                if job.is_new {
                    self.counters.files_new.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.files_changed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if !self.stopped() {
                    self.source_error(&job.path, e);
                }
                nodes[job.slot] = None;
            }
        }
        drop(nodes);
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        self.child_done(sinks, job.dir);
    }

    fn read_once(
        &self,
        sinks: &Sinks,
        path: &Path,
        buf: &mut [u8],
    ) -> std::io::Result<(Vec<BlobId>, std::fs::Metadata, std::fs::Metadata, u64)> {
        let mut file = open_noatime(path)?;
        let before = file.metadata()?;
        if !before.is_file() {
            return Err(std::io::Error::other("no longer a regular file"));
        }
        let mut content = Vec::new();
        let crypto = self.repo.crypto();
        let bytes = self
            .repo
            .chunker()
            .stream(&mut file as &mut dyn Read, buf, |chunk| {
                if self.stopped() {
                    return Err(std::io::Error::other("interrupted"));
                }
                let id = crypto.blob_id(chunk);
                content.push(id);
                self.counters
                    .bytes_read
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.progress
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if self.claim(&id) {
                    self.counters.data_blobs_new.fetch_add(1, Ordering::Relaxed);
                    let mut data = self
                        .chunk_pool
                        .lock()
                        .expect("pool lock")
                        .pop()
                        .unwrap_or_default();
                    data.clear();
                    data.extend_from_slice(chunk);
                    sinks
                        .blobs
                        .send(NewBlob { id, data })
                        .map_err(|_| std::io::Error::other("pipeline stopped"))?;
                }
                Ok(())
            })?;
        let after = file.metadata()?;
        Ok((content, before, after, bytes))
    }
}

enum Entry {
    Real {
        name: OsString,
        path: PathBuf,
        meta: Option<std::fs::Metadata>,
    },
    Virtual {
        name: OsString,
        path: PathBuf,
        children: Vec<Entry>,
    },
}

/// Builds the virtual top of the tree: `/a/b` and `/a/c` become `a` → {`b`, `c`}.
impl Entry {
    fn name(&self) -> &std::ffi::OsStr {
        match self {
            Entry::Real { name, .. } | Entry::Virtual { name, .. } => name,
        }
    }
}

fn top_entries(paths: &[PathBuf]) -> Result<Vec<Entry>> {
    #[derive(Default)]
    struct Trie {
        real: bool,
        children: BTreeMap<Vec<u8>, Trie>,
    }
    let mut root = Trie::default();
    for p in paths {
        if !p.is_absolute() {
            return Err(Error::Invalid(format!(
                "backup path {} is not absolute",
                p.display()
            )));
        }
        let mut t = &mut root;
        for c in p.components() {
            if let Component::Normal(n) = c {
                t = t
                    .children
                    .entry(std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec())
                    .or_default();
            }
        }
        t.real = true;
    }
    if root.real {
        return Err(Error::Invalid(
            "backing up / itself is not supported; name its top-level directories".into(),
        ));
    }
    fn build(t: Trie, base: &Path) -> Vec<Entry> {
        t.children
            .into_iter()
            .map(|(name, child)| {
                let name = <OsString as std::os::unix::ffi::OsStringExt>::from_vec(name);
                let path = base.join(&name);
                if child.real {
                    Entry::Real {
                        name,
                        path,
                        meta: None,
                    }
                } else {
                    let children = build(child, &path);
                    Entry::Virtual {
                        name,
                        path,
                        children,
                    }
                }
            })
            .collect()
    }
    Ok(build(root, Path::new("/")))
}

/// Counts files and bytes under `paths` for a progress ETA (runs beside the backup).
pub fn estimate(
    paths: &[PathBuf],
    excludes: &Excludes,
    progress: &BackupProgress,
    cancel: &AtomicBool,
) {
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|c| !excludes.matches(c)),
                );
            }
        } else if meta.is_file() {
            progress.total_files.fetch_add(1, Ordering::Relaxed);
            progress
                .total_bytes
                .fetch_add(meta.size(), Ordering::Relaxed);
        }
    }
    progress.estimate_done.store(true, Ordering::Relaxed);
}

/// Runs a backup into `repo` (whose index must be loaded) and writes the snapshot.
///
/// Packs left by an interrupted earlier backup are indexed first, so their chunks are reused.
/// `cancel` stops the backup early (`Error::Interrupted`); what was uploaded is indexed.
pub fn backup(
    repo: &mut Repository,
    opts: &BackupOptions,
    progress: &BackupProgress,
    cancel: &AtomicBool,
) -> Result<BackupResult> {
    let start = repo.clock().now();
    let (adopted_packs, _damaged) = repo.adopt_packs()?;
    let parent_tree = match &opts.parent {
        Some(id) => Some(repo.load_snapshot(id)?.tree),
        None => None,
    };
    let entries = top_entries(&opts.paths)?;
    let repo_ref: &Repository = repo;
    let ctx = Ctx {
        repo: repo_ref,
        writer: BlobWriter::new(repo_ref),
        excludes: Excludes::new(&opts.excludes)?,
        one_file_system: opts.one_file_system,
        progress,
        cancel,
        known: Mutex::new(HashSet::new()),
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        root: Mutex::new(None),
        chunk_pool: Mutex::new(Vec::new()),
        prefetch: prefetch::Prefetch::default(),
        prefetch_tx: Mutex::new(None),
    };
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let readers = if opts.readers == 0 {
        cores
    } else {
        opts.readers
    };
    let sealers = cores;
    let old_root = match parent_tree {
        Some(id) => Some((id, repo_ref.load_tree(&id)?)),
        None => None,
    };

    std::thread::scope(|s| {
        let (job_tx, job_rx) = bounded::<FileJob>(256);
        let (blob_tx, blob_rx) = bounded::<NewBlob>(sealers * 2);
        let (pack_tx, pack_rx) = bounded::<FinishedPack>(0);
        let ctx = &ctx;
        s.spawn(move || uploader(ctx, &pack_rx));
        for _ in 0..sealers {
            let (rx, packs) = (blob_rx.clone(), pack_tx.clone());
            s.spawn(move || sealer(ctx, &rx, &packs));
        }
        let (prefetch_tx, prefetch_rx) = bounded::<prefetch::Job>(1024);
        *ctx.prefetch_tx.lock().expect("prefetch lock") = Some(prefetch_tx);
        for _ in 0..2 {
            let rx = prefetch_rx.clone();
            s.spawn(move || prefetch::Prefetch::serve(&rx, &|p, o| ctx.list(p, o)));
        }
        drop(prefetch_rx);
        let mut reader_handles = Vec::new();
        for _ in 0..readers {
            let (rx, sinks) = (
                job_rx.clone(),
                Sinks {
                    blobs: blob_tx.clone(),
                    packs: pack_tx.clone(),
                },
            );
            reader_handles.push(s.spawn(move || {
                let mut buf = ctx.repo.chunker().buffer();
                for job in rx {
                    ctx.read_file(&sinks, job, &mut buf);
                }
            }));
        }
        drop((job_rx, blob_rx));
        let sinks = Sinks {
            blobs: blob_tx,
            packs: pack_tx,
        };
        ctx.walk_dir(&sinks, &job_tx, None, entries, old_root, None);
        *ctx.prefetch_tx.lock().expect("prefetch lock") = None;
        drop(job_tx);
        for h in reader_handles {
            if h.join().is_err() {
                ctx.fail(Error::Invalid("a reader thread panicked".into()));
            }
        }
        drop(sinks);
    });

    let Ctx {
        writer,
        fatal,
        root,
        counters,
        errors,
        ..
    } = ctx;
    if let Some(e) = fatal.into_inner().expect("fatal lock") {
        return Err(e);
    }
    let (_stats, written) = writer.finish_all()?;
    repo.shared_index().add_packs(&written);
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let tree = root
        .into_inner()
        .expect("root lock")
        .ok_or_else(|| Error::Invalid("backup ended without a root tree".into()))?;
    let errors = errors.into_inner().expect("errors lock");
    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = Summary {
        files_new: get(&c.files_new),
        files_changed: get(&c.files_changed),
        files_unmodified: get(&c.files_unmodified),
        dirs: progress.dirs.load(Ordering::Relaxed),
        other: get(&c.other),
        errors: errors.len() as u64,
        data_blobs_new: get(&c.data_blobs_new),
        tree_blobs_new: get(&c.tree_blobs_new),
        bytes_read: get(&c.bytes_read),
        bytes_total: get(&c.bytes_total),
        data_added: get(&c.data_added),
        data_added_packed: get(&c.data_added_packed),
        start: start.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        end: repo
            .clock()
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    };
    let snapshot = Snapshot {
        version: 1,
        time: opts
            .time
            .unwrap_or(start)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        hostname: opts.hostname.clone(),
        username: opts.username.clone(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        paths: opts
            .paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        tags: opts.tags.clone(),
        parent: opts.parent,
        tree,
        program_version: concat!("tidemark ", env!("CARGO_PKG_VERSION")).into(),
        summary,
        revision: None,
        log: None,
        membership: None,
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupResult {
        id,
        snapshot,
        errors,
        adopted_packs,
    })
}

fn uploader(ctx: &Ctx<'_>, rx: &Receiver<FinishedPack>) {
    for pack in rx {
        if ctx.fatal.lock().expect("fatal lock").is_some() {
            continue; // drain so senders never block
        }
        if let Err(e) = ctx.writer.upload(pack) {
            ctx.fail(e);
        }
    }
}

fn sealer(ctx: &Ctx<'_>, rx: &Receiver<NewBlob>, packs: &Sender<FinishedPack>) {
    let mut z = ctx.repo.compressor();
    let mut buffers = (Vec::new(), Vec::new());
    for blob in rx {
        if ctx.fatal.lock().expect("fatal lock").is_none() {
            ctx.store_blob(
                packs,
                blob.id,
                BlobKind::Data,
                &blob.data,
                z.as_mut(),
                &mut buffers,
            );
        }
        let mut pool = ctx.chunk_pool.lock().expect("pool lock");
        if pool.len() < CHUNK_POOL {
            pool.push(blob.data);
        }
    }
}

/// The latest snapshot with exactly these paths and hostname: the default parent.
pub fn find_parent(
    repo: &Repository,
    paths: &[PathBuf],
    hostname: &str,
) -> Result<Option<SnapshotId>> {
    let want: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Ok(repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.hostname == hostname && s.paths == want)
        .map(|(id, _)| id))
}
