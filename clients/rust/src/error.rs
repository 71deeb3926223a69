//! The error type of the client.

use std::time::Duration;

use reqwest::StatusCode;

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
    /// The HTTP status, for [`Error::Http`].
    #[must_use]
    pub const fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The daemon's error code, for [`Error::Http`].
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Http { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Requests made, retries included, for the errors that count them
    /// ([`Http`](Self::Http), [`Transport`](Self::Transport),
    /// [`Timeout`](Self::Timeout)); 0 for the others.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        match self {
            Self::Http { attempts, .. }
            | Self::Transport { attempts, .. }
            | Self::Timeout { attempts, .. } => *attempts,
            Self::Decode { .. } | Self::Config { .. } => 0,
        }
    }
}
