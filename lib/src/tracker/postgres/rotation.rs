//! Rotation on PostgreSQL: once per namespace across every node, serialised against
//! marks by the namespace's exclusive advisory lock, on the database's clock.
//!
//! Sealing is one short transaction: the next generation's partition is created and
//! becomes the open one, the claim placeholders move into it, and the generations that
//! left the ring lose their partitions. The sealed generation's Bloom filter is built
//! afterwards, outside the lock, from its exact table (it never changes again); only
//! once the filter is stored may the generation lose its table. Until then it simply
//! stays exact.

use std::sync::Arc;

use super::Pg;
use super::mark::{NsLock, begin, due, lock};
use super::ring::{NsCache, Ring, refresh, ring_row};
use super::schema::{create_partition, drop_partition};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::SealReason;
use crate::sizing::{Layout, size_filter};

impl Pg {
    /// Seals the open generation: when `reason` is `None` (asked for), or when it is
    /// still due (another node may have sealed it meanwhile).
    pub(crate) async fn rotate(
        &self,
        ns: &NsCache,
        reason: Option<SealReason>,
    ) -> Result<(), Error> {
        let ctx = self.ctx();
        let s = ctx.schema;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let (row, ring) = begin(&*tx, &ctx, ns, NsLock::Exclusive).await?;
        if reason.is_some() && due(&ring, &row).is_none() {
            tx.commit().await?;
            return Ok(());
        }
        let sealed = ring.open;
        let next = sealed + 1;
        create_partition(&*tx, s, ns.id, next).await?;
        tx.execute(
            &format!(
                "UPDATE {s}.generations SET sealed_at = $3, ids = $4 WHERE ns = $1 AND gen = $2"
            ),
            &[&ns.id, &sealed, &row.now, &row.open_ids],
        )
        .await?;
        tx.execute(
            &format!("INSERT INTO {s}.generations (ns, gen, opened_at) VALUES ($1, $2, $3)"),
            &[&ns.id, &next, &row.now],
        )
        .await?;
        // Claims are not marks: their placeholders follow the open generation.
        tx.execute(
            &format!(
                "INSERT INTO {s}.marks (ns, gen, id, owner, claim)
                 SELECT ns, $3, id, owner, true FROM {s}.marks
                  WHERE ns = $1 AND gen = $2 AND claim"
            ),
            &[&ns.id, &sealed, &next],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM {s}.marks WHERE ns = $1 AND gen = $2 AND claim"),
            &[&ns.id, &sealed],
        )
        .await?;
        let generations = i64::from(ring.config.generations());
        let oldest = ring.oldest.max(next + 1 - generations);
        for gone in ring.oldest..oldest {
            drop_partition(&*tx, s, ns.id, gone).await?;
        }
        tx.execute(
            &format!("DELETE FROM {s}.generations WHERE ns = $1 AND gen < $2"),
            &[&ns.id, &oldest],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM {s}.counts WHERE ns = $1 AND gen < $2"),
            &[&ns.id, &oldest],
        )
        .await?;
        let floor = ready_floor(&ring, next, oldest);
        for dropped in ring.floor.max(oldest)..floor {
            drop_partition(&*tx, s, ns.id, dropped).await?;
        }
        tx.execute(
            &format!(
                "UPDATE {s}.namespaces
                    SET open_gen = $2, oldest_gen = $3, exact_floor = $4, version = version + 1
                  WHERE id = $1"
            ),
            &[&ns.id, &next, &oldest, &floor],
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(namespace = %ns.name, sealed, reason = ?reason, "generation sealed");
        self.catch_up(ns).await
    }

    /// Builds the filters of sealed generations that have none yet, rebuilds those
    /// looser than the configuration now asks, and moves the exact floor past every
    /// generation ready for it. Safe on every node at once: a filter is stored only
    /// where none is, and the floor moves under the exclusive lock.
    pub(crate) async fn catch_up(&self, ns: &NsCache) -> Result<(), Error> {
        let ctx = self.ctx();
        let s = ctx.schema;
        let ring = {
            let conn = self.conn().await?;
            let row = ring_row(&**conn, &ctx, ns).await?;
            refresh(&**conn, &ctx, ns, &row).await?
        };
        let target = ring.config.generation_fp_rate();
        let mut built = false;
        for g in ring.sealed.iter().filter(|g| g.generation >= ring.floor) {
            let rebuild = match &g.filter {
                None => true,
                Some(f) => needs_resize(f, g.ids, target),
            };
            if !rebuild {
                continue;
            }
            let conn = self.conn().await?;
            let rows = conn
                .query(
                    &format!("SELECT id FROM {s}.marks WHERE ns = $1 AND gen = $2 AND NOT claim"),
                    &[&ns.id, &g.generation],
                )
                .await?;
            let ids = rows.len() as u64;
            let mut filter = BloomFilter::new(size_filter(ids.max(1), target)?, ns.seed)?;
            for row in &rows {
                let id: &[u8] = row.get(0);
                let _ = filter.insert(id);
            }
            conn.execute(
                &format!(
                    "UPDATE {s}.generations SET filter = $3, ids = $4
                      WHERE ns = $1 AND gen = $2 AND (filter IS NULL OR $5)"
                ),
                &[
                    &ns.id,
                    &g.generation,
                    &filter.to_snapshot(),
                    &(ids as i64),
                    &g.filter.is_some(),
                ],
            )
            .await?;
            // Every node must load the new filter before relying on it.
            conn.execute(
                &format!("UPDATE {s}.namespaces SET version = version + 1 WHERE id = $1"),
                &[&ns.id],
            )
            .await?;
            built = true;
        }
        let ring = if built {
            let conn = self.conn().await?;
            let row = ring_row(&**conn, &ctx, ns).await?;
            refresh(&**conn, &ctx, ns, &row).await?
        } else {
            ring
        };
        if ready_floor(&ring, ring.open, ring.oldest) > ring.floor {
            self.advance_floor(ns).await?;
        }
        Ok(())
    }

    /// Moves the floor as far as ready, dropping the partitions it passes.
    async fn advance_floor(&self, ns: &NsCache) -> Result<(), Error> {
        let ctx = self.ctx();
        let s = ctx.schema;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let (_, ring) = begin(&*tx, &ctx, ns, NsLock::Exclusive).await?;
        let floor = ready_floor(&ring, ring.open, ring.oldest);
        if floor > ring.floor {
            for g in ring.floor.max(ring.oldest)..floor {
                drop_partition(&*tx, s, ns.id, g).await?;
            }
            tx.execute(
                &format!(
                    "UPDATE {s}.namespaces SET exact_floor = $2, version = version + 1 WHERE id = $1"
                ),
                &[&ns.id, &floor],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets claims expired for as long as their lease was, with their
    /// placeholders (which are always in the open generation).
    pub(crate) async fn forget_expired_claims(&self, ns: &NsCache) -> Result<(), Error> {
        let ctx = self.ctx();
        let s = ctx.schema;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        lock(&*tx, &ctx, ns.id, NsLock::Shared).await?;
        let row = ring_row(&*tx, &ctx, ns).await?;
        let gone: Vec<Vec<u8>> = tx
            .query(
                &format!(
                    "DELETE FROM {s}.claims WHERE ns = $1 AND until_ms + lease_ms <= $2 RETURNING id"
                ),
                &[&ns.id, &row.now],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !gone.is_empty() {
            tx.execute(
                &format!(
                    "DELETE FROM {s}.marks WHERE ns = $1 AND gen = $2 AND claim AND id = ANY($3)"
                ),
                &[&ns.id, &row.open, &gone],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether a generation may seal (for `tick`), read without a lock: the
    /// rotation itself checks again under the exclusive one.
    pub(crate) async fn due_now(&self, ns: &NsCache) -> Result<Option<SealReason>, Error> {
        let ctx = self.ctx();
        let conn = self.conn().await?;
        let row = ring_row(&**conn, &ctx, ns).await?;
        let ring = refresh(&**conn, &ctx, ns, &row).await?;
        Ok(due(&ring, &row))
    }

    /// Whether the namespace has filters to build or a floor to move.
    pub(crate) fn behind(ring: &Ring) -> bool {
        ring.sealed
            .iter()
            .any(|g| g.generation >= ring.floor && g.filter.is_none())
            || ready_floor(ring, ring.open, ring.oldest) > ring.floor
    }

    pub(crate) fn arc_ring(ns: &NsCache) -> Arc<Ring> {
        ns.ring()
    }
}

/// The highest floor, up to what the configuration asks with `open` open, that every
/// generation it passes is ready for: its filter stored and within the rate.
fn ready_floor(ring: &Ring, open: i64, oldest: i64) -> i64 {
    let exact = i64::from(ring.config.exact_generations());
    let wanted = ring.floor.max(open - (exact - 1)).max(oldest);
    let target = ring.config.generation_fp_rate();
    let mut floor = ring.floor.max(oldest);
    while floor < wanted {
        let ready = ring.sealed.iter().any(|g| {
            g.generation == floor
                && g.filter
                    .as_ref()
                    .is_some_and(|f| !needs_resize(f, g.ids, target))
        });
        if !ready {
            break;
        }
        floor += 1;
    }
    floor
}

/// The same rule as the embedded engine's: a filter holding more than it was sized
/// for, filled past the rate asked, or laid out the first standard way.
fn needs_resize(filter: &BloomFilter, ids: i64, target: f64) -> bool {
    let sizing = filter.sizing();
    let ids = u64::try_from(ids).unwrap_or(0);
    ids > sizing.capacity
        || sizing.layout == Layout::StandardV1
        || (sizing.fp_rate > target && sizing.fp_after(ids) > target)
}
