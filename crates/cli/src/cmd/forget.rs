//! `tidemark forget`: which snapshots stay (`tidemark_core::forget` decides, this does I/O).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use tidemark_core::forget::{self, Decision, GroupBy, Policy, Span, Zone};
use tidemark_core::id::{Kind, SnapshotId};
use tidemark_core::snapshot::Snapshot;

use crate::args::Global;
use crate::open;
use crate::Outcome;

/// The rules of a policy, as flags.
#[allow(clippy::struct_field_names)] // the flags are --keep-*, as in restic
#[derive(Debug, Args, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N minutes that have one.
    #[arg(long, value_name = "N")]
    pub keep_minutely: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N (ISO) weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within DURATION of the group's newest (1h, 7d, 1y, 1d12h).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within: Option<Duration>,
    /// Keep one snapshot per minute within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_minutely: Option<Duration>,
    /// Keep one snapshot per hour within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_hourly: Option<Duration>,
    /// Keep one snapshot per day within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_daily: Option<Duration>,
    /// Keep one snapshot per week within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_weekly: Option<Duration>,
    /// Keep one snapshot per month within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_monthly: Option<Duration>,
    /// Keep one snapshot per year within DURATION of the newest.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::duration)]
    pub keep_within_yearly: Option<Duration>,
    /// Keep snapshots that carry this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    pub keep_tag: Vec<String>,
}

