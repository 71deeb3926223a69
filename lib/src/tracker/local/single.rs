//! Operations on one ID (claims, completions, releases, transactions): decided under
//! the namespace lock from everything known of the ID, and, when they must write,
//! written with the ID held in flight, so that concurrent callers wait for them and
//! then decide afresh from what they left.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::claim_table::{self, Claim};
use super::flight::{Flight, FlightId, key_of};
use super::namespace::{Namespace, State};
use super::{ClaimOutcome, Local, lock};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::MarkValue;
use crate::generation::{GenerationId, SealReason};
use crate::hash::IdHash;
use crate::store::Batch;
use crate::tracker::decide::{Ask, ClaimState, Decision, Known, decide};

/// A decision about one ID: answered, or held in flight until written.
pub(super) enum One<'a> {
    /// Nothing to write.
    Answered(Decision),
    /// To be written with [`Held::commit`]; dropping it writes nothing.
    Held(Held<'a>),
}

/// A decision that must be written, its ID held in flight meanwhile. The generation
/// a mark lands in is chosen only at [`commit`](Self::commit), so that a
/// transaction's closure may take its time without holding anything but the ID.
#[must_use]
pub(super) struct Held<'a> {
    tracker: &'a Local,
    ns: &'a Namespace,
    id: &'a [u8],
    h: IdHash,
    ask: Ask,
    decision: Decision,
    flight_id: FlightId,
    flight: Arc<Flight>,
    finished: bool,
}

impl Held<'_> {
    pub(super) const fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Writes the decision, with `extra` writes in the same batch (a transaction's),
    /// and settles it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] or [`Error::UnknownNamespace`] when the tracker closed or
    /// the namespace went meanwhile, a rotation's storage error, or the write's:
    /// then nothing was written.
    pub(super) fn commit(mut self, extra: impl FnOnce(&mut Batch)) -> Result<(), Error> {
        let (tracker, ns, id) = (self.tracker, self.ns, self.id);
        let mut batch = Batch::new();
        let mut counted: Option<GenerationId> = None;
        let mut claim: Option<Claim> = None;
        {
            let mut st = lock(&ns.state);
            st.usable(&ns.name)?;
            let now = tracker.inner.time.now();
            match (&self.decision, self.ask) {
                (Decision::MarkDone { clears_claim }, ask) => {
                    let owner = match ask {
                        Ask::Mark(owner) => owner,
                        Ask::Complete(me) => Some(me),
                        other => unreachable!("{other:?} marks nothing"),
                    };
                    let open = st.ring.current();
                    if open.ids() >= open.seals_at() {
                        tracker.rotate(ns, &mut st, now, SealReason::Capacity)?;
                    }
                    let g = st.ring.count_new();
                    st.add_pending(g, 1);
                    counted = Some(g);
                    batch.put_mark(ns.id, g, id, MarkValue::Done { owner }.encode().as_slice());
                    if *clears_claim {
                        claim_table::delete_record(&mut batch, ns.id, id);
                    }
                }
                (
                    Decision::PutClaim(ClaimOutcome::Acquired { until, .. }),
                    Ask::Claim { owner, lease, .. },
                ) => {
                    let held = Claim {
                        id: id.into(),
                        state: ClaimState {
                            owner,
                            until: *until,
                        },
                        lease,
                    };
                    claim_table::put_record(&mut batch, ns.id, &held);
                    claim = Some(held);
                }
                (Decision::DeleteClaim, _) => claim_table::delete_record(&mut batch, ns.id, id),
                (other, ask) => unreachable!("{ask:?} decided {other:?}, which writes nothing"),
            }
        }
        extra(&mut batch);
        tracker.inner.heartbeat(&mut batch, false);
        let written = tracker.inner.write(&batch, tracker.sync_writes());
        let ok = written.is_ok();
        let catch_up = {
            let mut st = lock(&ns.state);
            let key = key_of(self.h);
            if let Some(g) = counted {
                st.settle_pending(g, 1);
                if ok {
                    st.ring.insert_landed(g, self.h);
                } else {
                    st.ring.unrecord(g, 1);
                }
            }
            if ok {
                match (&self.decision, claim) {
                    (_, Some(claim)) => st.claims.put(key, claim),
                    (Decision::MarkDone { clears_claim: true } | Decision::DeleteClaim, _) => {
                        st.claims.remove(key);
                    }
                    _ => {}
                }
            }
            self.let_go(&mut st);
            st.catch_up_due
        };
        self.finished = true;
        self.flight.finish();
        if catch_up {
            tracker.catch_up_logged(ns);
        }
        written
    }

    fn let_go(&self, st: &mut State) {
        st.flights.let_go(key_of(self.h), self.flight_id);
        st.flights.unregister(self.flight_id);
        if !st.has_pending() {
            self.ns.settled.notify_all();
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let mut st = lock(&self.ns.state);
            self.let_go(&mut st);
            drop(st);
            self.flight.finish();
        }
    }
}

