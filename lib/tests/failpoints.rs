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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Exact-table lookups run outside the namespace lock. A rotation in between may
/// drop the very table a lookup was meant for; the IDs looked up are then decided
/// afresh, so an ID marked before reads `probable_duplicate` (its generation is
/// Bloom-only now), never a second `new`; the rest of the batch is unaffected.
#[test]
fn a_rotation_before_a_lookup_outside_the_lock_has_it_decided_afresh() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let one_exact = NamespaceConfig::builder()
        .generations(4)
        .exact_generations(1)
        .generation_capacity(1_000)
        .fp_rate(1e-9)
        .build()
        .unwrap();
    let t = open_rocks(dir.path(), &clock(), one_exact);
    let old = ids("old", 10);
    assert!(all(
        &t.check_and_mark("default", &old, None).unwrap(),
        Verdict::New
    ));

    let rotated = Arc::new(AtomicBool::new(false));
    let (t2, once) = (t.clone(), Arc::clone(&rotated));
    fail::cfg_callback("mark.before-lookup", move || {
        if !once.swap(true, Ordering::SeqCst) {
            t2.rotate_namespace("default").unwrap();
        }
    })
    .unwrap();
    let mut batch = old.clone();
    batch.extend(ids("fresh", 10));
    let verdicts = t.check_and_mark("default", &batch, None).unwrap();
    fail::remove("mark.before-lookup");

    assert!(
        rotated.load(Ordering::SeqCst),
        "the lookup ran outside the lock"
    );
    assert!(
        all(&verdicts[..10], Verdict::ProbableDuplicate),
        "{verdicts:?}"
    );
    assert!(all(&verdicts[10..], Verdict::New), "{verdicts:?}");
    assert!(all(
        &t.check_and_mark("default", &batch[10..], None).unwrap(),
        Verdict::Duplicate
    ));
    scenario.teardown();
}

/// A fault while IDs are reserved for a lookup releases them: the next call decides
/// them instead of waiting forever, and nothing of the failed call was marked.
#[test]
fn a_fault_before_a_lookup_releases_the_reserved_ids() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = open_rocks(dir.path(), &clock(), config());
    let old = ids("old", 2);
    assert!(all(
        &t.check_and_mark("default", &old, None).unwrap(),
        Verdict::New
    ));
    fail::cfg("mark.before-lookup", "return").unwrap();
    let batch = [old[0].clone(), "fresh".to_owned()];
    let err = t.check_and_mark("default", &batch, None).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    fail::remove("mark.before-lookup");
    assert_eq!(
        t.check_and_mark("default", &batch, None).unwrap(),
        [Verdict::Duplicate, Verdict::New]
    );
    scenario.teardown();
}

/// A tracker in `dir` in which "old" is marked: a later batch holding "old" and
/// fresh IDs looks "old" up outside the namespace lock, past `mark.before-lookup`.
fn with_old(dir: &std::path::Path) -> oncely::Tracker {
    let t = open_rocks(dir, &clock(), config());
    assert_eq!(
        t.check_and_mark("default", &["old"], None).unwrap(),
        [Verdict::New]
    );
    t
}

/// While a pass looks up some IDs outside the lock, the others it may mark stay
/// reserved: another caller marking one of them meanwhile waits for the pass, and
/// exactly one of the two gets `new`.
#[test]
fn ids_reserved_during_a_lookup_outside_the_lock_get_one_new() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = with_old(dir.path());

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let done_rx = std::sync::Mutex::new(done_rx);
    let other = Arc::new(std::sync::Mutex::new(None));
    let (t2, slot) = (t.clone(), Arc::clone(&other));
    let once = Arc::new(AtomicBool::new(false));
    fail::cfg_callback("mark.before-lookup", move || {
        if once.swap(true, Ordering::SeqCst) {
            return;
        }
        let (t3, done_tx) = (t2.clone(), done_tx.clone());
        *slot.lock().unwrap() = Some(std::thread::spawn(move || {
            let v = t3.check_and_mark("default", &["fresh"], None).unwrap();
            let _ = done_tx.send(());
            v
        }));
        // Give the other caller every chance to get in first: it cannot, as it
        // waits for this pass; were "fresh" not reserved, it would be done here.
        let _ = done_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_millis(300));
    })
    .unwrap();
    let mine = t
        .check_and_mark("default", &["old", "fresh"], None)
        .unwrap();
    fail::remove("mark.before-lookup");
    let theirs = other.lock().unwrap().take().unwrap().join().unwrap();

    assert_eq!(mine, [Verdict::Duplicate, Verdict::New]);
    assert_eq!(theirs, [Verdict::Duplicate]);
    scenario.teardown();
}

