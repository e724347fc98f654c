//! Restore: plan, then write, a snapshot's tree under a target directory.
//!
//! ```text
//! plan (one thread): walk trees, validate names, mkdir, symlinks/fifos/devices, create empty and
//!                    sparse files; group every needed blob by pack
//! write (N threads): one pack at a time: read it (whole or the needed ranges), open each blob,
//!                    pwrite it at every offset that uses it (the first write creates the file);
//!                    a file whose last blob landed gets its metadata
//! finish:            hardlinks, then directory metadata deepest first
//! ```
//! Nothing is ever written outside the target, even by a restore running as root while someone
//! swaps a directory in the target for a symlink: names are single components that the tree
//! decoder and [`Node::name_problem`] accepted, and every operation goes through descriptors
//! ([`beneath`]): the walk opens each directory relative to its parent with `O_NOFOLLOW`, the
//! writers open files beneath the target with `RESOLVE_NO_SYMLINKS`, files are created with
//! `O_EXCL`, and metadata is set on descriptors of the entries themselves. A damaged blob fails
//! only the files that use it; each is named in [`RestoreStats::errors`].

mod beneath;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{AtFlags, Mode, OFlags};

use self::beneath::{
    clear_at, create_file_at, file_id, make_dir_at, make_other_at, set_metadata,
    set_other_metadata_at, FileId, TargetDir,
};
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, PackId};
use crate::repo::{Location, Repository};
use crate::snapshot::{Node, NodeType};

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Only these paths of the snapshot (and what is below them); empty = everything.
    pub include: Vec<PathBuf>,
    /// Writer threads (0 = twice the cores: the work is part I/O).
    pub threads: usize,
}

/// A path that could not be restored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreError {
    /// Path in the target.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

/// What a restore did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    /// Files written (including empty and hardlinked ones).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, fifos, devices.
    pub other: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Everything that failed.
    pub errors: Vec<RestoreError>,
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Bytes written so far.
    pub bytes: AtomicU64,
    /// Total content bytes (known after planning).
    pub total_bytes: AtomicU64,
    /// Files completed.
    pub files: AtomicU64,
}

/// Blobs needed from one pack: id → (location, [(file index, offset in file)]).
type PackNeeds = HashMap<BlobId, (Location, Vec<(usize, u64)>)>;

struct FilePlan {
    /// Path below the target.
    rel: PathBuf,
    node: Node,
    remaining: AtomicU32,
    failed: AtomicBool,
    /// Set by whoever created the file (the plan for empty and sparse files, else the first
    /// writer); `None` when creating it failed. Later opens must find this same file.
    created: OnceLock<Option<FileId>>,
}

struct DirPlan {
    rel: PathBuf,
    node: Node,
    id: FileId,
}

#[derive(Default)]
struct Plan {
    /// The target, for naming paths in errors.
    target: PathBuf,
    files: Vec<FilePlan>,
    /// pack → blob → (location, [(file, offset)])
    packs: BTreeMap<PackId, PackNeeds>,
    dirs: Vec<DirPlan>,
    /// (path below the target, index of the file it links to)
    hardlinks: Vec<(PathBuf, usize)>,
    errors: Vec<RestoreError>,
    other: u64,
    bytes: u64,
    /// Trees read ahead, taken out as the walk meets them.
    trees: HashMap<BlobId, crate::snapshot::Tree>,
}

impl Plan {
    fn error(&mut self, rel: &Path, error: &dyn std::fmt::Display) {
        self.errors.push(RestoreError {
            path: self.target.join(rel),
            error: error.to_string(),
        });
    }
}

