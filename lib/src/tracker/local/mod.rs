//! The embedded engine: namespaces of generations with their filters in memory,
//! exact tables and claims in a [`Store`] (RocksDB, or memory), and the atomic
//! check-and-mark.
//!
//! # How a batch is decided
//!
//! Under the namespace's lock:
//!
//! 1. If any ID of the call is held by another caller's write in flight, nothing is
//!    decided yet: the call waits for those writes, then starts over.
//! 2. Every live generation's filter is probed. No hit anywhere and no claim: the ID
//!    is new, decided without touching disk.
//! 3. A hit in a generation that still has its exact table is confirmed or ruled out
//!    by the table (one batched read for the whole call, outside the lock, with the
//!    IDs held meanwhile). Inside the exact horizon there are therefore no false
//!    positives, and never false negatives.
//! 4. What is known of each ID (its claim, its done mark, a Bloom-only hit) goes
//!    through one decision function ([`decide`]), shared by every operation.
//! 5. New IDs are counted into the open generation, held in flight, and put in one
//!    write batch, with the call's checkpoint if it has one.
//!
//! The lock is released for the write itself, so concurrent calls reach RocksDB
//! together and share its group commit (one WAL write, and in `sync` mode one fsync,
//! for the whole group). A call writes **once**: it acknowledges everything or, when
//! its write fails, nothing, so an error never hides a mark that landed. Only after
//! the write returns are the IDs' filter bits set and the IDs reported `new`; a write
//! that fails gives its IDs' counts back and leaves the filters untouched (see
//! [`namespace`] for why bits wait for the write).
//!
//! # Rotation
//!
//! A generation seals by capacity inside the mark path and by time on access (or from
//! [`Local::tick`]). Rotation happens under the namespace's lock: the sealed
//! generation's filter is snapshotted (fsynced) once the writes into it have
//! settled, then one atomic batch records the new ring and range-deletes the exact
//! tables that left the horizon. A generation keeps its exact table until its
//! snapshot is saved, so a crash at any point loses no acknowledged mark: either the
//! old ring is recorded and the open generation is rebuilt from its table, or the new
//! one is and every Bloom-only generation has its snapshot.
//!
//! # Start-up
//!
//! Opening reads each namespace's records and claims, loads the snapshots of sealed
//! generations (cost: their size in bytes, read sequentially) and rebuilds the open
//! generation's filter by scanning its exact table (cost: one sequential scan of the
//! IDs it holds). After a clean [`Local::close`] the open generation was
//! snapshotted too, and even that scan is skipped.
//!
//! # Time across restarts
//!
//! Generation ages and claim leases count the time a tracker had the store open: every
//! persisted time is in store time, which resumes at start-up where the previous run
//! left it (see [`time`]). The reading reaches the store as a tiny heartbeat record
//! (`records::ClockRecord`): in the batch of a mark at most once per
//! [`HEARTBEAT_EVERY`], with every rotation, from [`Local::tick`] while idle, and
//! at start-up, [`Local::close`] and when the last handle drops. A crash loses at
//! most the time since the last heartbeat, which only delays the next seal and the
//! end of leases: IDs are then remembered, and claims held, a little longer.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use crate::clock::{Clock, duration_millis};
use crate::error::Error;
use crate::records::{self, ClockRecord};
use crate::store::{Batch, Store};

mod admin;
mod checkpoint;
mod claim_table;
mod claims;
mod engine;
mod flight;
mod forget;
mod mark;
mod namespace;
mod recovery;
mod rotation;
mod single;
mod time;
mod transaction;

use super::outcome::ClaimOutcome;
use super::{Durability, StorageFailure, budget, health};
use namespace::Namespace;

