//! The target's file system, reached only through descriptors.
//!
//! A restore may run as root over a target that other users can write to while it runs, so no
//! path below the target is ever resolved from the top by name. The target is opened once; each
//! directory is made and opened relative to its parent's descriptor with `O_NOFOLLOW`; later
//! opens (the writer threads', the last pass's) resolve beneath the target's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or an `openat(O_NOFOLLOW)` walk one
//! component at a time where the kernel lacks `openat2`; and metadata is set through a
//! descriptor of the entry itself. A directory swapped for a symlink makes the operation fail
//! (`ELOOP`, `ENOTDIR`) instead of leading outside; a file swapped for another after the restore
//! created it is recognised by its inode and left alone.
//!
//! What is left to the caller: which names to use (they must be single, checked components) and
//! the order (directory metadata after the directory's children).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::snapshot::{Node, NodeType};

/// Which file the restore created under a name: (device, inode).
pub(super) type FileId = (u64, u64);

/// Set once `openat2` answered `ENOSYS` (kernels before 5.6, some sandboxes).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The restore's target directory, open for the whole restore.
pub(super) struct TargetDir {
    fd: OwnedFd,
}

impl TargetDir {
    /// Opens the target itself. Its own path is the caller's choice, so symlinks in it are
    /// followed; nothing below it is.
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// The target's descriptor, for creating its top-level entries.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `rel` (plain names below the target; empty is the target itself), following no
    /// symlink on the way or at the end. `mode` counts only with `O_CREAT`.
    pub(super) fn open_beneath(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
    ) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // openat2 refuses a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            mode
        } else {
            Mode::empty()
        };
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            // EAGAIN: a concurrent rename made the kernel unsure; it asks for a retry.
            for _ in 0..8 {
                match rustix::fs::openat2(&self.fd, rel, flags, mode, resolve) {
                    Err(Errno::AGAIN) => {}
                    Err(Errno::NOSYS) => {
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    r => return r.map_err(io::Error::from),
                }
            }
        }
        self.walk(rel, flags, mode)
    }

    /// `open_beneath` without `openat2`: one `openat(O_NOFOLLOW)` per component, each relative
    /// to the directory opened before it.
    fn walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain path below the target", rel.display()),
                    ))
                }
            }
        }
        let Some((last, parents)) = names.split_last() else {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, mode)?);
        };
        let mut dir: Option<OwnedFd> = None;
        for name in parents {
            let at = dir.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
            dir = Some(open_dir_at(at, name)?);
        }
        let at = dir.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
        Ok(rustix::fs::openat(at, *last, flags, mode)?)
    }
}

/// Opens the directory `name` in `parent` for use as a parent (`O_PATH`); a symlink there fails.
pub(super) fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The identity of an open file.
pub(super) fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
}

/// Makes (or, in a directory the restore did not just create, finds) the directory `name` in
/// `parent` and opens it. A non-directory in the way is removed, never followed. Returns the
/// descriptor, its identity, and whether the directory is new (so nothing is in it yet).
pub(super) fn make_dir_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    fresh: bool,
) -> io::Result<(OwnedFd, FileId, bool)> {
    if !fresh {
        match open_dir_at(parent, name) {
            Ok(fd) => {
                let id = file_id(fd.as_fd())?;
                return Ok((fd, id, false));
            }
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            Err(e)
                if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error())
                    || e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) =>
            {
                rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
            }
            Err(e) => return Err(e),
        }
    }
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    let fd = open_dir_at(parent, name)?;
    let id = file_id(fd.as_fd())?;
    Ok((fd, id, true))
}

/// Makes room for a new entry `name` in `parent`: removes a non-directory there (a stale file,
/// a symlink that must not be followed). Nothing to do in a directory the restore just created.
pub(super) fn clear_at(parent: BorrowedFd<'_>, name: &OsStr, fresh: bool) -> io::Result<()> {
    if fresh {
        return Ok(());
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => Err(io::Error::other("a directory is in the way")),
        Err(e) => Err(e.into()),
    }
}

/// Creates the regular file `name` in `parent`; it must not exist yet (`O_EXCL`), so nothing
/// already there, a hardlink to a file elsewhere included, is ever opened for writing.
pub(super) fn create_file_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<(File, FileId)> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let id = file_id(fd.as_fd())?;
    Ok((File::from(fd), id))
}

