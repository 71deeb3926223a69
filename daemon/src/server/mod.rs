//! `oncelyd serve`: the shared HTTP dedup authority.
//!
//! * [`app`] builds the axum application around an [`AppState`] (tests drive it
//!   with `tower::ServiceExt::oneshot`, no socket needed).
//! * [`run_with`] serves an application on a bound listener until a stop request,
//!   then drains, shuts down and closes the tracker ([`run`] is the same with no
//!   drain delay and one stop future); [`serve`] does everything from
//!   [`Settings`]: opens the tracker, declares namespaces, binds, and runs until
//!   SIGINT or SIGTERM.
//!
//! # Request path
//!
//! Outermost first: the connection (hyper's HTTP/1.1, with its own malformed-request
//! answers turned into the JSON error shape, see `raw_errors`), a panic guard (a last
//! resort: no input is meant to panic), the metrics recorder (which counts every
//! answer, refusals included), the browser guard (foreign `Origin`: 403; a body that
//! is not declared JSON: 415), bearer authentication, then the route. A route with
//! a body reads it whole first, within `body_read_timeout` (else 408), refusing one
//! over `max_body_bytes` (413, at once for a declared `Content-Length`), and charging
//! the bytes as they arrive against `max_body_bytes_in_flight`, so that bodies being
//! read cannot take more memory than that (503 when the budget stays spent; see
//! `extract`). Routes that touch the tracker then take an admission permit
//! (`Admitted`), shedding load with an immediate 503 when `max_concurrency` requests
//! are already in progress instead of queueing without bound, and do their work on
//! the blocking pool. Admission comes after the body, so that clients sending their
//! bodies slowly hold no permit: 300 connections each stalled one byte into a body
//! used to take every permit and starve every other client for as long as they
//! stayed open.
//!
//! # Deadlines
//!
//! No request waits on the tracker longer than `tracker_timeout`: past it, the
//! answer is 504 `deadline_exceeded`. The tracker call is not abandoned (a thread of
//! the blocking pool cannot be stopped, and a write half-done must not be): it
//! finishes, keeping its admission permit until then, and what it did stands. The
//! answer says so, since the outcome is unknown to the client: a retry with the same
//! owner token gets the marks of the first attempt back as `new`, `replayed: true`.
//!
//! # Why the blocking pool
//!
//! A tracker call may wait on RocksDB (a write stall, an fsync in `sync` mode, a
//! read from disk on a filter hit), or on PostgreSQL (each call is a transaction of
//! a few round trips, run by the library on a runtime of its own), so it runs in
//! `tokio::task::spawn_blocking`, not on an async worker. That is also what makes the daemon fast: concurrent
//! requests reach RocksDB from separate threads at the same moment, and RocksDB's
//! group commit folds their writes into one WAL append (one fsync in `sync` mode)
//! for the whole group. The admission limit bounds how many blocking threads
//! requests can occupy.
//!
//! The exception is a small check-and-mark or check: it is first tried on the async
//! worker with [`Tracker::try_check_and_mark`] or [`Tracker::try_check`], which give
//! up, having changed nothing, rather than wait for anything but the namespace's
//! lock and handing a write to the operating system (`AppState::inline`); under
//! `sync` durability a mark always gives up, and on PostgreSQL every call does
//! (after validating it). For single-ID requests the hop to the blocking pool and
//! back had been half the CPU; most now never make it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use oncely::{DropPolicy, Durability, Tracker};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Error;
use crate::config::{AllowedOrigin, DEFAULT_MAX_CONNECTIONS, Settings, human_bytes};

mod auth;
mod connection;
pub mod descriptors;
mod error;
mod extract;
mod failures;
mod gate;
mod guard;
mod metrics;
mod openapi;
mod raw_errors;
mod routes;
mod shutdown;
mod store;
mod wire;

pub use error::ApiError;
pub use shutdown::{
    FORCED_WAIT, ShutdownTiming, StopHandle, Stops, run, run_with, shutdown_signal,
};

/// The content type of every JSON answer.
pub(crate) const JSON: &str = "application/json";

