//! The tracker's operations on PostgreSQL: each one transaction (or a few, when a
//! rotation comes first or another node raced for the same ID), retried from the
//! start, never half-applied.

use std::time::Duration;

use super::mark::{self, Marked, Mode};
use super::ring::NsCache;
use super::single::{self, Applied, One};
use super::{Ctx, Pg, client};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::generation::SealReason;
use crate::id::EventId;
use crate::tracker::decide::{Ask, Decision};
use crate::tracker::transaction::{UserRead, Writes, validate_checkpoint, validate_consumer};
use crate::tracker::{CallVerdicts, ClaimOutcome, MAX_LEASE, Transacted, Transaction};
use crate::verdict::Verdict;

/// How many times an operation starts over (a rotation first, or a race for the same
/// ID with another transaction) before it gives up.
const ATTEMPTS: usize = 8;

/// `$result`, the outcome of one step of an attempt, inside the attempts' loop: a
/// deadlock or serialisation failure starts the attempt over (`continue`, dropping
/// the transaction, which rolls it back); an error that says the connection is
/// broken is returned, with the connection taken out of the pool first (`Fast`
/// recycling would hand it out again); anything else is the step's result. A macro,
/// as the transaction borrows the connection and the loop is the caller's.
macro_rules! step {
    ($result:expr, $tx:ident, $conn:ident) => {
        match $result {
            r if retryable(&r) => continue,
            Err(e) if broken(&e) => {
                drop($tx);
                let _ = deadpool_postgres::Object::take($conn);
                return Err(e);
            }
            other => other,
        }
    };
}