impl KeepArgs {
    /// The policy the flags describe (empty when none was given).
    pub fn policy(&self) -> Policy {
        let counts = [
            (Span::Minutely, self.keep_minutely),
            (Span::Hourly, self.keep_hourly),
            (Span::Daily, self.keep_daily),
            (Span::Weekly, self.keep_weekly),
            (Span::Monthly, self.keep_monthly),
            (Span::Yearly, self.keep_yearly),
        ];
        let within = [
            (Span::Minutely, self.keep_within_minutely),
            (Span::Hourly, self.keep_within_hourly),
            (Span::Daily, self.keep_within_daily),
            (Span::Weekly, self.keep_within_weekly),
            (Span::Monthly, self.keep_within_monthly),
            (Span::Yearly, self.keep_within_yearly),
        ];
        Policy {
            last: self.keep_last,
            buckets: counts
                .into_iter()
                .filter_map(|(s, n)| n.map(|n| (s, n)))
                .collect(),
            within: self.keep_within,
            within_buckets: within
                .into_iter()
                .filter_map(|(s, d)| d.map(|d| (s, d)))
                .collect(),
            tags: self.keep_tag.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshot ids (or unique prefixes) to forget, instead of applying a policy.
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Judge snapshots in groups of equal host, paths and/or tags (e.g. `host,paths`; empty:
    /// all together). Default: the stored policy's, else `host,paths`.
    #[arg(long, value_name = "LIST")]
    pub group_by: Option<String>,
    /// Only consider snapshots taken on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only consider snapshots that include this path (repeatable).
    #[arg(long)]
    pub path: Vec<PathBuf>,
    /// Only consider snapshots that carry this tag (repeatable: any of them).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Print what would be forgotten; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Then run `prune` with its defaults.
    #[arg(long)]
    pub prune: bool,
}

/// The policy in force: the flags, else the stored one, else the built-in default.
pub(super) fn effective(
    repo: &tidemark_core::repo::Repository,
    keep: &KeepArgs,
    group_by: Option<&str>,
) -> Result<(Policy, GroupBy, &'static str)> {
    let flags = keep.policy();
    let stored = repo.load_policy()?;
    let group = match (group_by, &stored) {
        (Some(g), _) => GroupBy::parse(g).map_err(|e| anyhow!(e))?,
        (None, Some(s)) => s.grouping().map_err(|e| anyhow!(e))?,
        (None, None) => GroupBy::default(),
    };
    Ok(if !flags.is_empty() {
        (flags, group, "flags")
    } else if let Some(s) = stored {
        (s.policy, group, "repository")
    } else {
        (Policy::continuous_default(), group, "built-in default")
    })
}

fn key_text(k: &forget::GroupKey) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &k.host {
        parts.push(format!("host {h}"));
    }
    if let Some(p) = &k.paths {
        parts.push(format!("paths {}", p.join(", ")));
    }
    if let Some(t) = &k.tags {
        parts.push(format!("tags [{}]", t.join(",")));
    }
    if parts.is_empty() {
        "all snapshots".into()
    } else {
        parts.join(", ")
    }
}

fn when(d: &Decision) -> String {
    d.time.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn run(g: &Global, a: &ForgetArgs) -> Result<Outcome> {
    let repo = open::open(g)?;
    let filter = crate::cmd::snapshot_filter(a.host.as_ref(), &a.path)?;
    let all: Vec<(SnapshotId, Snapshot)> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| {
            filter.matches(s) && (a.tag.is_empty() || s.tags.iter().any(|t| a.tag.contains(t)))
        })
        .collect();

    let (remove, plan_json, text): (Vec<SnapshotId>, serde_json::Value, Vec<String>) =
        if a.snapshots.is_empty() {
            let (policy, group, source) = effective(&repo, &a.keep, a.group_by.as_deref())?;
            if policy.is_empty() {
                bail!("the policy keeps nothing; name the snapshots to forget them all");
            }
            let plan = forget::plan(&all, &policy, group, Zone::Local);
            let mut text = vec![format!("policy ({source}): {}", policy.describe())];
            let mut remove = Vec::new();
            for gp in &plan {
                let (keep, drop): (Vec<&Decision>, Vec<&Decision>) =
                    gp.decisions.iter().partition(|d| d.keep());
                text.push(format!(
                    "{}: keep {} of {}, forget {}",
                    key_text(&gp.key),
                    keep.len(),
                    gp.decisions.len(),
                    drop.len()
                ));
                if let (Some(first), Some(last)) = (drop.last(), drop.first()) {
                    text.push(format!("  forgotten: {} … {}", when(first), when(last)));
                }
                remove.extend(drop.iter().map(|d| d.id));
            }
            let json = serde_json::json!({
                "policy": policy,
                "policy_source": source,
                "group_by": group.names(),
                "groups": plan.iter().map(|gp| serde_json::json!({
                    "key": gp.key,
                    "keep": gp.decisions.iter().filter(|d| d.keep()).map(|d| serde_json::json!({
                        "id": d.id, "time": d.time.to_rfc3339(), "reasons": d.reasons,
                    })).collect::<Vec<_>>(),
                    "remove": gp.decisions.iter().filter(|d| !d.keep()).map(|d| serde_json::json!({
                        "id": d.id, "time": d.time.to_rfc3339(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            (remove, json, text)
        } else {
            if !a.keep.policy().is_empty() {
                bail!("give either snapshot ids or --keep-* rules, not both");
            }
            let mut remove = Vec::new();
            for spec in &a.snapshots {
                let found: Vec<&SnapshotId> = all
                    .iter()
                    .map(|(id, _)| id)
                    .filter(|id| id.to_hex().starts_with(spec.as_str()))
                    .collect();
                match found.as_slice() {
                    [one] => remove.push(**one),
                    [] => bail!("no snapshot {spec:?}"),
                    _ => bail!(
                        "snapshot prefix {spec:?} is ambiguous ({} match)",
                        found.len()
                    ),
                }
            }
            remove.sort_by_key(|id| id.0);
            remove.dedup();
            let json = serde_json::json!({ "remove": remove });
            (remove, json, Vec::new())
        };

    if !a.dry_run {
        delete_snapshots(&repo, &remove)?;
    }
    drop(repo);
    let mut out = std::io::stdout().lock();
    if g.json {
        let mut v = plan_json;
        v["dry_run"] = a.dry_run.into();
        v["forgotten"] = remove.len().into();
        writeln!(out, "{v}")?;
    } else if !g.quiet {
        for t in text {
            writeln!(out, "{t}")?;
        }
        let verb = if a.dry_run { "would forget" } else { "forgot" };
        let hint = if a.prune {
            ""
        } else {
            "; run `tidemark prune` to free the data only they used"
        };
        writeln!(
            out,
            "{verb} {} of {} snapshots{hint}",
            remove.len(),
            all.len()
        )?;
    }
    drop(out);
    if a.prune {
        let p = super::prune::PruneArgs {
            dry_run: a.dry_run,
            ..super::prune::PruneArgs::default()
        };
        return super::prune::run(g, &p);
    }
    Ok(Outcome::Ok)
}

/// Deletes snapshot objects, several at a time (object stores answer deletes slowly).
fn delete_snapshots(
    repo: &tidemark_core::repo::Repository,
    ids: &[SnapshotId],
) -> tidemark_core::Result<()> {
    let store = repo.store();
    let per = ids.len().div_ceil(8).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(per)
            .map(|part| {
                s.spawn(move || -> tidemark_core::Result<()> {
                    for id in part {
                        store.delete(Kind::Snapshot, id)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("delete thread panicked"))
    })
}
