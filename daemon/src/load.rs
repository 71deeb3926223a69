//! `oncelyd load`: a load generator for a running daemon.
//!
//! [`run`] checks the daemon with the typed [`Client`] (URL,
//! token and namespace), then starts `--concurrency` tasks on a runtime of
//! `--threads` workers. Each task owns one keep-alive HTTP/1.1 connection (hyper's
//! connection API, no pool) and keeps one check-and-mark request in flight on it
//! until `--duration` has passed or `--ids` IDs were sent. [`drive`] is the same on
//! the caller's runtime, for tests and benchmarks. The [`LoadReport`] has the
//! throughput, latency percentiles (an HDR histogram of microseconds per request),
//! verdict counts and errors; [`write_report`] prints it as text or one JSON object.
//!
//! # Pacing (`--rate`)
//!
//! Without `--rate` each task sends its next request as soon as the last one is
//! answered: the rate is whatever the daemon gives, and a request's latency is
//! timed from its sending. With `--rate R`, requests follow
//! one schedule shared by all tasks: request `k` is due `k x batch / R` seconds after
//! the start, and whichever task is free claims the next due request (an atomic
//! counter, so a task stuck on a slow answer does not hold the rate back while
//! another is idle). A soak wants a steady rate, so the schedule never bursts to
//! make up for lost time, which is what tokio's default
//! [`MissedTickBehavior::Burst`](tokio::time::MissedTickBehavior::Burst) would do.
//! It behaves like `MissedTickBehavior::Skip` with a small allowance: a request late
//! by up to the larger of one period and [`CATCH_UP`] is still sent (tokio's timer
//! ticks in milliseconds, so periods shorter than that need a little catch-up to
//! keep their rate), and requests later than that are dropped, never sent, and
//! counted. A daemon that falls behind then gets the rate it can take rather than a
//! backlog, and the report says so: `missed_requests` counts the dropped requests
//! and `below_target` is set when the achieved rate is under
//! [`BELOW_TARGET`] of the target. A paced run is timed over at least the schedule
//! its requests cover, so that a 2 s run at 2,000 IDs/s reports 2,000 IDs/s, not a
//! little more because the last answer came before the last period ended.
//!
//! # Latency under `--rate`: no coordinated omission
//!
//! A paced request that could not go out on time, because every connection was
//! still waiting for an answer, is timed from when it was due, not from when it was
//! sent: its caller would have waited that long (Tene, "How NOT to Measure
//! Latency", 2015, calls timing it from the sending "coordinated omission": the
//! generator holds back exactly the requests a slow daemon would have made slow).
//! A dropped request counts too, with the time it had waited when it was dropped
//! (a connection came free only then, so it would have waited at least that long).
//! So a daemon that stalls for 1.5 s shows the stall in the percentiles of every
//! request due during it. A request that went out on time is timed from its
//! sending: waking at its due time, tokio's millisecond timer may be late by up to
//! a millisecond, and that is the generator's delay, not the daemon's.
//!
//! # Failures
//!
//! A request answered other than 200 is counted by its status and by the daemon's
//! error code (`too_many_ids`, `overloaded`, ...), with the first such answer's
//! message; the rates and latencies count only the requests answered 200, and a run
//! where no request succeeded has no latency. [`check`] turns a report with failed
//! requests into an error, which gives `oncelyd load` a non-zero exit status after
//! the report is printed.
//!
//! # IDs
//!
//! Every ID is 16 bytes written as 32 lowercase hex characters. Task `t`'s `n`-th
//! fresh ID is a bijective mix (splitmix64) of `(t << 40 | n) + seed`, extended to
//! 128 bits, so IDs are unique within a run, look random to RocksDB (no
//! conveniently sorted inserts), and differ between seeds. With `--duplicates f`
//! each slot of a batch is, with probability `f`, a repeat of one of the last
//! [`REPEAT_WINDOW`] fresh IDs this task had answered `new`, so the daemon
//! must answer `duplicate` for it; fresh IDs must get `new`. Anything else is counted
//! as unexpected (a Bloom false positive, or a lost mark). The first batch of each
//! task has no repeats, since nothing was marked yet.
//!
//! # Staying cheap
//!
//! The generator shares the machine with the daemon when both run on one host, so
//! it does as little as it can per ID: a batch is a few multiplications and a hex
//! table lookup per ID, written by hand into a reused buffer; an answer is scanned
//! for its `"verdict":"` fields with `memchr` rather than parsed as JSON (the IDs
//! are hex, so nothing inside them can look like a field); buffers are reused
//! between requests; progress counters are updated once per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use memchr::memmem::Finder;
use rand::RngCore;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Error;
use crate::cli::LoadArgs;
use crate::tune::group as thousands;
use oncely_client::api::ErrorResponse;
use oncely_client::{Client, RetryPolicy, bearer};

/// How many of its most recent acknowledged fresh IDs a task draws repeats from.
/// Small enough that repeats stay inside the exact horizon of the default namespace
/// (2 exact generations of 1,000,000 IDs) even with many tasks; large enough that
/// repeats are spread out.
pub const REPEAT_WINDOW: usize = 1 << 16;

/// Latencies above this (60 s) are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// How long a task waits after a failed request before the next, so that a daemon
/// that is down is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// How long a request may take before it counts as failed (timed out) and its
/// connection is dropped: the histogram's ceiling, so a daemon that never answers
/// ends the run rather than holding it open.
const REQUEST_TIMEOUT: Duration = Duration::from_micros(MAX_LATENCY_US);

/// Dropped requests recorded one by one in the latency histogram, at most; more in
/// one go (an unreachable target rate) are recorded in this many groups of equal
/// size, each at its middle value.
const MISSED_EXACT: u64 = 4096;

