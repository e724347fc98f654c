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
            // A dry run is the plan alone, printed.
            let (r, plan) = if dry_run {
                let plan = tidemark_core::repair::plan(&repo)?;
                let planned = (plan.files_to_write(), plan.files_to_delete().len());
                (plan.report, Some(planned))
            } else {
                let host = open::hostname();
                (
                    tidemark_core::repair::repair_index(&mut repo, &host, false)?,
                    None,
                )
            };
            if g.json {
                let mut v = serde_json::to_value(&r)?;
                if let Some((write, delete)) = plan {
                    v["index_files_to_write"] = write.into();
                    v["index_files_to_delete"] = delete.into();
                }
                outln!("{v}")?;
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
                if let Some((write, delete)) = plan {
                    outln!(
                        "dry run: would write {write} index files, then delete the {delete} old \
                         ones; nothing written"
                    )?;
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
