//! Retention: which snapshots a policy keeps (`tidemark forget`), with the reasons for each.
//!
//! The rules are restic's (`--keep-last`, `--keep-hourly` … `--keep-within`, `--keep-within-hourly`
//! …, `--keep-tag`), plus minutely buckets for the half-second snapshots of `watch`. Each group of
//! snapshots (by host and paths unless told otherwise) is judged on its own. Bucketed rules keep the
//! newest snapshot of each of the N newest buckets that hold one; `within` rules are measured back
//! from the group's newest snapshot, not from now, so a repository that stopped receiving
//! snapshots does not lose its history to the clock. Pure logic: the command does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId, SnapshotId};
use crate::snapshot::Snapshot;

/// Bucket sizes for the bucketed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Span {
    /// Calendar minute.
    Minutely,
    /// Calendar hour.
    Hourly,
    /// Calendar day.
    Daily,
    /// ISO week.
    Weekly,
    /// Calendar month.
    Monthly,
    /// Calendar year.
    Yearly,
}

impl Span {
    /// Every span, shortest first.
    pub const ALL: [Span; 6] = [
        Span::Minutely,
        Span::Hourly,
        Span::Daily,
        Span::Weekly,
        Span::Monthly,
        Span::Yearly,
    ];

    /// The name used in flags and reasons.
    pub fn name(self) -> &'static str {
        match self {
            Span::Minutely => "minutely",
            Span::Hourly => "hourly",
            Span::Daily => "daily",
            Span::Weekly => "weekly",
            Span::Monthly => "monthly",
            Span::Yearly => "yearly",
        }
    }

    /// The bucket a (local) time falls in; equal keys are the same bucket.
    fn bucket(self, t: &DateTime<FixedOffset>) -> (i32, u32, u32, u32, u32) {
        match self {
            Span::Minutely => (t.year(), t.month(), t.day(), t.hour(), t.minute()),
            Span::Hourly => (t.year(), t.month(), t.day(), t.hour(), 0),
            Span::Daily => (t.year(), t.month(), t.day(), 0, 0),
            Span::Weekly => {
                let w = t.iso_week();
                (w.year(), w.week(), 0, 0, 0)
            }
            Span::Monthly => (t.year(), t.month(), 0, 0, 0),
            Span::Yearly => (t.year(), 0, 0, 0, 0),
        }
    }
}

/// A retention policy. Durations are in whole seconds in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Keep the N newest snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest buckets of a span.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<Span, u32>,
    /// Keep everything newer than the group's newest snapshot minus this.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "opt_secs",
        rename = "within_secs"
    )]
    pub within: Option<Duration>,
    /// Keep the newest snapshot of each bucket of a span, within this of the newest snapshot.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        with = "map_secs",
        rename = "within_buckets_secs"
    )]
    pub within_buckets: BTreeMap<Span, Duration>,
    /// Keep snapshots carrying any of these tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Policy {
    /// The default for repositories fed by `watch` twice a second: everything for an hour, then
    /// one per minute for a day, one per hour for a week, one per day for a month, one per month
    /// for a year, one per year for ten; and always the newest.
    pub fn continuous_default() -> Self {
        let h = 3600;
        Policy {
            last: Some(1),
            within: Some(Duration::from_secs(h)),
            within_buckets: BTreeMap::from([
                (Span::Minutely, Duration::from_secs(24 * h)),
                (Span::Hourly, Duration::from_secs(7 * 24 * h)),
                (Span::Daily, Duration::from_secs(31 * 24 * h)),
                (Span::Monthly, Duration::from_secs(366 * 24 * h)),
                (Span::Yearly, Duration::from_secs(10 * 366 * 24 * h)),
            ]),
            ..Policy::default()
        }
    }

    /// Whether the policy keeps nothing at all (refused: `forget` would delete everything).
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.buckets.values().all(|n| *n == 0)
            && self.within.is_none()
            && self.within_buckets.is_empty()
            && self.tags.is_empty()
    }

    /// A one-line description, e.g. `last 1, within 1h, hourly within 7d`.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        if let Some(n) = self.last {
            out.push(format!("last {n}"));
        }
        for (s, n) in &self.buckets {
            out.push(format!("{} {n}", s.name()));
        }
        if let Some(d) = self.within {
            out.push(format!("within {}", human(d)));
        }
        for (s, d) in &self.within_buckets {
            out.push(format!("{} within {}", s.name(), human(*d)));
        }
        for t in &self.tags {
            out.push(format!("tag {t}"));
        }
        out.join(", ")
    }
}