/// Request and connection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most IDs in one check or check-and-mark (more: 400 `too_many_ids`).
    pub max_ids: usize,
    /// Largest request body in bytes (more: 413 `payload_too_large`).
    pub max_body_bytes: usize,
    /// Most bytes request bodies may hold at once, charged as they arrive (a body
    /// the budget cannot make room for within a second: 503 `overloaded`).
    pub max_body_bytes_in_flight: usize,
    /// Most tracker requests in progress at once (more: 503 `overloaded`).
    pub max_concurrency: usize,
    /// Longest wait of a request on the tracker (then 504 `deadline_exceeded`).
    pub tracker_timeout: Duration,
    /// Longest time a body may take to arrive (then 408 `request_timeout`).
    pub body_read_timeout: Duration,
    /// Longest time a request head may take to arrive from its first byte (then
    /// the connection is closed).
    pub header_read_timeout: Duration,
    /// Longest time a connection may stay open with no request under way.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Limits {
    fn from_settings(s: &Settings) -> Self {
        Self {
            max_ids: s.max_ids,
            max_body_bytes: s.max_body_bytes,
            max_body_bytes_in_flight: s.max_body_bytes_in_flight,
            max_concurrency: s.max_concurrency,
            tracker_timeout: s.tracker_timeout,
            body_read_timeout: s.body_read_timeout,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        }
    }

    const fn connections(&self) -> connection::ConnectionLimits {
        connection::ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

/// Permits of the task gate: far more than requests can ever hold at once (they are
/// bounded by `max_concurrency`), so only shutdown, taking them all, ever waits.
const TASK_PERMITS: u32 = 1 << 30;

/// What every handler shares: the tracker, limits, tokens, metrics and the gates.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    tracker: Tracker,
    limits: Limits,
    tokens: Vec<Box<[u8]>>,
    allowed_origins: Vec<AllowedOrigin>,
    metrics: Arc<metrics::Metrics>,
    failures: failures::FailureLog,
    /// The store as the ticker's last probe saw it.
    store: Arc<store::StoreWatch>,
    /// Admission: one permit per tracker request in progress.
    admission: Arc<Semaphore>,
    /// The bytes request bodies may hold (see `extract`).
    bodies: extract::BodyBudget,
    /// One permit per blocking task; shutdown takes them all to wait for the last.
    tasks: Arc<Semaphore>,
    /// False once shutdown has begun (shared with the metrics' `ready` gauge).
    ready: Arc<AtomicBool>,
    /// Held while a namespace's configuration is read, changed and written (PUT,
    /// PATCH, DELETE): configuration changes are rare, one lock for all is enough.
    config: std::sync::Mutex<()>,
    /// `/v1/openapi.json`, with these limits in it.
    openapi: axum::body::Bytes,
}

impl std::fmt::Debug for Shared {
    // By hand, so that no log line or panic message ever shows a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tracker", &self.tracker)
            .field("limits", &self.limits)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("allowed_origins", &self.allowed_origins)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State around an open tracker. With `tokens` non-empty, requests need one of
    /// them as a bearer token. No origin is allowed (see [`Self::from_settings`]).
    pub fn new(tracker: Tracker, limits: Limits, tokens: &[String]) -> Self {
        Self::with_origins(tracker, limits, tokens, Vec::new())
    }

    fn with_origins(
        tracker: Tracker,
        limits: Limits,
        tokens: &[String],
        allowed_origins: Vec<AllowedOrigin>,
    ) -> Self {
        let ready = Arc::new(AtomicBool::new(true));
        let store = Arc::new(store::StoreWatch::default());
        let bodies = extract::BodyBudget::new(limits.max_body_bytes_in_flight);
        let metrics = Arc::new(metrics::Metrics::new(
            tracker.clone(),
            Arc::clone(&ready),
            Arc::clone(&store),
            bodies.clone(),
        ));
        Self {
            inner: Arc::new(Shared {
                tracker,
                limits,
                tokens: tokens.iter().map(|t| Box::from(t.as_bytes())).collect(),
                allowed_origins,
                metrics,
                failures: failures::FailureLog::new(),
                store,
                admission: Arc::new(Semaphore::new(limits.max_concurrency)),
                bodies,
                tasks: Arc::new(Semaphore::new(TASK_PERMITS as usize)),
                ready,
                config: std::sync::Mutex::new(()),
                openapi: openapi::document_bytes(limits),
            }),
        }
    }

