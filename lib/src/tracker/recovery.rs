//! Start-up: reading a store back into namespaces and generation rings.
//!
//! # Rebasing the rings' clocks
//!
//! Ring timestamps were written by the previous run's clock. Comparing them with this
//! run's clock would count the downtime, and any step of the wall clock while the
//! process was down, as generation age: a clock set forward by an hour would seal the
//! open generation at once and drop the oldest, forgetting its IDs early; a clock set
//! back would keep the open generation open for the size of the step. So each ring is
//! shifted onto this run's clock instead. The open generation had been open for
//! `heartbeat - opened_at` when the previous run last recorded its clock (see
//! `records::ClockRecord`); it reopens as if opened that long before now, and its
//! older generations shift with it. Counted this way, a generation seals after its
//! span of *running* time, which is never more than the real time that passed, so the
//! remembering guarantee holds in real time however the wall clock moved.
//!
//! A heartbeat that is stale (a crash) or missing (a store written before heartbeats
//! existed) undercounts the age, never overcounts it: the generation seals later,
//! and its IDs are remembered longer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{Durability, Inner, Namespace, State, Tracker, lock};
use crate::clock::{Clock, Timestamp, duration_millis};
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records::{
    self, CleanRecord, ClockRecord, NamespaceRecord, RingRecord, clean_key, ring_key,
};
use crate::store::{Batch, NamespaceId, Store};

impl Tracker {
    pub(super) fn recover(
        store: Box<dyn Store>,
        durability: Durability,
        clock: Arc<dyn Clock>,
        default_config: NamespaceConfig,
    ) -> Result<Self, Error> {
        match store.get_meta(records::FORMAT_KEY)? {
            Some(f) if f == records::FORMAT_VALUE => {}
            Some(f) => {
                return Err(Error::Corrupt(format!(
                    "the store's format is {:?}; this build reads {:?}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(records::FORMAT_VALUE)
                )));
            }
            None => {
                if !store.scan_meta(b"")?.is_empty() {
                    return Err(Error::Corrupt(
                        "the store has data but no format record: not an Oncely store".into(),
                    ));
                }
                let mut b = Batch::new();
                b.put_meta(records::FORMAT_KEY, records::FORMAT_VALUE);
                store.write(&b, true)?;
            }
        }

        let heartbeat = match store.get_meta(records::CLOCK_KEY)? {
            Some(bytes) => Some(Timestamp::from_millis(
                records::decode::<ClockRecord>(records::CLOCK_KEY, &bytes)?.now,
            )),
            None => None,
        };
        let now = clock.now();
        let rebase = Rebase { heartbeat, now };

        let mut namespaces = HashMap::new();
        let mut startup = Batch::new();
        for (key, value) in store.scan_meta(records::NS_PREFIX)? {
            let record: NamespaceRecord = records::decode(&key, &value)?;
            let ns = load_namespace(&*store, record, rebase, &mut startup)?;
            namespaces.insert(ns.name.to_string(), Arc::new(ns));
        }
        // One batch, before the first new mark can land: the open generations' clean
        // snapshots are about to go stale, so forget them; and the rings rebased onto
        // this run's clock go in with a heartbeat on that clock, so the store never
        // holds one run's rings beside another run's heartbeat.
        startup.put_meta(records::CLOCK_KEY, &records::encode(&ClockRecord::at(now)));
        store.write(&startup, true)?;
        remove_orphan_snapshots(&*store, &namespaces)?;

        let tracker = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                durability,
                namespaces: RwLock::new(namespaces),
                admin: Mutex::new(()),
                transactions: Mutex::new(()),
                closed: AtomicBool::new(false),
                heartbeat: AtomicU64::new(now.as_millis()),
                health: super::health::Health::default(),
            }),
        };
        if tracker.namespace_handle(NamespaceName::DEFAULT).is_err() {
            let _ = tracker.configure_namespace(NamespaceName::DEFAULT, default_config)?;
        }
        Ok(tracker)
    }
}

