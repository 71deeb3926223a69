//! The client: one method per route, each with its retry semantics.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use tokio::time::Instant;

use crate::api::{
    CheckRequest, CheckResponse, CheckpointBody, CheckpointResponse, ClaimAction,
    ClaimActionResponse, ClaimRequest, ClaimResponse, ClaimVerdict, ErrorCode, ErrorResponse,
    ForgetRequest, ForgetResponse, Health, MarkRequest, MarkResponse, NamespaceConfig,
    NamespaceList, NamespacePatch, NamespacePut, NamespaceView, VerdictName,
};
use crate::batch::{self, BatchStats, Batcher, Batching};
use crate::error::Error;
use crate::outcome::{ClaimOutcome, Configured, DropPolicy, Verdict};
use crate::retry::{Jitter, RetryPolicy};

/// Builds a [`Client`]; see [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    jitter_seed: Option<u64>,
    batching: Option<Batching>,
    /// PEM text of root certificates trusted besides the system's.
    roots: Vec<Vec<u8>>,
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
            .field("batching", &self.batching)
            .field("root_certificates", &self.roots.len())
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
    /// [default: 10 s]; never more than what is left of the call's
    /// [deadline](RetryPolicy::deadline).
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take [default: 2 s].
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy and deadline of every call [default: [`RetryPolicy::default`]];
    /// [`Client::with_retry`] changes it for some calls.
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

    /// How concurrent [`check_and_mark`](Client::check_and_mark) calls share requests
    /// [default: [`Batching::default`], on]; see [`Batching`] for when a call waits
    /// and what coalesced calls share.
    pub const fn batching(mut self, batching: Batching) -> Self {
        self.batching = Some(batching);
        self
    }

    /// Turns auto-batching off: every call is a request of its own.
    pub const fn no_batching(mut self) -> Self {
        self.batching = None;
        self
    }

    /// Trusts the certificate authorities in `pem` (PEM text: one or more
    /// `-----BEGIN CERTIFICATE-----` blocks), besides the system's roots, for an
    /// `https://` base URL: a daemon serving a certificate of your own CA
    /// (`oncelyd serve --tls-cert --tls-key`). Call it again for more. Checked by
    /// [`build`](Self::build).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/oncely/ca.pem")?;
    /// let client = oncely_client::Client::builder("https://oncely.internal:7070")
    ///     .add_root_certificate(ca)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn add_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// Builds the client. Nothing is sent yet.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a base URL that is not `http://` or
    /// `https://host[:port][/prefix]`, a token that cannot be a header, zero
    /// attempts, a zero deadline, batching limits of 0, or a root certificate that
    /// is not PEM (or, for `https://`, no root certificate at all: none given and
    /// none on the system).
    pub fn build(self) -> Result<Client, Error> {
        let mut base = Url::parse(&self.base_url).map_err(|e| Error::Config {
            setting: "base_url",
            reason: format!("{:?}: {e}", self.base_url),
        })?;
        let https = match base.scheme() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(Error::Config {
                    setting: "base_url",
                    reason: format!(
                        "{:?}: want http:// or https://host[:port][/prefix]",
                        self.base_url
                    ),
                });
            }
        };
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config {
                setting: "base_url",
                reason: format!(
                    "{:?}: want http:// or https://host[:port][/prefix]",
                    self.base_url
                ),
            });
        }
        let mut roots = Vec::new();
        for pem in &self.roots {
            roots.extend(crate::tls::roots_of_pem(pem)?);
        }
        let tls = crate::tls::client_config(https, roots)?;
        // Paths are appended segment by segment; a trailing slash would add an
        // empty one.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        self.retry.validate()?;
        if let Some(batching) = &self.batching {
            batching.validate()?;
        }
        let auth = self.token.as_deref().map(bearer).transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // Small requests must not wait for Nagle's algorithm.
            .tcp_nodelay(true)
            // The daemon never redirects, and a followed redirect would send a
            // check-and-mark again, somewhere else: a redirect is an error here.
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| Error::Config {
                setting: "http",
                reason: e.to_string(),
            })?;
        let seed = match self.jitter_seed {
            Some(seed) => seed,
            None => random_u64()?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                timeout: self.timeout,
                jitter: Jitter::new(seed),
                batcher: self.batching.map(Batcher::new),
            }),
            retry: self.retry,
        })
    }
}