/// With `--rate`: how late a request may be and still be sent, when one period is
/// shorter (see [Pacing](self#pacing---rate)). Later requests are dropped.
pub const CATCH_UP: Duration = Duration::from_millis(20);

/// With `--rate`: the report sets `below_target` when the achieved rate is under
/// this fraction of the target.
pub const BELOW_TARGET: f64 = 0.95;

/// The whole command as the binary runs it: validates the arguments, starts a
/// runtime of `--threads` workers (one: a current-thread runtime) and drives the
/// daemon, printing a progress line on
/// standard error once a second unless `--json`.
///
/// # Errors
///
/// [`Error::Config`] naming a bad argument; [`Error::Client`] when the daemon cannot
/// be reached, refuses the token or does not have the namespace; [`Error::Runtime`].
pub fn run(args: &LoadArgs) -> Result<LoadReport, Error> {
    validate(args)?;
    // One thread: a current-thread runtime, where a request's task and its
    // connection's task wake each other without crossing threads.
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("oncelyd-load")
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(drive(args, !args.json))
}

/// Drives the daemon on the current tokio runtime (see the [module docs](self)).
/// With `progress`, prints a line on standard error once a second. `args.threads`
/// is only reported: the caller's runtime decides.
///
/// # Errors
///
/// As [`run`].
pub async fn drive(args: &LoadArgs, progress: bool) -> Result<LoadReport, Error> {
    validate(args)?;
    let plan = Arc::new(Plan::new(args)?);
    // One look first, through the typed client: a wrong URL, token or namespace is
    // then one clear error rather than a run of nothing but failures.
    let client = Client::builder(args.url.clone())
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy::default());
    let client = match &args.token {
        Some(t) => client.token(t.clone()),
        None => client,
    }
    .build()?;
    client.namespace(&args.namespace).await?;

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration.0;
    let pacer = args
        .rate
        .map(|rate| Arc::new(Pacer::new(started, args.duration.0, args.batch, rate)));
    let reporter = progress.then(|| {
        let counters = Arc::clone(&counters);
        tokio::spawn(report_progress(counters, started, args.rate))
    });
    let mut tasks = Vec::with_capacity(args.concurrency);
    for index in 0..args.concurrency {
        let worker = Worker::new(Arc::clone(&plan), Arc::clone(&counters), index as u64);
        tasks.push(tokio::spawn(worker.run(deadline, pacer.clone())));
    }
    let mut total = Stats::new();
    let mut join_error = None;
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(&stats),
            Err(e) => join_error = Some(e),
        }
    }
    let mut elapsed = started.elapsed();
    let mut missed = 0;
    if let Some(pacer) = &pacer {
        elapsed = elapsed.max(pacer.covered());
        missed = pacer.missed.load(Ordering::Relaxed);
    }
    counters.done.store(true, Ordering::Release);
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(e) = join_error {
        return Err(Error::Runtime(std::io::Error::other(e)));
    }
    Ok(total.report(args, plan.seed, elapsed, missed))
}

fn validate(args: &LoadArgs) -> Result<(), Error> {
    let bad = |setting: &'static str, reason: &str| {
        Err(Error::Config {
            setting,
            reason: reason.to_owned(),
        })
    };
    if args.batch == 0 {
        return bad("batch", "must be at least 1");
    }
    if args.concurrency == 0 {
        return bad("concurrency", "must be at least 1");
    }
    if args.threads == 0 {
        return bad("threads", "must be at least 1");
    }
    if args.duration.0.is_zero() {
        return bad("duration", "must be longer than 0");
    }
    if args.ids == Some(0) {
        return bad("ids", "must be at least 1");
    }
    if !(0.0..1.0).contains(&args.duplicates) {
        return bad("duplicates", "must be at least 0 and below 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return bad("rate", "must be a finite number of IDs per second above 0");
    }
    Ok(())
}

/// `--rate`'s schedule, shared by every task (see [Pacing](self#pacing---rate)).
struct Pacer {
    start: Instant,
    /// Seconds between requests: batch / rate.
    period: f64,
    /// Seconds a request may be late and still be sent.
    allowance: f64,
    /// Requests due before the deadline: request `k` is due at `k x period`.
    slots: u64,
    /// The next request nobody has claimed.
    next: AtomicU64,
    /// Requests dropped because they were too late.
    missed: AtomicU64,
}

impl Pacer {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn new(start: Instant, duration: Duration, batch: usize, rate: f64) -> Self {
        let period = batch as f64 / rate;
        // Request k is due before the deadline when k x period < duration. (A
        // float-to-int cast saturates: a period too short to count is unlimited.)
        let slots = (duration.as_secs_f64() / period).ceil() as u64;
        Self {
            start,
            period,
            allowance: period.max(CATCH_UP.as_secs_f64()),
            slots,
            next: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        }
    }

