//! Operations on one ID on PostgreSQL (claims, completions, releases, and the mark
//! of a transaction), inside a transaction: decided from everything known of the ID
//! with its open-generation row locked, then written.
//!
//! A claim is a row in `claims` (owner, lease end, lease) and a placeholder row in the
//! open generation's partition of `marks`. The placeholder is what makes a claim and a
//! mark of the same ID exclusive across nodes: both meet in the open generation's
//! unique index. It is not a mark: filters are built from done rows only, counts count
//! done rows only, and a rotation carries every placeholder into the new open
//! generation, so a claim never depends on the generation it started in.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::mark::{NsLock, OpenRow, begin, count, due, open_rows, sealed_state};
use super::ring::NsCache;
use super::{Ctx, owner_param};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::generation::SealReason;
use crate::tracker::ClaimOutcome;
use crate::tracker::decide::{Ask, Decision, decide};

/// A decision about one ID inside a transaction, with what writing it needs.
#[derive(Debug)]
pub(crate) enum One {
    /// The open generation must seal first (nothing written).
    RotateFirst(SealReason),
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

/// Decides `ask` (given the transaction's time) for one ID.
pub(crate) async fn decide_one<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    id: &[u8],
    ask: impl Fn(Timestamp) -> Ask,
    may_rotate: bool,
) -> Result<One, Error> {
    let (row, ring) = begin(client, ctx, ns, NsLock::Shared).await?;
    if may_rotate && let Some(reason) = due(&ring, &row) {
        return Ok(One::RotateFirst(reason));
    }
    let now = Timestamp::from_millis(row.now.max(0) as u64);
    let h = ns.seed.hash(id);
    let (done, bloom_only) = sealed_state(client, ctx, ns, &ring, &[id], &[h]).await?;
    let rows = open_rows(client, ctx, ns.id, ring.open, &[id], true).await?;
    let open_row = rows.get(id).copied();
    let known = OpenRow::known(open_row, done[0], bloom_only[0]);
    let ask = ask(now);
    Ok(One::Decided(Decided {
        decision: decide(ask, known, now),
        ask,
        open: ring.open,
        row: open_row.is_some(),
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
                    &format!(
                        "UPDATE {s}.marks SET claim = false, owner = $4
                          WHERE ns = $1 AND gen = $2 AND id = $3"
                    ),
                    &[
                        (&ns.id, Type::INT4),
                        (&d.open, Type::INT8),
                        (&id, Type::BYTEA),
                        (&owner_param(owner), Type::INT8),
                    ],
                )
                .await?;
                delete_claim(client, ctx, ns.id, id).await?;
            } else {
                if !insert_row(client, ctx, ns.id, d.open, id, owner_param(owner), false).await? {
                    return Ok(Applied::Raced);
                }
            }
            count(client, ctx, ns.id, d.open, 1).await?;
        }
        (
            Decision::PutClaim(ClaimOutcome::Acquired { until, .. }),
            Ask::Claim { owner, lease, .. },
        ) => {
            let owner = owner.to_u64() as i64;
            if d.row {
                ctx.query(
                    client,
                    &format!(
                        "UPDATE {s}.marks SET owner = $4
                          WHERE ns = $1 AND gen = $2 AND id = $3 AND claim"
                    ),
                    &[
                        (&ns.id, Type::INT4),
                        (&d.open, Type::INT8),
                        (&id, Type::BYTEA),
                        (&owner, Type::INT8),
                    ],
                )
                .await?;
            } else {
                if !insert_row(client, ctx, ns.id, d.open, id, Some(owner), true).await? {
                    return Ok(Applied::Raced);
                }
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
                &format!("DELETE FROM {s}.marks WHERE ns = $1 AND gen = $2 AND id = $3 AND claim"),
                &[
                    (&ns.id, Type::INT4),
                    (&d.open, Type::INT8),
                    (&id, Type::BYTEA),
                ],
            )
            .await?;
            delete_claim(client, ctx, ns.id, id).await?;
        }
        (other, ask) => unreachable!("{ask:?} decided {other:?}, which writes nothing"),
    }
    Ok(Applied::Written)
}

/// Inserts the ID's row into the open generation: a done mark, or with `claim` a
/// claim's placeholder. False when another transaction's row holds the ID: a race
/// lost, the attempt to start over.
async fn insert_row<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    open: i64,
    id: &[u8],
    owner: Option<i64>,
    claim: bool,
) -> Result<bool, Error> {
    let inserted = ctx
        .query(
            client,
            &format!(
                "INSERT INTO {}.marks (ns, gen, id, owner, claim) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING RETURNING true",
                ctx.schema
            ),
            &[
                (&ns, Type::INT4),
                (&open, Type::INT8),
                (&id, Type::BYTEA),
                (&owner, Type::INT8),
                (&claim, Type::BOOL),
            ],
        )
        .await?;
    Ok(!inserted.is_empty())
}

/// Forgets the ID's claim (its placeholder in `marks` is the caller's to change).
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