/// Moves persisted ring timestamps onto this run's clock (see the module docs).
#[derive(Clone, Copy, Debug)]
struct Rebase {
    /// The previous run's last recorded clock reading, if any.
    heartbeat: Option<Timestamp>,
    /// This run's clock at start-up.
    now: Timestamp,
}

impl Rebase {
    /// Where an open generation opened at `opened_at` (previous run's clock) opens on
    /// this run's clock: its age at the heartbeat before now. No heartbeat, or one
    /// before `opened_at` (a clock set back during the previous run), counts no age.
    fn opening(self, opened_at: Timestamp) -> Timestamp {
        let age = self
            .heartbeat
            .map_or(Duration::ZERO, |h| h.saturating_since(opened_at));
        Timestamp::from_millis(self.now.as_millis().saturating_sub(duration_millis(age)))
    }
}

/// `t` moved by `to - from`, saturating at both ends.
fn shift(t: Timestamp, from: Timestamp, to: Timestamp) -> Timestamp {
    let (t, from, to) = (t.as_millis(), from.as_millis(), to.as_millis());
    Timestamp::from_millis(if to >= from {
        t.saturating_add(to - from)
    } else {
        t.saturating_sub(from - to)
    })
}

fn load_namespace(
    store: &dyn Store,
    record: NamespaceRecord,
    rebase: Rebase,
    startup: &mut Batch,
) -> Result<Namespace, Error> {
    let name = NamespaceName::new(record.name.clone())
        .map_err(|e| Error::Corrupt(format!("namespace record {:?}: {e}", record.name)))?;
    let id = NamespaceId(record.id);
    let seed = HashSeed::from_u64(record.seed);
    let ring_bytes = store
        .get_meta(&ring_key(id))?
        .ok_or_else(|| Error::Corrupt(format!("namespace {name} has no generation ring record")))?;
    let ring_record: RingRecord = records::decode(&ring_key(id), &ring_bytes)?;
    let floor = GenerationId(ring_record.exact_floor);
    let clean = match store.get_meta(&clean_key(id))? {
        Some(bytes) => {
            startup.delete_meta(&clean_key(id));
            Some(records::decode::<CleanRecord>(&clean_key(id), &bytes)?)
        }
        None => None,
    };

    // The whole ring moves with its open generation, so its timeline stays in order.
    let (from, to) = match ring_record.generations.last() {
        Some(open) => {
            let opened = Timestamp::from_millis(open.opened_at);
            (opened, rebase.opening(opened))
        }
        None => (rebase.now, rebase.now),
    };
    let sizing = record.config.filter_sizing();
    let mut gens = Vec::with_capacity(ring_record.generations.len());
    for g in &ring_record.generations {
        let gid = GenerationId(g.id);
        let exact = gid >= floor;
        let clean_open =
            g.sealed_at.is_none() && clean.as_ref().is_some_and(|c| c.generation == g.id);
        let (filter, ids) = if g.sealed_at.is_some() || clean_open {
            match store.load_snapshot(id, gid) {
                Ok(Some(filter)) => {
                    let ids = match (&clean, g.sealed_at) {
                        (Some(c), None) => c.ids,
                        _ => g.ids,
                    };
                    (filter, ids)
                }
                Ok(None) if g.sealed_at.is_none() => rebuild(store, id, gid, sizing, seed)?,
                Ok(None) if exact => {
                    tracing::warn!(namespace = %name, generation = g.id, "snapshot missing; rebuilding the filter from the exact table");
                    let (filter, _) = rebuild(store, id, gid, sizing, seed)?;
                    (filter, g.ids)
                }
                Ok(None) => {
                    return Err(Error::Corrupt(format!(
                        "namespace {name}: the snapshot of Bloom-only generation {} is missing",
                        g.id
                    )));
                }
                Err(e) if exact => {
                    tracing::warn!(namespace = %name, generation = g.id, error = %e, "damaged snapshot; rebuilding the filter from the exact table");
                    let (filter, rebuilt_ids) = rebuild(store, id, gid, sizing, seed)?;
                    (
                        filter,
                        if g.sealed_at.is_some() {
                            g.ids
                        } else {
                            rebuilt_ids
                        },
                    )
                }
                Err(e) => return Err(e),
            }
        } else {
            rebuild(store, id, gid, sizing, seed)?
        };
        if filter.seed() != seed {
            return Err(Error::Corrupt(format!(
                "namespace {name}: the snapshot of generation {} belongs to another namespace (seed differs)",
                g.id
            )));
        }
        gens.push(Generation::from_parts(
            gid,
            filter,
            shift(Timestamp::from_millis(g.opened_at), from, to),
            g.sealed_at
                .map(|t| shift(Timestamp::from_millis(t), from, to)),
            ids,
        ));
    }
    let ring = GenerationRing::restore(record.config, seed, gens)
        .map_err(|e| Error::Corrupt(format!("namespace {name}: {e}")))?;
    if from != to {
        startup.put_meta(
            &ring_key(id),
            &records::encode(&RingRecord::of(&ring, floor)),
        );
    }
    tracing::info!(namespace = %name, generations = ring.len(), "namespace recovered");
    Ok(Namespace {
        name,
        id,
        seed,
        next_flight: AtomicU64::new(0),
        state: Mutex::new(State::new(ring, floor)),
    })
}