    /// State from resolved settings: limits, tokens and allowed origins.
    pub fn from_settings(tracker: Tracker, settings: &Settings) -> Self {
        let limits = Limits::from_settings(settings);
        Self::with_origins(
            tracker,
            limits,
            &settings.tokens,
            settings.allowed_origins.clone(),
        )
    }

    /// The tracker.
    #[must_use]
    pub fn tracker(&self) -> &Tracker {
        &self.inner.tracker
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Whether the daemon is not shutting down: true from construction until
    /// shutdown begins. (`/readyz` also needs the store's writes to succeed.)
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Marks the daemon ready or not (shutdown sets it to false first thing, so load
    /// balancers stop sending traffic while in-flight requests finish).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// What `/readyz` answers: ready, unless shutdown has begun or the store's
    /// writes are failing (from a failed write until one succeeds; with no client
    /// writing, the ticker's heartbeat write is the one that finds out). With
    /// `detail`, a store failure's message includes the store's error, which can
    /// name the data directory's files or the database's servers: `/readyz` needs
    /// no token, so it gives the detail only to a caller that proves one (and the
    /// log has it, once, when the failure begins).
    ///
    /// # Errors
    ///
    /// 503 `shutting_down` or `storage_unavailable`.
    pub fn readiness(&self, detail: bool) -> Result<(), ApiError> {
        if !self.is_ready() {
            return Err(ApiError::shutting_down());
        }
        if let Some(failure) = self.inner.tracker.storage_failure() {
            let since = failure.since.as_millis();
            let message = if detail {
                format!(
                    "the store's writes are failing (since {since} ms after the epoch): {}",
                    failure.error
                )
            } else {
                format!(
                    "the store's writes are failing (since {since} ms after the epoch); the \
                     daemon's log has the store's error (and so does this answer, to a \
                     caller with a token)"
                )
            };
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            ));
        }
        Ok(())
    }

    pub(crate) fn tokens(&self) -> &[Box<[u8]>] {
        &self.inner.tokens
    }

    /// The OpenAPI document served, with this server's limits.
    pub(crate) fn openapi_document(&self) -> axum::body::Bytes {
        self.inner.openapi.clone()
    }

    /// The configuration lock (see `Shared::config`).
    pub(crate) fn config_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn allowed_origins(&self) -> &[AllowedOrigin] {
        &self.inner.allowed_origins
    }

    pub(crate) fn failures(&self) -> &failures::FailureLog {
        &self.inner.failures
    }

    pub(crate) fn store_watch(&self) -> &store::StoreWatch {
        &self.inner.store
    }

    pub(crate) fn body_budget(&self) -> &extract::BodyBudget {
        &self.inner.bodies
    }

    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    pub(crate) fn metrics_handle(&self) -> Arc<metrics::Metrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// Runs `f` here, on an async worker, for a call that gives up (`Ok(None)`)
    /// rather than wait; the caller then goes to the blocking pool.
    pub(crate) fn inline<T>(
        &self,
        f: impl FnOnce(&Tracker) -> Result<Option<T>, ApiError>,
    ) -> Result<Option<T>, ApiError> {
        // As on the blocking pool: nothing new starts once shutdown has begun.
        let Ok(_task) = Arc::clone(&self.inner.tasks).try_acquire_owned() else {
            return Err(ApiError::shutting_down());
        };
        // (A panic here unwinds this request's task only; `CatchPanicLayer`
        // answers it with a 500.)
        match f(&self.inner.tracker) {
            // After close, the tracker refuses calls: that is a shutdown.
            Err(e) if e.code() == "refused" && !self.is_ready() => Err(ApiError::shutting_down()),
            result => result,
        }
    }

