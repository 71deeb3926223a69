//! `pg_failover_load`: library trackers marking under load on a PostgreSQL store
//! while someone else breaks the database, and what that cost: how long marking
//! stopped, and whether any acknowledged mark was lost. `scripts/failover-demo.sh`
//! runs it against a pg_auto_failover cluster whose primary it kills.
//!
//! `--workers` threads share one tracker on `--url` (a multi-host URL with
//! `target_session_attrs=read-write` finds the primary by itself) and mark batches
//! of fresh IDs, one owner token per batch: a call that fails is retried with the
//! same token, as a consumer retries a delivery, until it succeeds or the run ends.
//! A commit whose answer was lost then comes back `new`, replayed, never
//! `duplicate`. Once a second the tracker's store probe says which server it is on.
//!
//! At `--duration`, or once `--stop-file` exists, the workers stop, and every ID the run was answered `new` for is
//! checked: each must now read `duplicate` (else it was lost), and none may have
//! been answered `new` twice. The events in `--events` (lines of `<unix ms> <label>`,
//! written by whoever broke the database) are matched with the acknowledgements:
//! for each, the longest time without an acknowledged mark from it until the next
//! event: how long marking stopped.
//!
//! The report goes to standard output as text; the exit status is 0 when nothing
//! was lost, nothing was answered `new` twice, and marking resumed after every
//! event, else 1 (2 for a run that could not start).

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use oncely::postgres::PgOptions;
use oncely::{Tracker, Verdict};

/// Mark under load on a PostgreSQL store and report outages and losses.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The store: postgres://user@host1:port1,host2:port2/db?target_session_attrs=read-write
    #[arg(long)]
    url: String,

    /// How long to mark at most (a duration: 500ms, 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,

    /// Stop marking as soon as this file exists (checked ten times a second).
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,

    /// Marking threads, sharing one tracker.
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// IDs per call.
    #[arg(long, default_value_t = 20)]
    batch: usize,

    /// How long a call waits for a connection before it fails (and is retried).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Pause between a failed call and its retry.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    retry_pause: Duration,

    /// Events to report on, read at the end: lines of `<unix ms> <label>`.
    #[arg(long)]
    events: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |at| s.split_at(at));
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s or m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// Milliseconds since the Unix epoch: the clock the events file is written in.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the workers saw.
#[derive(Default)]
struct Seen {
    /// One entry per acknowledged batch: when, and its IDs' answers.
    acks: Vec<Ack>,
    /// Failed calls: when, and the error.
    failures: Vec<(u64, String)>,
    /// Answers other than `new` to a batch of fresh IDs.
    unexpected: Vec<String>,
}