/// The repository's default policy as stored (`docs/format.md` §18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Format version (1).
    pub version: u32,
    /// When it was set (RFC 3339).
    pub time: String,
    /// The rules.
    pub policy: Policy,
    /// Grouping: any of `host`, `paths`, `tags`.
    pub group_by: Vec<String>,
}

impl StoredPolicy {
    /// Encrypts; returns the storage id and bytes.
    pub fn seal(&self, crypto: &Crypto) -> (ObjectId, Vec<u8>) {
        crate::lifecycle::seal_json(crypto, Domain::Policy, self)
    }

    /// Checks and decrypts stored bytes.
    pub fn open(crypto: &Crypto, id: &ObjectId, bytes: &[u8]) -> Result<Self> {
        let p: StoredPolicy =
            crate::lifecycle::open_json(crypto, Domain::Policy, Kind::Policy, id, bytes)?;
        p.check(id)?;
        Ok(p)
    }

    /// Refuses an unknown version or grouping.
    pub(crate) fn check(&self, id: &ObjectId) -> Result<()> {
        if self.version != 1 {
            return Err(Error::corrupt(
                Kind::Policy,
                id,
                format!("unknown policy version {}", self.version),
            ));
        }
        self.grouping()
            .map(|_| ())
            .map_err(|r| Error::corrupt(Kind::Policy, id, r))
    }

    /// The grouping as flags.
    pub fn grouping(&self) -> std::result::Result<GroupBy, String> {
        GroupBy::parse(&self.group_by.join(","))
    }
}

impl GroupBy {
    /// Parses `host,paths,tags` (any subset; empty: one group).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                other => {
                    return Err(format!(
                        "cannot group by {other:?}: use host, paths and/or tags"
                    ))
                }
            }
        }
        Ok(g)
    }

    /// The names of what is grouped by.
    pub fn names(self) -> Vec<String> {
        [
            (self.host, "host"),
            (self.paths, "paths"),
            (self.tags, "tags"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n.to_string())
        .collect()
    }
}

/// `90s` → `1m30s`-style compact durations for messages.
pub fn human(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= n {
            let _ = write!(out, "{}{unit}", s / n);
            s %= n;
        }
    }
    out
}

/// What to group snapshots by before applying a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the set of source paths.
    pub paths: bool,
    /// By the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

/// The key of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host, when grouping by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Sorted paths, when grouping by paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Sorted tags, when grouping by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time, in the zone the buckets were computed in.
    pub time: DateTime<FixedOffset>,
    /// Why it is kept (`last`, `hourly`, `within 1h` …); empty: it is forgotten.
    pub reasons: Vec<String>,
}

impl Decision {
    /// Whether the snapshot stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// A group's decisions, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub key: GroupKey,
    /// Every snapshot of the group, newest first.
    pub decisions: Vec<Decision>,
}

/// The time zone calendar buckets are computed in.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    /// The machine's local zone, with its offset at each snapshot's instant (DST aware).
    Local,
    /// A fixed offset (tests, `TZ`-independent output).
    Fixed(FixedOffset),
}

impl Zone {
    fn apply(self, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        match self {
            Zone::Local => t.with_timezone(&chrono::Local).fixed_offset(),
            Zone::Fixed(o) => t.with_timezone(&o),
        }
    }
}

/// Groups `snapshots` and applies `policy` to each group, with calendar buckets in `tz`.
/// Snapshots whose time does not parse are kept, with that as the reason, so damage never turns
/// into deletion.
pub fn plan(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    tz: Zone,
) -> Vec<GroupPlan> {
    let mut groups: BTreeMap<GroupKey, Vec<(SnapshotId, &Snapshot)>> = BTreeMap::new();
    for (id, s) in snapshots {
        let sorted = |v: &[String]| {
            let set: BTreeSet<String> = v.iter().cloned().collect();
            set.into_iter().collect::<Vec<_>>()
        };
        let key = GroupKey {
            host: group_by.host.then(|| s.hostname.clone()),
            paths: group_by.paths.then(|| sorted(&s.paths)),
            tags: group_by.tags.then(|| sorted(&s.tags)),
        };
        groups.entry(key).or_default().push((*id, s));
    }
    groups
        .into_iter()
        .map(|(key, members)| GroupPlan {
            key,
            decisions: plan_group(&members, policy, tz),
        })
        .collect()
}