/// A client of one `oncelyd`. Cheap to clone: clones share one connection pool.
///
/// See the [crate docs](crate) for an example, the owner recipe and the retry rules;
/// each method says how it retries.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    retry: RetryPolicy,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Option<HeaderValue>,
    timeout: Duration,
    jitter: Jitter,
    batcher: Option<Batcher>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("auth", &self.inner.auth.is_some())
            .field("timeout", &self.inner.timeout)
            .field("retry", &self.retry)
            .field(
                "batching",
                &self.inner.batcher.as_ref().map(Batcher::config),
            )
            .finish_non_exhaustive()
    }
}

/// The answer to [`Client::check_and_mark`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marked {
    /// The owner token the marks were made with: the caller's, or the one the client
    /// drew for the request. A call coalesced with others (see [`Batching`]) shares
    /// the drawn token of their request: reuse it only to retry this call's own IDs,
    /// as for any token.
    pub owner: String,
    /// One verdict per ID, in the order of the IDs given.
    pub verdicts: Vec<Verdict>,
}

/// Which error answer to a retry means that an earlier attempt did the work, when
/// that attempt may have reached the daemon (its answer was lost).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// None: an error answer is an error.
    Never,
    /// 404 `unknown_namespace`: an earlier attempt deleted the namespace.
    ByUnknownNamespace,
    /// 409 `conflict`: an earlier attempt released the claim, and another owner has
    /// claimed (or completed) the ID since.
    ByConflict,
}

impl Settled {
    fn matches(self, e: &Error) -> bool {
        match self {
            Self::Never => false,
            Self::ByUnknownNamespace => e.error_code() == Some(ErrorCode::UnknownNamespace),
            Self::ByConflict => e.error_code() == Some(ErrorCode::Conflict),
        }
    }
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
            batching: Some(Batching::default()),
            roots: Vec::new(),
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

    /// The same client (sharing its connections) with another retry policy and
    /// deadline, for calls that need one: a consumer that must answer its broker
    /// within 2 s, say.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for zero attempts or a zero deadline.
    pub fn with_retry(&self, policy: RetryPolicy) -> Result<Self, Error> {
        policy.validate()?;
        Ok(Self {
            inner: Arc::clone(&self.inner),
            retry: policy,
        })
    }

