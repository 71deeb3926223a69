//! Shared pieces of the examples: a simulated at-least-once broker and a crash
//! injector.
//!
//! The broker holds an ordered log of events. Delivering from a position hands out
//! every event from there on, in order, and also redelivers earlier ones at random,
//! the way a queue does after a lost acknowledgement. The crash injector decides,
//! with a seeded RNG, when a consumer dies.

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
