//! `GET /metrics`: Prometheus text format (0.0.4), written by `prometheus-client`.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `oncelyd_http_requests_total` | counter | `method`, `route`, `status` |
//! | `oncelyd_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `oncelyd_ids_total` | counter | `op` (`check_and_mark`, `check`), `verdict` |
//! | `oncelyd_requests_shed_total` | counter | |
//! | `oncelyd_requests_in_flight` | gauge | |
//! | `oncelyd_namespace_fill_ratio` | gauge | `namespace` (open generation's filter) |
//! | `oncelyd_namespace_estimated_fp` | gauge | `namespace` |
//! | `oncelyd_namespace_generations` | gauge | `namespace` |
//! | `oncelyd_namespace_ids` | gauge | `namespace` (new IDs across live generations) |
//! | `oncelyd_namespace_memory_bytes` | gauge | `namespace` |
//! | `oncelyd_disk_bytes` | gauge | |
//!
//! Routes are labelled by their pattern (`/v1/namespaces/{ns}/check`), never the
//! concrete path, and IDs are counted once per request per verdict, not once per ID.
//! The namespace gauges are read from the tracker at scrape time.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use oncely::{Tracker, Verdict};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

/// The content type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    op: &'static str,
    verdict: &'static str,
}

/// Which call produced verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    CheckAndMark,
    Check,
}

const VERDICTS: [&str; 5] = [
    "new",
    "replayed",
    "duplicate",
    "probable_duplicate",
    "in_progress",
];

const fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::New => 0,
        Verdict::Replayed => 1,
        Verdict::Duplicate => 2,
        Verdict::ProbableDuplicate => 3,
        Verdict::InProgress { .. } => 4,
    }
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The daemon's metrics and the registry that encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// Per op, per verdict: resolved once, so counting takes no lock.
    verdicts: [[Counter; 5]; 2],
    shed: Counter,
    in_flight: Gauge<i64, AtomicI64>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3.3 s, doubling: a 1,000-ID batch takes around a millisecond.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new(tracker: Tracker) -> Self {
        let mut registry = Registry::with_prefix("oncelyd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route pattern and method",
            latency.clone(),
        );
        let ids = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "ids",
            "Event IDs answered, by operation and verdict",
            ids.clone(),
        );
        let verdicts = [Op::CheckAndMark, Op::Check].map(|op| {
            VERDICTS.map(|verdict| {
                ids.get_or_create_owned(&VerdictLabels {
                    op: op.as_str(),
                    verdict,
                })
            })
        });
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests answered 503 at once because max_concurrency requests were in progress",
            shed.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        registry.register_collector(Box::new(TrackerCollector { tracker }));
        Self {
            registry,
            requests,
            latency,
            verdicts,
            shed,
            in_flight,
        }
    }

    /// Counts a request's verdicts: one tally per request, then one add per verdict
    /// present, so a 1,000-ID batch costs at most five atomic adds.
    pub(crate) fn count_verdicts(&self, op: Op, verdicts: &[Verdict]) {
        let mut tally = [0_u64; 5];
        for &v in verdicts {
            tally[verdict_index(v)] += 1;
        }
        let counters = &self.verdicts[op as usize];
        for (counter, n) in counters.iter().zip(tally) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    pub(crate) fn shed(&self) {
        self.shed.inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Op {
    const fn as_str(self) -> &'static str {
        match self {
            Self::CheckAndMark => "check_and_mark",
            Self::Check => "check",
        }
    }
}

/// A label value for the method that cannot grow without bound: clients choose the
/// method, so anything unusual is folded into `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Middleware: counts every answer (401s, 404s and shed 503s included) and times it.
pub(crate) async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    // Unmatched paths share one label: clients choose paths, and a label per path
    // would let them grow the series without bound.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let metrics = state.metrics();
    let in_flight = InFlight::enter(&metrics.in_flight);
    let response = next.run(req).await;
    drop(in_flight);
    let status = response.status().as_u16();
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    response
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

/// Reads per-namespace gauges from the tracker at each scrape.
#[derive(Debug)]
struct TrackerCollector {
    tracker: Tracker,
}

type NsGauge = (
    &'static str,
    &'static str,
    fn(&oncely::NamespaceInfo) -> f64,
);

const NAMESPACE_GAUGES: [NsGauge; 5] = [
    (
        "namespace_fill_ratio",
        "Fill ratio (bits set / bits) of the open generation's Bloom filter.",
        |i| i.generations.first().map_or(0.0, |g| g.filter.fill_ratio),
    ),
    (
        "namespace_estimated_fp",
        "Estimated chance that an unseen ID is answered probable_duplicate now.",
        |i| i.estimated_fp,
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
        "namespace_memory_bytes",
        "Bytes of Bloom filter memory across live generations.",
        |i| as_f64(i.memory_bytes),
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
        let infos: Vec<oncely::NamespaceInfo> = self
            .tracker
            .namespaces()
            .iter()
            .filter_map(|ns| self.tracker.namespace_info(ns).ok())
            .collect();
        for (name, help, value) in NAMESPACE_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for info in &infos {
                let labels = [("namespace", info.name.as_str())];
                family.encode_family(&labels)?.encode_gauge(&value(info))?;
            }
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
        Ok(())
    }
}