/// Creates the symlink, fifo or device `node` as `name` in `parent`, then sets its metadata.
pub(super) fn make_other_at(parent: BorrowedFd<'_>, name: &OsStr, node: &Node) -> io::Result<()> {
    match node.kind() {
        NodeType::Symlink => {
            let target = node
                .target_os()
                .expect("tree decoder checked symlink targets");
            rustix::fs::symlinkat(target.as_os_str(), parent, name)?;
        }
        kind => {
            let file_type = match kind {
                NodeType::Fifo => FileType::Fifo,
                NodeType::Chardev => FileType::CharacterDevice,
                _ => FileType::BlockDevice,
            };
            rustix::fs::mknodat(
                parent,
                name,
                file_type,
                Mode::from_raw_mode(0o600),
                node.rdev.unwrap_or(0),
            )?;
        }
    }
    Ok(())
}

/// Ownership (as root), xattrs, mode, then times (last: the others change ctime only), through
/// a descriptor open on the file or directory itself (`O_PATH` will not do).
pub(super) fn set_metadata(fd: BorrowedFd<'_>, node: &Node, is_root: bool) -> io::Result<()> {
    if is_root {
        rustix::fs::fchown(fd, Some(uid(node.uid)), Some(gid(node.gid)))?;
    }
    for x in &node.xattrs {
        rustix::fs::fsetxattr(fd, x.name.as_str(), &x.value, XattrFlags::empty())?;
    }
    rustix::fs::fchmod(fd, mode(node.mode))?;
    rustix::fs::futimens(fd, &times(node))?;
    Ok(())
}