impl Pg {
    pub(crate) fn check_and_mark<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace(namespace)?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        self.block_on(self.marks(&ns, &ids, Mode::Mark(owner), None))
    }

    /// One transaction per call: PostgreSQL answers each on its own connection, so
    /// there is no write to share (and a non-blocking call always gives up).
    pub(crate) fn check_and_mark_each<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        calls: &[(&[T], Option<&str>)],
        nonblocking: bool,
    ) -> Result<Option<Vec<CallVerdicts>>, Error> {
        if nonblocking {
            return Ok(None);
        }
        let _ = self.namespace(namespace)?;
        Ok(Some(
            calls
                .iter()
                .map(|(ids, owner)| self.check_and_mark(namespace, ids, *owner))
                .collect(),
        ))
    }

    pub(crate) fn check<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace(namespace)?;
        self.block_on(self.marks(&ns, &ids, Mode::Check, None))
    }

    pub(crate) fn check_and_mark_with_checkpoint<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error> {
        validate_checkpoint(consumer, position)?;
        let ids = EventId::batch(ids)?;
        let ns = self.namespace(namespace)?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        self.block_on(self.marks(&ns, &ids, Mode::Mark(owner), Some((consumer, position))))
    }

    /// One call's transaction, after any rotation it finds due.
    async fn marks(
        &self,
        ns: &NsCache,
        ids: &[EventId<'_>],
        mode: Mode,
        checkpoint: Option<(&str, &str)>,
    ) -> Result<Vec<Verdict>, Error> {
        for _ in 0..ATTEMPTS {
            let mut conn = self.conn().await?;
            let ctx = self.ctx().on(&conn);
            let tx = conn.transaction().await?;
            let run = step!(mark::run(&*tx, &ctx, ns, ids, mode, true).await, tx, conn);
            match self.gone_if_missing(ns, run)? {
                Marked::Decided(verdicts) => {
                    if let Some((consumer, position)) = checkpoint {
                        put_checkpoint(&*tx, &ctx, ns.id, consumer, position).await?;
                    }
                    tx.commit().await?;
                    return Ok(verdicts);
                }
                Marked::RotateFirst(reason) => {
                    drop(tx);
                    drop(conn);
                    self.rotate(ns, Some(reason)).await?;
                }
            }
        }
        Err(Error::Unavailable(
            "the namespace kept rotating under the call; retry".into(),
        ))
    }

    /// A namespace another node deleted: forgotten here too.
    fn gone_if_missing<T>(&self, ns: &NsCache, r: Result<T, Error>) -> Result<T, Error> {
        if matches!(r, Err(Error::UnknownNamespace(_))) {
            self.forget(ns.name.as_str());
        }
        r
    }

    pub(crate) fn claim(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let id = checked_id(id.as_ref())?;
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::InvalidArgument {
                field: "lease_ms",
                reason: format!("{} ms is outside 1 ms ..= 7 days", lease.as_millis()),
            });
        }
        let ns = self.namespace(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        let decision = self.block_on(self.one(&ns, id, |now: Timestamp| Ask::Claim {
            owner: me,
            until: now.saturating_add(lease),
            lease,
        }))?;
        match decision {
            Decision::Claim(outcome) | Decision::PutClaim(outcome) => Ok(outcome),
            other => unreachable!("a claim decided {other:?}"),
        }
    }

    pub(crate) fn complete(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let id = checked_id(id.as_ref())?;
        let ns = self.namespace(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        settled(self.block_on(self.one(&ns, id, |_| Ask::Complete(me)))?)
    }

    pub(crate) fn release(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let id = checked_id(id.as_ref())?;
        let ns = self.namespace(namespace)?;
        let me = OwnerFp::new(owner, ns.seed)?;
        settled(self.block_on(self.one(&ns, id, |_| Ask::Release(me)))?)
    }

    /// One single-ID operation: decided and written in one transaction.
    async fn one(
        &self,
        ns: &NsCache,
        id: &[u8],
        ask: impl Fn(Timestamp) -> Ask + Copy,
    ) -> Result<Decision, Error> {
        for _ in 0..ATTEMPTS {
            let mut conn = self.conn().await?;
            let ctx = self.ctx().on(&conn);
            let tx = conn.transaction().await?;
            let one = step!(
                single::decide_one(&*tx, &ctx, ns, id, ask, true).await,
                tx,
                conn
            );
            let one = self.gone_if_missing(ns, one)?;
            match one {
                One::RotateFirst(reason) => {
                    drop(tx);
                    drop(conn);
                    self.rotate(ns, Some(reason)).await?;
                }
                One::Decided(d) if !d.writes() => {
                    tx.commit().await?;
                    return Ok(d.decision);
                }
                One::Decided(d) => {
                    match step!(single::apply(&*tx, &ctx, ns, id, &d).await, tx, conn)? {
                        Applied::Written => {
                            tx.commit().await?;
                            return Ok(d.decision);
                        }
                        Applied::Raced => {}
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
        id: impl AsRef<[u8]>,
        owner: Option<&str>,
        f: F,
    ) -> Result<Transacted<T>, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    {
        let id = checked_id(id.as_ref())?;
        let ns = self.namespace(namespace)?;
        let me = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        let mut held = None;
        for _ in 0..ATTEMPTS {
            match self.block_on(self.hold_for_transaction(&ns, id, me))? {
                Hold::Answered(verdict) => return Ok(Transacted::Skipped(verdict)),
                Hold::Rotated | Hold::Raced => {}
                Hold::Held(conn) => {
                    held = Some(*conn);
                    break;
                }
            }
        }
        let Some(conn) = held else {
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
        guard.commit(ns.id, &writes)?;
        Ok(Transacted::Applied(value))
    }

    /// Begins a transaction, decides the mark, and when it is new writes it and keeps
    /// the transaction open (the row stays locked by it).
    async fn hold_for_transaction(
        &self,
        ns: &NsCache,
        id: &[u8],
        me: Option<OwnerFp>,
    ) -> Result<Hold, Error> {
        let ctx = self.ctx();
        let conn = self.conn().await?;
        conn.batch_execute("BEGIN").await?;
        let mut open = OpenConn(Some(conn));
        let one =
            single::decide_one(client(open.get()), &ctx, ns, id, |_| Ask::Mark(me), true).await;
        let one = self.gone_if_missing(ns, one)?;
        match one {
            One::RotateFirst(reason) => {
                open.rollback().await;
                self.rotate(ns, Some(reason)).await?;
                Ok(Hold::Rotated)
            }
            One::Decided(d) if !d.writes() => {
                open.rollback().await;
                match d.decision {
                    Decision::Verdict(v) => Ok(Hold::Answered(v)),
                    other => unreachable!("a mark decided {other:?}"),
                }
            }
            One::Decided(d) => match single::apply(client(open.get()), &ctx, ns, id, &d).await? {
                Applied::Written => Ok(Hold::Held(Box::new(open.take()))),
                Applied::Raced => {
                    open.rollback().await;
                    Ok(Hold::Raced)
                }
            },
        }
    }

    pub(crate) fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.block_on(async {
            let conn = self.conn().await?;
            user_value(&**conn, &self.inner.schema, key).await
        })
    }

    pub(crate) fn set_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        validate_checkpoint(consumer, position)?;
        let ns = self.namespace(namespace)?;
        self.block_on(async {
            let conn = self.conn().await?;
            put_checkpoint(&**conn, &self.ctx(), ns.id, consumer, position).await
        })
    }

    pub(crate) fn checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        validate_consumer(consumer)?;
        let ns = self.namespace(namespace)?;
        self.block_on(async {
            let conn = self.conn().await?;
            get_checkpoint(&**conn, &self.ctx(), ns.id, consumer).await
        })
    }

    pub(crate) fn tick(&self) -> Result<(), Error> {
        let names = self.block_on(async {
            let conn = self.conn().await?;
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
        })?;
        let mut first_error = None;
        for name in names {
            let Ok(ns) = self.namespace(&name) else {
                continue;
            };
            let result = self.block_on(async {
                if let Some(reason) = self.due_now(&ns).await? {
                    self.rotate(&ns, Some(reason)).await?;
                } else if Self::behind(&Self::arc_ring(&ns)) {
                    self.catch_up(&ns).await?;
                }
                self.forget_expired_claims(&ns).await
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        let ns = self.namespace(namespace)?;
        self.block_on(self.rotate(&ns, None::<SealReason>))
    }
}

enum Hold {
    Answered(Verdict),
    Rotated,
    Raced,
    Held(Box<deadpool_postgres::Object>),
}

/// A pooled connection inside a transaction begun by hand: rolled back, or taken
/// out of the pool, whatever happens, so that no connection goes back to the pool
/// mid-transaction.
struct OpenConn(Option<deadpool_postgres::Object>);

impl OpenConn {
    fn get(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("taken only once")
    }

    fn take(&mut self) -> deadpool_postgres::Object {
        self.0.take().expect("taken only once")
    }

    async fn rollback(&mut self) {
        if let Some(conn) = self.0.take()
            && conn.batch_execute("ROLLBACK").await.is_err()
        {
            let _ = deadpool_postgres::Object::take(conn);
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Its transaction's fate is unknown here: the connection is closed
            // rather than reused, which rolls the transaction back.
            let _ = deadpool_postgres::Object::take(conn);
        }
    }
}

/// A transaction held open while the caller's closure runs: reads of user keys
/// go through it.
struct OpenTransaction<'a> {
    pg: &'a Pg,
    conn: Option<deadpool_postgres::Object>,
}

impl OpenTransaction<'_> {
    fn commit(mut self, ns: i32, writes: &Writes) -> Result<(), Error> {
        let conn = self.conn.take().expect("committed once");
        let pg = self.pg;
        let ctx = pg.ctx();
        let result = pg.block_on(async {
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
                        conn.execute(&format!("DELETE FROM {s}.user_kv WHERE key = $1"), &[key])
                            .await?;
                    }
                }
            }
            for (consumer, position) in &writes.checkpoints {
                put_checkpoint(&**conn, &ctx, ns, consumer, position).await?;
            }
            conn.batch_execute("COMMIT").await?;
            Ok(())
        });
        if result.is_err() {
            let _ = deadpool_postgres::Object::take(conn);
        }
        result
    }
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The closure failed (or panicked): the transaction, and with it the
            // mark, is rolled back by closing its connection.
            let _ = deadpool_postgres::Object::take(conn);
        }
    }
}

