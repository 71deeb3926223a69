//! `client_batching`: many tasks marking one event each through the typed client
//! (`oncely-client`), with its auto-batching on or off, against a running
//! `oncelyd`; for `benches/peers/run.sh`.
//!
//! `--tasks` tasks (64 by default) share one [`Client`]. Each loops until
//! `--duration` has passed: one `check_and_mark` call with one fresh ID (`owner:
//! None`, so the client draws the token), awaited before the next. That is a
//! consumer with 64 handlers in flight, each marking the event it handles. With
//! `--mode on` the client coalesces the concurrent calls (`--max-in-flight`,
//! `--window-us`); with `--mode off` each call is a request of its own. `--mode
//! batched` is the reference: each task marks `--batch` fresh IDs per call, with
//! batching off, which is what a consumer that batches by hand gets.
//!
//! IDs are those of `oncelyd load` (16 bytes as 32 lowercase hex characters, unique
//! per task and number, seeded), so every call must answer `new`; anything else,
//! and any failed call, is counted and makes the exit status non-zero.
//!
//! Everything runs on one thread, like the other load generators of the peers
//! script. The result is one JSON object on standard output: IDs and calls per
//! second, the latency of a call (from its start to its answer) in microseconds,
//! and how many requests the calls took.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use oncely_client::{Batching, Client, RetryPolicy, Verdict};
use oncelyd::load::{Latency, id_hex};
use serde::Serialize;
use tokio::time::Instant;

/// As `oncelyd`'s (see daemon/src/main.rs), for every mode alike: glibc's malloc
/// and free were a fifth of this binary's instructions per coalesced call
/// (callgrind).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Latencies above this (60 s) are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// One ID per call, auto-batching on.
    On,
    /// One ID per call, auto-batching off: one request per call.
    Off,
    /// `--batch` IDs per call, auto-batching off: the batched reference.
    Batched,
}

/// Mark fresh IDs through the typed client from many tasks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The daemon, for example http://127.0.0.1:7070.
    #[arg(long)]
    url: String,

    /// Namespace to mark into (it must exist).
    #[arg(long, default_value = "default")]
    namespace: String,

    /// Concurrent tasks, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    tasks: usize,

    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// on, off, or batched (see the module docs).
    #[arg(long, value_enum, default_value_t = Mode::On)]
    mode: Mode,

    /// IDs per call with `--mode batched`.
    #[arg(long, default_value_t = 1000)]
    batch: usize,

    /// Auto-batching: requests of a lane in flight before calls wait [default: the
    /// client's default].
    #[arg(long)]
    max_in_flight: Option<usize>,

    /// Auto-batching: the longest wait for batch mates, in microseconds [default:
    /// the client's default].
    #[arg(long)]
    window_us: Option<u64>,

    /// Seed of the IDs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What the run measured.
#[derive(Serialize)]
struct Report {
    mode: Mode,
    tasks: usize,
    ids_per_call: usize,
    max_in_flight: Option<usize>,
    window_us: Option<u64>,
    elapsed_s: f64,
    calls: u64,
    ids: u64,
    ids_per_sec: f64,
    calls_per_sec: f64,
    /// Requests the client sent for the calls (first attempts), from its batching
    /// statistics; the calls themselves when batching is off.
    requests: u64,
    failed_calls: u64,
    not_new: u64,
    /// From a call's start to its answer.
    latency_us: Latency,
}

/// One task's tallies.
struct Tally {
    calls: u64,
    ids: u64,
    failed: u64,
    not_new: u64,
    latency: Histogram<u64>,
}

