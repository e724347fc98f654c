//! Every value parser of the command line, in one place: durations (humantime), sizes
//! (bytesize), percentages, points in time and `--read-data-subset`. Each returns a one-line
//! message that names the bad value, for clap to print.

use std::time::Duration;

use bytesize::ByteSize;
use tidemark_core::check::DataSubset;
use tidemark_core::lifecycle::Lease;

/// The examples every duration error names.
const DURATION_EXAMPLES: &str = "500ms, 2s, 5m, 1h, 7d, 1d12h, 2w, 1y";

/// A duration: a sum of `<number><unit>` parts (`500ms`, `2s`, `5m`, `1d12h`, `1.5h`, `1h 30min`,
/// `2w`); a part without a unit is seconds (`30`, `0.5`). Units are humantime's (`ms`, `s`, `sec`,
/// `m`, `min`, `h`, `hours`, `d`, `days`, `w`, `M`/`months`, …), except the year: 365 days, not
/// humantime's 365.25, as `forget --keep-within 1y` has always meant here. Parts are summed
/// in seconds, so fractions of any unit work (humantime refuses `0.251h`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = |why: &str| format!("{s:?} is not a duration like {DURATION_EXAMPLES}: {why}");
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut secs = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let n: f64 = num
            .parse()
            .map_err(|_| bad(&format!("expected a number before {:?}", after.trim())))?;
        secs += n * unit_length(unit.trim()).map_err(|e| bad(&e))?.as_secs_f64();
        rest = next;
    }
    Duration::try_from_secs_f64(secs).map_err(|e| bad(&e.to_string()))
}

/// The length of one `unit`, as humantime knows it (a year is 365 days; no unit is a second).
fn unit_length(unit: &str) -> Result<Duration, String> {
    const DAY: u64 = 86_400;
    match unit {
        "" => Ok(Duration::from_secs(1)),
        "y" | "yr" | "yrs" | "year" | "years" => Ok(Duration::from_secs(365 * DAY)),
        u => humantime::parse_duration(&format!("1{u}")).map_err(|e| e.to_string()),
    }
}

/// A size in bytes through bytesize: `4MiB`, `4 MiB`, `512KiB`, `1.5GiB`, `1048576`.
///
/// The short and the SI-looking spellings (`k`, `KB`, `m`, `MB`, `g`, `GB`, `t`, `TB`, any case)
/// are binary, as they always were here: `--seal-bytes 4MB` is 4 MiB, not 4,000,000 bytes.
pub fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => "B",
        "k" | "kb" | "kib" => "KiB",
        "m" | "mb" | "mib" => "MiB",
        "g" | "gb" | "gib" => "GiB",
        "t" | "tb" | "tib" => "TiB",
        _ => unit.trim(),
    };
    let bytes = format!("{num} {unit}")
        .parse::<ByteSize>()
        .map_err(|e| format!("{s:?} is not a size like 4MiB, 512KiB, 1GiB: {e}"))?
        .as_u64();
    // bytesize saturates; a size that does not fit is a mistake, not a limit.
    if bytes == u64::MAX {
        return Err(format!("{s} is too large"));
    }
    Ok(bytes)
}

/// A percentage `P%` (or `P`) from 0 to 100, as a fraction.
pub fn percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 10%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// `--lease-for-testing`: a [`duration`] of more than zero, at most the default lease (10 min).
pub fn lease(s: &str) -> Result<Lease, String> {
    Lease::new(duration(s)?).map_err(|e| format!("{s:?}: {e}"))
}

/// `--read-data-subset`: N/M (part N of M), P% (a random share of the packs) or a SIZE.
pub fn data_subset(s: &str) -> Result<DataSubset, String> {
    let s = s.trim();
    if let Some((n, m)) = s.split_once('/') {
        let bad = || format!("{s:?}: expected N/M with 1 <= N <= M, like 2/5");
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let of: u32 = m.trim().parse().map_err(|_| bad())?;
        if n == 0 || of == 0 || n > of {
            return Err(bad());
        }
        return Ok(DataSubset::Part { n, of });
    }
    if s.ends_with('%') {
        let v: f64 = s
            .trim_end_matches('%')
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage like 10%"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!(
                "{s:?}: the percentage must be above 0 and at most 100"
            ));
        }
        return Ok(DataSubset::Fraction(v / 100.0));
    }
    match size(s) {
        Ok(0) => Err(format!("{s:?}: the size must be above 0")),
        Ok(n) => Ok(DataSubset::Bytes(n)),
        Err(e) => Err(format!("{e}; or N/M, or P%")),
    }
}

/// A point in time as given on the command line; resolved against the clock and the local
/// time zone when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// An instant (RFC 3339 with an offset).
    Instant(chrono::DateTime<chrono::Utc>),
    /// A wall-clock time in the local time zone.
    Local(chrono::NaiveDateTime),
    /// This long before now.
    Ago(chrono::TimeDelta),
}