/// Restores the tree `root` of a snapshot (the repository's index must be loaded).
pub fn restore(
    repo: &Repository,
    root: &crate::id::BlobId,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreStats> {
    for inc in &opts.include {
        if !inc.is_absolute() || inc.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::Invalid(format!(
                "--include {} must be an absolute path inside the snapshot",
                inc.display()
            )));
        }
    }
    std::fs::create_dir_all(&opts.target)
        .map_err(|e| Error::io("creating target", &opts.target, e))?;
    let target = opts
        .target
        .canonicalize()
        .map_err(|e| Error::io("resolving target", &opts.target, e))?;
    let target_dir =
        TargetDir::open(&target).map_err(|e| Error::io("opening target", &target, e))?;
    let mut plan = Plan {
        target: target.clone(),
        ..Plan::default()
    };
    // The walk reads one directory after another; on an object store, where each read is a round
    // trip, read them all ahead with many reads in flight. Locally a read is cheap and holding
    // every tree would only cost memory; with --include only the included part is walked.
    if opts.include.is_empty() && repo.store().is_remote() {
        plan.trees = repo.prefetch_trees(&[*root], crate::repo::REMOTE_TREE_READS);
    }
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    plan_tree(
        repo,
        root,
        target_dir.fd(),
        Path::new(""),
        Path::new("/"),
        &opts.include,
        false,
        &mut plan,
        &mut inodes,
    )?;
    progress.total_bytes.store(plan.bytes, Ordering::Relaxed);

    let threads = if opts.threads == 0 {
        2 * std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
    } else {
        opts.threads
    };
    let queue: Mutex<Vec<(&PackId, &PackNeeds)>> = Mutex::new(plan.packs.iter().rev().collect());
    let errors = Mutex::new(std::mem::take(&mut plan.errors));
    let is_root = nix::unistd::geteuid().is_root();
    let writer = Writer {
        target_dir: &target_dir,
        target: &target,
        files: &plan.files,
        errors: &errors,
        progress,
        is_root,
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((pack, blobs)) = queue.lock().expect("queue lock").pop() else {
                    return;
                };
                writer.restore_pack(repo, pack, blobs);
            });
        }
    });
    let mut errors = errors.into_inner().expect("errors lock");
    // Files with no content (empty) were finished during planning; hardlinks now.
    for (rel, first) in &plan.hardlinks {
        let f = &plan.files[*first];
        let linked = if f.failed.load(Ordering::Relaxed) {
            Err(format!(
                "hardlink target {} failed",
                target.join(&f.rel).display()
            ))
        } else {
            hard_link(&target_dir, &f.rel, rel)
                .map_err(|e| format!("hardlink to {}: {e}", target.join(&f.rel).display()))
        };
        if let Err(error) = linked {
            errors.push(RestoreError {
                path: target.join(rel),
                error,
            });
        }
    }
    // Deepest first: a directory's mode may forbid what its children still need, and creating
    // the children changed its times.
    for dir in plan.dirs.iter().rev() {
        if let Err(e) = dir_metadata(&target_dir, dir, is_root) {
            errors.push(RestoreError {
                path: target.join(&dir.rel),
                error: e.to_string(),
            });
        }
    }
    let failed = plan
        .files
        .iter()
        .filter(|f| f.failed.load(Ordering::Relaxed))
        .count() as u64;
    Ok(RestoreStats {
        files: plan.files.len() as u64 + plan.hardlinks.len() as u64 - failed,
        dirs: plan.dirs.len() as u64,
        other: plan.other,
        bytes: progress.bytes.load(Ordering::Relaxed),
        errors,
    })
}

