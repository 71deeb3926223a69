//! The PostgreSQL engine: any number of trackers and daemons, on any number of
//! nodes, share one database as one authority.
//!
//! The database decides: every check and mark is decided inside it, by one
//! function (`mark_ids`, in `functions.sql`) that takes the namespace's lock, reads
//! its ring and inserts into the open generation's table, whose unique key wins
//! each ID for exactly one caller; the ring is one row per namespace changed only
//! under the namespace's exclusive advisory lock; time is its clock. A node caches
//! only what never changes once written, the Bloom filters of sealed generations,
//! and passes what they say to the function as hints, which it uses only while the
//! ring is the one the node read them for. See [`crate::postgres`] for the user's
//! side and the SQL.
//!
//! Every call is bounded: getting a connection (each host's whole handshake, see
//! `connect`), its statements and its commit share one deadline
//! ([`PgOptions::call_timeout`](crate::postgres::PgOptions::call_timeout)); every
//! lock wait is bounded by `lock_timeout` (`schema::LOCK_TIMEOUT`). A call past its
//! deadline takes its connection out of the pool and cancels its statement on the
//! server, so a frozen primary is left as surely as a dead one.
//!
//! The tracker's API is synchronous; this engine runs its queries on a small runtime
//! of its own. Call it from threads that may block, as any tracker call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::StatementCache;
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::clock::Clock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::tracker::Durability;
use crate::tracker::budget::Limits;
use crate::tracker::health::Health;

mod admin;
mod checkpoint;
mod combine;
mod connect;
mod engine;
mod forget;
mod in_transaction;
mod mark;
mod ops;
mod options;
mod ring;
mod rotation;
mod schema;
mod single;

pub use in_transaction::InTransaction;
pub use options::PgOptions;
use ring::NsCache;

/// A pooled connection.
pub(crate) type Object = deadpool::managed::Object<connect::Manager>;
type Pool = deadpool::managed::Pool<connect::Manager>;

/// The PostgreSQL engine behind a [`Tracker`](crate::Tracker). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pg {
    inner: Arc<PgInner>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

struct PgInner {
    /// `None` only while dropping (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    schema: String,
    /// Decision time: the database's clock, or an injected one (tests).
    clock: Option<Arc<dyn Clock>>,
    /// What [`Tracker::clock`](crate::Tracker::clock) hands out.
    reported_clock: Arc<dyn Clock>,
    /// As asked: on PostgreSQL both modes mean "acknowledged at `COMMIT`".
    durability: Durability,
    limits: Limits,
    /// How long one call may take, all told.
    call_timeout: Duration,
    /// How long a call waits for a connection from the pool (or a new one).
    connect_timeout: Duration,
    namespaces: RwLock<HashMap<String, Arc<NsCache>>>,
    health: Health,
    /// Rotations that could not take their namespace's lock in time and were left
    /// for later.
    rotations_deferred: AtomicU64,
    /// Small calls waiting to share a statement, per namespace.
    lanes: combine::Lanes,
    closed: AtomicBool,
}

impl Drop for PgInner {
    fn drop(&mut self) {
        // The last handle may go away on an async worker (the daemon's, at
        // shutdown): dropping a runtime there panics ("Cannot drop a runtime in a
        // context where blocking is not allowed"). Its tasks are connection
        // drivers, safe to stop without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the SQL helpers need of the engine (and of the in-transaction API).
pub(crate) struct Ctx<'a> {
    pub(crate) schema: &'a str,
    pub(crate) lock_key: i32,
    clock: Option<&'a dyn Clock>,
    /// The pooled connection's prepared statements; `None` on a caller's connection.
    statements: Option<Arc<StatementCache>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(schema: &'a str, clock: Option<&'a dyn Clock>) -> Self {
        Self {
            schema,
            lock_key: lock_key(schema),
            clock,
            statements: None,
        }
    }

    /// For statements on `conn`: prepared once per pooled connection.
    pub(crate) fn on(mut self, conn: &Object) -> Self {
        self.statements = Some(Arc::clone(&conn.statement_cache));
        self
    }

    /// Runs a statement of the hot path, its parameters' types given. On a pooled
    /// connection it is prepared once and kept: PostgreSQL then neither parses nor
    /// plans it again (parsing and planning were 30% of PostgreSQL's CPU for
    /// single-ID marks sent unprepared, in a `perf` profile of the single-ID
    /// workload of `benches/peers/postgres.sh`). On a caller's connection nothing is
    /// left behind: the statement goes with its types, in one round trip.
    pub(crate) async fn query<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let Some(statements) = &self.statements else {
            return Ok(client.query_typed(sql, params).await?);
        };
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let statement = statements
            .prepare_typed(client.client(), sql, &types)
            .await?;
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        Ok(client.query(&statement, &values).await?)
    }

