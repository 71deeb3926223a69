//! Administration: creating, reconfiguring, describing and deleting namespaces, and
//! closing the tracker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::budget::{self, FilterBudget};
use super::claims::ClaimTable;
use super::namespace::{Namespace, State};
use super::{StorageFailure, Tracker, lock};
use crate::clock::Timestamp;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::FilterStats;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records::{
    self, CleanRecord, NamespaceRecord, RECORD_VERSION, RingRecord, clean_key, ns_key, ring_key,
};
use crate::store::{Batch, NamespaceId};

/// Configuration and live statistics of a namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NamespaceInfo {
    /// The namespace's name.
    pub name: String,
    /// Its configuration.
    pub config: NamespaceConfig,
    /// Live generations, newest first.
    pub generations: Vec<GenerationInfo>,
    /// The chance that an unseen ID is answered `probable_duplicate` now: the
    /// combined estimated rate of the Bloom-only generations. (Generations with
    /// exact tables never produce false positives.)
    pub estimated_fp: f64,
    /// Bytes of filter memory across generations.
    pub memory_bytes: u64,
    /// Claims held, live or expired but not yet forgotten.
    pub claims: u64,
    /// What the namespace is charged against the filter budget: the most filter
    /// memory it can hold over its life under its configuration (see
    /// [`FilterBudget`]).
    pub charged_bytes: u64,
}

/// Statistics of one generation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationInfo {
    /// Sequence number.
    pub id: u64,
    /// When it opened (ms since the epoch, on the tracker's clock). Ages count the
    /// time a tracker had the store open: after a restart, downtime and clock steps
    /// between runs are cut out, so `now - opened_at` of the open generation is its
    /// age in running time.
    pub opened_at: u64,
    /// When it sealed (on the same footing as `opened_at`); `None` while open.
    pub sealed_at: Option<u64>,
    /// New IDs marked into it.
    pub ids: u64,
    /// The IDs its filter was sized for (a generation never holds more).
    pub capacity: u64,
    /// Whether it still has its exact table.
    pub exact: bool,
    /// Its filter's statistics.
    pub filter: FilterStats,
    /// Its filter's memory in bytes.
    pub memory_bytes: u64,
}

/// Whether [`Tracker::configure_namespace`] created the namespace or updated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Configured {
    /// It did not exist and was created.
    Created,
    /// It existed; the changes apply as documented on the method.
    Updated,
}

/// Whether a reconfiguration may forget remembered IDs at once.
///
/// Lowering `generations` below the number of live generations drops the oldest
/// ones now, and lowering `exact_generations` drops exact tables now (their
/// generations answer `probable_duplicate` from then on). Both forget what consumers
/// may rely on, so they must be asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropPolicy {
    /// Refuse such a change with [`Error::WouldDrop`], changing nothing.
    #[default]
    Refuse,
    /// Apply it, forgetting what it drops.
    DropNow,
}

impl Tracker {
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

