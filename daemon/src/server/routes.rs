//! The handlers, one per route, each annotated with its OpenAPI description (the
//! router is built from these annotations, see [`super::app`], so the document and
//! the routes cannot drift apart).
//!
//! Every handler that touches the tracker does all its work, parsing the body
//! included, in one closure on the blocking pool ([`AppState::blocking`]): the
//! parsed request borrows the body's bytes, and the async workers never wait on
//! RocksDB. Small check-and-mark and check requests first try the same work on the
//! async worker, with a call that gives up rather than wait ([`AppState::inline`]).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oncely::{DropPolicy, Tracker};
use oncely_client::api::schema::Name;
use oncely_client::api::{
    CheckRequest, CheckResponse, CheckpointBody, CheckpointResponse, ClaimAction,
    ClaimActionResponse, ClaimRequest, ClaimResponse, ClaimState, ErrorCode, ErrorResponse,
    ForgetRequest, ForgetResponse, ForgetResult, Health, MarkRequest, MarkResponse, NamespaceList,
    NamespacePatch, NamespacePut, NamespaceView,
};
use serde::Serialize;

use super::error::ApiError;
use super::error::FailureNote;
use super::extract::{ApiPath, JsonBody};
use super::metrics::{self, ClaimEnd, Op, Protocol};
use super::{Admitted, AppState, JSON, wire};

/// Serialises `value` as a JSON response. `capacity` is a guess of the size, so that
/// a large answer is written into one allocation.
pub(crate) fn json<T: Serialize>(
    status: StatusCode,
    value: &T,
    capacity: usize,
) -> Result<Response, ApiError> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, value)
        .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    Ok((
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        buf,
    )
        .into_response())
}

fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyIds,
            format!("{n} IDs in one request, over the limit of {max} (max_ids); nothing was done"),
        ));
    }
    Ok(())
}