struct Ack {
    at_ms: u64,
    ids: Vec<String>,
    replayed: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.workers == 0 || args.batch == 0 {
        eprintln!("pg_failover_load: --workers and --batch must be at least 1");
        return ExitCode::from(2);
    }
    let tracker = match Tracker::builder()
        .postgres(
            PgOptions::new(&args.url)
                .pool_size(args.workers * 2)
                .connect_timeout(args.connect_timeout),
        )
        .open()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pg_failover_load: cannot open the store: {e}");
            return ExitCode::from(2);
        }
    };
    let started_ms = unix_ms();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let hosts = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let prober = {
        let (t, stop, hosts) = (tracker.clone(), Arc::clone(&stop), Arc::clone(&hosts));
        thread::spawn(move || probe_hosts(&t, &stop, &hosts))
    };
    let workers: Vec<_> = (0..args.workers)
        .map(|w| {
            let (t, stop, seen) = (tracker.clone(), Arc::clone(&stop), Arc::clone(&seen));
            let (batch, pause) = (args.batch, args.retry_pause);
            thread::spawn(move || mark(&t, w, batch, pause, &stop, &seen))
        })
        .collect();
    let deadline = Instant::now() + args.duration;
    while Instant::now() < deadline && !args.stop_file.as_ref().is_some_and(|f| f.exists()) {
        thread::sleep(
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    let _ = prober.join();
    let ended_ms = unix_ms();

    let seen = std::mem::take(
        &mut *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let hosts = hosts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let events = args.events.as_deref().map(read_events).unwrap_or_default();
    let at = |ms: u64| ms.saturating_sub(started_ms) as f64 / 1000.0;

    let marks: usize = seen.acks.iter().map(|a| a.ids.len()).sum();
    let replayed: usize = seen.acks.iter().map(|a| a.replayed).sum();
    println!(
        "marked for {:.1} s with {} workers, {}-ID calls: {marks} marks acknowledged \
         ({replayed} replayed after a lost answer), {} failed calls",
        at(ended_ms),
        args.workers,
        args.batch,
        seen.failures.len(),
    );
    for (ms, host) in &hosts {
        println!("  at {:6.2} s the store was on {host}", at(*ms));
    }
    let mut ok = true;
    let mut acked: Vec<u64> = seen.acks.iter().map(|a| a.at_ms).collect();
    acked.sort_unstable();
    for (i, (ms, label)) in events.iter().enumerate() {
        let until = events.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
        let failed = seen
            .failures
            .iter()
            .filter(|(t, _)| t > ms && *t <= until)
            .count();
        match outage(&acked, *ms, until) {
            Some((from, to)) => println!(
                "  at {:6.2} s {label}: marking stopped for {:.2} s at most (from {:.2} s to \
                 {:.2} s); {failed} calls failed before the next event",
                at(*ms),
                (to - from) as f64 / 1000.0,
                at(from),
                at(to),
            ),
            None => {
                ok = false;
                println!(
                    "  at {:6.2} s {label}: no mark was acknowledged after it ({failed} calls \
                     failed)",
                    at(*ms)
                );
            }
        }
    }
    if let Some((from, to)) = longest_gap(&seen.acks) {
        println!(
            "  longest time without an acknowledged mark: {:.2} s (from {:.2} s to {:.2} s)",
            (to - from) as f64 / 1000.0,
            at(from),
            at(to),
        );
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, e) in &seen.failures {
        *kinds.entry(e.as_str()).or_default() += 1;
    }
    for (e, n) in &kinds {
        println!("  {n} calls failed with: {e}");
    }

    let ids: Vec<&str> = seen
        .acks
        .iter()
        .flat_map(|a| a.ids.iter().map(String::as_str))
        .collect();
    let mut answers: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *answers.entry(id).or_default() += 1;
    }
    let twice = answers.values().filter(|&&n| n > 1).count();
    let lost = match count_lost(&tracker, &ids) {
        Ok(lost) => lost,
        Err(e) => {
            println!("could not check the acknowledged marks: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "checked: {lost} of {} acknowledged marks lost, {twice} IDs answered new twice, {} \
         other answers to fresh IDs",
        ids.len(),
        seen.unexpected.len(),
    );
    for u in seen.unexpected.iter().take(5) {
        println!("  {u}");
    }
    ok &= lost == 0 && twice == 0 && seen.unexpected.is_empty() && marks > 0;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One worker: fresh batches, each retried with its owner token until it lands.
fn mark(
    t: &Tracker,
    w: usize,
    batch: usize,
    pause: Duration,
    stop: &AtomicBool,
    seen: &Mutex<Seen>,
) {
    for n in 0_u64.. {
        let ids: Vec<String> = (0..batch).map(|i| format!("w{w}-{n:08}-{i:03}")).collect();
        // One token per delivery attempt of this batch, reused only to retry it.
        let owner = format!("w{w}-batch-{n}");
        loop {
            match t.check_and_mark("default", &ids, Some(&owner)) {
                Ok(verdicts) => {
                    let at_ms = unix_ms();
                    let mut s = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut replayed = 0;
                    for (id, v) in ids.iter().zip(&verdicts) {
                        match v {
                            Verdict::New => {}
                            Verdict::Replayed => replayed += 1,
                            other => s.unexpected.push(format!("{id}: {other:?}")),
                        }
                    }
                    s.acks.push(Ack {
                        at_ms,
                        ids,
                        replayed,
                    });
                    break;
                }
                Err(e) => {
                    let at_ms = unix_ms();
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .failures
                        .push((at_ms, error_kind(&e)));
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::sleep(pause);
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// An error's text without what varies between occurrences (ports, pids), so that
/// failures group by kind.
fn error_kind(e: &oncely::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out.truncate(200);
    out
}

/// Once a second, which server the tracker is on; a change is recorded.
fn probe_hosts(t: &Tracker, stop: &AtomicBool, hosts: &Mutex<Vec<(u64, String)>>) {
    while !stop.load(Ordering::SeqCst) {
        if let Ok(probe) = t.probe_store()
            && let Some(host) = probe.host
        {
            let mut h = hosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if h.last().is_none_or(|(_, last)| *last != host) {
                h.push((unix_ms(), host));
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// The longest time without an acknowledged mark from an event at `from` until the
/// first mark acknowledged after `until` (the next event): its start and end (unix
/// ms), or `None` when no mark was acknowledged after the event. Measured as the
/// longest gap rather than the time to the next acknowledgement, because a commit
/// already on its way when the event struck may still be acknowledged after it, and
/// would hide the outage that follows. `acked` is sorted.
fn outage(acked: &[u64], from: u64, until: u64) -> Option<(u64, u64)> {
    let after = acked.partition_point(|t| *t <= from);
    let end = acked.partition_point(|t| *t <= until);
    let upto = (end + 1).min(acked.len());
    if after >= acked.len() {
        return None;
    }
    std::iter::once(from)
        .chain(acked[after..upto].iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b - a)
}

/// The longest stretch between two consecutive acknowledgements.
fn longest_gap(acks: &[Ack]) -> Option<(u64, u64)> {
    let mut times: Vec<u64> = acks.iter().map(|a| a.at_ms).collect();
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b - a)
}

/// How many of `ids` do not read `duplicate`; the store gets 30 s to answer.
fn count_lost(t: &Tracker, ids: &[&str]) -> Result<usize, oncely::Error> {
    let mut lost = 0;
    for chunk in ids.chunks(1_000) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let verdicts = loop {
            match t.check("default", chunk) {
                Ok(v) => break v,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        lost += verdicts
            .iter()
            .filter(|v| **v != Verdict::Duplicate)
            .count();
    }
    Ok(lost)
}

/// The events file: `<unix ms> <label>` per line; other lines are skipped.
fn read_events(path: &std::path::Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ms, label) = l.trim().split_once(' ')?;
            Some((ms.parse().ok()?, label.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_the_longest_gap_after_the_event() {
        // A commit in flight acknowledged 10 ms after the event, then nothing for
        // 9 s: the outage is the 9 s, not the 10 ms.
        let acked = [900, 1_000, 1_010, 10_010, 10_020, 10_030];
        assert_eq!(outage(&acked, 1_000, 15_000), Some((1_010, 10_010)));
        // Still stopped at the next event: counted up to the first mark after it.
        assert_eq!(outage(&[0, 10, 5_000, 5_010], 20, 1_000), Some((20, 5_000)));
        // No mark after the event at all.
        assert_eq!(outage(&acked, 10_030, u64::MAX), None);
    }
}
