//! Forget (DESIGN.md, "Idempotency keys": forget) on every store: a forgotten ID
//! answers new to the next caller, in its exact generation and once that
//! generation is Bloom-only, across restarts; what cannot be forgotten (nothing
//! exact, a live claim, a repeat) answers `false` and changes nothing; forgets
//! racing marks of the same ID never let two marks answer new for one forget.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{Engine, Place, clock, ring_config};
use oncely::{ClaimOutcome, Error, NamespaceConfig, Tracker, Verdict};

const NS: &str = "default";

/// Four generations of ten IDs, two of them exact, at a rate so low that a fresh
/// ID never meets a false positive in these tests.
fn config() -> NamespaceConfig {
    ring_config(4, 2, 10, Duration::from_secs(3_600), 1e-9)
}

fn one(t: &Tracker, id: &str) -> Verdict {
    t.check(NS, &[id]).unwrap()[0]
}

/// Whether generation 1 is still the open one.
fn first_is_open(t: &Tracker) -> bool {
    let info = t.namespace_info(NS).unwrap();
    info.generations
        .iter()
        .any(|g| g.id == 1 && g.sealed_at.is_none())
}

fn forgets_exact_marks_and_nothing_else(engine: Engine) {
    let place = Place::new(engine);
    let c = clock();
    let t = place.open(&c, config());
    let marked = t.check_and_mark(NS, &["a", "b", "by-owner"], None).unwrap();
    assert!(marked.iter().all(|v| v.is_new()));
    assert_eq!(
        t.check_and_mark(NS, &["owned"], Some("delivery-1"))
            .unwrap(),
        [Verdict::New]
    );
    assert!(matches!(
        t.claim(NS, "held", "worker", Duration::from_secs(60))
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    assert!(matches!(
        t.claim(NS, "completed", "worker", Duration::from_secs(60))
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    t.complete(NS, "completed", "worker").unwrap();

    // A repeat is forgotten once; unseen and claimed IDs are not forgotten.
    let got = t
        .forget(NS, &["a", "a", "never-seen", "held", "owned", "completed"])
        .unwrap();
    assert_eq!(got, [true, false, false, false, true, true]);
    assert_eq!(one(&t, "a"), Verdict::New);
    assert_eq!(one(&t, "b"), Verdict::Duplicate, "a neighbour stays marked");
    assert!(
        matches!(one(&t, "held"), Verdict::InProgress { .. }),
        "a live claim is left alone"
    );
    // A retried forget finds nothing left to forget.
    assert_eq!(t.forget(NS, &["a", "owned"]).unwrap(), [false, false]);

    // Given back: the next mark is new, also for the owner that marked it (its
    // original answer is gone with the mark), and the next claim is acquired.
    assert_eq!(
        t.check_and_mark(NS, &["owned"], Some("delivery-1"))
            .unwrap(),
        [Verdict::New],
        "not replayed: the mark it would replay was forgotten"
    );
    assert!(matches!(
        t.claim(NS, "completed", "other", Duration::from_secs(60))
            .unwrap(),
        ClaimOutcome::Acquired {
            taken_over: false,
            ..
        }
    ));
    assert_eq!(t.check_and_mark(NS, &["a"], None).unwrap(), [Verdict::New]);
    assert_eq!(
        t.check_and_mark(NS, &["a"], None).unwrap(),
        [Verdict::Duplicate]
    );

    // An expired claim without a mark has nothing exact to forget either.
    c.advance(Duration::from_secs(61));
    assert_eq!(t.forget(NS, &["held"]).unwrap(), [false]);

    // Bad input changes nothing.
    assert!(matches!(
        t.forget(NS, &["b", ""]),
        Err(Error::InvalidId { index: 1, .. })
    ));
    assert!(matches!(
        t.forget("nowhere", &["b"]),
        Err(Error::UnknownNamespace(_))
    ));
    assert_eq!(one(&t, "b"), Verdict::Duplicate);
    assert_eq!(t.forget(NS, &[] as &[&str]).unwrap(), Vec::<bool>::new());

    // Forgotten stays forgotten across a restart; marks stay marked.
    t.forget(NS, &["b"]).unwrap();
    drop(t);
    let t = place.open(&c, config());
    assert_eq!(one(&t, "b"), Verdict::New);
    assert_eq!(one(&t, "by-owner"), Verdict::Duplicate);
}

/// Marks `g1-0..g1-4` into generation 1 (half full, so that nothing but a
/// rotation seals it), and forgets `g1-3` from it while it is sealed and exact
/// (`sealed_first`) or while it is still open.
fn forget_in_generation_one(t: &Tracker, sealed_first: bool) {
    let ids: Vec<String> = (0..5).map(|i| format!("g1-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    if sealed_first {
        t.rotate_namespace(NS).unwrap();
    }
    assert_eq!(t.forget(NS, &["g1-3"]).unwrap(), [true]);
    assert_eq!(first_is_open(t), !sealed_first);
    if !sealed_first {
        t.rotate_namespace(NS).unwrap();
    }
    assert_eq!(one(t, "g1-3"), Verdict::New, "ruled out by the exact table");
}

/// Rotates until generation 1 is Bloom-only, and checks that the forgotten ID
/// answers new there while its neighbours answer probable duplicates.
fn bloom_only_forgets_it_too(t: &Tracker) {
    t.rotate_namespace(NS).unwrap();
    t.tick().unwrap();
    let info = t.namespace_info(NS).unwrap();
    let g1 = info.generations.iter().find(|g| g.id == 1).unwrap();
    assert!(!g1.exact, "generation 1 is Bloom-only now: {info:?}");
    assert_eq!(one(t, "g1-3"), Verdict::New, "forgotten, Bloom-only or not");
    for i in [0, 2, 4] {
        assert_eq!(one(t, &format!("g1-{i}")), Verdict::ProbableDuplicate);
    }
    assert_eq!(
        t.check_and_mark(NS, &["g1-3"], None).unwrap(),
        [Verdict::New]
    );
}

fn a_forgotten_id_stays_forgotten_once_its_generation_is_bloom_only(engine: Engine) {
    for sealed_first in [true, false] {
        let place = Place::new(engine);
        let c = clock();
        let t = place.open(&c, config());
        forget_in_generation_one(&t, sealed_first);
        bloom_only_forgets_it_too(&t);
    }
}

/// The forget's promise survives a restart between the forget and the
/// generation's turn to Bloom-only: a forget in the open generation, then a clean
/// close (whose snapshot of that generation still holds the forgotten ID's bits)
/// or a drop without close; and a forget in a sealed generation, then either.
fn a_forget_survives_a_restart_before_its_generation_turns_bloom_only(engine: Engine) {
    for sealed_first in [false, true] {
        for close in [true, false] {
            let place = Place::new(engine);
            let c = clock();
            let t = place.open(&c, config());
            let ids: Vec<String> = (0..5).map(|i| format!("g1-{i}")).collect();
            let _ = t.check_and_mark(NS, &ids, None).unwrap();
            if sealed_first {
                t.rotate_namespace(NS).unwrap();
            }
            assert_eq!(t.forget(NS, &["g1-3"]).unwrap(), [true]);
            assert_eq!(first_is_open(&t), !sealed_first);
            if close {
                t.close().unwrap();
            }
            drop(t);
            let t = place.open(&c, config());
            assert_eq!(one(&t, "g1-3"), Verdict::New, "{sealed_first} {close}");
            if !sealed_first {
                t.rotate_namespace(NS).unwrap();
            }
            bloom_only_forgets_it_too(&t);
        }
    }
}

/// Marks and forgets of one ID from several threads at once. The ID's state goes
/// marked, forgotten, marked, ...: every `new` but the first follows a forget that
/// answered `true`, so the counts differ by whether the ID ends marked.
fn forgets_racing_marks_give_each_mark_back_once(engine: Engine) {
    const THREADS: usize = 4;
    const ROUNDS: usize = 40;
    let place = Place::new(engine);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 2, 1_000_000, Duration::from_secs(3_600), 1e-9),
    );
    let start = Arc::new(Barrier::new(THREADS));
    let (news, forgets) = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                let (t, start) = (t.clone(), Arc::clone(&start));
                s.spawn(move || {
                    start.wait();
                    let (mut news, mut forgets) = (0_usize, 0_usize);
                    for round in 0..ROUNDS {
                        if (w + round) % 2 == 0 {
                            let v = t.check_and_mark(NS, &["contested"], None).unwrap();
                            news += usize::from(v[0].is_new());
                        } else {
                            let f = t.forget(NS, &["contested"]).unwrap();
                            forgets += usize::from(f[0]);
                        }
                    }
                    (news, forgets)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |(n, f), (wn, wf)| (n + wn, f + wf))
    });
    let marked = usize::from(one(&t, "contested") == Verdict::Duplicate);
    assert!(
        news > 1 && forgets > 0,
        "the race happened: {news} {forgets}"
    );
    assert_eq!(
        news,
        forgets + marked,
        "{news} marks answered new for {forgets} forgets (marked at the end: {marked})"
    );
}

on_every_store!(
    forgets_exact_marks_and_nothing_else,
    a_forgotten_id_stays_forgotten_once_its_generation_is_bloom_only,
    a_forget_survives_a_restart_before_its_generation_turns_bloom_only,
    forgets_racing_marks_give_each_mark_back_once,
);

/// A forget whose write fails forgets nothing and says so; once writes succeed
/// again, the same forget works. (Faults are injected into the embedded store.)
#[test]
fn a_forget_that_fails_to_write_forgets_nothing() {
    let dir = common::scratch_dir();
    let c = clock();
    let (t, fault) = common::open_faulty(dir.path(), &c, config());
    let _ = t.check_and_mark(NS, &["kept", "other"], None).unwrap();
    fault
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(t.forget(NS, &["kept", "other"]).is_err());
    fault
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(one(&t, "kept"), Verdict::Duplicate, "nothing was forgotten");
    assert_eq!(t.forget(NS, &["kept"]).unwrap(), [true]);
    assert_eq!(one(&t, "kept"), Verdict::New);
    assert_eq!(one(&t, "other"), Verdict::Duplicate);
    drop(t);
    let t = common::open_rocks(dir.path(), &c, config());
    assert_eq!(one(&t, "kept"), Verdict::New);
    assert_eq!(one(&t, "other"), Verdict::Duplicate);
}
