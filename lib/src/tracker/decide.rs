//! What the tracker knows of an ID means for a caller: the one decision every path
//! makes (check, check-and-mark, claim, complete, release, forget, transaction), in one
//! function, so that no path can read a record differently from another.
//!
//! An ID's state lives in three places, gathered into [`Known`] before deciding:
//!
//! * a **claim** in the namespace's claims table (a claim is not a mark: it lives
//!   apart from the generations and never reaches a Bloom filter, so it neither
//!   depends on the generation it started in nor leaves a trace once given back);
//! * a **done mark** in an exact table, with the owner that marked it;
//! * a hit in a **Bloom-only** generation's filter, which can only say "probably".
//!
//! Precedence follows from how the three come about: a done mark is final; a claim
//! exists only for an ID that was not done when it was taken, and completing it turns
//! it into a done mark in the same write; a Bloom-only hit speaks only when nothing
//! exact does.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::exact::OwnerFp;
use crate::verdict::Verdict;

use super::outcome::ClaimOutcome;

/// A claim as the claims table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClaimState {
    pub(crate) owner: OwnerFp,
    /// When the lease ends, in store time.
    pub(crate) until: Timestamp,
}

/// What the tracker knows of one ID when it decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Known {
    /// Its claim, live or expired.
    pub(crate) claim: Option<ClaimState>,
    /// Its newest mark in an exact table, with the owner that marked it (`Some(None)`:
    /// marked without an owner).
    pub(crate) done: Option<Option<OwnerFp>>,
    /// Whether a Bloom-only generation's filter says it was seen.
    pub(crate) bloom_only: bool,
}

/// What a caller asks of one ID.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ask {
    /// Whether it was seen, without marking.
    Check,
    /// Check, and mark it if new (a transaction asks this too).
    Mark(Option<OwnerFp>),
    /// Claim it for `owner` until `until` (store time), with this `lease` (kept with
    /// the claim; the decision needs only `until`).
    Claim {
        owner: OwnerFp,
        until: Timestamp,
        lease: Duration,
    },
    /// Turn `owner`'s claim into a done mark.
    Complete(OwnerFp),
    /// Give `owner`'s claim back.
    Release(OwnerFp),
    /// Forget its done mark, so that the next caller gets it as new.
    Forget,
}

/// The decision, and whether it needs a write.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Answer this verdict; write nothing.
    Verdict(Verdict),
    /// Mark it done for the asker in the open generation (`New` for a mark), deleting
    /// its claim, if it has one, in the same write.
    MarkDone { clears_claim: bool },
    /// Answer this claim outcome; write nothing.
    Claim(ClaimOutcome),
    /// Write the asker's claim (acquired, renewed or taken over), then answer.
    PutClaim(ClaimOutcome),
    /// Delete the asker's claim.
    DeleteClaim,
    /// Delete its done mark (a forget): it answers new from then on.
    DeleteMark,
    /// Nothing to do: completing what the asker already completed, or releasing
    /// what the asker does not hold.
    Nothing,
    /// The ID's state does not allow the operation.
    Conflict(String),
}

