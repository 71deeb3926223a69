//! Operations on one ID on PostgreSQL (claims, completions, releases, and the mark
//! of a transaction), inside a transaction: decided by `decide` from everything
//! known of the ID with its open-generation row locked, then written.
//!
//! A claim is a row in `claims` (owner, lease end, lease) and a placeholder row in the
//! open generation's table. The placeholder is what makes a claim and a mark of the
//! same ID exclusive across nodes: both meet in the open generation's unique key.
//! It is not a mark: filters are built from done rows only, counts count done rows
//! only, and a rotation carries every placeholder into the new open generation, so
//! a claim never depends on the generation it started in.

use std::sync::Arc;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::ring::{NsCache, Ring, RingRow, RowRead, ring_row};
use super::schema::table;
use super::{Ctx, owner_param};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::generation::SealReason;
use crate::tracker::ClaimOutcome;
use crate::tracker::decide::{Ask, ClaimState, Decision, Known, decide};

/// A decision about one ID inside a transaction, with what writing it needs.
#[derive(Debug)]
pub(crate) enum One {
    /// The open generation must seal first (nothing written).
    RotateFirst(SealReason),
    /// The ring this node holds is not the namespace's (it was deleted and created
    /// again): look the namespace up again (nothing written).
    Stale,
    Decided(Decided),
}

#[derive(Debug)]
pub(crate) struct Decided {
    pub(crate) decision: Decision,
    pub(crate) ask: Ask,
    open: i64,
    /// Whether the ID has a row in the open generation (locked by this transaction).
    row: bool,
}

impl Decided {
    /// Whether the decision must be written.
    pub(crate) const fn writes(&self) -> bool {
        matches!(
            self.decision,
            Decision::MarkDone { .. } | Decision::PutClaim(_) | Decision::DeleteClaim
        )
    }
}

/// How a write went.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Written,
    /// Another transaction inserted the ID's row between the read and the write:
    /// decide again, in a new transaction.
    Raced,
}

/// Takes the namespace's lock for this transaction.
pub(crate) async fn lock<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    exclusive: bool,
) -> Result<(), Error> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock($1, $2)"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1, $2)"
    };
    ctx.query(
        client,
        sql,
        &[(&ctx.lock_key, Type::INT4), (&ns, Type::INT4)],
    )
    .await?;
    Ok(())
}

/// Why the open generation must seal now, if it must: as many IDs marked as it
/// seals at (`ring_policy::seal_limit`: the capacity, the open generation having
/// no filter here), or `generation_span` passed (on the database's clock).
pub(crate) fn due(config: &crate::config::NamespaceConfig, row: &RingRow) -> Option<SealReason> {
    let (_, span) = super::schema::limits(config);
    let seal_at = crate::ring_policy::seal_limit(
        config.generation_capacity(),
        None,
        config.generation_fp_rate(),
    );
    if u64::try_from(row.open_ids).unwrap_or(0) >= seal_at {
        Some(SealReason::Capacity)
    } else if row.now.saturating_sub(row.open_opened_at) >= span {
        Some(SealReason::Span)
    } else {
        None
    }
}

/// Whose transaction a single-ID operation runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The tracker's own, from its pool, at READ COMMITTED: it rotates a due
    /// generation first, unless that rotation was just deferred (then, like a
    /// caller's, it refuses to mark into a full generation).
    Pool { may_rotate: bool },
    /// The caller's, at any isolation level: it never rotates (the caller's
    /// transaction would hold the rotation up), and reads the ring row guarded.
    Theirs,
}

/// What a call finds once it holds its namespace's shared lock: the ring as of
/// its transaction, and whether it may seal a due generation.
pub(crate) struct Locked {
    pub(crate) ring: Arc<Ring>,
    pub(crate) row: RingRow,
    pub(crate) may_rotate: bool,
}

/// Takes the namespace's shared lock in `client`'s transaction and reads its
/// ring row (guarded in a caller's transaction), with this node's ring, read
/// again where the row is newer. `None` when the ring cannot be had as of the row
/// (the namespace was deleted and created again, or, in a caller's transaction at
/// READ COMMITTED, the ring read from another snapshot than the row): decide
/// afresh.
pub(crate) async fn lock_ring<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    pg: &super::Pg,
    ns: &NsCache,
    caller: Caller,
) -> Result<Option<Locked>, Error> {
    let (may_rotate, how) = match caller {
        Caller::Pool { may_rotate } => (may_rotate, RowRead::Current),
        Caller::Theirs => (false, RowRead::Guarded),
    };
    lock(client, ctx, ns.id, false).await?;
    let row = ring_row(client, ctx, ns, how).await?;
    let mut ring = ns.ring();
    if ring.version != row.version {
        let read = pg.load(client, ctx, &ns.name).await?;
        if read.id != ns.id {
            return Ok(None);
        }
        ring = read.ring();
        if ring.version != row.version {
            return Ok(None);
        }
    }
    Ok(Some(Locked {
        ring,
        row,
        may_rotate,
    }))
}