/// At most how often marks carry the clock heartbeat (see "Time across restarts"
/// above). What a crash can lose of generation ages and leases, beyond idle time
/// without a [`Local::tick`].
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The embedded engine behind a [`Tracker`](crate::Tracker). Cheap to clone; clones
/// share everything.
#[derive(Clone)]
pub(crate) struct Local {
    inner: Arc<Inner>,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("store", &self.inner.store)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Box<dyn Store>,
    time: time::StoreTime,
    durability: Durability,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Serialises namespace creation, reconfiguration, deletion and close.
    admin: Mutex<()>,
    /// Serialises transactions, so each reads what the previous ones wrote.
    transactions: Mutex<()>,
    /// Orders checkpoint writes around those with a precondition (see
    /// [`checkpoint`]).
    checkpoints: RwLock<()>,
    closed: AtomicBool,
    /// The last store time put into a batch as the heartbeat, in milliseconds.
    heartbeat: AtomicU64,
    /// Whether the store's writes are failing.
    health: health::Health,
    /// Bounds on namespaces' filter memory and number.
    limits: budget::Limits,
    /// When the store was last asked to recover from failing writes, store time
    /// in milliseconds.
    last_recovery: AtomicU64,
}

impl Inner {
    /// Adds the clock heartbeat to `batch`: always when `force`d, else when the last
    /// one is [`HEARTBEAT_EVERY`] away (either way: a clock set back must not stop
    /// heartbeats). One clock read and one atomic load per call; concurrent callers
    /// race for the slot, and the loser writes none. A heartbeat that never lands, or
    /// lands after a newer one, is harmless: it only undercounts time.
    fn heartbeat(&self, batch: &mut Batch, force: bool) {
        let now = self.time.now();
        let last = self.heartbeat.load(Ordering::Relaxed);
        if force {
            self.heartbeat.store(now.as_millis(), Ordering::Relaxed);
        } else if now.as_millis().abs_diff(last) < duration_millis(HEARTBEAT_EVERY)
            || self
                .heartbeat
                .compare_exchange(last, now.as_millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        batch.put_meta(records::CLOCK_KEY, &records::encode(&ClockRecord::at(now)));
    }

    /// Writes a batch, recording the outcome in the store's health.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        let result = self.store.write(batch, sync);
        self.health.record(|| self.time.now(), &result);
        result
    }

    /// [`Store::write_nonblocking`], recording the outcome likewise.
    fn write_nonblocking(&self, batch: &Batch) -> Result<(), Error> {
        let result = self.store.write_nonblocking(batch);
        self.health.record(|| self.time.now(), &result);
        result
    }

    fn sync_writes(&self) -> bool {
        self.durability == Durability::Sync
    }
}

impl Drop for Inner {
    /// The last handle is gone without [`Local::close`]: still record how far store
    /// time got, so that a restart resumes it exactly. Best effort: losing it only
    /// undercounts time.
    fn drop(&mut self) {
        if *self.closed.get_mut() {
            return;
        }
        let mut b = Batch::new();
        self.heartbeat(&mut b, true);
        if let Err(e) = self.write(&b, false) {
            tracing::debug!(error = %e, "could not record the clock heartbeat at drop");
        }
    }
}

impl Local {
    #[must_use]
    /// See [`Tracker::durability`](crate::Tracker::durability).
    pub(crate) fn durability(&self) -> Durability {
        self.inner.durability
    }

    #[must_use]
    /// See [`Tracker::clock`](crate::Tracker::clock).
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        self.inner.time.clock()
    }

    fn sync_writes(&self) -> bool {
        self.inner.sync_writes()
    }
}

/// Locks a mutex, recovering from poisoning: every critical section leaves the state
/// consistent at each step that can panic (allocation failure aside), so the data
/// behind a poisoned lock is still sound, and one panicking caller must not take the
/// whole namespace down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a mutex if it comes free within a short spin, for callers that must not
/// block: the namespace lock is mostly held for microseconds, but a rotation (a
/// snapshot write) or a claim's disk read can hold it for milliseconds.
fn lock_briefly<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    for _ in 0..LOCK_SPINS {
        match m.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
        }
    }
    None
}

/// How many times [`lock_briefly`] tries: a few microseconds.
const LOCK_SPINS: u32 = 200;
