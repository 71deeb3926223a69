//! Oncely on PostgreSQL: many nodes as one authority, and marks inside the caller's
//! own transaction.
//!
//! # When to choose it
//!
//! The embedded store (RocksDB) is one process on one disk: the fastest, and the
//! simplest to run. Choose PostgreSQL when
//!
//! * **your read model lives in PostgreSQL**: [`InTransaction`] marks events inside
//!   the transaction that updates it, so the update and the mark commit together or
//!   not at all (the exactly-once recipe: process, then mark, in one transaction);
//! * **the authority must outlive a node**: any number of trackers and daemons share
//!   one database; among all of them exactly one caller gets `new` per ID. High
//!   availability comes from PostgreSQL's own replication and failover.
//!
//! ```no_run
//! use oncely::postgres::PgOptions;
//! use oncely::{Tracker, Verdict};
//!
//! let tracker = Tracker::builder()
//!     .postgres(PgOptions::new("postgres://oncely@db1:5432,db2:5432/app?target_session_attrs=read-write"))
//!     .open()?;
//! assert_eq!(tracker.check_and_mark("default", &["order-1"], None)?, [Verdict::New]);
//! # Ok::<(), oncely::Error>(())
//! ```
//!
//! # Marks inside your transaction
//!
//! ```no_run
//! # async fn credit(client: &mut tokio_postgres::Client, marks: &oncely::postgres::InTransaction)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let tx = client.transaction().await?;
//! let verdicts = marks.check_and_mark(&tx, "payments", &["payment-42"], None).await?;
//! if verdicts[0].is_new() {
//!     tx.execute("UPDATE balances SET amount = amount + 5 WHERE account = 'alice'", &[]).await?;
//! }
//! marks.set_checkpoint(&tx, "payments", "ledger", "offset-1042").await?;
//! tx.commit().await?; // both, or (rollback, a crash) neither
//! # Ok(()) }
//! ```
//!
//! Get the handle with [`Tracker::in_transaction`](crate::Tracker::in_transaction):
//! it shares the tracker's cache of sealed filters. A rollback forgets the marks with
//! everything else; on an error, roll back.
//!
//! **At every isolation level.** A mark is decided inside the database by one
//! function, under the namespace's shared lock. At READ COMMITTED its statements see
//! the ring as it is once the lock is held. At REPEATABLE READ and SERIALIZABLE your
//! transaction's snapshot may predate another node's rotation of the namespace; the
//! function then locks the namespace's row in share mode, which PostgreSQL refuses
//! for a row changed since the snapshot: the call fails with
//! [`Error::RetryTransaction`] (SQLSTATE 40001 underneath) rather than mark into a
//! generation that was sealed meanwhile, where another node would mark the same ID
//! `new` again. Roll back and run the whole transaction again, as with any
//! serialisation failure. The same holds for an ID another transaction marked after
//! your snapshot was taken.
//!
//! **Keep these transactions short.** From your first mark until you commit, your
//! transaction holds the namespace's shared lock, which the namespace's rotation
//! waits for. It waits a moment only, then leaves the rotation for later (counted in
//! [`Tracker::rotations_deferred`](crate::Tracker::rotations_deferred)); meanwhile a
//! namespace whose open generation is full takes no more IDs: marks wait about a
//! second for the rotation, then fail with [`Error::Busy`] (the daemon answers 503
//! `busy`). Other namespaces are never held up: each generation is a table of its
//! own, so nothing your transaction holds is shared with them. Marks made this way
//! never seal a generation themselves (that needs the exclusive lock, which your
//! transaction would hold up): the tracker's [`tick`](crate::Tracker::tick) does, as
//! the daemon does every second. Every lock wait of Oncely's statements ends after
//! 2 s (`lock_timeout`): a mark of an ID that another open transaction marked fails
//! with [`Error::Busy`] rather than wait for it without end.
//!
//! # From other languages: one SQL call
//!
//! The schema comes with the same decision as SQL functions, so a consumer in any
//! language marks inside its own transaction with one call:
//!
//! <!-- sql-recipe -->
//! ```sql
//! BEGIN;  -- at any isolation level
//! SELECT id, verdict FROM oncely.check_and_mark('payments', ARRAY['payment-42']);
//! -- for the IDs whose verdict is 'new', process the event here, in this transaction:
//! UPDATE balances SET amount = amount + 5 WHERE account = 'alice';
//! COMMIT;  -- the mark and the update, or (rollback, a crash) neither
//! ```
//!
//! * `oncely.check_and_mark(namespace text, ids text[], owner text DEFAULT NULL)`
//!   answers one row per ID, in order: `id`, `verdict` (`new`: process it;
//!   `duplicate`: skip it; `in_progress`: another owner's live claim, until
//!   `until_ms`), `replayed` (a `new` the same owner token got before: its first
//!   answer was lost), `until_ms`. `oncely.check_and_mark_bytes(namespace text, ids
//!   bytea[], owner text DEFAULT NULL)` takes raw bytes (a name of its own: drivers
//!   that send parameters untyped would make an overload ambiguous);
//!   `oncely.check(namespace, ids)` and `oncely.check_bytes` answer without marking;
//!   `oncely.set_checkpoint(namespace, consumer, position)` and
//!   `oncely.checkpoint(namespace, consumer)` keep a consumer's position in the same
//!   transaction. `oncely.forget(namespace text, ids text[])` (and
//!   `oncely.forget_bytes` for `bytea[]`) forgets IDs, as
//!   [`Tracker::forget`](crate::Tracker::forget) does, when the transaction
//!   commits: one row per ID, in order, `id` and `forgotten` (`true` where it
//!   deleted an exact mark; `false` where nothing exact remembered the ID, where a
//!   live claim holds it, and for a repeat). (Claims are the library's and the
//!   daemon's only.)
//! * The function sorts the IDs and takes its row locks in that order, so batches
//!   in any order from any number of transactions wait for one another and never
//!   deadlock; it takes the namespace's lock and, at REPEATABLE READ and
//!   SERIALIZABLE, refuses a stale snapshot with SQLSTATE 40001 (retry the
//!   transaction), as above. Its lock waits end after 2 s (SQLSTATE 55P03). Bad
//!   input is refused with SQLSTATE 22023 and a message naming the ID; an unknown
//!   namespace with 42704; a namespace whose open generation is full until it
//!   rotates with `OC001` (retry shortly: a running tracker or daemon rotates it
//!   within a second). Owner tokens are fingerprinted as the library does (SHA-256
//!   with the namespace's secret seed), so a retry may go through either.
//! * **Where it answers otherwise than the library:** it cannot read Bloom filters.
//!   It looks every ID up in every sealed generation that keeps its exact table,
//!   exactly as the library does; but for a generation past the exact horizon,
//!   where the library answers `probable_duplicate` from the filter, it answers
//!   `new`, and the event would be processed again. **For SQL callers, keep every
//!   generation exact**: `exact_generations` equal to `generations` (as the
//!   benchmarks' namespaces are). Then every answer is exact, the library's and the
//!   SQL's alike, for the whole window.
//!
//! Everything lives in one schema (`oncely` by default; see `schema` for the
//! tables): a table per generation, `marks_<namespace id>_<generation>`, dropped
//! whole once the generation leaves the exact horizon.
//!
//! # The store URL, and failover
//!
//! A libpq-style URL; what each parameter does here (tokio-postgres reads the URL,
//! and Oncely bounds what it does not):
//!
//! * **Several hosts** (`host1:port1,host2:port2`): a new connection tries them in
//!   turn, starting from the one that answered last, so that after a failover new
//!   connections do not wait on the old primary first.
//! * **`target_session_attrs=read-write`**: each host is asked `SHOW
//!   transaction_read_only` and passed over when it is a standby.
//! * **`connect_timeout`** (seconds; 2 when absent) bounds each host's whole
//!   handshake: TCP connect, start-up, authentication and the check above, as in
//!   libpq. (tokio-postgres's own bounds the TCP connect only: a frozen server, whose
//!   kernel still accepts the connection, would hold the handshake forever.)
//! * **`keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_retries`**
//!   (TCP keepalives; defaults here: on, 5 s, 2 s, 3) and **`tcp_user_timeout`**
//!   (milliseconds of unacknowledged data before the kernel gives up; default here
//!   10 s): they find a connection to a machine that vanished. A frozen server's
//!   kernel still answers both, so they cannot find that one: the call deadline does.
//! * **`options`** is sent as given, followed by Oncely's session settings:
//!   `lock_timeout` (2 s), `statement_timeout` (the call timeout) and
//!   `default_transaction_isolation = read committed`.
//! * `load_balance_hosts`, `hostaddr`, `sslmode` and the rest: as tokio-postgres
//!   reads them (no TLS is compiled in: `sslmode=require` cannot connect).
//!
//! Beyond the URL, [`PgOptions::call_timeout`] (4 s) bounds each call as a whole:
//! getting a connection, its statements and its commit. A call past it fails, its
//! connection leaves the pool, the pool's idle connections opened before it are
//! closed too (they may lead to the same frozen server), and its statement is
//! cancelled on the server (a commit waiting for a lost synchronous standby then
//! returns, committed locally). The outcome of a call that was committing is
//! unknown: retry with the same owner token.
//!
//! # Time and durability
//!
//! Generation ages and leases use the database's clock, so nodes with skewed clocks
//! agree; a step of the database server's own clock moves them (the embedded store
//! counts running time instead). A mark is acknowledged once its statement (or
//! transaction) commits, as durable as the server's `synchronous_commit` makes it
//! (with a synchronous standby, it survives the primary's loss). A connection lost
//! during the commit leaves the outcome unknown: the call fails, and a retry by the
//! same owner gets `new`, replayed, if the commit had landed.

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::error::Error;
use crate::exact::OwnerFp;
use crate::id::{EventId, NamespaceName};
use crate::tracker::ClaimOutcome;
use crate::tracker::check_lease;
use crate::tracker::checkpoint::{validate_checkpoint, validate_conditional, validate_consumer};
use crate::tracker::decide::{Ask, Decision};
use crate::tracker::postgres::checkpoint;
use crate::tracker::postgres::forget::{self, Forgot};
use crate::tracker::postgres::mark::{self, Answer, Ask as MarkAsk, Distinct, Owners};
use crate::tracker::postgres::ops::settled;
use crate::tracker::postgres::ring::NsCache;
use crate::tracker::postgres::single::{self, Applied, Caller, One};
use crate::tracker::postgres::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, Pg, lock_timed_out, owner_fp, retryable,
};
use crate::verdict::Verdict;

