//! Store time: the clock every persisted time is written in.
//!
//! Generation ages and claim leases must count the time a tracker had the store open,
//! never downtime nor a wall clock stepped while the process was down (DESIGN.md,
//! "Time"). So the tracker does not write its clock's readings as they are: it writes
//! *store time*, which continues across restarts from where the last run left it.
//! Each run reads the last heartbeat (the newest store time that reached the store,
//! see `records::ClockRecord`) and sets its offset so that store time resumes there:
//! every persisted opening time, seal time and lease end then keeps its distance from
//! "now", whatever the wall clock did in between, and nothing persisted needs
//! rewriting at start-up.
//!
//! A crash loses at most the time since the last heartbeat: leases and generation
//! ages then resume a little earlier, which only remembers IDs and holds claims a
//! little longer. Times handed to callers (lease ends, generation opening times) are
//! converted back to the caller's clock, so they compare with it directly.

use std::sync::Arc;

use crate::clock::{Clock, Timestamp};

/// The tracker's clock and the offset that continues store time.
#[derive(Debug)]
pub(super) struct StoreTime {
    clock: Arc<dyn Clock>,
    /// Store time minus clock time, in milliseconds.
    offset: i128,
}

impl StoreTime {
    /// Store time resuming at `last` (the previous run's last heartbeat), or equal to
    /// the clock for a store without one.
    pub(super) fn resume(clock: Arc<dyn Clock>, last: Option<Timestamp>) -> Self {
        let offset = last.map_or(0, |last| {
            i128::from(last.as_millis()) - i128::from(clock.now().as_millis())
        });
        Self { clock, offset }
    }

    /// The current store time.
    pub(super) fn now(&self) -> Timestamp {
        shift(self.clock.now(), self.offset)
    }

    /// A store time as the caller's clock shows it.
    pub(super) fn to_clock(&self, t: Timestamp) -> Timestamp {
        shift(t, -self.offset)
    }

    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// `t` moved by `by` milliseconds, saturating at both ends.
fn shift(t: Timestamp, by: i128) -> Timestamp {
    let moved = (i128::from(t.as_millis()) + by).clamp(0, i128::from(u64::MAX));
    Timestamp::from_millis(u64::try_from(moved).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn store_time_resumes_at_the_last_heartbeat() {
        let clock = ManualClock::new(t(10_000_000));
        let fresh = StoreTime::resume(Arc::new(clock.clone()), None);
        assert_eq!(fresh.now(), t(10_000_000));

        // The clock is an hour ahead of the last run's store time.
        let time = StoreTime::resume(Arc::new(clock.clone()), Some(t(10_000_000 - 3_600_000)));
        assert_eq!(time.now(), t(10_000_000 - 3_600_000));
        clock.advance(std::time::Duration::from_secs(5));
        assert_eq!(time.now(), t(10_000_000 - 3_600_000 + 5_000));
        assert_eq!(time.to_clock(time.now()), clock.now());

        // Behind.
        let behind = StoreTime::resume(Arc::new(clock.clone()), Some(t(90_000_000)));
        assert_eq!(behind.now(), t(90_000_000));
        assert_eq!(behind.to_clock(t(90_000_000)), clock.now());
    }

    #[test]
    fn shifting_saturates_both_ways() {
        assert_eq!(shift(t(5), -10), Timestamp::EPOCH);
        assert_eq!(shift(t(u64::MAX - 1), 5), t(u64::MAX));
    }
}
