//! Forgets on PostgreSQL: IDs' done marks deleted from the exact tables, in the
//! tracker's own transaction or, through the same function, inside a caller's
//! ([`InTransaction`](crate::postgres::InTransaction)).
//!
//! One transaction decides and writes, under the namespace's shared lock (so no
//! rotation, and no move of the exact floor, happens meanwhile): every row the IDs
//! have in the exact tables is locked (the open generation's first, then the
//! sealed generations', newest first; in ID order within each), what is known of
//! each ID is decided by `decide`, and the marks it forgets are deleted. The
//! tracker's own forget seals a due generation first, as its other calls do; one
//! in a caller's transaction never rotates.
//!
//! **Given back means given back, Bloom-only generations included.** A sealed
//! generation's filter is built from its table after sealing, and the floor moves
//! past a generation only once its filter is stored (`ready_floor`). So a forget
//! that deletes from a generation also takes its stored filter away and counts
//! itself in `generations.forgets`, in the same transaction: the generation stays
//! exact until a filter is built again from what its table now holds. A build
//! that read the table before the forget committed read the count before it too
//! and stores its filter only if the count has not moved (`catch_up`), and a node
//! that holds the old filter loads it again because the count moved (`ring`). The
//! old filter still holds more than the table, which as a hint costs a lookup, no
//! more, while the generation keeps its table.
//!
//! A forgotten ID marked again lands in the open generation, as a fresh mark does:
//! no exact table holds it any more, and marks insert only into the open one. A
//! forget changes no generation's count: the mark did land, and counting it keeps
//! every filter sized for at least what its table ever held.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::mark::Distinct;
use super::ring::NsCache;
use super::rotation::Rotated;
use super::schema::{LOCK_TIMEOUT, table};
use super::single::{Caller, Locked, due, lock_ring};
use super::{Ctx, Pg, lock_timed_out, retryable};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::generation::SealReason;
use crate::id::{EventId, NamespaceName};
use crate::tracker::decide::{Ask, ClaimState, Decision, Known, decide};

/// How many times a forget starts over (the ring read again, or chosen as a
/// deadlock's victim) before it gives up.
const ATTEMPTS: usize = 8;

/// What one attempt of a forget came to.
#[derive(Debug)]
pub(crate) enum Forgot {
    /// The open generation must seal first, as before any call of the tracker's
    /// own (nothing changed).
    RotateFirst(SealReason),
    /// The ring this node holds is not the namespace's (rotated meanwhile, or the
    /// namespace deleted and created again): read it again (nothing changed).
    Stale,
    /// One answer per distinct ID; `sealed`: whether a sealed generation lost
    /// IDs (its filter is built again before it may turn Bloom-only).
    Done { forgotten: Vec<bool>, sealed: bool },
}

