//! A read model kept exact under duplicate deliveries and crashes.
//!
//! The read model is a balance per account, stored beside the marks in the same
//! RocksDB. Each event is applied with `Tracker::transact`: the balance update and the
//! event's mark are one atomic write, so an event is applied exactly once however
//! often it is delivered, and a crash between attempts loses nothing and doubles
//! nothing. About a third of deliveries are duplicates; the consumer "crashes" (drops
//! everything without closing) at random points and restarts from scratch, with no
//! checkpoint: it simply sees the whole log again.
//!
//! Run: `cargo run -p oncely-examples --example read_model`

use std::collections::BTreeMap;

use oncely::{Tracker, Transacted, Verdict};
use oncely_examples::{Broker, Crash, Crasher};

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut broker = Broker::new(3_000, 0.35, 21);
    let mut crasher = Crasher::new(0.0005, 8, 5);
    let (mut applied, mut skipped) = (0_u64, 0_u64);
    let mut restarts = 0;
    loop {
        let tracker = Tracker::builder()
            .path(dir.path())
            .open()
            .expect("the store opens");
        match apply_all(
            &tracker,
            &mut broker,
            &mut crasher,
            &mut applied,
            &mut skipped,
        ) {
            Ok(()) => {
                check(&tracker, &broker);
                println!(
                    "read_model: {} events, {applied} applied, {skipped} duplicates skipped, {restarts} crashes: balances exact",
                    broker.events().len()
                );
                return;
            }
            Err(Crash(point)) => {
                restarts += 1;
                println!("crashed {point}; restarting");
            }
        }
    }
}

fn apply_all(
    tracker: &Tracker,
    broker: &mut Broker,
    crasher: &mut Crasher,
    applied: &mut u64,
    skipped: &mut u64,
) -> Result<(), Crash> {
    for event in broker.deliver_from(0) {
        crasher.point("before applying")?;
        let key = format!("balance:{}", event.account);
        let outcome = tracker
            .transact("default", &event.id, None, |tx| {
                let balance = tx.get(key.as_bytes())?.map_or(0, |v| {
                    String::from_utf8_lossy(&v)
                        .parse::<i64>()
                        .expect("a number")
                });
                tx.put(key.as_bytes(), (balance + event.amount).to_string());
                Ok::<_, oncely::Error>(())
            })
            .expect("the store works");
        match outcome {
            Transacted::Applied(()) => *applied += 1,
            Transacted::Skipped(Verdict::Duplicate) => *skipped += 1,
            Transacted::Skipped(other) => panic!("unexpected verdict {other:?}"),
        }
        crasher.point("after applying")?;
    }
    Ok(())
}

fn check(tracker: &Tracker, broker: &Broker) {
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for e in broker.events() {
        *expected.entry(&e.account).or_default() += e.amount;
    }
    for (account, sum) in expected {
        let got = tracker
            .user_get(format!("balance:{account}").as_bytes())
            .expect("readable")
            .map_or(0, |v| {
                String::from_utf8_lossy(&v)
                    .parse::<i64>()
                    .expect("a number")
            });
        assert_eq!(got, sum, "balance of {account}");
    }
}