    /// Runs `f` on the blocking pool, holding the request's admission permit until
    /// it returns (not merely until the client goes away), so `max_concurrency`
    /// bounds the tracker calls actually running.
    pub(crate) async fn blocking<T, F>(&self, admitted: Admitted, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Tracker) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking_unadmitted(move |tracker| {
            let _admitted = admitted;
            f(tracker)
        })
        .await
    }

    /// Takes an admission permit, or answers 503 `overloaded` at once.
    pub(crate) fn admit(&self) -> Result<Admitted, ApiError> {
        match Arc::clone(&self.inner.admission).try_acquire_owned() {
            Ok(permit) => Ok(Admitted(permit)),
            Err(_) => {
                self.metrics().shed();
                Err(ApiError::overloaded(self.limits().max_concurrency))
            }
        }
    }

    /// Runs `f` on the blocking pool without an admission permit, waiting for it
    /// at most `tracker_timeout` (see the module's "Deadlines").
    pub(crate) async fn blocking_unadmitted<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Tracker) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        // Fails only once shutdown has taken every permit: nothing new starts then.
        let Ok(task) = Arc::clone(&self.inner.tasks).try_acquire_owned() else {
            return Err(ApiError::shutting_down());
        };
        let tracker = self.inner.tracker.clone();
        // Who got there first: the call finishing, or its waiter giving up. Decided
        // once, so that a call finishing as the deadline passes is answered, never
        // hidden behind a 504.
        let race = Arc::new(AtomicU8::new(RUNNING));
        let worker_race = Arc::clone(&race);
        let metrics = self.metrics_handle();
        let mut handle = tokio::task::spawn_blocking(move || {
            let _task = task;
            let result = f(&tracker);
            if worker_race
                .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                metrics.late_call();
                tracing::warn!(
                    ok = result.is_ok(),
                    "a tracker call finished after its request was answered 504; what it did stands"
                );
            }
            result
        });
        let timeout = self.limits().tracker_timeout;
        let joined = match tokio::time::timeout(timeout, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                if race
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(ApiError::deadline_exceeded(timeout));
                }
                // It finished just now: its answer is ready.
                handle.await
            }
        };
        match joined {
            Ok(Ok(t)) => Ok(t),
            // After close, the tracker refuses calls: that is a shutdown, not a
            // conflict.
            Ok(Err(e)) if e.code() == "refused" && !self.is_ready() => {
                Err(ApiError::shutting_down())
            }
            Ok(Err(e)) => Err(e),
            Err(join) => {
                tracing::error!(error = %join, "a request handler panicked");
                Err(ApiError::internal("the request failed unexpectedly"))
            }
        }
    }
}

/// States of a tracker call's race against its deadline.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

/// An admission permit: one of `max_concurrency`. Taking it fails at once, with 503
/// `overloaded`, when all are in use; the request then does nothing. Routes with a
/// body take it once the body is read ([`AppState::admit`]); routes without one,
/// as an extractor.
#[derive(Debug)]
pub(crate) struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.admit()
    }
}

/// Every route, registered together with its OpenAPI description.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::check_and_mark))
        .routes(routes!(routes::check))
        .routes(routes!(routes::claim))
        .routes(routes!(routes::complete))
        .routes(routes!(routes::release))
        .routes(routes!(
            routes::put_namespace,
            routes::patch_namespace,
            routes::get_namespace,
            routes::delete_namespace
        ))
        .routes(routes!(routes::list_namespaces))
        .routes(routes!(routes::put_checkpoint, routes::get_checkpoint))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::openapi_json))
}

/// The OpenAPI document of every route [`app`] serves, as generated from the code.
/// (`/v1/openapi.json` adds the limits of the running server: see [`openapi_json`].)
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    openapi::add_refusals(&mut doc);
    doc
}

/// The OpenAPI document a server with these limits serves at `/v1/openapi.json`.
#[must_use]
pub fn openapi_json(limits: Limits) -> serde_json::Value {
    openapi::document(limits)
}

/// The daemon's HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    router
        // Both must come after the routes: they wrap what exists.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            tracing::error!("a request panicked");
            ApiError::internal("the request failed unexpectedly").into_response()
        }))
        .with_state(state)
}

