//! `pg_marks`: the PostgreSQL store's single-ID marks through the library, with no
//! HTTP in between: `THREADS` threads each marking fresh IDs one at a time into the
//! namespace `peers` for 6 seconds, and the rate they reached. What the daemon's
//! single-ID rate on PostgreSQL is made of, less the HTTP layer (compare
//! `benches/peers/postgres.sh`, whose namespace this uses).
//!
//! ```text
//! pg_marks postgres://postgres@127.0.0.1:5432/bench 8
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECONDS: u64 = 6;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(threads)) = (args.next(), args.next().and_then(|t| t.parse::<u64>().ok()))
    else {
        eprintln!("usage: pg_marks URL THREADS");
        return ExitCode::FAILURE;
    };
    let tracker = match oncely::Tracker::builder()
        .postgres(oncely::postgres::PgOptions::new(url))
        .open()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let marked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let workers: Vec<_> = (0..threads)
        .map(|k| {
            let (t, marked) = (tracker.clone(), Arc::clone(&marked));
            std::thread::spawn(move || -> Result<(), oncely::Error> {
                let mut i = 0_u64;
                while Instant::now() < deadline {
                    let id = format!("pg-marks-{}-{k}-{i}", std::process::id());
                    i += 1;
                    t.check_and_mark("peers", &[id], None)?;
                    marked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        if let Ok(Err(e)) = w.join() {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "{} marks/s over {threads} threads",
        marked.load(Ordering::Relaxed) / SECONDS
    );
    ExitCode::SUCCESS
}
