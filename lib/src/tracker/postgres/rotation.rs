//! Rotation on PostgreSQL: once per namespace across every node, serialised against
//! marks by the namespace's exclusive advisory lock, on the database's clock.
//!
//! Sealing is one short transaction: the next generation's table is created (a new
//! name, so no lock that anything else holds) and becomes the open one, the claim
//! placeholders move into it, and the ring row moves on. Nothing is dropped there:
//! tables that left the exact horizon are dropped afterwards ([`Pg::cleanup`]),
//! each waiting at most a moment for whoever still reads it (a report, `pg_dump`),
//! and tried again at the next tick when it could not. The sealed generation's
//! Bloom filter is built afterwards too, outside the lock, from its exact table
//! (nothing is added to it again; a forget takes IDs out, and the filter away
//! until it is built again without them, see `forget`); only once the filter is
//! stored may the generation lose its table. Until then it simply stays exact.
//! The call that rotated does both before it goes on, as the embedded engine
//! does: a generation turns Bloom-only as it leaves the exact horizon, not a tick
//! later.
//!
//! The exclusive lock waits for every transaction marking in the namespace, a
//! consumer's long one included, and while it waits, new marks of the namespace
//! queue behind it. So a rotation waits only briefly ([`ROTATION_LOCK_WAIT`]),
//! then gives up and is tried again later (counted in
//! [`Pg::rotations_deferred`]); marks that find the generation full meanwhile wait
//! a little and then fail with [`Error::Busy`], so the generation never grows past
//! its capacity.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::ring::{NsCache, Ring, RowRead, ring_row};
use super::schema::{create_table, drop_table, limits, table, tables};
use super::single::{due, lock};
use super::{Pg, client, lock_timed_out};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::SealReason;
use crate::ring_policy;
use crate::sizing::size_filter;

/// How long a rotation waits for its namespace's exclusive lock before it gives
/// up for now. New marks of the namespace queue behind a waiting rotation, so the
/// wait is short.
pub(crate) const ROTATION_LOCK_WAIT: Duration = Duration::from_millis(200);

/// How long a drop of a table waits for its readers.
const DROP_LOCK_WAIT: Duration = Duration::from_millis(100);

/// How long building one generation's filter may take (it reads the generation's
/// whole table).
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(600);

/// How a rotation went.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rotated {
    Sealed,
    /// Not due any more (another node sealed it meanwhile), or the namespace is
    /// not the one the cache knew.
    NotDue,
    /// The namespace's lock was not had in time: left for later.
    Deferred,
}

