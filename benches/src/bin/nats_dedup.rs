//! `nats_dedup`: NATS JetStream's message deduplication driven like `oncelyd load`
//! drives Oncely, for the side-by-side comparison in `benches/peers/run.sh`.
//!
//! JetStream deduplicates on the `Nats-Msg-Id` header: a stream remembers every ID it
//! stored within its `duplicate_window`, and answers a publish whose ID it remembers
//! with an ack flagged `"duplicate": true` (and stores nothing). So the event ID goes
//! in `Nats-Msg-Id`, the payload is empty (what is measured is the dedup, not the
//! transport of event bodies), and an ack's `duplicate` flag is the verdict.
//!
//! The stream (`--stream`, on `--subject`) is deleted if it exists and created anew
//! with file storage, one replica and `--duplicate-window`, so that every run starts
//! from an empty dedup table.
//!
//! `--concurrency` tasks each own one connection and keep up to `--inflight` publishes
//! awaiting their acks (`--inflight 1` is a synchronous publish: send, await the ack,
//! send the next). A task stops publishing at `--duration` or when `--ids` IDs were
//! sent, then waits for the acks still due. Everything runs on one thread, like
//! `oncelyd load` and `redis-benchmark`, so the three load generators take a comparable
//! share of the machine.
//!
//! IDs are those of `oncelyd load`: 16 bytes written as 32 lowercase hex characters,
//! a bijective mix (splitmix64) of `(task << 40 | n) + seed`, so they are unique within
//! a run, look random, and repeat exactly with the same `--seed`. With `--duplicates f`
//! each publish is, with probability `f`, a repeat of one of the last 65,536 fresh IDs
//! of its task that were acknowledged as stored, so the server must flag it a
//! duplicate; a fresh ID must not be flagged. Anything else is counted as unexpected.
//!
//! The result is one JSON object on standard output: IDs per second, latency
//! percentiles (publish to ack, in microseconds), and the counts of acks by flag.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use clap::Parser;
use hdrhistogram::Histogram;
use oncelyd::load::{Latency, id_hex, mix};
use serde::Serialize;
use tokio::time::Instant;

/// How many of its most recent stored fresh IDs a task draws repeats from: the same
/// window as `oncelyd load`, so both peers see repeats of the same recency.
const REPEAT_WINDOW: usize = 1 << 16;

/// Latencies above this (60 s) are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Publish NATS JetStream messages with `Nats-Msg-Id` = an event ID and count the acks
/// flagged as duplicates.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server, for example nats://127.0.0.1:4222.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,

    /// The stream to (re)create and publish into. Deleted first if it exists.
    #[arg(long, default_value = "ONCELY_PEERS")]
    stream: String,

    /// The stream's subject, published to.
    #[arg(long, default_value = "oncely.peers")]
    subject: String,

    /// How long the stream remembers a `Nats-Msg-Id` (a duration: 500ms, 30s, 2m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duplicate_window: Duration,

    /// Connections, each a task with its own publishes in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,

    /// Publishes awaiting their ack per connection (1: synchronous publish).
    #[arg(long, default_value_t = 1000)]
    inflight: usize,

    /// How long to publish for; acks still due at the end still count.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,

    /// Stop after publishing this many IDs, if that comes before --duration.
    #[arg(long)]
    ids: Option<u64>,

    /// Fraction of publishes, from 0 to 1 (exclusive), that repeat an ID already stored.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,

    /// Seed of the IDs and of the choice of repeats.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |at| s.split_at(at));
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// What the run measured.
#[derive(Serialize, Default)]
struct Report {
    server_version: String,
    stream: String,
    duplicate_window_s: f64,
    concurrency: usize,
    inflight: usize,
    duplicates_requested: f64,
    seed: u64,
    id_format: &'static str,
    elapsed_s: f64,
    /// Publishes acknowledged (either flag).
    ids: u64,
    fresh_ids: u64,
    repeated_ids: u64,
    ids_per_sec: f64,
    /// Acks by the server's `duplicate` flag.
    acks_new: u64,
    acks_duplicate: u64,
    /// Fresh IDs flagged duplicate, and repeats not flagged.
    unexpected_fresh_duplicate: u64,
    unexpected_repeat_new: u64,
    /// Publishes that failed or whose ack never came.
    errors: u64,
    latency_us: Latency,
}

