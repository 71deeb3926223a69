//! The promises at the boundaries (DESIGN.md, "Promises at the boundaries"): the
//! verdicts must hold where rotation, reconfiguration, failure and restart meet
//! marks, claims and filters, not only on the happy path. Each test drives the public
//! API through one such meeting point.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use common::{Engine, Place};
use common::{
    NowMs, WriteHook, clock, injected, marks_id, open_faulty, open_hooked, open_rocks, ring_config,
    scratch_dir,
};
use oncely::store::Op;
use oncely::{ClaimOutcome, Error, NamespaceConfig, Timestamp, Tracker, Transacted, Verdict};

const NS: &str = "default";
const HOUR: Duration = Duration::from_secs(3600);

/// 4 generations of `capacity` IDs or an hour, the newest `exact` with exact tables,
/// 1% false positives across the namespace.
fn config(capacity: u64, exact: u32) -> NamespaceConfig {
    ring_config(4, exact, capacity, HOUR, 0.01)
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:07}")).collect()
}

/// Marks every ID (a few may meet a Bloom-only generation's false positive).
fn mark_all(t: &Tracker, ids: &[String]) {
    for chunk in ids.chunks(1_000) {
        let verdicts = t.check_and_mark(NS, chunk, None).unwrap();
        assert!(verdicts.iter().all(|v| !matches!(v, Verdict::Duplicate)));
    }
}

/// The share of `n` never-seen IDs that a check does not answer `new`.
fn false_positive_rate(t: &Tracker, n: usize) -> f64 {
    let fresh = ids("never-seen", n);
    let mut hits = 0;
    for chunk in fresh.chunks(1_000) {
        hits += t
            .check(NS, chunk)
            .unwrap()
            .iter()
            .filter(|v| **v != Verdict::New)
            .count();
    }
    hits as f64 / n as f64
}

fn generation_count(t: &Tracker) -> usize {
    t.namespace_info(NS).unwrap().generations.len()
}

fn open_ids(t: &Tracker) -> u64 {
    t.namespace_info(NS).unwrap().generations[0].ids
}

// 1. Reconfiguration never lets a filter hold more IDs than it was sized for.

fn raising_the_capacity_never_overfills_the_open_filter(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, config(1_000, 1));
    mark_all(&t, &ids("early", 10));
    let bigger = config(10_000, 1);
    assert_eq!(
        t.configure_namespace(NS, bigger).unwrap(),
        oncely::Configured::Updated
    );
    mark_all(&t, &ids("fill", 10_000));
    // Every generation that holds IDs turns Bloom-only.
    t.rotate_namespace(NS).unwrap();
    let info = t.namespace_info(NS).unwrap();
    for g in &info.generations {
        assert!(
            g.ids <= g.capacity,
            "generation {} holds {} IDs in a filter sized for {}",
            g.id,
            g.ids,
            g.capacity
        );
    }
    let fp = false_positive_rate(&t, 20_000);
    assert!(
        fp <= 0.01,
        "fresh IDs answered as seen at {fp}, over fp_rate"
    );
}

#[test]
fn a_filter_rebuilt_after_a_crash_is_sized_for_its_table() {
    let dir = scratch_dir();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, config(10_000, 1));
        mark_all(&t, &ids("fill", 5_000));
        let _ = t.configure_namespace(NS, config(1_000, 1)).unwrap();
        // No close: the open generation's filter is rebuilt from its table.
    }
    let t = open_rocks(dir.path(), &c, config(1_000, 1));
    t.rotate_namespace(NS).unwrap();
    let fp = false_positive_rate(&t, 20_000);
    assert!(
        fp <= 0.01,
        "fresh IDs answered as seen at {fp}, over fp_rate"
    );
    assert_eq!(
        t.check(NS, &ids("fill", 5_000)[..100]).unwrap(),
        vec![Verdict::ProbableDuplicate; 100],
        "the rebuilt filter still holds every mark"
    );
}

// 2. A claim is exclusive for its whole lease, whatever the rotations.

