//! The PostgreSQL store across the loss of its primary: a primary with a synchronous
//! standby, trackers marking under load through a URL naming both servers, the
//! primary killed with SIGKILL (or frozen with SIGSTOP) and the standby promoted. Every acknowledged `new`
//! must read `duplicate` afterwards (nothing acknowledged is lost), marking must
//! resume by itself within 15 seconds of the promotion, and no ID may be answered
//! `new` twice: a call that fails is retried with the same owner token, so a commit
//! whose answer was lost comes back replayed.
//!
//! The long form, many such cycles with the old primary rejoining each time as the
//! new primary's synchronous standby (rewound with `pg_rewind`), is behind
//! `#[ignore]`:
//!
//! ```text
//! cargo test -p oncely --features postgres --test failover -- --ignored --nocapture
//! ONCELY_FAILOVER_CYCLES=3 cargo test -p oncely --features postgres --test failover -- --ignored --nocapture
//! ```
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::ring_config;
use oncely::postgres::PgOptions;
use oncely::{NamespaceConfig, Tracker, Verdict};
use oncely_testkit::PgCluster;

const NS: &str = "default";
const WORKERS: usize = 4;
const BATCH: usize = 20;
/// The promise: marking resumes this soon after the promotion.
const RESUME_BOUND: Duration = Duration::from_secs(15);

/// One acknowledged answer: the ID, whether it was replayed, and when.
type Acked = (String, bool, Instant);

/// A tracker on the cluster's URL, with a short wait for a connection so that a
/// call to a dead server fails fast and is retried.
fn tracker(url: &str, config: NamespaceConfig) -> Tracker {
    Tracker::builder()
        .postgres(
            PgOptions::new(url)
                .pool_size(8)
                .connect_timeout(Duration::from_secs(1)),
        )
        .default_config(config)
        .open()
        .unwrap()
}

