//! `pg_insert`: the raw PostgreSQL baseline of `benches/peers/postgres.sh`. The same
//! IDs `oncelyd load` sends, in the same batches over the same number of
//! connections, written straight into a plain keyed table:
//!
//! ```sql
//! CREATE TABLE raw_ids (id bytea PRIMARY KEY);
//! INSERT INTO raw_ids SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING;  -- one batch
//! ```
//!
//! Each batch is one statement, its own transaction (autocommit): what a program with
//! no dedup authority would do, and the floor under what Oncely's PostgreSQL store
//! can cost, since every mark it makes is such an insert into its open generation.
//! The statement is prepared once per connection. IDs are those of `oncelyd load`
//! (32 lowercase hex characters of a bijective mix of task, number and seed), stored
//! as their 32 bytes, as Oncely stores them.
//!
//! The table is dropped and created anew at the start. The result is one JSON object
//! on standard output: IDs per second, batch latency percentiles in microseconds, and
//! how many IDs the server reported inserted.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use oncelyd::load::{Latency, id_hex};
use serde::Serialize;
use tokio::time::Instant;
use tokio_postgres::NoTls;

/// Latencies above this (60 s) are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Insert batches of IDs into a plain keyed PostgreSQL table with `INSERT ... ON
/// CONFLICT DO NOTHING`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The database, for example postgres://postgres@127.0.0.1:5432/bench.
    #[arg(long)]
    url: String,

    /// The table to (re)create and insert into.
    #[arg(long, default_value = "raw_ids")]
    table: String,

    /// IDs per statement.
    #[arg(long, default_value_t = 1000)]
    batch: usize,

    /// Connections, each with one statement in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,

    /// How long to insert for, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Seed of the IDs (`oncelyd load --seed`).
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Serialize)]
struct Report {
    batch: usize,
    concurrency: usize,
    elapsed_s: f64,
    statements: u64,
    ids: u64,
    inserted: u64,
    ids_per_sec: f64,
    /// Per statement, in microseconds.
    latency_us: Latency,
}

struct Stats {
    statements: u64,
    ids: u64,
    inserted: u64,
    latency: Histogram<u64>,
}

async fn task(args: Arc<Args>, index: u64, deadline: Instant) -> Result<Stats, String> {
    let (client, conn) = tokio_postgres::connect(&args.url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let statement = client
        .prepare(&format!(
            "INSERT INTO {} SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING",
            args.table
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut stats = Stats {
        statements: 0,
        ids: 0,
        inserted: 0,
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| e.to_string())?,
    };
    let mut next = 0_u64;
    let mut hex = [0_u8; 32];
    while Instant::now() < deadline {
        let ids: Vec<Vec<u8>> = (0..args.batch)
            .map(|_| {
                id_hex(args.seed, index, next, &mut hex);
                next += 1;
                hex.to_vec()
            })
            .collect();
        let started = Instant::now();
        let inserted = client
            .execute(&statement, &[&ids])
            .await
            .map_err(|e| e.to_string())?;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
        stats.statements += 1;
        stats.ids += ids.len() as u64;
        stats.inserted += inserted;
    }
    drop(client);
    let _ = conn.await;
    Ok(stats)
}

async fn run(args: Args) -> Result<Report, String> {
    let (client, conn) = tokio_postgres::connect(&args.url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id bytea PRIMARY KEY);",
            t = args.table
        ))
        .await
        .map_err(|e| e.to_string())?;
    drop(client);
    let _ = conn.await;

    let args = Arc::new(args);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = (0..args.concurrency as u64)
        .map(|i| tokio::spawn(task(Arc::clone(&args), i, deadline)))
        .collect();
    let mut total = Stats {
        statements: 0,
        ids: 0,
        inserted: 0,
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| e.to_string())?,
    };
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        total.statements += s.statements;
        total.ids += s.ids;
        total.inserted += s.inserted;
        total.latency.add(&s.latency).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Counts as rates: exact far beyond any count here.
    #[allow(clippy::cast_precision_loss)]
    let ids_per_sec = total.ids as f64 / elapsed;
    Ok(Report {
        batch: args.batch,
        concurrency: args.concurrency,
        elapsed_s: elapsed,
        statements: total.statements,
        ids: total.ids,
        inserted: total.inserted,
        ids_per_sec,
        latency_us: Latency::from_histogram(&total.latency),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread, as `oncelyd load` uses: the load generators take the same share
    // of the machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
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
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
