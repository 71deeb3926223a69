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

mod auth;
mod authority;
mod combine;
pub(crate) mod connection;
pub mod descriptors;
pub(crate) mod error;
mod extract;
mod failures;
mod gate;
mod guard;
pub(crate) mod metrics;
mod notify;
mod openapi;
mod process_metrics;
mod raw_errors;
mod router;
mod routes;
mod shutdown;
mod start;
mod state;
mod store;
pub(crate) mod tls;
mod wire;

use std::time::Duration;

pub(crate) use authority::{Admitted, MarkCall};
pub use error::ApiError;
pub use router::{app, openapi, openapi_json};
pub use shutdown::{
    FORCED_WAIT, RespFace, ShutdownTiming, StopHandle, Stops, run, run_faces, run_with,
    shutdown_signal,
};
pub use start::{declare_namespaces, open_tracker, runtime, serve};
use state::TASK_PERMITS;
pub use state::{AppState, Limits};
pub use tls::Tls;

/// The content type of every JSON answer.
pub(crate) const JSON: &str = "application/json";

/// How often the ticker seals generations whose span has passed.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
