//! The error type of the client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use crate::api::ErrorCode;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with an error: `{"error": {"code", "message"}}`.
    #[error("{status} {code}: {message}")]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The daemon's stable error code (`invalid_id`, `unknown_namespace`,
        /// `conflict`, `storage_unavailable`, ...; see
        /// [`ErrorBody`](crate::api::ErrorBody)).
        code: String,
        /// The daemon's message, naming the offending field or index.
        message: String,
        /// Requests made, retries included.
        attempts: u32,
    },

    /// A checkpoint write's precondition failed (409 `checkpoint_conflict`, from
    /// [`Client::set_checkpoint_if`](crate::Client::set_checkpoint_if)): another
    /// writer moved the checkpoint since the caller read it. Nothing changed; resume
    /// from `current`.
    #[error("409 checkpoint_conflict: {message}")]
    CheckpointConflict {
        /// The stored position (`None`: none is stored).
        current: Option<String>,
        /// The daemon's message.
        message: String,
        /// Requests made, retries included.
        attempts: u32,
    },

    /// No answer: the connection failed or broke, or the answer was cut off.
    #[error("cannot reach the daemon at {url} ({attempts} attempts): {source}")]
    Transport {
        /// The request's URL.
        url: String,
        /// Requests made, retries included.
        attempts: u32,
        /// What the HTTP stack said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// No answer in time: the last attempt ran out of its timeout, or of what was
    /// left of the call's deadline.
    #[error("no answer from {url} within {timeout:?} ({attempts} attempts)")]
    Timeout {
        /// The request's URL.
        url: String,
        /// How long the last attempt was given.
        timeout: Duration,
        /// Requests made, retries included.
        attempts: u32,
    },

    /// An answer that is not what the API promises (another service on the port, or
    /// an incompatible version).
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The request's URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The base URL or another client setting is unusable.
    #[error("invalid client setting {setting}: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The HTTP status, for [`Error::Http`] and [`Error::CheckpointConflict`].
    #[must_use]
    pub const fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::CheckpointConflict { .. } => Some(StatusCode::CONFLICT),
            _ => None,
        }
    }

    /// The daemon's error code, for [`Error::Http`] and
    /// [`Error::CheckpointConflict`].
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Http { code, .. } => Some(code),
            Self::CheckpointConflict { .. } => Some(ErrorCode::CheckpointConflict.as_str()),
            _ => None,
        }
    }

    /// [`code`](Self::code) as an [`ErrorCode`], where this version knows it (a
    /// proxy's `http_<status>`, or a code from a newer daemon, is `None`).
    #[must_use]
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(ErrorCode::parse)
    }

    /// Requests made, retries included, for the errors that count them
    /// ([`Http`](Self::Http), [`CheckpointConflict`](Self::CheckpointConflict),
    /// [`Transport`](Self::Transport),
    /// [`Timeout`](Self::Timeout)); 0 for the others.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        match self {
            Self::Http { attempts, .. }
            | Self::CheckpointConflict { attempts, .. }
            | Self::Transport { attempts, .. }
            | Self::Timeout { attempts, .. } => *attempts,
            Self::Decode { .. } | Self::Config { .. } => 0,
        }
    }
}

/// One error, handed to every call that shared the request it came from (see
/// [`Batching`](crate::Batching)): each caller gets an [`Error`] of its own, with the
/// same variant, fields and source chain.
pub(crate) enum Shared {
    /// Every variant but [`Error::Transport`] is cloned field by field.
    Plain(Error),
    /// The source of a transport error, which is not `Clone`, behind one `Arc`.
    Transport {
        url: String,
        attempts: u32,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl From<Error> for Shared {
    fn from(e: Error) -> Self {
        match e {
            Error::Transport {
                url,
                attempts,
                source,
            } => Self::Transport {
                url,
                attempts,
                source: Arc::from(source),
            },
            other => Self::Plain(other),
        }
    }
}

impl Shared {
    /// A copy for one caller.
    pub(crate) fn get(&self) -> Error {
        match self {
            Self::Transport {
                url,
                attempts,
                source,
            } => Error::Transport {
                url: url.clone(),
                attempts: *attempts,
                source: Box::new(SharedSource(Arc::clone(source))),
            },
            Self::Plain(e) => match e {
                Error::Http {
                    status,
                    code,
                    message,
                    attempts,
                } => Error::Http {
                    status: *status,
                    code: code.clone(),
                    message: message.clone(),
                    attempts: *attempts,
                },
                Error::CheckpointConflict {
                    current,
                    message,
                    attempts,
                } => Error::CheckpointConflict {
                    current: current.clone(),
                    message: message.clone(),
                    attempts: *attempts,
                },
                Error::Timeout {
                    url,
                    timeout,
                    attempts,
                } => Error::Timeout {
                    url: url.clone(),
                    timeout: *timeout,
                    attempts: *attempts,
                },
                Error::Decode { url, reason } => Error::Decode {
                    url: url.clone(),
                    reason: reason.clone(),
                },
                Error::Config { setting, reason } => Error::Config {
                    setting,
                    reason: reason.clone(),
                },
                // Never stored as `Plain` (see `From`); kept whole rather than lose it.
                Error::Transport { url, attempts, .. } => Error::Transport {
                    url: url.clone(),
                    attempts: *attempts,
                    source: "transport error".into(),
                },
            },
        }
    }
}

/// A transport error's source shared by several callers: shows and chains as the
/// original.
struct SharedSource(Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_error_is_the_same_error_for_every_caller() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let shared = Shared::from(Error::Transport {
            url: "http://x/".into(),
            attempts: 3,
            source: Box::new(io),
        });
        let (a, b) = (shared.get(), shared.get());
        assert_eq!(a.to_string(), b.to_string());
        assert!(a.to_string().contains("reset by peer"), "{a}");
        assert_eq!(a.attempts(), 3);
        let source = std::error::Error::source(&a).expect("a source");
        assert_eq!(source.to_string(), "reset by peer");

        let shared = Shared::from(Error::Http {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded".into(),
            message: "m".into(),
            attempts: 4,
        });
        let e = shared.get();
        assert_eq!(e.code(), Some("overloaded"));
        assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(e.attempts(), 4);
    }
}