/// Borrowed views of the IDs, as the tracker takes them (`Cow<str>` is not
/// `AsRef<[u8]>`): one small vector per request, no copy of any ID.
fn id_refs<'a>(ids: &'a [std::borrow::Cow<'a, str>]) -> Vec<&'a str> {
    ids.iter().map(AsRef::as_ref).collect()
}

/// Bytes of JSON per result, roughly: `{"id":"…","verdict":"duplicate","replayed":false},`
/// around a typical 16 to 36-byte ID.
const RESULT_BYTES: usize = 96;

/// Checks a batch of IDs and marks the new ones, atomically per ID.
///
/// Among any number of concurrent callers marking the same ID, exactly one gets
/// `new`. Results come back in the order of `ids`. A refused request (bad ID, too
/// many IDs) marks nothing; a storage failure (503) acknowledges nothing.
///
/// The `owner` identifies one delivery attempt of these events: draw a fresh token
/// for each delivery and reuse it only to retry the same request. The same owner
/// marking an ID again gets `new` with `replayed: true` (its first answer was lost:
/// process the event); a redelivery, with its fresh token, gets `duplicate`. Never
/// use a worker's name: a redelivery to that worker would come back `new`,
/// `replayed: true`, and be processed twice.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/check-and-mark",
    tag = "dedup",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = MarkRequest<'_>,
    responses(
        (status = 200, description = "One verdict per ID, in request order", body = MarkResponse<'_>),
        (status = 400, description = "Bad ID, owner, namespace name, JSON, or too many IDs; nothing was marked", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing acknowledged), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn check_and_mark(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let max_ids = state.limits().max_ids;
    let m = state.metrics_handle();
    // A small request is first tried on the async worker that read it: most need
    // no wait at all, and the hop to the blocking pool and back was half of a
    // single-ID request's CPU. One that would have to wait goes to the pool.
    if body.len() <= INLINE_BODY_BYTES
        && let Some(response) = state.inline(|tracker| {
            mark(&body, &ns, max_ids, &m, |ids, owner| {
                tracker.try_check_and_mark(&ns, ids, owner)
            })
        })?
    {
        return Ok(response);
    }
    state
        .blocking(admitted, move |tracker| {
            let answered = mark(&body, &ns, max_ids, &m, |ids, owner| {
                tracker.check_and_mark(&ns, ids, owner).map(Some)
            })?;
            answered.ok_or_else(|| ApiError::internal("a blocking call gave up"))
        })
        .await
}

/// Bodies up to this size may be answered on an async worker (see
/// [`check_and_mark`]): parsing them takes microseconds.
const INLINE_BODY_BYTES: usize = 4 << 10;

/// Parses a check-and-mark body, has `call` decide it, and encodes the answer;
/// `None` when `call` gave up.
fn mark(
    body: &JsonBody,
    ns: &str,
    max_ids: usize,
    m: &metrics::Metrics,
    call: impl FnOnce(&[&str], Option<&str>) -> Result<Option<Vec<oncely::Verdict>>, oncely::Error>,
) -> Result<Option<Response>, ApiError> {
    let req: MarkRequest<'_> = body.parse(ErrorCode::InvalidRequest)?;
    check_count(req.ids.len(), max_ids)?;
    let ids = id_refs(&req.ids);
    let Some(verdicts) = call(&ids, req.owner.as_deref())? else {
        return Ok(None);
    };
    m.count_verdicts(Protocol::Http, ns, Op::CheckAndMark, &verdicts);
    let results = ids
        .iter()
        .zip(verdicts)
        .map(|(id, v)| wire::mark_result(id, v))
        .collect();
    json(
        StatusCode::OK,
        &MarkResponse { results },
        ids.len() * RESULT_BYTES + 16,
    )
    .map(Some)
}

/// Checks a batch of IDs without marking: `new` here means unseen.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/check",
    tag = "dedup",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = CheckRequest<'_>,
    responses(
        (status = 200, description = "One verdict per ID, in request order", body = CheckResponse<'_>),
        (status = 400, description = "Bad ID, namespace name, JSON, or too many IDs", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 503, description = "Storage failed, overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn check(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let max_ids = state.limits().max_ids;
    let m = state.metrics_handle();
    // As for check-and-mark: small requests are first tried on the async worker.
    if body.len() <= INLINE_BODY_BYTES
        && let Some(response) = state.inline(|tracker| {
            check_ids(&body, &ns, max_ids, &m, |ids| tracker.try_check(&ns, ids))
        })?
    {
        return Ok(response);
    }
    state
        .blocking(admitted, move |tracker| {
            let answered = check_ids(&body, &ns, max_ids, &m, |ids| {
                tracker.check(&ns, ids).map(Some)
            })?;
            answered.ok_or_else(|| ApiError::internal("a blocking call gave up"))
        })
        .await
}

/// Parses a check body, has `call` decide it, and encodes the answer; `None` when
/// `call` gave up.
fn check_ids(
    body: &JsonBody,
    ns: &str,
    max_ids: usize,
    m: &metrics::Metrics,
    call: impl FnOnce(&[&str]) -> Result<Option<Vec<oncely::Verdict>>, oncely::Error>,
) -> Result<Option<Response>, ApiError> {
    let req: CheckRequest<'_> = body.parse(ErrorCode::InvalidRequest)?;
    check_count(req.ids.len(), max_ids)?;
    let ids = id_refs(&req.ids);
    let Some(verdicts) = call(&ids)? else {
        return Ok(None);
    };
    m.count_verdicts(Protocol::Http, ns, Op::Check, &verdicts);
    let results = ids
        .iter()
        .zip(verdicts)
        .map(|(id, v)| wire::check_result(id, v))
        .collect();
    json(
        StatusCode::OK,
        &CheckResponse { results },
        ids.len() * RESULT_BYTES + 16,
    )
    .map(Some)
}

/// Forgets IDs, so that the next caller marking one gets `new`: for replays an
/// operator orders, and for erasure requests.
///
/// `forgotten: true` where an exact mark was deleted. `false` where nothing exact
/// remembered the ID (never seen, or only a Bloom-only generation's filter holds
/// it, which cannot be taken out), where a live claim holds it (the claim is left
/// alone), for an ID repeated in the request, and for a retried forget whose first
/// attempt worked, so a retry is safe. A forgotten ID stays forgotten once its
/// generation turns Bloom-only. A refused request forgets nothing; a storage
/// failure (503) forgets nothing.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/forget",
    tag = "dedup",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = ForgetRequest<'_>,
    responses(
        (status = 200, description = "One result per ID, in request order", body = ForgetResponse<'_>),
        (status = 400, description = "Bad ID, namespace name, JSON, or too many IDs; nothing was forgotten", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing forgotten), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn forget(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let max_ids = state.limits().max_ids;
    let m = state.metrics_handle();
    state
        .blocking(admitted, move |tracker| {
            let req: ForgetRequest<'_> = body.parse(ErrorCode::InvalidRequest)?;
            check_count(req.ids.len(), max_ids)?;
            let ids = id_refs(&req.ids);
            let forgotten = tracker.forget(&ns, &ids)?;
            m.count_forgets(Protocol::Http, &forgotten);
            let results = ids
                .iter()
                .zip(forgotten)
                .map(|(id, forgotten)| ForgetResult {
                    id: (*id).into(),
                    forgotten,
                })
                .collect();
            json(
                StatusCode::OK,
                &ForgetResponse { results },
                ids.len() * RESULT_BYTES + 16,
            )
        })
        .await
}

/// Claims an ID for `owner` for `lease_ms`: exclusive processing rights.
///
/// Answers 200 whatever the verdict: `acquired` (process, then complete or
/// release), `in_progress` (another owner's lease is live until `until_ms`),
/// `duplicate` (done) or `probable_duplicate`. The same owner claiming again renews
/// its lease (`replayed: true`), so the owner is one delivery attempt of the event,
/// as for check-and-mark, never a worker.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/claims",
    tag = "claims",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "The claim's outcome", body = ClaimResponse),
        (status = 400, description = "Bad ID, owner, lease, namespace name or JSON", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 503, description = "Storage failed, overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn claim(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let m = state.metrics_handle();
    state
        .blocking(admitted, move |tracker| {
            let req: ClaimRequest = body.parse(ErrorCode::InvalidRequest)?;
            let lease = std::time::Duration::from_millis(req.lease_ms);
            let outcome = tracker.claim(&ns, &req.id, &req.owner, lease)?;
            m.count_claim(Protocol::Http, &ns, outcome);
            json(StatusCode::OK, &wire::claim_response(outcome), 64)
        })
        .await
}

/// Turns `owner`'s claim into a done mark: the ID answers `duplicate` from then on.
/// Completing twice is fine.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/claims/complete",
    tag = "claims",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = ClaimAction,
    responses(
        (status = 200, description = "Completed", body = ClaimActionResponse),
        (status = 400, description = "Bad ID, owner, namespace name or JSON", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 409, description = "Another owner holds or completed the ID, or there is no claim", body = ErrorResponse),
        (status = 503, description = "Storage failed, overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn complete(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    claim_action(state, admitted, ns, body, ClaimState::Completed).await
}

/// Forgets `owner`'s claim so that a redelivery can claim the ID. Releasing an ID
/// with no claim is fine (a retried release).
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/claims/release",
    tag = "claims",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = ClaimAction,
    responses(
        (status = 200, description = "Released", body = ClaimActionResponse),
        (status = 400, description = "Bad ID, owner, namespace name or JSON", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 409, description = "Another owner holds the claim, or the ID is done", body = ErrorResponse),
        (status = 503, description = "Storage failed, overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn release(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    claim_action(state, admitted, ns, body, ClaimState::Released).await
}

async fn claim_action(
    state: AppState,
    admitted: Admitted,
    ns: String,
    body: JsonBody,
    action: ClaimState,
) -> Result<Response, ApiError> {
    let m = state.metrics_handle();
    state
        .blocking(admitted, move |tracker| {
            let req: ClaimAction = body.parse(ErrorCode::InvalidRequest)?;
            match action {
                ClaimState::Completed => {
                    tracker.complete(&ns, &req.id, &req.owner)?;
                    m.count_claim_end(Protocol::Http, &ns, ClaimEnd::Completed);
                }
                ClaimState::Released => {
                    tracker.release(&ns, &req.id, &req.owner)?;
                    m.count_claim_end(Protocol::Http, &ns, ClaimEnd::Released);
                }
            }
            json(
                StatusCode::OK,
                &ClaimActionResponse {
                    id: req.id,
                    state: action,
                },
                64,
            )
        })
        .await
}

/// Creates a namespace (201) or sets its whole configuration (200).
///
/// The body names every configuration field: a missing one is refused with 400
/// `missing_fields` naming each, rather than reset to its default (use `PATCH` to
/// change some fields). A change that would forget remembered IDs at once (a smaller
/// `generations` dropping live generations, a smaller `exact_generations` dropping
/// exact tables) needs `"drop_now": true`; without it the answer is 409 `would_drop`
/// and nothing changes. Fields that are each in range but do not fit together
/// (`exact_generations` over `generations`, filters over the 64 GiB limit per
/// namespace, a false-positive rate that needs more than 48 hashes) get 409
/// `config_conflict`. For what a reconfiguration changes and when, see
/// `oncely::Tracker::configure_namespace`.
#[utoipa::path(
    put,
    path = "/v1/namespaces/{ns}",
    tag = "namespaces",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = NamespacePut,
    responses(
        (status = 201, description = "Created; its configuration and statistics", body = NamespaceView),
        (status = 200, description = "Updated; its configuration and statistics", body = NamespaceView),
        (status = 400, description = "Missing fields (`missing_fields`, naming each), a field out of range (`invalid_config`), a bad namespace name or JSON; nothing changed", body = ErrorResponse),
        (status = 409, description = "`would_drop`: the change would forget remembered IDs and `drop_now` is not set; `config_conflict`: the fields do not fit together; `over_budget`: the namespace's filters would not fit the filter memory budget (max_filter_bytes; the message gives what it asks, what the others use and the budget); `too_many_namespaces`: max_namespaces namespaces exist already; nothing changed", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing changed), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn put_namespace(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let shared = state.clone();
    state
        .blocking(admitted, move |tracker| {
            // The name first: a bad one is refused whatever the body.
            oncely::NamespaceName::new(ns.as_str())?;
            // No body at all names every field as missing, as `{}` does.
            let patch: NamespacePatch = if body.is_blank() {
                NamespacePatch::default()
            } else {
                body.parse(ErrorCode::InvalidConfig)?
            };
            let missing = patch.missing();
            if !missing.is_empty() {
                return Err(oncely::Error::MissingFields(missing).into());
            }
            in_range(&patch)?;
            let config = wire::fields(&patch).complete().map_err(config_conflict)?;
            let _config = shared.config_lock();
            let configured = tracker
                .configure_namespace_with(&ns, config, drop_policy(&patch))
                .map_err(config_conflict)?;
            let status = match configured {
                oncely::Configured::Created => StatusCode::CREATED,
                oncely::Configured::Updated => StatusCode::OK,
            };
            namespace_view(tracker, &ns, status)
        })
        .await
}

/// Changes some of an existing namespace's configuration: the fields given, the
/// others kept (absent and `null` fields alike).
///
/// As for `PUT`, a change that would forget remembered IDs at once needs
/// `"drop_now": true` (else 409 `would_drop`), and fields that do not fit together
/// with each other or with the namespace's other fields get 409 `config_conflict`.
/// Concurrent `PATCH`es of one namespace apply one after the other, each to the
/// configuration the one before left. A `PATCH` never creates a namespace.
#[utoipa::path(
    patch,
    path = "/v1/namespaces/{ns}",
    tag = "namespaces",
    params(("ns" = Name, Path, description = "Namespace name")),
    request_body = NamespacePatch,
    responses(
        (status = 200, description = "Updated; its configuration and statistics", body = NamespaceView),
        (status = 400, description = "A field out of range (`invalid_config`), a bad namespace name or JSON; nothing changed", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 409, description = "`would_drop`: the change would forget remembered IDs and `drop_now` is not set; `config_conflict`: the fields do not fit together; `over_budget`: the namespace's filters would not fit the filter memory budget (max_filter_bytes; the message gives what it asks, what the others use and the budget); `too_many_namespaces`: max_namespaces namespaces exist already; nothing changed", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing changed), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn patch_namespace(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    let shared = state.clone();
    state
        .blocking(admitted, move |tracker| {
            oncely::NamespaceName::new(ns.as_str())?;
            let patch: NamespacePatch = body.parse(ErrorCode::InvalidConfig)?;
            in_range(&patch)?;
            // Read, change, write under the lock, so that two PATCHes of different
            // fields both land, and no PUT or DELETE falls in between.
            let _config = shared.config_lock();
            let current = tracker.namespace_info(&ns)?.config;
            let config = wire::fields(&patch)
                .apply_to(&current)
                .map_err(config_conflict)?;
            let _ = tracker
                .configure_namespace_with(&ns, config, drop_policy(&patch))
                .map_err(config_conflict)?;
            namespace_view(tracker, &ns, StatusCode::OK)
        })
        .await
}

/// 400 `invalid_config` for a field outside the range the API documents for it.
fn in_range(patch: &NamespacePatch) -> Result<(), ApiError> {
    match patch.out_of_range() {
        Some((field, reason)) => Err(ApiError::bad_request(
            ErrorCode::InvalidConfig,
            format!("invalid {field}: {reason}"),
        )),
        None => Ok(()),
    }
}

/// The library's refusal of fields that are each in range (checked before): they do
/// not fit together, or not with the server's limits. 409, not 400: the request is
/// well-formed by the document's every rule, and what refuses it is the combination
/// (for a `PATCH`, with the namespace's current state), which no JSON schema can
/// state.
fn config_conflict(e: oncely::Error) -> ApiError {
    match e {
        oncely::Error::InvalidConfig { .. } => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::ConfigConflict,
            e.to_string(),
        ),
        other => other.into(),
    }
}

const fn drop_policy(patch: &NamespacePatch) -> DropPolicy {
    if patch.drop_now {
        DropPolicy::DropNow
    } else {
        DropPolicy::Refuse
    }
}

fn namespace_view(tracker: &Tracker, ns: &str, status: StatusCode) -> Result<Response, ApiError> {
    let view = wire::namespace_view(tracker.namespace_info(ns)?, tracker.filter_budget());
    json(status, &view, 512 + 384 * view.generations.len())
}

/// A namespace's configuration and live statistics: per generation its IDs, whether
/// it keeps its exact table, its filter's fill ratio and estimated false-positive
/// rate; what the namespace is charged against the filter memory budget
/// (`charged_bytes`), and the budget with its use across namespaces
/// (`filter_budget`). The statistics are counters the library keeps as filters
/// change: reading them scans no filter.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}",
    tag = "namespaces",
    params(("ns" = Name, Path, description = "Namespace name")),
    responses(
        (status = 200, description = "Configuration and statistics", body = NamespaceView),
        (status = 400, description = "Bad namespace name", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 503, description = "Overloaded or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn get_namespace(
    State(state): State<AppState>,
    admitted: Admitted,
    ApiPath(ns): ApiPath<String>,
) -> Result<Response, ApiError> {
    state
        .blocking(admitted, move |tracker| {
            namespace_view(tracker, &ns, StatusCode::OK)
        })
        .await
}

/// Deletes a namespace with all its marks, snapshots and checkpoints. The `default`
/// namespace always exists: deleting it answers 409 `refused`.
#[utoipa::path(
    delete,
    path = "/v1/namespaces/{ns}",
    tag = "namespaces",
    params(("ns" = Name, Path, description = "Namespace name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad namespace name", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 409, description = "The default namespace cannot be deleted", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing changed), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn delete_namespace(
    State(state): State<AppState>,
    admitted: Admitted,
    ApiPath(ns): ApiPath<String>,
) -> Result<Response, ApiError> {
    let shared = state.clone();
    state
        .blocking(admitted, move |tracker| {
            // Not between a PATCH's read and write: that write would create the
            // namespace anew.
            let _config = shared.config_lock();
            tracker.delete_namespace(&ns)?;
            shared.metrics().namespace_deleted(&ns);
            Ok(StatusCode::NO_CONTENT.into_response())
        })
        .await
}

/// Every namespace, sorted by name.
#[utoipa::path(
    get,
    path = "/v1/namespaces",
    tag = "namespaces",
    responses(
        (status = 200, description = "Namespace names", body = NamespaceList),
        (status = 503, description = "Overloaded or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn list_namespaces(
    State(state): State<AppState>,
    admitted: Admitted,
) -> Result<Response, ApiError> {
    state
        .blocking(admitted, move |tracker| {
            let namespaces = tracker.namespaces();
            json(StatusCode::OK, &NamespaceList { namespaces }, 256)
        })
        .await
}

/// Stores a consumer's last processed position in a namespace, durably (as a mark
/// is). Resume from it with an inclusive lower bound. With `expected`, only if the
/// stored position is that one (or, `null`, if none is stored): two instances of a
/// consumer then never move its checkpoint over each other. A retry whose first
/// attempt landed answers 200.
#[utoipa::path(
    put,
    path = "/v1/namespaces/{ns}/checkpoints/{consumer}",
    tag = "checkpoints",
    params(
        ("ns" = Name, Path, description = "Namespace name"),
        ("consumer" = Name, Path, description = "Consumer name"),
    ),
    request_body = CheckpointBody,
    responses(
        (status = 200, description = "Stored (or stored already)", body = CheckpointResponse),
        (status = 400, description = "Bad consumer name, position or expected position (1 to 1024 bytes), namespace name or JSON", body = ErrorResponse),
        (status = 404, description = "Unknown namespace", body = ErrorResponse),
        (status = 409, description = "`checkpoint_conflict`: the stored position (`current`) is neither `expected` nor `position`; nothing changed", body = ErrorResponse),
        (status = 503, description = "Storage failed (nothing stored), overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn put_checkpoint(
    State(state): State<AppState>,
    ApiPath((ns, consumer)): ApiPath<(String, String)>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let admitted = state.admit()?;
    state
        .blocking(admitted, move |tracker| {
            let req: CheckpointBody = body.parse(ErrorCode::InvalidRequest)?;
            match &req.expected {
                Some(expected) => {
                    tracker.set_checkpoint_if(&ns, &consumer, expected.as_deref(), &req.position)
                }
                None => tracker.set_checkpoint(&ns, &consumer, &req.position),
            }?;
            json(
                StatusCode::OK,
                &CheckpointResponse {
                    namespace: ns,
                    consumer,
                    position: req.position,
                },
                128,
            )
        })
        .await
}

/// A consumer's stored position; 404 `checkpoint_not_found` when it has none.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/checkpoints/{consumer}",
    tag = "checkpoints",
    params(
        ("ns" = Name, Path, description = "Namespace name"),
        ("consumer" = Name, Path, description = "Consumer name"),
    ),
    responses(
        (status = 200, description = "The stored position", body = CheckpointResponse),
        (status = 400, description = "Bad consumer or namespace name", body = ErrorResponse),
        (status = 404, description = "Unknown namespace, or no checkpoint stored", body = ErrorResponse),
        (status = 503, description = "Storage failed, overloaded, or shutting down", body = ErrorResponse),
    )
)]
pub(crate) async fn get_checkpoint(
    State(state): State<AppState>,
    admitted: Admitted,
    ApiPath((ns, consumer)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .blocking(admitted, move |tracker| {
            let Some(position) = tracker.checkpoint(&ns, &consumer)? else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::CheckpointNotFound,
                    format!("consumer {consumer:?} has no checkpoint in namespace {ns:?}"),
                ));
            };
            json(
                StatusCode::OK,
                &CheckpointResponse {
                    namespace: ns,
                    consumer,
                    position,
                },
                128,
            )
        })
        .await
}

/// Liveness: the process answers. Needs no token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> Result<Response, ApiError> {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
        32,
    )
}

/// Readiness: the daemon is not shutting down (it turns unready for the drain
/// delay before it stops listening), and the store's writes succeed. Needs no
/// token; the store's error, when its writes fail, is shown only to a caller that
/// presents one.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Shutting down (shutting_down), or the store's writes are failing (storage_unavailable; the store's error itself only to a caller presenting a valid token)", body = ErrorResponse),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.readiness(super::auth::proves_token(&state, &headers)) {
        Ok(()) => json(
            StatusCode::OK,
            &Health {
                status: "ready".into(),
            },
            32,
        )
        .unwrap_or_else(IntoResponse::into_response),
        Err(e) => {
            // An expected answer while draining or while storage fails (which the
            // ticker logs once): no failure line per probe.
            let mut response = e.into_response();
            response.extensions_mut().remove::<FailureNote>();
            response
        }
    }
}

/// Metrics in the Prometheus text format (0.0.4): requests by route and status,
/// latency histograms, IDs by verdict, connections, the filter memory budget and
/// its use, per-namespace fill ratio, estimated false-positive rate, generation
/// count and charge against the budget.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 504, description = "deadline_exceeded: the figures could not be read within tracker_timeout", body = ErrorResponse),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Not admission-controlled: monitoring must see an overloaded daemon. It reads
    // namespace statistics (kept as counters by the library: no filter is scanned,
    // and each namespace's lock is held for a copy of a few numbers), on the
    // blocking pool like the rest.
    let m = state.metrics_handle();
    let text = state
        .blocking_unadmitted(move |_| {
            m.encode()
                .map_err(|_| ApiError::internal("cannot encode the metrics"))
        })
        .await?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

/// This API's OpenAPI 3.1 document, generated from the handlers, with this server's
/// limits (`max_ids`, `max_body_bytes`) in it.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        state.openapi_document(),
    )
        .into_response()
}

/// Answers paths that match no route: 404 in the common error shape.
pub(crate) async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Answers a known path with a method it does not serve: 405 in the common error
/// shape (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} does not accept {method}", uri.path()),
    )
}