/// Opens the tracker the settings describe, on the blocking pool (recovery reads
/// snapshots and may scan an exact table; PostgreSQL is connected to and its schema
/// created or migrated).
///
/// # Errors
///
/// [`Error::Open`] naming the data directory; [`Error::OpenStore`] naming the
/// PostgreSQL store (password masked).
pub async fn open_tracker(settings: &Settings) -> Result<Tracker, Error> {
    let mut builder = Tracker::builder()
        .durability(settings.durability)
        .max_filter_bytes(settings.max_filter_bytes)
        .max_namespaces(settings.max_namespaces);
    if let Some(declared) = settings.namespaces.get(oncely::NamespaceName::DEFAULT) {
        builder = builder.default_config(declared.config.clone());
    }
    if let Some(store) = &settings.store {
        builder = builder.postgres(
            oncely::postgres::PgOptions::new(store.expose()).pool_size(settings.store_pool_size),
        );
        let opened = tokio::task::spawn_blocking(move || builder.open())
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
        return opened.map_err(|source| Error::OpenStore {
            store: store.redacted(),
            source,
        });
    }
    builder = builder.rocks_options(settings.rocks);
    let path = if settings.durability == Durability::Memory {
        std::path::PathBuf::new()
    } else {
        builder = builder.path(&settings.data_dir);
        settings.data_dir.clone()
    };
    let opened = tokio::task::spawn_blocking(move || builder.open())
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
    opened.map_err(|source| match source {
        // Only the `default` namespace is created at open: the budget cannot hold it.
        oncely::Error::OverBudget { .. } => Error::Config {
            setting: "max_filter_bytes",
            reason: format!("cannot hold the default namespace: {source}"),
        },
        source => Error::Open { path, source },
    })
}

