//! A namespace's ring as the database holds it, and as one node caches it.
//!
//! The database decides everything that concerns the open generation (its unique
//! index) and the ring itself (one row per namespace, changed only under the
//! namespace's exclusive advisory lock). What a node keeps is what never changes once
//! written: the Bloom filters of sealed generations, built once from their exact
//! tables and stored in the database, valid on every node. Each transaction reads the
//! ring row; when its version differs from the cached one, the cache is refreshed
//! (new filters fetched) before anything is decided.

use std::sync::{Arc, RwLock};

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::hash::HashSeed;
use crate::id::NamespaceName;

use super::Ctx;

/// A namespace as this node knows it.
#[derive(Debug)]
pub(crate) struct NsCache {
    pub(crate) id: i32,
    pub(crate) name: NamespaceName,
    pub(crate) seed: HashSeed,
    pub(crate) ring: RwLock<Arc<Ring>>,
}

impl NsCache {
    pub(crate) fn ring(&self) -> Arc<Ring> {
        Arc::clone(
            &self
                .ring
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
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
}

/// A sealed generation: immutable, so its filter, once built, is valid everywhere.
#[derive(Clone, Debug)]
pub(crate) struct SealedGen {
    pub(crate) generation: i64,
    pub(crate) opened_at: i64,
    pub(crate) sealed_at: i64,
    pub(crate) ids: i64,
    /// `None` until built; the generation keeps its exact table meanwhile.
    pub(crate) filter: Option<Arc<BloomFilter>>,
}

/// The ring row, read at the start of every transaction, with the database's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingRow {
    pub(crate) version: i64,
    pub(crate) open: i64,
    pub(crate) open_opened_at: i64,
    pub(crate) open_ids: i64,
    /// Milliseconds since the epoch: the database's clock, or the injected one.
    pub(crate) now: i64,
}

pub(crate) async fn ring_row<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
) -> Result<RingRow, Error> {
    let s = ctx.schema;
    let row = ctx
        .query(
            client,
            &format!(
                "SELECT n.version, n.open_gen, g.opened_at,
                        (SELECT coalesce(sum(c.n), 0)::bigint FROM {s}.counts c
                          WHERE c.ns = n.id AND c.gen = n.open_gen),
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                   FROM {s}.namespaces n
                   JOIN {s}.generations g ON g.ns = n.id AND g.gen = n.open_gen
                  WHERE n.id = $1"
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

/// Brings the cache to the ring `row` describes (one round trip when only new
/// filters are missing).
pub(crate) async fn refresh<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    row: &RingRow,
) -> Result<Arc<Ring>, Error> {
    let cached = ns.ring();
    if cached.version == row.version {
        return Ok(cached);
    }
    let s = ctx.schema;
    let head = client
        .query_one(
            &format!(
                "SELECT config, version, open_gen, exact_floor, oldest_gen
                   FROM {s}.namespaces WHERE id = $1"
            ),
            &[&ns.id],
        )
        .await?;
    let config_text: String = head.get(0);
    let config: NamespaceConfig = serde_json::from_str(&config_text).map_err(|e| {
        Error::Corrupt(format!(
            "namespace {}: its configuration in PostgreSQL does not decode: {e}",
            ns.name
        ))
    })?;
    let (version, open, floor, oldest): (i64, i64, i64, i64) =
        (head.get(1), head.get(2), head.get(3), head.get(4));
    let gens = client
        .query(
            &format!(
                "SELECT gen, opened_at, sealed_at, ids, filter IS NOT NULL
                   FROM {s}.generations WHERE ns = $1 AND gen >= $2 ORDER BY gen"
            ),
            &[&ns.id, &oldest],
        )
        .await?;
    let mut sealed = Vec::new();
    let mut open_opened_at = row.open_opened_at;
    let mut wanted: Vec<i64> = Vec::new();
    for g in &gens {
        let generation: i64 = g.get(0);
        if generation == open {
            open_opened_at = g.get(1);
            continue;
        }
        let Some(sealed_at) = g.get::<_, Option<i64>>(2) else {
            continue;
        };
        let known = cached
            .sealed
            .iter()
            .find(|c| c.generation == generation)
            .and_then(|c| c.filter.clone());
        let has_filter: bool = g.get(4);
        if known.is_none() && has_filter {
            wanted.push(generation);
        }
        sealed.push(SealedGen {
            generation,
            opened_at: g.get(1),
            sealed_at,
            ids: g.get(3),
            filter: known,
        });
    }
    if !wanted.is_empty() {
        for row in client
            .query(
                &format!("SELECT gen, filter FROM {s}.generations WHERE ns = $1 AND gen = ANY($2)"),
                &[&ns.id, &wanted],
            )
            .await?
        {
            let generation: i64 = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let filter = BloomFilter::from_snapshot(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "namespace {}: the filter of generation {generation} in PostgreSQL is damaged: {e}",
                    ns.name
                ))
            })?;
            if filter.seed() != ns.seed {
                return Err(Error::Corrupt(format!(
                    "namespace {}: the filter of generation {generation} belongs to another namespace",
                    ns.name
                )));
            }
            if let Some(g) = sealed.iter_mut().find(|g| g.generation == generation) {
                g.filter = Some(Arc::new(filter));
            }
        }
    }
    let ring = Arc::new(Ring {
        version,
        config,
        open,
        floor,
        oldest,
        open_opened_at,
        sealed,
    });
    *ns.ring
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&ring);
    Ok(ring)
}
