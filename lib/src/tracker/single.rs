//! Operations on one ID that read its record and maybe rewrite it (claims,
//! transactions), with the same in-flight protection as check-and-mark.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Flight, Namespace, State, Tracker, key_of, lock};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::{MarkValue, OwnerFp};
use crate::generation::{GenerationId, SealReason};
use crate::hash::IdHash;
use crate::store::Batch;

/// What the store holds for an ID.
#[derive(Clone, Copy, Debug)]
pub(super) enum Found {
    /// An exact table holds it (the newest such generation).
    Exact {
        generation: GenerationId,
        value: MarkValue,
    },
    /// No exact table holds it; `bloom_only` says whether a Bloom-only generation's
    /// filter claims to have seen it.
    Absent { bloom_only: bool },
}

/// What an operation decided, under the namespace lock.
pub(super) enum Decision<T> {
    /// Answer now, write nothing.
    Answer(T),
    /// Write the context's batch, then answer.
    Write(T),
}

/// The namespace state and a batch to fill, for one ID.
pub(super) struct Ctx<'a> {
    tracker: &'a Tracker,
    ns: &'a Namespace,
    st: &'a mut State,
    pub(super) batch: Batch,
    id: &'a [u8],
    h: IdHash,
    pub(super) now: Timestamp,
}

impl Ctx<'_> {
    /// Marks the ID into the open generation (sealing it first if full).
    pub(super) fn mark_new(&mut self, value: MarkValue) -> Result<(), Error> {
        if self.st.ring.current().ids() >= self.st.ring.config().generation_capacity() {
            self.tracker
                .rotate(self.ns, self.st, self.now, SealReason::Capacity)?;
        }
        self.st.ring.record_new(self.h);
        let g = self.st.ring.current().id();
        self.batch
            .put_mark(self.ns.id, g, self.id, value.encode().as_slice());
        Ok(())
    }

    /// Rewrites the ID's record where it was found.
    pub(super) fn put_at(&mut self, generation: GenerationId, value: MarkValue) {
        self.batch
            .put_mark(self.ns.id, generation, self.id, value.encode().as_slice());
    }

    /// Deletes the ID's record where it was found.
    pub(super) fn delete_at(&mut self, generation: GenerationId) {
        self.batch.delete_mark(self.ns.id, generation, self.id);
    }
}

/// A decided write whose ID is registered in flight: concurrent callers wait for it.
/// [`commit`](Self::commit) writes it; dropping it aborts (nothing written, waiters
/// decide again).
#[must_use]
pub(super) struct Reservation<'a> {
    tracker: &'a Tracker,
    ns: &'a Namespace,
    key: u128,
    flight_id: u64,
    flight: Arc<Flight>,
    pub(super) batch: Batch,
    finished: bool,
}

impl Reservation<'_> {
    pub(super) fn commit(mut self) -> Result<(), Error> {
        self.tracker.inner.heartbeat(&mut self.batch, false);
        let written = self
            .tracker
            .inner
            .write(&self.batch, self.tracker.sync_writes());
        // Waiters decide afresh from the record itself, whatever the outcome: a
        // claim, its completion, its release and a transaction leave different
        // records, which "the write succeeded" cannot tell apart (a check-and-mark
        // waiting on a release must find the ID gone and answer `new`).
        self.finish();
        written
    }

    /// Takes the ID out of flight and has its waiters decide afresh.
    fn finish(&mut self) {
        self.finished = true;
        {
            let mut st = lock(&self.ns.state);
            if st.inflight.get(&self.key) == Some(&self.flight_id) {
                st.inflight.remove(&self.key);
            }
            st.flights.remove(&self.flight_id);
        }
        self.flight.finish(false);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish();
        }
    }
}

/// What [`Tracker::with_found`] hands back.
pub(super) enum Outcome<'a, T> {
    Answered(T),
    Reserved(T, Reservation<'a>),
}

impl Tracker {
    /// The newest exact record of an ID, or whether only Bloom-only filters know it.
    pub(super) fn find(
        &self,
        ns: &Namespace,
        st: &State,
        id: &[u8],
        h: IdHash,
    ) -> Result<Found, Error> {
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
        if !exact.is_empty() {
            let values = self.inner.store.get_marks(ns.id, &exact)?;
            for ((generation, _), value) in exact.iter().zip(values) {
                if let Some(bytes) = value {
                    return Ok(Found::Exact {
                        generation: *generation,
                        value: MarkValue::decode(&bytes)?,
                    });
                }
            }
        }
        Ok(Found::Absent { bloom_only })
    }

    /// Runs `decide` for one ID under the namespace lock, after any in-flight write
    /// of the same ID has finished. A `Write` decision comes back reserved.
    pub(super) fn with_found<'a, T>(
        &'a self,
        ns: &'a Namespace,
        id: &'a [u8],
        owner: Option<OwnerFp>,
        mut decide: impl FnMut(&mut Ctx<'_>, Found) -> Result<Decision<T>, Error>,
    ) -> Result<Outcome<'a, T>, Error> {
        let h = ns.seed.hash(id);
        let key = key_of(h);
        loop {
            let mut st = lock(&ns.state);
            Self::usable(ns, &st)?;
            let now = self.inner.clock.now();
            self.rotate_due(ns, &mut st, now)?;
            if let Some(fid) = st.inflight.get(&key) {
                let flight = Arc::clone(&st.flights[fid]);
                drop(st);
                let _ = flight.wait();
                continue;
            }
            let found = self.find(ns, &st, id, h)?;
            let mut ctx = Ctx {
                tracker: self,
                ns,
                st: &mut st,
                batch: Batch::new(),
                id,
                h,
                now,
            };
            let decision = decide(&mut ctx, found)?;
            let batch = ctx.batch;
            return Ok(match decision {
                Decision::Answer(t) => Outcome::Answered(t),
                Decision::Write(t) => {
                    let flight_id = ns.next_flight.fetch_add(1, Ordering::Relaxed);
                    let flight = Arc::new(Flight::new(owner));
                    st.inflight.insert(key, flight_id);
                    st.flights.insert(flight_id, Arc::clone(&flight));
                    Outcome::Reserved(
                        t,
                        Reservation {
                            tracker: self,
                            ns,
                            key,
                            flight_id,
                            flight,
                            batch,
                            finished: false,
                        },
                    )
                }
            });
        }
    }

    /// Refuses operations on a deleted namespace or a closed tracker.
    pub(super) fn usable(ns: &Namespace, st: &State) -> Result<(), Error> {
        if st.deleted {
            return Err(Error::UnknownNamespace(ns.name.to_string()));
        }
        if st.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }
}
