//! The wire types of the HTTP API: every request and response body, as serde types.
//!
//! The server uses them to parse requests and write responses, the OpenAPI document
//! is generated from them, and a client can use the same types to build requests and
//! read answers, so the three cannot disagree.
//!
//! Strings that the server only echoes or passes on (event IDs, owners) are
//! [`Cow<str>`]: deserialising borrows them from the request bytes unless they contain
//! JSON escapes, so a batch of a thousand IDs costs no allocation per ID.
//!
//! ```
//! use std::borrow::Cow;
//! use oncelyd::api::{MarkRequest, MarkResponse, VerdictName};
//!
//! let request = MarkRequest {
//!     ids: vec![Cow::Borrowed("order-1"), Cow::Borrowed("order-2")],
//!     owner: Some(Cow::Borrowed("worker-7")),
//! };
//! assert_eq!(
//!     serde_json::to_string(&request)?,
//!     r#"{"ids":["order-1","order-2"],"owner":"worker-7"}"#
//! );
//! let answer: MarkResponse<'_> = serde_json::from_str(
//!     r#"{"results":[{"id":"order-1","verdict":"new","replayed":false}]}"#,
//! )?;
//! assert_eq!(answer.results[0].verdict, VerdictName::New);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::borrow::Cow;

use oncely::{ClaimOutcome, GenerationInfo, NamespaceConfig, NamespaceInfo, Verdict};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/namespaces/{ns}/check-and-mark`: IDs to check and mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest<'a> {
    /// Event IDs: UTF-8 strings of 1 to 256 bytes, at most `max_ids` of them.
    #[serde(borrow)]
    #[schema(value_type = Vec<String>, example = json!(["order-1041", "order-1042"]))]
    pub ids: Vec<Cow<'a, str>>,
    /// The marking owner (a consumer instance or delivery attempt). The same owner
    /// marking an ID again gets its original `new` back, flagged `replayed`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "worker-7")]
    pub owner: Option<Cow<'a, str>>,
}

/// `POST /v1/namespaces/{ns}/check`: IDs to check without marking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest<'a> {
    /// Event IDs: UTF-8 strings of 1 to 256 bytes, at most `max_ids` of them.
    #[serde(borrow)]
    #[schema(value_type = Vec<String>, example = json!(["order-1041"]))]
    pub ids: Vec<Cow<'a, str>>,
}

/// A verdict as named over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictName {
    /// Not seen in the remembered window (check-and-mark: and now marked).
    New,
    /// An exact table holds it.
    Duplicate,
    /// Only a Bloom-only generation says it was seen.
    ProbableDuplicate,
    /// Another owner holds a live claim on it.
    InProgress,
}

impl VerdictName {
    /// The name and, for `in_progress`, the lease end in milliseconds since the epoch.
    #[must_use]
    pub const fn of(verdict: Verdict) -> (Self, Option<u64>) {
        match verdict {
            Verdict::New | Verdict::Replayed => (Self::New, None),
            Verdict::Duplicate => (Self::Duplicate, None),
            Verdict::ProbableDuplicate => (Self::ProbableDuplicate, None),
            Verdict::InProgress { until } => (Self::InProgress, Some(until.as_millis())),
        }
    }

    /// The name used over HTTP.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Duplicate => "duplicate",
            Self::ProbableDuplicate => "probable_duplicate",
            Self::InProgress => "in_progress",
        }
    }
}

/// The answer to check-and-mark: one result per ID, in the order of `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MarkResponse<'a> {
    /// One result per requested ID, in request order.
    #[serde(borrow)]
    pub results: Vec<MarkResult<'a>>,
}

/// One ID's check-and-mark result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MarkResult<'a> {
    /// The ID, as sent.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub id: Cow<'a, str>,
    /// `new`: process it; `duplicate`, `probable_duplicate`: skip it; `in_progress`:
    /// another owner holds a claim on it.
    pub verdict: VerdictName,
    /// `true` when this `new` is the same owner's earlier `new`, returned again.
    pub replayed: bool,
    /// For `in_progress`: when the other owner's lease ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl<'a> MarkResult<'a> {
    /// The result for `id` from the library's verdict.
    #[must_use]
    pub const fn new(id: &'a str, verdict: Verdict) -> Self {
        let (name, until_ms) = VerdictName::of(verdict);
        Self {
            id: Cow::Borrowed(id),
            verdict: name,
            replayed: verdict.is_replayed(),
            until_ms,
        }
    }
}

/// The answer to check: one result per ID, in the order of `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse<'a> {
    /// One result per requested ID, in request order.
    #[serde(borrow)]
    pub results: Vec<CheckResult<'a>>,
}

