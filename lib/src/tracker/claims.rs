//! Claims: exclusive, leased processing rights on an ID.
//!
//! `claim` gives one owner the right to process an ID for a lease; `complete` turns
//! the claim into a done mark; `release` forgets it so a redelivery can take it. A
//! lease that runs out lets the next claimant in, which is how a crashed consumer's
//! work is picked up again. Claims are records in the exact tables, so they survive
//! restarts like marks do.

use std::time::Duration;

use super::Tracker;
use super::single::{Decision, Found, Outcome};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::{MarkValue, OwnerFp};
use crate::id::EventId;

/// The longest lease a claim may ask for: 7 days.
pub const MAX_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The answer to [`Tracker::claim`].
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
}

impl Tracker {
    /// Claims an ID for `owner` for `lease`.
    ///
    /// The same owner claiming again renews its lease (`replayed`); an expired lease
    /// goes to the next claimant. While a claim is live, other owners' claims and
    /// `check_and_mark` answer in progress.
    ///
    /// # Errors
    ///
    /// Invalid ID, owner, lease (zero or over [`MAX_LEASE`]) or namespace; storage
    /// errors (then nothing was claimed).
    pub fn claim(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let id = checked_id(id.as_ref())?;
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::InvalidArgument {
                field: "lease_ms",
                reason: format!("{} ms is outside 1 ms ..= 7 days", lease.as_millis()),
            });
        }
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        let outcome = self.with_found(&ns, id, Some(me), |ctx, found| {
            let until = ctx.now.saturating_add(lease);
            Ok(match found {
                Found::Exact {
                    value: MarkValue::Done { .. },
                    ..
                } => Decision::Answer(ClaimOutcome::Duplicate),
                Found::Exact {
                    generation,
                    value: MarkValue::Claimed { owner, until: held },
                } if owner == me => {
                    let until = until.max(held);
                    ctx.put_at(generation, MarkValue::Claimed { owner: me, until });
                    Decision::Write(ClaimOutcome::Acquired {
                        until,
                        replayed: held > ctx.now,
                        taken_over: false,
                    })
                }
                Found::Exact {
                    value: MarkValue::Claimed { until: held, .. },
                    ..
                } if held > ctx.now => Decision::Answer(ClaimOutcome::InProgress { until: held }),
                Found::Exact { generation, .. } => {
                    // Another owner's lease ran out: the claim passes to us in place.
                    ctx.put_at(generation, MarkValue::Claimed { owner: me, until });
                    Decision::Write(ClaimOutcome::Acquired {
                        until,
                        replayed: false,
                        taken_over: true,
                    })
                }
                Found::Absent { bloom_only: true } => {
                    Decision::Answer(ClaimOutcome::ProbableDuplicate)
                }
                Found::Absent { bloom_only: false } => {
                    ctx.mark_new(MarkValue::Claimed { owner: me, until })?;
                    Decision::Write(ClaimOutcome::Acquired {
                        until,
                        replayed: false,
                        taken_over: false,
                    })
                }
            })
        })?;
        finish(outcome)
    }

    /// Turns `owner`'s claim on an ID into a done mark. Completing twice is fine.
    /// A claim whose lease ran out can still be completed as long as no other owner
    /// has taken it since.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when another owner holds or completed the ID, or there is
    /// no claim; validation and storage errors as for [`claim`](Self::claim).
    pub fn complete(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let id = checked_id(id.as_ref())?;
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        let outcome = self.with_found(&ns, id, Some(me), |ctx, found| match found {
            Found::Exact {
                generation,
                value: MarkValue::Claimed { owner, .. },
            } if owner == me => {
                ctx.put_at(generation, MarkValue::Done { owner: Some(me) });
                Ok(Decision::Write(()))
            }
            Found::Exact {
                value: MarkValue::Claimed { until, .. },
                ..
            } => Err(Error::Conflict(format!(
                "another owner holds the claim (lease until {until})"
            ))),
            Found::Exact {
                value: MarkValue::Done { owner: Some(o) },
                ..
            } if o == me => Ok(Decision::Answer(())),
            Found::Exact { .. } => {
                Err(Error::Conflict("another owner already completed it".into()))
            }
            Found::Absent { .. } => Err(Error::Conflict(
                "no claim to complete: never claimed, released, or outside the exact horizon"
                    .into(),
            )),
        })?;
        finish(outcome)
    }

    /// Forgets `owner`'s claim so that a redelivery can take the ID. Releasing an ID
    /// with no claim is fine (a retried release).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when another owner holds the claim or the ID is done;
    /// validation and storage errors as for [`claim`](Self::claim).
    pub fn release(&self, namespace: &str, id: impl AsRef<[u8]>, owner: &str) -> Result<(), Error> {
        let id = checked_id(id.as_ref())?;
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        let outcome = self.with_found(&ns, id, Some(me), |ctx, found| match found {
            Found::Exact {
                generation,
                value: MarkValue::Claimed { owner, .. },
            } if owner == me => {
                ctx.delete_at(generation);
                Ok(Decision::Write(()))
            }
            Found::Exact {
                value: MarkValue::Claimed { until, .. },
                ..
            } => Err(Error::Conflict(format!(
                "another owner holds the claim (lease until {until})"
            ))),
            Found::Exact { .. } => Err(Error::Conflict(
                "the ID is done; a completed ID cannot be released".into(),
            )),
            Found::Absent { .. } => Ok(Decision::Answer(())),
        })?;
        finish(outcome)
    }
}

fn checked_id(id: &[u8]) -> Result<&[u8], Error> {
    EventId::new(id)
        .map(EventId::as_bytes)
        .map_err(|reason| Error::InvalidId { index: 0, reason })
}

fn finish<T>(outcome: Outcome<'_, T>) -> Result<T, Error> {
    match outcome {
        Outcome::Answered(t) => Ok(t),
        Outcome::Reserved(t, reservation) => reservation.commit().map(|()| t),
    }
}
