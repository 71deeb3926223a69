//! Claims with leases, transactional marks and checkpoints.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{NowMs, clock, open_rocks, small_config};
use oncely::{ClaimOutcome, Durability, Error, ManualClock, Tracker, Transacted, Verdict};

fn memory(c: &ManualClock) -> Tracker {
    Tracker::builder()
        .durability(Durability::Memory)
        .clock(Arc::new(c.clone()))
        .default_config(small_config(100_000))
        .open()
        .unwrap()
}

const LEASE: Duration = Duration::from_secs(30);

#[test]
fn claims_are_exclusive_until_completed() {
    let c = clock();
    let t = memory(&c);
    let now = c.now_ms();
    let got = t.claim("default", "e1", "w1", LEASE).unwrap();
    assert_eq!(
        got,
        ClaimOutcome::Acquired {
            until: now.saturating_add(LEASE),
            replayed: false,
            taken_over: false,
        }
    );
    assert_eq!(got.as_str(), "acquired");
    let other = t.claim("default", "e1", "w2", LEASE).unwrap();
    assert_eq!(
        other,
        ClaimOutcome::InProgress {
            until: now.saturating_add(LEASE)
        }
    );
    // Plain marks and checks see the claim too.
    assert_eq!(
        t.check_and_mark("default", &["e1"], None).unwrap(),
        [Verdict::InProgress {
            until: now.saturating_add(LEASE)
        }]
    );
    assert!(matches!(
        t.check("default", &["e1"]).unwrap()[0],
        Verdict::InProgress { .. }
    ));
    // The holder claiming again renews its lease.
    c.advance(Duration::from_secs(10));
    let renewed = t.claim("default", "e1", "w1", LEASE).unwrap();
    assert_eq!(
        renewed,
        ClaimOutcome::Acquired {
            until: c.now_ms().saturating_add(LEASE),
            replayed: true,
            taken_over: false,
        }
    );
    t.complete("default", "e1", "w1").unwrap();
    t.complete("default", "e1", "w1").unwrap(); // a retried complete is fine
    assert_eq!(
        t.claim("default", "e1", "w2", LEASE).unwrap(),
        ClaimOutcome::Duplicate
    );
    assert_eq!(
        t.check_and_mark("default", &["e1"], None).unwrap(),
        [Verdict::Duplicate]
    );
}

