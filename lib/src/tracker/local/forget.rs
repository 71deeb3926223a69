//! Forgetting IDs (see [`Tracker::forget`](crate::Tracker::forget)): their marks
//! deleted from the exact tables in one write, decided under the namespace lock
//! like a claim, with the IDs held in flight until the write settles.
//!
//! What a forget leaves in a filter is the namespace state's business (see
//! "Forgotten IDs leave their bits behind" in `namespace`): here a forget counts
//! itself into every generation it deleted from, and holds those generations as
//! pending while it writes, so that none loses its table or has its snapshot
//! taken meanwhile.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::flight::{Flight, key_of};
use super::namespace::Namespace;
use super::{Local, lock};
use crate::error::Error;
use crate::generation::GenerationId;
use crate::hash::IdHash;
use crate::id::EventId;
use crate::records::{self, ForgetsRecord, RECORD_VERSION, forgets_key};
use crate::store::Batch;
use crate::tracker::decide::{Ask, Decision, decide};

impl Local {
    /// See [`Tracker::forget`](crate::Tracker::forget).
    pub(crate) fn forget(&self, namespace: &str, ids: &[EventId<'_>]) -> Result<Vec<bool>, Error> {
        let ns = self.namespace_handle(namespace)?;
        let hashes: Vec<IdHash> = ids.iter().map(|id| ns.seed.hash(id.as_bytes())).collect();
        loop {
            let mut st = lock(&ns.state);
            st.usable(&ns.name)?;
            let now = self.inner.time.now();
            self.rotate_due(&ns, &mut st, now)?;
            // Another caller's write of one of the IDs: wait for it, then decide
            // from what it left.
            let held = hashes
                .iter()
                .find_map(|&h| st.flights.holder(key_of(h)).map(|(_, f)| Arc::clone(f)));
            if let Some(flight) = held {
                drop(st);
                flight.wait();
                continue;
            }
            let mut forgotten = vec![false; ids.len()];
            // (index, generations its marks are in)
            let mut deletes: Vec<(usize, Vec<GenerationId>)> = Vec::new();
            let mut seen = HashSet::with_capacity(ids.len());
            for (i, (id, &h)) in ids.iter().zip(&hashes).enumerate() {
                // A repeated ID is forgotten once, by its first occurrence.
                if !seen.insert(key_of(h)) {
                    continue;
                }
                // A forget is rare and small: its exact-table reads run under the
                // lock, as a claim's do.
                let (known, marked_in) = self.known_where(&ns, &st, id.as_bytes(), h)?;
                match decide(Ask::Forget, known, now) {
                    Decision::DeleteMark => {
                        forgotten[i] = true;
                        deletes.push((i, marked_in));
                    }
                    Decision::Nothing => {}
                    other => unreachable!("a forget decided {other:?}"),
                }
            }
            if deletes.is_empty() {
                // A rotation above may have left catching up to do.
                let catch_up = st.catch_up_due;
                drop(st);
                if catch_up {
                    self.catch_up_logged(&ns);
                }
                return Ok(forgotten);
            }
            let flight_id = ns.next_flight.fetch_add(1, Ordering::Relaxed);
            let flight = Arc::new(Flight::default());
            st.flights.register(flight_id, Arc::clone(&flight));
            let mut batch = Batch::new();
            let mut touched: Vec<GenerationId> = Vec::new();
            for (i, gens) in &deletes {
                st.flights.hold(key_of(hashes[*i]), flight_id);
                for &g in gens {
                    batch.delete_mark(ns.id, g, ids[*i].as_bytes());
                    touched.push(g);
                }
            }
            touched.sort_unstable();
            for &g in &touched {
                st.add_pending(g, 1);
            }
            touched.dedup();
            for &g in &touched {
                let record = ForgetsRecord {
                    v: RECORD_VERSION,
                    generation: g.0,
                };
                batch.put_meta(&forgets_key(ns.id, g), &records::encode(&record));
            }
            self.inner.heartbeat(&mut batch, false);
            drop(st);

            let written = self.inner.write(&batch, self.sync_writes());
            let catch_up = settle(&ns, &deletes, &hashes, flight_id, written.is_ok());
            flight.finish();
            written?;
            if catch_up {
                self.catch_up_logged(&ns);
            }
            return Ok(forgotten);
        }
    }
}

/// Settles a forget's write: on success each generation it deleted from counts
/// the forget (its filter is rebuilt before its table goes); either way the
/// IDs are let go. Whether the namespace has catching up to do.
fn settle(
    ns: &Namespace,
    deletes: &[(usize, Vec<GenerationId>)],
    hashes: &[IdHash],
    flight_id: u64,
    ok: bool,
) -> bool {
    let mut st = lock(&ns.state);
    for (i, gens) in deletes {
        for &g in gens {
            if ok {
                st.forgot_in(g);
                if st
                    .ring
                    .generation(g)
                    .is_some_and(|g| g.sealed_at().is_some())
                {
                    st.catch_up_due = true;
                }
            }
            st.settle_pending(g, 1);
        }
        st.flights.let_go(key_of(hashes[*i]), flight_id);
    }
    st.flights.unregister(flight_id);
    if !st.has_pending() {
        ns.settled.notify_all();
    }
    st.catch_up_due
}