/// Decides `ask` (given the transaction's time and the namespace) for one ID. In
/// the pool's transactions a due generation answers [`One::RotateFirst`]; in a
/// caller's, a completion or mark into a full one is refused ([`Error::Busy`]).
pub(crate) async fn decide_one<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    pg: &super::Pg,
    ns: &NsCache,
    id: &[u8],
    ask: impl Fn(Timestamp, &NsCache) -> Result<Ask, Error>,
    caller: Caller,
) -> Result<One, Error> {
    let Some(Locked {
        ring,
        row,
        may_rotate,
    }) = lock_ring(client, ctx, pg, ns, caller).await?
    else {
        return Ok(One::Stale);
    };
    let now = Timestamp::from_millis(row.now.max(0) as u64);
    let ask = ask(now, ns)?;
    let marks = matches!(ask, Ask::Mark(_) | Ask::Complete(_));
    if let Some(reason) = due(&ring.config, &row) {
        if may_rotate {
            return Ok(One::RotateFirst(reason));
        }
        if marks && reason == SealReason::Capacity {
            return Err(full(ns));
        }
    }
    let h = ns.seed.hash(id);
    let mut done: Option<Option<OwnerFp>> = None;
    let mut bloom_only = false;
    // Newest first: the first done mark found is the one that counts.
    for g in ring
        .sealed
        .iter()
        .rev()
        .filter(|g| g.generation >= ring.oldest)
    {
        let hit = g.filter.as_ref().is_none_or(|f| f.contains_hash(h));
        if !hit {
            continue;
        }
        if g.generation < ring.floor {
            bloom_only = true;
            continue;
        }
        let found = ctx
            .query(
                client,
                &format!(
                    "SELECT owner FROM {} WHERE id = $1 AND NOT claim",
                    table(ctx.schema, ns.id, g.generation)
                ),
                &[(&id, Type::BYTEA)],
            )
            .await?;
        if let Some(r) = found.first() {
            done = Some(
                r.get::<_, Option<i64>>(0)
                    .map(|o| OwnerFp::from_u64(o as u64)),
            );
            break;
        }
    }
    let open_row = open_row(client, ctx, ns.id, ring.open, id).await?;
    let known = match open_row {
        Some(r) if r.claim => Known {
            claim: r.owner.map(|owner| ClaimState {
                owner,
                until: Timestamp::from_millis(r.until.unwrap_or(0).max(0) as u64),
            }),
            done,
            bloom_only,
        },
        Some(r) => Known {
            claim: None,
            done: Some(r.owner),
            bloom_only,
        },
        None => Known {
            claim: None,
            done,
            bloom_only,
        },
    };
    Ok(One::Decided(Decided {
        decision: decide(ask, known, now),
        ask,
        open: ring.open,
        row: open_row.is_some(),
    }))
}

/// The namespace's open generation is full and this call may not rotate it.
pub(crate) fn full(ns: &NsCache) -> Error {
    Error::Busy(format!(
        "namespace {}'s open generation holds its generation_capacity and must rotate \
         before it takes more IDs (a tracker's tick does, every second in the daemon); \
         nothing was marked: retry shortly",
        ns.name
    ))
}

/// A row of the open generation, with its claim's lease end where it is one.
#[derive(Clone, Copy, Debug)]
struct OpenRow {
    owner: Option<OwnerFp>,
    claim: bool,
    until: Option<i64>,
}

/// The ID's row in the open generation, locked.
async fn open_row<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    open: i64,
    id: &[u8],
) -> Result<Option<OpenRow>, Error> {
    let s = ctx.schema;
    let rows = ctx
        .query(
            client,
            &format!(
                "SELECT m.owner, m.claim, c.until_ms
                   FROM {} m
                   LEFT JOIN {s}.claims c ON c.ns = $1 AND c.id = m.id
                  WHERE m.id = $2 FOR UPDATE OF m",
                table(s, ns, open)
            ),
            &[(&ns, Type::INT4), (&id, Type::BYTEA)],
        )
        .await?;
    Ok(rows.first().map(|r| OpenRow {
        owner: r
            .get::<_, Option<i64>>(0)
            .map(|o| OwnerFp::from_u64(o as u64)),
        claim: r.get(1),
        until: r.get(2),
    }))
}