#[test]
fn expired_leases_pass_to_the_next_claimant() {
    let c = clock();
    let t = memory(&c);
    let _ = t.claim("default", "e", "crashed", LEASE).unwrap();
    c.advance(LEASE - Duration::from_millis(1));
    assert!(matches!(
        t.claim("default", "e", "next", LEASE).unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    c.advance(Duration::from_millis(1));
    assert!(matches!(
        t.claim("default", "e", "next", LEASE).unwrap(),
        ClaimOutcome::Acquired {
            replayed: false,
            ..
        }
    ));
    // The crashed owner comes back too late: its claim was taken.
    assert!(matches!(
        t.complete("default", "e", "crashed"),
        Err(Error::Conflict(_))
    ));
    t.complete("default", "e", "next").unwrap();
    // An expired claim nobody took can still be completed by its owner.
    let _ = t.claim("default", "slow", "w", LEASE).unwrap();
    c.advance(LEASE * 2);
    t.complete("default", "slow", "w").unwrap();
    assert_eq!(t.check("default", &["slow"]).unwrap(), [Verdict::Duplicate]);
    // An expired claim does not block a plain mark.
    let _ = t.claim("default", "p", "w", LEASE).unwrap();
    c.advance(LEASE);
    assert_eq!(
        t.check_and_mark("default", &["p"], None).unwrap(),
        [Verdict::New]
    );
}

#[test]
fn wrong_owners_and_missing_claims_conflict() {
    let c = clock();
    let t = memory(&c);
    let _ = t.claim("default", "e", "w1", LEASE).unwrap();
    assert!(matches!(
        t.complete("default", "e", "w2"),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        t.release("default", "e", "w2"),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        t.complete("default", "never", "w1"),
        Err(Error::Conflict(_))
    ));
    t.release("default", "never", "w1").unwrap(); // nothing to release is fine
    t.release("default", "e", "w1").unwrap();
    t.release("default", "e", "w1").unwrap(); // a retried release is fine
    assert!(
        matches!(t.complete("default", "e", "w1"), Err(Error::Conflict(_))),
        "released"
    );
    // A released ID can be taken by the redelivery.
    assert!(matches!(
        t.claim("default", "e", "w2", LEASE).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    t.complete("default", "e", "w2").unwrap();
    assert!(
        matches!(t.release("default", "e", "w2"), Err(Error::Conflict(_))),
        "done"
    );
    assert!(
        matches!(t.complete("default", "e", "w1"), Err(Error::Conflict(_))),
        "done by another"
    );
}

#[test]
fn the_claim_owner_marking_completes_its_claim() {
    let c = clock();
    let t = memory(&c);
    let _ = t.claim("default", "e", "w1", LEASE).unwrap();
    assert_eq!(
        t.check_and_mark("default", &["e"], Some("w1")).unwrap(),
        [Verdict::New]
    );
    assert_eq!(
        t.check_and_mark("default", &["e"], Some("w1")).unwrap(),
        [Verdict::Replayed]
    );
    assert_eq!(
        t.claim("default", "e", "w2", LEASE).unwrap(),
        ClaimOutcome::Duplicate
    );
}

#[test]
fn claim_arguments_are_validated() {
    let c = clock();
    let t = memory(&c);
    assert!(matches!(
        t.claim("default", "", "w", LEASE),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        t.claim("default", "e", "", LEASE),
        Err(Error::InvalidOwner(_))
    ));
    assert!(matches!(
        t.claim("default", "e", "w", Duration::ZERO),
        Err(Error::InvalidArgument {
            field: "lease_ms",
            ..
        })
    ));
    assert!(matches!(
        t.claim(
            "default",
            "e",
            "w",
            oncely::MAX_LEASE + Duration::from_millis(1)
        ),
        Err(Error::InvalidArgument {
            field: "lease_ms",
            ..
        })
    ));
    assert!(matches!(
        t.claim("ghost", "e", "w", LEASE),
        Err(Error::UnknownNamespace(_))
    ));
    assert_eq!(t.check("default", &["e"]).unwrap(), [Verdict::New]);
}

#[test]
fn claims_survive_a_restart_until_their_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, small_config(1_000));
        let _ = t.claim("default", "held", "w1", LEASE).unwrap();
        let _ = t.claim("default", "done", "w1", LEASE).unwrap();
        t.complete("default", "done", "w1").unwrap();
        // Dropped without close, as a crash would.
    }
    let t = open_rocks(dir.path(), &c, small_config(1_000));
    assert!(matches!(
        t.claim("default", "held", "w2", LEASE).unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    assert_eq!(
        t.claim("default", "done", "w2", LEASE).unwrap(),
        ClaimOutcome::Duplicate
    );
    c.advance(LEASE);
    assert!(matches!(
        t.claim("default", "held", "w2", LEASE).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
}

#[test]
fn concurrent_workers_claim_each_id_once() {
    let c = clock();
    let dir = tempfile::tempdir().unwrap();
    let t = open_rocks(dir.path(), &c, small_config(1_000_000));
    let ids: Vec<String> = (0..10_000).map(|i| format!("job-{i}")).collect();
    let ids = Arc::new(ids);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let (t, ids, barrier) = (t.clone(), Arc::clone(&ids), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let owner = format!("worker-{w}");
                barrier.wait();
                let mut acquired = Vec::new();
                // Each worker walks the IDs from a different starting point.
                for k in 0..ids.len() {
                    let id = &ids[(k + w * 1_250) % ids.len()];
                    match t.claim("default", id, &owner, LEASE).unwrap() {
                        ClaimOutcome::Acquired {
                            replayed: false, ..
                        } => {
                            t.complete("default", id, &owner).unwrap();
                            acquired.push(id.clone());
                        }
                        ClaimOutcome::InProgress { .. } | ClaimOutcome::Duplicate => {}
                        other => panic!("{id}: {other:?}"),
                    }
                }
                acquired
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), ids.len(), "every ID acquired exactly once");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), ids.len());
    assert!(
        t.check("default", &ids)
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::Duplicate),
        "all done"
    );
}

#[test]
fn transactions_apply_once() {
    let c = clock();
    let t = memory(&c);
    let deposit = |event: &str, amount: i64| {
        t.transact("default", event, Some("consumer"), |tx| {
            let before = tx
                .get(b"balance")
                .unwrap()
                .map_or(0, |v| String::from_utf8(v).unwrap().parse::<i64>().unwrap());
            tx.put("balance", (before + amount).to_string());
            assert_eq!(
                tx.get(b"balance").unwrap(),
                Some((before + amount).to_string().into_bytes()),
                "reads see own writes"
            );
            tx.set_checkpoint("consumer", event)?;
            Ok::<i64, Error>(before + amount)
        })
    };
    assert_eq!(deposit("d1", 10).unwrap(), Transacted::Applied(10));
    assert_eq!(deposit("d2", 5).unwrap(), Transacted::Applied(15));
    assert_eq!(
        deposit("d1", 10).unwrap(),
        Transacted::Skipped(Verdict::Replayed)
    );
    assert_eq!(t.user_get(b"balance").unwrap(), Some(b"15".to_vec()));
    assert_eq!(
        t.checkpoint("default", "consumer").unwrap().as_deref(),
        Some("d2")
    );
    let _ = t.check_and_mark("default", &["d3"], None).unwrap();
    assert_eq!(
        deposit("d3", 1).unwrap(),
        Transacted::Skipped(Verdict::Duplicate)
    );
    assert_eq!(t.user_get(b"balance").unwrap(), Some(b"15".to_vec()));
}

#[test]
fn a_failed_transaction_writes_nothing_and_leaves_the_event_unmarked() {
    let c = clock();
    let t = memory(&c);
    let r: Result<Transacted<()>, Error> = t.transact("default", "e", None, |tx| {
        tx.put("k", "v");
        Err(Error::Refused("the read model said no".into()))
    });
    assert!(r.is_err());
    assert_eq!(t.user_get(b"k").unwrap(), None);
    assert_eq!(t.check("default", &["e"]).unwrap(), [Verdict::New]);
    let r = t.transact("default", "e", None, |tx| {
        tx.put("k", "v");
        tx.delete("other");
        Ok::<_, Error>(())
    });
    assert_eq!(r.unwrap(), Transacted::Applied(()));
    assert_eq!(t.user_get(b"k").unwrap(), Some(b"v".to_vec()));
    let bad = t.transact("default", "", None, |_| Ok::<_, Error>(()));
    assert!(matches!(bad, Err(Error::InvalidId { .. })));
}

#[test]
fn checkpoints_round_trip_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, small_config(1_000));
        assert_eq!(t.checkpoint("default", "c1").unwrap(), None);
        t.set_checkpoint("default", "c1", "offset-41").unwrap();
        t.set_checkpoint("default", "c1", "offset-42").unwrap();
        let v = t
            .check_and_mark_with_checkpoint("default", &["a", "b"], None, "c2", "b")
            .unwrap();
        assert_eq!(v, [Verdict::New, Verdict::New]);
        let v = t
            .check_and_mark_with_checkpoint("default", &["a"], None, "c2", "a-again")
            .unwrap();
        assert_eq!(v, [Verdict::Duplicate]);
        assert!(matches!(
            t.set_checkpoint("default", "bad name", "x"),
            Err(Error::InvalidArgument {
                field: "consumer",
                ..
            })
        ));
        assert!(matches!(
            t.set_checkpoint("default", "c1", ""),
            Err(Error::InvalidArgument {
                field: "position",
                ..
            })
        ));
        assert!(matches!(
            t.set_checkpoint("default", "c1", &"x".repeat(1025)),
            Err(Error::InvalidArgument {
                field: "position",
                ..
            })
        ));
        assert!(t.set_checkpoint("default", "c1", &"x".repeat(1024)).is_ok());
        t.set_checkpoint("default", "c1", "offset-42").unwrap();
        assert!(matches!(
            t.checkpoint("ghost", "c1"),
            Err(Error::UnknownNamespace(_))
        ));
    }
    let t = open_rocks(dir.path(), &c, small_config(1_000));
    assert_eq!(
        t.checkpoint("default", "c1").unwrap().as_deref(),
        Some("offset-42")
    );
    assert_eq!(
        t.checkpoint("default", "c2").unwrap().as_deref(),
        Some("a-again")
    );
    let _ = t.configure_namespace("other", small_config(10)).unwrap();
    assert_eq!(
        t.checkpoint("other", "c1").unwrap(),
        None,
        "checkpoints are per namespace"
    );
    t.set_checkpoint("other", "c1", "x").unwrap();
    t.delete_namespace("other").unwrap();
    let _ = t.configure_namespace("other", small_config(10)).unwrap();
    assert_eq!(
        t.checkpoint("other", "c1").unwrap(),
        None,
        "deleted with the namespace"
    );
}
