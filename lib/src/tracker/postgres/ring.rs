//! A namespace's ring as the database holds it, and as one node caches it.
//!
//! The database decides everything that concerns the open generation (its unique
//! key) and the ring itself (one row per namespace, changed only under the
//! namespace's exclusive advisory lock, its `version` bumped each time). What a node
//! keeps is what never changes once written: the Bloom filters of sealed
//! generations, built once from their exact tables and stored in the database, valid
//! on every node (a forget makes one be built again, without the IDs it forgot: a
//! node loads it again when the generation's count of forgets moves). A node's hints (which sealed generations to look an ID up in) are
//! good only for the ring version it read them for; `mark_ids` answers `stale` for
//! any other, and the node reads the ring again ([`read`]).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::Ctx;
use super::schema::decode_config;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::hash::HashSeed;
use crate::id::NamespaceName;

/// How often a node looks for filters built since it last read the ring, while a
/// sealed generation it knows has none: until then it looks every ID up in that
/// generation's table, which is right, only slower.
const FILTER_POLL: Duration = Duration::from_secs(1);

/// A namespace as this node knows it: one per namespace id (a namespace deleted
/// and created again under the same name is another).
#[derive(Debug)]
pub(crate) struct NsCache {
    pub(crate) id: i32,
    pub(crate) name: NamespaceName,
    pub(crate) seed: HashSeed,
    ring: RwLock<Arc<Ring>>,
}

impl NsCache {
    pub(crate) fn new(id: i32, name: NamespaceName, seed: HashSeed) -> Self {
        Self {
            id,
            name,
            seed,
            ring: RwLock::new(Arc::new(Ring::empty())),
        }
    }

    pub(crate) fn ring(&self) -> Arc<Ring> {
        Arc::clone(
            &self
                .ring
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Keeps `ring` unless the cache already holds a newer one (a caller's
    /// transaction may read an older ring than the node's pool has).
    pub(crate) fn install(&self, ring: Arc<Ring>) {
        let mut held = self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.version >= held.version {
            *held = ring;
        }
    }
}

/// A snapshot of a namespace's ring.
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) version: i64,
    pub(crate) config: NamespaceConfig,
    pub(crate) open: i64,
    pub(crate) floor: i64,
    pub(crate) oldest: i64,
    pub(crate) open_opened_at: i64,
    /// Sealed live generations, oldest first.
    pub(crate) sealed: Vec<SealedGen>,
    /// When this node read it.
    pub(crate) read_at: Instant,
}

impl Ring {
    /// A ring no call has read yet: version 0 never matches the database's.
    pub(crate) fn empty() -> Self {
        Self {
            version: 0,
            config: NamespaceConfig::default(),
            open: 1,
            floor: 1,
            oldest: 1,
            open_opened_at: 0,
            sealed: Vec::new(),
            read_at: Instant::now(),
        }
    }

