//! The PostgreSQL engine: any number of trackers and daemons, on any number of
//! nodes, share one database as one authority.
//!
//! The database decides: the open generation is its unique index (one `INSERT ... ON
//! CONFLICT DO NOTHING` wins each ID), the ring is one row per namespace changed only
//! under the namespace's exclusive advisory lock (marks hold the shared one), and time
//! is its clock. A node caches only what never changes once written: the Bloom
//! filters of sealed generations, built once from their exact tables and stored in
//! the database. See [`crate::postgres`] for the user's side and the SQL.
//!
//! The tracker's API is synchronous; this engine runs its queries on a small runtime
//! of its own. Call it from threads that may block, as any tracker call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, StatementCache};
use tokio_postgres::NoTls;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::clock::Clock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::hash::HashSeed;
use crate::id::EventId;
use crate::id::NamespaceName;
use crate::postgres::PgOptions;
use crate::tracker::Durability;
use crate::tracker::budget::Limits;
use crate::tracker::health::Health;

mod admin;
pub(crate) mod mark;
pub(crate) mod ops;
pub(crate) mod ring;
mod rotation;
pub(crate) mod schema;
pub(crate) mod single;

use ring::{NsCache, Ring};

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
    runtime: tokio::runtime::Runtime,
    pool: Pool,
    schema: String,
    /// Decision time: the database's clock, or an injected one (tests).
    clock: Option<Arc<dyn Clock>>,
    /// What [`Tracker::clock`](crate::Tracker::clock) hands out.
    reported_clock: Arc<dyn Clock>,
    /// As asked: on PostgreSQL both modes mean "acknowledged at `COMMIT`".
    durability: Durability,
    limits: Limits,
    namespaces: RwLock<HashMap<String, Arc<NsCache>>>,
    health: Health,
    closed: AtomicBool,
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
    pub(crate) fn on(mut self, conn: &deadpool_postgres::Object) -> Self {
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

    /// The decision time: the injected clock's, else the database's (`db_now`).
    pub(crate) fn now(&self, db_now: i64) -> i64 {
        self.clock.map_or(db_now, |c| {
            i64::try_from(c.now().as_millis()).unwrap_or(i64::MAX)
        })
    }
}

/// The first half of every advisory lock key: the schema's, so that authorities in
/// different schemas of one database never block each other.
fn lock_key(schema: &str) -> i32 {
    xxhash_rust::xxh3::xxh3_64(schema.as_bytes()) as i32
}

/// The client inside a pooled connection.
pub(crate) fn client(conn: &deadpool_postgres::Object) -> &tokio_postgres::Client {
    conn
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("oncely-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                path: "<postgres runtime>".into(),
                source: e,
            })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
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
                runtime,
                pool,
                schema: options.schema.clone(),
                clock,
                reported_clock,
                durability,
                limits,
                namespaces: RwLock::new(HashMap::new()),
                health: Health::default(),
                closed: AtomicBool::new(false),
            }),
        };
        pg.block_on(async {
            let mut conn = pg.conn().await?;
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

    /// Runs a future on the engine's runtime, recording storage health.
    fn block_on<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let result = self.inner.runtime.block_on(f);
        let outcome = result.as_ref().map(|_| ()).map_err(clone_kind);
        self.inner
            .health
            .record(|| self.inner.reported_clock.now(), &outcome);
        result
    }

    /// A pooled connection.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(with_causes(&e)))
    }

    /// A namespace's cache entry, loaded from the database when this node has not
    /// met it yet (another node may have created it).
    pub(crate) fn namespace(&self, name: &str) -> Result<Arc<NsCache>, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(ns) = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return Ok(Arc::clone(ns));
        }
        let valid = NamespaceName::new(name)?;
        self.block_on(self.load_namespace(valid))
    }

    async fn load_namespace(&self, name: NamespaceName) -> Result<Arc<NsCache>, Error> {
        let conn = self.conn().await?;
        self.load_namespace_with(&**conn, name).await
    }

    /// [`namespace`](Self::namespace) from async code, loading through `client`.
    pub(crate) async fn namespace_in<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        name: &str,
    ) -> Result<Arc<NsCache>, Error> {
        if let Some(ns) = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return Ok(Arc::clone(ns));
        }
        let valid = NamespaceName::new(name)?;
        self.load_namespace_with(client, valid).await
    }

    async fn load_namespace_with<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        name: NamespaceName,
    ) -> Result<Arc<NsCache>, Error> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT id, seed FROM {}.namespaces WHERE name = $1",
                    self.inner.schema
                ),
                &[&name.as_str()],
            )
            .await?
            .ok_or_else(|| Error::UnknownNamespace(name.to_string()))?;
        let seed: i64 = row.get(1);
        let ns = Arc::new(NsCache {
            id: row.get(0),
            name: name.clone(),
            seed: HashSeed::from_u64(seed as u64),
            ring: RwLock::new(Arc::new(Ring::empty())),
        });
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), Arc::clone(&ns));
        Ok(ns)
    }

    /// Forgets a namespace another node deleted.
    fn forget(&self, name: &str) {
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

    /// Never answers without the database: gives up at once, having marked nothing.
    // The engines share one call shape; this one needs nothing of itself.
    #[allow(clippy::unused_self)]
    pub(crate) fn try_check_and_mark<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Option<Vec<crate::Verdict>>, Error> {
        let _ = (
            EventId::batch(ids)?,
            owner
                .map(|o| OwnerFp::new(o, HashSeed::from_u64(0)))
                .transpose()?,
        );
        NamespaceName::new(namespace)?;
        Ok(None)
    }

    /// As [`try_check_and_mark`](Self::try_check_and_mark).
    #[allow(clippy::unused_self)]
    pub(crate) fn try_check<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
    ) -> Result<Option<Vec<crate::Verdict>>, Error> {
        let _ = EventId::batch(ids)?;
        NamespaceName::new(namespace)?;
        Ok(None)
    }
}

/// An error's message followed by its causes': the pool's own says only "error
/// connecting to server", and the operator needs the reason after it (connection
/// refused, authentication failed, no such database).
fn with_causes(e: &dyn std::error::Error) -> String {
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

/// A copy of an error good enough for the health record (which keeps its message).
fn clone_kind(e: &Error) -> Error {
    match e {
        // Refusals say nothing about the database's health.
        Error::InvalidConfig { .. }
        | Error::InvalidId { .. }
        | Error::InvalidNamespace { .. }
        | Error::InvalidArgument { .. }
        | Error::InvalidOwner(_)
        | Error::Conflict(_)
        | Error::UnknownNamespace(_)
        | Error::Refused(_)
        | Error::WouldDrop { .. }
        | Error::MissingFields(_)
        | Error::OverBudget { .. }
        | Error::TooManyNamespaces { .. }
        | Error::WouldBlock => Error::WouldBlock,
        other => Error::Unavailable(other.to_string()),
    }
}

impl Ring {
    /// A ring no transaction has read yet: version 0 never matches the database's.
    pub(crate) fn empty() -> Self {
        Self {
            version: 0,
            config: NamespaceConfig::default(),
            open: 1,
            floor: 1,
            oldest: 1,
            open_opened_at: 0,
            sealed: Vec::new(),
        }
    }
}

/// How long the pool waits for a connection before a call fails.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
