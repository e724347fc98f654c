//! Trees: one per directory, nodes sorted by name, content-addressed (`docs/format.md` §8).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Serialize};

use crate::id::BlobId;

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    Chardev,
    /// Block device.
    Blockdev,
    /// Unix socket (recorded, restored as nothing).
    Socket,
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    pub name: String,
    /// Value, base64 in JSON.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

/// One directory entry with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// UTF-8 name (absent when the name is not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hex of the raw name bytes when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// Entry type.
    #[serde(rename = "type")]
    pub node_type: NodeTypeField,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner name, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Access time, ns since the epoch.
    pub atime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// `st_ino`.
    pub inode: u64,
    /// `st_dev`.
    pub device_id: u64,
    /// `st_nlink`.
    pub links: u64,
    /// File size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Chunk ids, in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// The source file had holes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    /// Tree id (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// Symlink target, UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Symlink target as hex when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
    /// Device number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Extended attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

/// `NodeType` with a default so `Node` can derive `Default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeTypeField(pub NodeType);

impl Default for NodeTypeField {
    fn default() -> Self {
        NodeTypeField(NodeType::File)
    }
}

fn bytes_to_fields(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(hex::encode(b))),
    }
}

fn fields_to_bytes(s: Option<&String>, h: Option<&String>) -> Option<Vec<u8>> {
    match (s, h) {
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(h)) => hex::decode(h).ok(),
        _ => None,
    }
}

impl Node {
    /// The entry type.
    pub fn kind(&self) -> NodeType {
        self.node_type.0
    }

    /// Sets the name from raw bytes.
    pub fn set_name(&mut self, name: &OsStr) {
        (self.name, self.name_hex) = bytes_to_fields(name.as_bytes());
    }

    /// The name as raw bytes; `None` if the node has neither or both name fields or bad hex.
    pub fn name_bytes(&self) -> Option<Vec<u8>> {
        fields_to_bytes(self.name.as_ref(), self.name_hex.as_ref())
    }

    /// The name as an `OsString` (empty when missing; validation rejects that).
    pub fn os_name(&self) -> OsString {
        OsString::from_vec(self.name_bytes().unwrap_or_default())
    }

    /// Sets the symlink target.
    pub fn set_target(&mut self, target: &OsStr) {
        (self.target, self.target_hex) = bytes_to_fields(target.as_bytes());
    }

    /// The symlink target.
    pub fn target_os(&self) -> Option<OsString> {
        fields_to_bytes(self.target.as_ref(), self.target_hex.as_ref()).map(OsString::from_vec)
    }

    /// Whether an entry name could escape its directory or is otherwise not a plain name.
    pub fn name_problem(name: &[u8]) -> Option<&'static str> {
        if name.is_empty() {
            Some("empty name")
        } else if name == b"." || name == b".." {
            Some("name is . or ..")
        } else if name.contains(&b'/') {
            Some("name contains /")
        } else if name.contains(&0) {
            Some("name contains NUL")
        } else {
            None
        }
    }
}

/// Entries above which a directory is stored as pages (`docs/format.md` §8.1). Which names end
/// a page is keyed, so the crypto decides it (`Crypto::ends_page`).
pub const PAGED_OVER: usize = 1024;

/// One page of a paged tree: a version-1 tree holding `count` consecutive entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// The page's tree id.
    pub tree: BlobId,
    /// Entries in the page.
    pub count: u64,
}

/// A directory listing.
///
/// A version-1 tree is one blob holding `nodes`. A paged directory (version 2, §8.1) is stored as
/// an index blob listing `pages`; `Repository::load_tree` reads the pages too, so a loaded paged
/// tree has both its `pages` and all its `nodes`. [`Tree::encode`] writes the blob for the
/// version: the nodes for 1, the page list for 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    /// Format version: 1, or 2 for a paged directory's index.
    pub version: u32,
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
    /// The pages of a paged directory, in order (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<PageRef>,
}

/// The stored form of a tree, version 1 or 2.
#[derive(Deserialize)]
struct RawTree {
    version: u32,
    #[serde(default)]
    nodes: Option<Vec<Node>>,
    #[serde(default)]
    pages: Option<Vec<PageRef>>,
}

#[derive(Serialize)]
struct ListingOut<'a> {
    version: u32,
    nodes: &'a [Node],
}

