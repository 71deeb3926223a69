//! Batched check and check-and-mark (see "How a batch is decided" in the module
//! above).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::claim_table;
use super::flight::{Flight, FlightId, IdentityHasher, key_of};
use super::namespace::{Namespace, State};
use super::{Local, lock, lock_briefly};
use crate::error::Error;
use crate::exact::{MarkValue, Owner, OwnerFp};
use crate::generation::{GenerationId, SealReason};
use crate::hash::IdHash;
use crate::id::EventId;
use crate::store::Batch;
use crate::tracker::CallVerdicts;
use crate::tracker::decide::{Ask, Decision, Known, decide};
use crate::tracker::engine::MarkCall;
use crate::verdict::Verdict;

#[derive(Clone, Copy)]
pub(super) enum Mode<'a> {
    Check,
    Mark(Owners<'a>),
}

/// Who marks: one owner for the whole call, or one per ID (several callers' calls
/// decided in one pass).
#[derive(Clone, Copy)]
pub(super) enum Owners<'a> {
    One(Option<OwnerFp>),
    Each(&'a [Option<OwnerFp>]),
}

impl Owners<'_> {
    fn of(self, i: usize) -> Option<OwnerFp> {
        match self {
            Self::One(owner) => owner,
            Self::Each(owners) => owners[i],
        }
    }
}

impl Mode<'_> {
    fn ask(self, i: usize) -> Ask {
        match self {
            Self::Check => Ask::Check,
            Self::Mark(owners) => Ask::Mark(owners.of(i)),
        }
    }
}

/// One call's fixed inputs.
#[derive(Clone, Copy)]
struct Call<'a> {
    ns: &'a Namespace,
    ids: &'a [EventId<'a>],
    hashes: &'a [IdHash],
    mode: Mode<'a>,
    /// Give up with [`Error::WouldBlock`], before anything is written, rather than
    /// wait (see [`Local::try_check_and_mark`]).
    nonblocking: bool,
}

/// How one attempt at a call ended.
enum Attempt {
    Decided(Vec<Verdict>),
    /// IDs of the call are held by other callers' writes: wait for these, then
    /// start over.
    Wait(Vec<Arc<Flight>>),
    /// The exact horizon moved while IDs were looked up: start over.
    Again,
}

/// What the locked first step found, for the last.
struct Probe {
    /// The generations that decide whether a lookup still holds.
    epoch: (GenerationId, GenerationId, GenerationId),
    /// Exact-table lookups, `(index, generation)`, grouped by index in ascending
    /// order, newest generation first.
    lookups: Vec<(usize, GenerationId)>,
    /// Whether a Bloom-only generation's filter holds each ID.
    bloom_only: Vec<bool>,
}

/// One attempt's flight and write.
///
/// Dropping it unfinished (an error, or a panic unwinding through it) settles it as
/// failed: held IDs are let go, counts given back, and waiters woken to decide
/// afresh.
struct Pass<'a> {
    ns: &'a Namespace,
    hashes: &'a [IdHash],
    flight: Arc<Flight>,
    flight_id: FlightId,
    /// Whether the flight is registered in the namespace state.
    registered: bool,
    finished: bool,
    batch: Batch,
    /// Indices this attempt marks new, with the generation each is counted in.
    mine: Vec<(usize, GenerationId)>,
    /// IDs counted into each generation, to settle after the write.
    counted: Vec<(GenerationId, u64)>,
    /// Indices whose claims the marks clear.
    clears: Vec<usize>,
    /// Indices held while looked up outside the lock.
    reserved: Vec<usize>,
    /// Whether the namespace had catching up to do when the attempt settled.
    catch_up_due: bool,
}