fn plan_group(members: &[(SnapshotId, &Snapshot)], policy: &Policy, tz: Zone) -> Vec<Decision> {
    let mut ds: Vec<Decision> = Vec::with_capacity(members.len());
    let mut unparsable = Vec::new();
    for (id, s) in members {
        match DateTime::parse_from_rfc3339(&s.time) {
            Ok(t) => ds.push(Decision {
                id: *id,
                time: tz.apply(t),
                reasons: Vec::new(),
            }),
            Err(_) => unparsable.push(*id),
        }
    }
    // Newest first; the id breaks ties so the plan is deterministic.
    ds.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.0.cmp(&a.id.0)));
    let newest = ds.first().map(|d| d.time);

    if let Some(n) = policy.last {
        for d in ds.iter_mut().take(n as usize) {
            d.reasons.push("last".into());
        }
    }
    for (span, n) in &policy.buckets {
        keep_buckets(&mut ds, *span, Some(*n as usize), None, span.name());
    }
    if let (Some(w), Some(newest)) = (policy.within, newest) {
        let reason = format!("within {}", human(w));
        for d in &mut ds {
            if newest
                .signed_duration_since(d.time)
                .to_std()
                .unwrap_or_default()
                <= w
            {
                d.reasons.push(reason.clone());
            }
        }
    }
    if let Some(newest) = newest {
        for (span, w) in &policy.within_buckets {
            let reason = format!("{} within {}", span.name(), human(*w));
            keep_buckets(&mut ds, *span, None, Some((newest, *w)), &reason);
        }
    }
    if !policy.tags.is_empty() {
        let by_id: BTreeMap<SnapshotId, &Snapshot> =
            members.iter().map(|(i, s)| (*i, *s)).collect();
        for d in &mut ds {
            if let Some(t) = by_id[&d.id].tags.iter().find(|t| policy.tags.contains(t)) {
                d.reasons.push(format!("tag {t}"));
            }
        }
    }
    for id in unparsable {
        ds.push(Decision {
            id,
            time: tz.apply(
                DateTime::from_timestamp(0, 0)
                    .expect("epoch")
                    .fixed_offset(),
            ),
            reasons: vec!["time does not parse".into()],
        });
    }
    ds
}

