//! Extractors whose rejections are [`ApiError`]s, so that axum's own failures (a
//! bad path segment) answer in the same JSON shape as ours, and the body reader.
//!
//! # Bodies and their memory
//!
//! A body is read whole before its request is admitted (see the server's module
//! docs), so the number of bodies being read is bounded only by the connections:
//! with the defaults, 4,096 of up to 4 MiB each, 16 GiB. A daemon in a 768 MiB
//! container was OOM-killed by 186 connections each sending a 4 MiB body one byte
//! short. So the bytes bodies hold are charged, as they arrive, against one budget,
//! `max_body_bytes_in_flight` ([`BodyBudget`]):
//!
//! * A body is copied, chunk by chunk, into a buffer of its own, and each chunk
//!   hyper handed over is dropped at once: what a body holds is its buffer, and the
//!   buffer's capacity is what it is charged. (Each chunk is a slice of one of
//!   hyper's read buffers, of at least 8 KiB, and keeps all of it alive: a body
//!   that kept its chunks, as collecting them does, would keep a read buffer per
//!   chunk however small, 8 KiB per byte for a body trickling in a byte a
//!   segment.)
//! * The buffer grows, and is charged, only as bytes arrive (doubling, up to the
//!   declared length), so a body that stalls holds no more than it has sent, at
//!   most twice that. The charge is given back when the request is done with its
//!   body.
//! * A new body that would take the budget over waits for bytes to come back, at
//!   most [`BODY_BUDGET_WAIT`], then is answered 503 `overloaded` with
//!   `Retry-After` (and the connection closed: the rest of the body may still
//!   come). A body that already holds part of the budget and cannot grow is
//!   answered so at once, giving its part back: bodies that waited holding their
//!   parts waited for each other. 400 bodies of 4 MiB arriving at once each took a
//!   slice of a 64 MiB budget, none could finish, all were refused a second later,
//!   and the rounds that followed went the same way: 9.3 s until the attack was
//!   over (`body_memory.rs`). Refused at once instead, the bodies that cannot fit
//!   make room for those that can.
//! * A body of at most [`UNCHARGED_BODY_BYTES`] is not charged, so that small
//!   requests, nearly all of them, never wait behind large ones, and pay nothing for
//!   the budget. Each connection reads one body at a time, and bodies being handled
//!   hold admission permits, so these add at most `(max_connections +
//!   max_concurrency)` × 4 KiB (17 MiB with the defaults).
//! * A declared `Content-Length` over `max_body_bytes` is answered 413 before any of
//!   the body is read (and before hyper sends `100 Continue`); a body without one
//!   (chunked) gets 413 as soon as what has arrived is over the limit.
//!
//! The memory of bodies is thus at most `max_body_bytes_in_flight` + 4 KiB for each
//! connection and admitted request, beside each connection's read buffer
//! (`connection::READ_BUFFER_BYTES`, 64 KiB), which also holds the first piece of a
//! body waiting for room. Against 400 connections each sending 4 MiB one byte
//! short, a daemon in a 512 MiB cgroup (budget 64 MiB) grew from 24.5 MiB resident
//! to 140 to 166 MiB (15 runs; jemalloc keeps freed pages a while), and kept
//! answering (`body_memory.rs`).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::error::{ApiError, json_error};
use oncely_client::api::ErrorCode;

/// Bodies whose buffer is at most this size are not charged against the budget
/// (see the module docs). It is also the size up to which a check-and-mark is first
/// tried on the async worker (`routes::INLINE_BODY_BYTES`): a single-ID body is
/// about 60 bytes, a 100-ID one about 3 KiB.
pub(crate) const UNCHARGED_BODY_BYTES: usize = 4 << 10;

/// How long a body waits for the budget to have room before it is answered 503: long
/// enough for requests in progress to finish and give their bodies back (a 4 MiB
/// batch of 10,000 IDs takes tens of milliseconds), short enough that a client
/// learns quickly that it should retry, here or elsewhere.
pub(crate) const BODY_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The budget of request bodies in flight: one permit per byte. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        // Tokio's semaphores count at most `MAX_PERMITS` (2^61 - 1 on 64 bits);
        // settings allow at most 1 TiB.
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// The budget, in bytes.
    pub(crate) const fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes charged to bodies now.
    pub(crate) fn charged(&self) -> usize {
        self.bytes.saturating_sub(self.permits.available_permits())
    }
}

/// A request body, kept as bytes and parsed later (on the blocking pool, where the
/// parsed value may borrow from it), with its charge against the body budget,
/// given back when it is dropped. Its `Content-Type` was checked before routing
/// ([`super::guard`]).
#[derive(Debug)]
pub(crate) struct JsonBody {
    bytes: Bytes,
    _charge: Option<OwnedSemaphorePermit>,
}