impl<'a> Pass<'a> {
    fn new(call: &Call<'a>) -> Self {
        Self {
            ns: call.ns,
            hashes: call.hashes,
            flight: Arc::new(Flight::default()),
            flight_id: call.ns.next_flight.fetch_add(1, Ordering::Relaxed),
            registered: false,
            finished: false,
            batch: Batch::with_capacity(
                call.ids.len(),
                call.ids.first().map_or(16, |id| id.as_bytes().len()),
            ),
            mine: Vec::new(),
            counted: Vec::new(),
            clears: Vec::new(),
            reserved: Vec::new(),
            catch_up_due: false,
        }
    }

    fn count(&mut self, g: GenerationId) {
        match self.counted.last_mut() {
            Some((last, n)) if *last == g => *n += 1,
            _ => self.counted.push((g, 1)),
        }
    }

    /// Settles the attempt: on success the marks' bits go into their generations and
    /// their claims are gone; either way the IDs are let go and waiters woken.
    fn finish(&mut self, ok: bool) {
        self.finished = true;
        // An attempt that never registered (or gave up on the lock) holds nothing,
        // and must not wait for the lock here either.
        if self.registered {
            let mut st = lock(&self.ns.state);
            let fid = self.flight_id;
            for &(i, g) in &self.mine {
                if ok {
                    st.ring.insert_landed(g, self.hashes[i]);
                }
                st.flights.let_go(key_of(self.hashes[i]), fid);
            }
            for &(g, n) in &self.counted {
                st.settle_pending(g, n);
                if !ok {
                    st.ring.unrecord(g, n);
                }
            }
            if ok {
                for &i in &self.clears {
                    st.claims.remove(key_of(self.hashes[i]));
                }
            }
            for &i in &self.reserved {
                st.flights.let_go(key_of(self.hashes[i]), fid);
            }
            st.flights.unregister(fid);
            if !st.has_pending() {
                self.ns.settled.notify_all();
            }
            self.catch_up_due = st.catch_up_due;
        }
        self.flight.finish();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(false);
        }
    }
}

impl Local {
    /// See [`Tracker::check_and_mark`](crate::Tracker::check_and_mark) and
    /// [`Tracker::try_check_and_mark`](crate::Tracker::try_check_and_mark).
    pub(crate) fn check_and_mark(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let ns = self.namespace_handle(namespace)?;
        let owner = owner.map(|o| OwnerFp::of(o, ns.seed));
        gave_up(self.run(&ns, ids, Mode::Mark(Owners::One(owner)), None, nonblocking))
    }

