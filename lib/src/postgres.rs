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
//! everything else; on an error, roll back. Marks made this way never seal a
//! generation (that needs the namespace's exclusive lock, which your transaction
//! would hold up): the tracker's [`tick`](crate::Tracker::tick) does, as the daemon
//! does every second.
//!
//! # The SQL
//!
//! Everything lives in one schema (`oncely` by default; see `schema` below for the
//! tables). A mark, in any language, is:
//!
//! ```sql
//! SELECT pg_advisory_xact_lock_shared(<schema key>, $ns);      -- rotation takes it exclusively
//! SELECT open_gen, exact_floor, oldest_gen FROM oncely.namespaces WHERE id = $ns;
//! -- sealed generations that keep their exact tables (gen >= exact_floor):
//! SELECT id, owner FROM oncely.marks
//!  WHERE ns = $ns AND gen = ANY($sealed_exact) AND id = ANY($ids) AND NOT claim;   -- found: duplicate
//! -- the open generation decides the rest:
//! INSERT INTO oncely.marks (ns, gen, id, owner)
//! SELECT $ns, $open_gen, unnest($ids), $owner ON CONFLICT DO NOTHING RETURNING id; -- returned: new
//! -- for the others, the conflicting row says why (a done mark: duplicate, or replayed for
//! -- the same owner; a claim's placeholder: in progress, or the claim's owner completing it):
//! SELECT m.id, m.owner, m.claim, c.until_ms FROM oncely.marks m
//!   LEFT JOIN oncely.claims c ON c.ns = m.ns AND c.id = m.id
//!  WHERE m.ns = $ns AND m.gen = $open_gen AND m.id = ANY($conflicted) FOR UPDATE OF m;
//! INSERT INTO oncely.counts (ns, gen, shard, n)                  -- the session's shard: concurrent
//! VALUES ($ns, $open_gen, pg_backend_pid() % 64, $new)             -- marks rarely share one row
//!     ON CONFLICT (ns, gen, shard) DO UPDATE SET n = counts.n + excluded.n;
//! ```
//!
//! Oncely also probes the Bloom filters of sealed generations (stored in
//! `oncely.generations.filter`) to skip lookups that cannot hit and to answer
//! `probable_duplicate` for generations past the exact horizon; a client in another
//! language that skips the filters looks up every sealed exact generation, and only
//! loses the `probable_duplicate` answers.
//!
//! # Time and durability
//!
//! Generation ages and leases use the database's clock, so nodes with skewed clocks
//! agree; a step of the database server's own clock moves them (the embedded store
//! counts running time instead). A mark is acknowledged once its transaction commits,
//! as durable as the server's `synchronous_commit` makes it (with a synchronous
//! standby, it survives the primary's loss). A connection lost during `COMMIT` leaves
//! the outcome unknown: the call fails, and a retry by the same owner gets `new`,
//! replayed, if the commit had landed.

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::error::Error;
use crate::exact::OwnerFp;
use crate::id::EventId;
use crate::tracker::decide::{Ask, Decision};
use crate::tracker::postgres::mark::{self, Marked, Mode};
use crate::tracker::postgres::ops::{get_checkpoint, put_checkpoint};
use crate::tracker::postgres::single::{self, Applied, One};
use crate::tracker::postgres::{DEFAULT_CONNECT_TIMEOUT, Pg};
use crate::tracker::transaction::{validate_checkpoint, validate_consumer};
use crate::tracker::{ClaimOutcome, MAX_LEASE};
use crate::verdict::Verdict;

/// Where and how to reach PostgreSQL. A consuming builder.
#[derive(Clone, Debug)]
#[must_use]
pub struct PgOptions {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
}

impl PgOptions {
    /// A libpq-style URL: `postgres://user:password@host:port/db`, with several hosts
    /// and `target_session_attrs=read-write` for failover. Defaults: schema
    /// `oncely`, 16 pooled connections, 5 s to get one.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "oncely".to_owned(),
            pool_size: 16,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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

    /// How long a call waits to get (or open) a connection before it fails.
    pub const fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

/// Oncely's operations inside a transaction you opened on your own connection to the
/// same database (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct InTransaction {
    pub(crate) pg: Pg,
}

impl InTransaction {
    /// [`Tracker::check_and_mark`](crate::Tracker::check_and_mark), inside `client`'s
    /// transaction.
    ///
    /// # Errors
    ///
    /// As `check_and_mark`; after an error, roll the transaction back.
    pub async fn check_and_mark<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        let ctx = self.pg.ctx();
        match mark::run(client, &ctx, &ns, &ids, Mode::Mark(owner), false).await? {
            Marked::Decided(v) => Ok(v),
            Marked::RotateFirst(_) => unreachable!("never asked to rotate"),
        }
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
        let ns = self.pg.namespace_in(client, namespace).await?;
        let ctx = self.pg.ctx();
        match mark::run(client, &ctx, &ns, &ids, Mode::Check, false).await? {
            Marked::Decided(v) => Ok(v),
            Marked::RotateFirst(_) => unreachable!("never asked to rotate"),
        }
    }

    /// [`Tracker::claim`](crate::Tracker::claim), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `claim`; [`Error::Conflict`] when another transaction raced for the same
    /// ID (roll back and retry).
    pub async fn claim<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::InvalidArgument {
                field: "lease_ms",
                reason: format!("{} ms is outside 1 ms ..= 7 days", lease.as_millis()),
            });
        }
        let ns = self.pg.namespace_in(client, namespace).await?;
        let me = OwnerFp::new(owner, ns.seed)?;
        let d = self
            .one(client, namespace, id.as_ref(), move |now| Ask::Claim {
                owner: me,
                until: now.saturating_add(lease),
                lease,
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
    /// As `complete`.
    pub async fn complete<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let ns = self.pg.namespace_in(client, namespace).await?;
        let me = OwnerFp::new(owner, ns.seed)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_| Ask::Complete(me))
                .await?,
        )
    }

    /// [`Tracker::release`](crate::Tracker::release), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `release`.
    pub async fn release<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let ns = self.pg.namespace_in(client, namespace).await?;
        let me = OwnerFp::new(owner, ns.seed)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_| Ask::Release(me))
                .await?,
        )
    }

    async fn one<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: &[u8],
        ask: impl Fn(crate::clock::Timestamp) -> Ask + Copy,
    ) -> Result<Decision, Error> {
        let id = EventId::new(id)
            .map_err(|reason| Error::InvalidId { index: 0, reason })?
            .as_bytes();
        let ns = self.pg.namespace_in(client, namespace).await?;
        let ctx = self.pg.ctx();
        match single::decide_one(client, &ctx, &ns, id, ask, false).await? {
            One::RotateFirst(_) => unreachable!("never asked to rotate"),
            One::Decided(d) if !d.writes() => Ok(d.decision),
            One::Decided(d) => match single::apply(client, &ctx, &ns, id, &d).await? {
                Applied::Written => Ok(d.decision),
                Applied::Raced => Err(Error::Conflict(
                    "another transaction took this ID meanwhile; roll back and retry".into(),
                )),
            },
        }
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
        put_checkpoint(client, &self.pg.ctx(), ns.id, consumer, position).await
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
        get_checkpoint(client, &self.pg.ctx(), ns.id, consumer).await
    }
}

fn settled(decision: Decision) -> Result<(), Error> {
    match decision {
        Decision::Nothing | Decision::MarkDone { .. } | Decision::DeleteClaim => Ok(()),
        Decision::Conflict(why) => Err(Error::Conflict(why)),
        other => unreachable!("a completion or release decided {other:?}"),
    }
}
