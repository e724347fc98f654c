//! The catalog: the live tree of the watched directory in redb (`docs/format.md` §14).
//!
//! Each directory has an id; `entries` maps `(parent id, name)` to the entry's node, `dirs` maps a
//! directory id to its parent, name and the tree id written by the last seal. Edits mark the
//! directories they touch, and their ancestors, dirty; a seal writes the trees of exactly those,
//! deepest first, so its cost follows the changed paths, not the size of the tree.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidemark_core::id::BlobId;
use tidemark_core::snapshot::{Node, NodeType, NodeTypeField, Tree};

use crate::{Error, Result};

/// The directory id of the watched directory.
pub const ROOT_DIR: u64 = 1;
const CATALOG_VERSION: u32 = 1;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const DIRS: TableDefinition<u64, &[u8]> = TableDefinition::new("dirs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Counts for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CatalogStats {
    /// Entries (files, directories, links …) including the watched directory.
    pub entries: u64,
    /// Directories including the watched one.
    pub dirs: u64,
}

/// The catalog database.
pub struct Catalog {
    db: Database,
    path: PathBuf,
}

fn key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// A stored row: `(key, value)`.
type Row = (Vec<u8>, Vec<u8>);

/// The rows of directory `dir`'s children in name order, as stored.
fn child_rows(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dir: u64,
) -> std::result::Result<Vec<Row>, redb::StorageError> {
    t.range(key(dir, b"").as_slice()..key(dir + 1, b"").as_slice())?
        .map(|item| item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
        .collect()
}

/// The directory id at the start of an entry value (0: not a directory).
fn entry_dir(value: &[u8]) -> u64 {
    u64::from_le_bytes(
        value[0..8]
            .try_into()
            .expect("entry values start with a u64"),
    )
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn entry_value(dir: u64, node: &Node) -> Vec<u8> {
    let mut node = node.clone();
    node.name = None;
    node.name_hex = None;
    node.subtree = None;
    let mut v = dir.to_le_bytes().to_vec();
    v.extend_from_slice(&serde_json::to_vec(&node).expect("nodes serialize"));
    v
}

struct DirRow {
    parent: u64,
    tree: Option<BlobId>,
    name: Vec<u8>,
}

impl DirRow {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.parent.to_le_bytes().to_vec();
        match self.tree {
            Some(t) => {
                v.push(1);
                v.extend_from_slice(&t.0);
            }
            None => v.push(0),
        }
        v.extend_from_slice(&self.name);
        v
    }

    fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        let bad = || format!("directory row of {} bytes is malformed", b.len());
        let parent = u64::from_le_bytes(b.get(0..8).ok_or_else(bad)?.try_into().expect("8"));
        let (tree, rest) = match b.get(8) {
            Some(0) => (None, &b[9..]),
            Some(1) => (
                Some(BlobId(
                    b.get(9..41).ok_or_else(bad)?.try_into().expect("32"),
                )),
                &b[41..],
            ),
            _ => return Err(bad()),
        };
        Ok(DirRow {
            parent,
            tree,
            name: rest.to_vec(),
        })
    }
}

/// A directory node with default metadata, for parents that appear before their own `put`.
pub fn default_dir() -> Node {
    Node {
        node_type: NodeTypeField(NodeType::Dir),
        mode: 0o755,
        ..Node::default()
    }
}

