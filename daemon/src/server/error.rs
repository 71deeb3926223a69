//! HTTP errors: [`ApiError`] and the one [`IntoResponse`] that turns every error,
//! ours, the library's and axum's rejections alike, into
//! `{"error": {"code": "...", "message": "..."}}`.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use oncely_client::api::{ErrorCode, ErrorResponse};

use crate::config::human_bytes;

/// An error answer: a status, a stable code and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// For `checkpoint_conflict`: the stored position (`Some(None)`: none).
    current: Option<Option<String>>,
    /// Whether the answer closes the connection (`Connection: close`): after a body
    /// that was not read whole, the rest of it may still come.
    close: bool,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            current: None,
            close: false,
        }
    }

    /// The same error, answered with `Connection: close`.
    #[must_use]
    const fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// 400 with a code naming the kind of bad input.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 500: a bug or damaged data, never bad input.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    /// 503 while the daemon shuts down.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; retry against another instance or after restart",
        )
    }

    /// 503 when too many requests are in progress (load shedding).
    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            format!(
                "{limit} requests are already in progress (max_concurrency); nothing in \
                 this request was done, retry later"
            ),
        )
    }

    /// 408 when a request body did not arrive within `body_read_timeout`; the
    /// connection is closed after the answer (the rest of the body may still come).
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {timeout:?} (body_read_timeout); \
                 nothing in this request was done, send it again"
            ),
        )
        .closing()
    }

    /// 413 for a body over `max_body_bytes`: declared so by its `Content-Length`
    /// (answered before any of it is read) or found so as it arrives. The
    /// connection is closed after the answer (the rest of the body may still come).
    pub fn payload_too_large(max_body_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is over the limit of {max_body_bytes} bytes \
                 (max_body_bytes); nothing was done"
            ),
        )
        .closing()
    }

    /// 503 `overloaded` when the bodies being read and handled hold the whole
    /// `max_body_bytes_in_flight` budget: a new body found no room within the wait
    /// it was given (`waited`), or a body being read could not grow at once
    /// (`None`). The body was not read whole, so the connection is closed.
    pub fn bodies_over_budget(budget: usize, waited: Option<std::time::Duration>) -> Self {
        let when = match waited {
            Some(wait) => format!("none came back within {wait:?}"),
            None => "this body could not grow".to_owned(),
        };
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            format!(
                "the request bodies in flight hold all {budget} bytes they may \
                 (max_body_bytes_in_flight), and {when}; nothing in this request was done, \
                 retry later"
            ),
        )
        .closing()
    }

    /// 504 when the tracker did not answer within `tracker_timeout`. The call goes
    /// on and what it does stands, so the outcome is unknown: the message says how
    /// to learn it.
    pub fn deadline_exceeded(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::DeadlineExceeded,
            format!(
                "the tracker did not answer within {timeout:?} (tracker_timeout); the outcome \
                 is unknown: the call was not abandoned, and whatever it marks, claims or \
                 changes when it finishes stands. Retry the same request to learn it: a \
                 check-and-mark or claim retried with the same owner token gets its new or \
                 acquired back (replayed: true) for what this call did; without an owner, a \
                 retry answers duplicate for IDs this call marked"
            ),
        )
    }

    /// The status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    #[must_use]
    pub const fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<oncely::Error> for ApiError {
    fn from(e: oncely::Error) -> Self {
        use oncely::Error as E;
        // Conflict and Refused carry a complete sentence; their Display would prefix
        // "conflict: " to a message whose code already says so.
        let message = match &e {
            E::Conflict(m) | E::Refused(m) => m.clone(),
            other => other.to_string(),
        };
        let (status, code) = match &e {
            E::InvalidConfig { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidConfig),
            E::InvalidId { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidId),
            E::InvalidNamespace { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidNamespace),
            E::InvalidOwner(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidOwner),
            E::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument),
            E::MissingFields(_) => (StatusCode::BAD_REQUEST, ErrorCode::MissingFields),
            E::WouldDrop { .. } => (StatusCode::CONFLICT, ErrorCode::WouldDrop),
            E::OverBudget {
                asked,
                in_use,
                budget,
            } => {
                return Self::new(
                    StatusCode::CONFLICT,
                    ErrorCode::OverBudget,
                    over_budget(*asked, *in_use, *budget),
                );
            }
            E::TooManyNamespaces { max } => {
                return Self::new(
                    StatusCode::CONFLICT,
                    ErrorCode::TooManyNamespaces,
                    format!(
                        "there are already {max} namespaces, the most this daemon allows \
                         (max_namespaces); nothing changed: delete one, or raise the cap"
                    ),
                );
            }
            E::CheckpointConflict { current, .. } => {
                let mut conflict =
                    Self::new(StatusCode::CONFLICT, ErrorCode::CheckpointConflict, message);
                conflict.current = Some(current.clone());
                return conflict;
            }
            E::UnknownNamespace(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownNamespace),
            E::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            E::Refused(_) => (StatusCode::CONFLICT, ErrorCode::Refused),
            E::Closed => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
            // Another transaction held what the call needed, or the namespace waits
            // for its rotation: nothing was done, and a retry soon will do.
            E::Busy(_) | E::RetryTransaction(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy)
            }
            // The library acknowledges nothing from a call whose write failed: the
            // client may retry, here or elsewhere, once storage recovers.
            E::Storage(_) | E::Io { .. } => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StorageUnavailable,
                    format!("{message}; nothing in this request was acknowledged"),
                );
            }
            // PostgreSQL failed, or no connection could be had: nothing was
            // acknowledged, except that a connection lost during COMMIT hides whether
            // the commit landed. A retry with the same owner token tells (its `new`
            // comes back `replayed: true`); an owner-less retry may read `duplicate`
            // for a mark that did land.
            E::Postgres(_) | E::Unavailable(_) => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StorageUnavailable,
                    format!(
                        "{message}; nothing in this request was acknowledged, unless the \
                         connection was lost while committing: retry with the same owner \
                         token, and a mark that landed comes back new with replayed: true"
                    ),
                );
            }
            // Damaged data and anything new in the library are ours to fix, not the
            // caller's.
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        Self::new(status, code, message)
    }
}