    /// See [`Tracker::check_and_mark_each`](crate::Tracker::check_and_mark_each):
    /// the valid calls, decided in one pass and written in one write.
    pub(crate) fn check_and_mark_each(
        &self,
        namespace: &str,
        calls: &[MarkCall<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<CallVerdicts>>, Error> {
        let ns = self.namespace_handle(namespace)?;
        let mut ids: Vec<EventId<'_>> = Vec::new();
        let mut owners: Vec<Option<OwnerFp>> = Vec::new();
        for (call_ids, owner) in calls {
            ids.extend_from_slice(call_ids);
            let owner = owner.map(|o| OwnerFp::of(o, ns.seed));
            owners.extend(std::iter::repeat_n(owner, call_ids.len()));
        }
        let all = if ids.is_empty() {
            Vec::new()
        } else {
            match gave_up(self.run(
                &ns,
                &ids,
                Mode::Mark(Owners::Each(&owners)),
                None,
                nonblocking,
            ))? {
                Some(v) => v,
                None => return Ok(None),
            }
        };
        let mut rest = all.into_iter();
        Ok(Some(
            calls
                .iter()
                .map(|(call_ids, _)| Ok(rest.by_ref().take(call_ids.len()).collect()))
                .collect(),
        ))
    }

    /// See [`Tracker::check`](crate::Tracker::check) and
    /// [`Tracker::try_check`](crate::Tracker::try_check).
    pub(crate) fn check(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let ns = self.namespace_handle(namespace)?;
        gave_up(self.run(&ns, ids, Mode::Check, None, nonblocking))
    }

    /// Decides a batch, writing at most once: its new marks and `extra` (a
    /// checkpoint) in one atomic batch, or nothing.
    ///
    /// With `nonblocking`, the call gives up with [`Error::WouldBlock`] rather than
    /// wait, before anything is written.
    pub(super) fn run(
        &self,
        ns: &Namespace,
        ids: &[EventId<'_>],
        mode: Mode<'_>,
        extra: Option<&Batch>,
        nonblocking: bool,
    ) -> Result<Vec<Verdict>, Error> {
        let hashes: Vec<IdHash> = ids.iter().map(|id| ns.seed.hash(id.as_bytes())).collect();
        let call = Call {
            ns,
            ids,
            hashes: &hashes,
            mode,
            nonblocking,
        };
        loop {
            match self.attempt(&call, extra)? {
                Attempt::Decided(verdicts) => return Ok(verdicts),
                Attempt::Wait(flights) => {
                    for flight in flights {
                        flight.wait();
                    }
                }
                Attempt::Again => {}
            }
        }
    }

    /// One attempt at a call: a locked decision, maybe lookups outside the lock, and
    /// the write.
    fn attempt(&self, call: &Call<'_>, extra: Option<&Batch>) -> Result<Attempt, Error> {
        let Call {
            ns,
            mode,
            nonblocking,
            ..
        } = *call;
        // Every write under `sync` waits for an fsync.
        if nonblocking && matches!(mode, Mode::Mark(_)) && self.sync_writes() {
            return Err(Error::WouldBlock);
        }
        let mut verdicts: Vec<Option<Verdict>> = vec![None; call.ids.len()];
        // The pass exists before the lock is taken, so that on an error or a panic
        // the lock is released (dropped first) before the pass settles, which takes
        // the lock again.
        let mut pass = Pass::new(call);
        let probe = {
            let mut st = if nonblocking {
                lock_briefly(&ns.state).ok_or(Error::WouldBlock)?
            } else {
                lock(&ns.state)
            };
            st.usable(&ns.name)?;
            let now = self.inner.time.now();
            if st.ring.due(now).is_some() {
                // A rotation writes a snapshot: a non-blocking call leaves it.
                if nonblocking {
                    return Err(Error::WouldBlock);
                }
                self.rotate_due(ns, &mut st, now)?;
            }
            let waits = held_elsewhere(&st, call.hashes);
            if !waits.is_empty() {
                if nonblocking {
                    return Err(Error::WouldBlock);
                }
                return Ok(Attempt::Wait(waits));
            }
            st.flights
                .register(pass.flight_id, Arc::clone(&pass.flight));
            pass.registered = true;
            let probe = probe(&st, call);
            if probe.lookups.is_empty() {
                self.settle(&mut st, call, &probe, &[], &mut pass, &mut verdicts)?;
                None
            } else {
                // Exact-table lookups are disk reads: they run outside the lock, so
                // that concurrent callers do not queue behind them, with every ID of
                // a mark held so that no other caller decides one meanwhile.
                if matches!(mode, Mode::Mark(_)) {
                    for (i, &h) in call.hashes.iter().enumerate() {
                        st.flights.hold(key_of(h), pass.flight_id);
                        pass.reserved.push(i);
                    }
                }
                Some(probe)
            }
        };
        if let Some(probe) = probe {
            crate::failpoint!("mark.before-lookup");
            let values = self.lookup(call, &probe.lookups)?;
            let mut st = lock(&ns.state);
            st.usable(&ns.name)?;
            if epoch(&st) != probe.epoch {
                // A rotation or reconfiguration moved the exact horizon: what was
                // looked up may no longer be the whole story.
                if nonblocking {
                    return Err(Error::WouldBlock);
                }
                return Ok(Attempt::Again);
            }
            self.settle(&mut st, call, &probe, &values, &mut pass, &mut verdicts)?;
        }
        crate::failpoint!("mark.after-filter");
        if let Some(extra) = extra {
            pass.batch.extend(extra);
        }
        let written = if pass.batch.is_empty() {
            Ok(())
        } else {
            self.inner.heartbeat(&mut pass.batch, false);
            if nonblocking {
                self.inner.write_nonblocking(&pass.batch)
            } else {
                self.inner.write(&pass.batch, self.sync_writes())
            }
        };
        pass.finish(written.is_ok());
        written?;
        if pass.catch_up_due && !nonblocking {
            self.catch_up_logged(ns);
        }
        Ok(Attempt::Decided(
            verdicts
                .into_iter()
                .map(|v| match v.expect("every ID is decided before the write") {
                    Verdict::InProgress { until } => Verdict::InProgress {
                        until: self.inner.time.to_clock(until),
                    },
                    other => other,
                })
                .collect(),
        ))
    }

    /// The exact-table values of `lookups`, in order.
    fn lookup(
        &self,
        call: &Call<'_>,
        lookups: &[(usize, GenerationId)],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let keys: Vec<(GenerationId, &[u8])> = lookups
            .iter()
            .map(|&(i, g)| (g, call.ids[i].as_bytes()))
            .collect();
        if call.nonblocking {
            self.inner.store.get_marks_cached(call.ns.id, &keys)
        } else {
            self.inner.store.get_marks(call.ns.id, &keys)
        }
    }

    /// The locked last step: every ID is decided from what is known of it, and the
    /// new ones are counted into the open generation, held, and put in the batch.
    fn settle(
        &self,
        st: &mut State,
        call: &Call<'_>,
        probe: &Probe,
        values: &[Option<Vec<u8>>],
        pass: &mut Pass<'_>,
        verdicts: &mut [Option<Verdict>],
    ) -> Result<(), Error> {
        let Call {
            ns,
            ids,
            hashes,
            mode,
            nonblocking,
        } = *call;
        // The IDs held for the lookups are decided below, by this attempt.
        for &i in &pass.reserved {
            st.flights.let_go(key_of(hashes[i]), pass.flight_id);
        }
        pass.reserved.clear();
        let now = self.inner.time.now();

        // Lookups of one ID are adjacent, newest generation first: the first value
        // found is the one that counts.
        let mut to_mark: Vec<(usize, bool)> = Vec::new();
        let mut at = 0;
        for (i, &h) in hashes.iter().enumerate() {
            let mut done = None;
            while at < probe.lookups.len() && probe.lookups[at].0 == i {
                if done.is_none()
                    && let Some(value) = &values[at]
                {
                    done = Some(MarkValue::done_by(value)?);
                }
                at += 1;
            }
            let known = Known {
                claim: st.claims.get(key_of(h)),
                done,
                bloom_only: probe.bloom_only[i],
            };
            match decide(mode.ask(i), known, now) {
                Decision::Verdict(v) => verdicts[i] = Some(v),
                Decision::MarkDone { clears_claim } => to_mark.push((i, clears_claim)),
                other => unreachable!("a check or mark decided {other:?}"),
            }
        }
        let Mode::Mark(owners) = mode else {
            return Ok(());
        };
        // Nothing is changed yet: a non-blocking call may still give up where it
        // would have to seal the open generation (which writes a snapshot).
        let open = st.ring.current();
        if nonblocking && open.ids() + to_mark.len() as u64 > open.seals_at() {
            return Err(Error::WouldBlock);
        }
        // Input order decides which occurrence of a repeated ID is the new one, and
        // which generation each ID lands in.
        for (i, clears_claim) in to_mark {
            let key = key_of(hashes[i]);
            let owner = owners.of(i);
            if let Some((holder, _)) = st.flights.holder(key) {
                // Repeated within this batch (or, by a 2^-128 chance, a collision):
                // every other holder was waited for before deciding. The owner gets
                // its new back. (With an owner per ID, `later_calls` rules below.)
                debug_assert_eq!(holder, pass.flight_id);
                verdicts[i] = Some(if owner.is_some() {
                    Verdict::Replayed
                } else {
                    Verdict::Duplicate
                });
                continue;
            }
            let open = st.ring.current();
            if open.ids() >= open.seals_at() {
                self.rotate(ns, st, now, SealReason::Capacity)?;
            }
            let g = st.ring.count_new();
            st.add_pending(g, 1);
            pass.count(g);
            let id = ids[i].as_bytes();
            pass.batch
                .put_mark(ns.id, g, id, MarkValue::Done { owner }.encode().as_slice());
            if clears_claim {
                claim_table::delete_record(&mut pass.batch, ns.id, id);
                pass.clears.push(i);
            }
            st.flights.hold(key, pass.flight_id);
            pass.mine.push((i, g));
            verdicts[i] = Some(Verdict::New);
        }
        if let Owners::Each(each) = owners {
            later_calls(hashes, each, &pass.mine, verdicts);
        }
        Ok(())
    }
}

/// Several callers' calls decided in one pass: every ID was decided against the
/// state before the pass, but an ID an earlier call marks new here is, for every
/// later call, already done: a duplicate, or replayed for the same owner (where the
/// state before would have said, say, that its claim is in progress).
fn later_calls(
    hashes: &[IdHash],
    owners: &[Option<OwnerFp>],
    mine: &[(usize, GenerationId)],
    verdicts: &mut [Option<Verdict>],
) {
    if mine.is_empty() {
        return;
    }
    let marked: HashMap<u128, usize, BuildHasherDefault<IdentityHasher>> =
        mine.iter().map(|&(j, _)| (key_of(hashes[j]), j)).collect();
    for (i, &h) in hashes.iter().enumerate() {
        if let Some(&j) = marked.get(&key_of(h))
            && j < i
        {
            verdicts[i] = Some(match owners[i] {
                Some(me) if owners[j] == Some(me) => Verdict::Replayed,
                _ => Verdict::Duplicate,
            });
        }
    }
}

/// The flights holding any of `hashes`, each once.
fn held_elsewhere(st: &State, hashes: &[IdHash]) -> Vec<Arc<Flight>> {
    let mut waits: Vec<Arc<Flight>> = Vec::new();
    if st.flights.is_empty() {
        return waits;
    }
    for &h in hashes {
        if let Some((_, flight)) = st.flights.holder(key_of(h))
            && !waits.iter().any(|w| Arc::ptr_eq(w, flight))
        {
            waits.push(Arc::clone(flight));
        }
    }
    waits
}

/// The locked first step: every generation's filter is probed (one generation at a
/// time over the whole batch, so that each filter's cache misses overlap), and the
/// exact-table lookups are collected.
fn probe(st: &State, call: &Call<'_>) -> Probe {
    let hits: Vec<(GenerationId, Vec<bool>)> = st
        .ring
        .iter()
        .map(|g| (g.id(), g.filter().contains_batch(call.hashes)))
        .collect();
    let mut out = Probe {
        epoch: epoch(st),
        lookups: Vec::new(),
        bloom_only: vec![false; call.hashes.len()],
    };
    for i in 0..call.hashes.len() {
        for (g, hit) in &hits {
            if hit[i] {
                if *g >= st.exact_floor {
                    out.lookups.push((i, *g));
                } else {
                    out.bloom_only[i] = true;
                }
            }
        }
    }
    out
}

/// What decides whether a lookup made outside the lock still holds: the live
/// generations and which of them keep exact tables.
fn epoch(st: &State) -> (GenerationId, GenerationId, GenerationId) {
    (
        st.ring.oldest().id(),
        st.exact_floor,
        st.ring.current().id(),
    )
}

/// A non-blocking call's answer: `None` where it gave up.
fn gave_up(result: Result<Vec<Verdict>, Error>) -> Result<Option<Vec<Verdict>>, Error> {
    match result {
        Ok(verdicts) => Ok(Some(verdicts)),
        Err(Error::WouldBlock) => Ok(None),
        Err(e) => Err(e),
    }
}