fn a_claim_outlives_the_generations_it_started_in(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, ring_config(2, 2, 1_000, HOUR, 0.01));
    assert!(matches!(
        t.claim(NS, "job", "w1", HOUR).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    for _ in 0..3 {
        t.rotate_namespace(NS).unwrap();
    }
    assert!(
        matches!(
            t.claim(NS, "job", "w2", HOUR).unwrap(),
            ClaimOutcome::InProgress { .. }
        ),
        "the lease is live: nobody else may take the claim"
    );
    t.complete(NS, "job", "w1").unwrap();
    assert_eq!(t.check(NS, &["job"]).unwrap(), [Verdict::Duplicate]);
}

fn a_claim_taken_over_or_renewed_stays_exclusive_across_rotations(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, ring_config(2, 2, 1_000, HOUR, 0.01));
    let short = Duration::from_secs(1);
    let _ = t.claim(NS, "job", "dead", short).unwrap();
    c.advance(Duration::from_secs(2));
    assert!(matches!(
        t.claim(NS, "job", "next", Duration::from_secs(60)).unwrap(),
        ClaimOutcome::Acquired {
            taken_over: true,
            ..
        }
    ));
    // The holder renews its lease every 50 s while rotations go by.
    for _ in 0..5 {
        c.advance(Duration::from_secs(50));
        t.rotate_namespace(NS).unwrap();
        assert!(matches!(
            t.claim(NS, "job", "next", Duration::from_secs(60)).unwrap(),
            ClaimOutcome::Acquired { replayed: true, .. }
        ));
        assert!(
            matches!(
                t.claim(NS, "job", "third", HOUR).unwrap(),
                ClaimOutcome::InProgress { .. }
            ),
            "renewed leases stay exclusive"
        );
    }
    t.complete(NS, "job", "next").unwrap();
    assert_eq!(t.check(NS, &["job"]).unwrap(), [Verdict::Duplicate]);
}

// 3. Given back means given back, also once the generation turned Bloom-only.

fn a_released_claim_is_new_once_its_generation_is_bloom_only(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, config(1_000, 1));
    let _ = t.claim(NS, "job", "w1", HOUR).unwrap();
    t.release(NS, "job", "w1").unwrap();
    t.rotate_namespace(NS).unwrap();
    assert!(matches!(
        t.claim(NS, "job", "w2", HOUR).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    t.release(NS, "job", "w2").unwrap();
    assert_eq!(
        t.check_and_mark(NS, &["job"], None).unwrap(),
        [Verdict::New]
    );
}

fn an_expired_claim_is_new_once_its_generation_is_bloom_only(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, config(1_000, 1));
    let _ = t.claim(NS, "job", "dead", Duration::from_secs(1)).unwrap();
    c.advance(Duration::from_secs(2));
    t.rotate_namespace(NS).unwrap();
    assert!(matches!(
        t.claim(NS, "job", "next", HOUR).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
}

fn a_failed_transaction_is_new_once_its_generation_is_bloom_only(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, config(1_000, 1));
    let failed: Result<Transacted<()>, Error> = t.transact(NS, "event", None, |_| {
        Err(Error::Refused("the effect failed".into()))
    });
    assert!(failed.is_err());
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        t.check_and_mark(NS, &["event"], None).unwrap(),
        [Verdict::New]
    );
}

#[test]
fn a_failed_write_is_new_once_its_generation_is_bloom_only() {
    let dir = scratch_dir();
    let c = clock();
    let (t, fault) = open_faulty(dir.path(), &c, config(1_000, 1));
    fault
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(t.check_and_mark(NS, &["event"], None).is_err());
    fault
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        t.check_and_mark(NS, &["event"], None).unwrap(),
        [Verdict::New]
    );
}

// 4. Errors are exact.

/// Lines up a race in the store: the first write that marks `x` waits until
/// released; what writes of `x` and writes of checkpoints then do is up to the test.
struct Gate {
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        })
    }

    /// Called from the store: announces the first arrival, and holds it until
    /// released. Returns whether this was the first arrival.
    fn pass(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        let first = !st.0;
        st.0 = true;
        self.changed.notify_all();
        while first && !st.1 {
            st = self.changed.wait(st).unwrap();
        }
        first
    }

    fn wait_arrival(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.0 {
            st = self.changed.wait(st).unwrap();
        }
    }

    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

fn puts_checkpoint(batch: &oncely::store::Batch) -> bool {
    batch
        .ops()
        .any(|op| matches!(op, Op::PutMeta { key, .. } if key.starts_with(b"ckpt:")))
}

