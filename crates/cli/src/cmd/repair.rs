//! `tidemark repair index`: rebuild the index from the packs.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairCommand,
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers, replacing every index file (for lost or damaged
    /// index files). Safe while backups and watchers run.
    Index {
        /// Read the headers and report, but write and delete nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
}

pub fn run(g: &Global, a: &RepairArgs) -> Result<Outcome> {
    match a.what {
        RepairCommand::Index { dry_run } => {
            let mut repo = open::open(g)?;
            let r = tidemark_core::repair::repair_index(&mut repo, &open::hostname(), dry_run)?;
            if g.json {
                outln!("{}", serde_json::to_string(&r)?)?;
                return Ok(Outcome::Ok);
            }
            for f in &r.index_files_damaged {
                outln!("damaged: {f}")?;
            }
            for (p, e) in &r.packs_damaged {
                outln!("damaged: pack {}: {e}", &p[..16])?;
            }
            if !g.quiet {
                outln!(
                    "{} packs read ({} not in any index before, {} damaged of which {} kept from \
                     the old index), {} blobs; old index: {} files ({} damaged), {} packs it \
                     listed are gone",
                    r.packs_indexed,
                    r.packs_added,
                    r.packs_damaged.len(),
                    r.packs_carried_over,
                    r.blobs,
                    r.index_files_before,
                    r.index_files_damaged.len(),
                    r.packs_missing
                )?;
                if dry_run {
                    outln!("dry run: nothing written")?;
                } else {
                    outln!(
                        "wrote {} index files, deleted {} old ones",
                        r.index_files_written,
                        r.index_files_deleted
                    )?;
                }
            }
            Ok(Outcome::Ok)
        }
    }
}