impl Pg {
    /// Seals the open generation: when `reason` is `None` (asked for), or when it is
    /// still due (another node may have sealed it meanwhile). Builds the new
    /// filter and drops what left the horizon in the background afterwards.
    pub(crate) async fn rotate(
        &self,
        ns: &NsCache,
        reason: Option<SealReason>,
        deadline: Instant,
    ) -> Result<Rotated, Error> {
        let rotated = self
            .session(deadline, async |conn| {
                let ctx = self.ctx();
                let s = ctx.schema;
                let tx = conn.transaction().await?;
                tx.batch_execute(&format!(
                    "SET LOCAL lock_timeout = {}",
                    ROTATION_LOCK_WAIT.as_millis()
                ))
                .await?;
                match lock(&*tx, &ctx, ns.id, true).await {
                    Err(e) if lock_timed_out(&e) => return Ok(Rotated::Deferred),
                    other => other?,
                }
                let row = ring_row(&*tx, &ctx, ns, RowRead::Current).await?;
                let loaded = self.load(&*tx, &ctx, &ns.name).await?;
                let ring = loaded.ring();
                if loaded.id != ns.id || ring.version != row.version {
                    tx.commit().await?;
                    return Ok(Rotated::NotDue);
                }
                if reason.is_some() && due(&ring.config, &row).is_none() {
                    tx.commit().await?;
                    return Ok(Rotated::NotDue);
                }
                let sealed = ring.open;
                let next = sealed + 1;
                create_table(&*tx, s, ns.id, next).await?;
                tx.execute(
                    &format!(
                        "UPDATE {s}.generations SET sealed_at = $3, ids = $4 WHERE ns = $1 AND gen = $2"
                    ),
                    &[&ns.id, &sealed, &row.now, &row.open_ids],
                )
                .await?;
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.generations (ns, gen, opened_at) VALUES ($1, $2, $3)"
                    ),
                    &[&ns.id, &next, &row.now],
                )
                .await?;
                // Claims are not marks: their placeholders follow the open generation.
                tx.batch_execute(&format!(
                    "INSERT INTO {new} (id, owner, claim) SELECT id, owner, true FROM {old} WHERE claim;
                     DELETE FROM {old} WHERE claim;",
                    new = table(s, ns.id, next),
                    old = table(s, ns.id, sealed),
                ))
                .await?;
                let generations = i64::from(ring.config.generations());
                let oldest = ring.oldest.max(next + 1 - generations);
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
                let (capacity, span) = limits(&ring.config);
                tx.execute(
                    &format!(
                        "UPDATE {s}.namespaces
                            SET open_gen = $2, oldest_gen = $3, exact_floor = $4, opened_at = $5,
                                capacity = $6, span_ms = $7, version = version + 1
                          WHERE id = $1"
                    ),
                    &[&ns.id, &next, &oldest, &floor, &row.now, &capacity, &span],
                )
                .await?;
                tx.commit().await?;
                tracing::debug!(namespace = %ns.name, sealed, reason = ?reason, "generation sealed");
                Ok(Rotated::Sealed)
            })
            .await?;
        match rotated {
            Rotated::Deferred => {
                self.inner
                    .rotations_deferred
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    namespace = %ns.name,
                    waited_ms = ROTATION_LOCK_WAIT.as_millis(),
                    "rotation deferred: a transaction holds the namespace; trying again later"
                );
            }
            Rotated::Sealed => {
                // The sealed generation's filter, and the floor it lets move, now: a
                // generation past the exact horizon answers from its filter from the
                // moment it leaves, as on the embedded store. What fails here is
                // left for the next tick; the rotation stands.
                if let Err(e) = self.catch_up(ns).await {
                    tracing::debug!(namespace = %ns.name, error = %e, "filter build left for the next tick");
                }
                if let Err(e) = self.cleanup().await {
                    tracing::debug!(error = %e, "table drops left for the next tick");
                }
            }
            Rotated::NotDue => {}
        }
        Ok(rotated)
    }

    /// Builds the filters of sealed generations that have none yet (never built, or
    /// taken away by a forget), rebuilds those looser than the configuration now
    /// asks, and moves the exact floor past every generation ready for it. Safe on
    /// every node at once: a filter is stored only where none is (or replaces a
    /// looser one), and only if no forget in the generation committed since its
    /// IDs were read; the floor moves under the exclusive lock.
    pub(crate) async fn catch_up(&self, ns: &NsCache) -> Result<(), Error> {
        let ctx = self.ctx();
        let s = ctx.schema;
        let ring = self
            .session(self.deadline(), async |conn| {
                Ok(self.load(client(conn), &ctx, &ns.name).await?.ring())
            })
            .await?;
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
            let deadline = Instant::now() + MAINTENANCE_TIMEOUT;
            self.session(deadline, async |conn| {
                let tx = conn.transaction().await?;
                tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
                // The generation's forgets first, then its IDs, each statement on
                // a snapshot of its own (READ COMMITTED): a forget that commits
                // after the count was read moves it, and the filter, which may
                // still hold the forgotten ID, is not stored (the next catch-up
                // builds again). A forget deletes and counts in one transaction.
                let Some((forgets, counted)) = tx
                    .query_opt(
                        &format!(
                            "SELECT forgets, ids FROM {s}.generations WHERE ns = $1 AND gen = $2"
                        ),
                        &[&ns.id, &g.generation],
                    )
                    .await?
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                else {
                    // Gone from the ring meanwhile: nothing to build.
                    return Ok(());
                };
                let rows = tx
                    .query(
                        &format!(
                            "SELECT id FROM {} WHERE NOT claim",
                            table(s, ns.id, g.generation)
                        ),
                        &[],
                    )
                    .await?;
                // Forgotten IDs leave the table, not the count (as on the embedded
                // engine): the filter is sized for every ID the generation took.
                let ids = (rows.len() as u64).max(u64::try_from(counted).unwrap_or(0));
                let mut filter = BloomFilter::new(size_filter(ids.max(1), target)?, ns.seed)?;
                for row in &rows {
                    let id: &[u8] = row.get(0);
                    let _ = filter.insert(id);
                }
                tx.execute(
                    &format!(
                        "UPDATE {s}.generations SET filter = $3, ids = $4
                          WHERE ns = $1 AND gen = $2 AND (filter IS NULL OR $5) AND forgets = $6"
                    ),
                    &[
                        &ns.id,
                        &g.generation,
                        &filter.to_snapshot(),
                        &(ids as i64),
                        &g.filter.is_some(),
                        &forgets,
                    ],
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await?;
            built = true;
        }
        let ring = if built {
            self.session(self.deadline(), async |conn| {
                Ok(self.load(client(conn), &ctx, &ns.name).await?.ring())
            })
            .await?
        } else {
            ring
        };
        if ready_floor(&ring, ring.open, ring.oldest) > ring.floor {
            self.advance_floor(ns).await?;
        }
        Ok(())
    }

    /// Moves the floor as far as ready (the tables it passes are dropped by
    /// [`cleanup`](Self::cleanup)).
    async fn advance_floor(&self, ns: &NsCache) -> Result<(), Error> {
        let moved = self
            .session(self.deadline(), async |conn| {
                let ctx = self.ctx();
                let s = ctx.schema;
                let tx = conn.transaction().await?;
                tx.batch_execute(&format!(
                    "SET LOCAL lock_timeout = {}",
                    ROTATION_LOCK_WAIT.as_millis()
                ))
                .await?;
                match lock(&*tx, &ctx, ns.id, true).await {
                    Err(e) if lock_timed_out(&e) => return Ok(false),
                    other => other?,
                }
                let ring = self.load(&*tx, &ctx, &ns.name).await?.ring();
                let floor = ready_floor(&ring, ring.open, ring.oldest);
                if floor > ring.floor {
                    tx.execute(
                        &format!(
                            "UPDATE {s}.namespaces SET exact_floor = $2, version = version + 1 WHERE id = $1"
                        ),
                        &[&ns.id, &floor],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(floor > ring.floor)
            })
            .await?;
        if moved {
            self.cleanup().await?;
        } else {
            self.inner
                .rotations_deferred
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drops the exact tables nothing needs any more: of generations past the exact
    /// floor or out of the ring, and of deleted namespaces. Each drop waits a moment
    /// at most for the readers holding its table (then the next tick tries again),
    /// and holds up nobody but them.
    pub(crate) async fn cleanup(&self) -> Result<(), Error> {
        let s = self.inner.schema.clone();
        let doomed = self
            .session(self.deadline(), async |conn| {
                // Namespaces first, then tables: a table created after the first
                // statement belongs to a namespace it did not list, and is kept.
                let live: Vec<(i32, i64)> = conn
                    .query(
                        &format!(
                            "SELECT id, greatest(exact_floor, oldest_gen) FROM {s}.namespaces"
                        ),
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let retired: Vec<i32> = conn
                    .query(&format!("SELECT ns FROM {s}.retired"), &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let present = tables(client(conn), &s).await?;
                Ok((
                    present
                        .into_iter()
                        .filter(|(ns, generation)| {
                            retired.contains(ns)
                                || live
                                    .iter()
                                    .any(|(id, keep_from)| id == ns && generation < keep_from)
                        })
                        .collect::<Vec<_>>(),
                    retired,
                ))
            })
            .await;
        let (doomed, retired) = doomed?;
        let mut left: Vec<i32> = Vec::new();
        for (ns, generation) in doomed {
            let dropped = self
                .session(self.deadline(), async |conn| {
                    let tx = conn.transaction().await?;
                    tx.batch_execute(&format!(
                        "SET LOCAL lock_timeout = {}",
                        DROP_LOCK_WAIT.as_millis()
                    ))
                    .await?;
                    let dropped = drop_table(&*tx, &s, ns, generation).await?;
                    if dropped {
                        tx.commit().await?;
                    }
                    Ok(dropped)
                })
                .await?;
            if !dropped {
                tracing::debug!(
                    ns,
                    generation,
                    "a table drop waits for its readers; next tick"
                );
                left.push(ns);
            }
        }
        let done: Vec<i32> = retired.into_iter().filter(|r| !left.contains(r)).collect();
        if !done.is_empty() {
            self.session(self.deadline(), async |conn| {
                conn.execute(
                    &format!("DELETE FROM {s}.retired WHERE ns = ANY($1)"),
                    &[&done],
                )
                .await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Forgets claims expired for as long as their lease was, with their
    /// placeholders (which are always in the open generation).
    pub(crate) async fn forget_expired_claims(&self, ns: &NsCache) -> Result<(), Error> {
        self.session(self.deadline(), async |conn| {
            let ctx = self.ctx();
            let s = ctx.schema;
            let tx = conn.transaction().await?;
            lock(&*tx, &ctx, ns.id, false).await?;
            let row = ring_row(&*tx, &ctx, ns, RowRead::Current).await?;
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
                        "DELETE FROM {} WHERE claim AND id = ANY($1)",
                        table(s, ns.id, row.open)
                    ),
                    &[&gone],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Whether a generation may seal (for `tick`), read without a lock: the
    /// rotation itself checks again under the exclusive one.
    pub(crate) async fn due_now(&self, ns: &NsCache) -> Result<Option<SealReason>, Error> {
        self.session(self.deadline(), async |conn| {
            let ctx = self.ctx();
            let row = ring_row(client(conn), &ctx, ns, RowRead::Current).await?;
            let mut ring = ns.ring();
            if ring.version != row.version {
                ring = self.load(client(conn), &ctx, &ns.name).await?.ring();
            }
            Ok(due(&ring.config, &row))
        })
        .await
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
pub(crate) fn ready_floor(ring: &Ring, open: i64, oldest: i64) -> i64 {
    let n = |g: i64| u64::try_from(g).unwrap_or(0);
    let wanted = ring_policy::wanted_floor(
        n(ring.floor),
        n(open),
        n(oldest),
        ring.config.exact_generations(),
    );
    let target = ring.config.generation_fp_rate();
    let floor = ring_policy::ready_floor(n(ring.floor), n(oldest), wanted, |floor| {
        ring.sealed.iter().any(|g| {
            n(g.generation) == floor
                && g.filter
                    .as_ref()
                    .is_some_and(|f| !needs_resize(f, g.ids, target))
        })
    });
    i64::try_from(floor).unwrap_or(i64::MAX)
}

/// A stored filter the configuration now asks to be rebuilt
/// (`ring_policy::filter_too_loose`).
fn needs_resize(filter: &BloomFilter, ids: i64, target: f64) -> bool {
    ring_policy::filter_too_loose(filter.sizing(), u64::try_from(ids).unwrap_or(0), target)
}