/// One ID's check result (`new` means unseen; nothing was marked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckResult<'a> {
    /// The ID, as sent.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub id: Cow<'a, str>,
    /// `new` here means unseen.
    pub verdict: VerdictName,
    /// For `in_progress`: when the owner's lease ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl<'a> CheckResult<'a> {
    /// The result for `id` from the library's verdict.
    #[must_use]
    pub const fn new(id: &'a str, verdict: Verdict) -> Self {
        let (name, until_ms) = VerdictName::of(verdict);
        Self {
            id: Cow::Borrowed(id),
            verdict: name,
            until_ms,
        }
    }
}

/// `POST /v1/namespaces/{ns}/claims`: claim an ID for a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The event ID (1 to 256 bytes).
    pub id: String,
    /// Who claims it (1 to 256 bytes).
    pub owner: String,
    /// Lease length in milliseconds: 1 ms to 7 days.
    pub lease_ms: u64,
}

/// A claim's outcome as named over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimVerdict {
    /// The caller holds the claim until `until_ms`: process, then complete or release.
    Acquired,
    /// Another owner holds a live claim until `until_ms`.
    InProgress,
    /// The ID is done.
    Duplicate,
    /// Only a Bloom-only generation says the ID was seen: probably done.
    ProbableDuplicate,
}

/// The answer to a claim (always 200, whatever the verdict).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// The outcome.
    pub verdict: ClaimVerdict,
    /// For `acquired` and `in_progress`: when the lease ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// For `acquired`: `true` when the caller already held the claim (lease renewed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
    /// For `acquired`: `true` when another owner's lease had run out uncompleted and
    /// the claim passed to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<bool>,
}

impl From<ClaimOutcome> for ClaimResponse {
    fn from(outcome: ClaimOutcome) -> Self {
        match outcome {
            ClaimOutcome::Acquired {
                until,
                replayed,
                taken_over,
            } => Self {
                verdict: ClaimVerdict::Acquired,
                until_ms: Some(until.as_millis()),
                replayed: Some(replayed),
                taken_over: Some(taken_over),
            },
            ClaimOutcome::InProgress { until } => Self {
                verdict: ClaimVerdict::InProgress,
                until_ms: Some(until.as_millis()),
                replayed: None,
                taken_over: None,
            },
            ClaimOutcome::Duplicate => Self {
                verdict: ClaimVerdict::Duplicate,
                until_ms: None,
                replayed: None,
                taken_over: None,
            },
            ClaimOutcome::ProbableDuplicate => Self {
                verdict: ClaimVerdict::ProbableDuplicate,
                until_ms: None,
                replayed: None,
                taken_over: None,
            },
        }
    }
}

/// `POST .../claims/complete` and `POST .../claims/release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimAction {
    /// The event ID.
    pub id: String,
    /// The owner holding the claim.
    pub owner: String,
}

/// What a complete or release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// The claim became a done mark: the ID now answers `duplicate`.
    Completed,
    /// The claim is forgotten: a redelivery can claim the ID again.
    Released,
}

/// The answer to complete and release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimActionResponse {
    /// The event ID.
    pub id: String,
    /// What happened to the claim.
    pub state: ClaimState,
}

/// `PUT` and `GET /v1/namespaces/{ns}/checkpoints/{consumer}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    /// The consumer's last processed position: 1 to 1024 bytes, opaque to Oncely.
    pub position: String,
}

/// A stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointResponse {
    /// The namespace.
    pub namespace: String,
    /// The consumer.
    pub consumer: String,
    /// Its last stored position.
    pub position: String,
}

/// `GET /v1/namespaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NamespaceList {
    /// Every namespace, sorted by name.
    pub namespaces: Vec<String>,
}

/// A namespace's configuration as JSON: every field optional on input, with the
/// defaults shown. Unknown fields are refused. (A schema only: the server parses
/// this into `oncely::NamespaceConfig`.)
#[derive(Clone, Debug, ToSchema)]
#[schema(as = NamespaceConfig)]
#[allow(dead_code)] // a schema only: the server (de)serialises `oncely::NamespaceConfig`
pub struct NamespaceConfigSchema {
    /// Generations in the ring, the open one included (1 to 1024).
    #[schema(default = 4, minimum = 1, maximum = 1024)]
    generations: Option<u32>,
    /// New IDs after which the open generation seals (at least 1).
    #[schema(default = 1_000_000, minimum = 1)]
    generation_capacity: Option<u64>,
    /// Time after which the open generation seals: `"250ms"`, `"30s"`, `"15m"`,
    /// `"1h"`, `"7d"`, or a number of seconds.
    #[schema(value_type = Option<String>, default = "1h", example = "10m")]
    generation_span: Option<String>,
    /// Target false-positive rate across all live generations, strictly between 0
    /// and 1.
    #[schema(default = 0.01, example = 0.001)]
    fp_rate: Option<f64>,
    /// How many of the newest generations keep an exact ID table (1 to `generations`).
    #[schema(default = 2, minimum = 1)]
    exact_generations: Option<u32>,
}

