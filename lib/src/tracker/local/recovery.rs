//! Start-up: reading a store back into namespaces, generation rings and claims.
//!
//! Every persisted time is in store time (see `time`), which resumes at the last
//! heartbeat: nothing needs rebasing, whatever the wall clock did while the process
//! was down.
//!
//! A sealed generation whose snapshot is missing or damaged is rebuilt from its exact
//! table while it still has one, and its snapshot is saved again before anything can
//! take the table away; a Bloom-only generation without a sound snapshot stops
//! start-up with an error naming it, never an empty filter. A filter rebuilt from a
//! table is sized as the one it replaces was, or for as many IDs as the table holds
//! when those are more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::claim_table::{self, Claim, ClaimTable};
use super::flight::key_of;
use super::namespace::{Forgets, Namespace, State};
use super::rotation::rebuild_filter;
use super::time::StoreTime;
use super::{Durability, Inner, Local, health, lock};
use crate::clock::{Clock, Timestamp};
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::MarkValue;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records::{
    self, CleanRecord, ClockRecord, ForgetsRecord, GenerationRecord, NamespaceRecord, RingRecord,
    clean_key, ring_key,
};
use crate::sizing::{FilterSizing, size_filter};
use crate::store::{Batch, NamespaceId, Store};
use crate::tracker::budget::Limits;
use crate::tracker::decide::ClaimState;

