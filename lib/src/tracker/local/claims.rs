//! Claims: exclusive, leased processing rights on an ID.
//!
//! `claim` gives one owner the right to process an ID for a lease; `complete` turns
//! the claim into a done mark; `release` forgets it so a redelivery can take it. A
//! lease that runs out lets the next claimant in, which is how a crashed consumer's
//! work is picked up again.
//!
//! A claim is not a mark. It lives in the namespace's claims table (in memory, and in
//! the store under its own keys), apart from the generations: rotations never touch
//! it, so it stays exclusive for its whole lease however many generations seal while
//! it is held, renewed or taken over; and it never reaches a Bloom filter, so a claim
//! given back (released, or expired uncompleted) leaves no trace. Only `complete`
//! writes a mark, into the open generation, in the same write that deletes the
//! claim.
//!
//! Leases count store time (see `time`): a wall clock stepped across a restart
//! neither ends a live lease early nor stretches an expired one.
//!
//! An expired claim stays in the table, so that its owner can still complete it,
//! until another owner takes the ID or it has been expired for as long as its lease
//! was; then [`Local::tick`] forgets it.

use std::time::Duration;

use super::claim_table::delete_record;
use super::single::One;
use super::{Local, lock};
use crate::error::Error;
use crate::exact::{Owner, OwnerFp};
use crate::id::EventId;
use crate::store::Batch;
use crate::tracker::ClaimOutcome;
use crate::tracker::decide::{Ask, Decision};

impl Local {
    /// See [`Tracker::claim`](crate::Tracker::claim).
    pub(crate) fn claim(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::of(owner, ns.seed);
        let outcome = match self.decide_one(&ns, id.as_bytes(), |now| Ask::Claim {
            owner: me,
            until: now.saturating_add(lease),
            lease,
        })? {
            One::Answered(Decision::Claim(outcome)) => outcome,
            One::Held(held) => match held.decision() {
                Decision::PutClaim(outcome) => {
                    let outcome = *outcome;
                    held.commit(|_| {})?;
                    outcome
                }
                other => unreachable!("a claim decided {other:?}"),
            },
            One::Answered(other) => unreachable!("a claim decided {other:?}"),
        };
        Ok(outcome.map_until(|t| self.inner.time.to_clock(t)))
    }

    /// See [`Tracker::complete`](crate::Tracker::complete).
    pub(crate) fn complete(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::of(owner, ns.seed);
        settle_simple(self.decide_one(&ns, id.as_bytes(), |_| Ask::Complete(me))?)
    }

    /// See [`Tracker::release`](crate::Tracker::release).
    pub(crate) fn release(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let me = OwnerFp::of(owner, ns.seed);
        settle_simple(self.decide_one(&ns, id.as_bytes(), |_| Ask::Release(me))?)
    }

    /// Forgets claims that have been expired for as long as their lease was (see the
    /// module docs). Called by [`Local::tick`].
    pub(super) fn forget_expired_claims(&self) -> Result<(), Error> {
        for ns in self.all_namespaces() {
            let mut st = lock(&ns.state);
            if st.deleted || st.closed {
                continue;
            }
            let now = self.inner.time.now();
            let gone: Vec<(u128, Box<[u8]>)> = st
                .claims
                .forgettable(now)
                .into_iter()
                // A claim being decided right now is that caller's to settle.
                .filter(|(key, _)| st.flights.holder(*key).is_none())
                .collect();
            if gone.is_empty() {
                continue;
            }
            let mut b = Batch::new();
            for (_, id) in &gone {
                delete_record(&mut b, ns.id, id);
            }
            self.inner.write(&b, false)?;
            for (key, _) in gone {
                st.claims.remove(key);
            }
        }
        Ok(())
    }
}

/// Finishes a completion or a release: writes what must be written, or reports why
/// not.
fn settle_simple(one: One<'_>) -> Result<(), Error> {
    match one {
        One::Answered(Decision::Nothing) => Ok(()),
        One::Answered(Decision::Conflict(why)) => Err(Error::Conflict(why)),
        One::Answered(other) => unreachable!("decided {other:?} without a write"),
        One::Held(held) => held.commit(|_| {}),
    }
}