#[derive(Serialize)]
struct IndexOut<'a> {
    version: u32,
    pages: &'a [PageRef],
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Tree {
            version: 1,
            nodes: Vec::new(),
            pages: Vec::new(),
        }
    }

    /// A version-1 tree of `nodes` (sorted).
    pub fn listing(nodes: Vec<Node>) -> Self {
        Tree {
            version: 1,
            nodes,
            pages: Vec::new(),
        }
    }

    /// The index of a paged directory.
    pub fn index(pages: Vec<PageRef>) -> Self {
        Tree {
            version: 2,
            nodes: Vec::new(),
            pages,
        }
    }

    /// Whether this is a paged directory's index.
    pub fn is_paged(&self) -> bool {
        self.version == 2
    }

    /// Sorts nodes by name bytes, as the format requires.
    pub fn sort(&mut self) {
        self.nodes.sort_by_cached_key(Node::name_bytes);
    }

    /// Serializes the blob; ids of equal trees are equal because the encoding is deterministic.
    pub fn encode(&self) -> Vec<u8> {
        if self.is_paged() {
            serde_json::to_vec(&IndexOut {
                version: 2,
                pages: &self.pages,
            })
        } else {
            serde_json::to_vec(&ListingOut {
                version: 1,
                nodes: &self.nodes,
            })
        }
        .expect("trees serialize")
    }

    /// Parses one blob and validates it: version, names, order, per-type fields, and for an
    /// index its page list (the pages themselves are separate blobs).
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let raw: RawTree = serde_json::from_slice(bytes).map_err(|e| format!("not a tree: {e}"))?;
        match (raw.version, raw.nodes, raw.pages) {
            (1, Some(nodes), None) => {
                let t = Tree::listing(nodes);
                t.validate()?;
                Ok(t)
            }
            (1, _, _) => Err("a version-1 tree needs nodes and no pages".into()),
            (2, None, Some(pages)) => {
                if pages.is_empty() {
                    return Err("a paged tree without pages".into());
                }
                if let Some(p) = pages.iter().find(|p| p.count == 0) {
                    return Err(format!("page {} is empty", p.tree.short()));
                }
                Ok(Tree::index(pages))
            }
            (2, _, _) => Err("a paged tree needs pages and no nodes".into()),
            (v, _, _) => Err(format!("unknown tree version {v}")),
        }
    }

    /// Checks the listing rules on `nodes`: valid unique names in order, directories with a
    /// subtree, symlinks with a target.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut prev: Option<Vec<u8>> = None;
        for n in &self.nodes {
            let name = n.name_bytes().ok_or("node without a valid name")?;
            if let Some(p) = Node::name_problem(&name) {
                return Err(format!("entry {:?}: {p}", String::from_utf8_lossy(&name)));
            }
            if prev.as_ref().is_some_and(|p| *p >= name) {
                return Err(format!(
                    "entries not sorted or duplicated at {:?}",
                    String::from_utf8_lossy(&name)
                ));
            }
            match n.kind() {
                NodeType::Dir if n.subtree.is_none() => {
                    return Err(format!(
                        "directory {:?} has no subtree",
                        String::from_utf8_lossy(&name)
                    ))
                }
                NodeType::Symlink if n.target_os().is_none() => {
                    return Err(format!(
                        "symlink {:?} has no target",
                        String::from_utf8_lossy(&name)
                    ))
                }
                _ => {}
            }
            prev = Some(name);
        }
        Ok(())
    }

    /// Finds a node by name.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| match &n.name {
                Some(s) => s.as_bytes().cmp(name),
                None => n.name_bytes().unwrap_or_default().as_slice().cmp(name),
            })
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Splits a sorted listing of more than [`PAGED_OVER`] entries into pages (§8.1): a page ends
/// after each entry for which `ends_page(name)` holds, and at the last entry.
pub fn paginate(nodes: Vec<Node>, ends_page: impl Fn(&[u8]) -> bool) -> Vec<Vec<Node>> {
    let mut pages = Vec::new();
    let mut cur = Vec::new();
    for n in nodes {
        let end = ends_page(&n.name_bytes().unwrap_or_default());
        cur.push(n);
        if end {
            pages.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        pages.push(cur);
    }
    pages
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8], t: NodeType) -> Node {
        let mut n = Node {
            node_type: NodeTypeField(t),
            ..Node::default()
        };
        n.set_name(OsStr::from_bytes(name));
        if t == NodeType::Dir {
            n.subtree = Some(BlobId([1; 32]));
        }
        n
    }

    #[test]
    fn tree_round_trip_with_non_utf8_names() {
        let mut t = Tree::new();
        t.nodes.push(node(b"z", NodeType::File));
        t.nodes.push(node(b"a\xff", NodeType::Dir));
        t.sort();
        let back = Tree::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.nodes[0].os_name().as_bytes(), b"a\xff");
        assert!(back.find(b"z").is_some());
    }

    #[test]
    fn decode_refuses_escaping_names_and_disorder() {
        for bad in [&b".."[..], b"a/b", b"", b"."] {
            let mut t = Tree::new();
            let mut n = node(b"x", NodeType::File);
            n.name = Some(String::from_utf8_lossy(bad).into_owned());
            t.nodes.push(n);
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?}");
        }
        let mut t = Tree::new();
        t.nodes.push(node(b"b", NodeType::File));
        t.nodes.push(node(b"a", NodeType::File));
        assert!(Tree::decode(&t.encode()).unwrap_err().contains("sorted"));
    }

    #[test]
    fn paged_index_rules() {
        let page = PageRef {
            tree: BlobId([3; 32]),
            count: 5,
        };
        let t = Tree::index(vec![page, page]);
        let back = Tree::decode(&t.encode()).unwrap();
        assert!(back.is_paged());
        assert_eq!(back.pages, t.pages);
        for (bad, why) in [
            (r#"{"version":2,"pages":[]}"#, "without pages"),
            (
                r#"{"version":2,"nodes":[],"pages":[{"tree":"0303030303030303030303030303030303030303030303030303030303030303","count":1}]}"#,
                "no nodes",
            ),
            (
                r#"{"version":2,"pages":[{"tree":"0303030303030303030303030303030303030303030303030303030303030303","count":0}]}"#,
                "empty",
            ),
            (
                r#"{"version":1,"pages":[{"tree":"0303030303030303030303030303030303030303030303030303030303030303","count":1}]}"#,
                "no pages",
            ),
            (r#"{"version":3,"nodes":[]}"#, "unknown tree version 3"),
        ] {
            let e = Tree::decode(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn pages_end_at_boundaries_and_at_the_last_entry() {
        let nodes: Vec<Node> = (0..100)
            .map(|i| node(format!("n{i:03}").as_bytes(), NodeType::File))
            .collect();
        let pages = paginate(nodes.clone(), |n| n.ends_with(b"9"));
        assert_eq!(pages.len(), 10);
        assert!(pages.iter().all(|p| p.len() == 10));
        let pages = paginate(nodes[..95].to_vec(), |n| n.ends_with(b"9"));
        assert_eq!(pages.last().unwrap().len(), 5);
        assert_eq!(pages.concat(), nodes[..95].to_vec());
    }
}
