//! `tidemark prune`: free the data no snapshot uses, while writers keep running.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::args::Global;
use crate::open;
use crate::Outcome;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Print the plan; store and delete nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Delete condemned packs only after this long (and once every writer has seen them).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::parse::duration)]
    pub keep_condemned: Duration,
    /// Repack a pack when at least this share of it is unused.
    #[arg(long, value_name = "PERCENT", default_value = "10%", value_parser = crate::parse::percent)]
    pub repack_threshold: f64,
    /// Stop repacking once unused data is at most this share of the repository after the prune.
    #[arg(long, value_name = "PERCENT", default_value = "5%", value_parser = crate::parse::percent)]
    pub max_unused: f64,
    /// Repack at most this much per run (e.g. 10GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size)]
    pub max_repack_size: Option<u64>,
}

impl Default for PruneArgs {
    fn default() -> Self {
        PruneArgs {
            dry_run: false,
            keep_condemned: Duration::from_secs(3600),
            repack_threshold: 0.10,
            max_unused: 0.05,
            max_repack_size: None,
        }
    }
}

pub fn run(g: &Global, a: &PruneArgs) -> Result<Outcome> {
    let mut repo = open::open(g)?;
    let opts = tidemark_core::prune::PruneOptions {
        dry_run: a.dry_run,
        keep_condemned: a.keep_condemned,
        repack_threshold: a.repack_threshold,
        max_unused: a.max_unused,
        max_repack_bytes: a.max_repack_size,
        hostname: open::hostname(),
    };
    let t = std::time::Instant::now();
    // A dry run is the plan alone, printed; otherwise prune plans and executes under a session.
    let (r, plan) = if a.dry_run {
        let clock = tidemark_core::lifecycle::SystemClock;
        let plan = tidemark_core::prune::plan(&mut repo, &opts, &clock)?;
        (plan.report.clone(), Some(plan))
    } else {
        (tidemark_core::prune::prune(&mut repo, &opts)?, None)
    };
    let secs = t.elapsed().as_secs_f64();
    let rss = crate::cmd::peak_rss();
    let mut out = std::io::stdout().lock();
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = secs.into();
        v["peak_rss_bytes"] = rss.into();
        if let Some(plan) = &plan {
            v["plan"] = serde_json::to_value(plan)?;
        }
        writeln!(out, "{v}")?;
    } else if !g.quiet {
        use crate::progress::bytes;
        let verb = |now: &str, dry: &str| {
            if r.dry_run {
                dry.to_string()
            } else {
                now.to_string()
            }
        };
        writeln!(
            out,
            "{} snapshots, {} packs ({}): {} blobs used, {} unused",
            r.snapshots,
            r.packs,
            bytes(r.bytes),
            r.blobs_used,
            r.blobs_unused
        )?;
        writeln!(
            out,
            "{} {} packs ({}) condemned by earlier prunes; {} resurrected (used again); {} still waiting",
            verb("deleted", "would delete"),
            r.packs_deleted,
            bytes(r.bytes_deleted),
            r.packs_resurrected,
            r.packs_waiting
        )?;
        for w in &r.waiting_for {
            writeln!(out, "  waiting for {w}")?;
        }
        writeln!(
            out,
            "{} {} unused packs and {} repacked ones ({}; freed by a prune after --keep-condemned); {} new packs ({})",
            verb("condemned", "would condemn"),
            r.packs_unused,
            r.packs_repacked,
            bytes(r.bytes_condemned),
            r.packs_new,
            bytes(r.bytes_written)
        )?;
        writeln!(
            out,
            "unused data left in live packs: {}; {:.1} s, peak RSS {}, ~{} bytes of tables per blob",
            bytes(r.bytes_unused_left),
            secs,
            bytes(rss),
            r.bytes_per_blob
        )?;
        if let Some(plan) = &plan {
            for (verb, packs) in [
                ("delete", &plan.delete),
                ("condemn", &plan.condemn),
                ("repack", &plan.repack),
                ("resurrect", &plan.resurrect),
            ] {
                for p in packs {
                    writeln!(
                        out,
                        "  would {verb} pack {} ({} used of {})",
                        p.pack.short(),
                        bytes(p.used),
                        bytes(p.bytes)
                    )?;
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