/// Decides `ask` for an ID from what is `known` of it, at store time `now`.
pub(crate) fn decide(ask: Ask, known: Known, now: Timestamp) -> Decision {
    let live = known.claim.filter(|c| c.until > now);
    match ask {
        Ask::Check => Decision::Verdict(if known.done.is_some() {
            Verdict::Duplicate
        } else if let Some(c) = live {
            Verdict::InProgress { until: c.until }
        } else if known.bloom_only {
            Verdict::ProbableDuplicate
        } else {
            Verdict::New
        }),
        Ask::Mark(me) => {
            if let Some(by) = known.done {
                return Decision::Verdict(if me.is_some() && by == me {
                    Verdict::Replayed
                } else {
                    Verdict::Duplicate
                });
            }
            match known.claim {
                // The claim's owner marking its ID completes the claim, live or not.
                Some(c) if Some(c.owner) == me => {
                    return Decision::MarkDone { clears_claim: true };
                }
                Some(c) if c.until > now => {
                    return Decision::Verdict(Verdict::InProgress { until: c.until });
                }
                // Another owner's lease ran out: as good as absent.
                _ => {}
            }
            if known.bloom_only {
                Decision::Verdict(Verdict::ProbableDuplicate)
            } else {
                Decision::MarkDone {
                    clears_claim: known.claim.is_some(),
                }
            }
        }
        Ask::Claim { owner, until, .. } => {
            if known.done.is_some() {
                return Decision::Claim(ClaimOutcome::Duplicate);
            }
            match known.claim {
                Some(c) if c.owner == owner => Decision::PutClaim(ClaimOutcome::Acquired {
                    // A renewal never shortens the lease held.
                    until: until.max(c.until),
                    replayed: c.until > now,
                    taken_over: false,
                }),
                Some(c) if c.until > now => {
                    Decision::Claim(ClaimOutcome::InProgress { until: c.until })
                }
                Some(_) => Decision::PutClaim(ClaimOutcome::Acquired {
                    until,
                    replayed: false,
                    taken_over: true,
                }),
                None if known.bloom_only => Decision::Claim(ClaimOutcome::ProbableDuplicate),
                None => Decision::PutClaim(ClaimOutcome::Acquired {
                    until,
                    replayed: false,
                    taken_over: false,
                }),
            }
        }
        Ask::Complete(me) => match (known.claim, known.done) {
            // A lease that ran out can still be completed until another owner takes
            // the ID (or the tracker forgets the expired claim, see `claims`).
            (Some(c), _) if c.owner == me => Decision::MarkDone { clears_claim: true },
            (Some(c), _) if c.until > now => Decision::Conflict(format!(
                "another owner holds the claim (lease until {})",
                c.until
            )),
            (Some(_), _) => Decision::Conflict(
                "another owner's claim ran out on this ID; claim it before completing it".into(),
            ),
            (None, Some(by)) if by == Some(me) => Decision::Nothing,
            (None, Some(_)) => Decision::Conflict("another owner already completed it".into()),
            (None, None) => Decision::Conflict(
                "no claim to complete: never claimed, released, or its lease ran out long ago"
                    .into(),
            ),
        },
        Ask::Release(me) => match (known.claim, known.done) {
            (Some(c), _) if c.owner == me => Decision::DeleteClaim,
            (Some(c), _) if c.until > now => Decision::Conflict(format!(
                "another owner holds the claim (lease until {})",
                c.until
            )),
            (Some(_), _) | (None, None) => Decision::Nothing,
            (None, Some(_)) => {
                Decision::Conflict("the ID is done; a completed ID cannot be released".into())
            }
        },
        // Only an exact mark can be forgotten: a Bloom-only hit has nothing to
        // delete, and a live claim belongs to its owner (it is left alone). An
        // expired claim beside a mark does not stand in the way.
        Ask::Forget => match (live, known.done) {
            (None, Some(_)) => Decision::DeleteMark,
            _ => Decision::Nothing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashSeed;

    fn owner(name: &str) -> OwnerFp {
        OwnerFp::new(name, HashSeed::from_u64(7)).unwrap()
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    const NOW: u64 = 1_000;

    fn claim(by: &str, until: u64) -> Known {
        Known {
            claim: Some(ClaimState {
                owner: owner(by),
                until: t(until),
            }),
            ..Known::default()
        }
    }

    fn done(by: Option<&str>) -> Known {
        Known {
            done: Some(by.map(owner)),
            ..Known::default()
        }
    }

    const BLOOM: Known = Known {
        claim: None,
        done: None,
        bloom_only: true,
    };

    #[test]
    fn checks_and_marks() {
        let a = Some(owner("a"));
        let check = |k| decide(Ask::Check, k, t(NOW));
        let mark = |k, me| decide(Ask::Mark(me), k, t(NOW));
        assert_eq!(check(Known::default()), Decision::Verdict(Verdict::New));
        assert_eq!(check(done(None)), Decision::Verdict(Verdict::Duplicate));
        assert_eq!(check(BLOOM), Decision::Verdict(Verdict::ProbableDuplicate));
        assert_eq!(
            check(claim("b", NOW + 1)),
            Decision::Verdict(Verdict::InProgress { until: t(NOW + 1) })
        );
        assert_eq!(check(claim("b", NOW)), Decision::Verdict(Verdict::New));

        assert_eq!(
            mark(Known::default(), a),
            Decision::MarkDone {
                clears_claim: false
            }
        );
        assert_eq!(
            mark(done(Some("a")), a),
            Decision::Verdict(Verdict::Replayed)
        );
        assert_eq!(
            mark(done(Some("a")), None),
            Decision::Verdict(Verdict::Duplicate)
        );
        assert_eq!(
            mark(done(None), None),
            Decision::Verdict(Verdict::Duplicate)
        );
        assert_eq!(
            mark(done(Some("b")), a),
            Decision::Verdict(Verdict::Duplicate)
        );
        assert_eq!(
            mark(BLOOM, a),
            Decision::Verdict(Verdict::ProbableDuplicate)
        );
        // Claims: the owner completes it (live or expired), others wait for a live one
        // and step over an expired one.
        assert_eq!(
            mark(claim("a", NOW - 1), a),
            Decision::MarkDone { clears_claim: true }
        );
        assert_eq!(
            mark(claim("b", NOW + 5), a),
            Decision::Verdict(Verdict::InProgress { until: t(NOW + 5) })
        );
        assert_eq!(
            mark(claim("b", NOW), None),
            Decision::MarkDone { clears_claim: true }
        );
    }

    #[test]
    fn claims() {
        let a = owner("a");
        let ask = Ask::Claim {
            owner: a,
            until: t(NOW + 100),
            lease: Duration::from_millis(100),
        };
        let acquired = |until, replayed, taken_over| {
            Decision::PutClaim(ClaimOutcome::Acquired {
                until: t(until),
                replayed,
                taken_over,
            })
        };
        assert_eq!(
            decide(ask, Known::default(), t(NOW)),
            acquired(NOW + 100, false, false)
        );
        assert_eq!(
            decide(ask, claim("a", NOW + 500), t(NOW)),
            acquired(NOW + 500, true, false),
            "a renewal never shortens the lease"
        );
        assert_eq!(
            decide(ask, claim("a", NOW), t(NOW)),
            acquired(NOW + 100, false, false)
        );
        assert_eq!(
            decide(ask, claim("b", NOW), t(NOW)),
            acquired(NOW + 100, false, true)
        );
        assert_eq!(
            decide(ask, claim("b", NOW + 1), t(NOW)),
            Decision::Claim(ClaimOutcome::InProgress { until: t(NOW + 1) })
        );
        assert_eq!(
            decide(ask, done(Some("a")), t(NOW)),
            Decision::Claim(ClaimOutcome::Duplicate)
        );
        assert_eq!(
            decide(ask, BLOOM, t(NOW)),
            Decision::Claim(ClaimOutcome::ProbableDuplicate)
        );
    }

    #[test]
    fn completions_and_releases() {
        let a = owner("a");
        let complete = |k| decide(Ask::Complete(a), k, t(NOW));
        let release = |k| decide(Ask::Release(a), k, t(NOW));
        assert_eq!(
            complete(claim("a", NOW - 5)),
            Decision::MarkDone { clears_claim: true }
        );
        assert!(matches!(
            complete(claim("b", NOW + 5)),
            Decision::Conflict(_)
        ));
        assert!(matches!(
            complete(claim("b", NOW - 5)),
            Decision::Conflict(_)
        ));
        assert_eq!(complete(done(Some("a"))), Decision::Nothing);
        assert!(matches!(complete(done(Some("b"))), Decision::Conflict(_)));
        assert!(matches!(complete(Known::default()), Decision::Conflict(_)));

        assert_eq!(release(claim("a", NOW + 5)), Decision::DeleteClaim);
        assert_eq!(release(claim("a", NOW - 5)), Decision::DeleteClaim);
        assert!(matches!(
            release(claim("b", NOW + 5)),
            Decision::Conflict(_)
        ));
        assert_eq!(release(claim("b", NOW - 5)), Decision::Nothing);
        assert_eq!(release(Known::default()), Decision::Nothing);
        assert_eq!(release(BLOOM), Decision::Nothing);
        assert!(matches!(release(done(Some("a"))), Decision::Conflict(_)));
    }

    #[test]
    fn forgets() {
        let forget = |k| decide(Ask::Forget, k, t(NOW));
        assert_eq!(forget(done(None)), Decision::DeleteMark);
        assert_eq!(forget(done(Some("a"))), Decision::DeleteMark);
        assert_eq!(forget(Known::default()), Decision::Nothing);
        assert_eq!(forget(BLOOM), Decision::Nothing, "nothing exact to delete");
        assert_eq!(
            forget(claim("a", NOW + 5)),
            Decision::Nothing,
            "a live claim is left alone"
        );
        assert_eq!(forget(claim("a", NOW - 5)), Decision::Nothing);
        let expired_beside_mark = Known {
            done: Some(None),
            ..claim("a", NOW - 5)
        };
        assert_eq!(forget(expired_beside_mark), Decision::DeleteMark);
        let live_beside_mark = Known {
            done: Some(None),
            ..claim("a", NOW + 5)
        };
        assert_eq!(forget(live_beside_mark), Decision::Nothing);
    }
}
