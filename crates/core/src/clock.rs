//! Time, as a seam: the [`Clock`] every decision that depends on time reads, so that sessions,
//! leases, prune and snapshot stamps stay testable with a [`ManualClock`].
//!
//! A clock gives two readings: wall time, written into objects (snapshots, sessions, deletion
//! records) and compared only with the same machine's or a prune's, and a monotonic time that
//! keeps counting while the process is stopped or the machine sleeps, which is what a lease is
//! measured with (`Instant` stops during suspend, so a laptop that slept an hour would wake with
//! a lease it thinks is fresh).

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where time comes from.
pub trait Clock: Send + Sync {
    /// Wall time.
    fn now(&self) -> DateTime<Utc>;

    /// Time since an arbitrary origin that counts suspend: `CLOCK_BOOTTIME` on Linux.
    fn since_boot(&self) -> Duration;

    /// Wall time: the same as [`Clock::now`] (the name leases and prune used before).
    fn wall(&self) -> DateTime<Utc> {
        self.now()
    }
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn since_boot(&self) -> Duration {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map_or_else(|_| wall_since_epoch(), Duration::from)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn since_boot(&self) -> Duration {
        wall_since_epoch()
    }
}

/// Wall time since the epoch: counts suspend, but can jump (the fallback without a boot clock).
fn wall_since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A clock that moves only when told (tests): wall time and boot time advance together, and
/// wall time can be set apart from the other to model a skewed machine.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(DateTime<Utc>, Duration)>,
}

impl ManualClock {
    /// A clock whose wall time is `wall`.
    pub fn new(wall: DateTime<Utc>) -> Self {
        ManualClock {
            state: Mutex::new((wall, Duration::from_secs(1000))),
        }
    }

    /// Moves both readings on by `d`.
    pub fn advance(&self, d: Duration) {
        let mut s = self.state.lock().expect("clock lock");
        s.0 += chrono::Duration::from_std(d).expect("test durations fit");
        s.1 += d;
    }

    /// Sets the wall time alone (a machine whose clock jumped); boot time is unchanged.
    pub fn set_wall(&self, wall: DateTime<Utc>) {
        self.state.lock().expect("clock lock").0 = wall;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.state.lock().expect("clock lock").0
    }

    fn since_boot(&self) -> Duration {
        self.state.lock().expect("clock lock").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = ManualClock::new(t0);
        let boot = c.since_boot();
        assert_eq!((c.now(), c.wall()), (t0, t0));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), t0 + chrono::Duration::seconds(90));
        assert_eq!(c.since_boot(), boot + Duration::from_secs(90));
        c.set_wall(t0);
        assert_eq!(c.now(), t0);
        assert_eq!(c.since_boot(), boot + Duration::from_secs(90));
    }

    #[test]
    fn system_clock_boot_time_does_not_go_back() {
        let a = SystemClock.since_boot();
        let b = SystemClock.since_boot();
        assert!(b >= a);
        assert!((SystemClock.now() - Utc::now()).num_seconds().abs() < 5);
    }
}
