//! `tidemark mount`: the repository as a read-only FUSE file system, like `restic mount`.
//!
//! ```text
//! MOUNTPOINT/
//!   snapshots/2026-11-23T20:15:00/home/alice/docs/…   one directory per snapshot, named by its local
//!   snapshots/2026-11-23T20:15:00.512/…               time (+ milliseconds, then -N, when taken)
//!   ids/1a2b3c4d/…                                     the same directories by short id
//!   latest -> snapshots/<newest>                       a symlink, followed on every path lookup
//! ```
//! Below a snapshot's directory is its root tree, which mirrors the absolute source paths.
//!
//! **Inodes** are numbered by a hash of (parent inode, name), plus the snapshot id for a
//! snapshot's directory, so `readdir` can give the number `lookup` will give without remembering
//! anything; a record (the tree node) is kept only while the kernel holds a reference to it
//! (`lookup` counts up, `forget` down), so memory follows the kernel's inode cache. Everything
//! below a snapshot is immutable: its entries and attributes get a long TTL and files are opened
//! with `FOPEN_KEEP_CACHE`, so the kernel's page cache holds file contents across opens.
//! **Reads** map `(offset, len)` onto the file's chunk list (offsets from the index's plaintext
//! lengths, computed at `open`) and read only the chunks that overlap, through an LRU cache of
//! decrypted chunks bounded in bytes (`--cache-size`); concurrent reads of one chunk wait for
//! one load. Directory listings are read when a directory is first listed or looked into,
//! through a small LRU cache of trees. **New snapshots**: reading `snapshots/`, `ids/` or
//! `latest` re-lists the snapshots at most every `--refresh`; when the list changed, the index
//! files not seen yet are read too (a snapshot is stored after its index). A blob whose pack has
//! gone (prune) makes the whole index be read again, at most once per `--refresh`.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyXattr, Request, SessionACL,
};
use tidemark_core::id::{BlobId, Kind, ObjectId};
use tidemark_core::repo::{index, Repository};
use tidemark_core::snapshot::{Node, NodeType, SnapshotList};

use crate::args::Global;
use crate::open;
use crate::Outcome;

mod cache;
mod inodes;
mod view;

use cache::{Blobs, Lru};
use inodes::{hashed, Entry, Inodes, TreeEntry, IDS, LATEST, SNAPSHOTS};
use view::View;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Look for new snapshots at most this often (when `snapshots/`, `ids/` or `latest` is read).
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = crate::parse::duration)]
    pub refresh: Duration,
    /// Memory for decrypted file chunks, shared by all readers (the least recently used go first).
    #[arg(long, default_value = "64MiB", value_name = "SIZE", value_parser = crate::parse::size)]
    pub cache_size: u64,
    /// Let other users in too (the kernel checks the stored modes and owners); unless run as
    /// root this needs `user_allow_other` in /etc/fuse.conf.
    #[arg(long)]
    pub allow_other: bool,
    /// Threads serving file system requests.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,
}