    /// Claims the next request that is not too late, dropping (and counting) the
    /// ones that are: when it is due (`None` when no request is due before the
    /// deadline any more) and which requests were dropped to get there.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn claim(&self) -> Claim {
        let at = Instant::now();
        let late = at.saturating_duration_since(self.start).as_secs_f64() - self.allowance;
        // The first request not yet too late.
        let earliest = if late > 0.0 {
            (late / self.period).ceil() as u64
        } else {
            0
        };
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let take = next.max(earliest);
            if take >= self.slots {
                // The rest of the schedule is gone; what was skipped to get here was
                // missed (counted once: only the first to move the counter sees it
                // below `slots`).
                let before = self.next.fetch_max(self.slots, Ordering::Relaxed);
                let missed = before.min(self.slots)..self.slots;
                self.missed
                    .fetch_add(missed.end - missed.start, Ordering::Relaxed);
                return Claim {
                    due: None,
                    missed,
                    at,
                };
            }
            match self.next.compare_exchange_weak(
                next,
                take + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.missed.fetch_add(take - next, Ordering::Relaxed);
                    return Claim {
                        due: Some(self.due(take)),
                        missed: next..take,
                        at,
                    };
                }
                Err(actual) => next = actual,
            }
        }
    }

    /// When request `k` is due.
    #[allow(clippy::cast_precision_loss)]
    fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 * self.period)
    }

    /// Records the requests `claim` dropped in `latency`, each with the time it had
    /// waited since it was due (see [the module docs](self#latency-under---rate-no-coordinated-omission)).
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn record_missed(&self, claim: &Claim, latency: &mut Histogram<u64>) {
        let Range { start, end } = claim.missed;
        let n = end.saturating_sub(start);
        if n == 0 {
            return;
        }
        let now = claim.at.saturating_duration_since(self.start).as_secs_f64();
        let waited_us = |k: u64| {
            let us = (now - k as f64 * self.period) * 1e6;
            (us.max(1.0) as u64).min(MAX_LATENCY_US)
        };
        if n <= MISSED_EXACT {
            for k in start..end {
                latency.saturating_record(waited_us(k));
            }
            return;
        }
        // Group g holds requests [start + n*g/G, start + n*(g+1)/G); in u128, as n
        // may be near u64::MAX for an unreachable rate.
        let bound =
            |g: u64| start + (u128::from(n) * u128::from(g) / u128::from(MISSED_EXACT)) as u64;
        for g in 0..MISSED_EXACT {
            let (lo, hi) = (bound(g), bound(g + 1));
            if hi > lo {
                latency.saturating_record_n(waited_us(lo + (hi - lo) / 2), hi - lo);
            }
        }
    }

    /// The time the claimed requests' periods cover: a paced run lasts at least this.
    #[allow(clippy::cast_precision_loss)]
    fn covered(&self) -> Duration {
        let claimed = self.next.load(Ordering::Relaxed).min(self.slots);
        Duration::try_from_secs_f64(claimed as f64 * self.period).unwrap_or(Duration::MAX)
    }
}

/// A claim on the schedule ([`Pacer::claim`]).
struct Claim {
    /// When the claimed request is due; `None`: the schedule is over.
    due: Option<Instant>,
    /// Requests dropped to get to it: too late to send.
    missed: Range<u64>,
    /// When the claim was made.
    at: Instant,
}

/// What every task shares: where to send, and how to make IDs.
struct Plan {
    host: String,
    port: u16,
    authority: HeaderValue,
    path: Uri,
    auth: Option<HeaderValue>,
    batch: usize,
    /// `duplicates` as a threshold on a uniform `u64`.
    repeat_below: u64,
    seed: u64,
    /// IDs to send in all, if limited; tasks reserve batches from it.
    id_budget: Option<u64>,
}

impl Plan {
    fn new(args: &LoadArgs) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            setting: "url",
            reason,
        };
        let uri: Uri = args
            .url
            .parse()
            .map_err(|e| bad(format!("{:?}: {e}", args.url)))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(format!("{:?}: only http:// is supported", args.url)));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad(format!("{:?}: no host", args.url)))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let prefix = uri.path().trim_end_matches('/');
        let path = format!("{prefix}/v1/namespaces/{}/check-and-mark", args.namespace)
            .parse()
            .map_err(|_| Error::Config {
                setting: "namespace",
                reason: format!("{:?} cannot be part of a URL path", args.namespace),
            })?;
        let auth = args.token.as_deref().map(bearer).transpose()?;
        let seed = args.seed.unwrap_or_else(|| rand::rng().next_u64());
        // f x 2^64, computed in f64: exact enough for a fraction of IDs.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let repeat_below = (args.duplicates * 18_446_744_073_709_551_616.0) as u64;
        Ok(Self {
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| bad(format!("{:?}: bad host", args.url)))?,
            path,
            auth,
            batch: args.batch,
            repeat_below,
            seed,
            id_budget: args.ids,
        })
    }
}

/// Progress shared by the tasks, updated once per request.
#[derive(Default)]
struct Counters {
    ids: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    reserved: AtomicU64,
    done: AtomicBool,
}

async fn report_progress(counters: Arc<Counters>, started: Instant, rate: Option<f64>) {
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        if counters.done.load(Ordering::Acquire) {
            return;
        }
        let secs = started.elapsed().as_secs_f64();
        let ids = counters.ids.load(Ordering::Relaxed);
        let requests = counters.requests.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let target = rate.map_or_else(String::new, |r| {
            format!(" (target {})", thousands(r.round() as u64))
        });
        eprintln!(
            "{secs:6.1} s  {} IDs  {} IDs/s{target}  {} req/s  {errors} errors",
            thousands(ids),
            thousands(per_sec(ids, secs)),
            thousands(per_sec(requests, secs)),
        );
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn per_sec(n: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (n as f64 / secs).round() as u64
    } else {
        0
    }
}

