//! The wire types of the HTTP API: every request and response body, as serde types.
//!
//! `oncelyd` parses its requests and writes its answers with these very types, the
//! OpenAPI document it serves is generated from them (with the `openapi` feature),
//! and [`Client`](crate::Client) builds its requests and reads its answers with
//! them, so the server, the document and this client cannot disagree.
//!
//! Strings that the server only echoes or passes on (event IDs, owners) are
//! [`Cow<str>`]: deserialising borrows them from the request bytes unless they contain
//! JSON escapes, so a batch of a thousand IDs costs no allocation per ID.
//!
//! ```
//! use std::borrow::Cow;
//! use oncely_client::api::{MarkRequest, MarkResponse, VerdictName};
//!
//! // One owner token per delivery attempt of an event (see the crate docs).
//! let request = MarkRequest {
//!     ids: vec![Cow::Borrowed("order-1")],
//!     owner: Some(Cow::Borrowed("delivery-6f1c2a")),
//! };
//! assert_eq!(
//!     serde_json::to_string(&request)?,
//!     r#"{"ids":["order-1"],"owner":"delivery-6f1c2a"}"#
//! );
//! let answer: MarkResponse<'_> = serde_json::from_str(
//!     r#"{"results":[{"id":"order-1","verdict":"new","replayed":false}]}"#,
//! )?;
//! assert_eq!(answer.results[0].verdict, VerdictName::New);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{span, whole};

/// `POST /v1/namespaces/{ns}/check-and-mark`: IDs to check and mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MarkRequest<'a> {
    /// Event IDs, at most `max_ids` of them (this server's limit is in `maxItems`).
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::EventId>, example = json!(["order-1041", "order-1042"])))]
    pub ids: Vec<Cow<'a, str>>,
    /// A token for one delivery attempt of these events: draw a fresh one per
    /// delivery and reuse it only to retry the same request. The same owner marking
    /// an ID again gets its original `new` back, flagged `replayed` (its first answer
    /// was lost: process the event). Never a worker's name: a genuine redelivery to
    /// that worker would then come back `new` and be processed twice. Absent or
    /// `null`: no owner (a retry answers `duplicate`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::Owner>))]
    pub owner: Option<Cow<'a, str>>,
}

/// `POST /v1/namespaces/{ns}/check`: IDs to check without marking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckRequest<'a> {
    /// Event IDs, at most `max_ids` of them (this server's limit is in `maxItems`).
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::EventId>, example = json!(["order-1041"])))]
    pub ids: Vec<Cow<'a, str>>,
}

/// `POST /v1/namespaces/{ns}/forget`: IDs to forget, so that the next caller
/// marking one gets it as new (for replays an operator orders, and erasure
/// requests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest<'a> {
    /// Event IDs, at most `max_ids` of them (this server's limit is in `maxItems`).
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::EventId>, example = json!(["order-1041"])))]
    pub ids: Vec<Cow<'a, str>>,
}

/// The answer to forget: one result per ID, in the order of `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForgetResponse<'a> {
    /// One result per requested ID, in request order.
    #[serde(borrow)]
    pub results: Vec<ForgetResult<'a>>,
}

/// One ID's forget result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForgetResult<'a> {
    /// The ID, as sent.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: Cow<'a, str>,
    /// `true`: an exact mark was deleted, and the ID answers `new` to the next
    /// caller. `false`: nothing exact remembered it (never seen, or only a
    /// Bloom-only generation holds it), a live claim holds it (the claim is left
    /// alone), the ID came earlier in the same request, or an earlier forget
    /// already took it.
    pub forgotten: bool,
}

/// A verdict as named over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarkResponse<'a> {
    /// One result per requested ID, in request order.
    #[serde(borrow)]
    pub results: Vec<MarkResult<'a>>,
}

