//! What calls answer, as Rust types: the verdicts and claim outcomes of the API with
//! their data, so that a `match` covers every case.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One ID's answer to [`check_and_mark`](crate::Client::check_and_mark) or
/// [`check`](crate::Client::check).
#[must_use = "a verdict says whether to process the event"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Not seen in the remembered window. From check-and-mark: it is now marked,
    /// process it. From check: unseen, nothing was marked.
    New,
    /// A `new` returned again to the owner that marked it (`replayed: true` over
    /// HTTP): the same delivery attempt retried after its first answer was lost.
    /// Process it: nobody has yet.
    Replayed,
    /// An exact table holds it: skip it.
    Duplicate,
    /// Only a Bloom-only generation says it was seen: a duplicate with probability
    /// at least `1 - fp_rate`.
    ProbableDuplicate,
    /// Another owner holds a live claim on it.
    InProgress {
        /// When that lease ends, in milliseconds since the Unix epoch.
        until_ms: u64,
    },
}

impl Verdict {
    /// Whether to process the event: [`New`](Self::New) or [`Replayed`](Self::Replayed).
    #[must_use]
    pub const fn is_new(self) -> bool {
        matches!(self, Self::New | Self::Replayed)
    }

    /// Whether this is a replayed `new`.
    #[must_use]
    pub const fn is_replayed(self) -> bool {
        matches!(self, Self::Replayed)
    }
}

/// The answer to [`claim`](crate::Client::claim).
#[must_use = "a claim says whether to process the event"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// The caller holds the claim until `until_ms`: process, then complete or release.
    Acquired {
        /// When the lease ends, in milliseconds since the Unix epoch.
        until_ms: u64,
        /// The caller already held it: the lease was renewed (or a retry found the
        /// claim its lost first attempt had taken).
        replayed: bool,
        /// Another owner's lease had run out uncompleted: the claim passed to the
        /// caller.
        taken_over: bool,
    },
    /// Another owner holds a live claim until `until_ms`.
    InProgress {
        /// When that lease ends, in milliseconds since the Unix epoch.
        until_ms: u64,
    },
    /// The ID is done.
    Duplicate,
    /// Only a Bloom-only generation says the ID was seen: probably done.
    ProbableDuplicate,
}

impl ClaimOutcome {
    /// When the lease ends, for [`Acquired`](Self::Acquired) and
    /// [`InProgress`](Self::InProgress).
    #[must_use]
    pub fn until(self) -> Option<SystemTime> {
        match self {
            Self::Acquired { until_ms, .. } | Self::InProgress { until_ms } => {
                Some(UNIX_EPOCH + Duration::from_millis(until_ms))
            }
            Self::Duplicate | Self::ProbableDuplicate => None,
        }
    }
}

/// Whether [`put_namespace`](crate::Client::put_namespace) created the namespace or
/// updated it.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Configured {
    /// It did not exist and was created (201).
    Created,
    /// It existed and was reconfigured (200).
    Updated,
}

/// Whether a reconfiguration may forget remembered IDs at once (`drop_now` over
/// HTTP).
///
/// Lowering `generations` below the number of live generations drops the oldest
/// ones now, and lowering `exact_generations` drops exact tables now (their IDs
/// answer `probable_duplicate` from then on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DropPolicy {
    /// Refuse such a change: the daemon answers 409 `would_drop` and changes nothing.
    #[default]
    Refuse,
    /// Apply it, forgetting what it drops.
    DropNow,
}
