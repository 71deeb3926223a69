//! Warnings about failed requests, rate-limited per error code.
//!
//! Under overload every shed request answers 503 `overloaded`, and under a full disk
//! every write answers 503 `storage_unavailable`: a log line for each would add load
//! exactly when the daemon has none to spare (and bury everything else in the log).
//! So the first failure of a code is logged at once, with its message; the ones that
//! follow within [`WINDOW`] are only counted, and the count is logged with the next
//! line of that code, or by [`FailureLog::flush`] (the daemon's ticker calls it every
//! second) once the window has passed. The metrics count every one of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::FailureNote;

/// At most one line per error code per window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The codes of server errors, each rate-limited on its own; any other shares the
/// last slot.
const CODES: [&str; 5] = [
    "overloaded",
    "storage_unavailable",
    "shutting_down",
    "internal",
    "other",
];

/// One code's window.
#[derive(Debug, Default)]
struct Slot {
    /// When the next line may be logged, in ms since the log was made.
    next_ms: AtomicU64,
    /// Failures not logged since the last line.
    unlogged: AtomicU64,
}

/// The rate-limited log of failed requests.
#[derive(Debug)]
pub(crate) struct FailureLog {
    start: Instant,
    slots: [Slot; CODES.len()],
}

/// What to log for one failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Logged {
    /// Nothing now: counted for the next line.
    Counted,
    /// A line, with the failures counted since the last one.
    Line {
        /// Failures of the code not logged since the last line.
        unlogged: u64,
    },
}

impl FailureLog {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slot(code: &str) -> usize {
        CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CODES.len() - 1)
    }

    /// Logs a failed request, or counts it for a later line.
    pub(crate) fn record(&self, status: u16, note: &FailureNote) {
        if let Logged::Line { unlogged } = self.admit(note.code.as_str(), self.now_ms()) {
            if unlogged == 0 {
                tracing::warn!(status, code = note.code.as_str(), message = %note.message, "request failed");
            } else {
                tracing::warn!(
                    status,
                    code = note.code.as_str(),
                    message = %note.message,
                    more = unlogged,
                    window_s = WINDOW.as_secs(),
                    "request failed ({unlogged} more like it since the last line)"
                );
            }
        }
    }

    /// Decides whether a failure of `code` at `now_ms` gets a line.
    pub(crate) fn admit(&self, code: &str, now_ms: u64) -> Logged {
        let slot = &self.slots[Self::slot(code)];
        if Self::take_window(slot, now_ms) {
            Logged::Line {
                unlogged: slot.unlogged.swap(0, Ordering::Relaxed),
            }
        } else {
            slot.unlogged.fetch_add(1, Ordering::Relaxed);
            Logged::Counted
        }
    }

    /// Logs the counts of failures that got no line, for codes whose window has
    /// passed. Returns the counts logged, by code.
    pub(crate) fn flush(&self) -> Vec<(&'static str, u64)> {
        self.flush_at(self.now_ms())
    }

    pub(crate) fn flush_at(&self, now_ms: u64) -> Vec<(&'static str, u64)> {
        let mut logged = Vec::new();
        for (code, slot) in CODES.iter().zip(&self.slots) {
            if slot.unlogged.load(Ordering::Relaxed) == 0 || !Self::take_window(slot, now_ms) {
                continue;
            }
            let n = slot.unlogged.swap(0, Ordering::Relaxed);
            if n > 0 {
                tracing::warn!(
                    code,
                    count = n,
                    "{n} more request(s) failed with {code} since the last line"
                );
                logged.push((*code, n));
            }
        }
        logged
    }

    /// Whether the slot's window has passed at `now_ms`; if so, starts the next one.
    /// Of racing callers, one wins.
    fn take_window(slot: &Slot, now_ms: u64) -> bool {
        let next = slot.next_ms.load(Ordering::Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        now_ms >= next
            && slot
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(window),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_code_per_window_with_the_count_of_the_rest() {
        let log = FailureLog::new();
        assert_eq!(log.admit("overloaded", 0), Logged::Line { unlogged: 0 });
        for ms in 1..1000 {
            assert_eq!(log.admit("overloaded", ms), Logged::Counted);
        }
        // Another code has its own window.
        assert_eq!(
            log.admit("storage_unavailable", 500),
            Logged::Line { unlogged: 0 }
        );
        // Nothing is flushed before the window has passed...
        assert_eq!(log.flush_at(9_999), []);
        // ... then the count is, once.
        assert_eq!(log.flush_at(10_000), [("overloaded", 999)]);
        // The flush started a window: the next failures are counted until it ends.
        assert_eq!(log.admit("overloaded", 15_000), Logged::Counted);
        assert_eq!(log.admit("overloaded", 15_001), Logged::Counted);
        assert_eq!(
            log.admit("overloaded", 20_001),
            Logged::Line { unlogged: 2 }
        );
        assert_eq!(log.flush_at(40_000), []);
        // Unknown codes share a slot.
        assert_eq!(log.admit("teapot", 0), Logged::Line { unlogged: 0 });
        assert_eq!(log.admit("kettle", 1), Logged::Counted);
    }
}
