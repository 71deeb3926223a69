//! `GET /metrics`: Prometheus text format (0.0.4), written by `prometheus-client`.
//!
//! `docs/metrics.md` is the reference: every family, its labels, and the questions
//! it answers. Routes are labelled by their pattern (`/v1/namespaces/{ns}/check`),
//! never the concrete path, and the latency histogram by the class of the answer
//! (`ok`, `client_error`, `server_error`), never its status, so clients cannot grow
//! the series; IDs are counted once per request per verdict, not once per ID. The
//! verdict and claim counters are kept per namespace ([`ByNamespace`]): a namespace
//! has series only while it exists, and namespaces are capped. The namespace and
//! storage gauges are read from the tracker at scrape time, the `process_*` ones
//! from `/proc` ([`super::process_metrics`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use oncely::{ClaimOutcome, Tracker, Verdict};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::error::FailureNote;
use super::extract::BodyBudget;
use super::failures::FailureLog;
use super::openapi;
use super::process_metrics::{BuildInfo, ProcessCollector};
use super::store::StoreWatch;

/// The content type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
}

/// The latency histogram's labels: by the class of the answer, not its status, so
/// that its series (25 lines each) stay few whatever clients send.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    route: Cow<'static, str>,
    outcome: &'static str,
}

/// The latency histogram's `outcome` of an answer's status: fast refusals (401,
/// 400, a shed 503) would otherwise pull the percentiles of real work down exactly
/// when the daemon sheds load.
const fn outcome_of(status: u16) -> &'static str {
    match status {
        0..=399 => "ok",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    kind: &'static str,
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    protocol: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    outcome: &'static str,
}

/// Which face a request came in by: the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http = 0,
    Resp = 1,
}

impl Protocol {
    const ALL: [Self; 2] = [Self::Http, Self::Resp];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Resp => "resp",
        }
    }
}

/// The RESP commands counted by name in `oncelyd_resp_commands_total`; any other
/// command is counted as `other`, so clients cannot grow the series.
pub(crate) const RESP_COMMANDS: [&str; 21] = [
    "set",
    "setnx",
    "bf.add",
    "bf.madd",
    "bf.exists",
    "bf.mexists",
    "bf.reserve",
    "oncely.mark",
    "oncely.check",
    "oncely.claim",
    "oncely.complete",
    "oncely.release",
    "oncely.checkpoint",
    "oncely.forget",
    "oncely.ns",
    "ping",
    "hello",
    "auth",
    "client",
    "command",
    "other",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why the daemon closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// No request under way for `idle_timeout`.
    IdleTimeout,
    /// A request head not complete `header_read_timeout` after its first byte.
    HeaderTimeout,
    /// Shutting down, with no request under way: idle during the drain, or at the
    /// listener's close.
    Shutdown,
}

impl Closed {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Which call produced verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    CheckAndMark,
    Check,
}

/// The verdicts each operation can give, in [`verdict_index`] order: a check marks
/// nothing, so it never replays an owner's mark.
const MARK_VERDICTS: [&str; 5] = [
    "new",
    "replayed",
    "duplicate",
    "probable_duplicate",
    "in_progress",
];
const CHECK_VERDICTS: [&str; 4] = ["new", "duplicate", "probable_duplicate", "in_progress"];

const fn verdict_index(op: Op, v: Verdict) -> usize {
    match (op, v) {
        (_, Verdict::New) | (Op::Check, Verdict::Replayed) => 0,
        (Op::CheckAndMark, Verdict::Replayed) => 1,
        (Op::CheckAndMark, Verdict::Duplicate) => 2,
        (Op::CheckAndMark, Verdict::ProbableDuplicate) => 3,
        (Op::CheckAndMark, Verdict::InProgress { .. }) => 4,
        (Op::Check, Verdict::Duplicate) => 1,
        (Op::Check, Verdict::ProbableDuplicate) => 2,
        (Op::Check, Verdict::InProgress { .. }) => 3,
    }
}