/// Configuration and live statistics of a namespace (`GET`, and the answer to `PUT`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NamespaceView {
    /// The namespace's name.
    pub name: String,
    /// Its configuration.
    #[schema(value_type = NamespaceConfigSchema)]
    pub config: NamespaceConfig,
    /// What it remembers at least (see `oncely::NamespaceConfig::remembers_at_least`).
    pub remembers_at_least: Remembers,
    /// Live generations, newest (open) first.
    pub generations: Vec<GenerationView>,
    /// The chance that an unseen ID is answered `probable_duplicate` now.
    pub estimated_fp: f64,
    /// Bytes of filter memory across generations.
    pub memory_bytes: u64,
}

/// The remembering guarantee: an ID is remembered for at least `ms` when fewer than
/// `generation_capacity` new IDs arrive per span, and for at least `ids` later new
/// IDs when traffic is faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Remembers {
    /// `(generations - 1) x generation_span`, in milliseconds.
    pub ms: u64,
    /// `(generations - 1) x generation_capacity`.
    pub ids: u64,
}

/// Statistics of one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationView {
    /// Sequence number.
    pub id: u64,
    /// When it opened (ms since the epoch). After a restart the ring's times are
    /// shifted to cut out the downtime, so that generations age only while the
    /// daemon runs (see `oncely::GenerationInfo::opened_at`).
    pub opened_at_ms: u64,
    /// When it sealed (ms since the epoch); absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at_ms: Option<u64>,
    /// New IDs marked into it.
    pub ids: u64,
    /// Whether it still has its exact table (no false positives inside it).
    pub exact: bool,
    /// Its filter: bits, bits set, fill ratio, estimated items and false-positive rate.
    pub filter: FilterView,
    /// Its filter's memory in bytes.
    pub memory_bytes: u64,
}

/// A generation's Bloom filter statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterView {
    /// Total bits.
    pub bits: u64,
    /// Bits set.
    pub ones: u64,
    /// `ones / bits`.
    pub fill_ratio: f64,
    /// Distinct IDs estimated from the fill.
    pub estimated_items: f64,
    /// The probability that an unseen ID hits this filter, given its bits now.
    pub estimated_fp: f64,
    /// Inserts that found the ID absent.
    pub inserted: u64,
}

impl From<NamespaceInfo> for NamespaceView {
    fn from(info: NamespaceInfo) -> Self {
        let (span, ids) = info.config.remembers_at_least();
        Self {
            name: info.name,
            remembers_at_least: Remembers {
                ms: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
                ids,
            },
            config: info.config,
            generations: info
                .generations
                .into_iter()
                .map(GenerationView::from)
                .collect(),
            estimated_fp: info.estimated_fp,
            memory_bytes: info.memory_bytes,
        }
    }
}

impl From<GenerationInfo> for GenerationView {
    fn from(g: GenerationInfo) -> Self {
        Self {
            id: g.id,
            opened_at_ms: g.opened_at,
            sealed_at_ms: g.sealed_at,
            ids: g.ids,
            exact: g.exact,
            filter: FilterView {
                bits: g.filter.bits,
                ones: g.filter.ones,
                fill_ratio: g.filter.fill_ratio,
                estimated_items: g.filter.estimated_items,
                estimated_fp: g.filter.estimated_fp,
                inserted: g.filter.inserted,
            },
            memory_bytes: g.memory_bytes,
        }
    }
}

/// `GET /healthz` and `GET /readyz` when healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    pub status: String,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// An error's machine-readable code and human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `invalid_json`, `invalid_request`, `invalid_id`,
    /// `invalid_namespace`, `invalid_owner`, `invalid_argument`, `invalid_config`,
    /// `too_many_ids`, `invalid_path`, `invalid_body`, `unauthorized`, `not_found`,
    /// `unknown_namespace`, `checkpoint_not_found`, `method_not_allowed`, `conflict`,
    /// `refused`, `payload_too_large`, `unsupported_media_type`,
    /// `storage_unavailable`, `overloaded`, `shutting_down`, `internal`.
    #[schema(example = "invalid_id")]
    pub code: String,
    /// What went wrong, naming the offending field or index.
    #[schema(example = "invalid event id at index 0: empty")]
    pub message: String,
}