/// Where and how to reach PostgreSQL. A consuming builder.
#[derive(Clone, Debug)]
#[must_use]
pub struct PgOptions {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
}

impl PgOptions {
    /// A libpq-style URL: `postgres://user:password@host:port/db`, with several hosts
    /// and `target_session_attrs=read-write` for failover (see the module docs for
    /// what each URL parameter does). Defaults: schema `oncely`, 16 pooled
    /// connections, 4 s to get one, 4 s for a whole call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "oncely".to_owned(),
            pool_size: 16,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The schema Oncely's tables live in (1 to 48 of `a-z 0-9 _`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections this tracker holds.
    pub const fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// How long a call waits to get (or open) a connection before it fails (at
    /// most its whole [`call_timeout`](Self::call_timeout)). Opening one tries the
    /// URL's hosts in turn, each for at most the URL's `connect_timeout` (2 s when
    /// it gives none).
    pub const fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one call may take, all told: getting a connection, its statements,
    /// its commit, and its retries. Past it the call fails, its connection leaves
    /// the pool and its statement is cancelled on the server; a call that was
    /// committing may or may not have committed (a retry with the same owner
    /// token tells). Also the pooled connections' `statement_timeout`.
    pub const fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }
}

/// How many times an in-transaction call reads the ring again before it gives up.
const ATTEMPTS: usize = 4;