/// splitmix64's output function: a bijection on `u64`, so distinct inputs give
/// distinct outputs. Public with [`id_hex`] so that other load generators (the NATS
/// peer's, in `benches/`) draw the same IDs and repeats.
#[must_use]
pub const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 16 bytes of task `task`'s fresh ID number `n`, as 32 lowercase hex
/// characters: unique per `(task, n)` within a seed, random-looking, and the same for
/// the same seed.
pub fn id_hex(seed: u64, task: u64, n: u64, out: &mut [u8; 32]) {
    let lo = mix(((task << 40) | n).wrapping_add(seed));
    let hi = mix(lo ^ seed.rotate_left(32));
    let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// Every byte's two hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0_u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// One task: one connection, one request in flight.
struct Worker {
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    index: u64,
    /// The task's random stream (splitmix64 state), for the choice of repeats.
    rng: u64,
    /// The next fresh ID number.
    next: u64,
    /// Recently acknowledged fresh ID numbers, a ring of [`REPEAT_WINDOW`].
    recent: Vec<u64>,
    recent_at: usize,
    /// Which slots of the batch in flight are repeats.
    repeat: Vec<bool>,
    /// The ID number of each slot of the batch in flight.
    numbers: Vec<u64>,
    /// Fresh ID numbers of the batch in flight that were answered `new`.
    marked: Vec<u64>,
    body: BytesMut,
    answer: Vec<u8>,
    verdict_field: Finder<'static>,
    stats: Stats,
}

/// The verdict a slot got, by the first letter of its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    Duplicate,
    Probable,
    InProgress,
}

impl Worker {
    fn new(plan: Arc<Plan>, counters: Arc<Counters>, index: u64) -> Self {
        let batch = plan.batch;
        let rng = mix(plan.seed ^ mix(index));
        Self {
            plan,
            counters,
            index,
            rng,
            next: 0,
            recent: Vec::with_capacity(REPEAT_WINDOW.min(batch * 64)),
            recent_at: 0,
            repeat: Vec::with_capacity(batch),
            numbers: Vec::with_capacity(batch),
            marked: Vec::with_capacity(batch),
            // `{"ids":[` + 35 bytes per ID (`"…32 hex…",`) + `]}`.
            body: BytesMut::with_capacity(16 + 35 * batch),
            answer: Vec::with_capacity(64 + 64 * batch),
            verdict_field: Finder::new(b"\"verdict\":\""),
            stats: Stats::new(),
        }
    }