impl Catalog {
    /// Opens the catalog at `path`, creating it (with an empty watched directory) if missing.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| Error::catalog(path, e))?;
        let cat = Catalog {
            db,
            path: path.to_path_buf(),
        };
        match cat.meta::<u32>("version")? {
            Some(CATALOG_VERSION) => {}
            Some(v) => {
                return Err(Error::catalog(
                    path,
                    format!("catalog version {v}, this tidemark reads version {CATALOG_VERSION}"),
                ))
            }
            None => {
                let mut t = cat.begin()?;
                t.set_meta("version", &CATALOG_VERSION)?;
                t.set_meta("next_dir", &(ROOT_DIR + 1))?;
                t.reset_root()?;
                t.commit(true)?;
            }
        }
        Ok(cat)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A meta value.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match r.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| Error::catalog(&self.path, format!("meta {key}: {e}")))
    }

    /// Starts a write transaction.
    pub fn begin(&self) -> Result<Txn<'_>> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        Ok(Txn { txn, cat: self })
    }

    /// Whether nothing changed since the last seal (the watched directory's tree is cached).
    pub fn is_sealed(&self) -> Result<bool> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let dirs = r.open_table(DIRS).map_err(|e| self.err(e))?;
        let Some(v) = dirs.get(ROOT_DIR).map_err(|e| self.err(e))? else {
            return Ok(false);
        };
        Ok(DirRow::decode(v.value())
            .map_err(|r| Error::catalog(&self.path, r))?
            .tree
            .is_some())
    }

    /// Counts.
    pub fn stats(&self) -> Result<CatalogStats> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let entries = r
            .open_table(ENTRIES)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        let dirs = r
            .open_table(DIRS)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        Ok(CatalogStats { entries, dirs })
    }

    /// Every entry below the watched directory as `(path, node)`, in path order (for tests and
    /// `status --verbose`; reads the whole catalog).
    pub fn walk(&self) -> Result<Vec<(Vec<u8>, Node)>> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let entries = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut stack = vec![(ROOT_DIR, Vec::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for (k, v) in child_rows(&entries, dir).map_err(|e| self.err(e))? {
                let (child, node) = self.parse_entry(&k, &v)?;
                let name = &k[8..];
                let path = if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [&prefix[..], b"/", name].concat()
                };
                if child != 0 {
                    stack.push((child, path.clone()));
                }
                out.push((path, node));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Resolves `path` in a read transaction: `(directory id, node)` of the entry, if present.
    fn lookup(&self, r: &redb::ReadTransaction, path: &[u8]) -> Result<Option<(u64, Node)>> {
        let entries = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        if path.is_empty() {
            let v = entries
                .get(key(0, b"").as_slice())
                .map_err(|e| self.err(e))?;
            return v
                .map(|v| self.parse_entry(&key(0, b""), v.value()))
                .transpose();
        }
        let mut cur = ROOT_DIR;
        let mut found = None;
        for comp in path.split(|b| *b == b'/') {
            if found.is_some() && cur == 0 {
                return Ok(None); // a component below a non-directory
            }
            let k = key(cur, comp);
            let Some(v) = entries.get(k.as_slice()).map_err(|e| self.err(e))? else {
                return Ok(None);
            };
            let (dir, node) = self.parse_entry(&k, v.value())?;
            cur = dir;
            found = Some((dir, node));
        }
        Ok(found)
    }

    /// The node at `path` (`""` is the watched directory).
    pub fn node(&self, path: &[u8]) -> Result<Option<Node>> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        Ok(self.lookup(&r, path)?.map(|(_, n)| n))
    }

    /// The children of the directory at `path`, in name order (empty if it is not a directory).
    pub fn children(&self, path: &[u8]) -> Result<Vec<Node>> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let dir = if path.is_empty() {
            ROOT_DIR
        } else {
            match self.lookup(&r, path)? {
                Some((d, _)) if d != 0 => d,
                _ => return Ok(Vec::new()),
            }
        };
        let entries = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        child_rows(&entries, dir)
            .map_err(|e| self.err(e))?
            .iter()
            .map(|(k, v)| Ok(self.parse_entry(k, v)?.1))
            .collect()
    }

    fn parse_entry(&self, k: &[u8], v: &[u8]) -> Result<(u64, Node)> {
        if v.len() < 8 || k.len() < 8 {
            return Err(Error::catalog(&self.path, "entry row too short"));
        }
        let dir = entry_dir(v);
        let mut node: Node = serde_json::from_slice(&v[8..])
            .map_err(|e| Error::catalog(&self.path, format!("entry node: {e}")))?;
        node.set_name(std::os::unix::ffi::OsStrExt::from_bytes(&k[8..]));
        Ok((dir, node))
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::catalog(&self.path, e.into())
    }
}