/// Oncely's operations inside a transaction you opened on your own connection to the
/// same database (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct InTransaction {
    pub(crate) pg: Pg,
}

impl InTransaction {
    /// [`Tracker::check_and_mark`](crate::Tracker::check_and_mark), inside `client`'s
    /// transaction, at any isolation level.
    ///
    /// # Errors
    ///
    /// As `check_and_mark`, and: [`Error::RetryTransaction`] when PostgreSQL could
    /// not serialise the transaction (at REPEATABLE READ or SERIALIZABLE, a
    /// snapshot taken before another node rotated the namespace, or marked one of
    /// the IDs); [`Error::Busy`] when another transaction held one of the IDs past
    /// the lock timeout, or the namespace's open generation is full until it
    /// rotates. After an error, roll the transaction back (and retry it).
    pub async fn check_and_mark<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        if let Some(o) = owner {
            OwnerFp::check(o)?;
        }
        let name = NamespaceName::new(namespace)?;
        let ask = MarkAsk {
            check: false,
            rotate: false,
            checkpoint: None,
        };
        self.marks(client, &name, &ids, owner, &ask).await
    }

    /// [`Tracker::check`](crate::Tracker::check), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `check`.
    pub async fn check<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let name = NamespaceName::new(namespace)?;
        let ask = MarkAsk {
            check: true,
            rotate: false,
            checkpoint: None,
        };
        self.marks(client, &name, &ids, None, &ask).await
    }

    async fn marks<C: GenericClient + Sync>(
        &self,
        client: &C,
        name: &NamespaceName,
        ids: &[EventId<'_>],
        owner: Option<&str>,
        ask: &MarkAsk<'_>,
    ) -> Result<Vec<Verdict>, Error> {
        let distinct = Distinct::new(ids);
        let owners = owner.map_or(Owners::None, Owners::One);
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let mut ns = self.pg.namespace_in(client, name.as_str()).await?;
            if ns.ring().wants_filters() {
                ns = self.pg.load(client, &ctx, name).await?;
            }
            let ring = ns.ring();
            match mark::call(client, &ctx, &ns, &ring, &distinct.ids, owners, ask)
                .await
                .map_err(in_transaction)?
            {
                Answer::Decided(verdicts) => {
                    return Ok(distinct.spread(&verdicts, ask.check, owner.is_some()));
                }
                Answer::Stale => {
                    self.pg.load(client, &ctx, name).await?;
                }
                Answer::Unknown => return Err(Error::UnknownNamespace(name.to_string())),
                Answer::Full => return Err(single::full(&ns)),
                Answer::Due => unreachable!("asked without rotate"),
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// [`Tracker::claim`](crate::Tracker::claim), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `claim`; [`Error::Conflict`] when another transaction raced for the same
    /// ID (roll back and retry); as [`check_and_mark`](Self::check_and_mark).
    pub async fn claim<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        check_lease(lease)?;
        OwnerFp::check(owner)?;
        let d = self
            .one(client, namespace, id.as_ref(), move |now, ns: &NsCache| {
                Ok(Ask::Claim {
                    owner: owner_fp(owner, ns.seed)?,
                    until: now.saturating_add(lease),
                    lease,
                })
            })
            .await?;
        match d {
            Decision::Claim(o) | Decision::PutClaim(o) => Ok(o),
            other => unreachable!("a claim decided {other:?}"),
        }
    }

    /// [`Tracker::complete`](crate::Tracker::complete), inside `client`'s
    /// transaction.
    ///
    /// # Errors
    ///
    /// As `complete`, and as [`check_and_mark`](Self::check_and_mark).
    pub async fn complete<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        OwnerFp::check(owner)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_, ns: &NsCache| {
                Ok(Ask::Complete(owner_fp(owner, ns.seed)?))
            })
            .await?,
        )
    }

    /// [`Tracker::release`](crate::Tracker::release), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `release`, and as [`check_and_mark`](Self::check_and_mark).
    pub async fn release<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        OwnerFp::check(owner)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_, ns: &NsCache| {
                Ok(Ask::Release(owner_fp(owner, ns.seed)?))
            })
            .await?,
        )
    }

    async fn one<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: &[u8],
        ask: impl Fn(crate::clock::Timestamp, &NsCache) -> Result<Ask, Error>,
    ) -> Result<Decision, Error> {
        let id = EventId::one(id)?.as_bytes();
        let name = NamespaceName::new(namespace)?;
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let ns = self.pg.namespace_in(client, name.as_str()).await?;
            let one = single::decide_one(client, &ctx, &self.pg, &ns, id, &ask, Caller::Theirs)
                .await
                .map_err(in_transaction)?;
            match one {
                One::RotateFirst(_) => unreachable!("never asked to rotate"),
                One::Stale => {
                    self.pg.load(client, &ctx, &name).await?;
                }
                One::Decided(d) if !d.writes() => return Ok(d.decision),
                One::Decided(d) => {
                    return match single::apply(client, &ctx, &ns, id, &d)
                        .await
                        .map_err(in_transaction)?
                    {
                        Applied::Written => Ok(d.decision),
                        Applied::Raced => Err(Error::Conflict(
                            "another transaction took this ID meanwhile; roll back and retry"
                                .into(),
                        )),
                    };
                }
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// [`Tracker::forget`](crate::Tracker::forget), inside `client`'s transaction,
    /// at any isolation level: the marks are deleted when the transaction commits,
    /// and stay if it rolls back. The rows of the IDs, and of the generations they
    /// were forgotten from, stay locked until it ends. One answer per ID, in order:
    /// `true` where an exact mark was deleted; `false` where nothing exact
    /// remembered it, where a live claim holds it (left alone), and for a repeat.
    ///
    /// # Errors
    ///
    /// Invalid IDs, unknown namespace; [`Error::RetryTransaction`] when PostgreSQL
    /// could not serialise the transaction (at REPEATABLE READ or SERIALIZABLE, a
    /// snapshot taken before another node rotated the namespace, or changed one of
    /// these IDs or a generation they are in); [`Error::Busy`] when a lock wait
    /// timed out; database errors. After an error, roll the transaction back (and
    /// retry it).
    pub async fn forget<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
    ) -> Result<Vec<bool>, Error> {
        let ids = EventId::batch(ids)?;
        let name = NamespaceName::new(namespace)?;
        let distinct = Distinct::new(&ids);
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let ns = self.pg.namespace_in(client, name.as_str()).await?;
            if distinct.ids.is_empty() {
                return Ok(Vec::new());
            }
            match forget::forget_ids(client, &ctx, &self.pg, &ns, &distinct.ids, Caller::Theirs)
                .await
                .map_err(in_transaction)?
            {
                Forgot::RotateFirst(_) => unreachable!("never asked to rotate"),
                Forgot::Stale => {
                    self.pg.load(client, &ctx, &name).await?;
                }
                Forgot::Done { forgotten, .. } => {
                    return Ok(distinct.spread_forgotten(&forgotten));
                }
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// Stores a consumer's position inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// Invalid consumer or position, unknown namespace, database errors.
    pub async fn set_checkpoint<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        validate_checkpoint(consumer, position)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::put(client, &self.pg.ctx(), ns.id, consumer, position)
            .await
            .map_err(in_transaction)
    }

    /// Stores a consumer's position inside `client`'s transaction if the stored one
    /// is `expected` (`None`: if none is stored yet), as
    /// [`Tracker::set_checkpoint_if`](crate::Tracker::set_checkpoint_if) does. The
    /// row stays locked until the transaction ends, so no other writer moves the
    /// checkpoint before it commits or rolls back.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointConflict`] with the stored position (roll back: this
    /// instance is behind), invalid consumer or positions, unknown namespace,
    /// [`Error::RetryTransaction`] at REPEATABLE READ or SERIALIZABLE when another
    /// transaction wrote the checkpoint after this one's snapshot, database errors.
    pub async fn set_checkpoint_if<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        validate_conditional(consumer, expected, position)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::put_if(client, &self.pg.ctx(), ns.id, consumer, expected, position)
            .await
            .map_err(in_transaction)
    }

    /// A consumer's stored position, as `client`'s transaction sees it.
    ///
    /// # Errors
    ///
    /// Invalid consumer, unknown namespace, database errors.
    pub async fn checkpoint<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        validate_consumer(consumer)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::get(client, &self.pg.ctx(), ns.id, consumer).await
    }
}

/// A database error met inside the caller's transaction, said the way the caller
/// must act on it: their transaction is aborted either way.
fn in_transaction(e: Error) -> Error {
    if retryable(&e) {
        return Error::RetryTransaction(format!(
            "{e} (at REPEATABLE READ or SERIALIZABLE, the transaction's snapshot predates \
             another node's change of the namespace or of one of these IDs)"
        ));
    }
    if lock_timed_out(&e) {
        return Error::Busy(format!(
            "another transaction held one of these IDs, or the namespace, past the lock \
             timeout ({e}); roll back and retry"
        ));
    }
    e
}