/// The outcomes of a claim, in [`claim_index`] order.
const CLAIM_OUTCOMES: [&str; 6] = [
    "acquired",
    "renewed",
    "taken_over",
    "in_progress",
    "duplicate",
    "probable_duplicate",
];

const fn claim_index(outcome: ClaimOutcome) -> usize {
    match outcome {
        ClaimOutcome::Acquired { replayed: true, .. } => 1,
        ClaimOutcome::Acquired {
            taken_over: true, ..
        } => 2,
        ClaimOutcome::Acquired { .. } => 0,
        ClaimOutcome::InProgress { .. } => 3,
        ClaimOutcome::Duplicate => 4,
        ClaimOutcome::ProbableDuplicate => 5,
    }
}

/// How a claim ended, by its owner's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimEnd {
    Completed,
    Released,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The daemon's metrics and the registry that encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// The two families' series of each (method, served route, status) met so far,
    /// by [`series_key`]: `Family::get_or_create` hashes its labels with SipHash
    /// under a lock, and doing that for both families took 2,700 of a single-ID
    /// request's 52,100 instructions in its profile (`benches/callgrind.sh`).
    series: RwLock<HashMap<u64, Series, BuildHasherDefault<KeyHasher>>>,
    /// Verdicts, claims and claim ends, per namespace.
    by_namespace: Arc<ByNamespace>,
    /// IDs of forget requests: forgotten, kept.
    forgets: [[Counter; 2]; 2],
    /// Per [`RESP_COMMANDS`] entry: answered, refused with an error.
    resp_commands: [[Counter; 2]; RESP_COMMANDS.len()],
    shed: Counter,
    bodies_shed: Counter,
    in_flight: Gauge<i64, AtomicI64>,
    connections_open: Gauge<i64, AtomicI64>,
    connections_accepted: Counter,
    cap_reached: Counter,
    /// Per [`Closed`] reason, in its order.
    connections_closed: [Counter; 3],
    late: Counter,
    ticks_failed: Counter,
}

