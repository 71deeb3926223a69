//! Extractors whose rejections are [`ApiError`]s, so that axum's own failures (a
//! body over the limit, a bad path segment) answer in the same JSON shape as ours.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, json_error};

/// A request body, kept as bytes and parsed later (on the blocking pool, where the
/// parsed value may borrow from it). Its `Content-Type` was checked before routing
/// ([`super::guard`]).
#[derive(Debug)]
pub(crate) struct JsonBody(Bytes);

impl JsonBody {
    /// Parses the body; syntax errors answer `invalid_json`, shape errors
    /// `data_code`.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(
        &'a self,
        data_code: &'static str,
    ) -> Result<T, ApiError> {
        // Every body is an object; serde would also read a struct from an array of
        // its fields in order (`[null, null]`), which no schema promises.
        if self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&self.0) {
                    Err(e) => json_error(&e, data_code),
                    Ok(_) => ApiError::bad_request(data_code, "the body must be a JSON object"),
                },
            );
        }
        serde_json::from_slice(&self.0).map_err(|e| json_error(&e, data_code))
    }

    /// The body's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the body is empty (or only whitespace).
    pub(crate) fn is_blank(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    /// Reads the whole body within `body_read_timeout`: a client that stalls gets
    /// 408 and the request does nothing. (It holds no admission permit meanwhile:
    /// routes take theirs once the body is read.)
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let timeout = state.limits().body_read_timeout;
        let mut reading = pin!(Bytes::from_request(req, state));
        // A small body usually arrives with its head and is read at the first poll,
        // and needs no timer: arming and cancelling one per request showed in the
        // profile of single-ID requests (`benches/callgrind.sh`). A body still on its
        // way is timed from here, microseconds after its head.
        let read = match poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
            Poll::Ready(read) => read,
            Poll::Pending => match tokio::time::timeout(timeout, reading).await {
                Ok(read) => read,
                Err(_) => return Err(ApiError::body_timeout(timeout)),
            },
        };
        match read {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over the limit of {} bytes (max_body_bytes)",
                        state.limits().max_body_bytes
                    ),
                ))
            }
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_body",
                format!("cannot read the request body: {}", rejection.body_text()),
            )),
        }
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
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}