/// The message of 409 `over_budget`: the three numbers, readable and exact.
fn over_budget(asked: u64, in_use: u64, budget: u64) -> String {
    let free = budget.saturating_sub(in_use);
    format!(
        "the namespace's filters would need up to {} ({asked} bytes) over its life, but only \
         {} ({free} bytes) of the {} ({budget}-byte) filter budget (max_filter_bytes) are \
         free: {} ({in_use} bytes) are charged to the other namespaces. Nothing changed; \
         ask for a smaller generation_capacity, fewer generations or a higher fp_rate, or \
         delete a namespace",
        human_bytes(asked),
        human_bytes(free),
        human_bytes(budget),
        human_bytes(in_use),
    )
}

/// A server error's code and message, carried to the metrics middleware in the
/// answer's extensions: it logs them through the rate-limited failure log
/// ([`super::failures`]), which has the daemon's state, rather than one line per
/// answer here.
#[derive(Clone, Debug)]
pub(crate) struct FailureNote {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// Marks an answer that closes its connection with its request's body not read
/// whole (in the answer's extensions, never on the wire): the connection then reads
/// and discards what its client still sends before it closes (see
/// `connection::LINGER`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyUnread;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let note = self.status.is_server_error().then(|| FailureNote {
            code: self.code,
            message: self.message.clone(),
        });
        if note.is_none() {
            tracing::debug!(status = self.status.as_u16(), code = self.code.as_str(), message = %self.message, "request refused");
        }
        let mut body = ErrorResponse::new(self.code, self.message);
        body.error.current = self.current;
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec()
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(super::JSON))],
            bytes,
        )
            .into_response();
        let headers = response.headers_mut();
        // The rest of a body not read whole may still come: the connection cannot be
        // reused.
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"oncelyd\""),
                );
            }
            // Shedding, storage failures and deadlines are transient: tell clients when
            // to retry instead of letting them hammer an overloaded server.
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(note) = note {
            response.extensions_mut().insert(note);
        }
        if self.close {
            response.extensions_mut().insert(BodyUnread);
        }
        response
    }
}

/// Maps serde_json's errors: syntax to `invalid_json`, types and fields to
/// `invalid_request` (or `data_code`, e.g. `invalid_config` for a namespace body).
pub(crate) fn json_error(e: &serde_json::Error, data_code: ErrorCode) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::bad_request(data_code, e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_failures_are_retryable_storage_errors() {
        let e = ApiError::from(oncely::Error::Unavailable("the pool's wait ran out".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), ErrorCode::StorageUnavailable);
        assert!(e.message().starts_with("PostgreSQL unavailable: the pool's wait ran out; nothing in this request was acknowledged"), "{e}");
        assert!(
            e.message().contains("retry with the same owner token"),
            "{e}"
        );
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