/// Upper bounds of the latency buckets, in seconds: 1, 2.5 and 5 per decade from
/// 1 µs to 10 s. Measured (`oncelyd load --batch 1 --concurrency 8` against
/// `oncelyd serve`, a debug build with optimised dependencies, 342,644 requests):
/// 93% of single-ID check-and-marks took at most 10 µs in the application and
/// 99.7% at most 100 µs, the old lowest bucket, which so held nearly all of them; a
/// release build is faster still. A 1,000-ID batch takes about a millisecond, an
/// fsync or a write stall tens of milliseconds.
const LATENCY_BUCKETS: [f64; 22] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Metrics of a daemon around `tracker`; `accepting` is the daemon's flag that
    /// turns false when shutdown begins (readiness reads it with the storage health);
    /// `store` holds the ticker's last probe of the store; `bodies` is the budget of
    /// request bodies in flight; `limits` are the daemon's (`max_namespaces` bounds
    /// the namespaces counted apart).
    pub(crate) fn new(
        tracker: Tracker,
        accepting: Arc<AtomicBool>,
        store: Arc<StoreWatch>,
        bodies: BodyBudget,
        limits: &super::Limits,
    ) -> Self {
        // `process_*` without the prefix, as every Prometheus client names them.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("oncelyd");
        registry.register_collector(Box::new(BuildInfo));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route pattern, method and outcome \
             (ok, client_error, server_error)",
            latency.clone(),
        );
        let by_namespace = Arc::new(ByNamespace::new(limits.max_namespaces));
        let forgets_family = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "forgets",
            "IDs in forget requests, by outcome: forgotten (its exact mark deleted) or kept \
             (nothing exact remembered it, a live claim holds it, or it was forgotten already)",
            forgets_family.clone(),
        );
        let forgets = Protocol::ALL.map(|p| {
            ["forgotten", "kept"].map(|outcome| {
                forgets_family.get_or_create_owned(&OutcomeLabels {
                    protocol: p.as_str(),
                    outcome,
                })
            })
        });
        let commands_family = Family::<CommandLabels, Counter>::default();
        registry.register(
            "resp_commands",
            "RESP commands answered, by command (lower case; `other` for any not listed) and \
             outcome: ok, or error (a RESP error answer, refusals included)",
            commands_family.clone(),
        );
        let resp_commands = RESP_COMMANDS.map(|command| {
            ["ok", "error"].map(|outcome| {
                commands_family.get_or_create_owned(&CommandLabels { command, outcome })
            })
        });
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests answered 503 at once because max_concurrency requests were in progress",
            shed.clone(),
        );
        let bodies_shed = Counter::default();
        registry.register(
            "bodies_shed",
            "Requests answered 503 overloaded because their body could not be read within \
             max_body_bytes_in_flight (the bodies in flight held it all for a second)",
            bodies_shed.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        let connections_open = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_max = Gauge::<i64, AtomicI64>::default();
        connections_max.set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
        registry.register(
            "connections_max",
            "Most client connections open at once (max_connections), HTTP and RESP together",
            connections_max,
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted since start-up",
            connections_accepted.clone(),
        );
        let cap_reached = Counter::default();
        registry.register(
            "connection_cap_reached",
            "Times the accept loop reached max_connections and stopped accepting until a \
             connection closed",
            cap_reached.clone(),
        );
        let closed_family = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the daemon closed itself, by reason: idle_timeout (no request under \
             way for idle_timeout), header_timeout (a request head not complete within \
             header_read_timeout of its first byte), shutdown (no request under way while \
             shutting down)",
            closed_family.clone(),
        );
        let connections_closed = [Closed::IdleTimeout, Closed::HeaderTimeout, Closed::Shutdown]
            .map(|reason| {
                closed_family.get_or_create_owned(&ReasonLabels {
                    reason: reason.as_str(),
                })
            });
        let ticks_failed = Counter::default();
        registry.register(
            "ticks_failed",
            "Rounds of the once-a-second ticker (sealing generations whose span has passed, \
             catching up rotations, expiring claims) that failed; each is tried again a \
             second later",
            ticks_failed.clone(),
        );
        let late = Counter::default();
        registry.register(
            "tracker_calls_late",
            "Tracker calls that finished after their request had been answered 504 \
             deadline_exceeded; what they did stands (a retry with the same owner token gets \
             the outcome)",
            late.clone(),
        );
        registry.register_collector(Box::new(TrackerCollector {
            tracker,
            accepting,
            store,
            bodies,
            by_namespace: Arc::clone(&by_namespace),
        }));
        Self {
            registry: root,
            requests,
            latency,
            series: RwLock::default(),
            by_namespace,
            forgets,
            resp_commands,
            shed,
            bodies_shed,
            in_flight,
            connections_open,
            connections_accepted,
            cap_reached,
            connections_closed,
            ticks_failed,
            late,
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.inc();
        self.connections_open.inc();
    }

    pub(crate) fn connection_ended(&self) {
        self.connections_open.dec();
    }

    pub(crate) fn connection_cap_reached(&self) {
        self.cap_reached.inc();
    }

    pub(crate) fn connection_closed(&self, why: Closed) {
        self.connections_closed[why as usize].inc();
    }

    /// A round of the ticker failed.
    pub(crate) fn tick_failed(&self) {
        self.ticks_failed.inc();
    }

    /// A tracker call finished after its request was answered 504.
    pub(crate) fn late_call(&self) {
        self.late.inc();
    }

    /// Counts a request's verdicts in `namespace`: one tally per request, then one
    /// add per verdict present, so a 1,000-ID batch costs one map lookup (under a
    /// shared lock) and at most five atomic adds.
    pub(crate) fn count_verdicts(
        &self,
        protocol: Protocol,
        namespace: &str,
        op: Op,
        verdicts: &[Verdict],
    ) {
        let mut tally = [0_u64; 5];
        for &v in verdicts {
            tally[verdict_index(op, v)] += 1;
        }
        self.by_namespace.count(namespace, |c| {
            let counters: &[AtomicU64] = match op {
                Op::CheckAndMark => &c.marks[protocol as usize],
                Op::Check => &c.checks[protocol as usize],
            };
            for (counter, n) in counters.iter().zip(tally) {
                if n > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
    }

    /// Counts a claim's outcome in `namespace`.
    pub(crate) fn count_claim(&self, protocol: Protocol, namespace: &str, outcome: ClaimOutcome) {
        self.by_namespace.count(namespace, |c| {
            c.claims[protocol as usize][claim_index(outcome)].fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Counts a claim ended by its owner in `namespace`.
    pub(crate) fn count_claim_end(&self, protocol: Protocol, namespace: &str, end: ClaimEnd) {
        self.by_namespace.count(namespace, |c| {
            c.claim_ends[protocol as usize][end as usize].fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A namespace was deleted: its series go with it (a namespace created again
    /// under the name starts from 0, which Prometheus reads as a counter reset).
    pub(crate) fn namespace_deleted(&self, namespace: &str) {
        self.by_namespace.remove(namespace);
    }

    /// Counts the IDs of a forget request by their answer.
    pub(crate) fn count_forgets(&self, protocol: Protocol, forgotten: &[bool]) {
        let done = forgotten.iter().filter(|&&f| f).count() as u64;
        let counters = &self.forgets[protocol as usize];
        counters[0].inc_by(done);
        counters[1].inc_by(forgotten.len() as u64 - done);
    }

    /// Counts a RESP command's answer, by the command's index in [`RESP_COMMANDS`].
    pub(crate) fn count_resp_command(&self, command: usize, ok: bool) {
        let row = command.min(RESP_COMMANDS.len() - 1);
        self.resp_commands[row][usize::from(!ok)].inc();
    }

    pub(crate) fn shed(&self) {
        self.shed.inc();
    }

    /// A request refused because the body budget had no room for its body.
    pub(crate) fn body_shed(&self) {
        self.bodies_shed.inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Op {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::CheckAndMark => "check_and_mark",
            Self::Check => "check",
        }
    }
}

/// A label value for the method that cannot grow without bound: clients choose the
/// method, so anything unusual is folded into `other`.
/// The method labels, in [`method_index`] order.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

/// A request being counted and timed ([`Metrics::begin`]), from before anything else
/// looks at it until its answer ([`Timed::end`]): every answer is counted, 401s,
/// 404s and shed 503s included.
pub(crate) struct Timed<'a> {
    metrics: &'a Metrics,
    start: Instant,
    method: usize,
    route: Route,
    _in_flight: InFlight<'a>,
}

impl Metrics {
    /// Starts timing `req`, which matched `route`.
    pub(crate) fn begin(&self, req: &Request, route: Route) -> Timed<'_> {
        Timed {
            metrics: self,
            start: Instant::now(),
            method: method_index(req.method()),
            route,
            _in_flight: InFlight::enter(&self.in_flight),
        }
    }

    /// Counts one answer and its latency in the series of `labels`.
    fn observe(
        &self,
        key: Option<u64>,
        labels: impl FnOnce() -> (RequestLabels, LatencyLabels),
        secs: f64,
    ) {
        if let Some(key) = key
            && let Some(series) = self
                .series
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
        {
            series.latency.observe(secs);
            series.requests.inc();
            return;
        }
        let (counted, timed) = labels();
        let series = Series {
            latency: self.latency.get_or_create(&timed).clone(),
            requests: self.requests.get_or_create(&counted).clone(),
        };
        series.latency.observe(secs);
        series.requests.inc();
        if let Some(key) = key {
            let mut cache = self.series.write().unwrap_or_else(PoisonError::into_inner);
            // Bounded by the served routes, methods and the statuses the daemon
            // answers with; the cap only guards against a status code per request.
            if cache.len() < MAX_CACHED_SERIES {
                let _ = cache.insert(key, series);
            }
        }
    }
}

impl Timed<'_> {
    /// Counts and times `response`, and hands a server error's note to `failures`,
    /// the rate-limited failure log.
    pub(crate) fn end(self, failures: &FailureLog, mut response: Response) -> Response {
        let secs = self.start.elapsed().as_secs_f64();
        let status = response.status().as_u16();
        // The counter by status, the histogram by its class (`outcome_of`).
        let key = self
            .route
            .index()
            .map(|route| series_key(self.method, route, status));
        let route = self.route;
        let method = METHODS[self.method];
        self.metrics.observe(
            key,
            || {
                let route = route.label();
                (
                    RequestLabels {
                        method,
                        route: route.clone(),
                        status,
                    },
                    LatencyLabels {
                        method,
                        route,
                        outcome: outcome_of(status),
                    },
                )
            },
            secs,
        );
        if let Some(note) = response.extensions_mut().remove::<FailureNote>() {
            failures.record(status, &note);
        }
        response
    }
}

/// The latency histogram of one (method, route, outcome) and the request counter of
/// one (method, route, status), shared with their families.
#[derive(Clone, Debug)]
struct Series {
    latency: Histogram,
    requests: Counter,
}

const MAX_CACHED_SERIES: usize = 4096;

/// One number per (method, route, status): they fit in 8, 16 and 16 bits.
fn series_key(method: usize, route: u16, status: u16) -> u64 {
    ((method as u64) << 32) | (u64::from(route) << 16) | u64::from(status)
}

/// Hashes [`series_key`]s: one multiplication (Fibonacci hashing), where SipHash
/// guards against keys an attacker chooses, which these are not.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A request's route, looked up once per request (for its label here, and for the
/// browser guard): the pattern it matched, or none.
pub(crate) enum Route {
    /// Index in [`openapi::routes`].
    Served(u16),
    /// A pattern outside the table (none is, unless a route is added without
    /// going through the OpenAPI router).
    Other(String),
    /// No route matched. Unmatched paths share one label: clients choose paths, and
    /// a label per path would let them grow the series without bound.
    Unmatched,
}

impl Route {
    pub(crate) fn of(req: &Request) -> Self {
        let Some(matched) = req.extensions().get::<MatchedPath>() else {
            return Self::Unmatched;
        };
        openapi::routes()
            .index(matched.as_str())
            .map_or_else(|| Self::Other(matched.as_str().to_owned()), Self::Served)
    }

    /// Whether a handler of this route answers `method` (else the request gets
    /// 405 or 404).
    pub(crate) fn handles(&self, method: &Method) -> bool {
        match self {
            Self::Served(i) => openapi::routes().allows(*i, method),
            Self::Other(_) | Self::Unmatched => false,
        }
    }

    /// Its index for [`series_key`]; `Unmatched` follows the served routes.
    fn index(&self) -> Option<u16> {
        match self {
            Self::Served(i) => Some(*i),
            Self::Unmatched => u16::try_from(openapi::routes().patterns().len()).ok(),
            Self::Other(_) => None,
        }
    }

    fn label(self) -> Cow<'static, str> {
        match self {
            Self::Served(i) => Cow::Borrowed(openapi::routes().patterns()[usize::from(i)]),
            Self::Other(route) => Cow::Owned(route),
            Self::Unmatched => Cow::Borrowed("unmatched"),
        }
    }
}

/// Counts a request in flight until dropped: a request whose client goes away is
/// dropped mid-way, and must still leave the gauge.
struct InFlight<'a>(&'a Gauge<i64, AtomicI64>);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge<i64, AtomicI64>) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads the per-namespace gauges, and the store's and the daemon's health, from the
/// tracker at each scrape.
#[derive(Debug)]
struct TrackerCollector {
    tracker: Tracker,
    accepting: Arc<AtomicBool>,
    store: Arc<StoreWatch>,
    bodies: BodyBudget,
    by_namespace: Arc<ByNamespace>,
}

type NsGauge = (
    &'static str,
    &'static str,
    fn(&oncely::NamespaceInfo) -> f64,
);

const NAMESPACE_GAUGES: [NsGauge; 9] = [
    (
        "namespace_fill_ratio",
        "Fill ratio (bits set / bits) of the open generation's Bloom filter.",
        |i| i.generations.first().map_or(0.0, |g| g.filter.fill_ratio),
    ),
    (
        "namespace_estimated_fp_ratio",
        "Estimated chance that an unseen ID is answered probable_duplicate now.",
        |i| i.estimated_fp,
    ),
    (
        "namespace_target_fp_ratio",
        "The namespace's target false-positive rate (fp_rate).",
        |i| i.config.fp_rate(),
    ),
    (
        "namespace_generations",
        "Live generations, the open one included.",
        |i| as_f64(i.generations.len() as u64),
    ),
    (
        "namespace_ids",
        "New IDs marked into the live generations.",
        |i| as_f64(i.generations.iter().map(|g| g.ids).sum()),
    ),
    (
        "namespace_open_ids",
        "New IDs marked into the open generation; it seals at generation_capacity.",
        |i| as_f64(i.generations.first().map_or(0, |g| g.ids)),
    ),
    (
        "namespace_generation_capacity",
        "IDs after which the open generation seals (generation_capacity).",
        |i| as_f64(i.config.generation_capacity()),
    ),
    (
        "namespace_memory_bytes",
        "Bytes of Bloom filter memory across live generations.",
        |i| as_f64(i.memory_bytes),
    ),
    (
        "namespace_charged_bytes",
        "Bytes the namespace is charged against max_filter_bytes: the most filter memory \
         it can hold over its life under its configuration.",
        |i| as_f64(i.charged_bytes),
    ),
];

/// Counts as gauge values: exact up to 2^53, which no count here reaches.
#[allow(clippy::cast_precision_loss)]
const fn as_f64(n: u64) -> f64 {
    n as f64
}

impl Collector for TrackerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A namespace deleted between listing and reading simply drops out. Reading
        // stats locks each namespace briefly; the scrape runs on the blocking pool.
        let names = self.tracker.namespaces();
        let infos: Vec<oncely::NamespaceInfo> = names
            .iter()
            .filter_map(|ns| self.tracker.namespace_info(ns).ok())
            .collect();
        self.by_namespace.encode(&names, &mut encoder)?;
        for (name, help, value) in NAMESPACE_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for info in &infos {
                let labels = [("namespace", info.name.as_str())];
                family.encode_family(&labels)?.encode_gauge(&value(info))?;
            }
        }
        let budget = self.tracker.filter_budget();
        let namespaces = infos.len() as u64;
        for (name, help, value) in [
            (
                "filter_budget_bytes",
                "The filter memory budget (max_filter_bytes).",
                budget.budget,
            ),
            (
                "filter_charged_bytes",
                "Bytes charged to namespaces against the budget: the sum of what each can \
                 hold over its life.",
                Some(budget.charged),
            ),
            (
                "filter_allocated_bytes",
                "Bytes of Bloom filters allocated now, across namespaces.",
                Some(budget.allocated),
            ),
            (
                "namespaces",
                "Namespaces, default included.",
                Some(namespaces),
            ),
            (
                "body_budget_bytes",
                "The budget of request bodies in flight (max_body_bytes_in_flight).",
                u64::try_from(self.bodies.bytes()).ok(),
            ),
            (
                "body_bytes_in_flight",
                "Bytes request bodies being read or handled are charged now against \
                 max_body_bytes_in_flight (bodies of at most 4 KiB are not charged).",
                u64::try_from(self.bodies.charged()).ok(),
            ),
        ] {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        if let Some(bytes) = self.tracker.disk_bytes() {
            let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "disk_bytes",
                "Bytes the store uses on disk.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        let failing = self.tracker.storage_failure().is_some();
        let ready = self.accepting.load(Ordering::Acquire) && !failing;
        for (name, help, value) in [
            (
                "storage_failing",
                "1 while the store's writes fail (from a failed write until one succeeds), else 0.",
                failing,
            ),
            (
                "ready",
                "1 while /readyz answers 200: not shutting down, and storage writes succeed.",
                ready,
            ),
        ] {
            let gauge = ConstGauge::new(i64::from(value));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "storage_write_errors",
                "Store writes that failed since start-up (each one's caller got 503).",
                self.tracker.storage_errors(),
            ),
            (
                "rotations_deferred",
                "Rotations left for later because a transaction held their namespace past a \
                 short wait (PostgreSQL).",
                self.tracker.rotations_deferred(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        self.encode_store(&mut encoder)
    }
}

impl TrackerCollector {
    /// Which store, on which server, and the last round trip to it (from the
    /// ticker's probe, so a scrape never waits on the database for them).
    fn encode_store(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let seen = self.store.seen();
        if seen.kind.is_empty() {
            // Not probed yet (the first tick probes).
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "store_info",
            "The store the state lives in (kind: rocksdb, memory or postgres) and, for \
             PostgreSQL, the host:port it was last found on; always 1.",
            None,
            MetricType::Gauge,
        )?;
        let labels = StoreLabels {
            kind: seen.kind,
            host: seen.host.clone().unwrap_or_default(),
        };
        family.encode_family(&labels)?.encode_gauge(&1_i64)?;
        if let Some(rtt) = seen.round_trip {
            let gauge = ConstGauge::new(rtt.as_secs_f64());
            let metric = encoder.encode_descriptor(
                "store_round_trip_seconds",
                "The last probe's round trip to a remote store (one query, once a second).",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The verdict and claim counters of one namespace, by [`Protocol`] first.
#[derive(Debug, Default)]
struct NamespaceCounters {
    /// By [`MARK_VERDICTS`].
    marks: [[AtomicU64; 5]; 2],
    /// By [`CHECK_VERDICTS`].
    checks: [[AtomicU64; 4]; 2],
    /// By [`CLAIM_OUTCOMES`].
    claims: [[AtomicU64; 6]; 2],
    /// By [`ClaimEnd`].
    claim_ends: [[AtomicU64; 2]; 2],
}

/// The label value of counts that found the map full (see [`ByNamespace`]): no
/// namespace can be named so (parentheses are not allowed in names).
const OTHER_NAMESPACE: &str = "(other)";

/// Verdict and claim counters per namespace: `oncelyd_ids_total`,
/// `oncelyd_claims_total` and `oncelyd_claims_ended_total` carry a `namespace`
/// label, so duplicates per consumer group show.
///
/// Bounded: a namespace gets counters when a call in it is counted (the tracker
/// answered it, so it existed) or when a scrape lists it, and loses them when it
/// is deleted through this daemon and at the next scrape that no longer lists it
/// (another daemon on the same database may delete it). Namespaces are capped by
/// `max_namespaces`; should counts ever find the map at twice that (namespaces
/// created and deleted elsewhere between scrapes), they are counted under
/// `namespace="(other)"` until a scrape prunes the map.
#[derive(Debug)]
struct ByNamespace {
    map: RwLock<HashMap<Box<str>, Arc<NamespaceCounters>>>,
    cap: usize,
    other: NamespaceCounters,
    /// Whether anything was counted under `(other)`: its series show from then on.
    overflowed: AtomicBool,
}

impl ByNamespace {
    fn new(max_namespaces: u32) -> Self {
        Self {
            map: RwLock::default(),
            cap: usize::try_from(max_namespaces)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
                .max(16),
            other: NamespaceCounters::default(),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Runs `f` on `namespace`'s counters, made if new.
    fn count(&self, namespace: &str, f: impl FnOnce(&NamespaceCounters)) {
        if let Some(c) = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
        {
            return f(c);
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(namespace) && map.len() >= self.cap {
            drop(map);
            self.overflowed.store(true, Ordering::Relaxed);
            return f(&self.other);
        }
        let c = Arc::clone(map.entry(namespace.into()).or_default());
        drop(map);
        f(&c);
    }

    fn remove(&self, namespace: &str) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
    }

    /// Makes the map hold exactly the namespaces `live` names (sorted), then
    /// encodes their counters: every verdict and outcome of each, zeros included,
    /// so a rate sees a namespace's first counts.
    fn encode(&self, live: &[String], encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut rows: Vec<(&str, Arc<NamespaceCounters>)> = Vec::with_capacity(live.len() + 1);
        {
            let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
            // A store that cannot list its namespaces lists none (`default` always
            // exists): keep the counters rather than reset them all.
            if !live.is_empty() {
                map.retain(|name, _| live.binary_search_by(|l| l.as_str().cmp(name)).is_ok());
            }
            for name in live {
                if map.len() >= self.cap && !map.contains_key(name.as_str()) {
                    break;
                }
                let c = map.entry(name.as_str().into()).or_default();
                rows.push((name.as_str(), Arc::clone(c)));
            }
        }
        let other = self
            .overflowed
            .load(Ordering::Relaxed)
            .then_some(&self.other);
        let all = || {
            rows.iter()
                .map(|(name, c)| (*name, &**c))
                .chain(other.map(|c| (OTHER_NAMESPACE, c)))
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        {
            let mut family = encoder.encode_descriptor(
                "ids",
                "Event IDs answered, by namespace, face (protocol), operation and verdict",
                None,
                MetricType::Counter,
            )?;
            for (namespace, c) in all() {
                for p in Protocol::ALL {
                    let rows = MARK_VERDICTS
                        .iter()
                        .zip(&c.marks[p as usize])
                        .map(|(v, n)| (Op::CheckAndMark, v, n))
                        .chain(
                            CHECK_VERDICTS
                                .iter()
                                .zip(&c.checks[p as usize])
                                .map(|(v, n)| (Op::Check, v, n)),
                        );
                    for (op, verdict, n) in rows {
                        let labels = [
                            ("namespace", namespace),
                            ("protocol", p.as_str()),
                            ("op", op.as_str()),
                            ("verdict", verdict),
                        ];
                        family
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&load(n), None)?;
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "claims",
                "Claim requests answered, by outcome: acquired (a fresh claim), renewed (by its \
                 owner), taken_over (another owner's lease had run out), in_progress, duplicate, \
                 probable_duplicate",
                None,
                MetricType::Counter,
            )?;
            for (namespace, c) in all() {
                for p in Protocol::ALL {
                    for (outcome, n) in CLAIM_OUTCOMES.iter().zip(&c.claims[p as usize]) {
                        let labels = [
                            ("namespace", namespace),
                            ("protocol", p.as_str()),
                            ("outcome", outcome),
                        ];
                        family
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&load(n), None)?;
                    }
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "claims_ended",
            "Claims ended by their owner: completed (now a done mark) or released (given back)",
            None,
            MetricType::Counter,
        )?;
        for (namespace, c) in all() {
            for p in Protocol::ALL {
                for (outcome, n) in ["completed", "released"]
                    .iter()
                    .zip(&c.claim_ends[p as usize])
                {
                    let labels = [
                        ("namespace", namespace),
                        ("protocol", p.as_str()),
                        ("outcome", outcome),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&load(n), None)?;
                }
            }
        }
        Ok(())
    }
}
