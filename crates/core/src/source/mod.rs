//! The source: everything that turns the file system into [`Node`]s, shared by one-shot backup
//! and continuous capture.
//!
//! ```text
//! disk ──Fs (lstat, read_dir, open, readlink, xattrs)──▶ node_from_metadata ──▶ Node
//!                                                         unchanged / stable: skip or re-read
//! Excludes: which paths never become nodes
//! ```
//! This module owns the node encoding of a file's metadata (which fields, in which units), the
//! rules that let an unchanged file skip reading and that keep a file changing under a read from
//! being stored torn, and the exclude patterns. Reading content into chunks is left to the
//! callers (backup's pipeline, capture's reader); the [`Fs`] trait is the seam capture reaches the
//! disk through, with [`StdFs`] for real files and [`MemFs`] for tests.

mod excludes;
mod fs;
mod mem;

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

pub use excludes::Excludes;
pub use fs::{Fs, SourceFile, StdFs};
pub use mem::MemFs;

use crate::snapshot::{Node, NodeType, NodeTypeField, Xattr};

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The node type of an lstat result.
pub fn node_type(meta: &Metadata) -> NodeType {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        NodeType::Symlink
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_char_device() {
        NodeType::Chardev
    } else if ft.is_block_device() {
        NodeType::Blockdev
    } else if ft.is_socket() {
        NodeType::Socket
    } else {
        NodeType::File
    }
}

/// A node carrying `meta` (no name, content, subtree or xattrs yet).
pub fn node_from_metadata(meta: &Metadata) -> Node {
    let t = node_type(meta);
    Node {
        node_type: NodeTypeField(t),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        // A directory's atime changes whenever it is listed, by this backup too: not recorded.
        atime_ns: if t == NodeType::Dir {
            0
        } else {
            ns(meta.atime(), meta.atime_nsec())
        },
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        device_id: meta.dev(),
        links: meta.nlink(),
        size: if t == NodeType::File { meta.size() } else { 0 },
        sparse: t == NodeType::File && meta.blocks().saturating_mul(512) < meta.size(),
        rdev: matches!(t, NodeType::Chardev | NodeType::Blockdev).then(|| meta.rdev()),
        ..Node::default()
    }
}

/// Whether a file's metadata says it is unchanged since `old` was recorded.
pub fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind() == NodeType::File
        && old.size == new.size
        && old.mtime_ns == new.mtime_ns
        && old.ctime_ns == new.ctime_ns
        && old.inode == new.inode
}

/// Extended attributes of `path` (not following symlinks). Unsupported filesystems give none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(s) = name.to_str() else { continue };
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: s.to_owned(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether a read of a file gave one consistent version: its size, mtime and ctime did not move
/// between the stat before and the one after, and the read saw exactly `size` bytes.
pub fn stable(before: &Node, after: &Node, bytes_read: u64) -> bool {
    before.size == after.size
        && before.mtime_ns == after.mtime_ns
        && before.ctime_ns == after.ctime_ns
        && after.size == bytes_read
}

/// Opens for reading without updating atime where permitted (owner or root), never following a
/// symlink.
pub fn open_noatime(path: &Path) -> std::io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        r => r,
    }
}
