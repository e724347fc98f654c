//! The difference between two snapshots' trees. Identical subtrees have identical ids, so only
//! the directories that changed are read.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Node, NodeType};
use crate::error::Result;
use crate::id::BlobId;
use crate::repo::Repository;

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

/// Lists the differences between two trees, in path order. Directories that are added or
/// removed are listed with everything under them.
pub fn diff(repo: &Repository, a: &BlobId, b: &BlobId) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_trees(repo, Path::new("/"), Some(a), Some(b), &mut out)?;
    Ok(out)
}

fn diff_trees(
    repo: &Repository,
    dir: &Path,
    a: Option<&BlobId>,
    b: Option<&BlobId>,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let ta = a
        .map(|id| repo.load_tree(id))
        .transpose()?
        .unwrap_or_default();
    let tb = b
        .map(|id| repo.load_tree(id))
        .transpose()?
        .unwrap_or_default();
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
                whole(repo, dir, n, ChangeKind::Removed, out)?;
                i += 1;
            }
            Ordering::Greater => {
                let n = nb.expect("right side present");
                whole(repo, dir, n, ChangeKind::Added, out)?;
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (na.expect("left"), nb.expect("right"));
                let path = dir.join(y.os_name());
                if x.kind() != y.kind() {
                    whole(repo, dir, x, ChangeKind::Removed, out)?;
                    whole(repo, dir, y, ChangeKind::Added, out)?;
                } else if y.kind() == NodeType::Dir {
                    if !same_metadata(x, y) {
                        out.push(Change {
                            path: path.clone(),
                            kind: ChangeKind::Metadata,
                            node_type: NodeType::Dir,
                        });
                    }
                    diff_trees(repo, &path, x.subtree.as_ref(), y.subtree.as_ref(), out)?;
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
    repo: &Repository,
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
        diff_trees(repo, &path, a, b, out)?;
    }
    Ok(())
}
