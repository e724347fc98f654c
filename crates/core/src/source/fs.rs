//! The file-system operations capture needs, behind a trait, and the real implementation.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{node_from_metadata, open_noatime, read_xattrs};
use crate::snapshot::{Node, Xattr};

/// How capture sees the disk: every operation on one path, no following of symlinks. Nodes come
/// back as [`node_from_metadata`] makes them: metadata only, without name, content, target or
/// extended attributes. A path that is gone gives `io::ErrorKind::NotFound`.
pub trait Fs: Send + Sync {
    /// The metadata of `path` itself (lstat).
    fn lstat(&self, path: &Path) -> io::Result<Node>;
    /// The names in the directory `path`, in no particular order, without `.` and `..`.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Opens the regular file `path` for reading (a symlink is not followed; atime is left
    /// alone where permitted).
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>>;
    /// The target of the symlink `path`.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The extended attributes of `path` sorted by name; none where unsupported.
    fn xattrs(&self, path: &Path) -> io::Result<Vec<Xattr>>;
}

/// An open file: its bytes, and its metadata now (fstat: it follows the file across renames).
pub trait SourceFile: Read + Send {
    /// The file's metadata at the time of the call.
    fn stat(&self) -> io::Result<Node>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl SourceFile for File {
    fn stat(&self) -> io::Result<Node> {
        self.metadata().map(|m| node_from_metadata(&m))
    }
}

impl Fs for StdFs {
    fn lstat(&self, path: &Path) -> io::Result<Node> {
        std::fs::symlink_metadata(path).map(|m| node_from_metadata(&m))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        // An entry that fails to read (it vanished meanwhile) is left out, as if listed later.
        Ok(std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        Ok(Box::new(open_noatime(path)?))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }

    fn xattrs(&self, path: &Path) -> io::Result<Vec<Xattr>> {
        read_xattrs(path)
    }
}
