//! The PostgreSQL store across the loss of its primary: a primary with a synchronous
//! standby, trackers marking under load through a URL naming both servers, the
//! primary killed with SIGKILL and the standby promoted. Every acknowledged `new`
//! must read `duplicate` afterwards (nothing acknowledged is lost), marking must
//! resume by itself within 15 seconds of the promotion, and no ID may be answered
//! `new` twice: a call that fails is retried with the same owner token, so a commit
//! whose answer was lost comes back replayed.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::ring_config;
use oncely::postgres::PgOptions;
use oncely::{Tracker, Verdict};
use oncely_testkit::PgCluster;

const NS: &str = "default";
const WORKERS: usize = 4;
const BATCH: usize = 20;

/// One acknowledged answer: the ID, whether it was replayed, and when.
type Acked = (String, bool, Instant);

#[test]
fn marks_survive_the_loss_of_the_primary() {
    let mut cluster = PgCluster::start();
    let url = cluster.fresh_database("failover");
    let tracker = Tracker::builder()
        .postgres(
            PgOptions::new(&url)
                .pool_size(8)
                .connect_timeout(Duration::from_secs(1)),
        )
        .default_config(ring_config(
            4,
            4,
            1_000_000,
            Duration::from_secs(3600),
            0.01,
        ))
        .open()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let failures = Arc::new(Mutex::new(0_usize));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (t, stop, acked, failures) = (
                tracker.clone(),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&failures),
            );
            thread::spawn(move || {
                for n in 0.. {
                    let ids: Vec<String> =
                        (0..BATCH).map(|i| format!("w{w}-{n:06}-{i:02}")).collect();
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
                                *failures.lock().unwrap() += 1;
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

    thread::sleep(Duration::from_millis(1_500));
    let before_kill = acked.lock().unwrap().len();
    cluster.kill_primary();
    let killed = Instant::now();
    cluster.promote_standby();
    let promoted = Instant::now();
    // Until marking has resumed for a while, or the bound.
    let deadline = promoted + Duration::from_secs(30);
    let resumed = loop {
        let first = acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, at)| *at)
            .find(|at| *at > promoted);
        if let Some(at) = first
            && Instant::now() > at + Duration::from_secs(1)
        {
            break Some(at);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let mut answers: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in &acked {
        *answers.entry(id.as_str()).or_default() += 1;
    }
    let twice = answers.values().filter(|&&n| n > 1).count();
    let ids: Vec<&str> = answers.keys().copied().collect();
    let mut lost = 0;
    for chunk in ids.chunks(1_000) {
        lost += tracker
            .check(NS, chunk)
            .unwrap()
            .iter()
            .filter(|v| **v != Verdict::Duplicate)
            .count();
    }
    let replayed = acked.iter().filter(|(_, r, _)| *r).count();
    let resumed_after = resumed.map(|at| at.duration_since(promoted));
    println!(
        "failover: {before_kill} marks acknowledged before the kill, {} in all ({replayed} \
         replayed after a lost answer), {} failed calls; promotion {:.2} s after the kill; \
         first acknowledged mark {:?} after the promotion; lost {lost}; new twice {twice}",
        acked.len(),
        failures.lock().unwrap(),
        promoted.duration_since(killed).as_secs_f64(),
        resumed_after,
    );
    assert!(before_kill > 0, "marking ran before the kill");
    assert_eq!(lost, 0, "an acknowledged mark was lost\n{}", cluster.logs());
    assert_eq!(twice, 0, "an ID was answered new twice");
    let resumed_after = resumed_after.expect("marking resumed after the promotion");
    assert!(
        resumed_after < Duration::from_secs(15),
        "marking resumed {resumed_after:?} after the promotion"
    );
}
