//! Writes in flight: which IDs are being written (or looked up before a write) right
//! now, so that no two callers decide the same ID at once.
//!
//! An ID is *held* by one flight from the moment a caller decides to write it until
//! that write has settled (its bits set, or given back). Another caller meeting a held
//! ID waits for the flight to finish, then decides again from scratch: the outcome of
//! somebody else's write is read from the records it left, never inferred.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Condvar, Mutex};

use crate::hash::IdHash;

use super::lock;

/// One caller's write in progress. Waiters block on it until it finishes.
#[derive(Debug, Default)]
pub(super) struct Flight {
    finished: Mutex<bool>,
    done: Condvar,
}

impl Flight {
    pub(super) fn finish(&self) {
        *lock(&self.finished) = true;
        self.done.notify_all();
    }

    /// Blocks until the flight has finished.
    pub(super) fn wait(&self) {
        let mut finished = lock(&self.finished);
        while !*finished {
            finished = self
                .done
                .wait(finished)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A flight's number within its namespace; only uniqueness matters.
pub(super) type FlightId = u64;

/// The in-flight registry of one namespace: held IDs (by hash) and their flights.
#[derive(Debug, Default)]
pub(super) struct Flights {
    held: HashMap<u128, FlightId, BuildHasherDefault<IdentityHasher>>,
    flights: HashMap<FlightId, Arc<Flight>>,
}

impl Flights {
    /// The flight holding an ID, if any.
    pub(super) fn holder(&self, key: u128) -> Option<(FlightId, &Arc<Flight>)> {
        let id = *self.held.get(&key)?;
        Some((id, &self.flights[&id]))
    }

    /// Whether any ID is held.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Registers a flight, so that IDs can be held by it.
    pub(super) fn register(&mut self, id: FlightId, flight: Arc<Flight>) {
        self.flights.insert(id, flight);
    }

    /// Holds an ID for a registered flight, unless another holds it already.
    pub(super) fn hold(&mut self, key: u128, id: FlightId) {
        debug_assert!(self.flights.contains_key(&id));
        self.held.entry(key).or_insert(id);
    }

    /// Lets go of an ID, where this flight holds it.
    pub(super) fn let_go(&mut self, key: u128, id: FlightId) {
        if self.held.get(&key) == Some(&id) {
            self.held.remove(&key);
        }
    }

    /// Forgets a flight (its IDs must have been let go).
    pub(super) fn unregister(&mut self, id: FlightId) {
        self.flights.remove(&id);
    }
}

/// The registry's key for an ID: its full 128-bit hash. (Two distinct IDs sharing
/// all 128 bits would be treated as one in-flight ID, a 2^-128 event per pair.)
pub(super) fn key_of(h: IdHash) -> u128 {
    (u128::from(h.hi) << 64) | u128::from(h.lo)
}

/// Hash maps keyed by ID hashes: the key is already a uniform 128-bit hash, so its
/// low 64 bits are the map's hash.
#[derive(Default)]
pub(super) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}
