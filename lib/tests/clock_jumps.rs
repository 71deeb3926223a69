//! Wall-clock steps must never shorten the remembering guarantee.
//!
//! A generation's age is counted in time a tracker had the store open, on its clock:
//! downtime and a wall clock stepped forward or back between two runs (an NTP
//! correction, an operator fixing the date, a VM restored on another host) neither
//! seal a generation early nor keep it open for the size of the step. Within one run
//! the production clock is monotonic; a manual clock set back only delays sealing.
//!
//! Every ring here keeps an exact table in every generation, so a remembered ID
//! answers exactly `Duplicate` and a forgotten one exactly `New`.

mod common;

use std::time::Duration;

use common::{NowMs, clock, open_faulty, open_memory, open_rocks, ring_config, scratch_dir};
use oncely::{ManualClock, NamespaceConfig, Timestamp, Tracker, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NS: &str = "default";
const GENERATIONS: u32 = 3;
const SPAN: Duration = Duration::from_secs(10);
/// Far more than `GENERATIONS x SPAN`: a step this size would, if counted as age,
/// seal the open generation at once and drop the oldest.
const STEP: Duration = Duration::from_secs(10 * 60);

/// Time-based sealing only: 3 generations of 10 s, all exact. An ID is remembered for
/// at least 20 s of running time.
fn config() -> NamespaceConfig {
    ring_config(GENERATIONS, GENERATIONS, 1_000_000, SPAN, 1e-6)
}

fn gens(t: &Tracker) -> Vec<u64> {
    t.namespace_info(NS)
        .unwrap()
        .generations
        .iter()
        .map(|g| g.id)
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fills the ring up to its third generation and marks "a" so that it is due to be
/// forgotten as late as possible under the guarantee:
///
/// * t = 9.999 s: "a" into generation 1 (opened at 0);
/// * t = 10 s: generation 1 seals; "b" into generation 2;
/// * t = 20 s: generation 2 seals; "c" into generation 3;
/// * t = 29 s: "d" into generation 3.
///
/// At 29 s "a" was marked 19.001 s ago, inside the 20 s guarantee, and generation 3
/// has been open for 9 s: one more second of running time seals it, which drops
/// generation 1 and with it "a" (then 20.001 s old, outside the guarantee).
fn fill(t: &Tracker, c: &ManualClock) {
    c.advance(ms(9_999));
    assert_eq!(t.check_and_mark(NS, &["a"], None).unwrap(), [Verdict::New]);
    c.advance(ms(1));
    assert_eq!(t.check_and_mark(NS, &["b"], None).unwrap(), [Verdict::New]);
    c.advance(SPAN);
    assert_eq!(t.check_and_mark(NS, &["c"], None).unwrap(), [Verdict::New]);
    c.advance(ms(9_000));
    assert_eq!(t.check_and_mark(NS, &["d"], None).unwrap(), [Verdict::New]);
    assert_eq!(gens(t), [3, 2, 1]);
}

fn all_duplicate(t: &Tracker, ids: &[&str]) {
    let got = t.check(NS, ids).unwrap();
    assert!(
        got.iter().all(|v| *v == Verdict::Duplicate),
        "{ids:?} must all be remembered: {got:?}"
    );
}

/// After the restart: nothing sealed merely because the clock moved, and generation 3
/// seals after exactly its remaining second of running time.
fn seals_after_remaining_running_time(t: &Tracker, c: &ManualClock, remaining: Duration) {
    all_duplicate(t, &["a", "b", "c", "d"]);
    t.tick().unwrap();
    assert_eq!(gens(t), [3, 2, 1], "the step alone sealed a generation");

    c.advance(remaining - ms(1));
    t.tick().unwrap();
    assert_eq!(gens(t), [3, 2, 1], "sealed before its span of running time");
    all_duplicate(t, &["a", "b", "c", "d"]);

    c.advance(ms(1));
    t.tick().unwrap();
    assert_eq!(
        gens(t),
        [4, 3, 2],
        "generation 3 seals once its span of running time is over"
    );
    assert_eq!(
        t.check(NS, &["a"]).unwrap(),
        [Verdict::New],
        "generation 1 left the ring"
    );
    all_duplicate(t, &["b", "c", "d"]);
}

fn restart_after_step(close: bool, forward: bool) {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let t = open_rocks(dir.path(), &c, config());
    fill(&t, &c);
    if close {
        t.close().unwrap();
    }
    drop(t);
    let now = c.now_ms();
    c.set(if forward {
        now.saturating_add(STEP)
    } else {
        Timestamp::from_millis(now.as_millis() - STEP.as_millis() as u64)
    });
    let t = open_rocks(dir.path(), &c, config());
    seals_after_remaining_running_time(&t, &c, Duration::from_secs(1));
}

#[test]
fn a_forward_step_across_a_clean_restart_shortens_nothing() {
    restart_after_step(true, true);
}

#[test]
fn a_forward_step_across_a_restart_without_close_shortens_nothing() {
    restart_after_step(false, true);
}

#[test]
fn a_backward_step_across_a_clean_restart_neither_seals_early_nor_stalls() {
    restart_after_step(true, false);
}

#[test]
fn a_backward_step_across_a_restart_without_close_neither_seals_early_nor_stalls() {
    restart_after_step(false, false);
}

/// A crash loses the clock's last heartbeat (here: every write fails from the moment
/// the process went idle). The time since the last persisted heartbeat is then not
/// counted: the open generation stays open that much longer, never shorter.
#[test]
fn a_lost_heartbeat_only_lengthens_memory() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let (t, faults) = open_faulty(dir.path(), &c, config());
    fill(&t, &c);
    // Idle for 5 s; the process then dies without writing anything more.
    c.advance(Duration::from_secs(5));
    faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    drop(t);
    c.set(c.now_ms().saturating_add(STEP));
    let t = open_rocks(dir.path(), &c, config());
    // The last heartbeat went with the marking of "d", at 29 s: generation 3 is 9 s
    // old, not 14 s.
    seals_after_remaining_running_time(&t, &c, Duration::from_secs(1));
}

/// Within one run a clock set back only delays sealing: nothing seals early, and the
/// guarantee is kept.
#[test]
fn a_backward_step_within_a_run_seals_nothing_early() {
    for durable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let t = if durable {
            open_rocks(dir.path(), &c, config())
        } else {
            open_memory(&c, config())
        };
        fill(&t, &c);
        let now = c.now_ms();
        c.set(Timestamp::from_millis(
            now.as_millis() - STEP.as_millis() as u64,
        ));
        t.tick().unwrap();
        assert_eq!(gens(&t), [3, 2, 1], "a backward step sealed a generation");
        all_duplicate(&t, &["a", "b", "c", "d"]);
        // A further second of running time would have sealed generation 3 without
        // the step; with it, the generation just stays open longer.
        c.advance(Duration::from_secs(1));
        t.tick().unwrap();
        assert_eq!(gens(&t), [3, 2, 1]);
        all_duplicate(&t, &["a", "b", "c", "d"]);
        assert_eq!(t.check_and_mark(NS, &["e"], None).unwrap(), [Verdict::New]);
        all_duplicate(&t, &["a", "b", "c", "d", "e"]);
    }
}

