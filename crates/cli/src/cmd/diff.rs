//! `tidemark diff`: what changed between two snapshots.

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tidemark_core::snapshot::{self, ChangeKind, NodeType};

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Older snapshot.
    pub first: String,
    /// Newer snapshot.
    pub second: String,
}

pub fn run(g: &Global, a: &DiffArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    repo.load_index()?;
    let (id1, s1) = repo.find_snapshot(&a.first)?;
    let (id2, s2) = repo.find_snapshot(&a.second)?;
    let changes = snapshot::diff(&|id| repo.load_tree(id), &s1.tree, &s2.tree)?;
    let count = |k: ChangeKind| changes.iter().filter(|c| c.kind == k).count();
    if g.json {
        for c in &changes {
            outln!(
                "{}",
                json!({"message_type": "change", "path": c.path, "modifier": c.kind, "type": c.node_type})
            )?;
        }
        outln!(
            "{}",
            json!({"message_type": "statistics", "source_snapshot": id1, "target_snapshot": id2, "added": count(ChangeKind::Added),
            "removed": count(ChangeKind::Removed), "modified": count(ChangeKind::Modified), "metadata": count(ChangeKind::Metadata)})
        )?;
        return Ok(Outcome::Ok);
    }
    if !g.quiet {
        outln!("comparing snapshot {} to {}:", id1.short(), id2.short())?;
    }
    for c in &changes {
        let m = match c.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'U',
        };
        let slash = if c.node_type == NodeType::Dir {
            "/"
        } else {
            ""
        };
        outln!("{m}    {}{slash}", c.path.display())?;
    }
    if !g.quiet {
        outln!(
            "\n{} added, {} removed, {} modified, {} metadata only",
            count(ChangeKind::Added),
            count(ChangeKind::Removed),
            count(ChangeKind::Modified),
            count(ChangeKind::Metadata)
        )?;
    }
    Ok(Outcome::Ok)
}
