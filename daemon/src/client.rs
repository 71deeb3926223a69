//! A typed, async client for a running `oncelyd`.
//!
//! ```no_run
//! use std::time::Duration;
//! use oncelyd::client::{Client, RetryPolicy};
//!
//! # async fn demo() -> Result<(), oncelyd::client::Error> {
//! let client = Client::builder("http://127.0.0.1:7070")
//!     .token("change-me")
//!     .timeout(Duration::from_secs(5))
//!     .retry(RetryPolicy {
//!         attempts: 5,
//!         base_delay: Duration::from_millis(50),
//!         max_delay: Duration::from_secs(2),
//!     })
//!     .build()?;
//! let marked = client.check_and_mark("default", &["order-1", "order-2"], None).await?;
//! for (id, verdict) in ["order-1", "order-2"].iter().zip(&marked.verdicts) {
//!     if verdict.is_new() {
//!         println!("process {id}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Verdicts are the library's
//!
//! Answers come back as the [`oncely`] library's own types, [`Verdict`] and
//! [`ClaimOutcome`], so code written against an embedded `Tracker` matches the same
//! arms against the daemon. Over HTTP a `new` with `replayed: true` is
//! [`Verdict::Replayed`].
//!
//! # Retries
//!
//! Every method retries, up to [`RetryPolicy::attempts`] requests in all, when the
//! request may not have reached the daemon or the daemon said nothing was done:
//! connection errors, timeouts, an answer cut off mid-way, and `502`, `503`, `504`.
//! Between attempts it waits with exponential backoff and jitter (half the nominal
//! delay fixed, half random, so that many clients retrying together spread out), and
//! at least what the daemon's `Retry-After` asks, within [`RetryPolicy::max_delay`].
//! It never retries any other status: a `4xx` will not change by asking again, and a
//! `500` means a damaged store or a bug.
//!
//! Retrying is safe because every call is idempotent for the daemon, given one
//! precaution that [`Client::check_and_mark`] takes for you: all attempts of one call
//! carry the same owner token, so a mark whose answer was lost comes back `new`
//! (flagged replayed), not `duplicate`.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use oncely::{ClaimOutcome, Configured, NamespaceConfig, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;

use crate::api::{
    CheckRequest, CheckResponse, CheckpointBody, CheckpointResponse, ClaimAction,
    ClaimActionResponse, ClaimRequest, ClaimResponse, ClaimVerdict, ErrorResponse, Health,
    MarkRequest, MarkResponse, NamespaceList, NamespaceView, VerdictName,
};

pub use oncely::Verdict;

/// How many times to try one call, and how long to wait in between.
///
/// The wait before retry `n` (from 1) is `min(max_delay, base_delay x 2^(n-1))`, half
/// of it fixed and half random, raised to the daemon's `Retry-After` when that is
/// longer, but never above `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests per call, the first included (at least 1; 1 means no retry).
    pub attempts: u32,
    /// The nominal wait before the first retry.
    pub base_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), given a random
    /// `unit` in `[0, 1)` and the daemon's `Retry-After`, if any.
    fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let factor = 2_u32.saturating_pow(retry.saturating_sub(1));
        let nominal = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let half = nominal / 2;
        let jittered = half + half.mul_f64(unit.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |ra| jittered.max(ra.min(self.max_delay)))
    }
}

impl Default for RetryPolicy {
    /// 4 attempts, 50 ms first wait, 2 s at most: about 0.2 s of retrying in all,
    /// enough to ride over a dropped connection or a brief overload.
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

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
        /// `conflict`, `storage_unavailable`, ...; see `oncelyd::api::ErrorBody`).
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

    /// No answer within the timeout, on every attempt.
    #[error("no answer from {url} within {timeout:?} ({attempts} attempts)")]
    Timeout {
        /// The request's URL.
        url: String,
        /// The per-attempt timeout.
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
}

/// Builds a [`Client`]; see [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    jitter_seed: Option<u64>,
}

impl fmt::Debug for ClientBuilder {
    // By hand, so that no log line ever shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("jitter_seed", &self.jitter_seed)
            .finish()
    }
}

