//! Administration: creating, reconfiguring, describing and deleting namespaces, and
//! closing the tracker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::claim_table::ClaimTable;
use super::namespace::{Namespace, State};
use super::{Local, StorageFailure, lock};
use crate::clock::Timestamp;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records::{
    self, CleanRecord, NamespaceRecord, RECORD_VERSION, RingRecord, clean_key, ns_key, ring_key,
};
use crate::store::{Batch, NamespaceId};
use crate::tracker::budget::{self, FilterBudget};
use crate::tracker::{Configured, DropPolicy, GenerationInfo, NamespaceInfo};

impl Local {
    pub(super) fn namespace_handle(&self, name: &str) -> Result<Arc<Namespace>, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let map = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = map.get(name) {
            return Ok(Arc::clone(ns));
        }
        drop(map);
        // Distinguish a malformed name (400) from an unknown one (404).
        NamespaceName::new(name)?;
        Err(Error::UnknownNamespace(name.to_owned()))
    }

    #[must_use]
    /// See [`Tracker::namespaces`](crate::Tracker::namespaces).
    pub(crate) fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }

    /// See [`Tracker::namespace_info`](crate::Tracker::namespace_info).
    pub(crate) fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
        let ns = self.namespace_handle(namespace)?;
        let st = lock(&ns.state);
        let to_clock = |t: Timestamp| self.inner.time.to_clock(t).as_millis();
        let generations: Vec<GenerationInfo> = st
            .ring
            .iter()
            .map(|g| GenerationInfo {
                id: g.id().0,
                opened_at: to_clock(g.opened_at()),
                sealed_at: g.sealed_at().map(to_clock),
                ids: g.ids(),
                capacity: g.capacity(),
                exact: g.id() >= st.exact_floor,
                filter: g.stats(),
                memory_bytes: g.filter().sizing().memory_bytes(),
            })
            .collect();
        let miss_all = generations
            .iter()
            .filter(|g| !g.exact)
            .fold(1.0, |acc, g| acc * (1.0 - g.filter.estimated_fp));
        Ok(NamespaceInfo {
            name: ns.name.to_string(),
            config: st.ring.config().clone(),
            estimated_fp: 1.0 - miss_all,
            memory_bytes: generations.iter().map(|g| g.memory_bytes).sum(),
            claims: st.claims.len() as u64,
            charged_bytes: budget::footprint(st.ring.config(), &live_sizes(&st)),
            generations,
        })
    }

    #[must_use]
    /// See [`Tracker::filter_budget`](crate::Tracker::filter_budget).
    pub(crate) fn filter_budget(&self) -> FilterBudget {
        let mut charged = 0_u64;
        let mut allocated = 0_u64;
        for ns in self.all_namespaces() {
            let st = lock(&ns.state);
            if st.deleted {
                continue;
            }
            let live = live_sizes(&st);
            allocated = allocated.saturating_add(live.iter().sum());
            charged = charged.saturating_add(budget::footprint(st.ring.config(), &live));
        }
        FilterBudget {
            budget: self.inner.limits.max_filter_bytes,
            charged,
            allocated,
        }
    }

    /// What the namespaces other than `except` are charged against the budget.
    fn charged_to_others(&self, except: &str) -> u64 {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .map(|(_, ns)| {
                let st = lock(&ns.state);
                budget::footprint(st.ring.config(), &live_sizes(&st))
            })
            .fold(0_u64, u64::saturating_add)
    }

    /// See [`Tracker::configure_namespace`](crate::Tracker::configure_namespace).
    pub(crate) fn configure_namespace(
        &self,
        namespace: &str,
        config: NamespaceConfig,
    ) -> Result<Configured, Error> {
        self.configure_namespace_with(namespace, config, DropPolicy::Refuse)
    }

    /// See [`Tracker::configure_namespace_with`](crate::Tracker::configure_namespace_with).
    pub(crate) fn configure_namespace_with(
        &self,
        namespace: &str,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<Configured, Error> {
        let name = NamespaceName::new(namespace)?;
        // Close takes this lock too: a configuration racing close either finishes
        // before it or sees it, and never re-creates a namespace over the store's.
        let _admin = lock(&self.inner.admin);
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let existing = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned();
        let others = self.charged_to_others(namespace);
        if let Some(ns) = existing {
            self.reconfigure(&ns, config, policy, others)?;
            return Ok(Configured::Updated);
        }
        let count = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        if let Some(max) = self.inner.limits.max_namespaces
            && count >= max as usize
        {
            return Err(Error::TooManyNamespaces { max });
        }
        budget::check(self.inner.limits, budget::footprint(&config, &[]), others)?;
        let ns = self.create_namespace(name, config)?;
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.to_owned(), Arc::new(ns));
        Ok(Configured::Created)
    }

    fn create_namespace(
        &self,
        name: NamespaceName,
        config: NamespaceConfig,
    ) -> Result<Namespace, Error> {
        let store = &self.inner.store;
        if store.get_meta(&ns_key(name.as_str()))?.is_some() {
            return Err(Error::Corrupt(format!(
                "namespace {name} is in the store but was not loaded at start-up"
            )));
        }
        let next = match store.get_meta(records::NEXT_NS_KEY)? {
            Some(bytes) => u32::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                Error::Corrupt("record \"next-ns\" is not a 4-byte counter".into())
            })?),
            None => 1,
        };
        let id = NamespaceId(next);
        let following = next.checked_add(1).ok_or_else(|| {
            Error::Refused("namespace ids are exhausted (2^32 namespaces created)".into())
        })?;
        let seed = HashSeed::random()?;
        let now = self.inner.time.now();
        let ring = GenerationRing::new(config.clone(), seed, now)?;
        let record = NamespaceRecord {
            v: RECORD_VERSION,
            id: id.0,
            name: name.to_string(),
            config,
            seed: seed.to_u64(),
        };
        let floor = GenerationId(1);
        let mut b = Batch::new();
        b.put_meta(records::NEXT_NS_KEY, &following.to_be_bytes());
        b.put_meta(&ns_key(name.as_str()), &records::encode(&record));
        b.put_meta(
            &ring_key(id),
            &records::encode(&RingRecord::of(&ring, floor)),
        );
        self.inner.write(&b, self.sync_writes())?;
        tracing::info!(namespace = %name, id = id.0, "namespace created");
        Ok(Namespace::new(
            name,
            id,
            seed,
            State::new(ring, floor, ClaimTable::default()),
        ))
    }

    fn reconfigure(
        &self,
        ns: &Namespace,
        config: NamespaceConfig,
        policy: DropPolicy,
        others: u64,
    ) -> Result<(), Error> {
        let persistent = self.inner.store.persistent();
        let mut st = lock(&ns.state);
        st.usable(&ns.name)?;
        budget::check(
            self.inner.limits,
            budget::footprint(&config, &live_sizes(&st)),
            others,
        )?;
        let generations = st.ring.would_drop(&config);
        let exact_tables = tables_lost(&st, &config);
        if policy == DropPolicy::Refuse && (generations > 0 || exact_tables > 0) {
            return Err(Error::WouldDrop {
                generations: u32::try_from(generations).unwrap_or(u32::MAX),
                exact_tables: u32::try_from(exact_tables).unwrap_or(u32::MAX),
            });
        }
        let old_floor = st.exact_floor;
        let (old_config, dropped) = st.ring.reconfigure(config.clone());
        let floor = st.ready_floor(persistent);
        let record = NamespaceRecord {
            v: RECORD_VERSION,
            id: ns.id.0,
            name: ns.name.to_string(),
            config,
            seed: ns.seed.to_u64(),
        };
        let mut b = Batch::new();
        b.put_meta(&ns_key(ns.name.as_str()), &records::encode(&record));
        b.put_meta(
            &ring_key(ns.id),
            &records::encode(&RingRecord::of(&st.ring, floor)),
        );
        if floor > old_floor {
            st.drop_tables_below(&mut b, ns.id, floor);
        }
        if let Err(e) = self.inner.write(&b, self.sync_writes()) {
            st.ring.undo_reconfigure(old_config, dropped);
            return Err(e);
        }
        st.floor_moved(floor);
        for g in &dropped {
            st.unsaved.remove(&g.id());
        }
        st.catch_up_due = floor < st.wanted_floor() || !st.unsaved.is_empty();
        let due = st.catch_up_due;
        drop(st);
        for g in &dropped {
            self.delete_snapshot_logged(ns, g.id());
        }
        if due {
            // Applied already: what is left (rebuilding a filter before its table
            // goes) is retried by `tick` if it fails now.
            self.catch_up_logged(ns);
        }
        Ok(())
    }

    /// See [`Tracker::delete_namespace`](crate::Tracker::delete_namespace).
    pub(crate) fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        if namespace == NamespaceName::DEFAULT {
            return Err(Error::Refused(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let _admin = lock(&self.inner.admin);
        let ns = self.namespace_handle(namespace)?;
        let mut st = lock(&ns.state);
        // Writes already on their way (marks, forgets) land first, so that none
        // lands after the records below are gone and leaves one behind. The lock
        // is held from then on: no new one starts.
        while st.has_pending() {
            st = ns.settled.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.usable(&ns.name)?;
        let mut b = Batch::new();
        b.delete_meta(&ns_key(namespace));
        b.delete_meta(&ring_key(ns.id));
        b.delete_meta(&clean_key(ns.id));
        b.delete_meta_prefix(&records::checkpoint_prefix(ns.id));
        b.delete_meta_prefix(&records::claim_prefix(ns.id));
        b.delete_meta_prefix(&records::forgets_prefix(ns.id));
        b.drop_namespace(ns.id);
        self.inner.write(&b, self.sync_writes())?;
        st.deleted = true;
        let gens: Vec<GenerationId> = st.ring.iter().map(Generation::id).collect();
        drop(st);
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
        for g in gens {
            self.delete_snapshot_logged(&ns, g);
        }
        tracing::info!(namespace, "namespace deleted");
        Ok(())
    }

    /// See [`Tracker::close`](crate::Tracker::close).
    pub(crate) fn close(&self) -> Result<(), Error> {
        let _admin = lock(&self.inner.admin);
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let store = &self.inner.store;
        for ns in self.all_namespaces() {
            {
                let mut st = lock(&ns.state);
                st.closed = true;
                // No new call gets past `usable`; the writes already on their way
                // land and settle, so that the snapshots below hold every one.
                while st.has_pending() {
                    st = ns.settled.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                if st.deleted || !store.persistent() {
                    continue;
                }
            }
            self.catch_up(&ns)?;
            let st = lock(&ns.state);
            let open = st.ring.current();
            store.save_snapshot(ns.id, open.id(), open.filter())?;
            let mut b = Batch::new();
            let clean = CleanRecord {
                v: RECORD_VERSION,
                generation: open.id().0,
                ids: open.ids(),
            };
            b.put_meta(&clean_key(ns.id), &records::encode(&clean));
            self.inner.write(&b, true)?;
        }
        // The last word on how far store time got.
        let mut b = Batch::new();
        self.inner.heartbeat(&mut b, true);
        self.inner.write(&b, true)?;
        store.flush()
    }

    #[must_use]
    /// See [`Tracker::storage_failure`](crate::Tracker::storage_failure).
    pub(crate) fn storage_failure(&self) -> Option<StorageFailure> {
        self.inner.health.failure().map(|mut f| {
            f.since = self.inner.time.to_clock(f.since);
            f
        })
    }

    #[must_use]
    /// See [`Tracker::storage_errors`](crate::Tracker::storage_errors).
    pub(crate) fn storage_errors(&self) -> u64 {
        self.inner.health.errors()
    }

    /// Always 0: rotations here never wait for another process.
    #[allow(clippy::unused_self)]
    pub(crate) const fn rotations_deferred(&self) -> u64 {
        0
    }

    #[must_use]
    /// See [`Tracker::disk_bytes`](crate::Tracker::disk_bytes).
    pub(crate) fn disk_bytes(&self) -> Option<u64> {
        self.inner.store.disk_bytes()
    }
}

/// How many exact tables `config` would drop at once: generations that stay in the
/// ring but fall below the exact horizon it asks for.
fn tables_lost(st: &State, config: &NamespaceConfig) -> usize {
    let newest = st.ring.current().id().0;
    let kept = (st.ring.len() as u64).min(u64::from(config.generations()));
    let new_oldest = newest + 1 - kept;
    let horizon = newest.saturating_sub(u64::from(config.exact_generations()) - 1);
    let from = st.wanted_floor().0.max(new_oldest);
    usize::try_from(horizon.saturating_sub(from)).unwrap_or(usize::MAX)
}

/// A namespace's live generation sizes, oldest first.
fn live_sizes(st: &State) -> Vec<u64> {
    st.ring
        .iter()
        .rev()
        .map(|g| g.filter().sizing().memory_bytes())
        .collect()
}

impl Local {
    /// See [`Tracker::probe_store`](crate::Tracker::probe_store).
    #[allow(clippy::unnecessary_wraps)]
    pub(crate) fn probe_store(&self) -> Result<crate::tracker::StoreProbe, Error> {
        Ok(crate::tracker::StoreProbe {
            kind: if self.inner.store.persistent() {
                "rocksdb"
            } else {
                "memory"
            },
            host: None,
            round_trip: None,
        })
    }
}
