//! Rotation, and everything that follows it: sealed generations' snapshots, the
//! exact floor, and filters rebuilt before their tables go.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::namespace::{Namespace, State};
use super::{Local, lock};
use crate::clock::{Timestamp, duration_millis};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::{Generation, GenerationId, SealReason};
use crate::hash::HashSeed;
use crate::records::{self, RingRecord, ring_key};
use crate::sizing::{FilterSizing, size_filter};
use crate::store::{Batch, NamespaceId, Store};

/// At most how often [`Local::tick`] asks a failing store to recover.
const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Local {
    pub(super) fn rotate_due(
        &self,
        ns: &Namespace,
        st: &mut State,
        now: Timestamp,
    ) -> Result<(), Error> {
        if let Some(reason) = st.ring.due(now) {
            self.rotate(ns, st, now, reason)?;
        }
        Ok(())
    }

    /// Seals the open generation, persisting the new ring before it takes effect.
    ///
    /// The sealed generation's snapshot is saved now when every write into it has
    /// settled, else once they have ([`catch_up`](Self::catch_up)); it keeps its
    /// exact table until then. The floor moves as far as generations are ready for
    /// it, in the same batch as the new ring.
    pub(super) fn rotate(
        &self,
        ns: &Namespace,
        st: &mut State,
        now: Timestamp,
        reason: SealReason,
    ) -> Result<(), Error> {
        let persistent = self.inner.store.persistent();
        let old_floor = st.exact_floor;
        let rotation = st.ring.rotate(now, reason)?;
        let sealed = rotation.sealed;
        let rebuilt = self.rebuild_forgotten_now(ns, st, persistent);
        let live = st.ring.generation(sealed).is_some();
        let save_now = persistent && live && st.pending_in(sealed) == 0;
        if persistent && live && !save_now {
            st.unsaved.insert(sealed);
        }
        let floor = st.ready_floor(persistent);
        let persisted = (|| {
            if save_now && let Some(g) = st.ring.generation(sealed) {
                self.inner.store.save_snapshot(ns.id, sealed, g.filter())?;
            }
            crate::failpoint!("rotation.after-snapshot");
            let mut b = Batch::new();
            b.put_meta(
                &ring_key(ns.id),
                &records::encode(&RingRecord::of(&st.ring, floor)),
            );
            if floor > old_floor {
                st.drop_tables_below(&mut b, ns.id, floor);
            }
            // The new generation's age starts now: a heartbeat of now lets a
            // restart count it from here.
            self.inner.heartbeat(&mut b, true);
            self.inner.write(&b, self.sync_writes())
        })();
        if let Err(e) = persisted {
            st.unsaved.remove(&sealed);
            // Filters rebuilt for this rotation go back first: the generation it
            // sealed opens again, and its filter must be the one it was sized for.
            for (g, filter, rebuilt_without) in rebuilt {
                let _ = st.ring.swap_filter(g, filter);
                if let Some(f) = st.forgets.get_mut(&g) {
                    f.rebuilt_without = rebuilt_without;
                }
            }
            st.ring.undo(rotation);
            return Err(e);
        }
        st.floor_moved(floor);
        for g in &rotation.dropped {
            st.unsaved.remove(&g.id());
        }
        st.catch_up_due = floor < st.wanted_floor() || !st.unsaved.is_empty();
        // The new ring is committed and in effect; only tidying is left.
        crate::failpoint!("rotation.before-drop");
        tracing::debug!(
            namespace = %ns.name,
            sealed = rotation.sealed.0,
            reason = ?rotation.reason,
            dropped = rotation.dropped.len(),
            "generation sealed"
        );
        for g in &rotation.dropped {
            self.delete_snapshot_logged(ns, g.id());
        }
        Ok(())
    }

    /// Brings a namespace as far towards what its configuration asks as it can go
    /// now: saves the snapshots of sealed generations whose writes have settled,
    /// rebuilds from their exact tables the filters that are looser than the
    /// configuration now asks (see `State::needs_resize`), and moves the exact floor
    /// past every generation ready for it.
    ///
    /// Called after a rotation or reconfiguration, by the last write to settle into a
    /// sealed generation, at start-up, from [`Local::tick`] and at close. Cheap when
    /// there is nothing to do.
    pub(super) fn catch_up(&self, ns: &Namespace) -> Result<(), Error> {
        let persistent = self.inner.store.persistent();
        loop {
            let mut st = lock(&ns.state);
            if st.deleted {
                return Ok(());
            }
            let outcome = self.catch_up_locked(ns, &mut st, persistent);
            match outcome {
                Ok(Some(resize)) => {
                    st.resizing = Some(resize.generation);
                    drop(st);
                    let rebuilt = resize.run(&*self.inner.store, ns.id);
                    let mut st = lock(&ns.state);
                    st.resizing = None;
                    match rebuilt {
                        // Only while the generation keeps its table: once the floor
                        // has passed it (a rotation rebuilt it meanwhile, see
                        // `rebuild_forgotten_now`), its filter is final, and this
                        // one, read from the table earlier, may hold IDs forgotten
                        // since.
                        Ok(filter) if resize.generation >= st.exact_floor => {
                            if st.ring.replace_filter(resize.generation, filter) {
                                if persistent {
                                    st.unsaved.insert(resize.generation);
                                }
                                // Forgets made since the scan began may still be in
                                // it: those ask for another rebuild.
                                if let Some(f) = st.forgets.get_mut(&resize.generation) {
                                    f.rebuilt_without = resize.forgets;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            st.catch_up_due = true;
                            return Err(e);
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    st.catch_up_due = true;
                    return Err(e);
                }
            }
        }
    }

    /// Rebuilds, now, the filters of generations that this rotation takes out of
    /// the exact horizon while they still hold the bits of IDs forgotten from them
    /// (see `namespace`), and saves their snapshots: the floor then moves past them
    /// in this rotation, as it would have without the forgets. Only a generation
    /// forgotten from since its filter was last rebuilt pays this: one scan of its
    /// table, under the lock. (Most are rebuilt by the catching up that follows a
    /// forget; this is for a forget in the open generation of a namespace that
    /// keeps one exact table, or one whose catching up has not run yet.) A rebuild
    /// that fails leaves the generation exact until catching up retries it.
    ///
    /// Returns what each rebuilt generation had before (its filter, and how many
    /// forgets that filter was without), for a rotation that fails to put back.
    fn rebuild_forgotten_now(
        &self,
        ns: &Namespace,
        st: &mut State,
        persistent: bool,
    ) -> Vec<(GenerationId, BloomFilter, u64)> {
        let wanted = st.wanted_floor();
        let due: Vec<Resize> = st
            .ring
            .iter()
            .filter(|g| {
                g.id() >= st.exact_floor
                    && g.id() < wanted
                    && g.sealed_at().is_some()
                    && st.pending_in(g.id()) == 0
                    && st.forgets_unbuilt(g.id()) > 0
            })
            .map(|g| Resize::of(ns, st, g))
            .collect();
        let mut replaced = Vec::new();
        for resize in due {
            let rebuilt = resize.run(&*self.inner.store, ns.id).and_then(|filter| {
                if persistent {
                    self.inner
                        .store
                        .save_snapshot(ns.id, resize.generation, &filter)?;
                }
                Ok(filter)
            });
            match rebuilt {
                Ok(filter) => {
                    if let Some(old) = st.ring.swap_filter(resize.generation, filter) {
                        st.unsaved.remove(&resize.generation);
                        if let Some(f) = st.forgets.get_mut(&resize.generation) {
                            let before = std::mem::replace(&mut f.rebuilt_without, resize.forgets);
                            replaced.push((resize.generation, old, before));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns.name, generation = resize.generation.0, error = %e, "could not rebuild a filter without its forgotten IDs yet; the generation stays exact until it is");
                }
            }
        }
        replaced
    }

    /// [`catch_up`](Self::catch_up) for callers that have already answered: a failure
    /// only delays it (the generation stays exact meanwhile), so it is logged.
    pub(super) fn catch_up_logged(&self, ns: &Namespace) {
        if let Err(e) = self.catch_up(ns) {
            tracing::warn!(namespace = %ns.name, error = %e, "could not save a sealed generation or move the exact horizon yet; will retry");
        }
    }

    /// The locked part of [`catch_up`](Self::catch_up): `Some` when a filter must be
    /// rebuilt outside the lock first.
    fn catch_up_locked(
        &self,
        ns: &Namespace,
        st: &mut State,
        persistent: bool,
    ) -> Result<Option<Resize>, Error> {
        // Snapshots of sealed generations whose writes have settled.
        let live: Vec<GenerationId> = st
            .unsaved
            .iter()
            .copied()
            .filter(|g| st.ring.generation(*g).is_some())
            .collect();
        st.unsaved.retain(|g| live.contains(g));
        for g in live {
            if st.pending_in(g) > 0 {
                continue;
            }
            if persistent && let Some(generation) = st.ring.generation(g) {
                self.inner
                    .store
                    .save_snapshot(ns.id, g, generation.filter())?;
                self.forgets_in_snapshot(ns, st, g)?;
            }
            st.unsaved.remove(&g);
        }
        // A sealed generation with its table whose filter is too loose for the rate
        // now asked, oldest first (the next to turn Bloom-only). All of them, not
        // only the next: after a reconfiguration every exact generation meets the
        // new rate before the next rotation, which then moves the floor at once.
        if st.resizing.is_none()
            && let Some(g) = st
                .ring
                .iter()
                .rev()
                .filter(|g| g.id() >= st.exact_floor && st.pending_in(g.id()) == 0)
                .find(|g| st.needs_resize(g))
        {
            return Ok(Some(Resize::of(ns, st, g)));
        }
        let floor = st.ready_floor(persistent);
        if floor > st.exact_floor {
            let mut b = Batch::new();
            b.put_meta(
                &ring_key(ns.id),
                &records::encode(&RingRecord::of(&st.ring, floor)),
            );
            st.drop_tables_below(&mut b, ns.id, floor);
            self.inner.heartbeat(&mut b, false);
            self.inner.write(&b, self.sync_writes())?;
            st.floor_moved(floor);
        }
        st.catch_up_due = st.exact_floor < st.wanted_floor() || !st.unsaved.is_empty();
        Ok(None)
    }

    /// A snapshot of `g` was saved: if its filter holds no forgotten ID any more,
    /// the generation's marker goes (see `namespace`), so that a restart need not
    /// rebuild it again. (Were the process to stop between the two writes, a
    /// restart would rebuild it once more: only a scan lost.)
    fn forgets_in_snapshot(
        &self,
        ns: &Namespace,
        st: &mut State,
        g: GenerationId,
    ) -> Result<(), Error> {
        if st.forgets.contains_key(&g) && st.forgets_unbuilt(g) == 0 {
            let mut b = Batch::new();
            b.delete_meta(&records::forgets_key(ns.id, g));
            self.inner.write(&b, false)?;
            st.forgets.remove(&g);
        }
        Ok(())
    }

    pub(super) fn delete_snapshot_logged(&self, ns: &Namespace, g: GenerationId) {
        // A leftover snapshot is only wasted disk, and start-up removes orphans.
        if let Err(e) = self.inner.store.delete_snapshot(ns.id, g) {
            tracing::warn!(namespace = %ns.name, generation = g.0, error = %e, "could not delete snapshot");
        }
    }

    /// See [`Tracker::tick`](crate::Tracker::tick).
    pub(crate) fn tick(&self) -> Result<(), Error> {
        let mut first_error = None;
        for ns in self.all_namespaces() {
            let due = {
                let mut st = lock(&ns.state);
                if st.deleted || st.closed {
                    // After close the open generation's final snapshot is written: a
                    // seal now would contradict it.
                    continue;
                }
                let now = self.inner.time.now();
                if let Err(e) = self.rotate_due(&ns, &mut st, now) {
                    first_error.get_or_insert(e);
                }
                st.catch_up_due
            };
            if due && let Err(e) = self.catch_up(&ns) {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.forget_expired_claims() {
            first_error.get_or_insert(e);
        }
        self.recover_storage();
        if !self.inner.closed.load(Ordering::Acquire) {
            let mut b = Batch::new();
            self.inner.heartbeat(&mut b, false);
            if !b.is_empty()
                && let Err(e) = self.inner.write(&b, false)
            {
                // Only undercounts time after a crash; a failing store shows
                // elsewhere.
                tracing::debug!(error = %e, "could not record the clock heartbeat");
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// While writes fail, asks the store to recover (at most once per
    /// [`RECOVER_EVERY`] of store time), then probes it with a heartbeat: the probe's
    /// success is what clears [`Local::storage_failure`].
    fn recover_storage(&self) {
        if self.inner.health.failure().is_none() || self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let now = self.inner.time.now().as_millis();
        let last = self.inner.last_recovery.load(Ordering::Relaxed);
        if now.saturating_sub(last) < duration_millis(RECOVER_EVERY) {
            return;
        }
        self.inner.last_recovery.store(now, Ordering::Relaxed);
        if let Err(e) = self.inner.store.recover() {
            tracing::warn!(error = %e, "the store could not recover yet; will retry");
            return;
        }
        let mut probe = Batch::new();
        self.inner.heartbeat(&mut probe, true);
        match self.inner.write(&probe, false) {
            Ok(()) => tracing::info!("writes succeed again"),
            Err(e) => tracing::warn!(error = %e, "writes still fail; will retry"),
        }
    }

    /// See [`Tracker::rotate_namespace`](crate::Tracker::rotate_namespace).
    pub(crate) fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let due = {
            let mut st = lock(&ns.state);
            st.usable(&ns.name)?;
            let now = self.inner.time.now();
            self.rotate(&ns, &mut st, now, SealReason::Manual)?;
            st.catch_up_due
        };
        if due {
            self.catch_up(&ns)?;
        }
        Ok(())
    }

    pub(super) fn all_namespaces(&self) -> Vec<Arc<Namespace>> {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// A filter to rebuild from a sealed generation's exact table, at the rate a
/// Bloom-only generation must now meet, sized for the IDs the table holds.
struct Resize {
    generation: GenerationId,
    ids: u64,
    fp_rate: f64,
    seed: HashSeed,
    /// Forgets made in the generation before its table is scanned: the rebuilt
    /// filter holds none of them.
    forgets: u64,
}

impl Resize {
    /// The rebuild of `g`'s filter that the namespace's state asks for now.
    fn of(ns: &Namespace, st: &State, g: &Generation) -> Self {
        Self {
            generation: g.id(),
            ids: g.ids(),
            fp_rate: st.ring.config().generation_fp_rate(),
            seed: ns.seed,
            forgets: st.forgets.get(&g.id()).map_or(0, |f| f.made),
        }
    }

    fn run(&self, store: &dyn Store, ns: NamespaceId) -> Result<BloomFilter, Error> {
        let sizing = size_filter(self.ids.max(1), self.fp_rate)?;
        let (filter, _) = rebuild_filter(store, ns, self.generation, sizing, self.seed)?;
        tracing::info!(
            generation = self.generation.0,
            ids = self.ids,
            fp_rate = self.fp_rate,
            "filter rebuilt from its exact table for the namespace's current rate"
        );
        Ok(filter)
    }
}

/// Rebuilds a generation's filter from its exact table, sized for `sizing` or, when
/// the table holds more IDs than that, for as many as it holds (a second scan).
/// Returns the filter and the number of IDs in the table.
pub(super) fn rebuild_filter(
    store: &dyn Store,
    ns: NamespaceId,
    g: GenerationId,
    sizing: FilterSizing,
    seed: HashSeed,
) -> Result<(BloomFilter, u64), Error> {
    let (filter, ids) = scan_into(store, ns, g, sizing, seed)?;
    if ids <= sizing.capacity {
        return Ok((filter, ids));
    }
    let (filter, again) = scan_into(store, ns, g, size_filter(ids, sizing.fp_rate)?, seed)?;
    Ok((filter, again))
}

fn scan_into(
    store: &dyn Store,
    ns: NamespaceId,
    g: GenerationId,
    sizing: FilterSizing,
    seed: HashSeed,
) -> Result<(BloomFilter, u64), Error> {
    let mut filter = BloomFilter::new(sizing, seed)?;
    let mut ids = 0_u64;
    store.scan_marks(ns, g, &mut |id, _| {
        let _ = filter.insert(id);
        ids += 1;
        Ok(())
    })?;
    Ok((filter, ids))
}
