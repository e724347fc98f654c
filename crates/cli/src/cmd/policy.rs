//! `tidemark policy`: show, set or reset the repository's default retention policy.

use std::io::Write;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use tidemark_core::forget::{GroupBy, Policy, StoredPolicy};
use tidemark_core::id::Kind;

use crate::args::Global;
use crate::open;
use crate::Outcome;

use super::forget::{effective, KeepArgs};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[allow(clippy::large_enum_variant)] // parsed once per run
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy `forget` applies when given no --keep-* flag.
    Show,
    /// Store the given rules as the repository's default policy.
    Set {
        #[command(flatten)]
        keep: KeepArgs,
        /// Grouping, as for `forget --group-by` (default `host,paths`).
        #[arg(long, value_name = "LIST")]
        group_by: Option<String>,
    },
    /// Remove the stored policy: the built-in default applies again.
    Reset,
}

pub fn run(g: &Global, a: &PolicyArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let mut out = std::io::stdout().lock();
    match &a.command {
        PolicyCommand::Show => {
            let (policy, group, source) = effective(&repo, &KeepArgs::default(), None)?;
            if g.json {
                let v = serde_json::json!({
                    "source": source, "policy": policy, "group_by": group.names(),
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{} ({source})", policy.describe())?;
                writeln!(out, "grouped by: {}", group.names().join(","))?;
            }
        }
        PolicyCommand::Set { keep, group_by } => {
            let policy = keep.policy();
            if policy.is_empty() {
                bail!("a policy needs at least one --keep-* rule");
            }
            let group = match group_by {
                Some(s) => GroupBy::parse(s).map_err(|e| anyhow!(e))?,
                None => GroupBy::default(),
            };
            let stored = StoredPolicy {
                version: 1,
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                policy,
                group_by: group.names(),
            };
            repo.save_policy(&stored)?;
            if !g.quiet {
                writeln!(out, "policy set: {}", stored.policy.describe())?;
            }
        }
        PolicyCommand::Reset => {
            for (id, _) in repo.store().list(Kind::Policy)? {
                repo.store().delete(Kind::Policy, &id)?;
            }
            if !g.quiet {
                writeln!(
                    out,
                    "policy reset: {}",
                    Policy::continuous_default().describe()
                )?;
            }
        }
    }
    Ok(Outcome::Ok)
}
