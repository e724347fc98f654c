//! An in-memory [`Fs`] for tests: a tree of paths a test builds and changes between (or, with a
//! trap, during) the steps of the code under test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{Fs, SourceFile};
use crate::snapshot::{Node, NodeType, NodeTypeField, Xattr};

/// An in-memory file system, cheap to clone (clones share the tree). Times come from a counter
/// that ticks once per change (1 µs a tick), inodes are numbered from 2 (`/` is 1), so a run is
/// deterministic. A change to a directory's listing updates its mtime and ctime; a rename
/// updates the ctime of what moved, as Linux does.
#[derive(Clone, Default)]
pub struct MemFs {
    inner: Arc<Mutex<MemTree>>,
}

/// A trap: runs once, before the first operation on its path, with the tree.
type Trap = Box<dyn FnOnce(&mut MemTree) + Send>;

/// The tree behind a [`MemFs`], as a trap sees it.
#[derive(Default)]
pub struct MemTree {
    entries: BTreeMap<PathBuf, MemEntry>,
    tick: i64,
    next_inode: u64,
    traps: Vec<(PathBuf, Trap)>,
}

#[derive(Clone)]
struct MemEntry {
    node: Node,
    /// A file's bytes, or a symlink's target.
    data: Vec<u8>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        f.debug_map()
            .entries(t.entries.iter().map(|(p, e)| (p, e.node.kind())))
            .finish()
    }
}

impl MemFs {
    /// A file system holding only the directory `/`.
    pub fn new() -> Self {
        let fs = MemFs::default();
        {
            let mut t = fs.lock();
            t.next_inode = 1;
            let node = t.new_node(NodeType::Dir, 0);
            t.entries.insert(
                PathBuf::from("/"),
                MemEntry {
                    node,
                    data: Vec::new(),
                },
            );
        }
        fs
    }

    fn lock(&self) -> MutexGuard<'_, MemTree> {
        // A test that panicked while holding the lock has failed already; its tree is still
        // consistent enough to read.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tree, after firing the trap set on `path`, if any.
    fn access(&self, path: &Path) -> MutexGuard<'_, MemTree> {
        let mut t = self.lock();
        if let Some(i) = t.traps.iter().position(|(p, _)| p == path) {
            let (_, trap) = t.traps.remove(i);
            trap(&mut t);
        }
        t
    }

    /// Runs `change` on the tree just before the next operation on `path` (once), so a test can
    /// change the disk in the middle of a step of the code under test.
    pub fn trap(
        &self,
        path: impl Into<PathBuf>,
        change: impl FnOnce(&mut MemTree) + Send + 'static,
    ) {
        self.lock().traps.push((path.into(), Box::new(change)));
    }

    /// Runs `change` on the tree now.
    pub fn change<T>(&self, change: impl FnOnce(&mut MemTree) -> T) -> T {
        change(&mut self.lock())
    }

    /// Every entry at or below `root` (which must exist): path relative to `root` (`""` is
    /// `root`) → (node as `lstat` gives it, with extended attributes and symlink target; the
    /// file's bytes).
    pub fn snapshot(&self, root: &Path) -> BTreeMap<PathBuf, (Node, Vec<u8>)> {
        let t = self.lock();
        t.entries
            .range(root.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(root))
            .map(|(p, e)| {
                let mut node = e.node.clone();
                if node.kind() == NodeType::Symlink {
                    node.set_target(std::os::unix::ffi::OsStrExt::from_bytes(&e.data));
                }
                let rel = p.strip_prefix(root).expect("in range").to_path_buf();
                let data = if node.kind() == NodeType::File {
                    e.data.clone()
                } else {
                    Vec::new()
                };
                (rel, (node, data))
            })
            .collect()
    }
}

impl MemTree {
    fn new_node(&mut self, t: NodeType, mode: u32) -> Node {
        self.tick += 1;
        let inode = self.next_inode;
        self.next_inode += 1;
        let now = self.tick * 1000;
        Node {
            node_type: NodeTypeField(t),
            mode,
            mtime_ns: now,
            atime_ns: if t == NodeType::Dir { 0 } else { now },
            ctime_ns: now,
            inode,
            device_id: 1,
            links: 1,
            ..Node::default()
        }
    }