    /// Names of all namespaces, sorted.
    #[must_use]
    pub fn namespaces(&self) -> Vec<String> {
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

    /// Configuration and live statistics of a namespace.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`].
    pub fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
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
            charged_bytes: budget::footprint(st.ring.config(), &budget::live_sizes(&st)),
            generations,
        })
    }

    /// The filter memory budget, what namespaces are charged against it, and what
    /// their filters take now. Cheap: a few reads per namespace.
    #[must_use]
    pub fn filter_budget(&self) -> FilterBudget {
        let mut charged = 0_u64;
        let mut allocated = 0_u64;
        for ns in self.all_namespaces() {
            let st = lock(&ns.state);
            if st.deleted {
                continue;
            }
            let live = budget::live_sizes(&st);
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
                budget::footprint(st.ring.config(), &budget::live_sizes(&st))
            })
            .fold(0_u64, u64::saturating_add)
    }

    /// Creates a namespace, or reconfigures an existing one.
    ///
    /// What a reconfiguration changes, and when:
    ///
    /// * `generation_span` applies at once, to the open generation too.
    /// * `generation_capacity` and `fp_rate` size the filters of generations opened
    ///   from then on. The open generation seals at the new capacity, or earlier
    ///   when its filter would otherwise exceed the rate each generation must now
    ///   meet, and never later than its filter's own capacity: no filter ever holds
    ///   more IDs than it was sized for. A generation whose filter was built for a
    ///   looser rate is rebuilt from its exact table before it turns Bloom-only;
    ///   generations already Bloom-only keep the rate they were built for until they
    ///   leave the ring.
    /// * A larger `generations` keeps more generations from then on; a smaller one
    ///   drops the oldest generations now.
    /// * A smaller `exact_generations` drops the exact tables that fall outside the
    ///   new horizon now (those generations answer `probable_duplicate` from then on);
    ///   a larger one keeps more tables as new generations arrive (tables already
    ///   dropped do not come back).
    ///
    /// A change that would drop generations or exact tables now is refused with
    /// [`Error::WouldDrop`]; [`configure_namespace_with`](Self::configure_namespace_with)
    /// and [`DropPolicy::DropNow`] allow it.
    ///
    /// The namespace's secret seed never changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`] for a bad name; [`Error::WouldDrop`];
    /// [`Error::Closed`] once the tracker is closed; storage errors (then nothing
    /// changed).
    pub fn configure_namespace(
        &self,
        namespace: &str,
        config: NamespaceConfig,
    ) -> Result<Configured, Error> {
        self.configure_namespace_with(namespace, config, DropPolicy::Refuse)
    }

    /// [`configure_namespace`](Self::configure_namespace), saying whether the change
    /// may forget remembered IDs at once.
    ///
    /// # Errors
    ///
    /// As [`configure_namespace`](Self::configure_namespace).
    pub fn configure_namespace_with(
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
            budget::footprint(&config, &budget::live_sizes(&st)),
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
            b.drop_marks(ns.id, floor);
        }
        if let Err(e) = self.inner.write(&b, self.sync_writes()) {
            st.ring.undo_reconfigure(old_config, dropped);
            return Err(e);
        }
        st.exact_floor = floor;
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

    /// Deletes a namespace with all its marks, claims, snapshots and checkpoints.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`]; [`Error::Refused`] for `default`, which always
    /// exists; storage errors (then nothing changed).
    pub fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        if namespace == NamespaceName::DEFAULT {
            return Err(Error::Refused(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let _admin = lock(&self.inner.admin);
        let ns = self.namespace_handle(namespace)?;
        let mut st = lock(&ns.state);
        let mut b = Batch::new();
        b.delete_meta(&ns_key(namespace));
        b.delete_meta(&ring_key(ns.id));
        b.delete_meta(&clean_key(ns.id));
        b.delete_meta_prefix(&records::checkpoint_prefix(ns.id));
        b.delete_meta_prefix(&records::claim_prefix(ns.id));
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

    /// Lets the writes in flight settle, then flushes everything to disk and
    /// snapshots every generation, so the next start-up needs no scan. Further calls
    /// are refused (configuration included).
    ///
    /// # Errors
    ///
    /// Storage errors. Marks acknowledged earlier are safe regardless: they are in
    /// the write-ahead log.
    pub fn close(&self) -> Result<(), Error> {
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

    /// Whether the store's writes are failing: `Some` from a failed write until a
    /// later one succeeds. (A daemon reports itself unready meanwhile.)
    #[must_use]
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.inner.health.failure().map(|mut f| {
            f.since = self.inner.time.to_clock(f.since);
            f
        })
    }

    /// Writes that failed since the tracker opened.
    #[must_use]
    pub fn storage_errors(&self) -> u64 {
        self.inner.health.errors()
    }

    /// Space the store uses on disk, in bytes, where known.
    #[must_use]
    pub fn disk_bytes(&self) -> Option<u64> {
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