/// Creates or updates the namespaces the settings declare; one whose configuration
/// is already the declared one is left alone.
///
/// A change that would drop live generations or exact tables (and so forget
/// remembered IDs) needs `drop_now` in its table. Every change that drops nothing
/// is applied first; then, unless a table without `drop_now` would drop something
/// (which stops start-up with nothing dropped), the changes that drop.
///
/// # Errors
///
/// [`Error::NamespaceWouldDrop`] naming the namespace and what would be dropped;
/// [`Error::Namespace`] naming the namespace for anything else.
pub async fn declare_namespaces(tracker: &Tracker, settings: &Settings) -> Result<(), Error> {
    let tracker = tracker.clone();
    let namespaces = settings.namespaces.clone();
    tokio::task::spawn_blocking(move || {
        let mut dropping = Vec::new();
        for (name, declared) in &namespaces {
            if tracker
                .namespace_info(name)
                .is_ok_and(|info| info.config == declared.config)
            {
                tracing::info!(namespace = %name, "namespace unchanged from the configuration");
                continue;
            }
            match tracker.configure_namespace_with(name, declared.config.clone(), DropPolicy::Refuse)
            {
                Ok(configured) => {
                    tracing::info!(namespace = %name, ?configured, "namespace declared by the configuration");
                }
                Err(oncely::Error::WouldDrop {
                    generations,
                    exact_tables,
                }) => {
                    if !declared.drop_now {
                        return Err(Error::NamespaceWouldDrop {
                            namespace: name.clone(),
                            generations,
                            exact_tables,
                        });
                    }
                    dropping.push((name, declared, generations, exact_tables));
                }
                Err(source) => {
                    return Err(Error::Namespace {
                        namespace: name.clone(),
                        source,
                    });
                }
            }
        }
        for (name, declared, generations, exact_tables) in dropping {
            let _updated = tracker
                .configure_namespace_with(name, declared.config.clone(), DropPolicy::DropNow)
                .map_err(|source| Error::Namespace {
                    namespace: name.clone(),
                    source,
                })?;
            tracing::warn!(
                namespace = %name,
                generations,
                exact_tables,
                "namespace reconfigured with drop_now: generations and exact tables dropped"
            );
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Serve(std::io::Error::other(e)))?
}

/// The async runtime `serve` runs on: `settings.worker_threads` workers, or one per
/// CPU the process may use. The count is always given to tokio, so that its own
/// `TOKIO_WORKER_THREADS` is never read: unchecked, it panics on a typo and
/// bypasses the cap (the settings warn when it is set).
///
/// # Errors
///
/// [`Error::Runtime`] if the runtime cannot start.
pub fn runtime(settings: &Settings) -> Result<tokio::runtime::Runtime, Error> {
    let workers = settings.worker_threads.unwrap_or_else(|| {
        // Counts the process's CPU affinity and its cgroup's quota.
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("oncelyd")
        .build()
        .map_err(Error::Runtime)
}

/// Runs the daemon the settings describe until SIGINT or SIGTERM (on the runtime
/// [`runtime`] builds, for `worker_threads` to apply): logs the
/// settings' warnings, opens the tracker, declares the configured namespaces,
/// binds, serves, then drains and shuts down (see [`run_with`]).
///
/// # Errors
///
/// Start-up failures ([`Error::Open`], [`Error::NamespaceWouldDrop`],
/// [`Error::Namespace`], [`Error::Bind`]), [`Error::Serve`], [`Error::Close`] and
/// [`Error::Interrupted`].
pub async fn serve(settings: Settings) -> Result<(), Error> {
    // Installed first: a signal during start-up then stops the daemon cleanly once
    // it is up, rather than killing it mid-way.
    let stops = Stops::os_signals();
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let files = descriptors::raise_limit();
    if let Some(from) = files.raised_from {
        tracing::info!(from, to = ?files.soft, "raised the limit on open files to the hard limit");
    }
    let tracker = open_tracker(&settings).await?;
    let started = async {
        declare_namespaces(&tracker, &settings).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.listen,
                source,
            })?;
        // Counted once the store and the listener are open.
        let in_use = descriptors::open_now().unwrap_or(0);
        let cap = descriptors::connection_cap(settings.max_connections, files, in_use)?;
        Ok((listener, cap))
    }
    .await;
    let (listener, (max_connections, cap_warning)) = match started {
        Ok(started) => started,
        Err(e) => {
            let t = tracker.clone();
            // Best effort: the error to report is the start-up failure.
            let _ = tokio::task::spawn_blocking(move || t.close()).await;
            return Err(e);
        }
    };
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let settings = Settings {
        max_connections: Some(max_connections),
        ..settings
    };
    // On the blocking pool: on PostgreSQL it reads the namespaces from the database.
    let budget = {
        let tracker = tracker.clone();
        tokio::task::spawn_blocking(move || tracker.filter_budget())
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?
    };
    let state = AppState::from_settings(tracker, &settings);
    // The first probe logs the server a PostgreSQL store is on; later ones a change.
    let probing = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        probing.store_watch().probe(probing.tracker());
    })
    .await;
    let auth = if settings.tokens.is_empty() {
        "off"
    } else {
        "bearer"
    };
    if let Some(warning) = cap_warning {
        tracing::warn!("{warning}");
    }
    if budget.charged > settings.max_filter_bytes {
        tracing::warn!(
            "the namespaces are charged {} of filter memory, over max_filter_bytes {}: \
             creating namespaces and growing them are refused until namespaces are deleted \
             or shrunk, or the budget is raised",
            human_bytes(budget.charged),
            human_bytes(settings.max_filter_bytes)
        );
    }
    // One line says where it listens, what it keeps and where: the process tests
    // read the bound address from `listen=`.
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    if let Some(store) = &settings.store {
        let host = state.store_watch().seen().host;
        tracing::info!(
            listen = %addr,
            store = %store,
            store_host = %host.as_deref().unwrap_or("(not reached)"),
            store_pool_size = settings.store_pool_size,
            auth,
            max_concurrency = settings.max_concurrency,
            max_body_bytes_in_flight = settings.max_body_bytes_in_flight,
            max_connections,
            worker_threads,
            max_filter_bytes = settings.max_filter_bytes,
            filter_bytes_charged = budget.charged,
            "oncelyd listening on http://{addr}"
        );
    } else {
        let data_dir = if settings.durability == Durability::Memory {
            "(none: memory durability)".to_owned()
        } else {
            settings.data_dir.display().to_string()
        };
        tracing::info!(
            listen = %addr,
            data_dir = %data_dir,
            durability = %settings.durability,
            auth,
            max_concurrency = settings.max_concurrency,
            max_body_bytes_in_flight = settings.max_body_bytes_in_flight,
            max_connections,
            worker_threads,
            max_filter_bytes = settings.max_filter_bytes,
            filter_bytes_charged = budget.charged,
            "oncelyd listening on http://{addr}"
        );
    }
    let timing = ShutdownTiming {
        drain_delay: settings.drain_delay,
        grace: settings.shutdown_grace,
    };
    run_with(listener, state, stops, timing).await
}

/// How often the ticker seals generations whose span has passed.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