/// One ID's check-and-mark result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarkResult<'a> {
    /// The ID, as sent.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: Cow<'a, str>,
    /// `new`: process it; `duplicate`, `probable_duplicate`: skip it; `in_progress`:
    /// another owner holds a claim on it.
    pub verdict: VerdictName,
    /// `true` when this `new` is the same owner's earlier `new`, returned again: the
    /// same delivery attempt's retry, whose first answer was lost. Process the event.
    pub replayed: bool,
    /// For `in_progress`: when the other owner's lease ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// The answer to check: one result per ID, in the order of `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckResponse<'a> {
    /// One result per requested ID, in request order.
    #[serde(borrow)]
    pub results: Vec<CheckResult<'a>>,
}

/// One ID's check result (`new` means unseen; nothing was marked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckResult<'a> {
    /// The ID, as sent.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: Cow<'a, str>,
    /// `new` here means unseen.
    pub verdict: VerdictName,
    /// For `in_progress`: when the owner's lease ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// `POST /v1/namespaces/{ns}/claims`: claim an ID for a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The event ID.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::EventId))]
    pub id: String,
    /// Who claims it: one delivery attempt of the event, as for check-and-mark.
    /// Claiming again with the same owner renews the lease.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Owner))]
    pub owner: String,
    /// Lease length in milliseconds: 1 ms to 7 days.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 604_800_000, example = 30_000)
    )]
    #[serde(deserialize_with = "whole::deserialize")]
    pub lease_ms: u64,
}

/// A claim's outcome as named over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `POST .../claims/complete` and `POST .../claims/release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimAction {
    /// The event ID.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::EventId))]
    pub id: String,
    /// The owner holding the claim.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Owner))]
    pub owner: String,
}

/// What a complete or release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// The claim became a done mark: the ID now answers `duplicate`.
    Completed,
    /// The claim is forgotten: a redelivery can claim the ID again.
    Released,
}

/// The answer to complete and release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimActionResponse {
    /// The event ID.
    pub id: String,
    /// What happened to the claim.
    pub state: ClaimState,
}

/// `PUT` and `GET /v1/namespaces/{ns}/checkpoints/{consumer}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    /// The consumer's last processed position, opaque to Oncely.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Position))]
    pub position: String,
    /// A precondition: the position the caller last read, or `null` for "none may
    /// be stored yet". When the stored position is neither this nor `position`:
    /// 409 `checkpoint_conflict` with the stored one in `current`, and nothing
    /// changes. Left out: stored whatever was stored.
    #[serde(
        default,
        deserialize_with = "present::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::Position>))]
    pub expected: Option<Option<String>>,
}

/// Tells a field left out (`None`) from one given as `null` (`Some(None)`), for
/// fields where the two mean different things.
mod present {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointResponse {
    /// The namespace.
    pub namespace: String,
    /// The consumer.
    pub consumer: String,
    /// Its last stored position.
    pub position: String,
}

/// `GET /v1/namespaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceList {
    /// Every namespace, sorted by name.
    pub namespaces: Vec<String>,
}

/// The most generations a namespace may keep (`generations`, `exact_generations`).
pub const MAX_GENERATIONS: u32 = 1024;

/// The largest `generation_capacity` the API takes. (Far below it, filter memory
/// decides: a configuration whose filters would need more than 64 GiB per namespace
/// is refused with 409 `config_conflict`.)
pub const MAX_GENERATION_CAPACITY: u64 = 1_000_000_000_000;

/// A namespace's whole configuration: what `GET /v1/namespaces/{ns}` answers, and
/// (with `drop_now`, as `NamespacePut`) what a `PUT` carries.
///
/// Its `Default` is the daemon's default configuration: 4 generations of up to
/// 1,000,000 IDs or 1 hour each, a 1% false-positive target, exact tables for the 2
/// newest generations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Generations in the ring, the open one included.
    #[serde(deserialize_with = "whole::deserialize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024, example = 4))]
    pub generations: u32,
    /// New IDs after which the open generation seals.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_u64, example = 1_000_000)
    )]
    #[serde(deserialize_with = "whole::deserialize")]
    pub generation_capacity: u64,
    /// Time after which the open generation seals (in whole milliseconds).
    #[serde(with = "span")]
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Span))]
    pub generation_span: Duration,
    /// Target false-positive rate of a check across all live generations.
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0, example = 0.01)
    )]
    pub fp_rate: f64,
    /// How many of the newest generations keep an exact ID table (at most
    /// `generations`). Inside them there are no false positives.
    #[serde(deserialize_with = "whole::deserialize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024, example = 2))]
    pub exact_generations: u32,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            generations: 4,
            generation_capacity: 1_000_000,
            generation_span: Duration::from_secs(3600),
            fp_rate: 0.01,
            exact_generations: 2,
        }
    }
}

