//! Reading the source tree: entry metadata → [`Node`], exclude patterns.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use globset::{GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
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

/// Exclude patterns, restic style: a pattern without `/` matches an entry's name anywhere; one
/// with `/` matches the absolute path (a relative one may start anywhere). `*` stays within a
/// component, `**` crosses them.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl Excludes {
    /// Compiles patterns; empty lines and `#` comments are ignored.
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n, mut p) = (0, 0);
        for pat in patterns
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty() && !s.starts_with('#'))
        {
            let pat = pat.trim_end_matches('/');
            let build = |g: &str| {
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Invalid(format!("bad exclude pattern {pat:?}: {e}")))
            };
            if pat.contains('/') {
                let full = if pat.starts_with('/') {
                    pat.to_owned()
                } else {
                    format!("**/{pat}")
                };
                paths.add(build(&full)?);
                paths.add(build(&format!("{full}/**"))?);
                p += 1;
            } else {
                names.add(build(pat)?);
                n += 1;
            }
        }
        Ok(Excludes {
            names: (n > 0)
                .then(|| names.build())
                .transpose()
                .map_err(|e| Error::Invalid(e.to_string()))?,
            paths: (p > 0)
                .then(|| paths.build())
                .transpose()
                .map_err(|e| Error::Invalid(e.to_string()))?,
        })
    }

    /// Whether `path` (absolute) is excluded.
    pub fn matches(&self, path: &Path) -> bool {
        if let (Some(set), Some(name)) = (&self.names, path.file_name()) {
            if set.is_match(Path::new(name)) {
                return true;
            }
        }
        self.paths.as_ref().is_some_and(|set| set.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_semantics() {
        let e = Excludes::new(&[
            "*.tmp".into(),
            "cache/".into(),
            "/abs/skip".into(),
            "# comment".into(),
        ])
        .unwrap();
        assert!(e.matches(Path::new("/x/y/a.tmp")));
        assert!(!e.matches(Path::new("/x/y/a.tmpx")));
        assert!(e.matches(Path::new("/x/cache")));
        assert!(e.matches(Path::new("/abs/skip")));
        assert!(!e.matches(Path::new("/other/abs/skip")));
        assert!(!Excludes::default().matches(Path::new("/a")));
    }
}
