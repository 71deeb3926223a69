//! The tracker's operations on PostgreSQL: each one statement or one transaction
//! (or a few, when a rotation comes first or another node raced for the same ID),
//! retried from the start, never half-applied, all within the call's deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::mark::{self, Answer, Ask as MarkAsk, Distinct, Owners};
use super::ring::NsCache;
use super::rotation::Rotated;
use super::single::{self, Applied, Caller, One};
use super::{Object, Pg, client, lock_timed_out, owner_fp, retryable};
use super::{checkpoint, combine};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::Owner;
use crate::generation::SealReason;
use crate::id::{EventId, NamespaceName};
use crate::tracker::decide::{Ask, Decision};
use crate::tracker::engine::MarkCall;
use crate::tracker::transaction::{UserRead, Writes};
use crate::tracker::{CallVerdicts, ClaimOutcome, Transacted, Transaction};
use crate::verdict::Verdict;

/// How many times an operation starts over (the ring read again, a rotation first,
/// or a race for the same ID with another transaction) before it gives up.
const ATTEMPTS: usize = 8;

/// How long a mark waits for its namespace's rotation when the open generation is
/// full and the rotation cannot run yet (a transaction holds the namespace), before
/// it fails with [`Error::Busy`].
const FULL_WAIT: Duration = Duration::from_secs(1);

impl Pg {
    /// Never answers without the database: a non-blocking call gives up at once,
    /// having marked nothing.
    pub(crate) fn check_and_mark(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let name = NamespaceName::new(namespace)?;
        if nonblocking {
            return Ok(None);
        }
        let owner = owner.map(Owner::as_str);
        let distinct = Distinct::new(ids);
        let decided = if distinct.ids.len() <= combine::MAX_IDS {
            // Small calls of many callers at once share statements (see `combine`).
            self.block_on(self.combined(&name, &distinct.ids, owner))?
        } else {
            let ask = MarkAsk {
                check: false,
                rotate: true,
                checkpoint: None,
            };
            let owners = owner.map_or(Owners::None, Owners::One);
            self.block_on(self.decide(&name, &distinct.ids, owners, ask))?
        };
        Ok(Some(distinct.spread(&decided, false, owner.is_some())))
    }