    /// The injected clock's time, if a clock was injected (else the database's
    /// clock decides).
    pub(crate) fn injected_now(&self) -> Option<i64> {
        self.clock
            .map(|c| i64::try_from(c.now().as_millis()).unwrap_or(i64::MAX))
    }

    /// The decision time: the injected clock's, else the database's (`db_now`).
    pub(crate) fn now(&self, db_now: i64) -> i64 {
        self.injected_now().unwrap_or(db_now)
    }
}

/// The first half of every advisory lock key: the schema's, so that authorities in
/// different schemas of one database never block each other.
pub(crate) fn lock_key(schema: &str) -> i32 {
    xxhash_rust::xxh3::xxh3_64(schema.as_bytes()) as i32
}

/// The client inside a pooled connection.
pub(crate) fn client(conn: &Object) -> &tokio_postgres::Client {
    conn
}

/// An owner token's fingerprint on PostgreSQL: the first 8 bytes of SHA-256(seed,
/// big-endian, then the token), as `owner_fp` in `functions.sql` computes it, so
/// that the SQL functions and the library compare owners alike.
pub(crate) fn owner_fp(owner: &str, seed: HashSeed) -> Result<OwnerFp, Error> {
    use sha2::{Digest, Sha256};
    OwnerFp::check(owner)?;
    let mut h = Sha256::new();
    h.update((seed.to_u64() as i64).to_be_bytes());
    h.update(owner.as_bytes());
    let digest = h.finalize();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    Ok(OwnerFp::from_u64(u64::from_be_bytes(first)))
}

/// An owner fingerprint as stored (`NULL` for none).
pub(crate) fn owner_param(owner: Option<OwnerFp>) -> Option<i64> {
    owner.map(|o| o.to_u64() as i64)
}