    async fn run(mut self, deadline: Instant, pacer: Option<Arc<Pacer>>) -> Stats {
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        while Instant::now() < deadline {
            let Some(n) = self.reserve() else { break };
            if conn.is_none() {
                if let Ok(s) = connect(&self.plan).await {
                    conn = Some(s);
                } else {
                    self.fail(Failure::Transport, n);
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            }
            let Some(sender) = conn.as_mut() else {
                continue;
            };
            // Where this request's latency is timed from: its sending, unless it
            // goes out late on the schedule (see the module docs).
            let mut due_late = None;
            if let Some(pacer) = &pacer {
                let claim = pacer.claim();
                pacer.record_missed(&claim, &mut self.stats.latency);
                let Some(due) = claim.due else { break };
                if due > claim.at {
                    tokio::time::sleep_until(due).await;
                } else {
                    due_late = Some(due);
                }
            }
            let body = self.fill(n);
            let started = due_late.unwrap_or_else(Instant::now);
            let exchanged =
                tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(sender, body)).await;
            match exchanged {
                Ok(Ok(StatusCode::OK)) => {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.stats
                        .latency
                        .saturating_record(us.clamp(1, MAX_LATENCY_US));
                    if self.tally(n) {
                        self.acknowledged();
                        self.stats.requests += 1;
                        self.stats.ids += n as u64;
                        self.counters.ids.fetch_add(n as u64, Ordering::Relaxed);
                        self.counters.requests.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.fail(Failure::Decode, n);
                    }
                }
                Ok(Ok(status)) => {
                    self.fail(Failure::Status(status.as_u16()), n);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                Ok(Err(())) | Err(_) => {
                    // The connection may be broken, or still busy with the request
                    // that timed out: start a new one.
                    conn = None;
                    let failure = if exchanged.is_err() {
                        Failure::Timeout
                    } else {
                        Failure::Transport
                    };
                    self.fail(failure, n);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
        self.stats
    }

    /// The size of the next batch, or `None` when the ID budget is spent.
    fn reserve(&self) -> Option<usize> {
        let batch = self.plan.batch as u64;
        let Some(budget) = self.plan.id_budget else {
            return Some(self.plan.batch);
        };
        let before = self.counters.reserved.fetch_add(batch, Ordering::Relaxed);
        let n = budget.saturating_sub(before).min(batch);
        // `n <= batch`, a usize.
        (n > 0).then(|| usize::try_from(n).unwrap_or(self.plan.batch))
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.rng)
    }

    /// Writes a request body of `n` IDs and returns it.
    fn fill(&mut self, n: usize) -> Bytes {
        // The previous body was dropped with its request, so this reclaims the same
        // allocation instead of making a new one.
        self.body.reserve(16 + 35 * n);
        self.body.extend_from_slice(b"{\"ids\":[");
        self.repeat.clear();
        self.numbers.clear();
        let mut item = [0_u8; 35];
        item[0] = b'"';
        item[33] = b'"';
        item[34] = b',';
        for slot in 0..n {
            let repeat = !self.recent.is_empty() && self.next_random() < self.plan.repeat_below;
            let number = if repeat {
                #[allow(clippy::cast_possible_truncation)] // the index is below len
                let k = (self.next_random() % self.recent.len() as u64) as usize;
                self.recent[k]
            } else {
                self.next += 1;
                self.next - 1
            };
            self.repeat.push(repeat);
            self.numbers.push(number);
            let hex: &mut [u8; 32] = (&mut item[1..33]).try_into().expect("32 bytes");
            id_hex(self.plan.seed, self.index, number, hex);
            let len = if slot + 1 == n { 34 } else { 35 };
            self.body.extend_from_slice(&item[..len]);
        }
        self.body.extend_from_slice(b"]}");
        self.body.split().freeze()
    }

    /// Sends one request and reads the whole answer into `self.answer`.
    async fn exchange(
        &mut self,
        sender: &mut SendRequest<Full<Bytes>>,
        body: Bytes,
    ) -> Result<StatusCode, ()> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.plan.path.clone())
            .header(header::HOST, self.plan.authority.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        if let Some(auth) = &self.plan.auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(body)).map_err(|_| ())?;
        sender.ready().await.map_err(|_| ())?;
        let response = sender.send_request(request).await.map_err(|_| ())?;
        let status = response.status();
        let mut body = response.into_body();
        self.answer.clear();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|_| ())?.into_data() {
                self.answer.extend_from_slice(&data);
            }
        }
        Ok(status)
    }

    /// Counts the verdicts of the answer in `self.answer` against what each slot
    /// should get. `false` when the answer does not have one verdict per ID.
    fn tally(&mut self, n: usize) -> bool {
        const FIELD: usize = b"\"verdict\":\"".len();
        let mut slot = 0;
        let mut ok = true;
        let mut counts = VerdictCounts::default();
        let mut unexpected = Unexpected::default();
        self.marked.clear();
        for at in self.verdict_field.find_iter(&self.answer) {
            let verdict = match self.answer.get(at + FIELD) {
                Some(b'n') => Seen::New,
                Some(b'd') => Seen::Duplicate,
                Some(b'p') => Seen::Probable,
                Some(b'i') => Seen::InProgress,
                _ => {
                    ok = false;
                    break;
                }
            };
            let Some(&repeat) = self.repeat.get(slot) else {
                ok = false;
                break;
            };
            slot += 1;
            match verdict {
                Seen::New => counts.new += 1,
                Seen::Duplicate => counts.duplicate += 1,
                Seen::Probable => counts.probable_duplicate += 1,
                Seen::InProgress => counts.in_progress += 1,
            }
            if repeat && verdict != Seen::Duplicate {
                unexpected.repeated_not_duplicate += 1;
            } else if !repeat && verdict != Seen::New {
                unexpected.fresh_not_new += 1;
            } else if !repeat {
                self.marked.push(self.numbers[slot - 1]);
            }
        }
        if !ok || slot != n {
            return false;
        }
        let repeats = self.repeat.iter().filter(|r| **r).count() as u64;
        self.stats.repeated_ids += repeats;
        self.stats.fresh_ids += n as u64 - repeats;
        self.stats.verdicts.add(&counts);
        self.stats.unexpected.repeated_not_duplicate += unexpected.repeated_not_duplicate;
        self.stats.unexpected.fresh_not_new += unexpected.fresh_not_new;
        true
    }

    /// The batch's fresh IDs answered `new` are marked: they may be repeated from
    /// now on. (A fresh ID answered otherwise, a Bloom false positive, was not
    /// marked, and a repeat of it would not be answered `duplicate`.)
    fn acknowledged(&mut self) {
        for &number in &self.marked {
            if self.recent.len() < REPEAT_WINDOW {
                self.recent.push(number);
            } else {
                self.recent[self.recent_at] = number;
                self.recent_at = (self.recent_at + 1) % REPEAT_WINDOW;
            }
        }
    }

    fn fail(&mut self, failure: Failure, ids: usize) {
        match failure {
            Failure::Status(status) => self.stats.errors.answered(status, &self.answer),
            _ => self.stats.errors.count(failure),
        }
        self.stats.failed_ids += ids as u64;
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

async fn connect(plan: &Plan) -> Result<SendRequest<Full<Bytes>>, ()> {
    let stream = TcpStream::connect((plan.host.as_str(), plan.port))
        .await
        .map_err(|_| ())?;
    // One request at a time per connection: Nagle would hold its last segment
    // back for the daemon's delayed ACK.
    stream.set_nodelay(true).map_err(|_| ())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the daemon closes the connection; the
        // next request on it reports the error.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Why a request failed.
#[derive(Clone, Copy)]
enum Failure {
    /// Connecting, sending or reading failed.
    Transport,
    /// No whole answer within [`REQUEST_TIMEOUT`].
    Timeout,
    /// An answer other than 200 (its body is in the worker's answer buffer).
    Status(u16),
    /// A 200 answer without one verdict per ID.
    Decode,
}

/// Per-task tallies, merged at the end.
struct Stats {
    requests: u64,
    ids: u64,
    fresh_ids: u64,
    repeated_ids: u64,
    failed_ids: u64,
    verdicts: VerdictCounts,
    unexpected: Unexpected,
    errors: ErrorCounts,
    latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            requests: 0,
            ids: 0,
            fresh_ids: 0,
            repeated_ids: 0,
            failed_ids: 0,
            verdicts: VerdictCounts::default(),
            unexpected: Unexpected::default(),
            errors: ErrorCounts::default(),
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant, valid histogram bounds"),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.ids += other.ids;
        self.fresh_ids += other.fresh_ids;
        self.repeated_ids += other.repeated_ids;
        self.failed_ids += other.failed_ids;
        self.verdicts.add(&other.verdicts);
        self.unexpected.fresh_not_new += other.unexpected.fresh_not_new;
        self.unexpected.repeated_not_duplicate += other.unexpected.repeated_not_duplicate;
        self.errors.merge(&other.errors);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self, args: &LoadArgs, seed: u64, elapsed: Duration, missed: u64) -> LoadReport {
        let secs = elapsed.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        // Dropped requests alone are no latency of the daemon's: with no request
        // answered 200, there is none to report.
        let latency_us = if self.requests == 0 {
            None
        } else {
            Latency::of(&self.latency)
        };
        let ids_per_sec = rate(self.ids);
        LoadReport {
            url: args.url.clone(),
            namespace: args.namespace.clone(),
            batch: args.batch,
            concurrency: args.concurrency,
            threads: args.threads,
            duplicates_requested: args.duplicates,
            seed,
            id_format: "16 bytes as 32 lowercase hex characters",
            elapsed_s: secs,
            requests: self.requests,
            ids: self.ids,
            fresh_ids: self.fresh_ids,
            repeated_ids: self.repeated_ids,
            duplicates_sent: if self.ids == 0 {
                0.0
            } else {
                self.repeated_ids as f64 / self.ids as f64
            },
            ids_per_sec,
            requests_per_sec: rate(self.requests),
            target_ids_per_sec: args.rate,
            missed_requests: missed,
            below_target: args
                .rate
                .is_some_and(|target| ids_per_sec < target * BELOW_TARGET),
            verdicts: self.verdicts,
            unexpected: self.unexpected,
            errors: self.errors.clone(),
            failed_ids: self.failed_ids,
            latency_from: if args.rate.is_some() {
                "schedule"
            } else {
                "send"
            },
            latency_us,
        }
    }
}

/// What `oncelyd load` measured. Counts are of requests answered 200 unless said
/// otherwise.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadReport {
    /// The daemon's base URL.
    pub url: String,
    /// The namespace marked into.
    pub namespace: String,
    /// IDs per request.
    pub batch: usize,
    /// Connections, one request in flight on each.
    pub concurrency: usize,
    /// Worker threads of the generator's runtime.
    pub threads: usize,
    /// The `--duplicates` fraction asked for.
    pub duplicates_requested: f64,
    /// The seed of the IDs (give it as `--seed` to send the same IDs again).
    pub seed: u64,
    /// How IDs are written.
    pub id_format: &'static str,
    /// Seconds from the first request to the last answer; with `--rate`, at least
    /// the part of the schedule the requests sent cover (see the [module
    /// docs](self#pacing---rate)).
    pub elapsed_s: f64,
    /// Requests answered 200.
    pub requests: u64,
    /// IDs in those requests: `fresh_ids + repeated_ids`, and the sum of `verdicts`.
    pub ids: u64,
    /// IDs sent for the first time.
    pub fresh_ids: u64,
    /// IDs that repeated one already marked.
    pub repeated_ids: u64,
    /// `repeated_ids / ids`.
    pub duplicates_sent: f64,
    /// `ids / elapsed_s`.
    pub ids_per_sec: f64,
    /// `requests / elapsed_s`.
    pub requests_per_sec: f64,
    /// The `--rate` target in IDs per second; `None` (JSON `null`) when unlimited.
    pub target_ids_per_sec: Option<f64>,
    /// With `--rate`: scheduled requests dropped, never sent, because every
    /// connection was still busy when they were due (beyond the catch-up
    /// allowance). 0 without a target.
    pub missed_requests: u64,
    /// With `--rate`: `ids_per_sec` is under [`BELOW_TARGET`] of the target (the
    /// daemon or the generator could not keep up, or requests failed). `false`
    /// without a target.
    pub below_target: bool,
    /// The daemon's verdicts.
    pub verdicts: VerdictCounts,
    /// Verdicts other than expected: fresh IDs must be `new`, repeats `duplicate`.
    pub unexpected: Unexpected,
    /// Requests that failed.
    pub errors: ErrorCounts,
    /// IDs in failed requests (not in `ids`).
    pub failed_ids: u64,
    /// `send` without `--rate`; `schedule` with it: see `latency_us`.
    pub latency_from: &'static str,
    /// Latency per request answered 200, in microseconds, to the last byte of the
    /// answer: from its sending without `--rate`; with it, from when it was due if
    /// it went out late, and counting the dropped requests with the time they had
    /// waited (see [the module docs](self#latency-under---rate-no-coordinated-omission)).
    /// `None` (JSON `null`) when no request was answered 200.
    pub latency_us: Option<Latency>,
}