impl JsonBody {
    /// Parses the body; syntax errors answer `invalid_json`, shape errors
    /// `data_code`.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(
        &'a self,
        data_code: ErrorCode,
    ) -> Result<T, ApiError> {
        // Every body is an object; serde would also read a struct from an array of
        // its fields in order (`[null, null]`), which no schema promises.
        if self.bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&self.bytes) {
                    Err(e) => json_error(&e, data_code),
                    Ok(_) => ApiError::bad_request(data_code, "the body must be a JSON object"),
                },
            );
        }
        serde_json::from_slice(&self.bytes).map_err(|e| json_error(&e, data_code))
    }

    /// The body's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the body is empty (or only whitespace).
    pub(crate) fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    /// Reads the whole body within `body_read_timeout`, charging it against the body
    /// budget as it arrives: a client that stalls gets 408, a body over
    /// `max_body_bytes` 413, one the budget cannot make room for 503, and the
    /// request does nothing. (It holds no admission permit meanwhile: routes take
    /// theirs once the body is read.)
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limits = state.limits();
        let body = req.into_body();
        // Refused before any of it is read: waiting for a body that is refused
        // anyway only let a client hold its connection until the timeout (408).
        if usize::try_from(body.size_hint().lower())
            .ok()
            .is_none_or(|n| n > limits.max_body_bytes)
        {
            return Err(ApiError::payload_too_large(limits.max_body_bytes));
        }
        let timeout = limits.body_read_timeout;
        let mut reading = pin!(read(body, state));
        // A small body usually arrives with its head and is read at the first poll,
        // and needs no timer: arming and cancelling one per request showed in the
        // profile of single-ID requests (`benches/callgrind.sh`). A body still on its
        // way is timed from here, microseconds after its head.
        match poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
            Poll::Ready(read) => read,
            Poll::Pending => match tokio::time::timeout(timeout, reading).await {
                Ok(read) => read,
                Err(_) => Err(ApiError::body_timeout(timeout)),
            },
        }
    }
}

/// Reads `body` into a buffer of its own, charging the buffer against the budget as
/// it grows (see the module docs).
async fn read(body: Body, state: &AppState) -> Result<JsonBody, ApiError> {
    let max = state.limits().max_body_bytes;
    // hyper delivers no more than a declared length: the buffer never needs more.
    let declared = body
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    let mut buffer = Buffer {
        bytes: Vec::new(),
        most: declared.unwrap_or(max).min(max),
        charge: None,
        charged: 0,
    };
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                ErrorCode::InvalidBody,
                format!("cannot read the request body: {e}"),
            )
        })?;
        // Trailers carry nothing a request needs.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if chunk.len() > max - buffer.bytes.len() {
            return Err(ApiError::payload_too_large(max));
        }
        buffer.make_room(chunk.len(), state).await?;
        buffer.bytes.extend_from_slice(&chunk);
        // The chunk, and with it its share of hyper's read buffer, goes now.
        drop(chunk);
        if body.is_end_stream() {
            break;
        }
    }
    Ok(JsonBody {
        // No copy: the buffer becomes the bytes.
        bytes: Bytes::from(buffer.bytes),
        _charge: buffer.charge,
    })
}

/// A body being read, and its charge.
struct Buffer {
    bytes: Vec<u8>,
    /// The most the buffer can need: the declared length, else `max_body_bytes`.
    most: usize,
    charge: Option<OwnedSemaphorePermit>,
    /// Bytes charged: the buffer's capacity once over [`UNCHARGED_BODY_BYTES`].
    charged: usize,
}

impl Buffer {
    /// Makes room for `more` bytes (at most `max_body_bytes` in all, checked by the
    /// caller), charging the growth before anything is allocated.
    async fn make_room(&mut self, more: usize, state: &AppState) -> Result<(), ApiError> {
        let needed = self.bytes.len() + more;
        if needed <= self.bytes.capacity() {
            return Ok(());
        }
        // Doubling keeps the copies linear; never past what the body can need.
        let capacity = self
            .bytes
            .capacity()
            .saturating_mul(2)
            .min(self.most)
            .max(needed);
        let charge = if capacity > UNCHARGED_BODY_BYTES {
            capacity
        } else {
            0
        };
        if charge > self.charged {
            // Only a body that holds nothing yet waits (see the module docs).
            let wait = self.charged == 0;
            self.charge(charge - self.charged, wait, state).await?;
        }
        self.bytes.reserve_exact(capacity - self.bytes.len());
        Ok(())
    }

    /// Takes `n` more bytes of the budget, waiting for them (if `wait`) at most
    /// [`BODY_BUDGET_WAIT`].
    async fn charge(&mut self, n: usize, wait: bool, state: &AppState) -> Result<(), ApiError> {
        let budget = state.body_budget();
        // More than fits in a u32 is more than any budget allows (bodies are at most
        // 1 GiB): it waits, and is refused.
        let wanted = u32::try_from(n).unwrap_or(u32::MAX);
        let taken = match Arc::clone(&budget.permits).try_acquire_many_owned(wanted) {
            Ok(permit) => Some(permit),
            Err(_) if wait => tokio::time::timeout(
                BODY_BUDGET_WAIT,
                Arc::clone(&budget.permits).acquire_many_owned(wanted),
            )
            .await
            .ok()
            .and_then(Result::ok),
            Err(_) => None,
        };
        let Some(permit) = taken else {
            state.metrics().body_shed();
            return Err(ApiError::bodies_over_budget(
                budget.bytes(),
                wait.then_some(BODY_BUDGET_WAIT),
            ));
        };
        match &mut self.charge {
            Some(charge) => charge.merge(permit),
            None => self.charge = Some(permit),
        }
        self.charged += n;
        Ok(())
    }
}

/// Path parameters; a segment that does not decode (bad percent-encoding, not UTF-8)
/// answers 400 `invalid_path`.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Self(t)),
            Err(rejection) => Err(ApiError::bad_request(
                ErrorCode::InvalidPath,
                rejection.body_text(),
            )),
        }
    }
}