impl UserRead for OpenTransaction<'_> {
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let conn = self.conn.as_ref().expect("open while the closure runs");
        self.pg
            .block_on(user_value_locked(client(conn), &self.pg.inner.schema, key))
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

pub(crate) async fn put_checkpoint<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    consumer: &str,
    position: &str,
) -> Result<(), Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {}.checkpoints (ns, consumer, position) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, consumer) DO UPDATE SET position = excluded.position",
                ctx.schema
            ),
            &[&ns, &consumer, &position],
        )
        .await?;
    Ok(())
}

pub(crate) async fn get_checkpoint<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    consumer: &str,
) -> Result<Option<String>, Error> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT position FROM {}.checkpoints WHERE ns = $1 AND consumer = $2",
                ctx.schema
            ),
            &[&ns, &consumer],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether a transaction failed only because PostgreSQL chose it as a deadlock's or
/// a serialisation conflict's victim: nothing was written, and it may start over.
fn retryable<T>(r: &Result<T, Error>) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(r, Err(Error::Postgres(e)) if e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    }))
}

/// Whether a connection must not go back to the pool: it is closed, or it reached a
/// server that takes no writes (a standby, a demoted primary). The next connection
/// looks for the primary afresh (`target_session_attrs=read-write`).
pub(crate) fn broken(e: &Error) -> bool {
    use tokio_postgres::error::SqlState;
    match e {
        Error::Postgres(e) => {
            e.is_closed()
                || e.code().is_some_and(|c| {
                    *c == SqlState::READ_ONLY_SQL_TRANSACTION || *c == SqlState::ADMIN_SHUTDOWN
                })
        }
        _ => false,
    }
}

/// Finishes a completion or a release.
fn settled(decision: Decision) -> Result<(), Error> {
    match decision {
        Decision::Nothing | Decision::MarkDone { .. } | Decision::DeleteClaim => Ok(()),
        Decision::Conflict(why) => Err(Error::Conflict(why)),
        other => unreachable!("a completion or release decided {other:?}"),
    }
}

fn checked_id(id: &[u8]) -> Result<&[u8], Error> {
    EventId::new(id)
        .map(EventId::as_bytes)
        .map_err(|reason| Error::InvalidId { index: 0, reason })
}
