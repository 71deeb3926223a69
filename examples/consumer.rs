//! A consumer fed at least once, made effectively-once with Oncely.
//!
//! A simulated broker delivers 2,000 events, redelivering about 20% of them, and the
//! consumer crashes at random points: after claiming, after computing an effect,
//! after committing. Each incarnation:
//!
//! 1. resumes from its checkpoint, inclusively (at-least-once: it may see the event
//!    at the checkpoint again, but never misses one);
//! 2. claims each event, so that no other worker processes it at the same time; a
//!    claim left by a crashed incarnation blocks until its lease runs out;
//! 3. applies the event's effect (a balance change) and completes the claim in one
//!    transaction, together with the new checkpoint.
//!
//! The owner of a claim is one delivery of one event, not the consumer: each delivery
//! draws its own token. Were it the consumer's name, a redelivery of an event whose
//! claim that consumer still holds would come back `Acquired { replayed: true }`,
//! and the event would be processed twice.
//!
//! At the end it checks that every event's effect happened exactly once.
//!
//! Run: `cargo run -p oncely-examples --example consumer`

use std::sync::Arc;
use std::time::Duration;

use oncely::{ClaimOutcome, Clock, ManualClock, Timestamp, Tracker, Transacted};
use oncely_examples::{Broker, Crash, Crasher, Event};

const NS: &str = "default";
const CONSUMER: &str = "ledger";
const LEASE: Duration = Duration::from_secs(30);

/// Why an incarnation stopped.
enum Stop {
    Crashed(Crash),
    Failed(oncely::Error),
}

impl From<Crash> for Stop {
    fn from(c: Crash) -> Self {
        Self::Crashed(c)
    }
}

impl From<oncely::Error> for Stop {
    fn from(e: oncely::Error) -> Self {
        Self::Failed(e)
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let mut broker = Broker::new(2_000, 0.2, 7);
    let mut crasher = Crasher::new(0.003, 25, 11);
    let mut incarnation = 0;
    loop {
        incarnation += 1;
        let tracker = Tracker::builder()
            .path(dir.path())
            .clock(Arc::new(clock.clone()))
            .open()
            .expect("the store opens");
        match run(&tracker, &clock, &mut broker, &mut crasher, incarnation) {
            Ok(()) => {
                verify(&tracker, &broker);
                tracker.close().expect("a clean shutdown");
                println!(
                    "consumer: {} events, {incarnation} incarnations, {} crashes: every effect exactly once",
                    broker.events().len(),
                    crasher.crashes
                );
                return;
            }
            // The process "dies": the tracker is dropped without close, as kill -9
            // would leave it. Everything acknowledged is in the write-ahead log.
            Err(Stop::Crashed(Crash(point))) => {
                println!("incarnation {incarnation} crashed {point}");
            }
            Err(Stop::Failed(e)) => panic!("incarnation {incarnation} failed: {e}"),
        }
    }
}

fn run(
    tracker: &Tracker,
    clock: &ManualClock,
    broker: &mut Broker,
    crasher: &mut Crasher,
    incarnation: u32,
) -> Result<(), Stop> {
    // Resume at the checkpoint itself: the inclusive lower bound.
    let from = tracker
        .checkpoint(NS, CONSUMER)?
        .map_or(0, |p| p.parse::<u64>().expect("positions are numbers"));
    let mut done_up_to = from;
    for (delivery, event) in broker.deliver_from(from).into_iter().enumerate() {
        // This delivery's owner token (unique: incarnation and delivery number).
        let owner = format!("delivery-{incarnation}-{delivery}");
        crasher.point("before claiming")?;
        match claim(tracker, clock, &event, &owner)? {
            Claimed::Yes => {}
            Claimed::AlreadyDone => {
                if event.position > done_up_to {
                    tracker.set_checkpoint(NS, CONSUMER, &event.position.to_string())?;
                    done_up_to = event.position;
                }
                continue;
            }
        }
        crasher.point("after claiming")?;
        let key = format!("balance:{}", event.account);
        crasher.point("after computing the effect")?;
        let advance = event.position > done_up_to;
        let outcome = tracker.transact(NS, &event.id, Some(&owner), |tx| {
            let balance = read_i64(tx.get(key.as_bytes())?);
            tx.put(key.as_bytes(), (balance + event.amount).to_string());
            let applied = format!("applied:{}", event.id);
            let times = read_i64(tx.get(applied.as_bytes())?);
            tx.put(applied, (times + 1).to_string());
            if advance {
                tx.set_checkpoint(CONSUMER, &event.position.to_string())?;
            }
            Ok::<_, oncely::Error>(())
        })?;
        assert!(
            matches!(outcome, Transacted::Applied(())),
            "we held the claim, so the transaction must apply: {outcome:?}"
        );
        if advance {
            done_up_to = event.position;
        }
        crasher.point("after committing")?;
    }
    Ok(())
}

enum Claimed {
    Yes,
    AlreadyDone,
}

/// Claims an event, waiting out a claim a crashed incarnation left behind.
fn claim(
    tracker: &Tracker,
    clock: &ManualClock,
    event: &Event,
    owner: &str,
) -> Result<Claimed, Stop> {
    loop {
        match tracker.claim(NS, &event.id, owner, LEASE)? {
            ClaimOutcome::Acquired { .. } => return Ok(Claimed::Yes),
            ClaimOutcome::Duplicate | ClaimOutcome::ProbableDuplicate => {
                return Ok(Claimed::AlreadyDone);
            }
            ClaimOutcome::InProgress { until } => {
                // In production: move on and let the broker redeliver. Here we wait
                // for the dead incarnation's lease to end, on the simulated clock.
                let now = clock.now();
                clock.advance(until.saturating_since(now) + Duration::from_millis(1));
            }
        }
    }
}

fn read_i64(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |b| {
        String::from_utf8(b)
            .expect("utf-8")
            .parse()
            .expect("a number")
    })
}

fn verify(tracker: &Tracker, broker: &Broker) {
    let mut expected = std::collections::BTreeMap::new();
    for e in broker.events() {
        *expected.entry(e.account.clone()).or_insert(0_i64) += e.amount;
        let times = read_i64(
            tracker
                .user_get(format!("applied:{}", e.id).as_bytes())
                .unwrap(),
        );
        assert_eq!(times, 1, "event {} applied {times} times", e.id);
    }
    for (account, sum) in expected {
        let got = read_i64(
            tracker
                .user_get(format!("balance:{account}").as_bytes())
                .unwrap(),
        );
        assert_eq!(got, sum, "balance of {account}");
    }
}