impl Pg {
    /// Connects, migrates the schema, loads the namespaces, and creates `default`
    /// when it does not exist.
    pub(crate) fn open(
        options: &PgOptions,
        durability: Durability,
        clock: Option<Arc<dyn Clock>>,
        reported_clock: Arc<dyn Clock>,
        default_config: NamespaceConfig,
        limits: Limits,
    ) -> Result<Self, Error> {
        schema::check_schema_name(&options.schema)?;
        if durability == Durability::Memory {
            return Err(Error::InvalidConfig {
                field: "durability",
                reason: "memory does not apply to PostgreSQL: a mark is acknowledged once its \
                         transaction commits (use flush or sync, which mean the same there)"
                    .into(),
            });
        }
        let config: tokio_postgres::Config =
            options
                .url
                .parse()
                .map_err(|e: tokio_postgres::Error| Error::InvalidConfig {
                    field: "store",
                    reason: format!("not a PostgreSQL URL: {e}"),
                })?;
        let manager =
            connect::Manager::new(&config, options.call_timeout, options.connect_timeout)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("oncely-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                path: "<postgres runtime>".into(),
                source: e,
            })?;
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::InvalidConfig {
                field: "store",
                reason: format!("cannot build the connection pool: {e}"),
            })?;
        let pg = Self {
            inner: Arc::new(PgInner {
                runtime: Some(runtime),
                pool,
                schema: options.schema.clone(),
                clock,
                reported_clock,
                durability,
                limits,
                call_timeout: options.call_timeout,
                connect_timeout: options.connect_timeout,
                namespaces: RwLock::new(HashMap::new()),
                health: Health::default(),
                rotations_deferred: AtomicU64::new(0),
                lanes: combine::Lanes::default(),
                closed: AtomicBool::new(false),
            }),
        };
        pg.block_on(async {
            let mut conn = pg.conn(pg.deadline()).await?;
            schema::migrate(&mut conn, &pg.inner.schema).await
        })?;
        if pg.namespace(NamespaceName::DEFAULT).is_err() {
            let _ = pg.configure_namespace(NamespaceName::DEFAULT, default_config)?;
        }
        Ok(pg)
    }

    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx::new(&self.inner.schema, self.inner.clock.as_deref())
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.inner.runtime.as_ref().expect("present until dropped")
    }

    /// A new call's deadline.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.call_timeout
    }

    /// Runs a future on the engine's runtime, recording the store's health: a write
    /// that committed clears a failure; one that failed for the store's sake (not
    /// for the caller's input, nor a lock another transaction held) records one.
    fn block_on<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let result = self.runtime().block_on(f);
        self.record_write(&result);
        result
    }

    /// Records a write's outcome in the store's health: a commit clears a failure;
    /// a failure for the store's sake (not for the caller's input, nor a lock
    /// another transaction held) records one.
    fn record_write<T>(&self, result: &Result<T, Error>) {
        match result {
            Ok(_) => self.record(&Ok(())),
            Err(e) if affects_health(e) => self.record(&Err(Error::Unavailable(e.to_string()))),
            Err(_) => {}
        }
    }

    /// As [`block_on`](Self::block_on), for calls that only read: their success says
    /// nothing of whether writes commit (with the synchronous standby gone, reads
    /// answer while every commit waits), so only their failures are recorded.
    fn block_on_read<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let result = self.runtime().block_on(f);
        if let Err(e) = &result
            && affects_health(e)
        {
            self.record(&Err(Error::Unavailable(e.to_string())));
        }
        result
    }

    fn record(&self, outcome: &Result<(), Error>) {
        self.inner
            .health
            .record(|| self.inner.reported_clock.now(), outcome);
    }

    /// A pooled connection, waiting for one until `deadline` at most.
    pub(crate) async fn conn(&self, deadline: Instant) -> Result<Object, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let wait = self
            .inner
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let timeouts = deadpool::managed::Timeouts {
            wait: Some(wait),
            create: Some(wait),
            recycle: Some(wait),
        };
        self.inner
            .pool
            .timeout_get(&timeouts)
            .await
            .map_err(|e| match e {
                deadpool::managed::PoolError::Backend(why) => Error::Unavailable(why.0),
                deadpool::managed::PoolError::Timeout(_) => Error::Unavailable(format!(
                    "no PostgreSQL connection within {} ms (every pooled connection busy, or \
                     no host answered in time; new connections start from {})",
                    wait.as_millis(),
                    self.inner.pool.manager().preferred_host()
                )),
                deadpool::managed::PoolError::Closed => Error::Closed,
                other => Error::Unavailable(with_causes(&other)),
            })
    }

    /// Runs `work` on a pooled connection until `deadline`. Past it, the connection
    /// leaves the pool (a statement still in flight on it would hold up its next
    /// user) and its statement is cancelled on the server, and the call fails
    /// saying that its outcome is unknown. A connection that broke, or that reached
    /// a server taking no writes, leaves the pool too.
    pub(crate) async fn session<T>(
        &self,
        deadline: Instant,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self.conn(deadline).await?;
        match tokio::time::timeout_at(deadline, work(&mut conn)).await {
            Ok(result) => {
                if let Err(e) = &result
                    && broken(e)
                {
                    let _ = Object::take(conn);
                }
                result
            }
            Err(_) => {
                self.abandon(conn);
                Err(Error::Unavailable(format!(
                    "PostgreSQL did not answer within {} ms (call_timeout): the call was \
                     abandoned, and whatever it sent may or may not have been committed",
                    self.inner.call_timeout.as_millis()
                )))
            }
        }
    }

    /// Takes a connection out of the pool and cancels what it runs on the server (a
    /// commit waiting for a synchronous standby that is gone, say), in the
    /// background and bounded: a frozen server never answers the cancel either.
    fn abandon(&self, conn: Object) {
        let cancel = conn.cancel_token();
        drop(Object::take(conn));
        // The idle connections opened before it may lead to the same server that
        // stopped answering: each would cost the next call its whole deadline.
        // Closing them costs a reconnect each, to the host that answers.
        let now = std::time::Instant::now();
        let _ = self.inner.pool.retain(|_, metrics| metrics.created > now);
        let bound = self.inner.call_timeout;
        self.runtime().spawn(async move {
            let _ = tokio::time::timeout(bound, cancel.cancel_query(tokio_postgres::NoTls)).await;
        });
    }

    /// A namespace's cache entry, loaded from the database when this node has not
    /// met it yet (another node may have created it).
    pub(crate) fn namespace(&self, name: &str) -> Result<Arc<NsCache>, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(ns) = self.cached(name) {
            return Ok(ns);
        }
        let valid = NamespaceName::new(name)?;
        let deadline = self.deadline();
        self.block_on_read(self.session(deadline, async |conn| {
            self.load(client(conn), &self.ctx(), &valid).await
        }))
    }

    /// A namespace's cache entry, if this node has one.
    pub(crate) fn cached(&self, name: &str) -> Option<Arc<NsCache>> {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(Arc::clone)
    }

    /// [`namespace`](Self::namespace) from async code, loading through `client`.
    pub(crate) async fn namespace_in<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        name: &str,
    ) -> Result<Arc<NsCache>, Error> {
        if let Some(ns) = self.cached(name) {
            return Ok(ns);
        }
        let valid = NamespaceName::new(name)?;
        self.load(client, &self.ctx(), &valid).await
    }

    /// Reads a namespace's ring through `client` and caches it: a new entry when the
    /// name now belongs to another namespace (deleted and created again, perhaps on
    /// another node), else the entry's ring brought up to date.
    pub(crate) async fn load<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        ctx: &Ctx<'_>,
        name: &NamespaceName,
    ) -> Result<Arc<NsCache>, Error> {
        let cached = self.cached(name.as_str());
        let Some(read) = ring::read(client, ctx, name, cached.as_deref()).await? else {
            self.uncache(name.as_str());
            return Err(Error::UnknownNamespace(name.to_string()));
        };
        let ns = match cached {
            Some(ns) if ns.id == read.id => ns,
            _ => {
                let ns = Arc::new(NsCache::new(read.id, name.clone(), read.seed));
                self.inner
                    .namespaces
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_string(), Arc::clone(&ns));
                ns
            }
        };
        ns.install(read.ring);
        Ok(ns)
    }

    /// Drops a namespace another node deleted from this node's cache.
    pub(crate) fn uncache(&self, name: &str) {
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.reported_clock
    }

    pub(crate) fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Rotations left for later because their namespace's lock was held too long.
    pub(crate) fn rotations_deferred(&self) -> u64 {
        self.inner.rotations_deferred.load(Ordering::Relaxed)
    }
}

