//! The one core both faces call: admission, authorisation, the tracker call with
//! its deadline, and the counting of what it decided.
//!
//! HTTP routes (`routes`) and RESP commands (`crate::resp`) reach the tracker only
//! through these, so the two faces cannot disagree on who is admitted (one
//! `max_concurrency` for both), whose token is good, when a call is abandoned to
//! its deadline, what a shutdown answers, or how verdicts are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use oncely::Tracker;
use tokio::sync::OwnedSemaphorePermit;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::metrics::{Op, Protocol};
use oncely_client::api::ErrorCode;

impl AppState {
    /// Whether callers must prove a token (tokens are configured).
    pub(crate) fn requires_token(&self) -> bool {
        !self.tokens().is_empty()
    }

    /// Whether `given` is one of the tokens, compared in constant time; false when
    /// none is configured. HTTP's bearer header and RESP's `AUTH` both ask this.
    pub(crate) fn authorises(&self, given: &[u8]) -> bool {
        self.requires_token() && auth::matches_any(self.tokens(), given)
    }

    /// Several calls' marks in one namespace, written with the marks other
    /// callers send at the same moment as one tracker call, one write
    /// ([`Tracker::check_and_mark_each`], through `combine`): tried first on an
    /// async worker, then, if that would wait, on the blocking pool under the
    /// deadline; admitted (one permit) until answered. Each call is validated alone (its own `Err` in its place); the whole fails
    /// only for what fails them all (admission, storage, shutdown), and then
    /// nothing was marked. The verdicts are counted under `protocol`.
    pub(crate) async fn mark_each(
        &self,
        protocol: Protocol,
        namespace: Arc<str>,
        calls: Vec<MarkCall>,
    ) -> Result<Vec<oncely::CallVerdicts>, ApiError> {
        let admitted = self.admit()?;
        let each = self
            .combined_marks(admitted, Arc::clone(&namespace), calls)
            .await?;
        let m = self.metrics();
        for verdicts in each.iter().flatten() {
            m.count_verdicts(protocol, &namespace, Op::CheckAndMark, verdicts);
        }
        Ok(each)
    }

    /// A check without marking, inline first as [`Self::mark_each`], counted under
    /// `protocol`.
    pub(crate) async fn check_ids(
        &self,
        protocol: Protocol,
        namespace: Arc<str>,
        ids: Arc<Vec<bytes::Bytes>>,
    ) -> Result<Vec<oncely::Verdict>, ApiError> {
        let admitted = self.admit()?;
        let verdicts = match self.inline(|tracker| Ok(tracker.try_check(&namespace, &ids)?))? {
            Some(v) => v,
            None => {
                let ns = Arc::clone(&namespace);
                self.blocking(admitted, move |tracker| Ok(tracker.check(&ns, &ids)?))
                    .await?
            }
        };
        self.metrics()
            .count_verdicts(protocol, &namespace, Op::Check, &verdicts);
        Ok(verdicts)
    }

    /// Any other tracker call, admitted and on the blocking pool under the deadline.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Tracker) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let admitted = self.admit()?;
        self.blocking(admitted, f).await
    }

    /// Runs `f` here, on an async worker, for a call that gives up (`Ok(None)`)
    /// rather than wait; the caller then goes to the blocking pool.
    pub(crate) fn inline<T>(
        &self,
        f: impl FnOnce(&Tracker) -> Result<Option<T>, ApiError>,
    ) -> Result<Option<T>, ApiError> {
        // As on the blocking pool: nothing new starts once shutdown has begun.
        let Ok(_task) = Arc::clone(&self.inner.tasks).try_acquire_owned() else {
            return Err(ApiError::shutting_down());
        };
        // (A panic here unwinds this request's task only; `CatchPanicLayer`
        // answers it with a 500.)
        match f(&self.inner.tracker) {
            // After close, the tracker refuses calls: that is a shutdown.
            Err(e) if e.code() == ErrorCode::Refused && !self.is_ready() => {
                Err(ApiError::shutting_down())
            }
            result => result,
        }
    }

    /// Runs `f` on the blocking pool, holding the request's admission permit until
    /// it returns (not merely until the client goes away), so `max_concurrency`
    /// bounds the tracker calls actually running.
    pub(crate) async fn blocking<T, F>(&self, admitted: Admitted, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Tracker) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking_unadmitted(move |tracker| {
            let _admitted = admitted;
            f(tracker)
        })
        .await
    }

    /// Takes an admission permit, or answers 503 `overloaded` at once.
    pub(crate) fn admit(&self) -> Result<Admitted, ApiError> {
        match Arc::clone(&self.inner.admission).try_acquire_owned() {
            Ok(permit) => Ok(Admitted(permit)),
            Err(_) => {
                self.metrics().shed();
                Err(ApiError::overloaded(self.limits().max_concurrency))
            }
        }
    }

    /// Runs `f` on the blocking pool without an admission permit, waiting for it
    /// at most `tracker_timeout` (see the module's "Deadlines").
    pub(crate) async fn blocking_unadmitted<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Tracker) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        // Fails only once shutdown has taken every permit: nothing new starts then.
        let Ok(task) = Arc::clone(&self.inner.tasks).try_acquire_owned() else {
            return Err(ApiError::shutting_down());
        };
        let tracker = self.inner.tracker.clone();
        // Who got there first: the call finishing, or its waiter giving up. Decided
        // once, so that a call finishing as the deadline passes is answered, never
        // hidden behind a 504.
        let race = Arc::new(AtomicU8::new(RUNNING));
        let worker_race = Arc::clone(&race);
        let metrics = self.metrics_handle();
        // The request's span (its ID) on the blocking pool too.
        let span = tracing::Span::current();
        let mut handle = tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            let _task = task;
            let result = f(&tracker);
            if worker_race
                .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                metrics.late_call();
                tracing::warn!(
                    ok = result.is_ok(),
                    "a tracker call finished after its request was answered 504; what it did stands"
                );
            }
            result
        });
        let timeout = self.limits().tracker_timeout;
        let joined = match tokio::time::timeout(timeout, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                if race
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(ApiError::deadline_exceeded(timeout));
                }
                // It finished just now: its answer is ready.
                handle.await
            }
        };
        match joined {
            Ok(Ok(t)) => Ok(t),
            // After close, the tracker refuses calls: that is a shutdown, not a
            // conflict.
            Ok(Err(e)) if e.code() == ErrorCode::Refused && !self.is_ready() => {
                Err(ApiError::shutting_down())
            }
            Ok(Err(e)) => Err(e),
            Err(join) => {
                tracing::error!(error = %join, "a request handler panicked");
                Err(ApiError::internal("the request failed unexpectedly"))
            }
        }
    }
}

/// One caller's marks for [`AppState::mark_each`]: its IDs and its owner token.
#[derive(Clone, Debug)]
pub(crate) struct MarkCall {
    pub(crate) ids: Vec<bytes::Bytes>,
    pub(crate) owner: Option<String>,
}

pub(super) fn borrow_calls(calls: &[MarkCall]) -> Vec<(&[bytes::Bytes], Option<&str>)> {
    calls
        .iter()
        .map(|c| (c.ids.as_slice(), c.owner.as_deref()))
        .collect()
}

/// States of a tracker call's race against its deadline.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

/// An admission permit: one of `max_concurrency`. Taking it fails at once, with 503
/// `overloaded`, when all are in use; the request then does nothing. Routes with a
/// body take it once the body is read ([`AppState::admit`]); routes without one,
/// as an extractor.
#[derive(Debug)]
pub(crate) struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.admit()
    }
}