/// IDs by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerdictCounts {
    /// `new`.
    pub new: u64,
    /// `duplicate`.
    pub duplicate: u64,
    /// `probable_duplicate`.
    pub probable_duplicate: u64,
    /// `in_progress`.
    pub in_progress: u64,
}

impl VerdictCounts {
    fn add(&mut self, other: &Self) {
        self.new += other.new;
        self.duplicate += other.duplicate;
        self.probable_duplicate += other.probable_duplicate;
        self.in_progress += other.in_progress;
    }
}

/// Verdicts other than expected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unexpected {
    /// Fresh IDs not answered `new`: Bloom false positives from generations without
    /// an exact table (`probable_duplicate`), or a bug.
    pub fresh_not_new: u64,
    /// Repeats not answered `duplicate`: the earlier mark has left the exact horizon
    /// (or been forgotten: a bug).
    pub repeated_not_duplicate: u64,
}

/// Failed requests by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// All failed requests.
    pub total: u64,
    /// Connecting, sending or reading failed.
    pub transport: u64,
    /// No whole answer within 60 s.
    pub timeout: u64,
    /// Answers 200 without one verdict per ID.
    pub decode: u64,
    /// Answers other than 200, by status.
    pub http: BTreeMap<u16, u64>,
    /// Answers other than 200, by status and the daemon's error code, most frequent
    /// first.
    pub answers: Vec<ErrorAnswer>,
}

/// Error answers with one status and code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The daemon's error code (`too_many_ids`, `overloaded`, `unknown_namespace`,
    /// ...), or `http_<status>` for an answer without the daemon's error body (a
    /// proxy's, say).
    pub code: String,
    /// Requests answered so.
    pub requests: u64,
    /// The message of the first of them.
    pub message: String,
}

impl ErrorCounts {
    fn count(&mut self, failure: Failure) {
        self.total += 1;
        match failure {
            Failure::Transport => self.transport += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Decode => self.decode += 1,
            Failure::Status(s) => *self.http.entry(s).or_default() += 1,
        }
    }

