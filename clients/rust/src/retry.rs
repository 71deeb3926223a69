//! How a call retries: the policy, the waits between attempts, and the jitter.

use std::sync::Mutex;
use std::time::Duration;

use crate::error::Error;

/// How many times to try one call, how long to wait in between, and how long the
/// whole call may take.
///
/// The wait before retry `n` (from 1) starts from the nominal backoff
/// `min(max_delay, base_delay x 2^(n-1))`:
///
/// * when the daemon's answer asked to wait (`Retry-After`, sent with every 503), the
///   wait is `Retry-After` plus a random extra of up to `max(Retry-After, nominal)`:
///   shed clients spread their retries over the interval after the one asked for,
///   rather than all coming back at the same instant;
/// * otherwise half the nominal backoff is fixed and half random.
///
/// [`deadline`](Self::deadline) bounds the whole call, attempts and waits included:
/// an attempt gets at most what is left of it, and a wait that would end past it
/// is not started (the call returns its last error at once).
///
/// With the defaults (4 attempts, backoff from 50 ms doubling up to 2 s, deadline
/// 15 s) the three waits add up to 175-350 ms without `Retry-After`; against a daemon
/// that sheds every attempt (503 with `Retry-After: 1`) they add up to 3-6 s; and
/// whatever happens the call ends within 15 s.
///
/// ```
/// use std::time::Duration;
/// use oncely_client::RetryPolicy;
///
/// let patient = RetryPolicy::default()
///     .attempts(8)
///     .deadline(Duration::from_secs(60));
/// assert_eq!(patient.attempts, 8);
/// assert_eq!(RetryPolicy::none().attempts, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Requests per call, the first included (at least 1; 1 means no retry).
    pub attempts: u32,
    /// The nominal wait before the first retry.
    pub base_delay: Duration,
    /// The longest nominal wait between two attempts. (A longer `Retry-After` is
    /// honoured, within the deadline.)
    pub max_delay: Duration,
    /// The longest a call may take, every attempt and wait included (more than 0).
    pub deadline: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry, within the default deadline.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// With `attempts` requests per call at most.
    #[must_use]
    pub const fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// With this backoff: `base` before the first retry, doubling up to `max`.
    #[must_use]
    pub const fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max;
        self
    }

    /// With this deadline for a whole call.
    #[must_use]
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.attempts == 0 {
            return Err(Error::Config {
                setting: "retry.attempts",
                reason: "must be at least 1 (1 means no retry)".into(),
            });
        }
        if self.deadline.is_zero() {
            return Err(Error::Config {
                setting: "retry.deadline",
                reason: "must be more than 0".into(),
            });
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry), given a random
    /// `unit` in `[0, 1)` and the daemon's `Retry-After`, if any.
    pub(crate) fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let factor = 2_u32.saturating_pow(retry.saturating_sub(1));
        let nominal = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let unit = unit.clamp(0.0, 1.0);
        match retry_after {
            // Full jitter over one more interval: retries that the daemon shed
            // together arrive spread out, not in lockstep at +Retry-After. (Brooker,
            // "Exponential Backoff And Jitter", AWS Architecture Blog, 2015: full
            // jitter does the least total work among the schemes it compares.)
            Some(after) => after.saturating_add(after.max(nominal).mul_f64(unit)),
            None => {
                let half = nominal / 2;
                half + half.mul_f64(unit)
            }
        }
    }
}

/// The default deadline of a call.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

impl Default for RetryPolicy {
    /// 4 attempts, 50 ms first wait doubling to 2 s at most, 15 s for the whole call.
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Random units in `[0, 1)` for the waits: SplitMix64 (Steele, Lea and Flood,
/// "Fast splittable pseudorandom number generators", OOPSLA 2014), seeded from the
/// operating system or by the caller. Jitter needs spread, not secrecy.
#[derive(Debug)]
pub(crate) struct Jitter(Mutex<u64>);

impl Jitter {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(Mutex::new(seed))
    }

    pub(crate) fn unit(&self) -> f64 {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits, as a fraction of 2^53: exactly representable, below 1.
        #[allow(clippy::cast_precision_loss)]
        let unit = (z >> 11) as f64 / (1_u64 << 53) as f64;
        unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .attempts(10)
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        // unit 0: half the nominal delay; unit 1: all of it.
        assert_eq!(p.delay(1, 0.0, None), Duration::from_millis(50));
        assert_eq!(p.delay(1, 1.0, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, 1.0, None), Duration::from_millis(400));
        assert_eq!(p.delay(5, 1.0, None), Duration::from_secs(1));
        assert_eq!(p.delay(40, 0.5, None), Duration::from_millis(750));
    }

    #[test]
    fn retry_after_is_a_floor_with_jitter_on_top() {
        let p = policy();
        let after = Some(Duration::from_secs(1));
        // Never sooner than asked, spread over the next interval: not max(backoff,
        // Retry-After), which put every shed client at exactly +1 s.
        assert_eq!(p.delay(1, 0.0, after), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.5, after), Duration::from_millis(1500));
        assert_eq!(p.delay(1, 0.999, after), Duration::from_millis(1999));
        // A longer Retry-After than max_delay is honoured.
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        // A short Retry-After still gets the backoff's spread.
        assert_eq!(
            p.delay(5, 1.0, Some(Duration::from_millis(10))),
            Duration::from_millis(1010)
        );
    }

    #[test]
    fn jitter_is_seeded_spread_and_below_one() {
        let a = Jitter::new(1);
        let b = Jitter::new(1);
        let c = Jitter::new(2);
        let xs: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.unit()).collect();
        assert_eq!(xs, ys, "one seed, one sequence");
        assert_ne!(xs[0], c.unit());
        assert!(xs.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn policies_are_validated() {
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(RetryPolicy::default().attempts(0).validate().is_err());
        assert!(
            RetryPolicy::default()
                .deadline(Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
