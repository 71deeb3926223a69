//! What operations answer: claim outcomes, transaction outcomes, and what a
//! configuration call did.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::verdict::Verdict;

/// The longest lease a claim may ask for: 7 days.
pub const MAX_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Refuses a lease outside 1 ms ..= [`MAX_LEASE`].
pub(crate) fn check_lease(lease: Duration) -> Result<(), Error> {
    if lease.is_zero() || lease > MAX_LEASE {
        return Err(Error::InvalidArgument {
            field: "lease_ms",
            reason: format!("{} ms is outside 1 ms ..= 7 days", lease.as_millis()),
        });
    }
    Ok(())
}

/// The answer to [`Tracker::claim`](crate::Tracker::claim).
#[must_use = "a claim says whether to process the event"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller holds the claim until `until`: process, then complete or release.
    Acquired {
        /// When the lease ends.
        until: Timestamp,
        /// The caller already held it: the lease was renewed.
        replayed: bool,
        /// Another owner's lease had run out uncompleted: the claim passed to the
        /// caller (a crashed or stalled consumer's work being picked up again).
        taken_over: bool,
    },
    /// Another owner holds a live claim until `until`.
    InProgress {
        /// When that lease ends.
        until: Timestamp,
    },
    /// The ID is done.
    Duplicate,
    /// Only a Bloom-only generation says the ID was seen: probably done.
    ProbableDuplicate,
}

impl ClaimOutcome {
    /// The name used over HTTP: `acquired`, `in_progress`, `duplicate` or
    /// `probable_duplicate`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Acquired { .. } => "acquired",
            Self::InProgress { .. } => "in_progress",
            Self::Duplicate => "duplicate",
            Self::ProbableDuplicate => "probable_duplicate",
        }
    }

    /// The same outcome with its lease end moved by `f` (from store time to the
    /// caller's clock).
    pub(crate) fn map_until(self, f: impl FnOnce(Timestamp) -> Timestamp) -> Self {
        match self {
            Self::Acquired {
                until,
                replayed,
                taken_over,
            } => Self::Acquired {
                until: f(until),
                replayed,
                taken_over,
            },
            Self::InProgress { until } => Self::InProgress { until: f(until) },
            other => other,
        }
    }
}

/// The outcome of [`Tracker::transact`](crate::Tracker::transact).
#[must_use = "says whether the transaction's writes were applied"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transacted<T> {
    /// The event was new: the closure ran and its writes were applied with the mark.
    Applied(T),
    /// The event was not new (the verdict says why): nothing was written.
    Skipped(Verdict),
}

/// Whether [`Tracker::configure_namespace`](crate::Tracker::configure_namespace)
/// created the namespace or updated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Configured {
    /// It did not exist and was created.
    Created,
    /// It existed; the changes apply as documented on the method.
    Updated,
}

/// Whether a reconfiguration may forget remembered IDs at once.
///
/// Lowering `generations` below the number of live generations drops the oldest
/// ones now, and lowering `exact_generations` drops exact tables now (their
/// generations answer `probable_duplicate` from then on). Both forget what consumers
/// may rely on, so they must be asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropPolicy {
    /// Refuse such a change with [`Error::WouldDrop`](crate::Error::WouldDrop), changing nothing.
    #[default]
    Refuse,
    /// Apply it, forgetting what it drops.
    DropNow,
}

/// One call's answer within [`Tracker::check_and_mark_each`](crate::Tracker::check_and_mark_each):
/// its verdicts, in its IDs' order, or why that call alone was refused.
pub type CallVerdicts = Result<Vec<Verdict>, Error>;