    /// Counts an answer other than 200, with the error code and message of its body.
    fn answered(&mut self, status: u16, body: &[u8]) {
        self.count(Failure::Status(status));
        let (code, message) = match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => (
                format!("http_{status}"),
                format!(
                    "an answer without the daemon's error body: {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            ),
        };
        self.add_answer(ErrorAnswer {
            status,
            code,
            requests: 1,
            message,
        });
    }

    fn add_answer(&mut self, answer: ErrorAnswer) {
        match self
            .answers
            .iter_mut()
            .find(|a| a.status == answer.status && a.code == answer.code)
        {
            Some(known) => known.requests += answer.requests,
            None => self.answers.push(answer),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.total += other.total;
        self.transport += other.transport;
        self.timeout += other.timeout;
        self.decode += other.decode;
        for (status, n) in &other.http {
            *self.http.entry(*status).or_default() += n;
        }
        for answer in &other.answers {
            self.add_answer(answer.clone());
        }
        self.answers
            .sort_by(|a, b| b.requests.cmp(&a.requests).then(a.status.cmp(&b.status)));
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds; all 0 when it is empty (see
    /// [`Latency::of`]).
    #[must_use]
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// The percentiles of a histogram of microseconds; `None` when it is empty.
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self::from_histogram(h))
    }
}

/// Writes the report: one JSON object and a newline with `json`, else text.
///
/// # Errors
///
/// [`Error::Output`] when `out` fails.
pub fn write_report(report: &LoadReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    if json {
        serde_json::to_writer(&mut *out, report).map_err(|e| Error::Output(e.into()))?;
        writeln!(out).map_err(Error::Output)
    } else {
        out.write_all(render_text(report).as_bytes())
            .map_err(Error::Output)
    }
}

/// The text report.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn render_text(r: &LoadReport) -> String {
    let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "oncelyd load: {} namespace {}, batch {}, concurrency {}, {} thread{}, {:.1}% duplicates, seed {}",
        r.url,
        r.namespace,
        r.batch,
        r.concurrency,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.duplicates_requested * 100.0,
        r.seed,
    );
    let _ = writeln!(s, "  elapsed     {:.2} s", r.elapsed_s);
    let _ = writeln!(
        s,
        "  IDs         {} ({} IDs/s): {} fresh, {} repeated ({:.2}%)",
        thousands(r.ids),
        thousands(r.ids_per_sec.round() as u64),
        thousands(r.fresh_ids),
        thousands(r.repeated_ids),
        r.duplicates_sent * 100.0,
    );
    let _ = writeln!(s, "  rate        {}", rate_line(r));
    let _ = writeln!(
        s,
        "  requests    {} answered 200 ({} req/s), {} failed",
        thousands(r.requests),
        thousands(r.requests_per_sec.round() as u64),
        thousands(r.errors.total),
    );
    let v = &r.verdicts;
    let _ = writeln!(
        s,
        "  verdicts    new {}, duplicate {}, probable_duplicate {}, in_progress {}",
        thousands(v.new),
        thousands(v.duplicate),
        thousands(v.probable_duplicate),
        thousands(v.in_progress),
    );
    let _ = writeln!(
        s,
        "  unexpected  {} fresh not new, {} repeats not duplicate",
        thousands(r.unexpected.fresh_not_new),
        thousands(r.unexpected.repeated_not_duplicate),
    );
    let _ = writeln!(s, "  errors      {}", error_line(&r.errors));
    match &r.latency_us {
        Some(l) => {
            let _ = writeln!(
                s,
                "  latency     p50 {}, p90 {}, p99 {}, p99.9 {}, max {} (mean {:.3} ms; {})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.mean / 1000.0,
                if r.latency_from == "schedule" {
                    "late and dropped requests timed from when they were due"
                } else {
                    "from sending"
                },
            );
        }
        None => {
            let _ = writeln!(s, "  latency     none: no request was answered 200");
        }
    }
    s
}

/// The text report's errors line: counts by cause, and the daemon's error codes.
fn error_line(e: &ErrorCounts) -> String {
    let mut line = format!(
        "{} ({} transport, {} timed out, {} malformed",
        thousands(e.total),
        e.transport,
        e.timeout,
        e.decode
    );
    for a in &e.answers {
        let _ = write!(
            line,
            ", {} x HTTP {} {}: {}",
            thousands(a.requests),
            a.status,
            a.code,
            a.message
        );
    }
    line.push(')');
    line
}

/// The run's outcome: `Ok` when every request was answered 200.
///
/// # Errors
///
/// [`Error::LoadFailed`] with the counts and the daemon's error codes when requests
/// failed: the report's rates and latencies count only the others.
pub fn check(report: &LoadReport) -> Result<(), Error> {
    if report.errors.total == 0 {
        return Ok(());
    }
    Err(Error::LoadFailed {
        failed: report.errors.total,
        sent: report.requests + report.errors.total,
        causes: error_line(&report.errors),
    })
}