async fn task(client: Client, args: std::sync::Arc<Args>, index: u64, end: Instant) -> Tally {
    let per_call = if args.mode == Mode::Batched {
        args.batch
    } else {
        1
    };
    let mut tally = Tally {
        calls: 0,
        ids: 0,
        failed: 0,
        not_new: 0,
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant, valid histogram bounds"),
    };
    let mut next = 0_u64;
    let mut hex = [0_u8; 32];
    while Instant::now() < end {
        let ids: Vec<String> = (0..per_call)
            .map(|_| {
                id_hex(args.seed, index, next, &mut hex);
                next += 1;
                std::str::from_utf8(&hex)
                    .expect("hex digits are ASCII")
                    .to_owned()
            })
            .collect();
        let started = Instant::now();
        match client.check_and_mark(&args.namespace, &ids, None).await {
            Ok(marked) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
                tally.calls += 1;
                tally.ids += ids.len() as u64;
                tally.not_new += marked
                    .verdicts
                    .iter()
                    .filter(|v| **v != Verdict::New)
                    .count() as u64;
            }
            Err(e) => {
                if tally.failed == 0 {
                    eprintln!("client_batching: task {index}: {e}");
                }
                tally.failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tally
}

async fn run(args: Args) -> Result<Report, String> {
    let mut builder = Client::builder(args.url.clone())
        .timeout(Duration::from_secs(10))
        .retry(RetryPolicy::default());
    builder = if args.mode == Mode::On {
        let mut batching = Batching::default();
        if let Some(n) = args.max_in_flight {
            batching = batching.max_in_flight(n);
        }
        if let Some(us) = args.window_us {
            batching = batching.window(Duration::from_micros(us));
        }
        builder.batching(batching)
    } else {
        builder.no_batching()
    };
    let client = builder.build().map_err(|e| e.to_string())?;
    client
        .namespace(&args.namespace)
        .await
        .map_err(|e| e.to_string())?;
    let args = std::sync::Arc::new(args);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = (0..args.tasks as u64)
        .map(|i| tokio::spawn(task(client.clone(), std::sync::Arc::clone(&args), i, end)))
        .collect();
    let mut total = Tally {
        calls: 0,
        ids: 0,
        failed: 0,
        not_new: 0,
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant, valid histogram bounds"),
    };
    for t in tasks {
        let t = t.await.map_err(|e| e.to_string())?;
        total.calls += t.calls;
        total.ids += t.ids;
        total.failed += t.failed;
        total.not_new += t.not_new;
        total
            .latency
            .add(&t.latency)
            .map_err(|e| format!("{e:?}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_sec = |n: u64| n as f64 / secs;
    let requests = client
        .batching_stats()
        .map_or(total.calls + total.failed, |s| s.requests);
    Ok(Report {
        mode: args.mode,
        tasks: args.tasks,
        ids_per_call: if args.mode == Mode::Batched {
            args.batch
        } else {
            1
        },
        max_in_flight: (args.mode == Mode::On).then(|| {
            args.max_in_flight
                .unwrap_or(Batching::default().max_in_flight)
        }),
        window_us: (args.mode == Mode::On).then(|| {
            args.window_us.unwrap_or_else(|| {
                u64::try_from(Batching::default().window.as_micros()).unwrap_or(u64::MAX)
            })
        }),
        elapsed_s: secs,
        calls: total.calls,
        ids: total.ids,
        ids_per_sec: per_sec(total.ids),
        calls_per_sec: per_sec(total.calls),
        requests,
        failed_calls: total.failed,
        not_new: total.not_new,
        latency_us: Latency::from_histogram(&total.latency),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.tasks == 0 || args.batch == 0 || !(args.duration > 0.0 && args.duration < 3600.0) {
        eprintln!(
            "client_batching: --tasks and --batch must be at least 1, --duration 0 to 3600 s"
        );
        return ExitCode::from(2);
    }
    // One thread, like the other peers' load generators.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client_batching: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("client_batching: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if report.failed_calls > 0 || report.not_new > 0 {
                eprintln!(
                    "client_batching: {} calls failed, {} IDs not new",
                    report.failed_calls, report.not_new
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("client_batching: {e}");
            ExitCode::FAILURE
        }
    }
}
