//! What every request shares, whichever face it came in by: the tracker, the
//! limits, the tokens, the metrics and the gates ([`AppState`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oncely::Tracker;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::{combine, connection, extract, failures, metrics, openapi, store};
use crate::config::{AllowedOrigin, DEFAULT_MAX_CONNECTIONS, Settings};
use oncely_client::api::ErrorCode;

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
    /// Most namespaces, `default` included (the tracker refuses one more); it
    /// bounds the metrics' namespace series too.
    pub max_namespaces: u32,
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
            max_namespaces: s.max_namespaces,
        }
    }

    pub(super) const fn connections(&self) -> connection::ConnectionLimits {
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
pub(super) const TASK_PERMITS: u32 = 1 << 30;

/// What every handler shares: the tracker, limits, tokens, metrics and the gates.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub(super) inner: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) tracker: Tracker,
    pub(super) limits: Limits,
    pub(super) tokens: Vec<Box<[u8]>>,
    pub(super) allowed_origins: Vec<AllowedOrigin>,
    pub(super) metrics: Arc<metrics::Metrics>,
    pub(super) failures: failures::FailureLog,
    /// The store as the ticker's last probe saw it.
    pub(super) store: Arc<store::StoreWatch>,
    /// Admission: one permit per tracker request in progress.
    pub(super) admission: Arc<Semaphore>,
    /// The bytes request bodies may hold (see `extract`).
    pub(super) bodies: extract::BodyBudget,
    /// One permit per blocking task; shutdown takes them all to wait for the last.
    pub(super) tasks: Arc<Semaphore>,
    /// False once shutdown has begun (shared with the metrics' `ready` gauge).
    pub(super) ready: Arc<AtomicBool>,
    /// Held while a namespace's configuration is read, changed and written (PUT,
    /// PATCH, DELETE): configuration changes are rare, one lock for all is enough.
    pub(super) config: std::sync::Mutex<()>,
    /// Small marks of concurrent callers, written together (see `combine`).
    pub(super) combiner: combine::Combiner,
    /// `/v1/openapi.json`, with these limits in it.
    pub(super) openapi: axum::body::Bytes,
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
            &limits,
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
                combiner: combine::Combiner::default(),
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
                ErrorCode::StorageUnavailable,
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
}