impl Local {
    pub(crate) fn recover(
        store: Box<dyn Store>,
        durability: Durability,
        clock: Arc<dyn Clock>,
        default_config: NamespaceConfig,
        limits: Limits,
    ) -> Result<Self, Error> {
        let from_v1 = match store.get_meta(records::FORMAT_KEY)? {
            Some(f) if f == records::FORMAT_VALUE => false,
            Some(f) if f == records::FORMAT_V1 => true,
            Some(f) => {
                return Err(Error::Corrupt(format!(
                    "the store's format is {:?}; this build reads {:?} (and upgrades {:?})",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(records::FORMAT_VALUE),
                    String::from_utf8_lossy(records::FORMAT_V1),
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
                false
            }
        };

        let heartbeat = match store.get_meta(records::CLOCK_KEY)? {
            Some(bytes) => Some(Timestamp::from_millis(
                records::decode::<ClockRecord>(records::CLOCK_KEY, &bytes)?.now,
            )),
            None => None,
        };
        let time = StoreTime::resume(clock, heartbeat);
        let now = time.now();

        let mut namespaces = HashMap::new();
        let mut startup = Batch::new();
        for (key, value) in store.scan_meta(records::NS_PREFIX)? {
            let record: NamespaceRecord = records::decode(&key, &value)?;
            if from_v1 {
                move_claims_out_of_exact_tables(&*store, &record)?;
            }
            let ns = load_namespace(&*store, record, &mut startup)?;
            namespaces.insert(ns.name.to_string(), Arc::new(ns));
        }
        if from_v1 {
            startup.put_meta(records::FORMAT_KEY, records::FORMAT_VALUE);
            tracing::info!("store upgraded to format 2: claims have their own table");
        }
        // One batch, before the first new mark can land: the open generations' clean
        // snapshots are about to go stale, so forget them; and the heartbeat of this
        // run's start.
        startup.put_meta(records::CLOCK_KEY, &records::encode(&ClockRecord::at(now)));
        store.write(&startup, true)?;
        remove_orphan_snapshots(&*store, &namespaces)?;

        let tracker = Self {
            inner: Arc::new(Inner {
                store,
                time,
                durability,
                namespaces: RwLock::new(namespaces),
                admin: Mutex::new(()),
                transactions: Mutex::new(()),
                checkpoints: RwLock::new(()),
                closed: AtomicBool::new(false),
                heartbeat: AtomicU64::new(now.as_millis()),
                health: health::Health::default(),
                limits,
                last_recovery: AtomicU64::new(0),
            }),
        };
        let budget = tracker.filter_budget();
        if let Some(limit) = budget.budget
            && budget.charged > limit
        {
            // The store opens as the previous run left it; only growth is refused.
            tracing::warn!(
                charged = budget.charged,
                budget = limit,
                "the namespaces' filters are charged more than the filter budget; \
                 creations and reconfigurations that grow them will be refused"
            );
        }
        // Snapshots rebuilt above are saved before anything can take their tables.
        for ns in tracker.all_namespaces() {
            tracker.catch_up(&ns)?;
        }
        if tracker.namespace_handle(NamespaceName::DEFAULT).is_err() {
            let _ = tracker.configure_namespace(NamespaceName::DEFAULT, default_config)?;
        }
        Ok(tracker)
    }
}

/// The sizing a generation's filter had: as recorded, else (records from before
/// sizings were kept) the namespace's configuration.
fn recorded_sizing(g: &GenerationRecord, config: &NamespaceConfig) -> Result<FilterSizing, Error> {
    match (g.capacity, g.fp_rate) {
        (Some(capacity), Some(fp)) => size_filter(capacity, fp),
        _ => Ok(config.filter_sizing()),
    }
}

fn load_namespace(
    store: &dyn Store,
    record: NamespaceRecord,
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

    let mut gens = Vec::with_capacity(ring_record.generations.len());
    let mut unsaved = BTreeSet::new();
    for g in &ring_record.generations {
        let gid = GenerationId(g.id);
        let exact = gid >= floor;
        let sizing = recorded_sizing(g, &record.config)?;
        let open = g.sealed_at.is_none();
        let clean_open = open && clean.as_ref().is_some_and(|c| c.generation == g.id);
        let (filter, ids) = if open && !clean_open {
            rebuild_filter(store, id, gid, sizing, seed)?
        } else {
            match store.load_snapshot(id, gid) {
                Ok(Some(filter)) => {
                    let ids = match (&clean, open) {
                        (Some(c), true) => c.ids,
                        _ => g.ids,
                    };
                    (filter, ids)
                }
                Ok(None) if open => rebuild_filter(store, id, gid, sizing, seed)?,
                Ok(None) | Err(_) if exact => {
                    tracing::warn!(namespace = %name, generation = g.id, "snapshot missing or damaged; rebuilding the filter from the exact table");
                    let (filter, rebuilt) = rebuild_filter(store, id, gid, sizing, seed)?;
                    if !open {
                        unsaved.insert(gid);
                    }
                    (filter, if open { rebuilt } else { g.ids })
                }
                Ok(None) => {
                    return Err(Error::Corrupt(format!(
                        "namespace {name}: the snapshot of Bloom-only generation {} is missing",
                        g.id
                    )));
                }
                Err(e) => return Err(e),
            }
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
    let claims = load_claims(store, id, seed)?;
    tracing::info!(namespace = %name, generations = ring.len(), claims = claims.len(), "namespace recovered");
    let mut state = State::new(ring, floor, claims);
    state.unsaved = unsaved;
    state.forgets = load_forgets(store, id, floor, startup)?;
    state.catch_up_due = true;
    Ok(Namespace::new(name, id, seed, state))
}

/// The exact generations IDs were forgotten from. Whether a filter (a snapshot)
/// was rebuilt since is not known, so each counts one forget still in its filter:
/// it is rebuilt again before its table goes. Markers of generations whose tables
/// are gone (a forget that settled after its generation left the ring) are
/// removed.
fn load_forgets(
    store: &dyn Store,
    ns: NamespaceId,
    floor: GenerationId,
    startup: &mut Batch,
) -> Result<BTreeMap<GenerationId, Forgets>, Error> {
    let mut forgets = BTreeMap::new();
    for (key, value) in store.scan_meta(&records::forgets_prefix(ns))? {
        let record: ForgetsRecord = records::decode(&key, &value)?;
        let g = GenerationId(record.generation);
        if key != records::forgets_key(ns, g) {
            return Err(Error::Corrupt(format!(
                "record {:?} names generation {}, another one",
                String::from_utf8_lossy(&key),
                g.0
            )));
        }
        if g >= floor {
            forgets.insert(
                g,
                Forgets {
                    made: 1,
                    rebuilt_without: 0,
                },
            );
        } else {
            startup.delete_meta(&key);
        }
    }
    Ok(forgets)
}

fn load_claims(store: &dyn Store, ns: NamespaceId, seed: HashSeed) -> Result<ClaimTable, Error> {
    let prefix = records::claim_prefix(ns);
    let mut table = ClaimTable::default();
    for (key, value) in store.scan_meta(&prefix)? {
        let id = &key[prefix.len()..];
        let claim = claim_table::decode(&key, id, &value)?;
        table.put(key_of(seed.hash(id)), claim);
    }
    Ok(table)
}

/// Format 1 kept claims as records inside the exact tables; moves each to the
/// claims table (one batch per namespace: a crash midway leaves the format record at
/// 1, and the next start moves what is left). Their filter bits stay behind, as
/// format 1 set them: at worst a released claim of that era reads
/// `probable_duplicate` once its generation turns Bloom-only.
fn move_claims_out_of_exact_tables(
    store: &dyn Store,
    record: &NamespaceRecord,
) -> Result<(), Error> {
    let id = NamespaceId(record.id);
    let Some(ring_bytes) = store.get_meta(&ring_key(id))? else {
        return Ok(());
    };
    let ring: RingRecord = records::decode(&ring_key(id), &ring_bytes)?;
    let mut b = Batch::new();
    let mut moved = 0_u64;
    for g in ring.generations.iter().filter(|g| g.id >= ring.exact_floor) {
        let gid = GenerationId(g.id);
        store.scan_marks(id, gid, &mut |event, value| {
            if let MarkValue::Claimed { owner, until } = MarkValue::decode(value)? {
                b.delete_mark(id, gid, event);
                claim_table::put_record(
                    &mut b,
                    id,
                    &Claim {
                        id: event.into(),
                        state: ClaimState { owner, until },
                        // Format 1 kept no lease: an expired claim is forgotten at
                        // the next tick.
                        lease: Duration::ZERO,
                    },
                );
                moved += 1;
            }
            Ok(())
        })?;
    }
    if moved > 0 {
        store.write(&b, true)?;
        tracing::info!(namespace = %record.name, claims = moved, "claims moved to their own table");
    }
    Ok(())
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
    use crate::clock::ManualClock;
    use crate::exact::OwnerFp;
    use crate::records::{NEXT_NS_KEY, ns_key};
    use crate::store::MemoryStore;
    use crate::verdict::Verdict;
    use crate::{ClaimOutcome, Durability};

    /// A store as format 1 left it: a claim and a done mark side by side in the open
    /// generation's exact table.
    fn format_1_store(now: u64) -> MemoryStore {
        let store = MemoryStore::new();
        let seed = HashSeed::from_u64(42);
        let config = NamespaceConfig::default();
        let ring = GenerationRing::new(config.clone(), seed, Timestamp::from_millis(now)).unwrap();
        let ns = NamespaceId(1);
        let record = NamespaceRecord {
            v: records::RECORD_VERSION,
            id: ns.0,
            name: "default".into(),
            config,
            seed: seed.to_u64(),
        };
        let claimed = MarkValue::Claimed {
            owner: OwnerFp::new("w1", seed).unwrap(),
            until: Timestamp::from_millis(now + 60_000),
        };
        let mut b = Batch::new();
        b.put_meta(records::FORMAT_KEY, records::FORMAT_V1);
        b.put_meta(NEXT_NS_KEY, &2_u32.to_be_bytes());
        b.put_meta(&ns_key("default"), &records::encode(&record));
        b.put_meta(
            &ring_key(ns),
            &records::encode(&RingRecord::of(&ring, GenerationId(1))),
        );
        b.put_meta(
            records::CLOCK_KEY,
            &records::encode(&ClockRecord::at(Timestamp::from_millis(now))),
        );
        b.put_mark(ns, GenerationId(1), b"job", claimed.encode().as_slice());
        let done = MarkValue::Done { owner: None };
        b.put_mark(ns, GenerationId(1), b"done", done.encode().as_slice());
        store.write(&b, true).unwrap();
        store
    }

    #[test]
    fn format_1_claims_move_to_their_own_table() {
        let now = 1_700_000_000_000;
        let clock = ManualClock::new(Timestamp::from_millis(now));
        let tracker = Local::recover(
            Box::new(format_1_store(now)),
            Durability::Flush,
            Arc::new(clock),
            NamespaceConfig::default(),
            Limits::default(),
        )
        .unwrap();
        let store = &tracker.inner.store;
        assert_eq!(
            store.get_meta(records::FORMAT_KEY).unwrap().as_deref(),
            Some(records::FORMAT_VALUE)
        );
        let mut left = Vec::new();
        store
            .scan_marks(NamespaceId(1), GenerationId(1), &mut |id, _| {
                left.push(id.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(left, [b"done".to_vec()], "the claim left the exact table");
        let tracker = crate::tracker::Tracker {
            backend: crate::tracker::Backend::Local(tracker.clone()),
        };
        assert_eq!(
            tracker
                .claim("default", "job", "w2", Duration::from_secs(5))
                .unwrap(),
            ClaimOutcome::InProgress {
                until: Timestamp::from_millis(now + 60_000)
            }
        );
        assert_eq!(
            tracker.check("default", &["done"]).unwrap(),
            [Verdict::Duplicate]
        );
        tracker.complete("default", "job", "w1").unwrap();
        assert_eq!(
            tracker.check("default", &["job"]).unwrap(),
            [Verdict::Duplicate]
        );
    }
}