/// `try_check_and_mark` gives up, marking nothing, on an ID that another call
/// holds in flight, where `check_and_mark` would wait for it.
#[test]
fn try_check_and_mark_gives_up_on_an_id_in_flight() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = with_old(dir.path());

    // The other call stops between deciding and looking "old" up, holding "fresh".
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (entered_tx, go_rx) = (
        std::sync::Mutex::new(entered_tx),
        std::sync::Mutex::new(go_rx),
    );
    fail::cfg_callback("mark.before-lookup", move || {
        let _ = entered_tx.lock().unwrap().send(());
        let _ = go_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(10));
    })
    .unwrap();
    let t2 = t.clone();
    let other = std::thread::spawn(move || t2.check_and_mark("default", &["old", "fresh"], None));
    entered_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();

    assert_eq!(
        t.try_check_and_mark("default", &["fresh"], None).unwrap(),
        None
    );
    fail::remove("mark.before-lookup");
    go_tx.send(()).unwrap();
    assert_eq!(
        other.join().unwrap().unwrap(),
        [Verdict::Duplicate, Verdict::New],
        "the call that gave up marked nothing"
    );
    assert_eq!(
        t.try_check_and_mark("default", &["fresh"], None).unwrap(),
        Some(vec![Verdict::Duplicate])
    );
    scenario.teardown();
}

/// A check-and-mark that waited for a claim's release finds the ID gone and marks
/// it `new`: waiting on a claim, its completion or its release means deciding
/// afresh from the record, not concluding `duplicate`.
#[test]
fn a_mark_waiting_on_a_release_gets_new() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = open_rocks(dir.path(), &clock(), config());
    let lease = std::time::Duration::from_secs(60);
    let _ = t.claim("default", "x", "worker", lease).unwrap();

    // The release stops just before its write, with "x" in flight; a mark of "x"
    // starts meanwhile and waits for it.
    let waiter = Arc::new(std::sync::Mutex::new(None));
    let (t2, slot) = (t.clone(), Arc::clone(&waiter));
    let once = Arc::new(AtomicBool::new(false));
    fail::cfg_callback("store.before-write", move || {
        if once.swap(true, Ordering::SeqCst) {
            return;
        }
        let t3 = t2.clone();
        *slot.lock().unwrap() = Some(std::thread::spawn(move || {
            t3.check_and_mark("default", &["x"], None).unwrap()
        }));
        std::thread::sleep(std::time::Duration::from_millis(200));
    })
    .unwrap();
    t.release("default", "x", "worker").unwrap();
    fail::remove("store.before-write");
    let verdicts = waiter.lock().unwrap().take().unwrap().join().unwrap();

    assert_eq!(verdicts, [Verdict::New], "nobody else marked x");
    assert_eq!(
        t.check_and_mark("default", &["x"], None).unwrap(),
        [Verdict::Duplicate]
    );
    scenario.teardown();
}

/// `try_check_and_mark` gives up on the namespace's lock when it is held for long,
/// here by a rotation in progress, instead of waiting for it.
#[test]
fn try_check_and_mark_gives_up_on_a_lock_held_by_a_rotation() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let t = open_rocks(dir.path(), &clock(), config());
    let tried = Arc::new(std::sync::Mutex::new(None));
    let (t2, slot) = (t.clone(), Arc::clone(&tried));
    fail::cfg_callback("rotation.before-drop", move || {
        let t3 = t2.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(t3.try_check_and_mark("default", &["y"], None).unwrap());
        });
        // A call that waited for the lock would still be waiting: the rotation
        // holds it until this callback returns.
        *slot.lock().unwrap() = Some(rx.recv_timeout(std::time::Duration::from_secs(5)).ok());
    })
    .unwrap();
    t.rotate_namespace("default").unwrap();
    fail::remove("rotation.before-drop");

    assert_eq!(
        tried.lock().unwrap().take(),
        Some(Some(None)),
        "answered at once, giving up"
    );
    assert_eq!(t.check("default", &["y"]).unwrap(), [Verdict::New]);
    scenario.teardown();
}