/// Per-task tallies, merged at the end.
struct Stats {
    ids: u64,
    fresh: u64,
    repeated: u64,
    acks_new: u64,
    acks_duplicate: u64,
    fresh_duplicate: u64,
    repeat_new: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ids: 0,
            fresh: 0,
            repeated: 0,
            acks_new: 0,
            acks_duplicate: 0,
            fresh_duplicate: 0,
            repeat_new: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant, valid histogram bounds"),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.ids += other.ids;
        self.fresh += other.fresh;
        self.repeated += other.repeated;
        self.acks_new += other.acks_new;
        self.acks_duplicate += other.acks_duplicate;
        self.fresh_duplicate += other.fresh_duplicate;
        self.repeat_new += other.repeat_new;
        self.errors += other.errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// Task `task`'s fresh ID number `n`: the very ID `oncelyd load` would send.
fn id_string(seed: u64, task: u64, n: u64) -> String {
    let mut hex = [0_u8; 32];
    id_hex(seed, task, n, &mut hex);
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// One publish awaiting its ack.
struct Pending {
    started: Instant,
    ack: PublishAckFuture,
    number: u64,
    repeat: bool,
}

/// What every task shares.
struct Plan {
    args: Args,
    /// `duplicates` as a threshold on a uniform `u64`.
    repeat_below: u64,
    deadline: Instant,
    /// IDs reserved so far, against `--ids`.
    reserved: AtomicU64,
}

impl Plan {
    /// Whether one more ID may be published.
    fn reserve(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        self.args
            .ids
            .is_none_or(|budget| self.reserved.fetch_add(1, Ordering::Relaxed) < budget)
    }
}

async fn task(plan: Arc<Plan>, index: u64) -> Result<Stats, async_nats::Error> {
    let client = async_nats::connect(&plan.args.url).await?;
    // The default cap of acks in flight per context (5,000) is above any --inflight
    // used here; the explicit one makes `publish` wait rather than fail if it were not.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(plan.args.inflight.max(1))
        .backpressure_on_inflight(true)
        .build(client);
    let seed = plan.args.seed;
    let mut rng = mix(seed ^ mix(index));
    let mut next = 0_u64;
    let mut recent: Vec<u64> = Vec::new();
    let mut recent_at = 0;
    let mut pending: VecDeque<Pending> = VecDeque::with_capacity(plan.args.inflight);
    let mut stats = Stats::new();
    let mut publishing = true;
    loop {
        // Keep the pipe full: top up to --inflight publishes before awaiting the oldest.
        while publishing && pending.len() < plan.args.inflight {
            if !plan.reserve() {
                publishing = false;
                break;
            }
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let repeat = !recent.is_empty() && mix(rng) < plan.repeat_below;
            let number = if repeat {
                rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
                // The index is below `recent.len()`, a usize.
                #[allow(clippy::cast_possible_truncation)]
                let k = (mix(rng) % recent.len() as u64) as usize;
                recent[k]
            } else {
                next += 1;
                next - 1
            };
            let id = id_string(seed, index, number);
            let started = Instant::now();
            let message = PublishMessage::build().message_id(id);
            match js.send_publish(plan.args.subject.clone(), message).await {
                Ok(ack) => pending.push_back(Pending {
                    started,
                    ack,
                    number,
                    repeat,
                }),
                Err(_) => stats.errors += 1,
            }
        }
        // The stream stores publishes in order, so acks come back in order: awaiting
        // the oldest first holds nothing back.
        let Some(p) = pending.pop_front() else { break };
        match p.ack.await {
            Ok(ack) => {
                let us = u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
                stats.ids += 1;
                if p.repeat {
                    stats.repeated += 1;
                } else {
                    stats.fresh += 1;
                }
                if ack.duplicate {
                    stats.acks_duplicate += 1;
                    if !p.repeat {
                        stats.fresh_duplicate += 1;
                    }
                } else {
                    stats.acks_new += 1;
                    if p.repeat {
                        stats.repeat_new += 1;
                    } else if recent.len() < REPEAT_WINDOW {
                        // Stored: from now on a repeat of it must be flagged.
                        recent.push(p.number);
                    } else {
                        recent[recent_at] = p.number;
                        recent_at = (recent_at + 1) % REPEAT_WINDOW;
                    }
                }
            }
            Err(_) => stats.errors += 1,
        }
    }
    Ok(stats)
}

async fn run(args: Args) -> Result<Report, async_nats::Error> {
    let client = async_nats::connect(&args.url).await?;
    let server_version = client.server_info().version;
    let js = jetstream::new(client);
    // A fresh stream each run: its dedup table starts empty, like the other peers'.
    if js.get_stream(&args.stream).await.is_ok() {
        js.delete_stream(&args.stream).await?;
    }
    js.create_stream(stream::Config {
        name: args.stream.clone(),
        subjects: vec![args.subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        duplicate_window: args.duplicate_window,
        ..Default::default()
    })
    .await?;

    // f x 2^64, computed in f64: exact enough for a fraction of IDs.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let repeat_below = (args.duplicates * 18_446_744_073_709_551_616.0) as u64;
    let started = Instant::now();
    let plan = Arc::new(Plan {
        repeat_below,
        deadline: started + args.duration,
        reserved: AtomicU64::new(0),
        args,
    });
    let tasks: Vec<_> = (0..plan.args.concurrency as u64)
        .map(|i| tokio::spawn(task(Arc::clone(&plan), i)))
        .collect();
    let mut total = Stats::new();
    for t in tasks {
        total.merge(&t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = &total.latency;
    #[allow(clippy::cast_precision_loss)]
    let ids_per_sec = total.ids as f64 / elapsed;
    let args = &plan.args;
    Ok(Report {
        server_version,
        stream: args.stream.clone(),
        duplicate_window_s: args.duplicate_window.as_secs_f64(),
        concurrency: args.concurrency,
        inflight: args.inflight,
        duplicates_requested: args.duplicates,
        seed: args.seed,
        id_format: "16 bytes as 32 lowercase hex characters, in Nats-Msg-Id",
        elapsed_s: elapsed,
        ids: total.ids,
        fresh_ids: total.fresh,
        repeated_ids: total.repeated,
        ids_per_sec,
        acks_new: total.acks_new,
        acks_duplicate: total.acks_duplicate,
        unexpected_fresh_duplicate: total.fresh_duplicate,
        unexpected_repeat_new: total.repeat_new,
        errors: total.errors,
        latency_us: Latency::from_histogram(h),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.concurrency == 0 || args.inflight == 0 {
        eprintln!("nats_dedup: --concurrency and --inflight must be at least 1");
        return ExitCode::from(2);
    }
    if !(0.0..1.0).contains(&args.duplicates) {
        eprintln!("nats_dedup: --duplicates must be at least 0 and below 1");
        return ExitCode::from(2);
    }
    // One thread, like the other peers' load generators (see the module docs).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nats_dedup: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nats_dedup: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("nats_dedup: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_characters_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for task in 0..4 {
            for n in 0..2_000 {
                let id = id_string(7, task, n);
                assert_eq!(id.len(), 32);
                assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
                assert!(seen.insert(id));
            }
        }
        assert_ne!(id_string(7, 0, 0), id_string(8, 0, 0));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
