//! The snapshot list as the mount shows it: `snapshots/<time>` and `ids/<short id>` names.

use std::collections::HashMap;

use tidemark_core::snapshot::SnapshotList;

/// The snapshots as of the last listing, with their names.
pub(super) struct View {
    pub(super) list: SnapshotList,
    /// `snapshots/` names, oldest first.
    pub(super) names: Vec<String>,
    /// `ids/` names.
    pub(super) shorts: Vec<String>,
    pub(super) by_name: HashMap<String, usize>,
    pub(super) by_short: HashMap<String, usize>,
}

impl View {
    pub(super) fn new(list: SnapshotList) -> View {
        let mut names = Vec::with_capacity(list.len());
        let mut by_name = HashMap::with_capacity(list.len());
        for i in 0..list.len() {
            let name = unique_name(&by_name, list.time_ns(i));
            by_name.insert(name.clone(), i);
            names.push(name);
        }
        let mut count: HashMap<String, usize> = HashMap::new();
        for id in list.ids() {
            *count.entry(id.short()).or_default() += 1;
        }
        // Short ids that collide (likely among ~100k snapshots) are given in full.
        let shorts: Vec<String> = list
            .ids()
            .map(|id| {
                let short = id.short();
                if count[&short] > 1 {
                    id.to_hex()
                } else {
                    short
                }
            })
            .collect();
        let by_short = shorts
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        View {
            list,
            names,
            shorts,
            by_name,
            by_short,
        }
    }

    pub(super) fn newest_time(&self) -> Option<i64> {
        self.list.len().checked_sub(1).map(|i| self.list.time_ns(i))
    }

    pub(super) fn latest_target(&self) -> Option<String> {
        self.names.last().map(|n| format!("snapshots/{n}"))
    }
}

/// A snapshot's directory name: its local time to the second; the first snapshot of a second
/// keeps the plain name, later ones add milliseconds, then `-N` (so names already shown do not
/// change as newer snapshots arrive).
pub(super) fn unique_name(taken: &HashMap<String, usize>, time_ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(time_ns).with_timezone(&chrono::Local);
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if !taken.contains_key(&base) {
        return base;
    }
    let ms = format!("{base}{}", t.format("%.3f"));
    if !taken.contains_key(&ms) {
        return ms;
    }
    let mut n = 1u64;
    loop {
        let name = format!("{ms}-{n}");
        if !taken.contains_key(&name) {
            return name;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_stay_unique() {
        let mut taken = HashMap::new();
        let t = 1_700_000_000_000_000_000i64;
        let mut names = Vec::new();
        for ns in [t, t + 250_000_000, t + 250_000_000, t + 1_000_000_000] {
            let n = unique_name(&taken, ns);
            taken.insert(n.clone(), 0);
            names.push(n);
        }
        assert_eq!(names[1], format!("{}.250", names[0]));
        assert_eq!(names[2], format!("{}.250-1", names[0]));
        assert_eq!(names[0].len(), "2023-11-14T22:13:20".len());
        assert_ne!(names[3], names[0]);
    }
}
