//! Start-up: reading a store back into namespaces and generation rings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use super::{Durability, Inner, Namespace, State, Tracker, lock};
use crate::clock::{Clock, Timestamp};
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records::{self, CleanRecord, NamespaceRecord, RingRecord, clean_key, ring_key};
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

        let mut namespaces = HashMap::new();
        let mut cleared = Batch::new();
        for (key, value) in store.scan_meta(records::NS_PREFIX)? {
            let record: NamespaceRecord = records::decode(&key, &value)?;
            let ns = load_namespace(&*store, record, &mut cleared)?;
            namespaces.insert(ns.name.to_string(), Arc::new(ns));
        }
        // The open generations' clean snapshots are about to go stale: forget them
        // before the first new mark can land.
        if !cleared.is_empty() {
            store.write(&cleared, true)?;
        }
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
            }),
        };
        if tracker.namespace_handle(NamespaceName::DEFAULT).is_err() {
            let _ = tracker.configure_namespace(NamespaceName::DEFAULT, default_config)?;
        }
        Ok(tracker)
    }
}

fn load_namespace(
    store: &dyn Store,
    record: NamespaceRecord,
    cleared: &mut Batch,
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
            cleared.delete_meta(&clean_key(id));
            Some(records::decode::<CleanRecord>(&clean_key(id), &bytes)?)
        }
        None => None,
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
            Timestamp::from_millis(g.opened_at),
            g.sealed_at.map(Timestamp::from_millis),
            ids,
        ));
    }
    let ring = GenerationRing::restore(record.config, seed, gens)
        .map_err(|e| Error::Corrupt(format!("namespace {name}: {e}")))?;
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