impl ClientBuilder {
    /// The bearer token to send (needed when the daemon has tokens configured).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long one attempt may take, connecting and reading the answer included
    /// [default: 10 s]. A call with retries may take `attempts` times this, plus
    /// the waits.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take [default: 2 s].
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy [default: [`RetryPolicy::default`]].
    pub const fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Seeds the jitter of the retry waits, for reproducible timing in tests. (Owner
    /// tokens never come from this seed: two clients given the same seed must still
    /// not share tokens.)
    pub const fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Builds the client. Nothing is sent yet.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a base URL that is not `http://host[:port][/prefix]`, a
    /// token that cannot be a header, or zero attempts.
    pub fn build(self) -> Result<Client, Error> {
        let mut base = Url::parse(&self.base_url).map_err(|e| Error::Config {
            setting: "base_url",
            reason: format!("{:?}: {e}", self.base_url),
        })?;
        if base.scheme() != "http" {
            return Err(Error::Config {
                setting: "base_url",
                reason: format!(
                    "{:?}: only http:// is supported (put TLS in a proxy in front)",
                    self.base_url
                ),
            });
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config {
                setting: "base_url",
                reason: format!("{:?}: want http://host[:port][/prefix]", self.base_url),
            });
        }
        // Paths are appended segment by segment; a trailing slash would add an
        // empty one.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        if self.retry.attempts == 0 {
            return Err(Error::Config {
                setting: "retry.attempts",
                reason: "must be at least 1 (1 means no retry)".into(),
            });
        }
        let auth = self.token.as_deref().map(bearer).transpose()?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            // Small requests must not wait for Nagle's algorithm.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Config {
                setting: "http",
                reason: e.to_string(),
            })?;
        let jitter = self
            .jitter_seed
            .map_or_else(|| StdRng::from_rng(&mut rand::rng()), StdRng::seed_from_u64);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                timeout: self.timeout,
                retry: self.retry,
                jitter: Mutex::new(jitter),
            }),
        })
    }
}

/// A client of one `oncelyd`. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryPolicy,
    jitter: Mutex<StdRng>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("auth", &self.inner.auth.is_some())
            .field("timeout", &self.inner.timeout)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

/// The answer to [`Client::check_and_mark`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marked {
    /// The owner token the marks were made with: the caller's, or the one the client
    /// generated for this call.
    pub owner: String,
    /// One verdict per ID, in the order of the IDs given.
    pub verdicts: Vec<Verdict>,
}

/// What a call does when the daemon answers 404 `unknown_namespace` on a retry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// An error, as on the first attempt.
    Error,
    /// Success: an earlier attempt deleted the namespace, its answer was lost.
    Success,
}