/// Workers marking 20-ID batches of fresh IDs, one owner token per batch, each
/// failed call retried with the same token until it succeeds.
struct Load {
    stop: Arc<AtomicBool>,
    /// While set, workers start no new batch (a batch being retried goes on).
    paused: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failures: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(tracker: &Tracker) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(0));
        let workers = (0..WORKERS)
            .map(|w| {
                let (t, stop, paused, acked, failures) = (
                    tracker.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&paused),
                    Arc::clone(&acked),
                    Arc::clone(&failures),
                );
                thread::spawn(move || {
                    for n in 0.. {
                        while paused.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(10));
                        }
                        let ids: Vec<String> =
                            (0..BATCH).map(|i| format!("w{w}-{n:07}-{i:02}")).collect();
                        // One token per delivery attempt of this batch, reused only to
                        // retry it.
                        let owner = format!("w{w}-batch-{n}");
                        loop {
                            match t.check_and_mark(NS, &ids, Some(&owner)) {
                                Ok(verdicts) => {
                                    let now = Instant::now();
                                    let mut a = acked.lock().unwrap();
                                    for (id, v) in ids.iter().zip(verdicts) {
                                        assert!(v.is_new(), "{id}: {v:?}");
                                        a.push((id.clone(), v == Verdict::Replayed, now));
                                    }
                                    break;
                                }
                                Err(_) => {
                                    failures.fetch_add(1, Ordering::SeqCst);
                                    if stop.load(Ordering::SeqCst) {
                                        return;
                                    }
                                    thread::sleep(Duration::from_millis(50));
                                }
                            }
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            paused,
            acked,
            failures,
            workers,
        }
    }

    /// Holds the workers between batches, or lets them go on.
    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Marks acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Calls that failed so far (each was retried).
    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// The IDs of the acknowledged marks in `range` (in the order acknowledged).
    fn ids(&self, range: Range<usize>) -> Vec<String> {
        self.acked.lock().unwrap()[range]
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect()
    }

    /// When the first mark acknowledged after `since` was, once marking has gone on
    /// for a second after it; `None` when that has not happened within `bound`.
    fn resumed_after(&self, since: Instant, bound: Duration) -> Option<Instant> {
        let deadline = since + bound;
        loop {
            let first = self
                .acked
                .lock()
                .unwrap()
                .iter()
                .map(|(_, _, at)| *at)
                .find(|at| *at > since);
            if let Some(at) = first
                && Instant::now() > at + Duration::from_secs(1)
            {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the workers; everything they were answered.
    fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// How many of `ids` do not read `duplicate` now: acknowledged marks lost.
fn lost<T: AsRef<str>>(tracker: &Tracker, ids: &[T]) -> usize {
    ids.chunks(1_000)
        .map(|chunk| {
            let chunk: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            tracker
                .check(NS, &chunk)
                .unwrap()
                .iter()
                .filter(|v| **v != Verdict::Duplicate)
                .count()
        })
        .sum()
}

/// IDs answered `new` more than once (a replayed answer to a retry counts: the
/// worker records only the answer it got, once per batch).
fn answered_twice(acked: &[Acked]) -> usize {
    let mut answers: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in acked {
        *answers.entry(id.as_str()).or_default() += 1;
    }
    answers.values().filter(|&&n| n > 1).count()
}

#[test]
fn marks_survive_the_loss_of_the_primary() {
    let mut cluster = PgCluster::start();
    let url = cluster.fresh_database("failover");
    let tracker = tracker(
        &url,
        ring_config(4, 4, 1_000_000, Duration::from_secs(3600), 0.01),
    );
    let load = Load::start(&tracker);

    thread::sleep(Duration::from_millis(1_500));
    let before_kill = load.acked();
    cluster.kill_primary();
    let killed = Instant::now();
    cluster.promote_standby();
    let promoted = Instant::now();
    let resumed = load.resumed_after(promoted, Duration::from_secs(30));
    let failures = load.failures();
    let acked = load.stop();

    let twice = answered_twice(&acked);
    let ids: Vec<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
    let lost = lost(&tracker, &ids);
    let replayed = acked.iter().filter(|(_, r, _)| *r).count();
    let resumed_after = resumed.map(|at| at.duration_since(promoted));
    println!(
        "failover: {before_kill} marks acknowledged before the kill, {} in all ({replayed} \
         replayed after a lost answer), {failures} failed calls; promotion {:.2} s after the \
         kill; first acknowledged mark {:?} after the promotion; lost {lost}; new twice {twice}",
        acked.len(),
        promoted.duration_since(killed).as_secs_f64(),
        resumed_after,
    );
    assert!(before_kill > 0, "marking ran before the kill");
    assert_eq!(lost, 0, "an acknowledged mark was lost\n{}", cluster.logs());
    assert_eq!(twice, 0, "an ID was answered new twice");
    let resumed_after = resumed_after.expect("marking resumed after the promotion");
    assert!(
        resumed_after < RESUME_BOUND,
        "marking resumed {resumed_after:?} after the promotion"
    );
}

/// The primary frozen, not killed (SIGSTOP to all its processes: a hung disk, a
/// machine that stopped answering): its port still accepts connections and nothing
/// answers on them. Every phase of a call is bounded, so the tracker leaves it as
/// surely as a dead one: marking resumes on the promoted standby within the bound,
/// nothing acknowledged is lost, no ID is new twice.
#[test]
fn marks_survive_a_frozen_primary() {
    let mut cluster = PgCluster::start();
    let url = cluster.fresh_database("frozen");
    let tracker = tracker(
        &url,
        ring_config(4, 4, 1_000_000, Duration::from_secs(3600), 0.01),
    );
    let load = Load::start(&tracker);

    thread::sleep(Duration::from_millis(1_500));
    let before = load.acked();
    cluster.freeze_primary();
    let frozen = Instant::now();
    cluster.promote_standby();
    let promoted = Instant::now();
    let resumed = load.resumed_after(promoted, Duration::from_secs(40));
    let failures = load.failures();
    let acked = load.stop();

    let twice = answered_twice(&acked);
    let ids: Vec<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
    let lost = lost(&tracker, &ids);
    let resumed_after = resumed.map(|at| at.duration_since(promoted));
    println!(
        "frozen primary: {before} marks acknowledged before the freeze, {} in all, {failures} \
         failed calls; promotion {:.2} s after the freeze; first acknowledged mark {:?} after \
         the promotion; lost {lost}; new twice {twice}",
        acked.len(),
        promoted.duration_since(frozen).as_secs_f64(),
        resumed_after,
    );
    assert!(before > 0, "marking ran before the freeze");
    assert_eq!(lost, 0, "an acknowledged mark was lost\n{}", cluster.logs());
    assert_eq!(twice, 0, "an ID was answered new twice");
    let resumed_after = resumed_after.expect("marking resumed after the promotion");
    assert!(
        resumed_after < RESUME_BOUND,
        "marking resumed {resumed_after:?} after the promotion"
    );
}

/// Generations of the long form's namespace: with `CAPACITY` IDs each, it rotates
/// every `CAPACITY` marks (so rotations, with their partitions created and dropped,
/// happen between and during failovers) and remembers every mark exactly for
/// `(GENERATIONS - 1) * CAPACITY` marks, more than a run makes.
const GENERATIONS: u32 = 16;
const CAPACITY: u64 = 100_000;

#[test]
#[ignore = "long run: 10 failover cycles (ONCELY_FAILOVER_CYCLES), the old primary rejoining with pg_rewind"]
fn marks_survive_repeated_failovers() {
    let cycles: usize = std::env::var("ONCELY_FAILOVER_CYCLES")
        .ok()
        .map_or(10, |v| {
            v.parse().expect("ONCELY_FAILOVER_CYCLES is a number")
        });
    let mut cluster = PgCluster::start();
    let url = cluster.fresh_database("failover_cycles");
    let tracker = tracker(
        &url,
        ring_config(
            GENERATIONS,
            GENERATIONS,
            CAPACITY,
            Duration::from_secs(3600),
            0.01,
        ),
    );
    let remembered = usize::try_from(u64::from(GENERATIONS - 1) * CAPACITY).unwrap();
    let started = Instant::now();
    let load = Load::start(&tracker);
    // Marks acknowledged before the previous kill: checked already.
    let mut checked = 0;
    let mut resumed_worst = Duration::ZERO;
    for cycle in 1..=cycles {
        // Marking with a synchronous standby for a while.
        thread::sleep(Duration::from_millis(1_500));
        let before_kill = load.acked();
        let failures_before = load.failures();
        cluster.kill_primary();
        let killed = Instant::now();
        cluster.promote_standby();
        let promoted = Instant::now();
        let resumed = load.resumed_after(promoted, Duration::from_secs(30));
        // Every mark acknowledged in this cycle before the kill, those made while
        // the new primary had no standby included, reads duplicate on the new one.
        // The workers wait meanwhile: marks made during the check would make the
        // next cycle's check longer, and so on.
        load.pause(true);
        let lost = lost(&tracker, &load.ids(checked..before_kill));
        load.pause(false);
        let rejoining = Instant::now();
        cluster.rejoin_as_standby();
        let rejoined = rejoining.elapsed();
        let resumed_after = resumed.map(|at| at.duration_since(promoted));
        println!(
            "cycle {cycle:2}: {} marks acknowledged before the kill ({before_kill} in all), \
             lost {lost}; promotion {:.2} s after the kill; first acknowledged mark {} after \
             the promotion; {} failed calls; old primary rewound and synchronous again in \
             {:.1} s",
            before_kill - checked,
            promoted.duration_since(killed).as_secs_f64(),
            resumed_after.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.3} s", d.as_secs_f64())
            ),
            load.failures() - failures_before,
            rejoined.as_secs_f64(),
        );
        assert!(before_kill > checked, "marking ran in cycle {cycle}");
        assert!(
            before_kill < remembered,
            "{before_kill} marks: more than the ring remembers exactly ({remembered})"
        );
        assert_eq!(
            lost,
            0,
            "cycle {cycle}: an acknowledged mark was lost\n{}",
            cluster.logs()
        );
        let resumed_after = resumed_after.expect("marking resumed after the promotion");
        assert!(
            resumed_after < RESUME_BOUND,
            "cycle {cycle}: marking resumed {resumed_after:?} after the promotion"
        );
        resumed_worst = resumed_worst.max(resumed_after);
        checked = before_kill;
    }
    let acked = load.stop();
    let ids: Vec<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
    let lost = lost(&tracker, &ids);
    let twice = answered_twice(&acked);
    let replayed = acked.iter().filter(|(_, r, _)| *r).count();
    println!(
        "{cycles} failovers in {:.0} s: {} marks acknowledged ({replayed} replayed after a \
         lost answer), lost {lost}, new twice {twice}; marking resumed at worst {:.3} s after \
         a promotion",
        started.elapsed().as_secs_f64(),
        acked.len(),
        resumed_worst.as_secs_f64(),
    );
    assert!(
        acked.len() < remembered,
        "more marks than the ring remembers"
    );
    assert_eq!(lost, 0, "an acknowledged mark was lost\n{}", cluster.logs());
    assert_eq!(twice, 0, "an ID was answered new twice");
}