/// Many restarts, each with the wall clock stepped by minutes forward or back, some
/// clean and some not, while IDs are marked at random intervals. Measured in running
/// time (what the clock advanced while a tracker was open), every ID is remembered
/// for at least `(generations - 1) x span`, and forgotten once every generation that
/// could hold it must have sealed: generations stay open for their span of running
/// time, no longer (plus the granularity of the accesses that seal them).
#[test]
fn running_time_governs_forgetting_across_stepped_restarts() {
    // Opens RocksDB some fifty times: in memory where possible.
    let dir = scratch_dir();
    let c = clock();
    let mut rng = StdRng::seed_from_u64(0xC10C_4000);
    let guarantee = SPAN * (GENERATIONS - 1);
    let max_step = SPAN / 2;
    // Every generation seals at the first access at least a span after it opened;
    // accesses are at most `max_step` apart.
    let forgotten_by = (SPAN + max_step) * GENERATIONS;
    let mut t = Some(open_rocks(dir.path(), &c, config()));
    let mut running = Duration::ZERO;
    // (ID, running time when marked)
    let mut marked: Vec<(String, Duration)> = Vec::new();
    let mut restarts = 0;
    for step in 0..400 {
        let d = ms(rng.random_range(0..=max_step.as_millis() as u64));
        c.advance(d);
        running += d;
        let tracker = t.as_ref().unwrap();
        let id = format!("id-{step:04}");
        assert_eq!(
            tracker.check_and_mark(NS, &[&id], None).unwrap(),
            [Verdict::New]
        );
        marked.push((id, running));
        for (id, at) in &marked {
            let age = running - *at;
            let got = tracker.check(NS, &[id]).unwrap()[0];
            if age < guarantee {
                assert_eq!(
                    got,
                    Verdict::Duplicate,
                    "{id} forgotten after {age:?} of running time (step {step}, {restarts} restarts)"
                );
            } else if age >= forgotten_by {
                assert_eq!(
                    got,
                    Verdict::New,
                    "{id} still remembered after {age:?} of running time (step {step})"
                );
            }
        }
        marked.retain(|(_, at)| running - *at < forgotten_by + SPAN);
        if rng.random_ratio(1, 8) {
            let tracker = t.take().unwrap();
            if rng.random_bool(0.5) {
                tracker.close().unwrap();
            }
            drop(tracker);
            let minutes = Duration::from_secs(60 * rng.random_range(1..=30));
            let now = c.now_ms().as_millis();
            c.set(if rng.random_bool(0.5) {
                Timestamp::from_millis(now + minutes.as_millis() as u64)
            } else {
                Timestamp::from_millis(now - minutes.as_millis() as u64)
            });
            t = Some(open_rocks(dir.path(), &c, config()));
            restarts += 1;
        }
    }
    assert!(restarts > 20, "the run restarted often: {restarts}");
}