impl Client {
    /// A builder for a client of the daemon at `base_url`, such as
    /// `http://127.0.0.1:7070` (a path prefix is kept: `http://gw/oncely`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            jitter_seed: None,
        }
    }

    /// A client with every default, for `base_url`.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::build`].
    pub fn new(base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// The daemon's base URL.
    #[must_use]
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Checks a batch of IDs and marks the new ones, atomically per ID
    /// (`POST /v1/namespaces/{ns}/check-and-mark`).
    ///
    /// # Owner tokens and retries
    ///
    /// Every attempt of this call sends the same owner token. That is what makes the
    /// retry safe: if the first attempt marked the IDs but its answer was lost (a
    /// timeout, a dropped connection), the retry finds marks made by the same owner
    /// and gets the original `new` back as [`Verdict::Replayed`], instead of
    /// `duplicate`, which would make the caller skip events nobody processed.
    ///
    /// With `owner: None` the client generates a fresh random token (128 bits from
    /// the operating system's generator) for the call, for exactly that reason, and
    /// returns it in [`Marked::owner`]. Pass your own token (a consumer instance
    /// plus delivery attempt, say) to extend the same protection across calls: your
    /// own retry after this call failed, or after a restart, then also gets
    /// `Replayed` for what the lost attempt marked.
    ///
    /// ```no_run
    /// use oncelyd::client::{Client, Verdict};
    ///
    /// # async fn demo() -> Result<(), oncelyd::client::Error> {
    /// let client = Client::new("http://127.0.0.1:7070")?;
    /// let ids = ["evt-1", "evt-2", "evt-3"];
    /// // No owner: one is generated and reused by every retry of this call.
    /// let marked = client.check_and_mark("default", &ids, None).await?;
    /// for (id, verdict) in ids.iter().zip(&marked.verdicts) {
    ///     match verdict {
    ///         // Replayed: a retry found this call's own earlier mark. Process it.
    ///         Verdict::New | Verdict::Replayed => println!("process {id}"),
    ///         Verdict::Duplicate | Verdict::ProbableDuplicate => println!("skip {id}"),
    ///         Verdict::InProgress { until } => println!("{id} is claimed until {until}"),
    ///     }
    /// }
    /// // The same delivery retried later, with the token of the first try.
    /// let again = client.check_and_mark("default", &ids, Some(&marked.owner)).await?;
    /// assert!(again.verdicts.iter().all(|v| *v == Verdict::Replayed));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Http`]: 400 for a bad ID, owner or namespace name or too many IDs
    /// (nothing was marked), 404 for an unknown namespace, 503 when retries ran out
    /// (nothing was acknowledged); [`Error::Transport`] or [`Error::Timeout`] when
    /// retries ran out without an answer (the IDs may or may not be marked: call
    /// again with the owner from a previous attempt to find out, see above).
    pub async fn check_and_mark<S: AsRef<str>>(
        &self,
        namespace: &str,
        ids: &[S],
        owner: Option<&str>,
    ) -> Result<Marked, Error> {
        let owner = owner.map_or_else(random_owner, str::to_owned);
        let body = MarkRequest {
            ids: ids.iter().map(|id| Cow::Borrowed(id.as_ref())).collect(),
            owner: Some(Cow::Borrowed(&owner)),
        };
        let url = self.url(&["v1", "namespaces", namespace, "check-and-mark"]);
        let (_, bytes) = self
            .send(Method::POST, &url, Some(&body), Gone::Error)
            .await?;
        let answer: MarkResponse<'_> = decode(&url, &bytes)?;
        if answer.results.len() != ids.len() {
            return Err(mismatch(&url, ids.len(), answer.results.len()));
        }
        let verdicts = answer
            .results
            .iter()
            .zip(ids)
            .map(|(r, id)| {
                if r.id != id.as_ref() {
                    return Err(Error::Decode {
                        url: url.to_string(),
                        reason: format!("result for {:?} where {:?} was sent", r.id, id.as_ref()),
                    });
                }
                verdict(&url, r.verdict, r.replayed, r.until_ms)
            })
            .collect::<Result<_, _>>()?;
        Ok(Marked { owner, verdicts })
    }

    /// Checks a batch of IDs without marking them (`POST .../check`): here
    /// [`Verdict::New`] means unseen. Retried as described in the [module
    /// docs](self); a check changes nothing, so that is always safe.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark`](Self::check_and_mark).
    pub async fn check<S: AsRef<str>>(
        &self,
        namespace: &str,
        ids: &[S],
    ) -> Result<Vec<Verdict>, Error> {
        let body = CheckRequest {
            ids: ids.iter().map(|id| Cow::Borrowed(id.as_ref())).collect(),
        };
        let url = self.url(&["v1", "namespaces", namespace, "check"]);
        let (_, bytes) = self
            .send(Method::POST, &url, Some(&body), Gone::Error)
            .await?;
        let answer: CheckResponse<'_> = decode(&url, &bytes)?;
        if answer.results.len() != ids.len() {
            return Err(mismatch(&url, ids.len(), answer.results.len()));
        }
        answer
            .results
            .iter()
            .map(|r| verdict(&url, r.verdict, false, r.until_ms))
            .collect()
    }

    /// Claims an ID for `owner` for `lease` (`POST .../claims`): exclusive
    /// processing rights until the lease ends, or until [`complete`](Self::complete)
    /// or [`release`](Self::release).
    ///
    /// Retried as described in the [module docs](self): a claim is idempotent for
    /// its owner (claiming again renews the lease), so a retry after a lost answer
    /// gets `Acquired { replayed: true, .. }` rather than `InProgress`.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 400 for a bad ID, owner or lease (zero or over 7 days), 404
    /// for an unknown namespace; transport errors as for
    /// [`check_and_mark`](Self::check_and_mark).
    pub async fn claim(
        &self,
        namespace: &str,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let body = ClaimRequest {
            id: id.to_owned(),
            owner: owner.to_owned(),
            // Above u64::MAX ms the daemon refuses the lease anyway (over 7 days).
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        };
        let url = self.url(&["v1", "namespaces", namespace, "claims"]);
        let (_, bytes) = self
            .send(Method::POST, &url, Some(&body), Gone::Error)
            .await?;
        let answer: ClaimResponse = decode(&url, &bytes)?;
        let until = || {
            answer
                .until_ms
                .map(Timestamp::from_millis)
                .ok_or_else(|| Error::Decode {
                    url: url.to_string(),
                    reason: format!("{:?} without until_ms", answer.verdict),
                })
        };
        Ok(match answer.verdict {
            ClaimVerdict::Acquired => ClaimOutcome::Acquired {
                until: until()?,
                replayed: answer.replayed.unwrap_or(false),
                taken_over: answer.taken_over.unwrap_or(false),
            },
            ClaimVerdict::InProgress => ClaimOutcome::InProgress { until: until()? },
            ClaimVerdict::Duplicate => ClaimOutcome::Duplicate,
            ClaimVerdict::ProbableDuplicate => ClaimOutcome::ProbableDuplicate,
        })
    }

    /// Turns `owner`'s claim into a done mark (`POST .../claims/complete`): the ID
    /// answers `duplicate` from then on.
    ///
    /// Retried as described in the [module docs](self): completing twice is fine for
    /// the same owner, so a retry after a lost answer succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 409 `conflict` when another owner holds or completed the ID,
    /// or there is no claim; 400 and 404 as for [`claim`](Self::claim).
    pub async fn complete(&self, namespace: &str, id: &str, owner: &str) -> Result<(), Error> {
        self.claim_action(namespace, id, owner, "complete").await
    }

    /// Forgets `owner`'s claim so that a redelivery can claim the ID again
    /// (`POST .../claims/release`).
    ///
    /// Retried as described in the [module docs](self): releasing an ID with no
    /// claim is fine, so a retry after a lost answer succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 409 `conflict` when another owner holds the claim or the ID is
    /// done; 400 and 404 as for [`claim`](Self::claim).
    pub async fn release(&self, namespace: &str, id: &str, owner: &str) -> Result<(), Error> {
        self.claim_action(namespace, id, owner, "release").await
    }

    async fn claim_action(
        &self,
        namespace: &str,
        id: &str,
        owner: &str,
        action: &str,
    ) -> Result<(), Error> {
        let body = ClaimAction {
            id: id.to_owned(),
            owner: owner.to_owned(),
        };
        let url = self.url(&["v1", "namespaces", namespace, "claims", action]);
        let (_, bytes) = self
            .send(Method::POST, &url, Some(&body), Gone::Error)
            .await?;
        let _: ClaimActionResponse = decode(&url, &bytes)?;
        Ok(())
    }

    /// Creates a namespace or reconfigures an existing one (`PUT /v1/namespaces/{ns}`);
    /// whether it was created or updated, and its configuration and statistics.
    /// Retried as described in the [module docs](self) (a `PUT` is idempotent; a
    /// retry after an attempt that created the namespace but lost its answer reports
    /// [`Configured::Updated`]).
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 400 `invalid_namespace` or `invalid_config`; transport errors
    /// as for [`check_and_mark`](Self::check_and_mark).
    pub async fn put_namespace(
        &self,
        namespace: &str,
        config: &NamespaceConfig,
    ) -> Result<(Configured, NamespaceView), Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        let (status, bytes) = self
            .send(Method::PUT, &url, Some(config), Gone::Error)
            .await?;
        let view: NamespaceView = decode(&url, &bytes)?;
        let configured = if status == StatusCode::CREATED {
            Configured::Created
        } else {
            Configured::Updated
        };
        Ok((configured, view))
    }

    /// A namespace's configuration and live statistics (`GET /v1/namespaces/{ns}`).
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 404 `unknown_namespace`, 400 `invalid_namespace`.
    pub async fn namespace(&self, namespace: &str) -> Result<NamespaceView, Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        let (_, bytes) = self
            .send::<()>(Method::GET, &url, None, Gone::Error)
            .await?;
        decode(&url, &bytes)
    }

    /// Deletes a namespace with its marks, snapshots and checkpoints
    /// (`DELETE /v1/namespaces/{ns}`).
    ///
    /// Retried as described in the [module docs](self). A retry answered 404
    /// `unknown_namespace` counts as success: the earlier attempt deleted it and its
    /// answer was lost.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 404 `unknown_namespace` (on the first attempt), 409 `refused`
    /// for `default`.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        self.send::<()>(Method::DELETE, &url, None, Gone::Success)
            .await?;
        Ok(())
    }

    /// Every namespace, sorted by name (`GET /v1/namespaces`).
    ///
    /// # Errors
    ///
    /// Transport errors, 401.
    pub async fn namespaces(&self) -> Result<Vec<String>, Error> {
        let url = self.url(&["v1", "namespaces"]);
        let (_, bytes) = self
            .send::<()>(Method::GET, &url, None, Gone::Error)
            .await?;
        let list: NamespaceList = decode(&url, &bytes)?;
        Ok(list.namespaces)
    }

    /// Stores `consumer`'s last processed position in a namespace
    /// (`PUT .../checkpoints/{consumer}`). Retried as described in the [module
    /// docs](self) (a `PUT` is idempotent).
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 400 for a bad consumer name or position (1 to 1024 bytes), 404
    /// for an unknown namespace.
    pub async fn set_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        let url = self.url(&["v1", "namespaces", namespace, "checkpoints", consumer]);
        let body = CheckpointBody {
            position: position.to_owned(),
        };
        let (_, bytes) = self
            .send(Method::PUT, &url, Some(&body), Gone::Error)
            .await?;
        let _: CheckpointResponse = decode(&url, &bytes)?;
        Ok(())
    }

    /// `consumer`'s stored position, or `None` when it has none
    /// (`GET .../checkpoints/{consumer}`). Resume from it inclusively.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 404 `unknown_namespace`, 400 for a bad consumer name.
    pub async fn checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        let url = self.url(&["v1", "namespaces", namespace, "checkpoints", consumer]);
        match self.send::<()>(Method::GET, &url, None, Gone::Error).await {
            Ok((_, bytes)) => {
                let answer: CheckpointResponse = decode(&url, &bytes)?;
                Ok(Some(answer.position))
            }
            Err(Error::Http { code, .. }) if code == "checkpoint_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Liveness (`GET /healthz`; needs no token).
    ///
    /// # Errors
    ///
    /// Transport errors when the daemon cannot be reached.
    pub async fn health(&self) -> Result<Health, Error> {
        let url = self.url(&["healthz"]);
        let (_, bytes) = self
            .send::<()>(Method::GET, &url, None, Gone::Error)
            .await?;
        decode(&url, &bytes)
    }

    /// Readiness (`GET /readyz`; needs no token).
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 503 `shutting_down` (after retries) once the daemon has begun
    /// to shut down; transport errors.
    pub async fn ready(&self) -> Result<Health, Error> {
        let url = self.url(&["readyz"]);
        let (_, bytes) = self
            .send::<()>(Method::GET, &url, None, Gone::Error)
            .await?;
        decode(&url, &bytes)
    }

    /// The base URL with `segments` appended, each percent-encoded, so a name with
    /// a `/` or `?` reaches the daemon as a (refused) name rather than another route.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    /// Sends one request, retrying per the policy. The body is serialised once and
    /// shared by the attempts. A success status and its body, or the last error.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&B>,
        gone: Gone,
    ) -> Result<(StatusCode, Bytes), Error> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| Error::Config {
                setting: "request",
                reason: format!("cannot encode the request: {e}"),
            })?;
        let policy = self.inner.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= policy.attempts;
            let mut request = self.inner.http.request(method.clone(), url.clone());
            if let Some(auth) = &self.inner.auth {
                request = request.header(header::AUTHORIZATION, auth.clone());
            }
            if let Some(b) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    match response.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok((status, bytes)),
                        Ok(bytes) => {
                            let error = http_error(url, status, &bytes, attempt);
                            if gone == Gone::Success
                                && attempt > 1
                                && error.code() == Some("unknown_namespace")
                            {
                                return Ok((status, Bytes::new()));
                            }
                            if !retryable_status(status) {
                                return Err(error);
                            }
                            (error, retry_after)
                        }
                        // Cut off mid-answer: nothing tells whether it was done.
                        Err(e) => (self.transport(url, attempt, e), None),
                    }
                }
                Err(e) => (self.transport(url, attempt, e), None),
            };
            let (error, retry_after) = failure;
            if last {
                return Err(error);
            }
            let unit: f64 = self
                .inner
                .jitter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random();
            tokio::time::sleep(policy.delay(attempt, unit, retry_after)).await;
        }
    }

    fn transport(&self, url: &Url, attempts: u32, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                url: url.to_string(),
                timeout: self.inner.timeout,
                attempts,
            }
        } else {
            Error::Transport {
                url: url.to_string(),
                attempts,
                source: Box::new(e),
            }
        }
    }
}