/// An error's message followed by its causes': the pool's own says only "error
/// connecting to server", and the operator needs the reason after it (connection
/// refused, authentication failed, no such database).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Whether an error says something about the store's health (and so about
/// readiness): a connection lost or not had, a server that does not answer or
/// takes no writes, a server-side failure. Not: the caller's input refused, a lock
/// another transaction held past `lock_timeout`, a serialisation conflict, a
/// namespace waiting for its rotation. One caller's bad input must never make the
/// node unready for every other.
pub(crate) fn affects_health(e: &Error) -> bool {
    match e {
        Error::Unavailable(_) => true,
        Error::Postgres(pg) => match pg.code() {
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                // 22 data exceptions (a value the caller gave), 40 rollbacks, 55
                // objects in use (a lock not had in time), 25 a caller's transaction's
                // state, OC Oncely's own refusals: the call's own fate. (23, an
                // integrity violation on Oncely's own tables, is the store refusing
                // writes.)
                !(matches!(class, "22" | "40" | "55" | "25" | "OC")
                    && *code != SqlState::READ_ONLY_SQL_TRANSACTION)
            }
        },
        _ => false,
    }
}

/// Whether a connection must not go back to the pool: it is closed, or it reached a
/// server that takes no writes (a standby, a demoted primary), or a server shutting
/// down. The next connection looks for the primary afresh
/// (`target_session_attrs=read-write`).
pub(crate) fn broken(e: &Error) -> bool {
    match e {
        Error::Postgres(e) => {
            e.is_closed()
                || e.code().is_some_and(|c| {
                    *c == SqlState::READ_ONLY_SQL_TRANSACTION
                        || *c == SqlState::ADMIN_SHUTDOWN
                        || *c == SqlState::CRASH_SHUTDOWN
                        || *c == SqlState::CANNOT_CONNECT_NOW
                })
        }
        _ => false,
    }
}

/// Whether PostgreSQL chose the call as a deadlock's or a serialisation conflict's
/// victim: nothing was written, and it may start over.
pub(crate) fn retryable(e: &Error) -> bool {
    matches!(e, Error::Postgres(e) if e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    }))
}

/// Whether a statement gave up waiting for a lock (`lock_timeout`).
pub(crate) fn lock_timed_out(e: &Error) -> bool {
    matches!(e, Error::Postgres(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE))
}

/// The default of [`PgOptions::call_timeout`](crate::postgres::PgOptions::call_timeout):
/// under the daemon's `tracker_timeout` (5 s), so that a call that cannot finish
/// fails with its reason rather than a 504.
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// How long the pool waits for a connection before a call fails.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