/// Keeps the newest snapshot of each bucket, for the `limit` newest buckets or for the buckets
/// of snapshots within `within` of the newest. `ds` is newest first.
fn keep_buckets(
    ds: &mut [Decision],
    span: Span,
    limit: Option<usize>,
    within: Option<(DateTime<FixedOffset>, Duration)>,
    reason: &str,
) {
    let mut last_bucket = None;
    let mut taken = 0usize;
    for d in ds.iter_mut() {
        if let Some((newest, w)) = within {
            if newest
                .signed_duration_since(d.time)
                .to_std()
                .unwrap_or_default()
                > w
            {
                break;
            }
        }
        let b = span.bucket(&d.time);
        if last_bucket == Some(b) {
            continue;
        }
        if limit.is_some_and(|l| taken >= l) {
            break;
        }
        last_bucket = Some(b);
        taken += 1;
        d.reasons.push(reason.to_string());
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

mod map_secs {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Span;

    pub fn serialize<S: Serializer>(m: &BTreeMap<Span, Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, v.as_secs())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Span, Duration>, D::Error> {
        Ok(BTreeMap::<Span, u64>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, Duration::from_secs(v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            version: 1,
            time: time.into(),
            hostname: host.into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            paths: vec!["/data".into()],
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            parent: None,
            tree: crate::id::BlobId([0; 32]),
            program_version: String::new(),
            summary: crate::snapshot::Summary::default(),
            revision: None,
            log: None,
            membership: None,
        }
    }

    fn id(i: u32) -> SnapshotId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        crate::id::ObjectId(b)
    }

    fn utc() -> Zone {
        Zone::Fixed(FixedOffset::east_opt(0).unwrap())
    }

    /// One snapshot every `step` seconds for `count` snapshots, ending at 2026-06-30T12:00:00Z.
    fn series(count: u32, step: i64) -> Vec<(SnapshotId, Snapshot)> {
        let end = DateTime::parse_from_rfc3339("2026-06-30T12:00:00Z").unwrap();
        (0..count)
            .map(|i| {
                let t = end - chrono::Duration::seconds(step * i64::from(i));
                (id(i), snap(&t.to_rfc3339(), "h", &[]))
            })
            .collect()
    }

    fn kept(plan: &[GroupPlan]) -> Vec<SnapshotId> {
        plan.iter()
            .flat_map(|g| g.decisions.iter().filter(|d| d.keep()).map(|d| d.id))
            .collect()
    }

    #[test]
    fn last_and_daily_keep_what_restic_keeps() {
        // Every 6 hours for 10 days: 40 snapshots, 4 per day.
        let snaps = series(40, 6 * 3600);
        let p = Policy {
            last: Some(2),
            buckets: BTreeMap::from([(Span::Daily, 3)]),
            ..Policy::default()
        };
        let plan = plan(&snaps, &p, GroupBy::default(), utc());
        let k = kept(&plan);
        // 12:00 (last, daily), 06:00 (last), and the newest of each of the two days before.
        assert_eq!(k.len(), 4, "{k:?}");
        let d = &plan[0].decisions;
        assert_eq!(d[0].reasons, ["last", "daily"]);
        assert_eq!(d[1].reasons, ["last"]);
        assert!(d[2].reasons.is_empty(), "00:00 is the same day as 12:00");
        assert_eq!(d[3].reasons, ["daily"], "18:00 the day before");
        assert_eq!(d[7].reasons, ["daily"]);
        assert!(d[8..].iter().all(|d| !d.keep()));
    }

    #[test]
    fn the_continuous_default_thins_half_second_snapshots() {
        // Two days of snapshots every 30 s (a stand-in for every 0.5 s; the buckets are the same).
        let snaps = series(2 * 24 * 120, 30);
        let plan = plan(
            &snaps,
            &Policy::continuous_default(),
            GroupBy::default(),
            utc(),
        );
        let d = &plan[0].decisions;
        let kept = d.iter().filter(|d| d.keep()).count();
        // The last hour: 121 (both ends); then one a minute for the rest of the day: 23 h × 60;
        // then one an hour for the day before: 24; and a day's and a month's newest.
        assert!(
            (121 + 23 * 60..=121 + 23 * 60 + 30).contains(&kept),
            "{kept} kept of {}",
            d.len()
        );
        assert!(d[0].reasons.contains(&"last".to_string()));
        // Buckets keep their newest snapshot: the last of June 28 stands for that day.
        let day_end = d
            .iter()
            .find(|d| d.time.to_rfc3339() == "2026-06-28T23:59:30+00:00")
            .unwrap();
        assert_eq!(
            day_end.reasons,
            ["hourly within 7d", "daily within 31d"],
            "{day_end:?}"
        );
        assert!(
            !d.last().unwrap().keep(),
            "the oldest is not its day's newest"
        );
    }

    #[test]
    fn groups_tags_and_unparsable_times() {
        let mut snaps = series(5, 3600);
        snaps.push((id(100), snap("2026-06-30T12:00:00Z", "other", &[])));
        snaps.push((id(101), snap("2026-01-01T00:00:00Z", "h", &["keep"])));
        snaps.push((id(102), snap("not a time", "h", &[])));
        let p = Policy {
            last: Some(1),
            tags: vec!["keep".into()],
            ..Policy::default()
        };
        let plan = plan(&snaps, &p, GroupBy::default(), utc());
        assert_eq!(plan.len(), 2, "by host");
        let k = kept(&plan);
        assert!(k.contains(&id(0)) && k.contains(&id(100)) && k.contains(&id(101)));
        assert!(k.contains(&id(102)), "an unparsable time is kept");
        assert_eq!(k.len(), 4);
        let all = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        assert_eq!(plan_len(&snaps, &p, all), 1);
    }

    fn plan_len(snaps: &[(SnapshotId, Snapshot)], p: &Policy, g: GroupBy) -> usize {
        plan(snaps, p, g, utc()).len()
    }

    #[test]
    fn policies_round_trip_through_json() {
        let p = Policy::continuous_default();
        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(!p.is_empty());
        assert!(Policy::default().is_empty());
        assert_eq!(
            p.describe(),
            "last 1, within 1h, minutely within 1d, hourly within 7d, daily within 31d, monthly within 366d, yearly within 3660d"
        );
    }
}
