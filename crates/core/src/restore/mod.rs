//! Restore: plan, then write a snapshot's tree under a target directory.
//!
//! ```text
//! plan (one thread): walk trees, validate names, mkdir, symlinks/fifos/devices, create files
//!                    at full size; group every needed blob by pack
//! write (N threads): one pack at a time: read it (whole or the needed ranges), open each blob,
//!                    pwrite it at every offset that uses it; a file whose last blob landed
//!                    gets its metadata
//! finish:            hardlinks, then directory metadata deepest first
//! ```
//! Nothing is ever written outside the target: every path is the target joined with names that
//! the tree decoder and [`Node::name_problem`] accepted, existing symlinks in the way are removed
//! rather than followed, and files are opened with `O_NOFOLLOW`. A damaged blob fails only the
//! files that use it; each is named in [`RestoreStats::errors`].

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::repo::{Location, Repository};
use crate::snapshot::{Node, NodeType};
use crate::store::Kind;

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
    path: PathBuf,
    node: Node,
    remaining: AtomicU32,
    failed: AtomicBool,
}

#[derive(Default)]
struct Plan {
    files: Vec<FilePlan>,
    /// pack → blob → (location, [(file, offset)])
    packs: BTreeMap<PackId, PackNeeds>,
    dirs: Vec<(PathBuf, Node)>,
    hardlinks: Vec<(PathBuf, usize)>,
    errors: Vec<RestoreError>,
    other: u64,
    bytes: u64,
    /// Trees read ahead, taken out as the walk meets them.
    trees: HashMap<BlobId, crate::snapshot::Tree>,
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
    let mut plan = Plan::default();
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
        &target,
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
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((pack, blobs)) = queue.lock().expect("queue lock").pop() else {
                    return;
                };
                restore_pack(repo, pack, blobs, &plan.files, &errors, progress, is_root);
            });
        }
    });
    let mut errors = errors.into_inner().expect("errors lock");
    // Files with no content (empty) were finished during planning; hardlinks now.
    for (path, first) in &plan.hardlinks {
        let f = &plan.files[*first];
        if f.failed.load(Ordering::Relaxed) {
            errors.push(RestoreError {
                path: path.clone(),
                error: format!("hardlink target {} failed", f.path.display()),
            });
            continue;
        }
        let _ = remove_non_dir(path);
        if let Err(e) = std::fs::hard_link(&f.path, path) {
            errors.push(RestoreError {
                path: path.clone(),
                error: format!("hardlink to {}: {e}", f.path.display()),
            });
        }
    }
    for (path, node) in plan.dirs.iter().rev() {
        if let Err(e) = apply_metadata(path, node, is_root) {
            errors.push(RestoreError {
                path: path.clone(),
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

fn included(path: &Path, include: &[PathBuf]) -> (bool, bool) {
    if include.is_empty() {
        return (true, true);
    }
    // (restore this entry, descend into it)
    let inside = include.iter().any(|i| path.starts_with(i));
    let ancestor = include.iter().any(|i| i.starts_with(path));
    (inside || ancestor, inside || ancestor)
}

#[allow(clippy::too_many_arguments)] // the recursion's state; a struct would only rename it
fn plan_tree(
    repo: &Repository,
    tree_id: &BlobId,
    dir: &Path,
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
            plan.errors.push(RestoreError {
                path: dir.to_owned(),
                error: format!("directory contents lost: {e}"),
            });
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
        let path = dir.join(&name);
        let res = match node.kind() {
            NodeType::Dir => {
                let created = match make_dir(&path, fresh) {
                    Ok(created) => created,
                    Err(e) => {
                        plan.errors.push(RestoreError {
                            path: path.clone(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                };
                plan.dirs.push((path.clone(), node.clone()));
                if descend {
                    let sub = node
                        .subtree
                        .expect("tree decoder checked directories have subtrees");
                    plan_tree(
                        repo, &sub, &path, &snap_path, include, created, plan, inodes,
                    )?;
                }
                Ok(())
            }
            NodeType::File => {
                plan_file(repo, node, &path, fresh, plan, inodes);
                Ok(())
            }
            NodeType::Symlink => {
                plan.other += 1;
                let target = node
                    .target_os()
                    .expect("tree decoder checked symlink targets");
                clear(&path, fresh)
                    .and_then(|()| std::os::unix::fs::symlink(&target, &path))
                    .and_then(|()| apply_metadata(&path, node, is_root))
            }
            NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev => {
                plan.other += 1;
                clear(&path, fresh)
                    .and_then(|()| make_special(&path, node))
                    .and_then(|()| apply_metadata(&path, node, is_root))
            }
            NodeType::Socket => Ok(()), // a socket is meaningless without its process
        };
        if let Err(e) = res {
            plan.errors.push(RestoreError {
                path,
                error: e.to_string(),
            });
        }
    }
    Ok(())
}

fn plan_file(
    repo: &Repository,
    node: &Node,
    path: &Path,
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
            plan.hardlinks.push((path.to_owned(), first));
            return;
        }
    }
    // Files with content are created by the writer threads, in parallel; only empty and sparse
    // files (which need their full length for trailing holes) are created here.
    let created = clear(path, fresh).and_then(|()| {
        if node.content.is_empty() || node.sparse {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(path)?;
            f.set_len(node.size)?;
        }
        Ok(())
    });
    if let Err(e) = created {
        plan.errors.push(RestoreError {
            path: path.to_owned(),
            error: e.to_string(),
        });
        return;
    }
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
        path: path.to_owned(),
        node: node.clone(),
        remaining: AtomicU32::new(needed),
        failed: AtomicBool::new(false),
    };
    if let Some(id) = missing {
        fp.failed.store(true, Ordering::Relaxed);
        plan.errors.push(RestoreError {
            path: path.to_owned(),
            error: format!("blob {id} is not in the index"),
        });
    } else if needed == 0 {
        if let Err(e) = apply_metadata(path, node, nix::unistd::geteuid().is_root()) {
            plan.errors.push(RestoreError {
                path: path.to_owned(),
                error: e.to_string(),
            });
        }
    }
    inodes.entry((node.device_id, node.inode)).or_insert(idx);
    plan.files.push(fp);
}

fn restore_pack(
    repo: &Repository,
    pack: &PackId,
    blobs: &PackNeeds,
    files: &[FilePlan],
    errors: &Mutex<Vec<RestoreError>>,
    progress: &RestoreProgress,
    is_root: bool,
) {
    let fail_files = |uses: &[(usize, u64)], why: &str| {
        for (f, _) in uses {
            {
                if !files[*f].failed.swap(true, Ordering::Relaxed) {
                    errors.lock().expect("errors lock").push(RestoreError {
                        path: files[*f].path.clone(),
                        error: why.to_owned(),
                    });
                }
            }
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
                .ok_or_else(|| Error::corrupt(Kind::Pack, pack, "blob beyond the end of the pack")),
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
                let written = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&fp.path)
                    .and_then(|file| {
                        if fp.node.sparse {
                            write_sparse(&file, &plain, *offset)?;
                        } else {
                            file.write_all_at(&plain, *offset)?;
                        }
                        Ok(file)
                    });
                match written {
                    Ok(file) => handle = Some(file),
                    Err(e) => {
                        if !fp.failed.swap(true, Ordering::Relaxed) {
                            errors.lock().expect("errors lock").push(RestoreError {
                                path: fp.path.clone(),
                                error: format!("writing: {e}"),
                            });
                        }
                    }
                }
            }
            progress
                .bytes
                .fetch_add(plain.len() as u64, Ordering::Relaxed);
            if fp.remaining.fetch_sub(1, Ordering::AcqRel) == 1
                && !fp.failed.load(Ordering::Relaxed)
            {
                progress.files.fetch_add(1, Ordering::Relaxed);
                // The last writer still holds the file open: set metadata through the
                // descriptor (no path lookups).
                let applied = match &handle {
                    Some(file) => apply_file_metadata(file, &fp.node, is_root),
                    None => apply_metadata(&fp.path, &fp.node, is_root),
                };
                if let Err(e) = applied {
                    errors.lock().expect("errors lock").push(RestoreError {
                        path: fp.path.clone(),
                        error: e.to_string(),
                    });
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

/// Removes whatever non-directory is at `path` (a stale file or a symlink that would be
/// followed); a missing path is fine.
fn remove_non_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(std::io::Error::other("a directory is in the way")),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a directory; a symlink or file in the way is removed first so nothing is followed.
/// Returns whether the directory was created now (so nothing is in it yet). In a directory the
/// restore just created, `fresh` skips looking for what is in the way.
fn make_dir(path: &Path, fresh: bool) -> std::io::Result<bool> {
    if !fresh {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Ok(false),
            Ok(_) => std::fs::remove_file(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    Ok(true)
}

/// Makes room for a new entry: nothing to do in a directory created by this restore.
fn clear(path: &Path, fresh: bool) -> std::io::Result<()> {
    if fresh {
        Ok(())
    } else {
        remove_non_dir(path)
    }
}

fn make_special(path: &Path, node: &Node) -> std::io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let kind = match node.kind() {
        NodeType::Fifo => SFlag::S_IFIFO,
        NodeType::Chardev => SFlag::S_IFCHR,
        _ => SFlag::S_IFBLK,
    };
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o600),
        node.rdev.unwrap_or(0),
    )
    .map_err(std::io::Error::from)
}

fn system_time(ns: i64) -> std::time::SystemTime {
    let d = std::time::Duration::new(
        ns.unsigned_abs() / 1_000_000_000,
        (ns.unsigned_abs() % 1_000_000_000) as u32,
    );
    if ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// [`apply_metadata`] for a regular file through an open descriptor.
fn apply_file_metadata(file: &std::fs::File, node: &Node, is_root: bool) -> std::io::Result<()> {
    if is_root {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))?;
    }
    for x in &node.xattrs {
        xattr::FileExt::set_xattr(file, &x.name, &x.value)?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(node.mode))?;
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(system_time(node.atime_ns))
            .set_modified(system_time(node.mtime_ns)),
    )
}

/// Ownership (as root), xattrs, mode, then times (last: the others change ctime only).
fn apply_metadata(path: &Path, node: &Node, is_root: bool) -> std::io::Result<()> {
    let symlink = node.kind() == NodeType::Symlink;
    if is_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    }
    if !symlink {
        for x in &node.xattrs {
            xattr::set(path, &x.name, &x.value)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    }
    let t = |ns: i64| {
        filetime::FileTime::from_unix_time(
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000) as u32,
        )
    };
    // Directories carry no atime (see docs/format.md §8): use the mtime.
    let atime = if node.kind() == NodeType::Dir && node.atime_ns == 0 {
        node.mtime_ns
    } else {
        node.atime_ns
    };
    filetime::set_symlink_file_times(path, t(atime), t(node.mtime_ns))
}