/// `PUT /v1/namespaces/{ns}`: the whole configuration, every field given, and
/// whether the change may forget remembered IDs at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NamespacePut {
    /// Generations in the ring, the open one included.
    #[serde(deserialize_with = "whole::deserialize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024, example = 6))]
    pub generations: u32,
    /// New IDs after which the open generation seals.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_u64, example = 1_000_000)
    )]
    #[serde(deserialize_with = "whole::deserialize")]
    pub generation_capacity: u64,
    /// Time after which the open generation seals.
    #[serde(with = "span")]
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Span))]
    pub generation_span: Duration,
    /// Target false-positive rate of a check across all live generations.
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0, example = 0.001)
    )]
    pub fp_rate: f64,
    /// How many of the newest generations keep an exact ID table (at most
    /// `generations`).
    #[serde(deserialize_with = "whole::deserialize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024, example = 3))]
    pub exact_generations: u32,
    /// Allow a change that forgets remembered IDs at once (a smaller `generations`
    /// dropping live generations, a smaller `exact_generations` dropping exact
    /// tables). Without it such a change is refused with 409 `would_drop`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drop_now: bool,
}

impl NamespacePut {
    /// The body that sets `config`, refusing to forget remembered IDs.
    #[must_use]
    pub fn new(config: &NamespaceConfig) -> Self {
        Self {
            generations: config.generations,
            generation_capacity: config.generation_capacity,
            generation_span: config.generation_span,
            fp_rate: config.fp_rate,
            exact_generations: config.exact_generations,
            drop_now: false,
        }
    }

    /// The same body, allowing (or not) a change that forgets remembered IDs at once.
    #[must_use]
    pub const fn drop_now(mut self, drop_now: bool) -> Self {
        self.drop_now = drop_now;
        self
    }
}

/// `PATCH /v1/namespaces/{ns}`: the fields to change, the others kept. Absent and
/// `null` fields are left as they are.
///
/// The daemon also reads `PUT` bodies with this type, so that a `PUT` missing fields
/// is answered with every missing field named.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NamespacePatch {
    /// Generations in the ring, the open one included.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option::deserialize"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024, example = 6))]
    pub generations: Option<u32>,
    /// New IDs after which the open generation seals.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option::deserialize"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_u64)
    )]
    pub generation_capacity: Option<u64>,
    /// Time after which the open generation seals.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "span::option"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::Span>))]
    pub generation_span: Option<Duration>,
    /// Target false-positive rate of a check across all live generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)
    )]
    pub fp_rate: Option<f64>,
    /// How many of the newest generations keep an exact ID table (at most
    /// `generations`, as given or as it is).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option::deserialize"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub exact_generations: Option<u32>,
    /// Allow a change that forgets remembered IDs at once; without it such a change
    /// is refused with 409 `would_drop`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drop_now: bool,
}

impl NamespacePatch {
    /// The configuration fields, in their documented order.
    pub const FIELDS: [&'static str; 5] = [
        "generations",
        "generation_capacity",
        "generation_span",
        "fp_rate",
        "exact_generations",
    ];