/// Links `rel` to the restored file `first`, both below the target. Their parents are opened
/// beneath the target; `linkat` without `AT_SYMLINK_FOLLOW` links a symlink itself, never what
/// it points at.
fn hard_link(target_dir: &TargetDir, first: &Path, rel: &Path) -> std::io::Result<()> {
    let parent = |p: &Path| {
        let name = p
            .file_name()
            .expect("restore paths end in a name")
            .to_owned();
        let dir = target_dir.open_beneath(
            p.parent().unwrap_or(Path::new("")),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok::<_, std::io::Error>((dir, name))
    };
    let (from_dir, from_name) = parent(first)?;
    let (to_dir, to_name) = parent(rel)?;
    let _ = clear_at(to_dir.as_fd(), &to_name, false);
    rustix::fs::linkat(
        &from_dir,
        from_name.as_os_str(),
        &to_dir,
        to_name.as_os_str(),
        AtFlags::empty(),
    )?;
    Ok(())
}

/// Sets a directory's metadata through a descriptor, if it is still the directory the plan made.
fn dir_metadata(target_dir: &TargetDir, dir: &DirPlan, is_root: bool) -> std::io::Result<()> {
    let fd =
        target_dir.open_beneath(&dir.rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    if file_id(fd.as_fd())? != dir.id {
        return Err(std::io::Error::other(
            "replaced by another directory while restoring; left alone",
        ));
    }
    set_metadata(fd.as_fd(), &dir.node, is_root)
}

fn included(path: &Path, include: &[PathBuf]) -> (bool, bool) {
    if include.is_empty() {
        return (true, true);
    }
    // (restore this entry, descend into it)
    let inside = include.iter().any(|i| path.starts_with(i));
    let ancestor = include.iter().any(|i| i.starts_with(path));
    (inside || ancestor, inside || ancestor)
}

/// Walks one tree: every entry is made relative to `dir`, the open directory at `rel` (below
/// the target), so the walk never resolves a path from the top.
#[allow(clippy::too_many_arguments)] // the recursion's state; a struct would only rename it
fn plan_tree(
    repo: &Repository,
    tree_id: &BlobId,
    dir: BorrowedFd<'_>,
    rel: &Path,
    snap_dir: &Path,
    include: &[PathBuf],
    fresh: bool,
    plan: &mut Plan,
    inodes: &mut HashMap<(u64, u64), usize>,
) -> Result<()> {
    let is_root = nix::unistd::geteuid().is_root();
    let tree = match plan
        .trees
        .remove(tree_id)
        .map_or_else(|| repo.load_tree(tree_id), Ok)
    {
        Ok(t) => t,
        Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => {
            plan.error(rel, &format!("directory contents lost: {e}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for node in &tree.nodes {
        let name = node.os_name();
        if let Some(problem) = Node::name_problem(name.as_bytes()) {
            return Err(Error::UnsafePath {
                path: snap_dir.join(&name).display().to_string(),
                tree: tree_id.to_hex(),
                reason: problem.into(),
            });
        }
        let snap_path = snap_dir.join(&name);
        let (restore_it, descend) = included(&snap_path, include);
        if !restore_it {
            continue;
        }
        let path = rel.join(&name);
        let res = match node.kind() {
            NodeType::Dir => {
                let (fd, id, created) = match make_dir_at(dir, &name, fresh) {
                    Ok(made) => made,
                    Err(e) => {
                        plan.error(&path, &e);
                        continue;
                    }
                };
                plan.dirs.push(DirPlan {
                    rel: path.clone(),
                    node: node.clone(),
                    id,
                });
                if descend {
                    let sub = node
                        .subtree
                        .expect("tree decoder checked directories have subtrees");
                    plan_tree(
                        repo,
                        &sub,
                        fd.as_fd(),
                        &path,
                        &snap_path,
                        include,
                        created,
                        plan,
                        inodes,
                    )?;
                }
                Ok(())
            }
            NodeType::File => {
                plan_file(repo, node, dir, &name, path, fresh, plan, inodes);
                continue;
            }
            NodeType::Symlink | NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev => {
                plan.other += 1;
                clear_at(dir, &name, fresh)
                    .and_then(|()| make_other_at(dir, &name, node))
                    .and_then(|()| set_other_metadata_at(dir, &name, node, is_root))
            }
            NodeType::Socket => Ok(()), // a socket is meaningless without its process
        };
        if let Err(e) = res {
            plan.error(&path, &e);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one entry's context in the walk
fn plan_file(
    repo: &Repository,
    node: &Node,
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    rel: PathBuf,
    fresh: bool,
    plan: &mut Plan,
    inodes: &mut HashMap<(u64, u64), usize>,
) {
    // Two files with the same inode and content are one file when either says it has several
    // links: a continuously captured tree may hold a stale link count for the older name
    // (linking a file changes its count but inotify reports only the new name).
    if let Some(&first) = inodes.get(&(node.device_id, node.inode)) {
        let other = &plan.files[first].node;
        if (node.links > 1 || other.links > 1)
            && other.size == node.size
            && other.content == node.content
        {
            plan.hardlinks.push((rel, first));
            return;
        }
    }
    // Files with content are created by the writer threads, in parallel; only empty and sparse
    // files (which need their full length for trailing holes) are created here.
    let created = clear_at(dir, name, fresh).and_then(|()| {
        if node.content.is_empty() || node.sparse {
            let (file, id) = create_file_at(dir, name)?;
            file.set_len(node.size)?;
            Ok(Some((file, id)))
        } else {
            Ok(None)
        }
    });
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            plan.error(&rel, &e);
            return;
        }
    };
    let idx = plan.files.len();
    let mut offset = 0u64;
    let mut missing = None;
    let mut needed = 0u32;
    for id in &node.content {
        let Some((pack, loc)) = repo.index().get(id) else {
            missing = Some(*id);
            break;
        };
        let (_, uses) = plan
            .packs
            .entry(pack)
            .or_default()
            .entry(*id)
            .or_insert_with(|| (loc, Vec::new()));
        uses.push((idx, offset));
        offset += u64::from(loc.raw_len);
        needed += 1;
    }
    plan.bytes += node.size;
    let fp = FilePlan {
        rel,
        node: node.clone(),
        remaining: AtomicU32::new(needed),
        failed: AtomicBool::new(false),
        created: OnceLock::new(),
    };
    if let Some((file, id)) = &created {
        fp.created
            .set(Some(*id))
            .expect("a new plan entry is not created yet");
        if missing.is_none() && needed == 0 {
            if let Err(e) = set_metadata(file.as_fd(), node, nix::unistd::geteuid().is_root()) {
                plan.error(&fp.rel, &e);
            }
        }
    }
    if let Some(id) = missing {
        fp.failed.store(true, Ordering::Relaxed);
        plan.error(&fp.rel, &format!("blob {id} is not in the index"));
    }
    inodes.entry((node.device_id, node.inode)).or_insert(idx);
    plan.files.push(fp);
}

/// What the writer threads share.
struct Writer<'a> {
    target_dir: &'a TargetDir,
    target: &'a Path,
    files: &'a [FilePlan],
    errors: &'a Mutex<Vec<RestoreError>>,
    progress: &'a RestoreProgress,
    is_root: bool,
}

impl Writer<'_> {
    /// Marks file `f` failed and records why, once.
    fn fail(&self, f: usize, why: &dyn std::fmt::Display) {
        let fp = &self.files[f];
        if !fp.failed.swap(true, Ordering::Relaxed) {
            self.errors.lock().expect("errors lock").push(RestoreError {
                path: self.target.join(&fp.rel),
                error: why.to_string(),
            });
        }
    }

    /// Opens file `f` for writing: the first writer creates it (`O_EXCL`), later ones reopen it
    /// and check it is still the file that was created. `None` when it failed (and is recorded).
    fn open(&self, f: usize) -> Option<std::fs::File> {
        let fp = &self.files[f];
        let mut new = None;
        let id = *fp.created.get_or_init(|| {
            let made = self
                .target_dir
                .open_beneath(
                    &fp.rel,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(0o600),
                )
                .map(std::fs::File::from)
                .and_then(|file| Ok((file_id(file.as_fd())?, file)));
            match made {
                Ok((id, file)) => {
                    new = Some(file);
                    Some(id)
                }
                Err(e) => {
                    // Inside the initialiser, so no other writer reports this file first.
                    self.fail(f, &format!("creating: {e}"));
                    None
                }
            }
        });
        if new.is_some() {
            return new;
        }
        let expected = id?;
        let reopened = self
            .target_dir
            .open_beneath(&fp.rel, OFlags::WRONLY, Mode::empty())
            .map(std::fs::File::from)
            .and_then(|file| Ok((file_id(file.as_fd())?, file)));
        match reopened {
            Ok((id, file)) if id == expected => Some(file),
            Ok(_) => {
                self.fail(f, &"replaced by another file while restoring; left alone");
                None
            }
            Err(e) => {
                self.fail(f, &format!("opening: {e}"));
                None
            }
        }
    }

    fn restore_pack(&self, repo: &Repository, pack: &PackId, blobs: &PackNeeds) {
        let files = self.files;
        let fail_files = |uses: &[(usize, u64)], why: &str| {
            for (f, _) in uses {
                self.fail(*f, &why);
            }
        };
        // Read the whole pack when most of it is needed, else only the needed ranges.
        let needed: u64 = blobs.values().map(|(l, _)| u64::from(l.stored_len)).sum();
        let max_end = blobs
            .values()
            .map(|(l, _)| l.range().end)
            .max()
            .unwrap_or(0);
        let whole = if needed * 2 >= max_end {
            match repo.store().get(Kind::Pack, pack, Some(0..max_end)) {
                Ok(b) => Some(b),
                Err(e) => {
                    for (_, uses) in blobs.values() {
                        fail_files(uses, &format!("reading pack {pack}: {e}"));
                    }
                    return;
                }
            }
        } else {
            None
        };
        let mut sorted: Vec<_> = blobs.iter().collect();
        sorted.sort_by_key(|(_, (l, _))| l.offset);
        for (id, (loc, uses)) in sorted {
            let env = match &whole {
                Some(b) => b
                    .get(loc.range().start as usize..loc.range().end as usize)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        Error::corrupt(Kind::Pack, pack, "blob beyond the end of the pack")
                    }),
                None => repo.store().get(Kind::Pack, pack, Some(loc.range())),
            };
            let plain = env.and_then(|e| repo.decode_blob(id, loc, &e));
            let plain = match plain {
                Ok(p) => p,
                Err(e) => {
                    fail_files(uses, &format!("blob {id}: {e}"));
                    // Files still count down, so their remaining blobs do not wait forever.
                    for (f, _) in uses {
                        files[*f].remaining.fetch_sub(1, Ordering::AcqRel);
                    }
                    continue;
                }
            };
            for (f, offset) in uses {
                let fp = &files[*f];
                let mut handle = None;
                if !fp.failed.load(Ordering::Relaxed) {
                    if let Some(file) = self.open(*f) {
                        let written = if fp.node.sparse {
                            write_sparse(&file, &plain, *offset)
                        } else {
                            file.write_all_at(&plain, *offset)
                        };
                        match written {
                            Ok(()) => handle = Some(file),
                            Err(e) => self.fail(*f, &format!("writing: {e}")),
                        }
                    }
                }
                self.progress
                    .bytes
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
                if fp.remaining.fetch_sub(1, Ordering::AcqRel) == 1
                    && !fp.failed.load(Ordering::Relaxed)
                {
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    // The last writer still holds the file open (a file not failed was written
                    // just now): metadata goes through it.
                    let applied = handle.as_ref().map_or(Ok(()), |file| {
                        set_metadata(file.as_fd(), &fp.node, self.is_root)
                    });
                    if let Err(e) = applied {
                        self.errors.lock().expect("errors lock").push(RestoreError {
                            path: self.target.join(&fp.rel),
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
    }
}

/// Writes `data` at `offset`, skipping 4 KiB blocks of zeros so they stay holes (sparse files are
/// created at full size during planning, so skipped blocks read back as zeros).
fn write_sparse(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 4096;
    let mut pos = 0usize;
    while pos < data.len() {
        // Block boundaries follow file offsets, so holes line up with the filesystem's blocks.
        let end =
            (((offset + pos as u64) / BLOCK + 1) * BLOCK - offset).min(data.len() as u64) as usize;
        let mut run_end = pos;
        let mut next = pos;
        while next < data.len() {
            let block_end = (((offset + next as u64) / BLOCK + 1) * BLOCK - offset)
                .min(data.len() as u64) as usize;
            if data[next..block_end].iter().all(|&b| b == 0) {
                break;
            }
            run_end = block_end;
            next = block_end;
        }
        if run_end > pos {
            file.write_all_at(&data[pos..run_end], offset + pos as u64)?;
            pos = run_end;
        } else {
            pos = end;
        }
    }
    Ok(())
}