    /// The retry policy of this client's calls.
    #[must_use]
    pub const fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// What auto-batching has done so far, or `None` when it is off.
    #[must_use]
    pub fn batching_stats(&self) -> Option<BatchStats> {
        self.inner.batcher.as_ref().map(Batcher::stats)
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
    /// An owner token identifies **one delivery attempt of one event** (or of one
    /// batch): every attempt of this call sends the same token, and so may you when
    /// you retry the same request yourself. If an attempt marked the IDs but its
    /// answer was lost (a timeout, a dropped connection), the retry finds the marks
    /// of the same owner and gets the original `new` back as [`Verdict::Replayed`],
    /// not `duplicate`, which would make the caller skip events nobody processed.
    ///
    /// With `owner: None` the client draws a fresh random token (128 bits from the
    /// operating system) for the call, and returns it in [`Marked::owner`]. Pass
    /// your own to extend the protection beyond this call: your retry of the same
    /// delivery after this call failed, or after a restart, also gets `Replayed` for
    /// what the lost attempt marked. Draw a new token for every delivery; never use
    /// a worker's name: when the broker redelivers an event to the same worker, a
    /// per-worker token would get `Replayed` (process it) where a fresh one gets
    /// `Duplicate` (skip it), and the event would be processed twice.
    ///
    /// ```no_run
    /// use oncely_client::{Client, Verdict};
    ///
    /// # async fn demo() -> Result<(), oncely_client::Error> {
    /// let client = Client::new("http://127.0.0.1:7070")?;
    /// let ids = ["evt-1", "evt-2", "evt-3"];
    /// // No owner: one is drawn and reused by every retry of this call.
    /// let marked = client.check_and_mark("default", &ids, None).await?;
    /// for (id, verdict) in ids.iter().zip(&marked.verdicts) {
    ///     match verdict {
    ///         // Replayed: a retry found this call's own earlier mark. Process it.
    ///         Verdict::New | Verdict::Replayed => println!("process {id}"),
    ///         Verdict::Duplicate | Verdict::ProbableDuplicate => println!("skip {id}"),
    ///         Verdict::InProgress { until_ms } => println!("{id} is claimed until {until_ms}"),
    ///     }
    /// }
    /// // The same delivery retried later, with the token of the first try.
    /// let again = client.check_and_mark("default", &ids, Some(&marked.owner)).await?;
    /// assert!(again.verdicts.iter().all(|v| *v == Verdict::Replayed));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Auto-batching
    ///
    /// With batching on (the default), a call made while this namespace and owner
    /// already have [`Batching::max_in_flight`] requests in flight waits, at most
    /// [`Batching::window`], to share a request with the calls that come after it;
    /// an idle client sends each call at once. The verdicts and errors returned are
    /// this call's own, and the owner token returned replays its IDs;
    /// [`Batching`] says exactly what coalesced calls share.
    ///
    /// # Errors
    ///
    /// [`Error::Http`]: 400 for a bad ID, owner or namespace name or too many IDs
    /// (nothing was marked), 404 for an unknown namespace, 503 when retries ran out
    /// (nothing was acknowledged); [`Error::Transport`] or [`Error::Timeout`] when
    /// retries ran out without an answer (the IDs may or may not be marked: call
    /// again with the owner of this call to find out, see above).
    pub async fn check_and_mark<S: AsRef<str>>(
        &self,
        namespace: &str,
        ids: &[S],
        owner: Option<&str>,
    ) -> Result<Marked, Error> {
        if let Some(batcher) = &self.inner.batcher
            && batcher.takes(ids.len())
        {
            return batch::check_and_mark(self, batcher, namespace, ids, owner).await;
        }
        let owner = match owner {
            Some(o) => o.to_owned(),
            None => random_owner()?,
        };
        let end = Instant::now() + self.retry.deadline;
        self.mark_once(namespace, ids, owner, end).await
    }

    /// One check-and-mark request of `ids` with `owner`, retried per the policy
    /// until `end`.
    pub(crate) async fn mark_once<S: AsRef<str>>(
        &self,
        namespace: &str,
        ids: &[S],
        owner: String,
        end: Instant,
    ) -> Result<Marked, Error> {
        let body = MarkRequest {
            ids: ids.iter().map(|id| Cow::Borrowed(id.as_ref())).collect(),
            owner: Some(Cow::Borrowed(&owner)),
        };
        let url = self.mark_url(namespace);
        let sent = self
            .send_until(Method::POST, &url, Some(&body), Settled::Never, end)
            .await?;
        let (_, bytes) = sent.ok_or_else(|| Error::Decode {
            url: url.to_string(),
            reason: "no answer to read".into(),
        })?;
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

    /// The check-and-mark URL of a namespace.
    pub(crate) fn mark_url(&self, namespace: &str) -> Url {
        self.url(&["v1", "namespaces", namespace, "check-and-mark"])
    }

    /// The batcher, when auto-batching is on.
    pub(crate) fn batcher(&self) -> Option<&Batcher> {
        self.inner.batcher.as_ref()
    }

    /// Checks a batch of IDs without marking them (`POST .../check`): here
    /// [`Verdict::New`] means unseen.
    ///
    /// Retries: always safe, a check changes nothing.
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
        let (_, bytes) = self.send_expecting(Method::POST, &url, Some(&body)).await?;
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

    /// Forgets IDs (`POST .../forget`), so that the next caller marking one gets
    /// [`Verdict::New`]: for replays an operator orders, and for erasure requests.
    /// One answer per ID, in order: `true` where an exact mark was deleted;
    /// `false` where nothing exact remembered the ID (never seen, or only a
    /// Bloom-only generation's filter holds it), where a live claim holds it (the
    /// claim is left alone), for a repeated ID, and where it was forgotten already.
    ///
    /// Retries: safe, a forget done twice leaves what it left once. A retry whose
    /// lost first attempt had landed answers `false` for the IDs that attempt
    /// forgot: they are forgotten all the same.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 400 for a bad ID or too many IDs (nothing forgotten), 404 for
    /// an unknown namespace; transport errors as for
    /// [`check_and_mark`](Self::check_and_mark).
    pub async fn forget<S: AsRef<str>>(
        &self,
        namespace: &str,
        ids: &[S],
    ) -> Result<Vec<bool>, Error> {
        let body = ForgetRequest {
            ids: ids.iter().map(|id| Cow::Borrowed(id.as_ref())).collect(),
        };
        let url = self.url(&["v1", "namespaces", namespace, "forget"]);
        let (_, bytes) = self.send_expecting(Method::POST, &url, Some(&body)).await?;
        let answer: ForgetResponse<'_> = decode(&url, &bytes)?;
        if answer.results.len() != ids.len() {
            return Err(mismatch(&url, ids.len(), answer.results.len()));
        }
        ids.iter()
            .zip(&answer.results)
            .map(|(id, r)| {
                if r.id == id.as_ref() {
                    Ok(r.forgotten)
                } else {
                    Err(Error::Decode {
                        url: url.to_string(),
                        reason: format!("result for {:?} where {:?} was sent", r.id, id.as_ref()),
                    })
                }
            })
            .collect()
    }

    /// Claims an ID for `owner` for `lease` (`POST .../claims`): exclusive
    /// processing rights until the lease ends, or until [`complete`](Self::complete)
    /// or [`release`](Self::release). As for marks, `owner` identifies one delivery
    /// attempt of the event, not a worker.
    ///
    /// Retries: a claim is idempotent for its owner (claiming again renews the
    /// lease), so a retry after a lost answer gets `Acquired { replayed: true, .. }`
    /// rather than `InProgress`.
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
        let (_, bytes) = self.send_expecting(Method::POST, &url, Some(&body)).await?;
        let answer: ClaimResponse = decode(&url, &bytes)?;
        let until = || {
            answer.until_ms.ok_or_else(|| Error::Decode {
                url: url.to_string(),
                reason: format!("{:?} without until_ms", answer.verdict),
            })
        };
        Ok(match answer.verdict {
            ClaimVerdict::Acquired => ClaimOutcome::Acquired {
                until_ms: until()?,
                replayed: answer.replayed.unwrap_or(false),
                taken_over: answer.taken_over.unwrap_or(false),
            },
            ClaimVerdict::InProgress => ClaimOutcome::InProgress { until_ms: until()? },
            ClaimVerdict::Duplicate => ClaimOutcome::Duplicate,
            ClaimVerdict::ProbableDuplicate => ClaimOutcome::ProbableDuplicate,
        })
    }

    /// Turns `owner`'s claim into a done mark (`POST .../claims/complete`): the ID
    /// answers `duplicate` from then on.
    ///
    /// Retries: completing twice is fine for the same owner, so a retry after a lost
    /// answer succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 409 `conflict` when another owner holds or completed the ID,
    /// or there is no claim; 400 and 404 as for [`claim`](Self::claim).
    pub async fn complete(&self, namespace: &str, id: &str, owner: &str) -> Result<(), Error> {
        self.claim_action(namespace, id, owner, "complete", Settled::Never)
            .await
    }

    /// Gives `owner`'s claim back so that a redelivery can claim the ID
    /// (`POST .../claims/release`). `Ok` means the caller no longer holds a claim on
    /// the ID.
    ///
    /// Retries: releasing an ID with no claim is fine, so a retry after a lost answer
    /// succeeds. When an attempt may have released the claim but its answer was lost,
    /// another owner may have claimed (or claimed and completed) the ID before the
    /// retry arrives; the retry's 409 `conflict` then counts as success: the claim
    /// was given back, which is what was asked, and someone else has the event now.
    /// A 409 that no earlier attempt can explain (the first attempt's, or one after
    /// attempts the daemon refused without doing anything) is an error.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 409 `conflict` when another owner holds the claim or the ID is
    /// done (see above); 400 and 404 as for [`claim`](Self::claim).
    pub async fn release(&self, namespace: &str, id: &str, owner: &str) -> Result<(), Error> {
        self.claim_action(namespace, id, owner, "release", Settled::ByConflict)
            .await
    }

    async fn claim_action(
        &self,
        namespace: &str,
        id: &str,
        owner: &str,
        action: &str,
        settled: Settled,
    ) -> Result<(), Error> {
        let body = ClaimAction {
            id: id.to_owned(),
            owner: owner.to_owned(),
        };
        let url = self.url(&["v1", "namespaces", namespace, "claims", action]);
        if let Some((_, bytes)) = self.send(Method::POST, &url, Some(&body), settled).await? {
            let _: ClaimActionResponse = decode(&url, &bytes)?;
        }
        Ok(())
    }

    /// Creates a namespace or sets its whole configuration (`PUT /v1/namespaces/{ns}`),
    /// refusing a change that would forget remembered IDs at once; whether it was
    /// created or updated, and its configuration and statistics.
    ///
    /// Retries: a `PUT` is idempotent. A retry after an attempt that created the
    /// namespace but lost its answer reports [`Configured::Updated`].
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 400 `invalid_namespace` or `invalid_config`, 409 `would_drop`
    /// (a smaller `generations` or `exact_generations` than the namespace has; see
    /// [`put_namespace_with`](Self::put_namespace_with)) or `config_conflict` (fields
    /// that do not fit together, such as `exact_generations` over `generations`, or
    /// filters over the memory limit); transport errors as for
    /// [`check_and_mark`](Self::check_and_mark).
    pub async fn put_namespace(
        &self,
        namespace: &str,
        config: &NamespaceConfig,
    ) -> Result<(Configured, NamespaceView), Error> {
        self.put_namespace_with(namespace, config, DropPolicy::Refuse)
            .await
    }

    /// [`put_namespace`](Self::put_namespace), saying whether the change may forget
    /// remembered IDs at once ([`DropPolicy::DropNow`] sends `"drop_now": true`).
    ///
    /// # Errors
    ///
    /// As [`put_namespace`](Self::put_namespace).
    pub async fn put_namespace_with(
        &self,
        namespace: &str,
        config: &NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<(Configured, NamespaceView), Error> {
        let body = NamespacePut::new(config).drop_now(policy == DropPolicy::DropNow);
        let url = self.url(&["v1", "namespaces", namespace]);
        let (status, bytes) = self.send_expecting(Method::PUT, &url, Some(&body)).await?;
        let view: NamespaceView = decode(&url, &bytes)?;
        let configured = if status == StatusCode::CREATED {
            Configured::Created
        } else {
            Configured::Updated
        };
        Ok((configured, view))
    }

    /// Changes some of an existing namespace's configuration
    /// (`PATCH /v1/namespaces/{ns}`): the fields given, the others kept; its
    /// configuration and statistics after the change.
    ///
    /// Retries: applying the same fields again changes nothing more, so a retry after
    /// a lost answer succeeds.
    ///
    /// ```no_run
    /// use oncely_client::Client;
    /// use oncely_client::api::NamespacePatch;
    ///
    /// # async fn demo() -> Result<(), oncely_client::Error> {
    /// let client = Client::new("http://127.0.0.1:7070")?;
    /// let more = NamespacePatch { generations: Some(6), ..NamespacePatch::default() };
    /// let view = client.patch_namespace("orders", &more).await?;
    /// assert_eq!(view.config.generations, 6);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`put_namespace`](Self::put_namespace), and 404 `unknown_namespace`: a
    /// `PATCH` never creates a namespace.
    pub async fn patch_namespace(
        &self,
        namespace: &str,
        patch: &NamespacePatch,
    ) -> Result<NamespaceView, Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        let (_, bytes) = self
            .send_expecting(Method::PATCH, &url, Some(patch))
            .await?;
        decode(&url, &bytes)
    }

    /// A namespace's configuration and live statistics (`GET /v1/namespaces/{ns}`).
    ///
    /// Retries: always safe.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 404 `unknown_namespace`, 400 `invalid_namespace`.
    pub async fn namespace(&self, namespace: &str) -> Result<NamespaceView, Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        let (_, bytes) = self.send_expecting::<()>(Method::GET, &url, None).await?;
        decode(&url, &bytes)
    }