/// Rebuilds a generation's filter from its exact table; returns it with the number
/// of IDs in the table.
fn rebuild(
    store: &dyn Store,
    ns: NamespaceId,
    g: GenerationId,
    sizing: crate::sizing::FilterSizing,
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

fn remove_orphan_snapshots(
    store: &dyn Store,
    namespaces: &HashMap<String, Arc<Namespace>>,
) -> Result<(), Error> {
    let live: HashMap<NamespaceId, &Namespace> =
        namespaces.values().map(|ns| (ns.id, &**ns)).collect();
    for ns_id in store.snapshot_namespaces()? {
        let keep: Vec<GenerationId> = live
            .get(&ns_id)
            .map(|ns| lock(&ns.state).ring.iter().map(Generation::id).collect())
            .unwrap_or_default();
        for g in store.snapshot_generations(ns_id)? {
            if !keep.contains(&g) {
                store.delete_snapshot(ns_id, g)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn the_open_generation_keeps_its_age_at_the_heartbeat() {
        let forward = Rebase {
            heartbeat: Some(t(10_000)),
            now: t(1_000_000),
        };
        assert_eq!(
            forward.opening(t(4_000)),
            t(994_000),
            "6 s old, stepped forward"
        );
        let back = Rebase {
            heartbeat: Some(t(10_000)),
            now: t(7_000),
        };
        assert_eq!(back.opening(t(4_000)), t(1_000), "6 s old, stepped back");
        assert_eq!(
            back.opening(t(12_000)),
            t(7_000),
            "opened after the heartbeat: no age counted"
        );
        let none = Rebase {
            heartbeat: None,
            now: t(7_000),
        };
        assert_eq!(none.opening(t(4_000)), t(7_000), "no heartbeat: no age");
        let early = Rebase {
            heartbeat: Some(t(10_000)),
            now: t(2_000),
        };
        assert_eq!(early.opening(t(0)), t(0), "saturates, undercounting");
    }

    #[test]
    fn shifting_saturates_both_ways() {
        assert_eq!(shift(t(5), t(10), t(30)), t(25));
        assert_eq!(shift(t(5), t(30), t(10)), Timestamp::EPOCH);
        assert_eq!(
            shift(t(u64::MAX - 1), t(0), t(5)),
            t(u64::MAX),
            "saturates at the far future"
        );
    }
}
