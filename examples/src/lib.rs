//! Shared pieces of the examples: a simulated at-least-once broker, a crash
//! injector, and an idempotent ledger standing for an external system.
//!
//! The broker holds an ordered log of events. Delivering from a position hands out
//! every event from there on, in order, and also redelivers earlier ones at random,
//! the way a queue does after a lost acknowledgement. The crash injector decides,
//! with a seeded RNG, when a consumer dies.

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, from 0.
    pub position: u64,
    /// The event's unique ID.
    pub id: String,
    /// The account it moves money on.
    pub account: String,
    /// The amount, in cents; negative for a withdrawal.
    pub amount: i64,
}

/// A log of events, delivered at least once.
#[derive(Debug)]
pub struct Broker {
    events: Vec<Event>,
    rng: StdRng,
    redelivery: f64,
}

impl Broker {
    /// `n` events on a handful of accounts; `redelivery` is the chance that each
    /// delivery is followed by a redelivery of an earlier event.
    #[must_use]
    pub fn new(n: u64, redelivery: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let events = (0..n)
            .map(|position| Event {
                position,
                id: format!("evt-{position:06}"),
                account: format!("acct-{}", rng.random_range(0..5)),
                amount: rng.random_range(-500..1_000),
            })
            .collect();
        Self {
            events,
            rng,
            redelivery,
        }
    }

    /// Every event, once each.
    #[must_use]
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Deliveries from `from` (inclusive) to the end of the log, with redeliveries of
    /// events already delivered mixed in.
    pub fn deliver_from(&mut self, from: u64) -> Vec<Event> {
        let mut out = Vec::new();
        for i in from..self.events.len() as u64 {
            out.push(self.events[i as usize].clone());
            if self.rng.random_bool(self.redelivery) {
                let j = self.rng.random_range(0..=i);
                out.push(self.events[j as usize].clone());
            }
        }
        out
    }
}

/// Decides when a consumer crashes: at each point it passes, with a fixed chance.
#[derive(Debug)]
pub struct Crasher {
    rng: StdRng,
    chance: f64,
    limit: u32,
    /// Crashes so far.
    pub crashes: u32,
}

/// A simulated crash: the consumer loses everything it held in memory.
#[derive(Debug)]
pub struct Crash(pub &'static str);

impl Crasher {
    /// A crasher that fires with `chance` at each point, at most `limit` times, so
    /// that the run ends.
    #[must_use]
    pub fn new(chance: f64, limit: u32, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            chance,
            limit,
            crashes: 0,
        }
    }

    /// Maybe crashes at `point`.
    ///
    /// # Errors
    ///
    /// [`Crash`] when the dice say so.
    pub fn point(&mut self, point: &'static str) -> Result<(), Crash> {
        if self.crashes < self.limit && self.rng.random_bool(self.chance) {
            self.crashes += 1;
            Err(Crash(point))
        } else {
            Ok(())
        }
    }
}

/// An external system that a consumer over HTTP writes its effects to: balances per
/// account, where applying an event is idempotent per event ID, the way a database
/// table with a unique key on the event ID, written in one transaction with the
/// balance, would be. It survives the consumer's crashes (it is another system).
///
/// Over HTTP the daemon cannot join the effect and the done mark in one
/// transaction, so a consumer can crash after the effect and before the mark. The
/// idempotent write is what makes the effect exactly-once across that gap; the
/// ledger counts the attempts it turned away, so an example can show how rare they
/// are.
#[derive(Debug, Default)]
pub struct IdempotentLedger {
    balances: BTreeMap<String, i64>,
    applied: HashSet<String>,
    /// Calls to [`apply`](Self::apply).
    pub attempts: u64,
    /// Calls that found the event already applied, and changed nothing.
    pub refused: u64,
}

impl IdempotentLedger {
    /// An empty ledger.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the event's amount to its account, unless this event was applied
    /// before. Whether it changed anything.
    pub fn apply(&mut self, event: &Event) -> bool {
        self.attempts += 1;
        if !self.applied.insert(event.id.clone()) {
            self.refused += 1;
            return false;
        }
        *self.balances.entry(event.account.clone()).or_default() += event.amount;
        true
    }

    /// Whether the event's effect is in.
    #[must_use]
    pub fn is_applied(&self, id: &str) -> bool {
        self.applied.contains(id)
    }

    /// How many distinct events were applied.
    #[must_use]
    pub fn applied(&self) -> usize {
        self.applied.len()
    }

    /// An account's balance.
    #[must_use]
    pub fn balance(&self, account: &str) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_applies_each_event_once() {
        let broker = Broker::new(3, 0.0, 1);
        let mut ledger = IdempotentLedger::new();
        let e = &broker.events()[0];
        assert!(ledger.apply(e));
        assert!(!ledger.apply(e));
        assert_eq!(ledger.balance(&e.account), e.amount);
        assert_eq!(
            (ledger.attempts, ledger.refused, ledger.applied()),
            (2, 1, 1)
        );
        assert!(ledger.is_applied(&e.id) && !ledger.is_applied("other"));
    }
}