    /// The parent of `path`, which must be an existing directory; its mtime and ctime move.
    fn touch_parent(&mut self, path: &Path) -> io::Result<()> {
        let parent = path.parent().ok_or_else(|| not_found(path))?;
        self.tick += 1;
        let now = self.tick * 1000;
        match self.entries.get_mut(parent) {
            Some(e) if e.node.kind() == NodeType::Dir => {
                e.node.mtime_ns = now;
                e.node.ctime_ns = now;
                Ok(())
            }
            Some(_) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", parent.display()),
            )),
            None => Err(not_found(parent)),
        }
    }

    fn create(&mut self, path: &Path, t: NodeType, mode: u32, data: Vec<u8>) -> io::Result<()> {
        if self.entries.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        self.touch_parent(path)?;
        let mut node = self.new_node(t, mode);
        if t == NodeType::File {
            node.size = data.len() as u64;
        }
        self.entries
            .insert(path.to_path_buf(), MemEntry { node, data });
        Ok(())
    }

    /// Creates the directory `path` (its parent must exist).
    pub fn mkdir(&mut self, path: impl AsRef<Path>) -> io::Result<()> {
        self.create(path.as_ref(), NodeType::Dir, 0o755, Vec::new())
    }

    /// Creates the symlink `path` pointing to `target`.
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: &str) -> io::Result<()> {
        self.create(
            path.as_ref(),
            NodeType::Symlink,
            0o777,
            target.as_bytes().to_vec(),
        )
    }

    /// Creates the file `path` with `data`, or replaces the bytes of the existing one (same
    /// inode; mtime and ctime move).
    pub fn write(&mut self, path: impl AsRef<Path>, data: &[u8]) -> io::Result<()> {
        let path = path.as_ref();
        self.tick += 1;
        let now = self.tick * 1000;
        match self.entries.get_mut(path) {
            Some(e) if e.node.kind() == NodeType::File => {
                e.data = data.to_vec();
                e.node.size = data.len() as u64;
                e.node.mtime_ns = now;
                e.node.ctime_ns = now;
                Ok(())
            }
            Some(_) => Err(io::Error::other(format!(
                "{}: not a regular file",
                path.display()
            ))),
            None => self.create(path, NodeType::File, 0o644, data.to_vec()),
        }
    }

    /// Sets an extended attribute (ctime moves).
    pub fn set_xattr(
        &mut self,
        path: impl AsRef<Path>,
        name: &str,
        value: &[u8],
    ) -> io::Result<()> {
        let path = path.as_ref();
        self.tick += 1;
        let now = self.tick * 1000;
        let e = self.entries.get_mut(path).ok_or_else(|| not_found(path))?;
        e.node.xattrs.retain(|x| x.name != name);
        e.node.xattrs.push(Xattr {
            name: name.to_owned(),
            value: value.to_vec(),
        });
        e.node.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        e.node.ctime_ns = now;
        Ok(())
    }

    fn subtree(&self, path: &Path) -> Vec<PathBuf> {
        self.entries
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Removes `path` and everything below it.
    pub fn remove(&mut self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        if !self.entries.contains_key(path) {
            return Err(not_found(path));
        }
        self.touch_parent(path)?;
        for p in self.subtree(path) {
            self.entries.remove(&p);
        }
        Ok(())
    }

    /// Moves `from` with everything below it to `to`, replacing what is there (rename(2)).
    pub fn rename(&mut self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        if !self.entries.contains_key(from) {
            return Err(not_found(from));
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(from) {
            return Err(io::Error::other(format!(
                "cannot move {} into itself",
                from.display()
            )));
        }
        self.touch_parent(to)?;
        self.touch_parent(from)?;
        for p in self.subtree(to) {
            self.entries.remove(&p);
        }
        for p in self.subtree(from) {
            let mut e = self.entries.remove(&p).expect("listed");
            let rest = p.strip_prefix(from).expect("in the subtree");
            let new = if rest.as_os_str().is_empty() {
                self.tick += 1;
                e.node.ctime_ns = self.tick * 1000;
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.entries.insert(new, e);
        }
        Ok(())
    }

    fn get(&self, path: &Path) -> io::Result<&MemEntry> {
        // An ancestor that is not a directory makes the path unreachable, as ENOTDIR does.
        self.entries.get(path).ok_or_else(|| not_found(path))
    }
}

struct MemFile {
    data: Cursor<Vec<u8>>,
    inode: u64,
    at_open: Node,
    fs: MemFs,
}

impl Read for MemFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl SourceFile for MemFile {
    fn stat(&self) -> io::Result<Node> {
        // Like fstat, this follows the file wherever it was moved; once deleted, it keeps the
        // metadata it had when opened.
        let t = self.fs.lock();
        let now = t.entries.values().find(|e| e.node.inode == self.inode);
        let mut node = now.map_or_else(|| self.at_open.clone(), |e| e.node.clone());
        node.xattrs.clear();
        Ok(node)
    }
}

impl Fs for MemFs {
    fn lstat(&self, path: &Path) -> io::Result<Node> {
        let t = self.access(path);
        let mut node = t.get(path)?.node.clone();
        node.xattrs.clear();
        Ok(node)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let t = self.access(path);
        if t.get(path)?.node.kind() != NodeType::Dir {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            ));
        }
        Ok(t.entries
            .range(path.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.parent() == Some(path))
            .filter_map(|(p, _)| p.file_name().map(OsString::from))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        let t = self.access(path);
        let e = t.get(path)?;
        if e.node.kind() != NodeType::File {
            return Err(io::Error::other(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let file = MemFile {
            data: Cursor::new(e.data.clone()),
            inode: e.node.inode,
            at_open: e.node.clone(),
            fs: self.clone(),
        };
        Ok(Box::new(file))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        let t = self.access(path);
        let e = t.get(path)?;
        if e.node.kind() != NodeType::Symlink {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a symlink", path.display()),
            ));
        }
        Ok(PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.data),
        ))
    }

    fn xattrs(&self, path: &Path) -> io::Result<Vec<Xattr>> {
        let t = self.access(path);
        Ok(t.get(path)?.node.xattrs.clone())
    }
}