    /// The names of the configuration fields not given, in their documented order.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        let given = [
            self.generations.is_some(),
            self.generation_capacity.is_some(),
            self.generation_span.is_some(),
            self.fp_rate.is_some(),
            self.exact_generations.is_some(),
        ];
        Self::FIELDS
            .iter()
            .zip(given)
            .filter(|(_, given)| !given)
            .map(|(name, _)| *name)
            .collect()
    }

    /// The first field outside the range the API documents for it, with the reason;
    /// `None` when each given field is in range on its own. (Whether the fields fit
    /// together, `exact_generations` at most `generations` say, is for the server.)
    #[must_use]
    pub fn out_of_range(&self) -> Option<(&'static str, String)> {
        let generations = |name, n: Option<u32>| {
            n.filter(|n| !(1..=MAX_GENERATIONS).contains(n))
                .map(|n| (name, format!("{n} is outside 1..={MAX_GENERATIONS}")))
        };
        generations("generations", self.generations)
            .or_else(|| {
                self.generation_capacity
                    .filter(|n| !(1..=MAX_GENERATION_CAPACITY).contains(n))
                    .map(|n| {
                        (
                            "generation_capacity",
                            format!("{n} is outside 1..={MAX_GENERATION_CAPACITY}"),
                        )
                    })
            })
            .or_else(|| {
                self.fp_rate
                    .filter(|p| !(*p > 0.0 && *p < 1.0))
                    .map(|p| ("fp_rate", format!("{p} is not strictly between 0 and 1")))
            })
            .or_else(|| generations("exact_generations", self.exact_generations))
    }
}

impl From<&NamespaceConfig> for NamespacePatch {
    fn from(c: &NamespaceConfig) -> Self {
        Self {
            generations: Some(c.generations),
            generation_capacity: Some(c.generation_capacity),
            generation_span: Some(c.generation_span),
            fp_rate: Some(c.fp_rate),
            exact_generations: Some(c.exact_generations),
            drop_now: false,
        }
    }
}

// serde's `skip_serializing_if` takes a path to a function of `&T`.
#[allow(clippy::trivially_copy_pass_by_ref)]
const fn is_false(b: &bool) -> bool {
    !*b
}

/// Configuration and live statistics of a namespace (`GET`, and the answer to `PUT`
/// and `PATCH`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceView {
    /// The namespace's name.
    pub name: String,
    /// Its configuration.
    pub config: NamespaceConfig,
    /// What it remembers at least.
    pub remembers_at_least: Remembers,
    /// Live generations, newest (open) first.
    pub generations: Vec<GenerationView>,
    /// The chance that an unseen ID is answered `probable_duplicate` now.
    pub estimated_fp: f64,
    /// Bytes of filter memory across generations.
    pub memory_bytes: u64,
    /// What the namespace is charged against the daemon's filter memory budget: the
    /// most filter memory it can hold over its life under its configuration (its
    /// generations and one more, which a rotation allocates before the oldest
    /// leaves). Absent from daemons older than the budget: 0.
    #[serde(default)]
    pub charged_bytes: u64,
    /// The daemon's filter memory budget and its use across all namespaces. Absent
    /// from daemons older than the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_budget: Option<FilterBudgetView>,
}

/// The daemon's filter memory budget (`max_filter_bytes`) and its use: a namespace
/// create or reconfigure whose charge would take `charged_bytes` over
/// `budget_bytes` is refused with 409 `over_budget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FilterBudgetView {
    /// The budget, in bytes; absent when unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
    /// Bytes charged to all namespaces together.
    pub charged_bytes: u64,
    /// Bytes of filters allocated now, across namespaces.
    pub allocated_bytes: u64,
}

/// The remembering guarantee: an ID is remembered for at least `ms` when fewer than
/// `generation_capacity` new IDs arrive per span, and for at least `ids` later new
/// IDs when traffic is faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Remembers {
    /// `(generations - 1) x generation_span`, in milliseconds.
    pub ms: u64,
    /// `(generations - 1) x generation_capacity`.
    pub ids: u64,
}

/// Statistics of one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationView {
    /// Sequence number.
    pub id: u64,
    /// When it opened (ms since the epoch). After a restart the ring's times are
    /// shifted to cut out the downtime, so that generations age only while the
    /// daemon runs.
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
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `GET /healthz` and `GET /readyz` when healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    pub status: String,
}