/// Parses `--at`: RFC 3339, a local `YYYY-MM-DD[ HH:MM[:SS]]` (`T` may replace the space), or
/// `-<n><unit>` with unit s, m, h, d or w.
pub fn time(s: &str) -> Result<TimeSpec, String> {
    let s = s.trim();
    if let Some(ago) = s.strip_prefix('-') {
        let split = ago
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?}: a relative time needs a unit (s, m, h, d or w)"))?;
        let (n, unit) = ago.split_at(split);
        let n: i64 = n
            .parse()
            .map_err(|_| format!("{s:?}: expected a number of units, like -10m"))?;
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
                ))
            }
        };
        return n
            .checked_mul(unit_secs)
            .and_then(chrono::TimeDelta::try_seconds)
            .map(TimeSpec::Ago)
            .ok_or_else(|| format!("{s:?} is too far back"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(TimeSpec::Instant(t.with_timezone(&chrono::Utc)));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Ok(TimeSpec::Local(t));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // Missing fields are zero, as everywhere else: a date is that day's midnight.
        return Ok(TimeSpec::Local(d.and_time(chrono::NaiveTime::MIN)));
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-11-23T20:15:00Z), a local \"2026-11-23 20:15:00\", or -10m / -2h / -1d"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeDelta, TimeZone, Utc};

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let cases = [
            ("500ms", ms(500)),
            ("2s", secs(2)),
            ("5m", secs(300)),
            ("5min", secs(300)),
            ("1h", secs(3600)),
            ("1d", secs(86_400)),
            ("7d", secs(7 * 86_400)),
            ("1d12h", secs(36 * 3600)),
            ("1h30m", secs(5400)),
            ("2w", secs(14 * 86_400)),
            ("1y", secs(365 * 86_400)),
            ("2y", secs(730 * 86_400)),
            ("1y1d", secs(366 * 86_400)),
            ("1.5h", secs(5400)),
            ("0.5s", ms(500)),
            ("30", secs(30)),
            ("0.25", ms(250)),
            (" 20ms ", ms(20)),
            ("1h 30m", secs(5400)),
            ("1 h 30 min", secs(5400)),
            ("2 hours", secs(7200)),
            (".5m", secs(30)),
            ("0.251h", ms(903_600)),
            ("5 2m", secs(125)),
        ];
        for (text, want) in cases {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
        for bad in ["", "ms", "5x", "-1s", "1h-", "abc", "1.2.3s"] {
            let err = duration(bad).expect_err(bad);
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn leases() {
        let l = lease("2s").unwrap();
        assert_eq!(
            (l.stale_after(), l.dead_after()),
            (Duration::from_secs(2), Duration::from_secs(6))
        );
        assert_eq!(lease("10m"), Ok(Lease::DEFAULT));
        let e = lease("11m").unwrap_err();
        assert!(
            e.starts_with("\"11m\": ") && e.contains("can only be shortened"),
            "{e}"
        );
        assert!(lease("0s").is_err());
        assert!(lease("soon").unwrap_err().contains("is not a duration"));
    }

    #[test]
    fn sizes() {
        let cases = [
            ("1048576", 1 << 20),
            ("0", 0),
            ("10b", 10),
            ("4MiB", 4 << 20),
            ("4 MiB", 4 << 20),
            ("4mib", 4 << 20),
            ("4MB", 4 << 20),
            ("4m", 4 << 20),
            ("512KiB", 512 << 10),
            ("512k", 512 << 10),
            ("512kb", 512 << 10),
            ("1G", 1 << 30),
            ("1GB", 1 << 30),
            ("1gib", 1 << 30),
            ("2TiB", 2 << 40),
            ("1.5GiB", 3 << 29),
        ];
        for (text, want) in cases {
            assert_eq!(size(text), Ok(want), "{text}");
        }
        for bad in ["", "MiB", "4 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percents_and_subsets() {
        assert_eq!(percent("10%"), Ok(0.1));
        assert_eq!(percent("5"), Ok(0.05));
        assert_eq!(percent("100%"), Ok(1.0));
        assert!(percent("101%").is_err());
        assert!(percent("ten").is_err());
        assert_eq!(data_subset("2/5"), Ok(DataSubset::Part { n: 2, of: 5 }));
        assert_eq!(data_subset("10%"), Ok(DataSubset::Fraction(0.1)));
        assert_eq!(data_subset("500MiB"), Ok(DataSubset::Bytes(500 << 20)));
        for bad in ["0/5", "6/5", "1/0", "0%", "101%", "0", "lots"] {
            assert!(data_subset(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_specs() {
        let local = |y, mo, d, h, mi, s| {
            NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, s)
                .unwrap()
        };
        let cases = [
            (
                "2026-11-23T20:15:00+01:00",
                TimeSpec::Instant(Utc.with_ymd_and_hms(2026, 11, 23, 19, 15, 0).unwrap()),
            ),
            (
                "2026-11-23T19:15:00Z",
                TimeSpec::Instant(Utc.with_ymd_and_hms(2026, 11, 23, 19, 15, 0).unwrap()),
            ),
            (
                "2026-11-23 20:15:00",
                TimeSpec::Local(local(2026, 11, 23, 20, 15, 0)),
            ),
            (
                "2026-11-23T20:15",
                TimeSpec::Local(local(2026, 11, 23, 20, 15, 0)),
            ),
            ("-10m", TimeSpec::Ago(TimeDelta::minutes(10))),
            ("-2h", TimeSpec::Ago(TimeDelta::hours(2))),
            ("-1d", TimeSpec::Ago(TimeDelta::days(1))),
            ("-90s", TimeSpec::Ago(TimeDelta::seconds(90))),
            ("-1w", TimeSpec::Ago(TimeDelta::weeks(1))),
        ];
        for (text, want) in cases {
            assert_eq!(time(text), Ok(want), "{text}");
        }
        let TimeSpec::Local(day) = time("2026-11-23").unwrap() else {
            panic!("a date is local")
        };
        assert_eq!(day.format("%F %T").to_string(), "2026-11-23 00:00:00");
        for bad in [
            "",
            "yesterday",
            "-10",
            "-m",
            "-10y",
            "2026-13-01",
            "-99999999999999w",
        ] {
            assert!(time(bad).is_err(), "{bad:?}");
        }
    }
}