#[test]
fn an_error_never_hides_marks_that_landed() {
    let dir = scratch_dir();
    let c = clock();
    let gate = Gate::new();
    let hook: WriteHook = {
        let gate = Arc::clone(&gate);
        // Every write that marks "x" fails, the first only once released.
        Arc::new(move |batch| {
            if marks_id(batch, b"x") {
                let _ = gate.pass();
                return Err(injected());
            }
            Ok(())
        })
    };
    let t = open_hooked(dir.path(), &c, config(1_000, 2), hook);
    let first = {
        let t = t.clone();
        thread::spawn(move || t.check_and_mark(NS, &["x"], None))
    };
    gate.wait_arrival();
    let second = {
        let t = t.clone();
        thread::spawn(move || t.check_and_mark(NS, &["y", "x"], None))
    };
    // Time for the second call to meet "x" in flight and wait for it.
    thread::sleep(Duration::from_millis(300));
    gate.release();
    assert!(first.join().unwrap().is_err());
    let second = second.join().unwrap();
    assert!(second.is_err(), "every write of x fails: {second:?}");
    assert_eq!(
        t.check_and_mark(NS, &["y"], None).unwrap(),
        [Verdict::New],
        "the failed call acknowledged nothing, so nothing of it may read duplicate"
    );
}

#[test]
fn a_mark_with_a_checkpoint_stores_both_or_neither() {
    let dir = scratch_dir();
    let c = clock();
    let gate = Gate::new();
    let hook: WriteHook = {
        let gate = Arc::clone(&gate);
        // The first write of "x" is held, then lands; every checkpoint write fails.
        Arc::new(move |batch| {
            if marks_id(batch, b"x") {
                let _ = gate.pass();
            }
            if puts_checkpoint(batch) {
                return Err(injected());
            }
            Ok(())
        })
    };
    let t = open_hooked(dir.path(), &c, config(1_000, 2), hook);
    let first = {
        let t = t.clone();
        thread::spawn(move || t.check_and_mark(NS, &["x"], None))
    };
    gate.wait_arrival();
    let second = {
        let t = t.clone();
        thread::spawn(move || {
            t.check_and_mark_with_checkpoint(NS, &["y", "x"], None, "consumer", "pos-7")
        })
    };
    thread::sleep(Duration::from_millis(300));
    gate.release();
    assert_eq!(first.join().unwrap().unwrap(), [Verdict::New]);
    assert!(second.join().unwrap().is_err());
    assert_eq!(t.checkpoint(NS, "consumer").unwrap(), None);
    assert_eq!(
        t.check(NS, &["y"]).unwrap(),
        [Verdict::New],
        "neither the checkpoint nor the mark was stored"
    );
}

// 5. Only attempts that land count towards the capacity.

fn attempts_that_never_landed_do_not_count_towards_capacity(engine: Engine) {
    let c = clock();
    let place = Place::new(engine);
    let t = place.open(&c, config(5, 2));
    for _ in 0..20 {
        let _ = t.claim(NS, "job", "w1", HOUR).unwrap();
        t.release(NS, "job", "w1").unwrap();
    }
    for i in 0..20 {
        let failed: Result<Transacted<()>, Error> = t.transact(NS, format!("tx-{i}"), None, |_| {
            Err(Error::Refused("the effect failed".into()))
        });
        assert!(failed.is_err());
    }
    assert_eq!(
        generation_count(&t),
        1,
        "nothing sealed the open generation"
    );
    assert_eq!(open_ids(&t), 0);
    // Completed claims are marks, and count.
    let _ = t.claim(NS, "done", "w1", HOUR).unwrap();
    t.complete(NS, "done", "w1").unwrap();
    assert_eq!(open_ids(&t), 1);
}

// 6. Leases count the time the store was open.

#[test]
fn a_wall_clock_ahead_at_restart_does_not_end_a_live_lease() {
    let dir = scratch_dir();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, config(1_000, 2));
        let _ = t.claim(NS, "job", "w1", HOUR).unwrap();
        t.close().unwrap();
    }
    c.advance(2 * HOUR);
    let t = open_rocks(dir.path(), &c, config(1_000, 2));
    assert_eq!(
        t.claim(NS, "job", "w2", HOUR).unwrap(),
        ClaimOutcome::InProgress {
            until: c.now_ms().saturating_add(HOUR)
        },
        "the lease had an hour of running time left"
    );
}