impl tidemark_core::capture::LiveTree for Catalog {
    fn node(&self, path: &[u8]) -> tidemark_core::Result<Option<Node>> {
        Catalog::node(self, path).map_err(|e| tidemark_core::Error::Invalid(e.to_string()))
    }
    fn children(&self, path: &[u8]) -> tidemark_core::Result<Vec<Node>> {
        Catalog::children(self, path).map_err(|e| tidemark_core::Error::Invalid(e.to_string()))
    }
}

/// A write transaction over the catalog. Dropping it without [`Txn::commit`] discards it.
pub struct Txn<'c> {
    txn: WriteTransaction,
    cat: &'c Catalog,
}

impl Txn<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        self.cat.err(e)
    }

    /// Commits; `durable` fsyncs (a seal), otherwise the commit survives only this process.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        let d = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.txn
            .set_durability(d)
            .map_err(|e| Error::catalog(&self.cat.path, e))?;
        let path = self.cat.path.clone();
        self.txn.commit().map_err(|e| Error::catalog(&path, e))
    }

    /// Sets a meta value.
    pub fn set_meta<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let v = serde_json::to_vec(value).expect("meta values serialize");
        let mut t = self.txn.open_table(META).map_err(|e| self.cat.err(e))?;
        t.insert(key, v.as_slice()).map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    /// Empties the tree: only the watched directory remains, with default metadata.
    pub fn reset_root(&mut self) -> Result<()> {
        {
            let mut e = self.txn.open_table(ENTRIES).map_err(|e| self.cat.err(e))?;
            e.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
            e.insert(
                key(0, b"").as_slice(),
                entry_value(ROOT_DIR, &default_dir()).as_slice(),
            )
            .map_err(|e| self.cat.err(e))?;
        }
        let mut d = self.txn.open_table(DIRS).map_err(|e| self.cat.err(e))?;
        d.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
        let row = DirRow {
            parent: 0,
            tree: None,
            name: Vec::new(),
        };
        d.insert(ROOT_DIR, row.encode().as_slice())
            .map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    fn get_entry(&self, parent: u64, name: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        let t = self.txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let v = t
            .get(key(parent, name).as_slice())
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| {
            let v = v.value();
            (entry_dir(v), v.to_vec())
        }))
    }

    fn insert_entry(&mut self, parent: u64, name: &[u8], value: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(ENTRIES).map_err(|e| self.cat.err(e))?;
        t.insert(key(parent, name).as_slice(), value)
            .map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(ENTRIES).map_err(|e| self.cat.err(e))?;
        t.remove(key(parent, name).as_slice())
            .map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    fn dir_row(&self, dir: u64) -> Result<Option<DirRow>> {
        let t = self.txn.open_table(DIRS).map_err(|e| self.err(e))?;
        let Some(v) = t.get(dir).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        DirRow::decode(v.value())
            .map(Some)
            .map_err(|r| Error::catalog(&self.cat.path, r))
    }

    fn set_dir_row(&mut self, dir: u64, row: &DirRow) -> Result<()> {
        let mut t = self.txn.open_table(DIRS).map_err(|e| self.cat.err(e))?;
        t.insert(dir, row.encode().as_slice())
            .map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    fn new_dir(&mut self, parent: u64, name: &[u8]) -> Result<u64> {
        let id: u64 = self.cat_meta_in_txn("next_dir")?.unwrap_or(ROOT_DIR + 1);
        self.set_meta("next_dir", &(id + 1))?;
        self.set_dir_row(
            id,
            &DirRow {
                parent,
                tree: None,
                name: name.to_vec(),
            },
        )?;
        Ok(id)
    }

    fn cat_meta_in_txn<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let t = self.txn.open_table(META).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| Error::catalog(&self.cat.path, format!("meta {key}: {e}")))
    }

    /// Marks `dir` and its ancestors as changed: clears their cached tree ids, stopping at the
    /// first that is already cleared (its ancestors are then cleared too).
    fn mark_dirty(&mut self, dir: u64) -> Result<()> {
        let mut d = dir;
        while d != 0 {
            let Some(mut row) = self.dir_row(d)? else {
                break;
            };
            if row.tree.is_none() && d != dir {
                break;
            }
            row.tree = None;
            self.set_dir_row(d, &row)?;
            d = row.parent;
        }
        Ok(())
    }

    /// The directory id at `path`, if every component exists and is a directory.
    fn resolve_dir(&self, path: &[u8]) -> Result<Option<u64>> {
        let mut cur = ROOT_DIR;
        if path.is_empty() {
            return Ok(Some(cur));
        }
        for comp in path.split(|b| *b == b'/') {
            match self.get_entry(cur, comp)? {
                Some((d, _)) if d != 0 => cur = d,
                _ => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The directory id at `path`, creating missing directories (replacing non-directories).
    fn ensure_dir(&mut self, path: &[u8]) -> Result<u64> {
        let mut cur = ROOT_DIR;
        if path.is_empty() {
            return Ok(cur);
        }
        for comp in path.split(|b| *b == b'/') {
            cur = match self.get_entry(cur, comp)? {
                Some((d, _)) if d != 0 => d,
                _ => {
                    let d = self.new_dir(cur, comp)?;
                    self.insert_entry(cur, comp, &entry_value(d, &default_dir()))?;
                    self.mark_dirty(cur)?;
                    d
                }
            };
        }
        Ok(cur)
    }

    fn remove_subtree(&mut self, dir: u64) -> Result<()> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let mut t = self.txn.open_table(ENTRIES).map_err(|e| self.cat.err(e))?;
            for (k, v) in child_rows(&t, d).map_err(|e| self.cat.err(e))? {
                t.remove(k.as_slice()).map_err(|e| self.cat.err(e))?;
                if entry_dir(&v) != 0 {
                    stack.push(entry_dir(&v));
                }
            }
            drop(t);
            let mut dirs = self.txn.open_table(DIRS).map_err(|e| self.cat.err(e))?;
            dirs.remove(d).map_err(|e| self.cat.err(e))?;
        }
        Ok(())
    }

    /// Creates or replaces the entry at `path` (the watched directory itself when empty).
    pub fn put(&mut self, path: &[u8], node: &Node) -> Result<()> {
        if path.is_empty() {
            self.insert_entry(0, b"", &entry_value(ROOT_DIR, node))?;
            return self.mark_dirty(ROOT_DIR);
        }
        let (pp, name) = split(path);
        let parent = self.ensure_dir(pp)?;
        let is_dir = node.kind() == NodeType::Dir;
        let existing = self.get_entry(parent, name)?.map(|e| e.0);
        let dir = match existing {
            Some(d) if d != 0 && is_dir => d,
            other => {
                if let Some(d) = other.filter(|d| *d != 0) {
                    self.remove_subtree(d)?;
                }
                if is_dir {
                    self.new_dir(parent, name)?
                } else {
                    0
                }
            }
        };
        self.insert_entry(parent, name, &entry_value(dir, node))?;
        self.mark_dirty(parent)
    }

    /// Removes the entry at `path` and everything below it; `false` if there was nothing.
    pub fn delete(&mut self, path: &[u8]) -> Result<bool> {
        if path.is_empty() {
            self.reset_root()?;
            self.mark_dirty(ROOT_DIR)?;
            return Ok(true);
        }
        let (pp, name) = split(path);
        let Some(parent) = self.resolve_dir(pp)? else {
            return Ok(false);
        };
        let Some((dir, _)) = self.get_entry(parent, name)? else {
            return Ok(false);
        };
        if dir != 0 {
            self.remove_subtree(dir)?;
        }
        self.remove_entry(parent, name)?;
        self.mark_dirty(parent)?;
        Ok(true)
    }

    /// Moves the entry at `from` with everything below it to `to`, replacing what is there;
    /// `false` (nothing done) if `from` does not exist or `to` is inside it.
    pub fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<bool> {
        if from == to || from.is_empty() || to.is_empty() {
            return Ok(false);
        }
        if to.starts_with(from) && to.get(from.len()) == Some(&b'/') {
            return Ok(false);
        }
        let (fp, fname) = split(from);
        let Some(fparent) = self.resolve_dir(fp)? else {
            return Ok(false);
        };
        let Some((dir, value)) = self.get_entry(fparent, fname)? else {
            return Ok(false);
        };
        let (tp, tname) = split(to);
        let tparent = self.ensure_dir(tp)?;
        if let Some((old, _)) = self.get_entry(tparent, tname)? {
            if old != 0 {
                self.remove_subtree(old)?;
            }
        }
        self.insert_entry(tparent, tname, &value)?;
        self.remove_entry(fparent, fname)?;
        if dir != 0 {
            let mut row = self.dir_row(dir)?.ok_or_else(|| {
                Error::catalog(&self.cat.path, format!("directory {dir} has no row"))
            })?;
            row.parent = tparent;
            row.name = tname.to_vec();
            self.set_dir_row(dir, &row)?;
        }
        self.mark_dirty(fparent)?;
        self.mark_dirty(tparent)?;
        Ok(true)
    }

    /// Writes the tree of every directory changed since the last seal, deepest first, through
    /// `store` (which returns the tree's id); returns the watched directory's node with its tree.
    /// Only directories whose cached tree was cleared are visited, so the cost follows the changes.
    pub fn seal_trees(
        &mut self,
        store: &mut dyn FnMut(&Tree) -> Result<BlobId>,
    ) -> Result<(BlobId, Node)> {
        let mut stack = vec![(ROOT_DIR, false)];
        while let Some((d, expanded)) = stack.pop() {
            let Some(row) = self.dir_row(d)? else {
                continue;
            };
            if row.tree.is_some() {
                continue;
            }
            if expanded {
                self.write_tree(d, store)?;
                continue;
            }
            stack.push((d, true));
            for child in self.child_dirs(d)? {
                stack.push((child, false));
            }
        }
        let root = self
            .dir_row(ROOT_DIR)?
            .and_then(|r| r.tree)
            .ok_or_else(|| {
                Error::catalog(
                    &self.cat.path,
                    "the watched directory has no tree after sealing",
                )
            })?;
        let (_, value) = self
            .get_entry(0, b"")?
            .ok_or_else(|| Error::catalog(&self.cat.path, "the watched directory has no entry"))?;
        let mut node: Node = serde_json::from_slice(&value[8..])
            .map_err(|e| Error::catalog(&self.cat.path, format!("root node: {e}")))?;
        node.subtree = Some(root);
        Ok((root, node))
    }

    fn child_dirs(&self, dir: u64) -> Result<Vec<u64>> {
        let t = self.txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let rows = child_rows(&t, dir).map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|(_, v)| entry_dir(v))
            .filter(|d| *d != 0)
            .collect())
    }

    fn write_tree(
        &mut self,
        dir: u64,
        store: &mut dyn FnMut(&Tree) -> Result<BlobId>,
    ) -> Result<BlobId> {
        let rows = {
            let t = self.txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            child_rows(&t, dir).map_err(|e| self.err(e))?
        };
        let mut tree = Tree::new();
        for (k, v) in rows {
            let (child, mut node) = self.cat.parse_entry(&k, &v)?;
            if child != 0 {
                let sub = self.dir_row(child)?.and_then(|r| r.tree).ok_or_else(|| {
                    Error::catalog(
                        &self.cat.path,
                        format!("directory {child} has no tree while sealing its parent"),
                    )
                })?;
                node.subtree = Some(sub);
            }
            tree.nodes.push(node);
        }
        let id = store(&tree)?;
        let mut row = self
            .dir_row(dir)?
            .ok_or_else(|| Error::catalog(&self.cat.path, format!("directory {dir} has no row")))?;
        row.tree = Some(id);
        self.set_dir_row(dir, &row)?;
        Ok(id)
    }

    /// Fills an empty catalog from a tree (a snapshot being installed): `load` reads a tree by id.
    pub fn import(
        &mut self,
        root: &Node,
        load: &mut dyn FnMut(&BlobId) -> Result<Tree>,
    ) -> Result<()> {
        self.reset_root()?;
        self.insert_entry(0, b"", &entry_value(ROOT_DIR, root))?;
        let Some(root_tree) = root.subtree else {
            return Ok(());
        };
        let mut stack = vec![(ROOT_DIR, root_tree)];
        while let Some((dir, tree_id)) = stack.pop() {
            let tree = load(&tree_id)?;
            for node in &tree.nodes {
                let name = node.name_bytes().ok_or_else(|| {
                    Error::Invalid(format!(
                        "tree {} has a node without a name",
                        tree_id.short()
                    ))
                })?;
                let child = match (node.kind(), node.subtree) {
                    (NodeType::Dir, Some(sub)) => {
                        let d = self.new_dir(dir, &name)?;
                        stack.push((d, sub));
                        d
                    }
                    _ => 0,
                };
                self.insert_entry(dir, &name, &entry_value(child, node))?;
            }
            let mut row = self.dir_row(dir)?.expect("just created");
            row.tree = Some(tree_id);
            self.set_dir_row(dir, &row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Node {
        Node {
            node_type: NodeTypeField(NodeType::File),
            mode: 0o644,
            size,
            ..Node::default()
        }
    }

    fn paths(c: &Catalog) -> Vec<String> {
        c.walk()
            .unwrap()
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn put_delete_rename_and_seal() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::open(&tmp.path().join("c.redb")).unwrap();
        let mut t = c.begin().unwrap();
        t.put(b"a/b/f", &file(1)).unwrap();
        t.put(b"a/g", &file(2)).unwrap();
        t.put(b"top", &file(3)).unwrap();
        t.commit(false).unwrap();
        assert_eq!(paths(&c), ["a", "a/b", "a/b/f", "a/g", "top"]);

        let mut trees = Vec::new();
        let mut store = |tree: &Tree| {
            trees.push(tree.clone());
            Ok(BlobId(blake_like(&tree.encode())))
        };
        let mut t = c.begin().unwrap();
        let (root, _) = t.seal_trees(&mut store).unwrap();
        t.commit(true).unwrap();
        assert_eq!(trees.len(), 3, "a/b, a, root");

        // Rename a directory: only the two parents change, not the moved subtree.
        let mut t = c.begin().unwrap();
        assert!(t.rename(b"a/b", b"top2").unwrap());
        assert!(!t.rename(b"missing", b"x").unwrap());
        assert!(!t.rename(b"a", b"a/inside").unwrap());
        t.commit(false).unwrap();
        assert_eq!(paths(&c), ["a", "a/g", "top", "top2", "top2/f"]);
        let mut n = 0;
        let mut t = c.begin().unwrap();
        let (root2, _) = t
            .seal_trees(&mut |tree: &Tree| {
                n += 1;
                Ok(BlobId(blake_like(&tree.encode())))
            })
            .unwrap();
        t.commit(true).unwrap();
        assert_eq!(n, 2, "a and root are rewritten; the moved directory is not");
        assert_ne!(root, root2);

        // A file replaced by a directory and a directory by a file.
        let mut t = c.begin().unwrap();
        t.put(b"top/x", &file(1)).unwrap();
        t.put(b"a", &file(9)).unwrap();
        assert!(t.delete(b"top2").unwrap());
        assert!(!t.delete(b"nope/x").unwrap());
        t.commit(false).unwrap();
        assert_eq!(paths(&c), ["a", "top", "top/x"]);
        assert_eq!(
            c.stats().unwrap(),
            CatalogStats {
                entries: 4,
                dirs: 2
            }
        );
    }

    fn blake_like(b: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, x) in b.iter().enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*x);
        }
        out
    }
}
