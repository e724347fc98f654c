//! The catalog: the live tree of the watched directory in redb (`docs/format.md` §14).
//!
//! Each directory has an id; `entries` maps `(parent id, name)` to the entry's node, `dirs` maps a
//! directory id to its parent, name and the tree id written by the last seal. Edits mark the
//! directories they touch, and their ancestors, dirty; a seal writes the trees of exactly those,
//! deepest first, so its cost follows the changed paths, not the size of the tree.
//!
//! Durability: the catalog keeps one redb write transaction open from one durable commit (a seal)
//! to the next. Applies edit it and readers read through it, but nothing in it reaches the file
//! until the next seal commits it with `Durability::Immediate`. So on every exit path (an error, a
//! signal, a panic unwinding, `kill -9`) the file holds exactly the last seal: the open
//! transaction is aborted when dropped. (redb 4 makes pending `Durability::None` commits durable
//! when the database closes, so non-durable commits would move the durable catalog past what the
//! repository stores: issue 9.) [`Catalog::rewind`] discards the open transaction on purpose.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidemark_core::id::BlobId;
use tidemark_core::snapshot::{paginate, Node, NodeType, NodeTypeField, PageRef, Tree, PAGED_OVER};

use crate::{Error, Result};

/// The directory id of the watched directory.
pub const ROOT_DIR: u64 = 1;
const CATALOG_VERSION: u32 = 2;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const DIRS: TableDefinition<u64, &[u8]> = TableDefinition::new("dirs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DIRTY: TableDefinition<u64, &[u8]> = TableDefinition::new("dirty");
const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");

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
    /// Everything since the last durable commit. `None` only after a [`Txn`] was dropped without
    /// commit or a durable commit failed; [`Catalog::begin`] and [`Catalog::rewind`] open a new
    /// one. Declared before `db`, so it is dropped (aborted) first.
    live: Option<WriteTransaction>,
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

/// The directory id at the start of an entry value (0: not a directory, or a value too short to
/// hold one, which [`Catalog::parse_entry`] reports).
fn entry_dir(value: &[u8]) -> u64 {
    value
        .get(0..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Checks one stored row of the catalog's `table` (`entries`, `dirs` or `pages`) the way the
/// catalog reads it, and that it encodes back to the same bytes: a one-line reason when it is
/// malformed. For the `catalog_rows` fuzz target; never panics.
#[doc(hidden)]
pub fn check_row(table: &str, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
    match table {
        "entries" => {
            if key.len() < 8 || value.len() < 8 {
                return Err("entry row too short".into());
            }
            let node: Node =
                serde_json::from_slice(&value[8..]).map_err(|e| format!("entry node: {e}"))?;
            let again = entry_value(entry_dir(value), &node);
            let back: Node = serde_json::from_slice(&again[8..]).map_err(|e| e.to_string())?;
            if serde_json::to_vec(&back).ok() != serde_json::to_vec(&node).ok() {
                return Err("entry node does not round-trip".into());
            }
            Ok(())
        }
        "dirs" => {
            let row = DirRow::decode(value)?;
            if row.encode() != value {
                return Err("directory row does not round-trip".into());
            }
            Ok(())
        }
        "pages" => {
            let row = PageRow::decode(value)?;
            if row.encode()[..] != *value {
                return Err("page row does not round-trip".into());
            }
            Ok(())
        }
        other => Err(format!("no table {other}")),
    }
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

/// One page of a paged directory (`pages` table): its tree id and entry count, and whether that
/// id is still valid.
#[derive(Clone, Copy)]
struct PageRow {
    clean: bool,
    tree: BlobId,
    count: u64,
}

impl PageRow {
    fn encode(&self) -> [u8; 41] {
        let mut v = [0u8; 41];
        v[0] = u8::from(self.clean);
        v[1..33].copy_from_slice(&self.tree.0);
        v[33..].copy_from_slice(&self.count.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() != 41 || b[0] > 1 {
            return Err(format!("page row of {} bytes is malformed", b.len()));
        }
        Ok(PageRow {
            clean: b[0] == 1,
            tree: BlobId(b[1..33].try_into().expect("32")),
            count: u64::from_le_bytes(b[33..].try_into().expect("8")),
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
        Self::from_db(db, path)
    }

    /// Opens the catalog on a redb storage backend instead of a file: redb's in-memory backend
    /// for tests and simulation, or a fault-injecting one (the `catalog_model` fuzz target).
    /// `name` stands for the path in messages.
    pub fn open_backend(backend: impl redb::StorageBackend, name: &str) -> Result<Self> {
        let path = Path::new(name);
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| Error::catalog(path, e))?;
        Self::from_db(db, path)
    }

    fn from_db(db: Database, path: &Path) -> Result<Self> {
        let mut cat = Catalog {
            live: None,
            db,
            path: path.to_path_buf(),
        };
        cat.rewind()?;
        match cat.meta::<u32>("version")? {
            Some(CATALOG_VERSION) => {}
            Some(1) => {
                // Version 1 had no `dirty` table: list every directory without a cached tree.
                let mut t = cat.begin()?;
                let cleared: Vec<u64> = {
                    let dirs = t.inner.open_table(DIRS).map_err(|e| t.err(e))?;
                    let mut v = Vec::new();
                    for item in dirs.iter().map_err(|e| t.err(e))? {
                        let (k, row) = item.map_err(|e| t.err(e))?;
                        let row =
                            DirRow::decode(row.value()).map_err(|r| Error::catalog(path, r))?;
                        if row.tree.is_none() {
                            v.push(k.value());
                        }
                    }
                    v
                };
                for d in cleared {
                    t.note_dirty(d)?;
                }
                let values: Vec<Vec<u8>> = {
                    let e = t.inner.open_table(ENTRIES).map_err(|e| t.err(e))?;
                    let mut v = Vec::new();
                    for item in e.iter().map_err(|e| t.err(e))? {
                        let (k, val) = item.map_err(|e| t.err(e))?;
                        if k.value().len() > 8 {
                            v.push(val.value().to_vec());
                        }
                    }
                    v
                };
                for v in values {
                    t.count_bytes(&v, 1);
                }
                t.set_meta("version", &CATALOG_VERSION)?;
                t.commit(true)?;
            }
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
        let r = self.live()?;
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

    /// Starts a batch of edits on the open transaction. Its [`Txn::commit`] either keeps the
    /// edits in the open transaction (visible to reads, not durable) or commits everything since
    /// the last durable commit. Dropping it without commit discards everything since the last
    /// durable commit, not only its own edits.
    pub fn begin(&mut self) -> Result<Txn<'_>> {
        let inner = match self.live.take() {
            Some(t) => t,
            None => self.db.begin_write().map_err(|e| self.err(e))?,
        };
        Ok(Txn {
            inner,
            cat: self,
            bytes_delta: 0,
        })
    }

    /// Discards everything since the last durable commit: the catalog is back at the last seal.
    pub fn rewind(&mut self) -> Result<()> {
        drop(self.live.take()); // aborts
        self.live = Some(self.db.begin_write().map_err(|e| self.err(e))?);
        Ok(())
    }

    /// The open transaction, which readers read through.
    fn live(&self) -> Result<&WriteTransaction> {
        self.live.as_ref().ok_or_else(|| {
            Error::catalog(
                &self.path,
                "no open transaction: a write failed and the catalog was not rewound",
            )
        })
    }

    /// Whether nothing changed since the last seal (the watched directory's tree is cached).
    pub fn is_sealed(&self) -> Result<bool> {
        let r = self.live()?;
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
        let r = self.live()?;
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
        let r = self.live()?;
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

    /// Calls `each` with every blob the catalog refers to: file chunks, and the cached tree and
    /// page ids the next seal may reuse. Reads the whole catalog.
    pub fn referenced_blobs(&self, each: &mut dyn FnMut(BlobId)) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Content {
            #[serde(default)]
            content: Vec<BlobId>,
        }
        let r = self.live()?;
        let entries = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        for item in entries.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            let v = v.value();
            if v.len() > 8 && entry_dir(v) == 0 {
                let c: Content = serde_json::from_slice(&v[8..])
                    .map_err(|e| Error::catalog(&self.path, format!("entry node: {e}")))?;
                c.content.into_iter().for_each(&mut *each);
            }
        }
        let dirs = r.open_table(DIRS).map_err(|e| self.err(e))?;
        for item in dirs.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            let row = DirRow::decode(v.value()).map_err(|e| Error::catalog(&self.path, e))?;
            if let Some(t) = row.tree {
                each(t);
            }
        }
        if let Ok(pages) = r.open_table(PAGES) {
            for item in pages.iter().map_err(|e| self.err(e))? {
                let (_, v) = item.map_err(|e| self.err(e))?;
                let row = PageRow::decode(v.value()).map_err(|e| Error::catalog(&self.path, e))?;
                if row.clean {
                    each(row.tree);
                }
            }
        }
        Ok(())
    }

    /// Resolves `path` in a read transaction: `(directory id, node)` of the entry, if present.
    fn lookup(&self, r: &WriteTransaction, path: &[u8]) -> Result<Option<(u64, Node)>> {
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
        let r = self.live()?;
        Ok(self.lookup(r, path)?.map(|(_, n)| n))
    }

    /// The children of the directory at `path`, in name order (empty if it is not a directory).
    pub fn children(&self, path: &[u8]) -> Result<Vec<Node>> {
        let r = self.live()?;
        let dir = if path.is_empty() {
            ROOT_DIR
        } else {
            match self.lookup(r, path)? {
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

/// A batch of edits on the catalog's open transaction (see [`Catalog::begin`]).
pub struct Txn<'c> {
    inner: WriteTransaction,
    cat: &'c mut Catalog,
    /// Change of the files' total size in this transaction, added to `meta.bytes_total` at commit.
    bytes_delta: i128,
}

impl Txn<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        self.cat.err(e)
    }

    /// Ends the batch. `durable` commits everything since the last durable commit and fsyncs (a
    /// seal); otherwise the edits stay in the open transaction, visible to reads and written by
    /// the next durable commit, and lost on any exit before it.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        if self.bytes_delta != 0 {
            let total = self.bytes_total()?;
            self.set_meta("bytes_total", &total)?;
            self.bytes_delta = 0;
        }
        if !durable {
            self.cat.live = Some(self.inner);
            return Ok(());
        }
        let path = self.cat.path.clone();
        self.inner
            .set_durability(Durability::Immediate)
            .map_err(|e| Error::catalog(&path, e))?;
        self.inner.commit().map_err(|e| Error::catalog(&path, e))?;
        self.cat.rewind()
    }

    /// Sets a meta value.
    pub fn set_meta<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let v = serde_json::to_vec(value).expect("meta values serialize");
        let mut t = self.inner.open_table(META).map_err(|e| self.cat.err(e))?;
        t.insert(key, v.as_slice()).map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    /// Removes a meta value.
    pub fn remove_meta(&mut self, key: &str) -> Result<()> {
        let mut t = self.inner.open_table(META).map_err(|e| self.cat.err(e))?;
        t.remove(key).map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    /// The total size of the files in the tree, as of this transaction's last commit point plus
    /// what it changed.
    pub fn bytes_total(&self) -> Result<u64> {
        let stored: u64 = self.cat_meta_in_txn("bytes_total")?.unwrap_or(0);
        Ok(u64::try_from((i128::from(stored) + self.bytes_delta).max(0)).unwrap_or(u64::MAX))
    }

    /// Notes that the entry with stored value `value` leaves the tree (`sign` -1) or enters it (+1).
    fn count_bytes(&mut self, value: &[u8], sign: i128) {
        if entry_dir(value) != 0 {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Sized {
            #[serde(rename = "type")]
            kind: NodeTypeField,
            #[serde(default)]
            size: u64,
        }
        if let Ok(n) = serde_json::from_slice::<Sized>(value.get(8..).unwrap_or_default()) {
            if n.kind.0 == NodeType::File {
                self.bytes_delta += sign * i128::from(n.size);
            }
        }
    }

    /// Empties the tree: only the watched directory remains, with default metadata.
    pub fn reset_root(&mut self) -> Result<()> {
        {
            let mut e = self
                .inner
                .open_table(ENTRIES)
                .map_err(|e| self.cat.err(e))?;
            e.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
            e.insert(
                key(0, b"").as_slice(),
                entry_value(ROOT_DIR, &default_dir()).as_slice(),
            )
            .map_err(|e| self.cat.err(e))?;
        }
        let mut d = self.inner.open_table(DIRS).map_err(|e| self.cat.err(e))?;
        d.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
        let row = DirRow {
            parent: 0,
            tree: None,
            name: Vec::new(),
        };
        d.insert(ROOT_DIR, row.encode().as_slice())
            .map_err(|e| self.cat.err(e))?;
        drop(d);
        let mut p = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
        p.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
        drop(p);
        let mut dirty = self.inner.open_table(DIRTY).map_err(|e| self.cat.err(e))?;
        dirty.retain(|_, _| false).map_err(|e| self.cat.err(e))?;
        drop(dirty);
        self.bytes_delta = 0;
        self.set_meta("bytes_total", &0u64)?;
        self.note_dirty(ROOT_DIR)
    }

    fn get_entry(&self, parent: u64, name: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        let t = self.inner.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let v = t
            .get(key(parent, name).as_slice())
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| {
            let v = v.value();
            (entry_dir(v), v.to_vec())
        }))
    }

    fn insert_entry(&mut self, parent: u64, name: &[u8], value: &[u8]) -> Result<()> {
        let mut t = self
            .inner
            .open_table(ENTRIES)
            .map_err(|e| self.cat.err(e))?;
        let old = t
            .insert(key(parent, name).as_slice(), value)
            .map_err(|e| self.cat.err(e))?
            .map(|v| v.value().to_vec());
        drop(t);
        if let Some(old) = old {
            self.count_bytes(&old, -1);
        }
        if parent != 0 {
            self.count_bytes(value, 1);
        }
        self.mark_page(parent, name)
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let mut t = self
            .inner
            .open_table(ENTRIES)
            .map_err(|e| self.cat.err(e))?;
        let old = t
            .remove(key(parent, name).as_slice())
            .map_err(|e| self.cat.err(e))?
            .map(|v| v.value().to_vec());
        drop(t);
        if let Some(old) = old {
            self.count_bytes(&old, -1);
        }
        self.mark_page(parent, name)
    }

    /// Clears the page of the paged directory `dir` that holds `name` (nothing when `dir` is not
    /// paged): the page with the greatest start at or before `name`.
    fn mark_page(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        if dir == 0 {
            return Ok(());
        }
        let mut t = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
        let found = {
            let mut range = t
                .range(key(dir, b"").as_slice()..=key(dir, name).as_slice())
                .map_err(|e| self.cat.err(e))?;
            match range.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(|e| self.cat.err(e))?;
                    Some((k.value().to_vec(), v.value().to_vec()))
                }
                None => None,
            }
        };
        if let Some((k, v)) = found {
            let mut row = PageRow::decode(&v).map_err(|r| Error::catalog(&self.cat.path, r))?;
            if row.clean {
                row.clean = false;
                t.insert(k.as_slice(), row.encode().as_slice())
                    .map_err(|e| self.cat.err(e))?;
            }
        }
        Ok(())
    }

    /// Lists `dir` among the directories the next seal writes.
    fn note_dirty(&mut self, dir: u64) -> Result<()> {
        let mut t = self.inner.open_table(DIRTY).map_err(|e| self.cat.err(e))?;
        t.insert(dir, b"".as_slice()).map_err(|e| self.cat.err(e))?;
        Ok(())
    }

    /// The page rows of `dir` in order, as `(start name, row)`.
    fn page_rows(&self, dir: u64) -> Result<Vec<(Vec<u8>, PageRow)>> {
        let t = self.inner.open_table(PAGES).map_err(|e| self.err(e))?;
        let rows = t
            .range(key(dir, b"").as_slice()..key(dir + 1, b"").as_slice())
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in rows {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let row = PageRow::decode(v.value()).map_err(|r| Error::catalog(&self.cat.path, r))?;
            out.push((k.value()[8..].to_vec(), row));
        }
        Ok(out)
    }

    /// Removes every page row of `dir`.
    fn drop_pages(&mut self, dir: u64) -> Result<()> {
        let starts: Vec<Vec<u8>> = self.page_rows(dir)?.into_iter().map(|(k, _)| k).collect();
        let mut t = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
        for s in starts {
            t.remove(key(dir, &s).as_slice())
                .map_err(|e| self.cat.err(e))?;
        }
        Ok(())
    }

    fn dir_row(&self, dir: u64) -> Result<Option<DirRow>> {
        let t = self.inner.open_table(DIRS).map_err(|e| self.err(e))?;
        let Some(v) = t.get(dir).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        DirRow::decode(v.value())
            .map(Some)
            .map_err(|r| Error::catalog(&self.cat.path, r))
    }

    fn set_dir_row(&mut self, dir: u64, row: &DirRow) -> Result<()> {
        let mut t = self.inner.open_table(DIRS).map_err(|e| self.cat.err(e))?;
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
        self.note_dirty(id)?;
        Ok(id)
    }

    fn cat_meta_in_txn<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let t = self.inner.open_table(META).map_err(|e| self.err(e))?;
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
            self.note_dirty(d)?;
            self.mark_page(row.parent, &row.name)?;
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
            let mut t = self
                .inner
                .open_table(ENTRIES)
                .map_err(|e| self.cat.err(e))?;
            let rows = child_rows(&t, d).map_err(|e| self.cat.err(e))?;
            for (k, v) in &rows {
                t.remove(k.as_slice()).map_err(|e| self.cat.err(e))?;
                if entry_dir(v) != 0 {
                    stack.push(entry_dir(v));
                }
            }
            drop(t);
            for (_, v) in &rows {
                self.count_bytes(v, -1);
            }
            let mut dirs = self.inner.open_table(DIRS).map_err(|e| self.cat.err(e))?;
            dirs.remove(d).map_err(|e| self.cat.err(e))?;
            drop(dirs);
            let mut dirty = self.inner.open_table(DIRTY).map_err(|e| self.cat.err(e))?;
            dirty.remove(d).map_err(|e| self.cat.err(e))?;
            drop(dirty);
            self.drop_pages(d)?;
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
    /// Only the directories listed in `dirty` are visited, and of a paged directory only its
    /// changed pages, so the cost follows the changes. `ends_page` is the page boundary rule
    /// (`docs/format.md` §8.1).
    pub fn seal_trees(
        &mut self,
        store: &mut dyn FnMut(&Tree) -> Result<BlobId>,
        ends_page: &dyn Fn(&[u8]) -> bool,
    ) -> Result<(BlobId, Node)> {
        let listed: Vec<u64> = {
            let t = self.inner.open_table(DIRTY).map_err(|e| self.err(e))?;
            let mut v = Vec::new();
            for item in t.iter().map_err(|e| self.err(e))? {
                v.push(item.map_err(|e| self.err(e))?.0.value());
            }
            v
        };
        // Depth from the parent chain; deepest first so every subdirectory has its tree.
        let mut depth: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        let mut order = Vec::new();
        for &d in &listed {
            let mut chain = Vec::new();
            let mut cur = d;
            let base = loop {
                if cur == 0 {
                    break Some(0);
                }
                if let Some(&k) = depth.get(&cur) {
                    break Some(k);
                }
                match self.dir_row(cur)? {
                    Some(row) => {
                        chain.push(cur);
                        cur = row.parent;
                    }
                    None => break None, // removed since it was listed
                }
            };
            let Some(base) = base else { continue };
            for (i, c) in chain.iter().rev().enumerate() {
                depth.insert(*c, base + 1 + i as u32);
            }
            order.push((depth[&d], d));
        }
        order.sort_unstable_by(|a, b| b.cmp(a));
        for (_, d) in order {
            if self.dir_row(d)?.is_some_and(|r| r.tree.is_none()) {
                self.write_tree(d, store, ends_page)?;
            }
        }
        {
            let mut t = self.inner.open_table(DIRTY).map_err(|e| self.cat.err(e))?;
            for d in listed {
                t.remove(d).map_err(|e| self.cat.err(e))?;
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

    /// The node of entry row `(k, v)` with its subtree filled in from the child's cached tree.
    fn sealed_node(&self, k: &[u8], v: &[u8]) -> Result<Node> {
        let (child, mut node) = self.cat.parse_entry(k, v)?;
        if child != 0 {
            let sub = self.dir_row(child)?.and_then(|r| r.tree).ok_or_else(|| {
                Error::catalog(
                    &self.cat.path,
                    format!("directory {child} has no tree while sealing its parent"),
                )
            })?;
            node.subtree = Some(sub);
        }
        Ok(node)
    }

    fn write_tree(
        &mut self,
        dir: u64,
        store: &mut dyn FnMut(&Tree) -> Result<BlobId>,
        ends_page: &dyn Fn(&[u8]) -> bool,
    ) -> Result<BlobId> {
        let pages = self.page_rows(dir)?;
        let refs = if pages.is_empty() {
            None
        } else {
            let kept = self.rebuild_pages(dir, &pages, store, ends_page)?;
            let total: u64 = kept.iter().map(|r| r.count).sum();
            if total as usize > PAGED_OVER {
                Some(kept)
            } else {
                self.drop_pages(dir)?;
                None
            }
        };
        let id = if let Some(refs) = refs {
            store(&Tree::index(refs))?
        } else {
            let rows = {
                let t = self.inner.open_table(ENTRIES).map_err(|e| self.err(e))?;
                child_rows(&t, dir).map_err(|e| self.err(e))?
            };
            let nodes = rows
                .iter()
                .map(|(k, v)| self.sealed_node(k, v))
                .collect::<Result<Vec<_>>>()?;
            if nodes.len() > PAGED_OVER {
                let mut refs = Vec::new();
                let mut t = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
                for page in paginate(nodes, ends_page) {
                    let start = if refs.is_empty() {
                        Vec::new()
                    } else {
                        page[0].name_bytes().unwrap_or_default()
                    };
                    let count = page.len() as u64;
                    let tree = store(&Tree::listing(page))?;
                    let row = PageRow {
                        clean: true,
                        tree,
                        count,
                    };
                    t.insert(key(dir, &start).as_slice(), row.encode().as_slice())
                        .map_err(|e| self.cat.err(e))?;
                    refs.push(PageRef { tree, count });
                }
                drop(t);
                store(&Tree::index(refs))?
            } else {
                store(&Tree::listing(nodes))?
            }
        };
        let mut row = self
            .dir_row(dir)?
            .ok_or_else(|| Error::catalog(&self.cat.path, format!("directory {dir} has no row")))?;
        row.tree = Some(id);
        self.set_dir_row(dir, &row)?;
        Ok(id)
    }

    /// Rewrites the changed pages of paged directory `dir` (its `pages` rows in order) and returns
    /// every page after the change, in order. Scanning starts at a changed page and cuts pages at
    /// boundary entries; it stops where a page ends just before a clean page's first entry, so
    /// the layout is the one paging from scratch would give (`docs/format.md` §14).
    fn rebuild_pages(
        &mut self,
        dir: u64,
        rows: &[(Vec<u8>, PageRow)],
        store: &mut dyn FnMut(&Tree) -> Result<BlobId>,
        ends_page: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<PageRef>> {
        let mut out: Vec<(Vec<u8>, PageRow)> = Vec::new();
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let mut added: Vec<(Vec<u8>, PageRow)> = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            if rows[i].1.clean {
                out.push(rows[i].clone());
                i += 1;
                continue;
            }
            removed.push(rows[i].0.clone());
            let mut j = i + 1;
            let mut cur: Vec<Node> = Vec::new();
            let mut cur_start: Vec<u8> = Vec::new();
            let scanned: Vec<Row> = {
                // Scan lazily: usually one page and a bit.
                let t = self.inner.open_table(ENTRIES).map_err(|e| self.err(e))?;
                let mut range = t
                    .range(key(dir, &rows[i].0).as_slice()..key(dir + 1, b"").as_slice())
                    .map_err(|e| self.err(e))?;
                let mut got = Vec::new();
                let mut stopped = false;
                for item in range.by_ref() {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let name = &k.value()[8..];
                    while j < rows.len() && rows[j].0.as_slice() < name {
                        removed.push(rows[j].0.clone());
                        j += 1;
                    }
                    if j < rows.len() && rows[j].0.as_slice() == name {
                        let at_boundary = got.last().is_none_or(|(k, _): &Row| ends_page(&k[8..]));
                        if at_boundary && rows[j].1.clean {
                            stopped = true;
                            break;
                        }
                        removed.push(rows[j].0.clone());
                        j += 1;
                    }
                    got.push((k.value().to_vec(), v.value().to_vec()));
                }
                if !stopped {
                    while j < rows.len() {
                        removed.push(rows[j].0.clone());
                        j += 1;
                    }
                }
                got
            };
            let mut pages: Vec<(Vec<u8>, Vec<Node>)> = Vec::new();
            for (k, v) in scanned {
                let name = &k[8..];
                if cur.is_empty() {
                    cur_start = name.to_vec();
                }
                cur.push(self.sealed_node(&k, &v)?);
                if ends_page(name) {
                    pages.push((std::mem::take(&mut cur_start), std::mem::take(&mut cur)));
                }
            }
            if !cur.is_empty() {
                pages.push((cur_start, cur));
            }
            for (start, page) in pages {
                let count = page.len() as u64;
                let tree = store(&Tree::listing(page))?;
                let row = PageRow {
                    clean: true,
                    tree,
                    count,
                };
                out.push((start.clone(), row));
                added.push((start, row));
            }
            i = j;
        }
        // The first page is always keyed by the empty name.
        if let Some(first) = out.first_mut() {
            if !first.0.is_empty() {
                let old = std::mem::take(&mut first.0);
                added.retain(|(k, _)| *k != old);
                removed.push(old);
                added.push((Vec::new(), first.1));
            }
        }
        let mut t = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
        for k in removed {
            t.remove(key(dir, &k).as_slice())
                .map_err(|e| self.cat.err(e))?;
        }
        for (k, row) in &added {
            t.insert(key(dir, k).as_slice(), row.encode().as_slice())
                .map_err(|e| self.cat.err(e))?;
        }
        Ok(out
            .into_iter()
            .map(|(_, r)| PageRef {
                tree: r.tree,
                count: r.count,
            })
            .collect())
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
            if tree.is_paged() {
                // Keep the stored pages, so the first change rewrites one page, not all.
                let mut t = self.inner.open_table(PAGES).map_err(|e| self.cat.err(e))?;
                let mut at = 0usize;
                for (i, p) in tree.pages.iter().enumerate() {
                    let start = match i {
                        0 => Vec::new(),
                        _ => tree
                            .nodes
                            .get(at)
                            .and_then(Node::name_bytes)
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "paged tree {} has fewer entries than its pages",
                                    tree_id.short()
                                ))
                            })?,
                    };
                    let row = PageRow {
                        clean: true,
                        tree: p.tree,
                        count: p.count,
                    };
                    t.insert(key(dir, &start).as_slice(), row.encode().as_slice())
                        .map_err(|e| self.cat.err(e))?;
                    at += p.count as usize;
                }
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
    fn check_row_accepts_what_the_catalog_writes_and_refuses_the_rest() {
        let dir = DirRow {
            parent: 7,
            tree: Some(BlobId([3; 32])),
            name: b"docs".to_vec(),
        };
        assert_eq!(check_row("dirs", &[], &dir.encode()), Ok(()));
        let page = PageRow {
            clean: true,
            tree: BlobId([4; 32]),
            count: 256,
        };
        assert_eq!(check_row("pages", &[], &page.encode()), Ok(()));
        assert_eq!(
            check_row("entries", &key(1, b"f"), &entry_value(0, &file(5))),
            Ok(())
        );
        assert!(check_row("entries", &key(1, b"f"), b"short").is_err());
        assert!(check_row("dirs", &[], &[0; 7]).is_err());
        assert!(check_row("dirs", &[], &[0, 0, 0, 0, 0, 0, 0, 0, 2]).is_err());
        assert!(check_row("pages", &[], &[2; 41]).is_err());
        assert_eq!(
            entry_dir(b"abc"),
            0,
            "a short value is not a directory, not a panic"
        );
    }

    /// Issue 9: only durable commits reach the file, whatever way the catalog goes away (redb 4
    /// makes pending `Durability::None` commits durable on close, so the catalog must not make any).
    #[test]
    fn issue_9_only_durable_commits_reach_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.redb");
        let mut c = Catalog::open(&path).unwrap();
        let mut t = c.begin().unwrap();
        t.put(b"sealed", &file(1)).unwrap();
        t.set_meta("applied", &1u64).unwrap();
        t.commit(true).unwrap();
        let mut t = c.begin().unwrap();
        t.put(b"applied-only", &file(2)).unwrap();
        t.set_meta("applied", &2u64).unwrap();
        t.commit(false).unwrap();
        assert_eq!(
            paths(&c),
            ["applied-only", "sealed"],
            "reads see the open transaction"
        );
        drop(c); // a clean close, as on an error exit
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(paths(&c), ["sealed"]);
        assert_eq!(c.meta::<u64>("applied").unwrap(), Some(1));

        // A panic unwinding past the open catalog.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = c.begin().unwrap();
            t.put(b"during-panic", &file(3)).unwrap();
            t.commit(false).unwrap();
            let _c = c;
            panic!("unwinding with the catalog open");
        }));
        assert!(unwound.is_err());
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(paths(&c), ["sealed"]);

        // A batch dropped half-way discards everything since the last durable commit.
        let mut t = c.begin().unwrap();
        t.put(b"x", &file(4)).unwrap();
        t.commit(false).unwrap();
        let mut t = c.begin().unwrap();
        t.put(b"y", &file(5)).unwrap();
        drop(t);
        c.rewind().unwrap();
        assert_eq!(paths(&c), ["sealed"]);
        // And a rewind does too.
        let mut t = c.begin().unwrap();
        t.put(b"z", &file(6)).unwrap();
        t.commit(false).unwrap();
        c.rewind().unwrap();
        assert_eq!(paths(&c), ["sealed"]);
    }

    #[test]
    fn put_delete_rename_and_seal() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.redb")).unwrap();
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
        let (root, _) = t.seal_trees(&mut store, &|_| false).unwrap();
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
            .seal_trees(
                &mut |tree: &Tree| {
                    n += 1;
                    Ok(BlobId(blake_like(&tree.encode())))
                },
                &|_| false,
            )
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

    /// A stand-in for the keyed boundary rule: about one entry in 16 ends a page.
    fn ends_page(name: &[u8]) -> bool {
        blake3::hash(name).as_bytes()[0].is_multiple_of(16)
    }

    /// Seals `c` and returns the root tree id and every tree written, by id.
    fn seal_all(c: &mut Catalog) -> (BlobId, std::collections::HashMap<BlobId, Tree>) {
        let mut trees = std::collections::HashMap::new();
        let mut t = c.begin().unwrap();
        let (root, _) = t
            .seal_trees(
                &mut |tree: &Tree| {
                    let id = BlobId(*blake3::hash(&tree.encode()).as_bytes());
                    trees.insert(id, tree.clone());
                    Ok(id)
                },
                &ends_page,
            )
            .unwrap();
        t.commit(true).unwrap();
        (root, trees)
    }

    /// Paging from scratch: a new catalog holding the same entries.
    fn fresh_root(c: &mut Catalog) -> BlobId {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Catalog::open(&tmp.path().join("f.redb")).unwrap();
        let mut t = f.begin().unwrap();
        for (path, node) in c.walk().unwrap() {
            t.put(&path, &node).unwrap();
        }
        t.commit(false).unwrap();
        seal_all(&mut f).0
    }

    #[test]
    fn huge_directories_are_paged_and_sealed_page_by_page() {
        use rand::{Rng, SeedableRng};
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.redb")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = c.begin().unwrap();
        for i in 0..1500 {
            t.put(format!("big/f{i:05}").as_bytes(), &file(i)).unwrap();
        }
        t.put(b"big/sub/x", &file(1)).unwrap();
        t.commit(false).unwrap();
        let (root, trees) = seal_all(&mut c);
        assert_eq!(root, fresh_root(&mut c));
        let paged = trees.values().filter(|t| t.is_paged()).count();
        assert_eq!(paged, 1, "big/ is paged");
        let pages = trees.values().find(|t| t.is_paged()).unwrap().pages.len();
        assert!(pages > 40, "{pages} pages");

        // One changed file rewrites one or two pages, the index and the ancestors.
        let mut t = c.begin().unwrap();
        t.put(b"big/f00700", &file(99)).unwrap();
        t.commit(false).unwrap();
        let (root, trees) = seal_all(&mut c);
        assert!(trees.len() <= 4, "{} trees written", trees.len());
        assert_eq!(root, fresh_root(&mut c));

        // Random churn, across the paging threshold and back, and through the subdirectory.
        for round in 0..60 {
            let mut t = c.begin().unwrap();
            let n = rng.gen_range(1..40);
            for _ in 0..n {
                let i = rng.gen_range(0..1600);
                let p = format!("big/f{i:05}");
                match rng.gen_range(0..10) {
                    0..=3 => t.put(p.as_bytes(), &file(rng.gen_range(0..9))),
                    4..=6 => t.delete(p.as_bytes()).map(|_| ()),
                    7 => {
                        let j = rng.gen_range(0..1600);
                        t.rename(p.as_bytes(), format!("big/f{j:05}").as_bytes())
                            .map(|_| ())
                    }
                    8 => t.put(format!("big/sub/y{i}").as_bytes(), &file(1)),
                    _ => t.rename(p.as_bytes(), b"other").map(|_| ()),
                }
                .unwrap();
            }
            if round % 7 == 0 {
                // An empty new directory must get a tree too.
                t.put(format!("big/d{round}").as_bytes(), &default_dir())
                    .unwrap();
            }
            if round == 20 {
                // Shrink below the threshold, then grow past it again.
                for i in 0..700 {
                    t.delete(format!("big/f{i:05}").as_bytes()).unwrap();
                }
            }
            if round == 30 {
                for i in 0..700 {
                    t.put(format!("big/f{i:05}").as_bytes(), &file(3)).unwrap();
                }
            }
            t.commit(false).unwrap();
            let (root, _) = seal_all(&mut c);
            assert_eq!(root, fresh_root(&mut c), "round {round}");
            let sizes: u64 = c
                .walk()
                .unwrap()
                .iter()
                .filter(|(_, n)| n.kind() == NodeType::File)
                .map(|(_, n)| n.size)
                .sum();
            assert_eq!(c.begin().unwrap().bytes_total().unwrap(), sizes);
        }
    }

    fn blake_like(b: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, x) in b.iter().enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*x);
        }
        out
    }
}
