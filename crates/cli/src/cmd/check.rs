//! `tidemark check`: verify the structure, and with --read-data the bytes.

use anyhow::Result;
use clap::Args;
use tidemark_core::check::{self, CheckOptions, DataSubset};

use crate::args::Global;
use crate::output::outln;
use crate::{open, progress, Outcome};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read, decrypt and authenticate every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Read only a part of the packs: N/M (part N of M, by pack id; runs 1/M … M/M together read
    /// everything once), P% (a random P percent of the packs) or SIZE (random packs up to e.g.
    /// 500MiB). Implies --read-data.
    #[arg(long, value_name = "N/M|P%|SIZE", value_parser = crate::parse::data_subset)]
    pub read_data_subset: Option<tidemark_core::check::DataSubset>,
}

pub fn run(g: &Global, a: &CheckArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let subset = a.read_data_subset.unwrap_or_default();
    let read_data = a.read_data || a.read_data_subset.is_some();
    if !g.quiet && !g.json {
        let what = match subset {
            _ if !read_data => String::new(),
            DataSubset::All => " (reading all data)".into(),
            DataSubset::Part { n, of } => format!(" (reading data of pack part {n}/{of})"),
            DataSubset::Fraction(f) => format!(" (reading data of {}% of the packs)", f * 100.0),
            DataSubset::Bytes(b) => format!(" (reading {} of data)", progress::bytes(b)),
        };
        outln!("checking repository {}{what}", repo.store().location())?;
    }
    let r = check::check(&repo, CheckOptions { read_data, subset })?;
    if g.json {
        outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        for w in &r.warnings {
            outln!("warning: {w}")?;
        }
        for e in &r.errors {
            outln!("error: {}: {}", e.object, e.error)?;
            for a in &e.affected {
                outln!("       affects {a}")?;
            }
        }
        if !g.quiet {
            outln!(
                "{} snapshots, {} trees, {} packs, {} blobs checked",
                r.snapshots,
                r.trees,
                r.packs,
                r.blobs
            )?;
            if read_data {
                outln!(
                    "{} blobs in {} of {} packs read and authenticated ({})",
                    r.blobs_read,
                    r.packs_read,
                    r.packs,
                    progress::bytes(r.bytes_read)
                )?;
            }
        }
        if r.errors.is_empty() {
            if !g.quiet {
                outln!("no errors were found")?;
            }
        } else {
            eprintln!("{} errors found: the repository is damaged", r.errors.len());
        }
    }
    Ok(if r.errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Damaged
    })
}
