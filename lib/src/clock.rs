//! Time, injected.
//!
//! Every time-dependent decision in Oncely (sealing a generation after its span, lease
//! expiry) reads a [`Clock`], so tests drive time with a [`ManualClock`] instead of
//! sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch.
///
/// Persisted in generation metadata and leases, so it is a plain integer rather than an
/// [`Instant`], which has no meaning across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// A timestamp from milliseconds since the Unix epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This timestamp moved forward by `d`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// Time elapsed from `earlier` to `self`, or zero when `earlier` is later.
    #[must_use]
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A source of time.
///
/// Within one process a clock must not jump: generation spans and leases are
/// measured by how far it moves, so a clock stepped forward seals generations early
/// (shortening the remembering guarantee) and one stepped back seals them late.
/// [`SystemClock`] is monotonic for that reason; a clock that reads the wall clock
/// afresh on every call is not. Between two runs the clock may show anything:
/// [`crate::Tracker`] counts generation ages in time it was running, carrying each
/// open generation's age across a restart instead of comparing the wall clocks of
/// two processes (see [`crate::config::NamespaceConfig::remembers_at_least`]).
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The production clock: wall-clock time read once at start-up, advanced by the
/// monotonic clock.
///
/// Steps of the wall clock while the process runs (NTP corrections, an operator
/// setting the date) therefore neither shorten nor stretch generation spans or
/// leases: only real elapsed time moves this clock. (Steps while the process is
/// down show up as a different anchor at the next start; the tracker rebases
/// generation ages across restarts, so those do not shorten spans either.)
#[derive(Debug)]
pub struct SystemClock {
    wall_at_start: u64,
    started: Instant,
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    #[must_use]
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, duration_millis);
        Self {
            wall_at_start: wall,
            started: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(
            self.wall_at_start
                .saturating_add(duration_millis(self.started.elapsed())),
        )
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// Clones share the same time, so a test can keep one handle and give another to the
/// code under test.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicU64::new(start.0)),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.millis.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t`, forward or backward.
    ///
    /// Within a tracker's run a step forward is time passing (it can seal
    /// generations) and a step back delays sealing by its size; between runs (set
    /// while no tracker is open) a step is a wall clock corrected during downtime,
    /// which the tracker does not count.
    pub fn set(&self, t: Timestamp) {
        self.millis.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        let other = clock.clone();
        assert_eq!(clock.now(), Timestamp::from_millis(1_000));
        other.advance(Duration::from_secs(2));
        assert_eq!(clock.now(), Timestamp::from_millis(3_000));
        clock.set(Timestamp::from_millis(5));
        assert_eq!(other.now(), Timestamp::from_millis(5));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!(a.as_millis() > 1_600_000_000_000, "anchored at wall time");
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_millis(u64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(1)).as_millis(),
            u64::MAX
        );
        assert_eq!(
            Timestamp::EPOCH.saturating_since(t),
            Duration::ZERO,
            "a later start gives zero, not a panic"
        );
    }
}