    /// Each call decided as it would be alone after the ones before it, as the
    /// embedded engine's one write decides them: each validated alone, then in
    /// waves of calls with disjoint IDs that share statements (`combine`'s
    /// [`Pg::in_order`]; no generation seals within a wave, as within one batch).
    pub(crate) fn check_and_mark_each(
        &self,
        namespace: &str,
        calls: &[MarkCall<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<CallVerdicts>>, Error> {
        if nonblocking {
            return Ok(None);
        }
        let _ = self.namespace(namespace)?;
        let name = NamespaceName::new(namespace)?;
        let distinct: Vec<Distinct<'_>> = calls.iter().map(|(ids, _)| Distinct::new(ids)).collect();
        let asked: Vec<Option<combine::Call<'_>>> = calls
            .iter()
            .zip(&distinct)
            .map(|((_, owner), d)| Some((d.ids.clone(), owner.map(Owner::as_str))))
            .collect();
        let decided = self.runtime().block_on(self.in_order(&name, &asked));
        // The store's health as `block_on` records it, call by call in order (the
        // last outcome stands), but for the calls without IDs: they never reached
        // the store.
        for (asked, decided) in asked.iter().zip(&decided) {
            if let (Some((ids, _)), Some(result)) = (asked, decided)
                && !ids.is_empty()
            {
                self.record_write(result);
            }
        }
        Ok(Some(
            calls
                .iter()
                .zip(distinct)
                .zip(decided)
                .map(|(((_, owner), distinct), decided)| {
                    let verdicts = decided.expect("every call is decided")?;
                    Ok(distinct.spread(&verdicts, false, owner.is_some()))
                })
                .collect(),
        ))
    }

    /// As [`check_and_mark`](Self::check_and_mark): a non-blocking call gives up.
    pub(crate) fn check(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let name = NamespaceName::new(namespace)?;
        if nonblocking {
            return Ok(None);
        }
        let ask = MarkAsk {
            check: true,
            rotate: true,
            checkpoint: None,
        };
        let distinct = Distinct::new(ids);
        let decided = self.block_on_read(self.decide(&name, &distinct.ids, Owners::None, ask))?;
        Ok(Some(distinct.spread(&decided, true, false)))
    }

    pub(crate) fn check_and_mark_with_checkpoint(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error> {
        let owner = owner.map(Owner::as_str);
        let name = NamespaceName::new(namespace)?;
        let ask = MarkAsk {
            check: false,
            rotate: true,
            checkpoint: Some((consumer, position)),
        };
        let distinct = Distinct::new(ids);
        let owners = owner.map_or(Owners::None, Owners::One);
        let decided = self.block_on(self.decide(&name, &distinct.ids, owners, ask))?;
        Ok(distinct.spread(&decided, false, owner.is_some()))
    }

    /// A namespace's cache entry, loaded within `deadline` when this node has none.
    pub(crate) async fn ns(
        &self,
        name: &NamespaceName,
        deadline: Instant,
    ) -> Result<std::sync::Arc<NsCache>, Error> {
        if let Some(ns) = self.cached(name.as_str()) {
            return Ok(ns);
        }
        self.reload(name, deadline).await
    }

    /// Reads a namespace's ring again.
    pub(crate) async fn reload(
        &self,
        name: &NamespaceName,
        deadline: Instant,
    ) -> Result<std::sync::Arc<NsCache>, Error> {
        self.session(deadline, async |conn| {
            self.load(client(conn), &self.ctx().on(conn), name).await
        })
        .await
    }

    /// One call of distinct, sorted IDs: one autocommit statement, `mark_ids`,
    /// after whatever the ring needs first (read again, or rotated). A verdict per
    /// ID.
    pub(crate) async fn decide(
        &self,
        name: &NamespaceName,
        ids: &[&[u8]],
        owners: Owners<'_>,
        mut ask: MarkAsk<'_>,
    ) -> Result<Vec<Verdict>, Error> {
        let deadline = self.deadline();
        let mut full_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(10);
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            let mut ns = self.ns(name, deadline).await?;
            if ns.ring().wants_filters() {
                ns = self.reload(name, deadline).await?;
            }
            let ring = ns.ring();
            let answer = self
                .session(deadline, async |conn| {
                    let ctx = self.ctx().on(conn);
                    mark::call(client(conn), &ctx, &ns, &ring, ids, owners, &ask).await
                })
                .await;
            let answer = match answer {
                Err(e) if retryable(&e) => {
                    attempts += 1;
                    continue;
                }
                Err(e) if lock_timed_out(&e) => return Err(held(name)),
                other => other?,
            };
            match answer {
                Answer::Decided(verdicts) => return Ok(verdicts),
                Answer::Stale => {
                    attempts += 1;
                    self.reload(name, deadline).await?;
                }
                Answer::Unknown => {
                    self.uncache(name.as_str());
                    return Err(Error::UnknownNamespace(name.to_string()));
                }
                Answer::Full => {
                    if self
                        .rotate(&ns, Some(SealReason::Capacity), deadline)
                        .await?
                        != Rotated::Deferred
                    {
                        attempts += 1;
                    } else {
                        if ask.check {
                            // A check marks nothing: it may answer from the full
                            // generation.
                            ask.rotate = false;
                            continue;
                        }
                        // The generation stays full until the rotation runs: wait a
                        // little for it, then give up rather than overfill it.
                        let since = *full_since.get_or_insert_with(Instant::now);
                        if since.elapsed() + backoff >= FULL_WAIT
                            || Instant::now() + backoff >= deadline
                        {
                            return Err(single::full(&ns));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                }
                Answer::Due => {
                    attempts += 1;
                    if self.rotate(&ns, Some(SealReason::Span), deadline).await?
                        == Rotated::Deferred
                    {
                        // Past its span is no harm for a while: mark now, rotate
                        // at the next tick.
                        ask.rotate = false;
                    }
                }
            }
        }
        Err(Error::Unavailable(
            "the namespace kept changing under the call; retry".into(),
        ))
    }

    pub(crate) fn claim(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let owner = owner.as_str();
        let name = NamespaceName::new(namespace)?;
        let decision =
            self.block_on(
                self.one(&name, id.as_bytes(), |now: Timestamp, ns: &NsCache| {
                    Ok(Ask::Claim {
                        owner: owner_fp(owner, ns.seed)?,
                        until: now.saturating_add(lease),
                        lease,
                    })
                }),
            )?;
        match decision {
            Decision::Claim(outcome) | Decision::PutClaim(outcome) => Ok(outcome),
            other => unreachable!("a claim decided {other:?}"),
        }
    }

    pub(crate) fn complete(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        let owner = owner.as_str();
        let name = NamespaceName::new(namespace)?;
        settled(
            self.block_on(self.one(&name, id.as_bytes(), |_, ns: &NsCache| {
                Ok(Ask::Complete(owner_fp(owner, ns.seed)?))
            }))?,
        )
    }

    pub(crate) fn release(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        let owner = owner.as_str();
        let name = NamespaceName::new(namespace)?;
        settled(
            self.block_on(self.one(&name, id.as_bytes(), |_, ns: &NsCache| {
                Ok(Ask::Release(owner_fp(owner, ns.seed)?))
            }))?,
        )
    }

    /// One single-ID operation: decided and written in one transaction.
    async fn one(
        &self,
        name: &NamespaceName,
        id: &[u8],
        ask: impl Fn(Timestamp, &NsCache) -> Result<Ask, Error>,
    ) -> Result<Decision, Error> {
        let deadline = self.deadline();
        let mut may_rotate = true;
        for _ in 0..ATTEMPTS {
            let ns = self.ns(name, deadline).await?;
            let step = self
                .session(deadline, async |conn| {
                    let ctx = self.ctx().on(conn);
                    let tx = conn.transaction().await?;
                    let one = single::decide_one(
                        &*tx,
                        &ctx,
                        self,
                        &ns,
                        id,
                        &ask,
                        Caller::Pool { may_rotate },
                    )
                    .await?;
                    Ok(match one {
                        One::RotateFirst(reason) => Step::Rotate(reason),
                        One::Stale => Step::Again,
                        One::Decided(d) if !d.writes() => {
                            tx.commit().await?;
                            Step::Done(d.decision)
                        }
                        One::Decided(d) => match single::apply(&*tx, &ctx, &ns, id, &d).await? {
                            Applied::Written => {
                                tx.commit().await?;
                                Step::Done(d.decision)
                            }
                            Applied::Raced => Step::Again,
                        },
                    })
                })
                .await;
            match step {
                Err(e) if retryable(&e) => {}
                Err(e) if lock_timed_out(&e) => return Err(held(name)),
                Err(Error::UnknownNamespace(n)) => {
                    self.uncache(name.as_str());
                    return Err(Error::UnknownNamespace(n));
                }
                Err(e) => return Err(e),
                Ok(Step::Done(decision)) => return Ok(decision),
                Ok(Step::Again) => {
                    self.reload(name, deadline).await?;
                }
                Ok(Step::Rotate(reason)) => {
                    if self.rotate(&ns, Some(reason), deadline).await? == Rotated::Deferred {
                        may_rotate = false;
                    }
                }
            }
        }
        Err(Error::Unavailable(
            "the ID kept changing under the call; retry".into(),
        ))
    }

    /// A transaction: the mark and the closure's writes commit together, in one
    /// PostgreSQL transaction that holds the ID's row while the closure runs.
    pub(crate) fn transact<T, E, F>(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Option<Owner<'_>>,
        f: F,
    ) -> Result<Transacted<T>, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    {
        let (id, owner) = (id.as_bytes(), owner.map(Owner::as_str));
        let name = NamespaceName::new(namespace)?;
        let mut held = None;
        for _ in 0..ATTEMPTS {
            match self.block_on(self.hold_for_transaction(&name, id, owner))? {
                Hold::Answered(verdict) => return Ok(Transacted::Skipped(verdict)),
                Hold::Again => {}
                Hold::Held(conn, ns) => {
                    held = Some((*conn, ns));
                    break;
                }
            }
        }
        let Some((conn, ns)) = held else {
            return Err(
                Error::Unavailable("the ID kept changing under the call; retry".into()).into(),
            );
        };
        let guard = OpenTransaction {
            pg: self,
            conn: Some(conn),
        };
        let mut tx = Transaction::new(&guard);
        let value = f(&mut tx)?;
        let writes = tx.into_writes();
        guard.commit(ns, &writes)?;
        Ok(Transacted::Applied(value))
    }

    /// Begins a transaction, decides the mark, and when it is new writes it and keeps
    /// the transaction open (the row stays locked by it).
    async fn hold_for_transaction(
        &self,
        name: &NamespaceName,
        id: &[u8],
        owner: Option<&str>,
    ) -> Result<Hold, Error> {
        let deadline = self.deadline();
        let ns = self.ns(name, deadline).await?;
        let mut open = OpenConn(Some(self.conn(deadline).await?));
        let attempt = tokio::time::timeout_at(deadline, async {
            let ctx = self.ctx();
            client(open.get()).batch_execute("BEGIN").await?;
            let mark = |_: Timestamp, ns: &NsCache| {
                Ok(Ask::Mark(owner.map(|o| owner_fp(o, ns.seed)).transpose()?))
            };
            let one = single::decide_one(
                client(open.get()),
                &ctx,
                self,
                &ns,
                id,
                mark,
                Caller::Pool { may_rotate: true },
            )
            .await?;
            Ok(match one {
                One::Decided(d) if d.writes() => {
                    match single::apply(client(open.get()), &ctx, &ns, id, &d).await? {
                        Applied::Written => Attempt::Wrote,
                        Applied::Raced => Attempt::Again,
                    }
                }
                One::Decided(d) => match d.decision {
                    Decision::Verdict(v) => Attempt::Answered(v),
                    other => unreachable!("a mark decided {other:?}"),
                },
                One::RotateFirst(reason) => Attempt::Rotate(reason),
                One::Stale => Attempt::Stale,
            })
        })
        .await;
        let attempt: Result<Attempt, Error> = match attempt {
            Ok(attempt) => attempt,
            Err(_) => {
                if let Some(conn) = open.0.take() {
                    self.abandon(conn);
                }
                return Err(Error::Unavailable(format!(
                    "PostgreSQL did not answer within {} ms (call_timeout)",
                    self.inner.call_timeout.as_millis()
                )));
            }
        };
        if matches!(attempt, Ok(Attempt::Wrote)) {
            return Ok(Hold::Held(Box::new(open.take()), ns.id));
        }
        open.rollback().await;
        match attempt {
            Ok(Attempt::Wrote) => unreachable!("returned above"),
            Ok(Attempt::Answered(v)) => Ok(Hold::Answered(v)),
            Ok(Attempt::Again) => Ok(Hold::Again),
            Ok(Attempt::Stale) => {
                self.reload(name, deadline).await?;
                Ok(Hold::Again)
            }
            Ok(Attempt::Rotate(reason)) => match self.rotate(&ns, Some(reason), deadline).await? {
                Rotated::Deferred if reason == SealReason::Capacity => Err(single::full(&ns)),
                _ => Ok(Hold::Again),
            },
            Err(e) if retryable(&e) => Ok(Hold::Again),
            Err(e) if lock_timed_out(&e) => Err(held(name)),
            Err(Error::UnknownNamespace(n)) => {
                self.uncache(name.as_str());
                Err(Error::UnknownNamespace(n))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.block_on_read(self.session(self.deadline(), async |conn| {
            user_value(client(conn), &self.inner.schema, key).await
        }))
    }

    pub(crate) fn tick(&self) -> Result<(), Error> {
        let names = self.block_on_read(self.session(self.deadline(), async |conn| {
            let rows = conn
                .query(
                    &format!("SELECT name FROM {}.namespaces", self.inner.schema),
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        }))?;
        let mut first_error = None;
        for name in names {
            let Ok(ns) = self.namespace(&name) else {
                continue;
            };
            let result = self.block_on(async {
                if let Some(reason) = self.due_now(&ns).await? {
                    let _ = self.rotate(&ns, Some(reason), self.deadline()).await?;
                } else if Self::behind(&Self::arc_ring(&ns)) {
                    self.catch_up(&ns).await?;
                }
                self.forget_expired_claims(&ns).await
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.block_on(self.cleanup()) {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        let ns = self.namespace(namespace)?;
        let deadline = self.deadline();
        match self.block_on(self.rotate(&ns, None::<SealReason>, deadline))? {
            Rotated::Deferred => Err(Error::Busy(format!(
                "namespace {namespace} is held by a transaction: its rotation could not take \
                 its lock within {} ms; nothing changed, retry",
                super::rotation::ROTATION_LOCK_WAIT.as_millis()
            ))),
            Rotated::Sealed | Rotated::NotDue => Ok(()),
        }
    }
}

/// What one attempt of a single-ID operation came to.
enum Step {
    Done(Decision),
    Rotate(SealReason),
    /// Raced, or the namespace changed: read it again and start over.
    Again,
}

/// Another transaction held what a call needed past `lock_timeout`.
fn held(name: &NamespaceName) -> Error {
    Error::Busy(format!(
        "another transaction held one of these IDs in namespace {name}, or the namespace \
         itself, for over {} ms; nothing was marked: retry",
        super::schema::LOCK_TIMEOUT.as_millis()
    ))
}

enum Hold {
    Answered(Verdict),
    Again,
    Held(Box<Object>, i32),
}

/// How one attempt to hold a transaction's mark went.
enum Attempt {
    Wrote,
    Answered(Verdict),
    Rotate(SealReason),
    Stale,
    Again,
}

/// A pooled connection inside a transaction begun by hand: rolled back, or taken
/// out of the pool, whatever happens, so that no connection goes back to the pool
/// mid-transaction.
struct OpenConn(Option<Object>);

impl OpenConn {
    fn get(&self) -> &Object {
        self.0.as_ref().expect("taken only once")
    }

    fn take(&mut self) -> Object {
        self.0.take().expect("taken only once")
    }

    async fn rollback(&mut self) {
        if let Some(conn) = self.0.take()
            && conn.batch_execute("ROLLBACK").await.is_err()
        {
            let _ = Object::take(conn);
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Its transaction's fate is unknown here: the connection is closed
            // rather than reused, which rolls the transaction back.
            let _ = Object::take(conn);
        }
    }
}

/// A transaction held open while the caller's closure runs: reads of user keys
/// go through it.
struct OpenTransaction<'a> {
    pg: &'a Pg,
    conn: Option<Object>,
}

impl OpenTransaction<'_> {
    fn commit(mut self, ns: i32, writes: &Writes) -> Result<(), Error> {
        let conn = self.conn.take().expect("committed once");
        let pg = self.pg;
        let ctx = pg.ctx();
        let deadline = pg.deadline();
        let result = pg.block_on(async {
            let work = async {
                let s = ctx.schema;
                for (key, value) in &writes.user {
                    match value {
                        Some(v) => {
                            conn.execute(
                                &format!(
                                    "INSERT INTO {s}.user_kv (key, value) VALUES ($1, $2)
                                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                                ),
                                &[key, v],
                            )
                            .await?;
                        }
                        None => {
                            conn.execute(
                                &format!("DELETE FROM {s}.user_kv WHERE key = $1"),
                                &[key],
                            )
                            .await?;
                        }
                    }
                }
                for (consumer, position) in &writes.checkpoints {
                    checkpoint::put(client(&conn), &ctx, ns, consumer, position).await?;
                }
                conn.batch_execute("COMMIT").await?;
                Ok(())
            };
            tokio::time::timeout_at(deadline, work)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable(
                        "PostgreSQL did not answer the transaction's commit in time: it may or \
                         may not have been committed"
                            .into(),
                    ))
                })
        });
        if result.is_err() {
            pg.abandon(conn);
        }
        result
    }
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The closure failed (or panicked): the transaction, and with it the
            // mark, is rolled back by closing its connection.
            let _ = Object::take(conn);
        }
    }
}

impl UserRead for OpenTransaction<'_> {
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let conn = self.conn.as_ref().expect("open while the closure runs");
        let deadline = self.pg.deadline();
        self.pg.block_on_read(async {
            tokio::time::timeout_at(
                deadline,
                user_value_locked(client(conn), &self.pg.inner.schema, key),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(
                    "PostgreSQL did not answer a read in time".into(),
                ))
            })
        })
    }
}

async fn user_value<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    schema: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    Ok(client
        .query_opt(
            &format!("SELECT value FROM {schema}.user_kv WHERE key = $1"),
            &[&key],
        )
        .await?
        .map(|r| r.get(0)))
}

/// A user key's value, locked until the transaction ends: read-modify-write of a
/// balance stays exact across nodes.
async fn user_value_locked<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    schema: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    Ok(client
        .query_opt(
            &format!("SELECT value FROM {schema}.user_kv WHERE key = $1 FOR UPDATE"),
            &[&key],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Finishes a completion or a release.
pub(crate) fn settled(decision: Decision) -> Result<(), Error> {
    match decision {
        Decision::Nothing | Decision::MarkDone { .. } | Decision::DeleteClaim => Ok(()),
        Decision::Conflict(why) => Err(Error::Conflict(why)),
        other => unreachable!("a completion or release decided {other:?}"),
    }
}