/// Writes a decision that needs it.
pub(crate) async fn apply<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    id: &[u8],
    d: &Decided,
) -> Result<Applied, Error> {
    let s = ctx.schema;
    let open = table(s, ns.id, d.open);
    match (&d.decision, d.ask) {
        (Decision::MarkDone { .. }, ask) => {
            let owner = match ask {
                Ask::Mark(owner) => owner,
                Ask::Complete(me) => Some(me),
                other => unreachable!("{other:?} marks nothing"),
            };
            if d.row {
                // The ID's claim placeholder becomes its mark.
                ctx.query(
                    client,
                    &format!("UPDATE {open} SET claim = false, owner = $2 WHERE id = $1"),
                    &[(&id, Type::BYTEA), (&owner_param(owner), Type::INT8)],
                )
                .await?;
                delete_claim(client, ctx, ns.id, id).await?;
            } else if !insert_row(client, ctx, &open, id, owner_param(owner), false).await? {
                return Ok(Applied::Raced);
            }
            count(client, ctx, ns.id, d.open).await?;
        }
        (
            Decision::PutClaim(ClaimOutcome::Acquired { until, .. }),
            Ask::Claim { owner, lease, .. },
        ) => {
            let owner = owner.to_u64() as i64;
            if d.row {
                ctx.query(
                    client,
                    &format!("UPDATE {open} SET owner = $2 WHERE id = $1 AND claim"),
                    &[(&id, Type::BYTEA), (&owner, Type::INT8)],
                )
                .await?;
            } else if !insert_row(client, ctx, &open, id, Some(owner), true).await? {
                return Ok(Applied::Raced);
            }
            let until = i64::try_from(until.as_millis()).unwrap_or(i64::MAX);
            let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            ctx.query(
                client,
                &format!(
                    "INSERT INTO {s}.claims (ns, id, owner, until_ms, lease_ms)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (ns, id) DO UPDATE
                        SET owner = excluded.owner, until_ms = excluded.until_ms,
                            lease_ms = excluded.lease_ms"
                ),
                &[
                    (&ns.id, Type::INT4),
                    (&id, Type::BYTEA),
                    (&owner, Type::INT8),
                    (&until, Type::INT8),
                    (&lease, Type::INT8),
                ],
            )
            .await?;
        }
        (Decision::DeleteClaim, _) => {
            ctx.query(
                client,
                &format!("DELETE FROM {open} WHERE id = $1 AND claim"),
                &[(&id, Type::BYTEA)],
            )
            .await?;
            delete_claim(client, ctx, ns.id, id).await?;
        }
        (other, ask) => unreachable!("{ask:?} decided {other:?}, which writes nothing"),
    }
    Ok(Applied::Written)
}

/// Inserts the ID's row into the open generation's table: a done mark, or with
/// `claim` a claim's placeholder. False when another transaction's row holds the
/// ID: a race lost, the attempt to start over.
async fn insert_row<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    open: &str,
    id: &[u8],
    owner: Option<i64>,
    claim: bool,
) -> Result<bool, Error> {
    let inserted = ctx
        .query(
            client,
            &format!(
                "INSERT INTO {open} (id, owner, claim) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING true"
            ),
            &[
                (&id, Type::BYTEA),
                (&owner, Type::INT8),
                (&claim, Type::BOOL),
            ],
        )
        .await?;
    Ok(!inserted.is_empty())
}

/// Adds one new ID to the open generation's count, on the session's shard (see
/// `mark_ids` for why last, and why per session).
async fn count<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    generation: i64,
) -> Result<(), Error> {
    ctx.query(
        client,
        &format!(
            "INSERT INTO {}.counts AS c (ns, gen, shard, n) VALUES ($1, $2, pg_backend_pid() % 64, 1)
                 ON CONFLICT (ns, gen, shard) DO UPDATE SET n = c.n + 1",
            ctx.schema
        ),
        &[(&ns, Type::INT4), (&generation, Type::INT8)],
    )
    .await?;
    Ok(())
}

/// Forgets the ID's claim (its placeholder is the caller's to change).
async fn delete_claim<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    id: &[u8],
) -> Result<(), Error> {
    ctx.query(
        client,
        &format!(
            "DELETE FROM {}.claims WHERE ns = $1 AND id = $2",
            ctx.schema
        ),
        &[(&ns, Type::INT4), (&id, Type::BYTEA)],
    )
    .await?;
    Ok(())
}