/// Defines [`ErrorCode`] from one list: each variant with its wire name, once.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
        /// The stable code of an error answer (`{"error": {"code": ...}}`): what
        /// the daemon sends and what clients branch on, defined once for both.
        /// Over the wire it is a string ([`ErrorBody::code`]), so that a client
        /// reads the codes of a newer daemon too; [`ErrorCode::parse`] reads the
        /// ones this version knows.
        ///
        /// (Serde and the OpenAPI document name the variants in snake case, which
        /// is what [`ErrorCode::as_str`] spells out; a test holds the two equal.)
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order defined.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The code as sent.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON.
    InvalidJson = "invalid_json",
    /// The body is JSON of the wrong shape (a missing, unknown or mistyped field).
    InvalidRequest = "invalid_request",
    /// An event ID is empty or over 256 bytes.
    InvalidId = "invalid_id",
    /// A namespace name breaks the naming rules.
    InvalidNamespace = "invalid_namespace",
    /// An owner token is empty or over 256 bytes.
    InvalidOwner = "invalid_owner",
    /// Another argument (a lease, a consumer, a position) is out of range.
    InvalidArgument = "invalid_argument",
    /// A namespace configuration field is missing, mistyped or out of range.
    InvalidConfig = "invalid_config",
    /// A `PUT` of a namespace left fields out.
    MissingFields = "missing_fields",
    /// More IDs in one request than `max_ids`.
    TooManyIds = "too_many_ids",
    /// A path parameter is malformed.
    InvalidPath = "invalid_path",
    /// The body could not be read.
    InvalidBody = "invalid_body",
    /// No token, or a wrong one.
    Unauthorized = "unauthorized",
    /// A state-changing request from a foreign `Origin` (the browser guard).
    ForbiddenOrigin = "forbidden_origin",
    /// No such route.
    NotFound = "not_found",
    /// No such namespace.
    UnknownNamespace = "unknown_namespace",
    /// The consumer has no checkpoint.
    CheckpointNotFound = "checkpoint_not_found",
    /// The route does not answer this method.
    MethodNotAllowed = "method_not_allowed",
    /// The body did not arrive within `body_read_timeout`.
    RequestTimeout = "request_timeout",
    /// An ID's state does not allow the operation (a claim held or completed by
    /// another owner).
    Conflict = "conflict",
    /// A checkpoint's stored position is not the `expected` one.
    CheckpointConflict = "checkpoint_conflict",
    /// The operation is refused as such (deleting `default`, a closed tracker's
    /// administration).
    Refused = "refused",
    /// A configuration change would drop remembered IDs without `drop_now`.
    WouldDrop = "would_drop",
    /// Configuration fields in range that do not fit together.
    ConfigConflict = "config_conflict",
    /// The filter memory budget has no room for the namespace.
    OverBudget = "over_budget",
    /// The namespace cap is reached.
    TooManyNamespaces = "too_many_namespaces",
    /// The body is over `max_body_bytes`.
    PayloadTooLarge = "payload_too_large",
    /// A state-changing request without `Content-Type: application/json`.
    UnsupportedMediaType = "unsupported_media_type",
    /// The request target is too long.
    UriTooLong = "uri_too_long",
    /// The request's headers are too large.
    HeadersTooLarge = "headers_too_large",
    /// The request is not HTTP/1.1.
    MalformedRequest = "malformed_request",
    /// Storage failed: nothing in the request was acknowledged.
    StorageUnavailable = "storage_unavailable",
    /// Too many requests or bodies in flight: nothing was done.
    Overloaded = "overloaded",
    /// Another transaction held what the call needed: nothing was done.
    Busy = "busy",
    /// The daemon is shutting down.
    ShuttingDown = "shutting_down",
    /// The tracker did not answer within `tracker_timeout`: the outcome is unknown.
    DeadlineExceeded = "deadline_exceeded",
    /// A bug or damaged data.
    Internal = "internal",
}

impl ErrorCode {
    /// The code sent as `code`, if this version knows it.
    #[must_use]
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

impl ErrorResponse {
    /// An error answer with a code and a message, and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code: code.as_str().to_owned(),
                message: message.into(),
                current: None,
            },
        }
    }
}

