//! Fault injection on the mark path: at every named point, no acknowledged mark is
//! lost, and no ID that was never acknowledged reads `duplicate` for the owner that
//! retries it.
//!
//! Run: `cargo test -p oncely --features failpoints --test failpoints`
//!
//! Each case: marks some IDs (acknowledged), arms one point so that the next call
//! fails there, then either carries on in the same process once the fault clears,
//! or "crashes" (drops the tracker without closing it, so nothing after the point
//! runs) and reopens. Either way every acknowledged ID reads `duplicate`, the failed
//! batch retried by its owner reads `new` (replayed, if its write had in fact
//! landed), another owner then reads `duplicate`, and IDs never sent read `new`.

#![cfg(feature = "failpoints")]

mod common;

use common::{clock, open_rocks};
use oncely::{NamespaceConfig, Verdict};

/// Four exact generations of 4 IDs: rotations come every other call.
fn config() -> NamespaceConfig {
    NamespaceConfig::builder()
        .generations(4)
        .exact_generations(4)
        .generation_capacity(4)
        .fp_rate(1e-9)
        .build()
        .unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn all(v: &[Verdict], want: Verdict) -> bool {
    v.iter().all(|x| *x == want)
}

/// Runs one fault at `point`, triggered by marking `failing` after `acked`: once
/// recovering in place, once crashing at the point.
fn case(point: &str, acked: &[String], failing: &[String]) {
    let scenario = fail::FailScenario::setup();
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let t = open_rocks(dir.path(), &c, config());
        assert!(
            all(
                &t.check_and_mark("default", acked, None).unwrap(),
                Verdict::New
            ),
            "{point}"
        );

        fail::cfg(point, "return").unwrap();
        let err = t
            .check_and_mark("default", failing, Some("retrier"))
            .expect_err(point);
        assert!(err.to_string().contains("injected fault"), "{point}: {err}");
        fail::remove(point);

        let t = if crash {
            // Nothing after the point ran; the process dies with its memory.
            drop(t);
            open_rocks(dir.path(), &c, config())
        } else {
            t
        };
        assert!(
            all(&t.check("default", acked).unwrap(), Verdict::Duplicate),
            "{point}"
        );
        assert!(
            all(&t.check("default", &ids("never", 5)).unwrap(), Verdict::New),
            "{point}"
        );
        let retried = t
            .check_and_mark("default", failing, Some("retrier"))
            .unwrap();
        assert!(
            retried.iter().all(|v| v.is_new()),
            "{point} (crash: {crash}): the owner's retry is its own new, never a duplicate: {retried:?}"
        );
        assert!(
            all(
                &t.check_and_mark("default", failing, Some("other")).unwrap(),
                Verdict::Duplicate
            ),
            "{point}"
        );
    }
    scenario.teardown();
}

#[test]
fn after_the_filter_update() {
    case("mark.after-filter", &ids("a", 3), &ids("f", 3));
}

#[test]
fn before_the_write() {
    case("store.before-write", &ids("a", 3), &ids("f", 3));
}

#[test]
fn after_the_write() {
    // The write landed but the caller saw an error: its retry must be `new`
    // (replayed), which is what owner tokens are for.
    case("store.after-write", &ids("a", 3), &ids("f", 3));
}

#[test]
fn mid_rotation_after_the_snapshot() {
    // Four acknowledged IDs fill the open generation; the next call must rotate.
    case("rotation.after-snapshot", &ids("a", 4), &ids("f", 3));
}

#[test]
fn mid_snapshot_before_its_rename() {
    case("snapshot.before-rename", &ids("a", 4), &ids("f", 3));
}

#[test]
fn mid_generation_drop() {
    // Sixteen IDs fill all four generations: the next rotation drops the oldest,
    // whose IDs are then forgotten by design; check the three newest generations.
    let acked = ids("a", 16);
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let t = open_rocks(dir.path(), &c, config());
    for chunk in acked.chunks(4) {
        assert!(all(
            &t.check_and_mark("default", chunk, None).unwrap(),
            Verdict::New
        ));
    }
    fail::cfg("rotation.before-drop", "return").unwrap();
    let failing = ids("f", 3);
    assert!(
        t.check_and_mark("default", &failing, Some("retrier"))
            .is_err()
    );
    fail::remove("rotation.before-drop");
    drop(t);
    let t = open_rocks(dir.path(), &c, config());
    assert!(all(
        &t.check("default", &acked[4..]).unwrap(),
        Verdict::Duplicate
    ));
    let again = t
        .check_and_mark("default", &failing, Some("retrier"))
        .unwrap();
    assert!(again.iter().all(|v| v.is_new()), "{again:?}");
    // The dropped generation's snapshot, left behind by the fault, was tidied on
    // start-up.
    let snapshots = std::fs::read_dir(dir.path().join("snapshots/1"))
        .unwrap()
        .count();
    assert!(snapshots <= 4, "{snapshots} snapshot files for a ring of 4");
    scenario.teardown();
}

#[test]
fn a_panic_mid_mark_does_not_wedge_the_namespace() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = open_rocks(dir.path(), &clock(), config());
    fail::cfg("mark.after-filter", "panic").unwrap();
    let t2 = t.clone();
    let panicked =
        std::thread::spawn(move || t2.check_and_mark("default", &["x", "y"], None)).join();
    assert!(panicked.is_err(), "the failpoint panics the marking thread");
    fail::remove("mark.after-filter");
    // The unwinding pass settled its flight: this call decides instead of waiting
    // forever for a write that will never come.
    assert_eq!(
        t.check_and_mark("default", &["x", "y"], None).unwrap(),
        [Verdict::New, Verdict::New]
    );
    scenario.teardown();
}