    /// Deletes a namespace with its marks, snapshots and checkpoints
    /// (`DELETE /v1/namespaces/{ns}`).
    ///
    /// Retries: when an attempt may have deleted the namespace but its answer was
    /// lost, a retry answered 404 `unknown_namespace` counts as success. A 404 that no
    /// earlier attempt can explain (the first attempt's, or one after attempts the
    /// daemon refused without doing anything, such as a shed 503) is an error: the
    /// namespace did not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 404 `unknown_namespace` (see above), 409 `refused` for
    /// `default`.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        let url = self.url(&["v1", "namespaces", namespace]);
        self.send::<()>(Method::DELETE, &url, None, Settled::ByUnknownNamespace)
            .await?;
        Ok(())
    }

    /// Every namespace, sorted by name (`GET /v1/namespaces`).
    ///
    /// Retries: always safe.
    ///
    /// # Errors
    ///
    /// Transport errors, 401.
    pub async fn namespaces(&self) -> Result<Vec<String>, Error> {
        let url = self.url(&["v1", "namespaces"]);
        let (_, bytes) = self.send_expecting::<()>(Method::GET, &url, None).await?;
        let list: NamespaceList = decode(&url, &bytes)?;
        Ok(list.namespaces)
    }

    /// Stores `consumer`'s last processed position in a namespace
    /// (`PUT .../checkpoints/{consumer}`).
    ///
    /// Retries: a `PUT` is idempotent. (A retry can land after a later call of yours
    /// only if you issue calls concurrently; store positions from one task.)
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
        self.put_checkpoint(namespace, consumer, None, position)
            .await
    }

    /// Stores `consumer`'s position only if the stored one is `expected` (`None`:
    /// only if none is stored yet): `PUT .../checkpoints/{consumer}` with
    /// `"expected"`. Two instances of a consumer then never move its checkpoint
    /// over each other: each writes expecting the position it last read.
    ///
    /// Retries: safe. An attempt whose answer was lost stored `position`, and the
    /// daemon answers a retry that finds it stored with success.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointConflict`] with the stored position when it is neither
    /// `expected` nor `position` (nothing changed: read on from there);
    /// [`Error::Http`] 400 for a bad consumer name or position, 404 for an unknown
    /// namespace.
    pub async fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        self.put_checkpoint(namespace, consumer, Some(expected), position)
            .await
    }

    async fn put_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<Option<&str>>,
        position: &str,
    ) -> Result<(), Error> {
        let url = self.url(&["v1", "namespaces", namespace, "checkpoints", consumer]);
        let body = CheckpointBody {
            position: position.to_owned(),
            expected: expected.map(|e| e.map(str::to_owned)),
        };
        let (_, bytes) = self.send_expecting(Method::PUT, &url, Some(&body)).await?;
        let _: CheckpointResponse = decode(&url, &bytes)?;
        Ok(())
    }

    /// `consumer`'s stored position, or `None` when it has none
    /// (`GET .../checkpoints/{consumer}`). Resume from it inclusively.
    ///
    /// Retries: always safe.
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
        match self.send_expecting::<()>(Method::GET, &url, None).await {
            Ok((_, bytes)) => {
                let answer: CheckpointResponse = decode(&url, &bytes)?;
                Ok(Some(answer.position))
            }
            Err(Error::Http { code, .. }) if code == "checkpoint_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Liveness (`GET /healthz`; needs no token). Retries: always safe.
    ///
    /// # Errors
    ///
    /// Transport errors when the daemon cannot be reached.
    pub async fn health(&self) -> Result<Health, Error> {
        let url = self.url(&["healthz"]);
        let (_, bytes) = self.send_expecting::<()>(Method::GET, &url, None).await?;
        decode(&url, &bytes)
    }

    /// Readiness (`GET /readyz`; needs no token). Retries: always safe.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] 503 `shutting_down` (after retries) once the daemon has begun
    /// to shut down; transport errors.
    pub async fn ready(&self) -> Result<Health, Error> {
        let url = self.url(&["readyz"]);
        let (_, bytes) = self.send_expecting::<()>(Method::GET, &url, None).await?;
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

    /// [`send`](Self::send) for calls whose every error answer is an error.
    async fn send_expecting<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&B>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let sent = self.send(method, url, body, Settled::Never).await?;
        sent.ok_or_else(|| Error::Decode {
            url: url.to_string(),
            reason: "no answer to read".into(),
        })
    }

    /// Sends one request, retrying per the policy within its deadline from now. The
    /// body is serialised once and shared by the attempts. A success status and its
    /// body; `None` when `settled` says an earlier attempt did the work; or the last
    /// error.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&B>,
        settled: Settled,
    ) -> Result<Option<(StatusCode, Bytes)>, Error> {
        let end = Instant::now() + self.retry.deadline;
        self.send_until(method, url, body, settled, end).await
    }

    /// [`send`](Self::send), with the call's deadline given: attempts and waits end
    /// by `end`.
    async fn send_until<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&B>,
        settled: Settled,
        end: Instant,
    ) -> Result<Option<(StatusCode, Bytes)>, Error> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| Error::Config {
                setting: "request",
                reason: format!("cannot encode the request: {e}"),
            })?;
        let policy = self.retry;
        // Whether an attempt may have reached the daemon and done the work without
        // its answer reaching us.
        let mut maybe_done = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let timeout = self
                .inner
                .timeout
                .min(end.saturating_duration_since(Instant::now()));
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout);
            if let Some(auth) = &self.inner.auth {
                request = request.header(header::AUTHORIZATION, auth.clone());
            }
            if let Some(b) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let (error, retry_after) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    match response.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok(Some((status, bytes))),
                        Ok(bytes) => {
                            let error = http_error(url, status, &bytes, attempt);
                            if maybe_done && settled.matches(&error) {
                                return Ok(None);
                            }
                            if !retryable_status(status) {
                                return Err(error);
                            }
                            maybe_done |= !refused_undone(&error);
                            (error, retry_after)
                        }
                        // Cut off mid-answer: nothing tells whether it was done.
                        Err(e) => {
                            maybe_done = true;
                            (transport(url, attempt, timeout, e), None)
                        }
                    }
                }
                Err(e) => {
                    // A certificate the client does not trust is refused again by
                    // every retry: the call fails at once.
                    if crate::tls::is_certificate_error(&e) {
                        return Err(transport(url, attempt, timeout, e));
                    }
                    // A connection that never opened carried no request.
                    maybe_done |= !e.is_connect();
                    (transport(url, attempt, timeout, e), None)
                }
            };
            if attempt >= policy.attempts {
                return Err(error);
            }
            let wait = policy.delay(attempt, self.inner.jitter.unit(), retry_after);
            if Instant::now() + wait >= end {
                // The retry could not start before the deadline: give up now rather
                // than sleep to no purpose.
                return Err(error);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn transport(url: &Url, attempts: u32, timeout: Duration, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout {
            url: url.to_string(),
            timeout,
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

/// 64 random bits from the operating system.
fn random_u64() -> Result<u64, Error> {
    let mut bytes = [0_u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config {
        setting: "random",
        reason: format!("the operating system's random source failed: {e}"),
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// A fresh owner token: 128 random bits from the operating system, as hex. Never
/// from a seeded generator: two clients sharing a token would read each other's
/// marks as their own retries.
pub(crate) fn random_owner() -> Result<String, Error> {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config {
        setting: "random",
        reason: format!("the operating system's random source failed: {e}"),
    })?;
    let mut s = String::with_capacity(39);
    s.push_str("client-");
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(s)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Statuses that say nothing was done or that the request may not have arrived,
/// where asking again may work: the daemon's 503 (storage failed, overloaded,
/// shutting down) and the gateway errors a proxy in front of it answers with.
fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether an error answer is the daemon's own 503, which says that nothing in the
/// request was done. A proxy's 502, 504 or bare 503 says nothing of the kind: the
/// daemon may have done the work behind it.
fn refused_undone(error: &Error) -> bool {
    error.status() == Some(StatusCode::SERVICE_UNAVAILABLE)
        && matches!(
            error.code(),
            Some("overloaded" | "storage_unavailable" | "shutting_down")
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
        Ok(ErrorResponse { error: e })
            if e.code == ErrorCode::CheckpointConflict.as_str() && e.current.is_some() =>
        {
            Error::CheckpointConflict {
                current: e.current.flatten(),
                message: e.message,
                attempts,
            }
        }
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
            until_ms: until_ms.ok_or_else(|| Error::Decode {
                url: url.to_string(),
                reason: "in_progress without until_ms".into(),
            })?,
        },
    })
}

/// The `Authorization` value for a bearer token, marked sensitive so that it stays
/// out of debug output. (`oncelyd load` sends it on its own connections.)
///
/// # Errors
///
/// [`Error::Config`] naming `token` when it is not visible ASCII.
pub fn bearer(token: &str) -> Result<HeaderValue, Error> {
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
    fn owners_are_fresh_and_well_formed() {
        let a = random_owner().unwrap();
        let b = random_owner().unwrap();
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
        for bad in ["ftp://x", "127.0.0.1:7070", "http://x/?q=1", "not a url"] {
            assert!(
                matches!(Client::new(bad), Err(Error::Config { .. })),
                "{bad} should be refused"
            );
        }
        let bad_root = Client::builder("https://x")
            .add_root_certificate("not PEM")
            .build();
        assert!(
            matches!(
                bad_root,
                Err(Error::Config {
                    setting: "root_certificate",
                    ..
                })
            ),
            "{bad_root:?}"
        );
        let zero = Client::builder("http://x")
            .retry(RetryPolicy::default().attempts(0))
            .build();
        assert!(matches!(zero, Err(Error::Config { .. })));
        let c = Client::new("http://x").unwrap();
        assert!(
            c.with_retry(RetryPolicy::default().deadline(Duration::ZERO))
                .is_err()
        );
    }

    #[test]
    fn only_the_daemons_own_503_says_nothing_was_done() {
        let url = Url::parse("http://x/").unwrap();
        let daemon = http_error(
            &url,
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"overloaded","message":"m"}}"#,
            1,
        );
        assert!(refused_undone(&daemon));
        let proxy = http_error(&url, StatusCode::SERVICE_UNAVAILABLE, b"<html>", 1);
        assert!(!refused_undone(&proxy));
        let gateway = http_error(
            &url,
            StatusCode::GATEWAY_TIMEOUT,
            br#"{"error":{"code":"overloaded","message":"m"}}"#,
            1,
        );
        assert!(!refused_undone(&gateway));
    }
}
