//! Batched check and check-and-mark on PostgreSQL, inside a transaction: the
//! tracker's own, or the caller's.
//!
//! The SQL, in order (`$ns` the namespace id, `$s` the schema):
//!
//! 1. `SELECT pg_advisory_xact_lock_shared(<schema key>, $ns)`: rotation takes the
//!    exclusive lock, so the ring cannot change under the call.
//! 2. The ring row (version, open generation, its age and count, the database's
//!    clock); a changed version refreshes the node's cache of sealed filters.
//! 3. Sealed generations: each filter is probed in memory. A hit in a generation
//!    that keeps its exact table is looked up, one statement per generation:
//!    `SELECT id, owner FROM $s.marks WHERE ns = $ns AND gen = $g AND id = ANY($ids)
//!    AND NOT claim`. A hit in a Bloom-only generation can only say "probably".
//!    (A sealed generation whose filter is not built yet is looked up for every ID.)
//! 4. The open generation decides the rest by its unique key:
//!    `WITH ins AS (INSERT INTO $s.marks (ns, gen, id, owner) SELECT $ns, $open,
//!    unnest($ids), $owner ON CONFLICT DO NOTHING RETURNING id) SELECT x FROM
//!    unnest($ids) x EXCEPT SELECT id FROM ins`. Every ID not returned is new (only
//!    the conflicts travel back: a batch of new IDs answers no rows); for the returned
//!    ones the conflicting row says why (a done mark, or a claim's placeholder):
//!    `SELECT m.id, m.owner, m.claim, c.until_ms FROM $s.marks m LEFT JOIN $s.claims c
//!    ... FOR UPDATE OF m`.
//! 5. `INSERT INTO $s.counts ... ON CONFLICT DO UPDATE SET n = counts.n + excluded.n`
//!    on the session's shard, last: a transaction holds its shard's row from then
//!    until it commits, and waits for no other lock meanwhile, so the row is never
//!    one link of a deadlock. (Counted inside step 4's statement it was: a batch
//!    holding the row, waiting for a claim's placeholder, whose completion waited for
//!    the row.)
//!
//! The statements of a mark are prepared once per pooled connection, and sent with
//! their parameters' types on a caller's ([`Ctx::query`]): one round trip each.
//!
//! Among any number of callers on any number of nodes, one `INSERT` wins each ID:
//! exactly one `new`. A rollback forgets the marks with the caller's other writes.

use std::collections::HashMap;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::ring::{NsCache, Ring, RingRow, refresh, ring_row};
use super::{Ctx, owner_param};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::generation::SealReason;
use crate::hash::IdHash;
use crate::id::EventId;
use crate::tracker::decide::{Ask, ClaimState, Decision, Known, decide};
use crate::verdict::Verdict;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    Check,
    Mark(Option<OwnerFp>),
}

/// How a call went: decided, or the open generation must seal first.
#[derive(Debug)]
pub(crate) enum Marked {
    Decided(Vec<Verdict>),
    RotateFirst(SealReason),
}

/// How a transaction holds its namespace's advisory lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NsLock {
    /// Marks, claims and checks: any number at once, never during a rotation.
    Shared,
    /// Rotations and reconfigurations: alone, on every node.
    Exclusive,
}

/// Takes the namespace's lock for this transaction.
pub(crate) async fn lock<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    mode: NsLock,
) -> Result<(), Error> {
    let sql = match mode {
        NsLock::Shared => "SELECT pg_advisory_xact_lock_shared($1, $2)",
        NsLock::Exclusive => "SELECT pg_advisory_xact_lock($1, $2)",
    };
    ctx.query(
        client,
        sql,
        &[(&ctx.lock_key, Type::INT4), (&ns, Type::INT4)],
    )
    .await?;
    Ok(())
}

/// Why the open generation must seal now, if it must: `capacity` IDs marked, or
/// `generation_span` passed (on the database's clock).
pub(crate) fn due(ring: &Ring, row: &RingRow) -> Option<SealReason> {
    let config = &ring.config;
    let capacity = i64::try_from(config.generation_capacity()).unwrap_or(i64::MAX);
    let span = i64::try_from(config.generation_span().as_millis()).unwrap_or(i64::MAX);
    if row.open_ids >= capacity {
        Some(SealReason::Capacity)
    } else if row.now.saturating_sub(row.open_opened_at) >= span {
        Some(SealReason::Span)
    } else {
        None
    }
}