/// An error's machine-readable code and human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable code, one of [`ErrorCode`]'s (a string, so that codes a newer
    /// daemon adds still read).
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode, example = "invalid_id"))]
    pub code: String,
    /// What went wrong, naming the offending field or index.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "invalid event id at index 0: empty")
    )]
    pub message: String,
    /// For `checkpoint_conflict`: the stored position (`null`: none is stored).
    /// Left out by every other code.
    #[serde(
        default,
        deserialize_with = "present::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::Position>))]
    pub current: Option<Option<String>>,
}

/// Schemas of values that travel as plain strings, for the OpenAPI document: each
/// states the limits the server enforces.
#[cfg(feature = "openapi")]
pub mod schema {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

    /// Declares a schema-only type whose schema is `$build`.
    macro_rules! string_schema {
        ($(#[$doc:meta])* $name:ident => $build:expr) => {
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name(());

            impl utoipa::PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    RefOr::T($build)
                }
            }

            impl utoipa::ToSchema for $name {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed(stringify!($name))
                }
            }
        };
    }

    fn text(min: usize, max: usize, description: &str, example: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .description(Some(description))
            .examples([serde_json::Value::from(example)])
    }

    string_schema!(
        /// An event ID: 1 to 256 bytes of UTF-8.
        EventId => Schema::Object(
            text(
                1,
                256,
                "An event ID: 1 to 256 bytes of UTF-8. `maxLength` counts characters, not \
                 bytes: 256 ASCII characters fit, fewer non-ASCII ones (any 64 characters \
                 fit). A longer ID is refused with 400 `invalid_id`, and nothing in its \
                 request is marked.",
                "order-1041",
            )
            .build(),
        )
    );

    string_schema!(
        /// An owner token: 1 to 256 bytes of UTF-8, one per delivery attempt.
        Owner => Schema::Object(
            text(
                1,
                256,
                "An owner token: 1 to 256 bytes of UTF-8 (`maxLength` counts characters, \
                 not bytes). It identifies one delivery attempt of one event: draw a fresh \
                 token for each delivery and reuse it only to retry the same request. \
                 Never a worker's name: a genuine redelivery to that worker would come back \
                 `new` with `replayed: true` and be processed twice.",
                "delivery-7f3a9c2e",
            )
            .build(),
        )
    );

    string_schema!(
        /// A checkpoint position: 1 to 1024 bytes of UTF-8.
        Position => Schema::Object(
            text(
                1,
                1024,
                "A consumer's position: 1 to 1024 bytes of UTF-8 (`maxLength` counts \
                 characters, not bytes), opaque to Oncely.",
                "offset:1041",
            )
            .build(),
        )
    );

    string_schema!(
        /// A namespace or consumer name.
        Name => Schema::Object(
            text(
                1,
                64,
                "1 to 64 of `A-Z a-z 0-9 . _ -`, other than `.` and `..`.",
                "orders",
            )
            .pattern(Some(NAME_PATTERN))
            .build(),
        )
    );

    string_schema!(
        /// A duration: a string with a unit, or a number of seconds.
        Span => Schema::OneOf(
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(SPAN_PATTERN)),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(crate::span::MAX_NUMBER)),
                )
                .description(Some(
                    "A duration of at least 1 ms: up to 9 significant digits and a unit \
                     (`ms`, `s`, `m`, `h`, `d`; none means seconds), as in `\"250ms\"`, \
                     `\"30s\"`, `\"15m\"`, `\"1h\"`, `\"7d\"`, or an integer number of \
                     seconds.",
                ))
                .examples([serde_json::Value::from("1h")])
                .build(),
        )
    );

    /// What [`Name`] matches: the name rules of `oncely::NamespaceName` (no `.` and no
    /// `..`, which URL clients resolve as path segments).
    pub const NAME_PATTERN: &str = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$";

    /// What the string form of [`Span`] matches.
    pub const SPAN_PATTERN: &str = crate::span::PATTERN;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_back_as_sent() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}: snake case, so that RESP can send it in capitals"
            );
        }
        assert_eq!(ErrorCode::parse("http_502"), None);
        let body = ErrorResponse::new(ErrorCode::UnknownNamespace, "no such namespace");
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "unknown_namespace", "message": "no such namespace"}})
        );
    }
}