impl Local {
    /// Decides what `ask` (given the store time) means for one ID, after any write
    /// of the same ID in flight has finished.
    pub(super) fn decide_one<'a>(
        &'a self,
        ns: &'a Namespace,
        id: &'a [u8],
        ask: impl Fn(Timestamp) -> Ask,
    ) -> Result<One<'a>, Error> {
        let h = ns.seed.hash(id);
        let key = key_of(h);
        loop {
            let mut st = lock(&ns.state);
            st.usable(&ns.name)?;
            let now = self.inner.time.now();
            self.rotate_due(ns, &mut st, now)?;
            if let Some((_, flight)) = st.flights.holder(key) {
                let flight = Arc::clone(flight);
                drop(st);
                flight.wait();
                continue;
            }
            let known = self.known(ns, &st, id, h)?;
            let ask = ask(now);
            let decision = decide(ask, known, now);
            if !matches!(
                decision,
                Decision::MarkDone { .. } | Decision::PutClaim(_) | Decision::DeleteClaim
            ) {
                let catch_up = st.catch_up_due;
                drop(st);
                if catch_up {
                    self.catch_up_logged(ns);
                }
                return Ok(One::Answered(decision));
            }
            let flight_id = ns.next_flight.fetch_add(1, Ordering::Relaxed);
            let flight = Arc::new(Flight::default());
            st.flights.register(flight_id, Arc::clone(&flight));
            st.flights.hold(key, flight_id);
            return Ok(One::Held(Held {
                tracker: self,
                ns,
                id,
                h,
                ask,
                decision,
                flight_id,
                flight,
                finished: false,
            }));
        }
    }

    /// Everything known of one ID: its claim, its newest mark in an exact table (read
    /// where a filter hits), and whether a Bloom-only filter holds it.
    fn known(&self, ns: &Namespace, st: &State, id: &[u8], h: IdHash) -> Result<Known, Error> {
        Ok(self.known_where(ns, st, id, h)?.0)
    }

    /// [`known`](Self::known), with the exact generations that hold a mark of the
    /// ID, newest first.
    pub(super) fn known_where(
        &self,
        ns: &Namespace,
        st: &State,
        id: &[u8],
        h: IdHash,
    ) -> Result<(Known, Vec<GenerationId>), Error> {
        let mut exact: Vec<(GenerationId, &[u8])> = Vec::new();
        let mut bloom_only = false;
        for g in st.ring.iter() {
            if g.filter().contains_hash(h) {
                if g.id() >= st.exact_floor {
                    exact.push((g.id(), id));
                } else {
                    bloom_only = true;
                }
            }
        }
        let mut done = None;
        let mut marked_in = Vec::new();
        if !exact.is_empty() {
            // Newest generation first: the first value found is the one that counts.
            let values = self.inner.store.get_marks(ns.id, &exact)?;
            for ((g, _), value) in exact.iter().zip(values) {
                if let Some(value) = value {
                    if done.is_none() {
                        done = Some(MarkValue::done_by(&value)?);
                    }
                    marked_in.push(*g);
                }
            }
        }
        let known = Known {
            claim: st.claims.get(key_of(h)),
            done,
            bloom_only,
        };
        Ok((known, marked_in))
    }
}