/// The ring, current for this transaction: locked, read, cached.
pub(crate) async fn begin<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    mode: NsLock,
) -> Result<(RingRow, std::sync::Arc<Ring>), Error> {
    // One after the other, never pipelined: the row must be read once the lock is
    // held. Sent together, the two statements ran in the order their futures happened
    // to be polled, and a row read before the lock let a mark land in a generation a
    // rotation had just sealed (two `new`s for one ID in
    // `two_trackers_on_one_database_are_one_authority`, about one run in five).
    lock(client, ctx, ns.id, mode).await?;
    let row = ring_row(client, ctx, ns).await?;
    let ring = refresh(client, ctx, ns, &row).await?;
    Ok((row, ring))
}

/// Per ID: the owner of its newest done mark in a sealed generation with an exact
/// table (`Some(None)`: no owner), and whether a Bloom-only filter holds it.
pub(crate) async fn sealed_state<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    ring: &Ring,
    ids: &[&[u8]],
    hashes: &[IdHash],
) -> Result<(Vec<Option<Option<OwnerFp>>>, Vec<bool>), Error> {
    let n = ids.len();
    let mut done: Vec<Option<Option<OwnerFp>>> = vec![None; n];
    let mut bloom_only = vec![false; n];
    // Newest first: the first done mark found is the one that counts.
    for g in ring.sealed.iter().rev() {
        if g.generation < ring.oldest {
            continue;
        }
        let exact = g.generation >= ring.floor;
        let hits: Vec<usize> = match &g.filter {
            Some(f) => {
                let hit = f.contains_batch(hashes);
                (0..n).filter(|&i| hit[i]).collect()
            }
            // Not built yet: the generation is exact (the floor waits for its
            // filter), and every ID must be looked up.
            None => (0..n).collect(),
        };
        if !exact {
            for i in hits {
                bloom_only[i] = true;
            }
            continue;
        }
        let wanted: Vec<usize> = hits.into_iter().filter(|&i| done[i].is_none()).collect();
        if wanted.is_empty() {
            continue;
        }
        let keys: Vec<&[u8]> = wanted.iter().map(|&i| ids[i]).collect();
        let rows = ctx
            .query(
                client,
                &format!(
                    "SELECT id, owner FROM {}.marks
                      WHERE ns = $1 AND gen = $2 AND id = ANY($3) AND NOT claim",
                    ctx.schema
                ),
                &[
                    (&ns.id, Type::INT4),
                    (&g.generation, Type::INT8),
                    (&keys, Type::BYTEA_ARRAY),
                ],
            )
            .await?;
        let found: HashMap<Vec<u8>, Option<i64>> = rows
            .iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Option<i64>>(1)))
            .collect();
        for i in wanted {
            if let Some(owner) = found.get(ids[i]) {
                done[i] = Some(owner.map(|o| OwnerFp::from_u64(o as u64)));
            }
        }
    }
    Ok((done, bloom_only))
}

/// A row of the open generation, with its claim's lease end where it is one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenRow {
    pub(crate) owner: Option<OwnerFp>,
    pub(crate) claim: bool,
    pub(crate) until: Option<i64>,
}

impl OpenRow {
    /// What the row says, beside what the sealed generations said.
    pub(crate) fn known(
        row: Option<Self>,
        done: Option<Option<OwnerFp>>,
        bloom_only: bool,
    ) -> Known {
        match row {
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
        }
    }
}