    /// Whether a sealed generation that keeps its table has no filter here yet and
    /// the database may have one by now.
    pub(crate) fn wants_filters(&self) -> bool {
        self.read_at.elapsed() >= FILTER_POLL
            && self
                .sealed
                .iter()
                .any(|g| g.generation >= self.floor && g.filter.is_none())
    }
}

/// A sealed generation: nothing is added to it any more, so its filter, once
/// built, is valid everywhere. A forget may take IDs out of its table (and its
/// stored filter with them, until rebuilt): a filter built before holds more
/// than the table, which as a hint for a generation that keeps its table costs
/// a lookup and no more; the floor never passes a generation whose filter holds
/// forgotten IDs (see `forget`).
#[derive(Clone, Debug)]
pub(crate) struct SealedGen {
    pub(crate) generation: i64,
    pub(crate) opened_at: i64,
    pub(crate) sealed_at: i64,
    pub(crate) ids: i64,
    /// `None` until built; the generation keeps its exact table meanwhile.
    pub(crate) filter: Option<Arc<BloomFilter>>,
    /// The stored filter's size in bytes: a filter rebuilt for a stricter rate is
    /// another size, and is loaded again.
    stored_len: Option<i32>,
    /// IDs forgotten from the generation's table so far (`generations.forgets`):
    /// a filter rebuilt without them may be as long as the one this node holds,
    /// which still holds them, so a change of this count loads the filter again.
    forgets: i64,
}

/// A namespace's identity and ring, as one statement read them.
pub(crate) struct Read {
    pub(crate) id: i32,
    pub(crate) seed: HashSeed,
    pub(crate) ring: Arc<Ring>,
}

/// Reads a namespace's ring by name, in one statement (one snapshot: the ring row
/// and its generations agree without a lock), then the filters this node lacks.
/// Filters `cached` holds for the same namespace are reused. `None`: no namespace
/// of that name.
pub(crate) async fn read<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    name: &NamespaceName,
    cached: Option<&NsCache>,
) -> Result<Option<Read>, Error> {
    let s = ctx.schema;
    let rows = ctx
        .query(
            client,
            &format!(
                "SELECT n.id, n.seed, n.version, n.config, n.open_gen, n.exact_floor,
                        n.oldest_gen, n.opened_at, g.gen, g.opened_at, g.sealed_at, g.ids,
                        octet_length(g.filter), g.forgets
                   FROM {s}.namespaces n
                   LEFT JOIN {s}.generations g
                     ON g.ns = n.id AND g.gen >= n.oldest_gen AND g.gen < n.open_gen
                        AND g.sealed_at IS NOT NULL
                  WHERE n.name = $1
                  ORDER BY g.gen"
            ),
            &[(&name.as_str(), Type::TEXT)],
        )
        .await?;
    let Some(head) = rows.first() else {
        return Ok(None);
    };
    let id: i32 = head.get(0);
    let seed = HashSeed::from_u64(head.get::<_, i64>(1) as u64);
    let config = decode_config(head.get(3), name.as_str())?;
    let known = cached.filter(|c| c.id == id).map(NsCache::ring);
    let mut sealed = Vec::with_capacity(rows.len());
    let mut wanted: Vec<i64> = Vec::new();
    for g in rows.iter().filter(|r| r.get::<_, Option<i64>>(8).is_some()) {
        let generation: i64 = g.get(8);
        let stored_len: Option<i32> = g.get(12);
        let forgets: i64 = g.get(13);
        let filter = known
            .as_ref()
            .and_then(|k| k.sealed.iter().find(|c| c.generation == generation))
            .filter(|c| c.stored_len == stored_len && c.forgets == forgets)
            .and_then(|c| c.filter.clone());
        if filter.is_none() && stored_len.is_some() {
            wanted.push(generation);
        }
        sealed.push(SealedGen {
            generation,
            opened_at: g.get(9),
            sealed_at: g.get::<_, Option<i64>>(10).unwrap_or_default(),
            ids: g.get(11),
            filter,
            stored_len,
            forgets,
        });
    }
    if !wanted.is_empty() {
        for row in client
            .query(
                &format!(
                    "SELECT gen, filter FROM {s}.generations
                      WHERE ns = $1 AND gen = ANY($2) AND filter IS NOT NULL"
                ),
                &[&id, &wanted],
            )
            .await?
        {
            let generation: i64 = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let filter = BloomFilter::from_snapshot(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "namespace {name}: the filter of generation {generation} in PostgreSQL is damaged: {e}"
                ))
            })?;
            if filter.seed() != seed {
                return Err(Error::Corrupt(format!(
                    "namespace {name}: the filter of generation {generation} belongs to another namespace"
                )));
            }
            if let Some(g) = sealed.iter_mut().find(|g| g.generation == generation) {
                g.stored_len = i32::try_from(bytes.len()).ok();
                g.filter = Some(Arc::new(filter));
            }
        }
    }
    Ok(Some(Read {
        id,
        seed,
        ring: Arc::new(Ring {
            version: head.get(2),
            config,
            open: head.get(4),
            floor: head.get(5),
            oldest: head.get(6),
            open_opened_at: head.get(7),
            sealed,
            read_at: Instant::now(),
        }),
    }))
}

/// The ring row as a transaction sees it once it holds the namespace's lock, with
/// the open generation's count and the database's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingRow {
    pub(crate) version: i64,
    pub(crate) open: i64,
    pub(crate) open_opened_at: i64,
    pub(crate) open_ids: i64,
    /// Milliseconds since the epoch: the database's clock, or the injected one.
    pub(crate) now: i64,
}

/// How a transaction reads the ring row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowRead {
    /// The tracker's own transactions, at READ COMMITTED: the statement's snapshot
    /// is taken after the namespace's lock, so the row is current.
    Current,
    /// A caller's transaction, at whatever isolation level: the row is locked in
    /// share mode, which fails (40001) at REPEATABLE READ and SERIALIZABLE when the
    /// transaction's snapshot predates a change of the ring, rather than let a stale
    /// ring be acted on.
    Guarded,
}

pub(crate) async fn ring_row<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    how: RowRead,
) -> Result<RingRow, Error> {
    let s = ctx.schema;
    let row = ctx
        .query(
            client,
            &format!(
                "SELECT n.version, n.open_gen, n.opened_at,
                        (SELECT coalesce(sum(c.n), 0)::bigint FROM {s}.counts c
                          WHERE c.ns = n.id AND c.gen = n.open_gen),
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                   FROM {s}.namespaces n
                  WHERE n.id = $1{}",
                match how {
                    RowRead::Current => "",
                    RowRead::Guarded => " FOR SHARE OF n",
                }
            ),
            &[(&ns.id, Type::INT4)],
        )
        .await?
        .pop()
        .ok_or_else(|| Error::UnknownNamespace(ns.name.to_string()))?;
    let db_now: i64 = row.get(4);
    Ok(RingRow {
        version: row.get(0),
        open: row.get(1),
        open_opened_at: row.get(2),
        open_ids: row.get(3),
        now: ctx.now(db_now),
    })
}