/// [`set_metadata`] for the symlink, fifo or device `name` in `parent`, which cannot be opened
/// for I/O (a device's open may act on the device). The entry is pinned with an `O_PATH`
/// descriptor and checked to be a single-linked entry of its kind, so a swapped-in hardlink to a
/// file elsewhere is refused; ownership and times go through that descriptor, mode and xattrs
/// through `/proc/self/fd`, which names exactly the pinned entry.
pub(super) fn set_other_metadata_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    node: &Node,
    is_root: bool,
) -> io::Result<()> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let expected = match node.kind() {
        NodeType::Symlink => FileType::Symlink,
        NodeType::Fifo => FileType::Fifo,
        NodeType::Chardev => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    if FileType::from_raw_mode(st.st_mode) != expected || st.st_nlink != 1 {
        return Err(io::Error::other(
            "replaced by something else while restoring; left alone",
        ));
    }
    if is_root {
        rustix::fs::chownat(
            &fd,
            "",
            Some(uid(node.uid)),
            Some(gid(node.gid)),
            AtFlags::EMPTY_PATH,
        )?;
    }
    if expected != FileType::Symlink {
        let pinned = format!("/proc/self/fd/{}", fd.as_raw_fd());
        for x in &node.xattrs {
            rustix::fs::setxattr(&pinned, x.name.as_str(), &x.value, XattrFlags::empty())?;
        }
        rustix::fs::chmodat(rustix::fs::CWD, &pinned, mode(node.mode), AtFlags::empty())?;
    }
    rustix::fs::utimensat(
        &fd,
        "",
        &times(node),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw_unchecked(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw_unchecked(raw)
}

fn mode(raw: u32) -> Mode {
    Mode::from_bits_truncate(raw & 0o7777)
}

fn times(node: &Node) -> Timestamps {
    let spec = |ns: i64| Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    // Directories carry no atime (see docs/format.md §8): use the mtime.
    let atime = if node.kind() == NodeType::Dir && node.atime_ns == 0 {
        node.mtime_ns
    } else {
        node.atime_ns
    };
    Timestamps {
        last_access: spec(atime),
        last_modification: spec(node.mtime_ns),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    use super::*;
    use crate::snapshot::NodeTypeField;

    /// A target and, beside it, a directory outside it holding one file.
    fn setup() -> (tempfile::TempDir, TargetDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("target")).expect("target");
        std::fs::create_dir(tmp.path().join("outside")).expect("outside");
        std::fs::write(tmp.path().join("outside/file"), b"outside").expect("file");
        let target = TargetDir::open(&tmp.path().join("target")).expect("open target");
        let outside = tmp.path().join("outside");
        (tmp, target, outside)
    }

    fn outside_is_untouched(outside: &Path) {
        let names: Vec<_> = std::fs::read_dir(outside)
            .expect("list outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["file"], "something was created outside the target");
        assert_eq!(
            std::fs::read(outside.join("file")).expect("read"),
            b"outside"
        );
    }

    #[test]
    fn open_beneath_follows_no_symlink_anywhere_in_the_path() {
        let (tmp, target, outside) = setup();
        symlink(&outside, tmp.path().join("target/dir")).expect("symlink");
        symlink(outside.join("file"), tmp.path().join("target/link")).expect("symlink");
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        let mode = Mode::from_raw_mode(0o600);
        for walk in [false, true] {
            let open = |rel: &str, flags| {
                if walk {
                    target.walk(Path::new(rel), flags | OFlags::NOFOLLOW, mode)
                } else {
                    target.open_beneath(Path::new(rel), flags, mode)
                }
            };
            assert!(open("dir/new", create).is_err(), "walk {walk}");
            assert!(open("dir/file", OFlags::WRONLY).is_err(), "walk {walk}");
            assert!(open("link", OFlags::WRONLY).is_err(), "walk {walk}");
            assert!(open("../outside/new", create).is_err(), "walk {walk}");
            // A plain path still works.
            drop(open("plain", create).expect("a plain name opens"));
            std::fs::remove_file(tmp.path().join("target/plain")).expect("remove");
        }
        outside_is_untouched(&outside);
    }

    #[test]
    fn make_dir_at_replaces_a_symlink_and_create_file_at_opens_nothing_existing() {
        let (tmp, target, outside) = setup();
        symlink(&outside, tmp.path().join("target/dir")).expect("symlink");
        let (dir, _, created) =
            make_dir_at(target.fd(), OsStr::new("dir"), false).expect("make dir");
        assert!(created, "the symlink must be replaced by a new directory");
        assert!(tmp
            .path()
            .join("target/dir")
            .symlink_metadata()
            .expect("stat")
            .is_dir());
        create_file_at(dir.as_fd(), OsStr::new("file")).expect("create inside");
        // A hardlink to a file outside, planted where a file is to be created, is refused.
        std::fs::hard_link(outside.join("file"), tmp.path().join("target/planted"))
            .expect("hardlink");
        let err = create_file_at(target.fd(), OsStr::new("planted")).expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        outside_is_untouched(&outside);
    }

    #[test]
    fn other_metadata_goes_to_the_entry_itself_and_never_to_a_swapped_in_file() {
        let (tmp, target, outside) = setup();
        let before = std::fs::metadata(outside.join("file")).expect("stat");
        let node = |kind| Node {
            node_type: NodeTypeField(kind),
            mode: 0o640,
            mtime_ns: 1_000_000_123,
            atime_ns: 2_000_000_456,
            ..Node::default()
        };
        // A symlink's times are its own, not its target's.
        symlink(outside.join("file"), tmp.path().join("target/link")).expect("symlink");
        set_other_metadata_at(
            target.fd(),
            OsStr::new("link"),
            &node(NodeType::Symlink),
            false,
        )
        .expect("symlink metadata");
        let link = tmp
            .path()
            .join("target/link")
            .symlink_metadata()
            .expect("lstat");
        assert_eq!((link.mtime(), link.mtime_nsec()), (1, 123));
        // A fifo gets mode and times.
        let fifo = node(NodeType::Fifo);
        make_other_at(target.fd(), OsStr::new("fifo"), &fifo).expect("mkfifo");
        set_other_metadata_at(target.fd(), OsStr::new("fifo"), &fifo, false).expect("fifo meta");
        let m = tmp
            .path()
            .join("target/fifo")
            .symlink_metadata()
            .expect("lstat");
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.atime()), (1, 2));
        // Where the fifo was, a hardlink to a file outside: left alone.
        std::fs::remove_file(tmp.path().join("target/fifo")).expect("rm");
        std::fs::hard_link(outside.join("file"), tmp.path().join("target/fifo")).expect("link");
        let err = set_other_metadata_at(target.fd(), OsStr::new("fifo"), &fifo, false)
            .expect_err("must refuse");
        assert!(err.to_string().contains("replaced"), "{err}");
        let after = std::fs::metadata(outside.join("file")).expect("stat");
        assert_eq!(after.permissions().mode(), before.permissions().mode());
        assert_eq!(after.mtime_nsec(), before.mtime_nsec());
        outside_is_untouched(&outside);
    }
}