/// Rows of the open generation for `keys`, locked when `lock`.
pub(crate) async fn open_rows<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    open: i64,
    keys: &[&[u8]],
    lock: bool,
) -> Result<HashMap<Vec<u8>, OpenRow>, Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let s = ctx.schema;
    let rows = ctx
        .query(
            client,
            &format!(
                "SELECT m.id, m.owner, m.claim, c.until_ms
                   FROM {s}.marks m
                   LEFT JOIN {s}.claims c ON c.ns = m.ns AND c.id = m.id
                  WHERE m.ns = $1 AND m.gen = $2 AND m.id = ANY($3){}",
                // Locked in key order, as the inserts are.
                if lock {
                    " ORDER BY m.id FOR UPDATE OF m"
                } else {
                    ""
                }
            ),
            &[
                (&ns, Type::INT4),
                (&open, Type::INT8),
                (&keys, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, Vec<u8>>(0),
                OpenRow {
                    owner: r
                        .get::<_, Option<i64>>(1)
                        .map(|o| OwnerFp::from_u64(o as u64)),
                    claim: r.get(2),
                    until: r.get(3),
                },
            )
        })
        .collect())
}

/// The count shard a transaction adds to: its session's, so that concurrent marks
/// (every one holds its shard's row until it commits) never queue on one row unless
/// their sessions' process IDs meet modulo 64. Pooled sessions start one after
/// another, so their process IDs mostly follow each other. (A shard per thread, 8 of
/// them, left one single-ID mark in ten waiting on another's row: `Lock:transactionid`
/// in `pg_stat_activity`.)
const SHARD: &str = "pg_backend_pid() % 64";

