//! `tidemark ls`: the entries of a snapshot, below a path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tidemark_core::snapshot::{Node, NodeType};
use tidemark_core::stats::subtree;

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// Only this path and below.
    pub path: Option<PathBuf>,
    /// Show type, mode, size and time.
    #[arg(short, long)]
    pub long: bool,
}

pub fn run(g: &Global, a: &LsArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    repo.load_index()?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let start = a.path.clone().unwrap_or_else(|| PathBuf::from("/"));
    // A path naming a file lists just that file.
    let (dir, only) = if let Ok(id) = subtree(&repo, &snap.tree, &start) {
        (id, None)
    } else {
        let parent = start.parent().context("no such path")?;
        (
            subtree(&repo, &snap.tree, parent)?,
            start.file_name().map(std::ffi::OsStr::to_os_string),
        )
    };
    let base = if only.is_some() {
        start.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        start.clone()
    };
    let mut stack = vec![(dir, base)];
    while let Some((id, dirpath)) = stack.pop() {
        let tree = repo.load_tree(&id)?;
        for n in tree.nodes.iter().rev() {
            if only.as_ref().is_some_and(|o| *o != n.os_name()) {
                continue;
            }
            if let (Some(sub), None) = (n.subtree, &only) {
                stack.push((sub, dirpath.join(n.os_name())));
            }
        }
        for n in &tree.nodes {
            if only.as_ref().is_some_and(|o| *o != n.os_name()) {
                continue;
            }
            print_node(g, a.long, &dirpath.join(n.os_name()), n)?;
        }
    }
    Ok(Outcome::Ok)
}

fn type_char(t: NodeType) -> char {
    match t {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Chardev => 'c',
        NodeType::Blockdev => 'b',
        NodeType::Socket => 's',
        NodeType::File => '-',
    }
}

fn print_node(g: &Global, long: bool, path: &Path, n: &Node) -> std::io::Result<()> {
    if g.json {
        outln!(
            "{}",
            json!({"path": path, "type": n.kind(), "mode": n.mode, "uid": n.uid, "gid": n.gid, "size": n.size, "mtime_ns": n.mtime_ns, "target": n.target, "links": n.links})
        )?;
    } else if long {
        let t = chrono::DateTime::from_timestamp(n.mtime_ns.div_euclid(1_000_000_000), 0)
            .unwrap_or_default()
            .with_timezone(&chrono::Local);
        outln!(
            "{}{:04o} {:>5} {:>5} {:>12} {} {}",
            type_char(n.kind()),
            n.mode,
            n.uid,
            n.gid,
            n.size,
            t.format("%Y-%m-%d %H:%M:%S"),
            path.display()
        )?;
    } else {
        outln!("{}", path.display())?;
    }
    Ok(())
}
