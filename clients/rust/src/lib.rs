//! A typed, async client of `oncelyd`, Oncely's shared dedup authority, and the wire
//! types of its HTTP API.
//!
//! A consumer service that calls a shared daemon needs only this crate: an HTTP
//! client, serde and tokio's timer, nothing of RocksDB or the server.
//!
//! ```no_run
//! use std::time::Duration;
//! use oncely_client::{Client, RetryPolicy, Verdict};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), oncely_client::Error> {
//! // A daemon started with `make run` (or `oncelyd serve`) listens here.
//! let client = Client::builder("http://127.0.0.1:7070")
//!     .timeout(Duration::from_secs(5))
//!     .retry(RetryPolicy::default().deadline(Duration::from_secs(10)))
//!     .build()?;
//!
//! // One delivery of two events from the broker: one fresh owner token for it,
//! // drawn by the client and reused by its retries.
//! let ids = ["order-1", "order-2"];
//! let marked = client.check_and_mark("default", &ids, None).await?;
//! for (id, verdict) in ids.iter().zip(&marked.verdicts) {
//!     if verdict.is_new() {
//!         println!("process {id}");
//!     }
//! }
//!
//! // The broker delivers order-1 again: a new delivery, so a new token. It was
//! // marked, so it is a duplicate: skip it.
//! let again = client.check_and_mark("default", &["order-1"], None).await?;
//! assert_eq!(again.verdicts, [Verdict::Duplicate]);
//! # Ok(())
//! # }
//! ```
//!
//! # Owner tokens: one per delivery attempt
//!
//! A mark or a claim may carry an owner token. It identifies **one delivery attempt
//! of one event**: draw a fresh token for every delivery the broker makes, and reuse
//! it only to retry the same request. The same owner marking an ID again gets its
//! original `new` back ([`Verdict::Replayed`]), because that can only be its own
//! retry after a lost answer: process the event. A fresh token on a redelivery gets
//! [`Verdict::Duplicate`]: skip it.
//!
//! Never use a worker's name as the token. When the broker redelivers an event to
//! the worker that already processed it, a per-worker token would come back
//! `Replayed` and the event would be processed twice. With `owner: None`,
//! [`Client::check_and_mark`] draws a fresh token per call and reuses it for that
//! call's retries, which is the recipe.
//!
//! # Verdicts
//!
//! Answers come back as [`Verdict`] and [`ClaimOutcome`], with their data, so a
//! `match` covers every case; lease ends are in milliseconds since the Unix epoch.
//! [`api`] holds the JSON bodies themselves.
//!
//! # Auto-batching
//!
//! Concurrent [`Client::check_and_mark`] calls share requests: a consumer with
//! many handlers, each marking the one event it holds, sends the daemon a few
//! requests of many IDs rather than one request per event. It is on by default,
//! because it costs an idle client nothing: a call goes at once, alone, unless its
//! lane (namespace, owner, retry policy) already has
//! [`Batching::max_in_flight`] requests in flight, and then it waits at most
//! [`Batching::window`] (1 ms by default), usually less: waiting calls go together
//! as soon as one of those requests is answered. Each call still gets its own
//! verdicts; a bad ID fails only its own call; retries replay a lost answer for
//! every call of the request. [`Batching`] says exactly what coalesced calls share,
//! [`Client::batching_stats`] how many requests they took, and
//! [`ClientBuilder::no_batching`] turns it off.
//!
//! # Retries
//!
//! Every method retries, up to [`RetryPolicy::attempts`] requests, when the request
//! may not have reached the daemon or the daemon said nothing was done: connection
//! errors, timeouts, an answer cut off mid-way, and `502`, `503`, `504`. It never
//! retries any other status: a `4xx` will not change by asking again, and a `500`
//! means a damaged store or a bug. Between attempts it waits with exponential
//! backoff and jitter; when the daemon asks for a wait (`Retry-After`, with every
//! `503`) it waits that long plus a random extra, so that clients shed together do
//! not come back together. The whole call, attempts and waits, ends within
//! [`RetryPolicy::deadline`] (15 s by default; [`Client::with_retry`] changes it per
//! call). [`RetryPolicy`] gives the exact budget.
//!
//! Retrying is safe because every call is idempotent for the daemon, given the
//! owner token above, which [`Client::check_and_mark`] keeps across its attempts.
//! Two calls need more care, and take it: a retried
//! [`release`](Client::release) or [`delete_namespace`](Client::delete_namespace)
//! whose earlier attempt may have done the work counts the daemon's "no claim of
//! yours" (409) or "no such namespace" (404) as success, and only then. Each method
//! documents its retries.
//!
//! # TLS
//!
//! An `https://` base URL connects with TLS (rustls, with its ring provider),
//! checking the daemon's certificate against the system's root certificates and
//! any given with [`ClientBuilder::add_root_certificate`], such as your own
//! certificate authority's for a daemon started with `oncelyd serve --tls-cert
//! FILE --tls-key FILE`. A certificate the client does not trust fails the call at
//! once with [`Error::Transport`], without retries: no request was sent, and
//! asking again would be refused again. (reqwest's rustls backend is built without
//! a process-wide crypto provider: this client brings its own configuration, but a
//! plain `reqwest::Client` elsewhere in your program, built with no TLS feature of
//! its own, then needs `rustls::crypto::ring::default_provider().install_default()`.)

mod batch;
mod client;
mod error;
mod outcome;
mod retry;
mod span;
mod tls;
mod whole;

pub mod api;

pub use batch::{BatchStats, Batching};
pub use client::{Client, ClientBuilder, Marked, bearer};
pub use error::Error;
pub use outcome::{ClaimOutcome, Configured, DropPolicy, Verdict};
pub use retry::RetryPolicy;