/// Mounts, serves until SIGINT/SIGTERM (or an unmount from outside), then unmounts.
pub fn run(g: &Global, a: &MountArgs, cancel: &Arc<AtomicBool>) -> Result<Outcome> {
    let meta = std::fs::metadata(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", a.mountpoint.display());
    }
    let repo = open::open(g)?;
    let mut index_files = HashSet::new();
    repo.load_index_visit(&mut |file, _, _| {
        index_files.insert(*file);
    })
    .context("loading the index")?;
    let (list, _) = repo.snapshot_list().context("listing snapshots")?;
    let count = list.len();
    let fs = SnapshotFs::new(repo, list, index_files, a);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("tidemark".into()),
        MountOption::Subtype("tidemark".into()),
        // The kernel checks the stored modes and owners; setuid bits and device nodes are inert.
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    config.acl = if a.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(a.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs, &a.mountpoint, &config)
        .with_context(|| format!("mounting on {}", a.mountpoint.display()))?;
    if !g.quiet {
        eprintln!(
            "mounted on {mp}: snapshots/ ({count} now), ids/, latest; Ctrl-C or `fusermount3 -u {mp}` unmounts",
            mp = a.mountpoint.display()
        );
    }
    while !cancel.load(Ordering::SeqCst) {
        if session.guard.is_finished() {
            // Unmounted from outside (`fusermount3 -u`, `umount`).
            session.join().context("serving the file system")?;
            return Ok(Outcome::Ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = session.umount_and_join() {
        eprintln!(
            "tidemark: unmounting {}: {e}; detaching it instead (it goes away when its last user leaves)",
            a.mountpoint.display()
        );
        lazy_unmount(&a.mountpoint)?;
    }
    Ok(Outcome::Ok)
}

/// Detaches a busy mount (`umount -l`, or the FUSE helpers for a user).
fn lazy_unmount(mountpoint: &Path) -> Result<()> {
    let attempts: [(&str, &[&str]); 3] = [
        ("umount", &["-l"]),
        ("fusermount3", &["-u", "-z"]),
        ("fusermount", &["-u", "-z"]),
    ];
    for (program, args) in attempts {
        let done = std::process::Command::new(program)
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
        if done.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    bail!(
        "could not unmount {}; try `fusermount3 -u -z` on it",
        mountpoint.display()
    )
}

/// How long the kernel may keep entries and attributes: inside a snapshot nothing changes.
const STABLE_TTL: Duration = Duration::from_secs(600);
/// For the top level and the snapshot directories, which come and go.
const LIVE_TTL: Duration = Duration::from_secs(1);
/// Reported as `st_blksize`: `cp` and `cat` size their buffers by it.
const BLOCK_SIZE: u32 = 128 << 10;
/// Approximate memory of one parsed tree node, to bound the tree cache.
const NODE_WEIGHT: usize = 256;
const TREE_CACHE_BYTES: usize = 32 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

struct RefreshState {
    last: Instant,
    /// Index files whose entries are in the repository's index.
    index_files: HashSet<ObjectId>,
    /// When the whole index was last read again (after a missing pack).
    reloaded: Option<Instant>,
}

/// One directory listing, kept from `opendir` to `releasedir` so that `readdir` pages through
/// a stable list.
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

struct SnapshotFs {
    repo: Repository,
    view: RwLock<Arc<View>>,
    refresh: Mutex<RefreshState>,
    refresh_every: Duration,
    inodes: Mutex<Inodes>,
    trees: Mutex<Lru<Arc<Vec<Node>>>>,
    blobs: Mutex<Blobs>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl SnapshotFs {
    fn new(
        repo: Repository,
        list: SnapshotList,
        index_files: HashSet<ObjectId>,
        a: &MountArgs,
    ) -> SnapshotFs {
        SnapshotFs {
            repo,
            view: RwLock::new(Arc::new(View::new(list))),
            refresh: Mutex::new(RefreshState {
                last: Instant::now(),
                index_files,
                reloaded: None,
            }),
            refresh_every: a.refresh,
            inodes: Mutex::new(Inodes::default()),
            trees: Mutex::new(Lru::new(TREE_CACHE_BYTES)),
            blobs: Mutex::new(Blobs {
                cached: Lru::new(usize::try_from(a.cache_size).unwrap_or(usize::MAX)),
                loading: HashMap::new(),
            }),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            started: SystemTime::now(),
        }
    }

    fn view(&self) -> Arc<View> {
        Arc::clone(&read(&self.view))
    }

    /// Re-lists the snapshots if the last listing is older than `--refresh` (and no other
    /// thread is at it).
    fn maybe_refresh(&self) {
        let Ok(mut state) = self.refresh.try_lock() else {
            return;
        };
        if state.last.elapsed() < self.refresh_every {
            return;
        }
        if let Err(e) = self.refresh_now(&mut state) {
            eprintln!("tidemark mount: looking for new snapshots: {e}");
        }
        state.last = Instant::now();
    }

    fn refresh_now(&self, state: &mut RefreshState) -> tidemark_core::Result<()> {
        let (list, _) = self.repo.snapshot_list()?;
        if list.ids().eq(self.view().list.ids()) {
            return Ok(());
        }
        // Listed after the snapshots: every index file a listed snapshot needs is there.
        let mut added = Vec::new();
        {
            let repo = &self.repo;
            for (id, _) in repo.store().list(Kind::Index)? {
                if state.index_files.contains(&id) {
                    continue;
                }
                let bytes = match repo.store().get(Kind::Index, &id, None) {
                    Ok(b) => b,
                    // Replaced by a prune meanwhile: its packs are in the new file.
                    Err(tidemark_core::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                added.push((id, index::open(repo.crypto(), &id, &bytes)?));
            }
        }
        if !added.is_empty() {
            let repo = &self.repo;
            for (id, packs) in added {
                for (pack, entries) in packs {
                    repo.index_add(pack, &entries);
                }
                state.index_files.insert(id);
            }
        }
        *write(&self.view) = Arc::new(View::new(list));
        Ok(())
    }

    /// Reads the whole index again (a pack went away under us, e.g. pruned), at most once per
    /// `--refresh`.
    fn reload_index(&self) {
        let mut state = lock(&self.refresh);
        if state
            .reloaded
            .is_some_and(|t| t.elapsed() < self.refresh_every)
        {
            return;
        }
        state.reloaded = Some(Instant::now());
        let mut files = HashSet::new();
        let loaded = self.repo.load_index_visit(&mut |file, _, _| {
            files.insert(*file);
        });
        match loaded {
            Ok(_) => state.index_files = files,
            Err(e) => eprintln!("tidemark mount: reading the index again: {e}"),
        }
    }

    /// Runs a repository read; a missing object makes the index be read again and the read
    /// retried once. Failures are reported on stderr and become EIO.
    fn with_repo<T>(
        &self,
        what: &dyn Fn() -> String,
        f: &dyn Fn(&Repository) -> tidemark_core::Result<T>,
    ) -> Result<T, Errno> {
        let first = f(&self.repo);
        let result = match first {
            Err(tidemark_core::Error::NotFound { .. }) => {
                self.reload_index();
                f(&self.repo)
            }
            other => other,
        };
        result.map_err(|e| {
            eprintln!("tidemark mount: {}: {e}", what());
            Errno::EIO
        })
    }

    fn tree(&self, id: &BlobId) -> Result<Arc<Vec<Node>>, Errno> {
        if let Some(t) = lock(&self.trees).get(id) {
            return Ok(t);
        }
        let tree = self.with_repo(&|| format!("reading tree {}", id.short()), &|r| {
            r.load_tree(id)
        })?;
        let nodes = Arc::new(tree.nodes);
        let weight = (nodes.len() + 1) * NODE_WEIGHT;
        lock(&self.trees).insert(*id, Arc::clone(&nodes), weight);
        Ok(nodes)
    }

    fn blob(&self, id: &BlobId) -> Result<Arc<Vec<u8>>, Errno> {
        let cell = {
            let mut blobs = lock(&self.blobs);
            if let Some(b) = blobs.cached.get(id) {
                return Ok(b);
            }
            Arc::clone(blobs.loading.entry(*id).or_default())
        };
        let result = cell
            .get_or_init(|| {
                self.with_repo(&|| format!("reading chunk {}", id.short()), &|r| {
                    r.read_blob(id)
                })
                .map(Arc::new)
            })
            .clone();
        let mut blobs = lock(&self.blobs);
        if blobs.loading.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            blobs.loading.remove(id);
            if let Ok(b) = &result {
                blobs.cached.insert(*id, Arc::clone(b), b.len());
            }
        }
        result
    }

    /// Where each chunk of a file starts (plus the end), from the index's plaintext lengths.
    fn offsets(&self, entry: &TreeEntry) -> Result<Arc<[u64]>, Errno> {
        if let Some(o) = entry.offsets.get() {
            return Ok(Arc::clone(o));
        }
        let repo = &self.repo;
        let mut offsets = Vec::with_capacity(entry.node.content.len() + 1);
        let mut at = 0u64;
        offsets.push(at);
        for id in &entry.node.content {
            // The index guard is dropped here: reload_index below replaces the index.
            let found = repo.index().get(id);
            let Some((_, loc)) = found else {
                // Perhaps in an index file written since; else the file is damaged.
                self.reload_index();
                if self.repo.index().get(id).is_some() {
                    return self.offsets(entry);
                }
                eprintln!(
                    "tidemark mount: chunk {} of {} is not in the index",
                    id.short(),
                    entry.node.os_name().display()
                );
                return Err(Errno::EIO);
            };
            at += u64::from(loc.raw_len);
            offsets.push(at);
        }
        Ok(Arc::clone(entry.offsets.get_or_init(|| offsets.into())))
    }

    /// Bytes `[offset, offset + size)` of a file, cut at its size; past the last chunk (a
    /// sparse tail) they are zeros.
    fn read_file(&self, entry: &TreeEntry, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file_size = entry.node.size;
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let end = file_size.min(offset.saturating_add(u64::from(size)));
        let offsets = self.offsets(entry)?;
        let content = &entry.node.content;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = offsets.partition_point(|&o| o <= offset).saturating_sub(1);
        let mut pos = offset;
        while pos < end && i < content.len() {
            let blob = self.blob(&content[i])?;
            let start = ((pos - offsets[i]) as usize).min(blob.len());
            let take = (blob.len() - start).min((end - pos) as usize);
            out.extend_from_slice(&blob[start..start + take]);
            pos += take as u64;
            i += 1;
            if take == 0 {
                break;
            }
        }
        out.resize((end - offset) as usize, 0);
        Ok(out)
    }

    fn entry(&self, ino: u64) -> Result<(Entry, u64), Errno> {
        lock(&self.inodes).get(ino).ok_or(Errno::ENOENT)
    }

    fn dir_attr(&self, ino: u64, time: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// Attributes, and how long the kernel may keep them.
    fn attr(&self, ino: u64, entry: &Entry) -> Result<(Duration, FileAttr), Errno> {
        let newest = |view: &View| view.newest_time().map_or(self.started, system_time);
        Ok(match entry {
            Entry::Root => (LIVE_TTL, self.dir_attr(ino, newest(&self.view()))),
            Entry::Snapshots | Entry::Ids => {
                self.maybe_refresh();
                (LIVE_TTL, self.dir_attr(ino, newest(&self.view())))
            }
            Entry::Latest => {
                self.maybe_refresh();
                let view = self.view();
                let target = view.latest_target().ok_or(Errno::ENOENT)?;
                let mut attr = self.dir_attr(ino, newest(&view));
                attr.kind = FileType::Symlink;
                attr.perm = 0o777;
                attr.size = target.len() as u64;
                (LIVE_TTL, attr)
            }
            Entry::Snapshot { time_ns, .. } => {
                (LIVE_TTL, self.dir_attr(ino, system_time(*time_ns)))
            }
            Entry::Node(e) => (STABLE_TTL, node_attr(ino, &e.node)),
        })
    }

    fn lookup_entry(&self, parent: u64, name: &OsStr) -> Result<(Duration, FileAttr), Errno> {
        let (entry, _) = self.entry(parent)?;
        let (key, child) = match entry {
            Entry::Root => {
                let ino = match name.as_bytes() {
                    b"snapshots" => SNAPSHOTS,
                    b"ids" => IDS,
                    b"latest" => LATEST,
                    _ => return Err(Errno::ENOENT),
                };
                let (entry, _) = self.entry(ino)?;
                return self.attr(ino, &entry);
            }
            Entry::Snapshots | Entry::Ids => {
                self.maybe_refresh();
                let view = self.view();
                let names = if matches!(entry, Entry::Snapshots) {
                    &view.by_name
                } else {
                    &view.by_short
                };
                let i = *name
                    .to_str()
                    .and_then(|n| names.get(n))
                    .ok_or(Errno::ENOENT)?;
                let (id, snap) = view.list.get(i).map_err(|e| {
                    eprintln!("tidemark mount: {e}");
                    Errno::EIO
                })?;
                let mut key = name.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(&id.0);
                let child = Entry::Snapshot {
                    tree: snap.tree,
                    time_ns: view.list.time_ns(i),
                };
                (key, child)
            }
            Entry::Snapshot { tree, .. } => self.child(&tree, name)?,
            Entry::Node(e) => match (e.node.kind(), e.node.subtree) {
                (NodeType::Dir, Some(tree)) => self.child(&tree, name)?,
                (NodeType::Dir, None) => return Err(Errno::ENOENT),
                _ => return Err(Errno::ENOTDIR),
            },
            Entry::Latest => return Err(Errno::ENOTDIR),
        };
        let ino = lock(&self.inodes).remember(parent, key, child.clone());
        self.attr(ino, &child)
    }

    /// The entry `name` of a tree (nodes are sorted by name bytes).
    fn child(&self, tree: &BlobId, name: &OsStr) -> Result<(Vec<u8>, Entry), Errno> {
        let nodes = self.tree(tree)?;
        let i = nodes
            .binary_search_by(|n| n.name_bytes().unwrap_or_default()[..].cmp(name.as_bytes()))
            .map_err(|_| Errno::ENOENT)?;
        let entry = Entry::Node(Arc::new(TreeEntry {
            node: nodes[i].clone(),
            offsets: OnceLock::new(),
        }));
        Ok((name.as_bytes().to_vec(), entry))
    }

    /// A directory's entries, `.` and `..` first.
    fn listing(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let (entry, parent) = self.entry(ino)?;
        let dot = |ino: u64, name: &str| DirEntry {
            ino,
            kind: FileType::Directory,
            name: name.into(),
        };
        let mut out = vec![dot(ino, "."), dot(parent, "..")];
        let nodes = match entry {
            Entry::Root => {
                out.push(dot(SNAPSHOTS, "snapshots"));
                out.push(dot(IDS, "ids"));
                if !self.view().names.is_empty() {
                    out.push(DirEntry {
                        ino: LATEST,
                        kind: FileType::Symlink,
                        name: "latest".into(),
                    });
                }
                return Ok(out);
            }
            Entry::Snapshots | Entry::Ids => {
                self.maybe_refresh();
                let view = self.view();
                let names = if matches!(entry, Entry::Snapshots) {
                    &view.names
                } else {
                    &view.shorts
                };
                for (name, id) in names.iter().zip(view.list.ids()) {
                    let mut key = name.as_bytes().to_vec();
                    key.push(0);
                    key.extend_from_slice(&id.0);
                    out.push(DirEntry {
                        ino: hashed(ino, &key),
                        kind: FileType::Directory,
                        name: name.into(),
                    });
                }
                return Ok(out);
            }
            Entry::Snapshot { tree, .. } => self.tree(&tree)?,
            Entry::Node(e) => match (e.node.kind(), e.node.subtree) {
                (NodeType::Dir, Some(tree)) => self.tree(&tree)?,
                (NodeType::Dir, None) => Arc::new(Vec::new()),
                _ => return Err(Errno::ENOTDIR),
            },
            Entry::Latest => return Err(Errno::ENOTDIR),
        };
        out.reserve(nodes.len());
        for n in nodes.iter() {
            let name = n.name_bytes().unwrap_or_default();
            out.push(DirEntry {
                ino: hashed(ino, &name),
                kind: file_type(n.kind()),
                name: OsString::from_vec(name),
            });
        }
        Ok(out)
    }
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn file_type(t: NodeType) -> FileType {
    match t {
        NodeType::File => FileType::RegularFile,
        NodeType::Dir => FileType::Directory,
        NodeType::Symlink => FileType::Symlink,
        NodeType::Fifo => FileType::NamedPipe,
        NodeType::Chardev => FileType::CharDevice,
        NodeType::Blockdev => FileType::BlockDevice,
        NodeType::Socket => FileType::Socket,
    }
}

/// A device number as FUSE's 32-bit `rdev` (the kernel's `new_encode_dev`).
fn fuse_rdev(rdev: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

fn node_attr(ino: u64, n: &Node) -> FileAttr {
    let kind = file_type(n.kind());
    let size = match n.kind() {
        NodeType::File => n.size,
        NodeType::Symlink => n.target_os().map_or(0, |t| t.len() as u64),
        _ => 0,
    };
    let mtime = system_time(n.mtime_ns);
    // Directories carry no atime (docs/format.md §8); restore uses the mtime too.
    let or_mtime = |ns: i64| if ns == 0 { mtime } else { system_time(ns) };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: or_mtime(n.atime_ns),
        mtime,
        ctime: or_mtime(n.ctime_ns),
        crtime: mtime,
        kind,
        perm: (n.mode & 0o7777) as u16,
        // 1 for directories: "subdirectory count unknown", so `find` never skips any.
        nlink: if kind == FileType::Directory {
            1
        } else {
            u32::try_from(n.links.max(1)).unwrap_or(u32::MAX)
        },
        uid: n.uid,
        gid: n.gid,
        rdev: n.rdev.map_or(0, fuse_rdev),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Answers a getxattr/listxattr: the size when asked for it, else the bytes if they fit.
fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_entry(parent.0, name) {
            Ok((ttl, attr)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .entry(ino.0)
            .and_then(|(entry, _)| self.attr(ino.0, &entry))
        {
            Ok((ttl, attr)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match self.entry(ino.0) {
            Ok((Entry::Latest, _)) => {
                self.maybe_refresh();
                self.view().latest_target().map(String::into_bytes)
            }
            Ok((Entry::Node(e), _)) => e.node.target_os().map(OsString::into_vec),
            Ok(_) => {
                reply.error(Errno::EINVAL);
                return;
            }
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        match target {
            Some(t) => reply.data(&t),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        match self.entry(ino.0) {
            Ok((Entry::Node(e), _)) => {
                if e.node.kind() == NodeType::File {
                    if let Err(err) = self.offsets(&e) {
                        reply.error(err);
                        return;
                    }
                }
                // Contents never change: the page cache may keep them across opens, and a
                // close has nothing to flush.
                reply.opened(
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                );
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let bytes = match self.entry(ino.0) {
            Ok((Entry::Node(e), _)) if e.node.kind() == NodeType::File => {
                self.read_file(&e, offset, size)
            }
            Ok(_) => Err(Errno::EISDIR),
            Err(e) => Err(e),
        };
        match bytes {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.listing(ino.0) {
            Ok(entries) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(entries));
                // A snapshot's directories never change: the kernel may keep their listings.
                let stable = matches!(
                    self.entry(ino.0),
                    Ok((Entry::Snapshot { .. } | Entry::Node(_), _))
                );
                let flags = if stable {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = match self.entry(ino.0) {
            Ok((Entry::Node(e), _)) => e
                .node
                .xattrs
                .iter()
                .find(|x| x.name.as_bytes() == name.as_bytes())
                .map(|x| x.value.clone()),
            _ => None,
        };
        match value {
            Some(v) => xattr_reply(&v, size, reply),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = Vec::new();
        if let Ok((Entry::Node(e), _)) = self.entry(ino.0) {
            for x in &e.node.xattrs {
                names.extend_from_slice(x.name.as_bytes());
                names.push(0);
            }
        }
        xattr_reply(&names, size, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // /dev/null (1, 3) and a large minor.
        assert_eq!(fuse_rdev(nix::sys::stat::makedev(1, 3)), 0x103);
        assert_eq!(
            fuse_rdev(nix::sys::stat::makedev(8, 0x1234)),
            0x34 | (8 << 8) | (0x1200 << 12)
        );
    }
}
