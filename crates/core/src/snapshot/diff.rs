//! The difference between two snapshots' trees. Identical subtrees have identical ids, so only
//! the directories that changed are read, through the loader the caller hands in (a
//! repository's `load_tree`), so the diff knows trees, not where they are stored.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Node, NodeType, Tree};
use crate::error::Result;
use crate::id::BlobId;

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the second snapshot.
    Added,
    /// Only in the first snapshot.
    Removed,
    /// In both, content differs (or the type changed).
    Modified,
    /// In both, same content, metadata differs.
    Metadata,
}

/// One differing path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Path inside the snapshot, starting with `/`.
    pub path: PathBuf,
    /// What changed.
    pub kind: ChangeKind,
    /// Entry type in the newer snapshot (the older one for removals).
    pub node_type: NodeType,
}

/// Reads one tree by id (`|id| repo.load_tree(id)`).
pub type LoadTree<'a> = dyn Fn(&BlobId) -> Result<Tree> + 'a;

/// Lists the differences between two trees, in path order, reading trees with `load`.
/// Directories that are added or removed are listed with everything under them.
pub fn diff(load: &LoadTree<'_>, a: &BlobId, b: &BlobId) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_trees(load, Path::new("/"), Some(a), Some(b), &mut out)?;
    Ok(out)
}

fn diff_trees(
    load: &LoadTree<'_>,
    dir: &Path,
    a: Option<&BlobId>,
    b: Option<&BlobId>,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let ta = a.map(load).transpose()?.unwrap_or_default();
    let tb = b.map(load).transpose()?.unwrap_or_default();
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let na = ta.nodes.get(i);
        let nb = tb.nodes.get(j);
        let ord = match (na, nb) {
            (Some(x), Some(y)) => x.name_bytes().cmp(&y.name_bytes()),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                let n = na.expect("left side present");
                whole(load, dir, n, ChangeKind::Removed, out)?;
                i += 1;
            }
            Ordering::Greater => {
                let n = nb.expect("right side present");
                whole(load, dir, n, ChangeKind::Added, out)?;
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (na.expect("left"), nb.expect("right"));
                let path = dir.join(y.os_name());
                if x.kind() != y.kind() {
                    whole(load, dir, x, ChangeKind::Removed, out)?;
                    whole(load, dir, y, ChangeKind::Added, out)?;
                } else if y.kind() == NodeType::Dir {
                    if !same_metadata(x, y) {
                        out.push(Change {
                            path: path.clone(),
                            kind: ChangeKind::Metadata,
                            node_type: NodeType::Dir,
                        });
                    }
                    diff_trees(load, &path, x.subtree.as_ref(), y.subtree.as_ref(), out)?;
                } else if x.content != y.content
                    || x.target_os() != y.target_os()
                    || x.rdev != y.rdev
                    || x.size != y.size
                {
                    out.push(Change {
                        path,
                        kind: ChangeKind::Modified,
                        node_type: y.kind(),
                    });
                } else if !same_metadata(x, y) {
                    out.push(Change {
                        path,
                        kind: ChangeKind::Metadata,
                        node_type: y.kind(),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn same_metadata(x: &Node, y: &Node) -> bool {
    x.mode == y.mode
        && x.uid == y.uid
        && x.gid == y.gid
        && x.mtime_ns == y.mtime_ns
        && x.xattrs == y.xattrs
}

fn whole(
    load: &LoadTree<'_>,
    dir: &Path,
    n: &Node,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    let path = dir.join(n.os_name());
    out.push(Change {
        path: path.clone(),
        kind,
        node_type: n.kind(),
    });
    if let Some(sub) = &n.subtree {
        let (a, b) = if kind == ChangeKind::Removed {
            (Some(sub), None)
        } else {
            (None, Some(sub))
        };
        diff_trees(load, &path, a, b, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::snapshot::NodeTypeField;

    fn node(name: &str, node_type: NodeType, content: u8, subtree: Option<BlobId>) -> Node {
        Node {
            name: Some(name.into()),
            node_type: NodeTypeField(node_type),
            content: vec![BlobId([content; 32])],
            subtree,
            ..Node::default()
        }
    }

    /// Trees come from the loader alone: a map here. An unchanged subtree (same id) is not read.
    #[test]
    fn diff_reads_trees_through_its_loader() {
        let (old_root, new_root, sub, unread) = (
            BlobId([1; 32]),
            BlobId([2; 32]),
            BlobId([3; 32]),
            BlobId([4; 32]),
        );
        let trees: HashMap<BlobId, Tree> = [
            (
                old_root,
                Tree::listing(vec![
                    node("a", NodeType::File, 1, None),
                    node("gone", NodeType::File, 2, None),
                    node("same", NodeType::Dir, 0, Some(unread)),
                ]),
            ),
            (
                new_root,
                Tree::listing(vec![
                    node("a", NodeType::File, 9, None),
                    node("d", NodeType::Dir, 0, Some(sub)),
                    node("same", NodeType::Dir, 0, Some(unread)),
                ]),
            ),
            (sub, Tree::listing(vec![node("f", NodeType::File, 3, None)])),
        ]
        .into_iter()
        .collect();
        let load = |id: &BlobId| {
            trees
                .get(id)
                .cloned()
                .ok_or_else(|| crate::Error::Invalid(format!("tree {} read", id.short())))
        };
        let got: Vec<(String, ChangeKind)> = diff(&load, &old_root, &new_root)
            .unwrap()
            .into_iter()
            .map(|c| (c.path.display().to_string(), c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/a".into(), ChangeKind::Modified),
                ("/d".into(), ChangeKind::Added),
                ("/d/f".into(), ChangeKind::Added),
                ("/gone".into(), ChangeKind::Removed),
            ]
        );
    }
}