/// A fresh owner token: 128 random bits from the operating system's generator, as
/// hex. Never from a seeded generator: two clients sharing a token would read each
/// other's marks as their own retries.
fn random_owner() -> String {
    let mut bytes = [0_u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(39);
    s.push_str("client-");
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Statuses that say nothing was done and asking again may work: the daemon's 503
/// (storage failed, overloaded, shutting down) and the gateway errors a proxy in
/// front of it answers with.
fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `Retry-After` in seconds (the only form the daemon sends).
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An error answer as [`Error::Http`]; a body that is not the daemon's error shape
/// (a proxy's page, say) keeps the status with code `http_<status>`.
fn http_error(url: &Url, status: StatusCode, body: &[u8], attempts: u32) -> Error {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => Error::Http {
            status,
            code: e.error.code,
            message: e.error.message,
            attempts,
        },
        Err(_) => Error::Http {
            status,
            code: format!("http_{}", status.as_u16()),
            message: format!(
                "{url} answered {status} without the daemon's error body: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            attempts,
        },
    }
}

fn decode<'a, T: serde::Deserialize<'a>>(url: &Url, bytes: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn mismatch(url: &Url, sent: usize, got: usize) -> Error {
    Error::Decode {
        url: url.to_string(),
        reason: format!("{got} results for {sent} IDs"),
    }
}

fn verdict(
    url: &Url,
    name: VerdictName,
    replayed: bool,
    until_ms: Option<u64>,
) -> Result<Verdict, Error> {
    Ok(match name {
        VerdictName::New if replayed => Verdict::Replayed,
        VerdictName::New => Verdict::New,
        VerdictName::Duplicate => Verdict::Duplicate,
        VerdictName::ProbableDuplicate => Verdict::ProbableDuplicate,
        VerdictName::InProgress => Verdict::InProgress {
            until: Timestamp::from_millis(until_ms.ok_or_else(|| Error::Decode {
                url: url.to_string(),
                reason: "in_progress without until_ms".into(),
            })?),
        },
    })
}

/// The `Authorization` value for a bearer token, marked sensitive so that it stays
/// out of debug output.
///
/// # Errors
///
/// [`Error::Config`] naming `token` when it is not visible ASCII.
pub(crate) fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::Config {
        setting: "token",
        reason: "must be visible ASCII".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after_within_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        // unit 0: half the nominal delay; unit 1: all of it.
        assert_eq!(p.delay(1, 0.0, None), Duration::from_millis(50));
        assert_eq!(p.delay(1, 1.0, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, 1.0, None), Duration::from_millis(400));
        assert_eq!(p.delay(5, 1.0, None), Duration::from_secs(1));
        assert_eq!(p.delay(40, 0.5, None), Duration::from_millis(750));
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn owners_are_fresh_and_well_formed() {
        let a = random_owner();
        let b = random_owner();
        assert_ne!(a, b);
        assert_eq!(a.len(), 39);
        assert!(a.starts_with("client-"));
    }

    #[test]
    fn base_urls_are_checked_and_paths_appended() {
        let c = Client::new("http://127.0.0.1:7070/").unwrap();
        assert_eq!(
            c.url(&["v1", "namespaces", "a/b"]).as_str(),
            "http://127.0.0.1:7070/v1/namespaces/a%2Fb"
        );
        let c = Client::new("http://gw:80/oncely/").unwrap();
        assert_eq!(c.url(&["healthz"]).as_str(), "http://gw/oncely/healthz");
        for bad in ["https://x", "127.0.0.1:7070", "http://x/?q=1", "not a url"] {
            assert!(
                matches!(Client::new(bad), Err(Error::Config { .. })),
                "{bad} should be refused"
            );
        }
        let zero = Client::builder("http://x")
            .retry(RetryPolicy {
                attempts: 0,
                ..RetryPolicy::default()
            })
            .build();
        assert!(matches!(zero, Err(Error::Config { .. })));
    }
}