impl Pg {
    /// See [`Tracker::forget`](crate::Tracker::forget).
    pub(crate) fn forget(&self, namespace: &str, ids: &[EventId<'_>]) -> Result<Vec<bool>, Error> {
        let name = NamespaceName::new(namespace)?;
        let distinct = Distinct::new(ids);
        let forgotten = self.block_on(self.forget_distinct(&name, &distinct.ids))?;
        Ok(distinct.spread_forgotten(&forgotten))
    }

    /// Forgets distinct, sorted IDs in one transaction, started over when the ring
    /// changed, a due generation was sealed first, or PostgreSQL chose it as a
    /// deadlock's victim.
    async fn forget_distinct(
        &self,
        name: &NamespaceName,
        ids: &[&[u8]],
    ) -> Result<Vec<bool>, Error> {
        let deadline = self.deadline();
        let mut may_rotate = true;
        for _ in 0..ATTEMPTS {
            let ns = self.ns(name, deadline).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let attempt = self
                .session(deadline, async |conn| {
                    let ctx = self.ctx().on(conn);
                    let tx = conn.transaction().await?;
                    let caller = Caller::Pool { may_rotate };
                    let forgot = forget_ids(&*tx, &ctx, self, &ns, ids, caller).await?;
                    if matches!(forgot, Forgot::Done { .. }) {
                        tx.commit().await?;
                    }
                    Ok(forgot)
                })
                .await;
            match attempt {
                Err(e) if retryable(&e) => {}
                Err(e) if lock_timed_out(&e) => return Err(held(name)),
                Err(Error::UnknownNamespace(n)) => {
                    self.uncache(name.as_str());
                    return Err(Error::UnknownNamespace(n));
                }
                Err(e) => return Err(e),
                Ok(Forgot::Stale) => {
                    self.reload(name, deadline).await?;
                }
                Ok(Forgot::RotateFirst(reason)) => {
                    if self.rotate(&ns, Some(reason), deadline).await? == Rotated::Deferred {
                        // A forget marks nothing: it goes on in the due generation.
                        may_rotate = false;
                    }
                }
                Ok(Forgot::Done { forgotten, sealed }) => {
                    if sealed {
                        // This node's ring without the filters taken away: its
                        // tick builds them again (as the next rotation does, on
                        // any node). The forget stands either way.
                        if let Err(e) = self.reload(name, deadline).await {
                            tracing::debug!(namespace = %name, error = %e, "filter rebuild left for the next rotation");
                        }
                    }
                    return Ok(forgotten);
                }
            }
        }
        Err(Error::Unavailable(
            "the namespace kept changing under the call; retry".into(),
        ))
    }
}

/// Another transaction held what a forget needed past `lock_timeout`.
fn held(name: &NamespaceName) -> Error {
    Error::Busy(format!(
        "another transaction held one of these IDs in namespace {name}, or the namespace \
         itself, for over {} ms; nothing was forgotten: retry",
        LOCK_TIMEOUT.as_millis()
    ))
}

/// Forgets distinct, sorted `ids` of `ns` inside `client`'s transaction (the
/// tracker's, which seals a due generation first unless told not to, or a
/// caller's, which never does: see [`Caller`]): a `true` per ID whose done mark it
/// deleted. Nothing is committed here; the locks it takes are held until the
/// transaction ends.
///
/// At REPEATABLE READ or SERIALIZABLE a row another transaction changed after the
/// snapshot (the ring's, a mark's, a generation's filter) cannot be locked or
/// written: PostgreSQL refuses with a serialisation failure, never a decision on a
/// stale view.
pub(crate) async fn forget_ids<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    pg: &Pg,
    ns: &NsCache,
    ids: &[&[u8]],
    caller: Caller,
) -> Result<Forgot, Error> {
    debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "distinct and sorted");
    let s = ctx.schema;
    let Some(Locked {
        ring,
        row,
        may_rotate,
    }) = lock_ring(client, ctx, pg, ns, caller).await?
    else {
        return Ok(Forgot::Stale);
    };
    if may_rotate && let Some(reason) = due(&ring.config, &row) {
        return Ok(Forgot::RotateFirst(reason));
    }
    let now = Timestamp::from_millis(row.now.max(0) as u64);
    let at = |id: &[u8]| {
        ids.binary_search(&id)
            .expect("only the IDs asked for are found")
    };
    let mut known = vec![Known::default(); ids.len()];
    // Every done mark found, as (generation, index of its ID), in the order the
    // rows were locked.
    let mut marks: Vec<(i64, usize)> = Vec::new();
    let open_rows = ctx
        .query(
            client,
            &format!(
                "SELECT m.id, m.owner, m.claim, c.until_ms
                   FROM {} m
                   LEFT JOIN {s}.claims c ON c.ns = $1 AND c.id = m.id
                  WHERE m.id = ANY($2)
                  ORDER BY m.id FOR UPDATE OF m",
                table(s, ns.id, ring.open)
            ),
            &[(&ns.id, Type::INT4), (&ids, Type::BYTEA_ARRAY)],
        )
        .await?;
    for r in &open_rows {
        let i = at(r.get(0));
        let owner = r
            .get::<_, Option<i64>>(1)
            .map(|o| OwnerFp::from_u64(o as u64));
        if r.get::<_, bool>(2) {
            let until = r.get::<_, Option<i64>>(3).unwrap_or(0).max(0) as u64;
            known[i].claim = owner.map(|owner| ClaimState {
                owner,
                until: Timestamp::from_millis(until),
            });
        } else {
            known[i].done = Some(owner);
            marks.push((ring.open, i));
        }
    }
    // The sealed generations that keep their tables, newest first: the first done
    // mark found is the one that counts (there is one at most: a mark lands only
    // where no exact table holds the ID), and every one found is deleted.
    let exact_from = ring.floor.max(ring.oldest);
    for g in ring
        .sealed
        .iter()
        .rev()
        .filter(|g| g.generation >= exact_from)
    {
        let rows = ctx
            .query(
                client,
                &format!(
                    "SELECT id, owner FROM {} WHERE id = ANY($1) AND NOT claim
                      ORDER BY id FOR UPDATE",
                    table(s, ns.id, g.generation)
                ),
                &[(&ids, Type::BYTEA_ARRAY)],
            )
            .await?;
        for r in &rows {
            let i = at(r.get(0));
            if known[i].done.is_none() {
                known[i].done = Some(
                    r.get::<_, Option<i64>>(1)
                        .map(|o| OwnerFp::from_u64(o as u64)),
                );
            }
            marks.push((g.generation, i));
        }
    }
    // What the Bloom-only generations say (a forget has nothing to delete there).
    let bloom_only: Vec<_> = ring
        .sealed
        .iter()
        .filter(|g| g.generation >= ring.oldest && g.generation < exact_from)
        .collect();
    if !bloom_only.is_empty() {
        for (i, id) in ids.iter().enumerate() {
            let h = ns.seed.hash(id);
            known[i].bloom_only = bloom_only
                .iter()
                .any(|g| g.filter.as_ref().is_none_or(|f| f.contains_hash(h)));
        }
    }
    let forgotten: Vec<bool> = known
        .iter()
        .map(|k| match decide(Ask::Forget, *k, now) {
            Decision::DeleteMark => true,
            Decision::Nothing => false,
            other => unreachable!("a forget decided {other:?}"),
        })
        .collect();
    // The marks to delete, per generation, in the order their rows were locked
    // (every row is held already: the deletes wait for nobody).
    let mut by_generation: Vec<(i64, Vec<&[u8]>)> = Vec::new();
    for (generation, i) in marks.into_iter().filter(|&(_, i)| forgotten[i]) {
        match by_generation.last_mut() {
            Some((g, gone)) if *g == generation => gone.push(ids[i]),
            _ => by_generation.push((generation, vec![ids[i]])),
        }
    }
    for (generation, gone) in &by_generation {
        ctx.query(
            client,
            &format!(
                "DELETE FROM {} WHERE id = ANY($1) AND NOT claim",
                table(s, ns.id, *generation)
            ),
            &[(gone, Type::BYTEA_ARRAY)],
        )
        .await?;
        // Its filter, if built, may hold the IDs: taken away, to be built again
        // from the table (see the module docs). Generations in descending order,
        // here as in `oncely.forget`, so that forgets never wait for each other
        // in a circle.
        let n = gone.len() as i64;
        ctx.query(
            client,
            &format!(
                "UPDATE {s}.generations SET forgets = forgets + $3, filter = NULL
                  WHERE ns = $1 AND gen = $2"
            ),
            &[
                (&ns.id, Type::INT4),
                (generation, Type::INT8),
                (&n, Type::INT8),
            ],
        )
        .await?;
    }
    Ok(Forgot::Done {
        forgotten,
        sealed: by_generation.iter().any(|(g, _)| *g != ring.open),
    })
}
