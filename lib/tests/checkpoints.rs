//! Checkpoint preconditions (DESIGN.md, "Idempotency keys": checkpoint
//! preconditions) on every store: a write that expects the position its caller
//! read moves the checkpoint only from there, whatever else writes it, across a
//! restart, and with consumers racing for it.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::{Engine, Place, clock, small_config};
use oncely::{Error, Tracker, Transacted};

const NS: &str = "default";

/// The stored position a refused write names, or a panic for any other outcome.
#[track_caller]
fn conflict(result: Result<(), Error>) -> Option<String> {
    match result {
        Err(Error::CheckpointConflict { current, .. }) => current,
        other => panic!("a checkpoint conflict expected, got {other:?}"),
    }
}

fn stored(t: &Tracker, consumer: &str) -> Option<String> {
    t.checkpoint(NS, consumer).unwrap()
}

fn a_precondition_moves_a_checkpoint_only_from_what_it_read(engine: Engine) {
    let place = Place::new(engine);
    let c = clock();
    let t = place.open(&c, small_config(1_000));

    // Nothing stored: expecting a position is refused, and names none.
    assert_eq!(conflict(t.set_checkpoint_if(NS, "c", Some("4"), "5")), None);
    assert_eq!(stored(&t, "c"), None, "nothing changed");
    t.set_checkpoint_if(NS, "c", None, "5").unwrap();
    // Its retry finds its own position stored: success, nothing written.
    t.set_checkpoint_if(NS, "c", None, "5").unwrap();
    // Another instance that also read none is refused with what the first stored.
    let refused = t.set_checkpoint_if(NS, "c", None, "6").unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(r#"consumer "c" is at "5", not unset as expected"#),
        "{refused}"
    );
    assert_eq!(conflict(Err(refused)), Some("5".to_owned()));
    t.set_checkpoint_if(NS, "c", Some("5"), "6").unwrap();
    assert_eq!(
        conflict(t.set_checkpoint_if(NS, "c", Some("5"), "7")),
        Some("6".to_owned()),
        "a stale read is refused"
    );
    assert_eq!(stored(&t, "c").as_deref(), Some("6"));
    // Consumers are independent.
    t.set_checkpoint_if(NS, "d", None, "1").unwrap();
    assert_eq!(stored(&t, "d").as_deref(), Some("1"));

    // Every other write of the checkpoint is what the precondition compares with:
    // alone, beside a mark, in a transaction.
    t.set_checkpoint(NS, "c", "9").unwrap();
    assert_eq!(
        conflict(t.set_checkpoint_if(NS, "c", Some("6"), "10")),
        Some("9".to_owned())
    );
    t.check_and_mark_with_checkpoint(NS, &["e-1"], None, "c", "11")
        .unwrap();
    assert_eq!(
        conflict(t.set_checkpoint_if(NS, "c", Some("9"), "12")),
        Some("11".to_owned())
    );
    let applied = t
        .transact(NS, "e-2", None, |tx| tx.set_checkpoint("c", "13"))
        .unwrap();
    assert!(matches!(applied, Transacted::Applied(())));
    t.set_checkpoint_if(NS, "c", Some("13"), "14").unwrap();

    // Bad input changes nothing and says which argument is bad.
    for (expected, position, field) in [
        (Some(""), "15", "expected"),
        (Some("a\0b"), "15", "expected"),
        (Some("14"), "", "position"),
    ] {
        match t.set_checkpoint_if(NS, "c", expected, position) {
            Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{expected:?} {position:?}: {other:?}"),
        }
    }
    let long = "x".repeat(oncely::MAX_POSITION_LEN + 1);
    assert!(matches!(
        t.set_checkpoint_if(NS, "c", Some(&long), "15"),
        Err(Error::InvalidArgument {
            field: "expected",
            ..
        })
    ));
    assert!(matches!(
        t.set_checkpoint_if(NS, "bad name", Some("14"), "15"),
        Err(Error::InvalidArgument {
            field: "consumer",
            ..
        })
    ));
    assert!(matches!(
        t.set_checkpoint_if("nowhere", "c", Some("14"), "15"),
        Err(Error::UnknownNamespace(_))
    ));
    assert_eq!(stored(&t, "c").as_deref(), Some("14"));

    // After a restart the stored position is still what a precondition meets.
    drop(t);
    let t = place.open(&c, small_config(1_000));
    assert_eq!(
        conflict(t.set_checkpoint_if(NS, "c", Some("13"), "15")),
        Some("14".to_owned())
    );
    t.set_checkpoint_if(NS, "c", Some("14"), "15").unwrap();
    assert_eq!(stored(&t, "c").as_deref(), Some("15"));
}

/// Two instances of a consumer move one checkpoint over each other only if their
/// writes can land between another's read and write. Here four race from the same
/// read, round after round: exactly one wins each round, and every other is refused
/// with the winner's position.
fn consumers_racing_on_one_checkpoint_move_it_once_a_round(engine: Engine) {
    const RACERS: usize = 4;
    const ROUNDS: usize = 30;
    let place = Place::new(engine);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    let mut read: Option<String> = None;
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(RACERS));
        let outcomes: Vec<Result<(), Error>> = thread::scope(|s| {
            let racers: Vec<_> = (0..RACERS)
                .map(|i| {
                    let (t, start, read) = (t.clone(), Arc::clone(&start), read.clone());
                    s.spawn(move || {
                        start.wait();
                        t.set_checkpoint_if(NS, "c", read.as_deref(), &format!("r{round}-w{i}"))
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..RACERS).filter(|&i| outcomes[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let won = format!("r{round}-w{}", winners[0]);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            if i != winners[0] {
                assert_eq!(
                    conflict(outcome).as_deref(),
                    Some(won.as_str()),
                    "round {round}: the loser is told the winner's position"
                );
            }
        }
        assert_eq!(stored(&t, "c").as_deref(), Some(won.as_str()));
        read = Some(won);
    }
}

on_every_store!(
    a_precondition_moves_a_checkpoint_only_from_what_it_read,
    consumers_racing_on_one_checkpoint_move_it_once_a_round,
);