#[test]
fn a_wall_clock_behind_at_restart_does_not_stretch_an_expired_lease() {
    let dir = scratch_dir();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, config(1_000, 2));
        let _ = t.claim(NS, "job", "w1", Duration::from_secs(60)).unwrap();
        c.advance(Duration::from_secs(120));
        t.close().unwrap();
    }
    c.set(Timestamp::from_millis(
        c.now_ms().as_millis() - HOUR.as_millis() as u64,
    ));
    let t = open_rocks(dir.path(), &c, config(1_000, 2));
    assert!(matches!(
        t.claim(NS, "job", "w2", HOUR).unwrap(),
        ClaimOutcome::Acquired {
            taken_over: true,
            ..
        }
    ));
}

#[test]
fn a_lease_keeps_its_remaining_time_across_a_crash() {
    let dir = scratch_dir();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, config(1_000, 2));
        let _ = t.claim(NS, "job", "w1", HOUR).unwrap();
        c.advance(Duration::from_secs(600));
        t.tick().unwrap();
        // Dropped without close.
    }
    c.advance(5 * HOUR);
    let t = open_rocks(dir.path(), &c, config(1_000, 2));
    match t.claim(NS, "job", "w2", HOUR).unwrap() {
        ClaimOutcome::InProgress { until } => {
            let left = until.saturating_since(c.now_ms());
            assert!(
                left <= Duration::from_secs(3000) && left >= Duration::from_secs(2990),
                "50 minutes of the lease were left, not {left:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

// 7. A namespace is never re-created over an existing one.

fn configuring_after_close_is_refused_and_forgets_nothing(engine: Engine) {
    let place = Place::new(engine);
    let c = clock();
    {
        let t = place.open(&c, config(1_000, 2));
        let _ = t.check_and_mark(NS, &["kept"], None).unwrap();
        t.close().unwrap();
        assert!(matches!(
            t.configure_namespace(NS, config(2_000, 2)),
            Err(Error::Closed)
        ));
        assert!(matches!(
            t.configure_namespace("other", config(2_000, 2)),
            Err(Error::Closed)
        ));
    }
    let t = place.open(&c, config(1_000, 2));
    assert_eq!(t.check(NS, &["kept"]).unwrap(), [Verdict::Duplicate]);
    assert_eq!(t.namespaces(), ["default"]);
}

// 8. Start-up never refuses a store the previous run opened and used correctly.

#[test]
fn a_snapshot_rebuilt_at_start_up_is_saved_again() {
    let dir = scratch_dir();
    let c = clock();
    let snapshot = dir.path().join("snapshots").join("1").join("1.bloom");
    {
        let t = open_rocks(dir.path(), &c, config(1_000, 2));
        let _ = t.check_and_mark(NS, &["a"], None).unwrap();
        t.rotate_namespace(NS).unwrap();
        t.close().unwrap();
    }
    assert!(
        snapshot.is_file(),
        "{} holds generation 1",
        snapshot.display()
    );
    std::fs::remove_file(&snapshot).unwrap();
    {
        // Generation 1 is still exact: its filter is rebuilt from its table.
        let t = open_rocks(dir.path(), &c, config(1_000, 2));
        assert_eq!(t.check(NS, &["a"]).unwrap(), [Verdict::Duplicate]);
        // Generation 1 turns Bloom-only.
        t.rotate_namespace(NS).unwrap();
        t.close().unwrap();
    }
    let t = open_rocks(dir.path(), &c, config(1_000, 2));
    assert_eq!(t.check(NS, &["a"]).unwrap(), [Verdict::ProbableDuplicate]);
}

on_every_store!(
    raising_the_capacity_never_overfills_the_open_filter,
    a_claim_outlives_the_generations_it_started_in,
    a_claim_taken_over_or_renewed_stays_exclusive_across_rotations,
    a_released_claim_is_new_once_its_generation_is_bloom_only,
    an_expired_claim_is_new_once_its_generation_is_bloom_only,
    a_failed_transaction_is_new_once_its_generation_is_bloom_only,
    attempts_that_never_landed_do_not_count_towards_capacity,
    configuring_after_close_is_refused_and_forgets_nothing,
);