/// The text report's rate line: the target and how close the run came to it.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn rate_line(r: &LoadReport) -> String {
    let Some(target) = r.target_ids_per_sec else {
        return "unlimited (each connection sends as soon as its last answer is in)".into();
    };
    let achieved = r.ids_per_sec.round() as u64;
    let target_text = thousands(target.round() as u64);
    let percent = r.ids_per_sec / target * 100.0;
    let missed = match r.missed_requests {
        0 => "no scheduled request missed".to_owned(),
        1 => "1 scheduled request missed while every connection was busy".to_owned(),
        n => format!(
            "{} scheduled requests missed while every connection was busy",
            thousands(n)
        ),
    };
    if r.below_target {
        format!(
            "BELOW TARGET: achieved {} IDs/s of a target of {target_text} IDs/s \
             ({percent:.1}%); {missed} (more --concurrency, or the daemon is saturated)",
            thousands(achieved),
        )
    } else {
        format!(
            "target {target_text} IDs/s, achieved {} IDs/s ({percent:.1}%); {missed}",
            thousands(achieved),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_per_task_and_number_and_differ_by_seed() {
        let mut seen = std::collections::HashSet::new();
        let mut hex = [0_u8; 32];
        for task in 0..4 {
            for n in 0..5_000 {
                id_hex(7, task, n, &mut hex);
                assert!(hex.iter().all(u8::is_ascii_hexdigit));
                assert!(seen.insert(hex), "duplicate ID");
            }
        }
        let mut other = [0_u8; 32];
        id_hex(8, 0, 0, &mut other);
        id_hex(7, 0, 0, &mut hex);
        assert_ne!(hex, other);
    }

    #[test]
    fn the_schedule_drops_late_requests_instead_of_bursting() {
        // 10 requests a second for 2 s: request k due at k x 100 ms.
        let start = Instant::now();
        let pacer = Pacer::new(start, Duration::from_secs(2), 100, 1_000.0);
        assert_eq!(pacer.slots, 20);
        assert_eq!(pacer.claim().due, Some(start));
        let claim = pacer.claim();
        assert_eq!(claim.due, Some(start + Duration::from_millis(100)));
        assert!(claim.missed.is_empty());
        assert_eq!(pacer.missed.load(Ordering::Relaxed), 0);

        // Started 1.02 s ago: requests due before 0.92 s (one period of allowance)
        // are dropped, and the next one is due at 1 s.
        let start = Instant::now() - Duration::from_millis(1_020);
        let pacer = Pacer::new(start, Duration::from_secs(2), 100, 1_000.0);
        let claim = pacer.claim();
        assert_eq!(claim.due, Some(start + Duration::from_secs(1)));
        assert_eq!(claim.missed, 0..10);
        assert_eq!(pacer.missed.load(Ordering::Relaxed), 10);
        assert_eq!(
            pacer.claim().due,
            Some(start + Duration::from_millis(1_100))
        );

        // Past the deadline: nothing more is due; the skipped rest is counted once.
        let start = Instant::now() - Duration::from_secs(5);
        let pacer = Pacer::new(start, Duration::from_secs(2), 100, 1_000.0);
        let claim = pacer.claim();
        assert_eq!((claim.due, claim.missed), (None, 0..20));
        let claim = pacer.claim();
        assert_eq!((claim.due, claim.missed), (None, 20..20));
        assert_eq!(pacer.missed.load(Ordering::Relaxed), 20);
        assert_eq!(pacer.covered(), Duration::from_secs(2));
    }

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap()
    }

    #[test]
    fn dropped_requests_count_with_the_time_they_waited() {
        // Started 1.02 s ago at 10 requests a second: requests 0 to 9 were due at
        // 0, 100, ..., 900 ms and had waited 1020, 920, ..., 120 ms when dropped.
        let start = Instant::now() - Duration::from_millis(1_020);
        let pacer = Pacer::new(start, Duration::from_secs(2), 100, 1_000.0);
        let claim = pacer.claim();
        let mut h = histogram();
        pacer.record_missed(&claim, &mut h);
        assert_eq!(h.len(), 10);
        let near = |us: u64, ms: u64| us.abs_diff(ms * 1000) < 30_000;
        assert!(near(h.max(), 1_020), "{}", h.max());
        assert!(near(h.min(), 120), "{}", h.min());
        assert!(
            near(h.value_at_quantile(0.5), 520),
            "{}",
            h.value_at_quantile(0.5)
        );

        // An unreachable rate drops requests by the billion: recorded in groups, the
        // count exact and the spread kept.
        let start = Instant::now() - Duration::from_millis(500);
        let pacer = Pacer::new(start, Duration::from_secs(1), 1, 1e10);
        let claim = pacer.claim();
        let dropped = claim.missed.end - claim.missed.start;
        assert!(dropped > 4_000_000_000, "{dropped}");
        let mut h = histogram();
        pacer.record_missed(&claim, &mut h);
        assert_eq!(h.len(), dropped);
        assert!(
            near(h.max(), 480),
            "waited up to 500 ms less the allowance: {}",
            h.max()
        );
        assert!(
            near(h.value_at_quantile(0.5), 240),
            "{}",
            h.value_at_quantile(0.5)
        );
    }

    #[test]
    fn error_answers_are_counted_by_code_with_a_message() {
        let mut a = ErrorCounts::default();
        let body = br#"{"error":{"code":"too_many_ids","message":"1001 IDs in one request"}}"#;
        a.answered(400, body);
        a.answered(400, body);
        let mut b = ErrorCounts::default();
        b.answered(502, b"<html>bad gateway</html>");
        b.answered(400, body);
        b.count(Failure::Timeout);
        a.merge(&b);
        assert_eq!((a.total, a.timeout), (5, 1));
        assert_eq!(a.http, BTreeMap::from([(400, 3), (502, 1)]));
        assert_eq!(a.answers.len(), 2);
        assert_eq!(
            (
                a.answers[0].status,
                a.answers[0].code.as_str(),
                a.answers[0].requests
            ),
            (400, "too_many_ids", 3)
        );
        assert_eq!(a.answers[0].message, "1001 IDs in one request");
        assert_eq!(a.answers[1].code, "http_502");
        let line = error_line(&a);
        assert!(line.contains("3 x HTTP 400 too_many_ids"), "{line}");
        assert!(line.contains("1 timed out"), "{line}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