/// Adds `n` new IDs to the open generation's count, on the session's shard.
pub(crate) async fn count<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    generation: i64,
    n: i64,
) -> Result<(), Error> {
    if n == 0 {
        return Ok(());
    }
    ctx.query(
        client,
        &format!(
            "INSERT INTO {}.counts (ns, gen, shard, n) VALUES ($1, $2, {SHARD}, $3)
                 ON CONFLICT (ns, gen, shard) DO UPDATE SET n = counts.n + excluded.n",
            ctx.schema
        ),
        &[
            (&ns, Type::INT4),
            (&generation, Type::INT8),
            (&n, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

/// Inserts `keys` (sorted) into the open generation; answers the keys it did not take
/// (another row holds them).
async fn insert_new<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    open: i64,
    owner: Option<OwnerFp>,
    keys: &[&[u8]],
) -> Result<std::collections::HashSet<Vec<u8>>, Error> {
    let s = ctx.schema;
    let rows = ctx
        .query(
            client,
            &format!(
                "WITH ins AS (
                     INSERT INTO {s}.marks (ns, gen, id, owner)
                     SELECT $1, $2, x, $3 FROM unnest($4::bytea[]) AS x
                     ON CONFLICT DO NOTHING RETURNING id
                 )
                 SELECT x FROM unnest($4::bytea[]) AS x EXCEPT SELECT id FROM ins"
            ),
            &[
                (&ns, Type::INT4),
                (&open, Type::INT8),
                (&owner_param(owner), Type::INT8),
                (&keys, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
}

/// Checks, or checks and marks, a batch (see the module docs). With `may_rotate`,
/// a call that finds the open generation due answers [`Marked::RotateFirst`] before
/// writing anything.
pub(crate) async fn run<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    ids: &[EventId<'_>],
    mode: Mode,
    may_rotate: bool,
) -> Result<Marked, Error> {
    let (row, ring) = begin(client, ctx, ns, NsLock::Shared).await?;
    if may_rotate && let Some(reason) = due(&ring, &row) {
        return Ok(Marked::RotateFirst(reason));
    }
    let now = Timestamp::from_millis(row.now.max(0) as u64);
    let bytes: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
    let hashes: Vec<IdHash> = bytes.iter().map(|b| ns.seed.hash(b)).collect();
    let (done, bloom_only) = sealed_state(client, ctx, ns, &ring, &bytes, &hashes).await?;
    let n = ids.len();
    // The first occurrence of each ID decides; repeats follow it.
    let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(n);
    let unique: Vec<usize> = (0..n)
        .filter(|&i| *first.entry(bytes[i]).or_insert(i) == i)
        .collect();
    let mut verdicts: Vec<Option<Verdict>> = vec![None; n];

    match mode {
        Mode::Check => {
            let open_keys: Vec<&[u8]> = unique
                .iter()
                .filter(|&&i| done[i].is_none())
                .map(|&i| bytes[i])
                .collect();
            let rows = open_rows(client, ctx, ns.id, ring.open, &open_keys, false).await?;
            for &i in &unique {
                let known = OpenRow::known(rows.get(bytes[i]).copied(), done[i], bloom_only[i]);
                verdicts[i] = Some(expect_verdict(decide(Ask::Check, known, now)));
            }
        }
        Mode::Mark(owner) => {
            // Decided by the sealed generations alone.
            let mut candidates: Vec<usize> = Vec::new();
            let mut probe: Vec<usize> = Vec::new();
            for &i in &unique {
                if done[i].is_some() {
                    verdicts[i] = Some(expect_verdict(decide(
                        Ask::Mark(owner),
                        OpenRow::known(None, done[i], bloom_only[i]),
                        now,
                    )));
                } else if bloom_only[i] {
                    probe.push(i);
                } else {
                    candidates.push(i);
                }
            }
            // In key order: concurrent inserts of overlapping batches then wait for
            // one another in one order, never in a cycle (a deadlock).
            let mut keys: Vec<&[u8]> = candidates.iter().map(|&i| bytes[i]).collect();
            keys.sort_unstable();
            let conflicted = if keys.is_empty() {
                std::collections::HashSet::new()
            } else {
                insert_new(client, ctx, ns.id, ring.open, owner, &keys).await?
            };
            let mut fresh = 0_i64;
            for &i in &candidates {
                if conflicted.contains(bytes[i]) {
                    probe.push(i);
                } else {
                    verdicts[i] = Some(Verdict::New);
                    fresh += 1;
                }
            }
            // The rest met a row in the open generation (or a Bloom-only filter):
            // what that row is decides.
            let mut probe_keys: Vec<&[u8]> = probe.iter().map(|&i| bytes[i]).collect();
            probe_keys.sort_unstable();
            let rows = open_rows(client, ctx, ns.id, ring.open, &probe_keys, true).await?;
            let mut completes: Vec<&[u8]> = Vec::new();
            for &i in &probe {
                let known = OpenRow::known(rows.get(bytes[i]).copied(), done[i], bloom_only[i]);
                match decide(Ask::Mark(owner), known, now) {
                    Decision::Verdict(v) => verdicts[i] = Some(v),
                    Decision::MarkDone { .. } if rows.contains_key(bytes[i]) => {
                        // A claim's placeholder turns into the mark.
                        completes.push(bytes[i]);
                        verdicts[i] = Some(Verdict::New);
                    }
                    Decision::MarkDone { .. } => {
                        // Gone between the insert and the read: a claim released
                        // meanwhile. Marked on the next attempt; answer as the
                        // caller can retry.
                        return Err(Error::Conflict(
                            "the ID changed state while being marked; retry".into(),
                        ));
                    }
                    other => unreachable!("a mark decided {other:?}"),
                }
            }
            if !completes.is_empty() {
                let s = ctx.schema;
                client
                    .execute(
                        &format!(
                            "UPDATE {s}.marks SET claim = false, owner = $3
                              WHERE ns = $1 AND gen = $2 AND id = ANY($4)"
                        ),
                        &[&ns.id, &ring.open, &owner_param(owner), &completes],
                    )
                    .await?;
                client
                    .execute(
                        &format!("DELETE FROM {s}.claims WHERE ns = $1 AND id = ANY($2)"),
                        &[&ns.id, &completes],
                    )
                    .await?;
                fresh += completes.len() as i64;
            }
            count(client, ctx, ns.id, ring.open, fresh).await?;
        }
    }
    // Repeats within the batch follow their first occurrence.
    for i in 0..n {
        if verdicts[i].is_none() {
            let j = first[bytes[i]];
            verdicts[i] = Some(match (verdicts[j], mode) {
                (Some(Verdict::New), Mode::Mark(Some(_))) => Verdict::Replayed,
                (Some(Verdict::New), Mode::Mark(None)) => Verdict::Duplicate,
                (Some(v), _) => v,
                (None, _) => unreachable!("first occurrences are decided first"),
            });
        }
    }
    Ok(Marked::Decided(
        verdicts
            .into_iter()
            .map(|v| v.expect("every ID is decided"))
            .collect(),
    ))
}

fn expect_verdict(d: Decision) -> Verdict {
    match d {
        Decision::Verdict(v) => v,
        other => unreachable!("expected a verdict, decided {other:?}"),
    }
}
