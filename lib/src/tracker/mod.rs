//! The tracker: namespaces of generations, exact tables in a [`Store`], and the
//! atomic check-and-mark.
//!
//! # How a batch is decided
//!
//! For every ID, under the namespace's lock:
//!
//! 1. If another call is writing the same ID right now, wait for that write (below).
//! 2. Probe every live generation's filter. No hit anywhere: the ID is new, decided
//!    without touching disk.
//! 3. A hit in a generation that still has its exact table is confirmed or ruled out
//!    by the table (one batched read for the whole call). Inside the exact horizon
//!    there are therefore no false positives, and never false negatives.
//! 4. A hit only in Bloom-only generations answers `probable_duplicate`.
//! 5. New IDs are added to the open generation's filter, registered as in flight, and
//!    put in one write batch.
//!
//! The lock is released for the write itself, so concurrent calls reach RocksDB
//! together and share its group commit (one WAL write, and in `sync` mode one fsync,
//! for the whole group). Only after the write returns are the IDs reported `new`; a
//! concurrent call that met one of them in flight then answers `duplicate` (or, for
//! the same owner, `new` replayed). If the write fails, nothing of the batch is
//! reported `new`, and waiters decide again from scratch. Bits already set in the
//! filter for a failed write are harmless: the exact table rules them out.
//!
//! # Rotation
//!
//! A generation seals by capacity inside the mark path and by time on access (or from
//! [`Tracker::tick`]). Rotation happens under the namespace's lock: the sealed
//! generation's filter is snapshotted (fsynced), then one atomic batch records the new
//! ring and range-deletes the exact table that left the horizon. A crash before that
//! batch leaves the old ring, whose open generation is rebuilt from its exact table on
//! start-up; a crash after it finds the snapshot in place. Either way no acknowledged
//! mark is lost.
//!
//! # Start-up
//!
//! Opening reads each namespace's records, loads the snapshots of sealed generations
//! (cost: their size in bytes, read sequentially) and rebuilds the open generation's
//! filter by scanning its exact table (cost: one sequential scan of at most
//! `generation_capacity` keys). After a clean [`Tracker::close`], the open generation
//! was snapshotted too, and even that scan is skipped. Nothing else is read: older
//! exact tables are consulted only on filter hits.
//!
//! # Time across restarts
//!
//! A generation's age counts the time a tracker had the store open, on its clock,
//! never the downtime between two runs nor a wall clock stepped while the process
//! was down. The clock's reading reaches the store as a tiny heartbeat record
//! (`records::ClockRecord`): in the batch of a mark at most once per
//! [`HEARTBEAT_EVERY`], with every rotation, from [`Tracker::tick`] while idle, and at
//! start-up, [`Tracker::close`] and when the last handle drops. Start-up shifts every
//! ring onto the new run's clock so that the open generation keeps the age it had at
//! the last heartbeat; the shifted rings and the new heartbeat are persisted in one
//! batch before anything else is written, so records never mix two runs' clocks. A
//! crash loses at most the time since the last heartbeat, which only delays the next
//! seal: IDs are then remembered longer, never shorter.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use crate::clock::{Clock, SystemClock, Timestamp, duration_millis};
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::{MarkValue, OwnerFp};
use crate::filter::FilterStats;
use crate::generation::{Generation, GenerationId, GenerationRing, SealReason};
use crate::hash::{HashSeed, IdHash};
use crate::id::{EventId, NamespaceName};
use crate::records::{
    self, CleanRecord, ClockRecord, NamespaceRecord, RECORD_VERSION, RingRecord, clean_key, ns_key,
    ring_key,
};
use crate::store::{Batch, MemoryStore, NamespaceId, RocksOptions, RocksStore, Store};
use crate::verdict::Verdict;

mod claims;
mod health;
mod recovery;
mod single;
mod transaction;

pub use claims::{ClaimOutcome, MAX_LEASE};
pub use health::StorageFailure;
pub use transaction::{MAX_POSITION_LEN, Transacted, Transaction};

/// At most how often marks carry the clock heartbeat (see "Time across restarts"
/// above). What a crash can lose of a generation's age, beyond idle time without a
/// [`Tracker::tick`].
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// When a mark counts as acknowledged.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// In RocksDB's write-ahead log, written to the OS: survives kill -9 of the
    /// process.
    #[default]
    Flush,
    /// The write-ahead log is fsynced (concurrent callers share one fsync): survives
    /// power loss.
    Sync,
    /// In memory only: survives nothing. For tests and ephemeral use.
    Memory,
}

impl Durability {
    /// The mode's name: `flush`, `sync` or `memory`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Flush => "flush",
            Self::Sync => "sync",
            Self::Memory => "memory",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "flush" => Ok(Self::Flush),
            "sync" => Ok(Self::Sync),
            "memory" => Ok(Self::Memory),
            other => Err(Error::InvalidConfig {
                field: "durability",
                reason: format!("{other:?} is not one of flush, sync, memory"),
            }),
        }
    }
}

/// Opens a [`Tracker`]. A consuming builder: [`open`](Self::open) validates.
#[must_use]
pub struct TrackerBuilder {
    path: Option<PathBuf>,
    durability: Durability,
    clock: Arc<dyn Clock>,
    default_config: NamespaceConfig,
    rocks: RocksOptions,
    store: Option<Box<dyn Store>>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl TrackerBuilder {
    /// The data directory (required for `flush` and `sync`).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The durability mode (default `flush`).
    pub const fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The clock (default: the system clock). Tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration of the `default` namespace when it is first created.
    pub fn default_config(mut self, config: NamespaceConfig) -> Self {
        self.default_config = config;
        self
    }

    /// RocksDB's memory budgets.
    pub const fn rocks_options(mut self, options: RocksOptions) -> Self {
        self.rocks = options;
        self
    }

    /// A custom storage backend instead of RocksDB or memory (a distributed backend,
    /// or a fault-injecting wrapper in tests). `durability` still decides whether
    /// writes are synced.
    pub fn store(mut self, store: Box<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the tracker, recovering whatever the store holds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a missing or superfluous path, storage errors,
    /// and [`Error::Corrupt`] or [`Error::Snapshot`] naming what is damaged. A damaged
    /// store is never opened as empty.
    pub fn open(self) -> Result<Tracker, Error> {
        let store: Box<dyn Store> = match (self.store, self.durability, self.path) {
            (Some(store), _, None) => store,
            (Some(_), _, Some(_)) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: "give either a path or a custom store, not both".into(),
                });
            }
            (None, Durability::Memory, None) => Box::new(MemoryStore::new()),
            (None, Durability::Memory, Some(path)) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: format!(
                        "durability memory keeps nothing on disk, but a path was given ({})",
                        path.display()
                    ),
                });
            }
            (None, _, Some(path)) => Box::new(RocksStore::open(path, self.rocks)?),
            (None, d, None) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: format!("durability {d} needs a data directory"),
                });
            }
        };
        Tracker::recover(store, self.durability, self.clock, self.default_config)
    }
}

/// The dedup authority: namespaces, their generations and exact tables, and atomic
/// check-and-mark. Cheap to clone; clones share everything.
///
/// ```
/// use oncely::{Durability, Tracker, Verdict};
///
/// let dir = tempfile::tempdir()?;
/// let tracker = Tracker::builder().path(dir.path()).open()?;
/// let first = tracker.check_and_mark("default", &["order-1", "order-2"], None)?;
/// assert_eq!(first, [Verdict::New, Verdict::New]);
/// let again = tracker.check_and_mark("default", &["order-2", "order-3"], None)?;
/// assert_eq!(again, [Verdict::Duplicate, Verdict::New]);
/// tracker.close()?;
/// drop(tracker); // the last handle releases the data directory
///
/// // Marks survive a restart.
/// let tracker = Tracker::builder().path(dir.path()).open()?;
/// assert_eq!(tracker.check("default", &["order-1"])?, [Verdict::Duplicate]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("store", &self.inner.store)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Box<dyn Store>,
    clock: Arc<dyn Clock>,
    durability: Durability,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Serialises namespace creation, reconfiguration and deletion.
    admin: Mutex<()>,
    /// Serialises transactions, so each reads what the previous ones wrote.
    transactions: Mutex<()>,
    closed: AtomicBool,
    /// The last clock reading put into a batch as the heartbeat, in milliseconds.
    heartbeat: AtomicU64,
    /// Whether the store's writes are failing.
    health: health::Health,
}

impl Inner {
    /// Writes a batch, recording the outcome in the store's health.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        let result = self.store.write(batch, sync);
        self.health.record(|| self.clock.now(), &result);
        result
    }

    /// [`Store::write_nonblocking`], recording the outcome likewise.
    fn write_nonblocking(&self, batch: &Batch) -> Result<(), Error> {
        let result = self.store.write_nonblocking(batch);
        self.health.record(|| self.clock.now(), &result);
        result
    }

    /// Adds the clock heartbeat to `batch`: always when `force`d, else when the last
    /// one is [`HEARTBEAT_EVERY`] away (either way: a clock set back must not stop
    /// heartbeats). One clock read and one atomic load per call; concurrent callers
    /// race for the slot, and the loser writes none. A heartbeat that never lands, or
    /// lands after a newer one, is harmless: it only undercounts ages.
    fn heartbeat(&self, batch: &mut Batch, force: bool) {
        let now = self.clock.now();
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
}

impl Drop for Inner {
    /// The last handle is gone without [`Tracker::close`]: still record how far the
    /// clock got, so that a restart counts the open generations' ages exactly. Best
    /// effort: losing it only delays the next seal.
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

struct Namespace {
    name: NamespaceName,
    id: NamespaceId,
    seed: HashSeed,
    /// Numbers flights (writes in progress); only uniqueness matters.
    next_flight: AtomicU64,
    // A std mutex, not an async one: critical sections are short, CPU-bound or a
    // quick RocksDB read, and never span an await; the daemon calls the tracker from
    // blocking threads.
    state: Mutex<State>,
}

struct State {
    ring: GenerationRing,
    /// Generations numbered from here up keep their exact tables.
    exact_floor: GenerationId,
    /// IDs being written right now, by hash, to the write (flight) carrying them.
    inflight: HashMap<u128, u64, BuildHasherDefault<IdentityHasher>>,
    flights: HashMap<u64, Arc<Flight>>,
    /// Set by delete; calls holding an old handle then fail as unknown.
    deleted: bool,
    /// Set by close, after the open generation's final snapshot: no mark may land
    /// after it, or the snapshot would miss it.
    closed: bool,
}

/// One call's write in progress. Waiters block on it, then read the outcome.
struct Flight {
    owner: Option<OwnerFp>,
    outcome: Mutex<Option<bool>>,
    done: Condvar,
}

impl Flight {
    fn new(owner: Option<OwnerFp>) -> Self {
        Self {
            owner,
            outcome: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    /// A flight that has already failed: its waiter decides afresh.
    fn failed() -> Self {
        let flight = Self::new(None);
        flight.finish(false);
        flight
    }

    fn finish(&self, ok: bool) {
        *lock(&self.outcome) = Some(ok);
        self.done.notify_all();
    }

    /// Whether the write succeeded, once it has finished.
    fn wait(&self) -> bool {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(ok) = *outcome {
                return ok;
            }
            outcome = self
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What the locked first step of a pass decided, for the last.
struct Probe {
    now: Timestamp,
    epoch: (GenerationId, GenerationId),
    /// Exact-table lookups, `(index, generation)`, grouped by index in ascending
    /// order, newest generation first.
    lookups: Vec<(usize, GenerationId)>,
    /// Indices that a Bloom-only generation also holds, ascending.
    probable: Vec<usize>,
    /// Indices no filter holds.
    candidates: Vec<usize>,
}

/// Hash maps keyed by ID hashes: the key is already a uniform 128-bit hash, so its
/// low 64 bits are the map's hash. (Two distinct IDs sharing all 128 bits would be
/// treated as one in-flight ID, a 2^-128 event per pair.)
#[derive(Default)]
struct IdentityHasher(u64);

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

fn key_of(h: IdHash) -> u128 {
    (u128::from(h.hi) << 64) | u128::from(h.lo)
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

#[derive(Clone, Copy)]
enum Mode {
    Check,
    Mark(Option<OwnerFp>),
}

/// One call's fixed inputs.
#[derive(Clone, Copy)]
struct Call<'a> {
    ns: &'a Namespace,
    ids: &'a [EventId<'a>],
    hashes: &'a [IdHash],
    mode: Mode,
    /// Give up with [`Error::WouldBlock`], before anything is written, rather than
    /// wait (see [`Tracker::try_check_and_mark`]).
    nonblocking: bool,
}

/// What one locked pass over a batch decided, and its flight.
///
/// The pass's new IDs are registered in flight while it writes. Dropping the pass
/// unfinished (an error, or a panic unwinding through it) settles the flight as
/// failed, so that callers waiting on those IDs decide afresh instead of waiting
/// forever.
struct Pass<'a> {
    ns: &'a Namespace,
    hashes: &'a [IdHash],
    flight: Arc<Flight>,
    flight_id: u64,
    /// Holds the IDs this pass may mark while it looks up others in the exact
    /// tables outside the lock, so that no other caller marks one of them
    /// meanwhile. It always settles as failed: its waiters decide afresh, once this
    /// pass's outcome is in place.
    reservation: Arc<Flight>,
    reservation_id: u64,
    /// Whether its flight is registered in the namespace state.
    registered: bool,
    finished: bool,
    batch: Batch,
    /// Indices this pass marks new, to confirm after the write.
    mine: Vec<usize>,
    /// Indices held by the reservation.
    reserved: Vec<usize>,
    /// IDs counted into each generation by this pass, taken back if its write fails.
    recorded: Vec<(GenerationId, u64)>,
    /// Indices in flight elsewhere, with the flight to wait for.
    waits: Vec<(usize, Arc<Flight>)>,
}

impl Pass<'_> {
    /// Takes this pass's IDs out of flight and wakes their waiters.
    fn finish(&mut self, ok: bool) {
        self.finished = true;
        // A pass that never got the lock registered nothing (and a non-blocking one
        // that gave up on the lock must not wait for it here either).
        if self.registered {
            let mut st = lock(&self.ns.state);
            for &i in &self.mine {
                let key = key_of(self.hashes[i]);
                if st.inflight.get(&key) == Some(&self.flight_id) {
                    st.inflight.remove(&key);
                }
            }
            release(&mut st, self.hashes, &self.reserved, self.reservation_id);
            if !ok {
                for &(g, n) in &self.recorded {
                    st.ring.unrecord(g, n);
                }
            }
            st.flights.remove(&self.flight_id);
            st.flights.remove(&self.reservation_id);
        }
        self.flight.finish(ok);
        self.reservation.finish(false);
    }
}

/// A non-blocking call's answer: `None` where it gave up.
fn gave_up(result: Result<Vec<Verdict>, Error>) -> Result<Option<Vec<Verdict>>, Error> {
    match result {
        Ok(verdicts) => Ok(Some(verdicts)),
        Err(Error::WouldBlock) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes reserved IDs out of flight, where the reservation still holds them.
fn release(st: &mut State, hashes: &[IdHash], reserved: &[usize], reservation_id: u64) {
    for &i in reserved {
        let key = key_of(hashes[i]);
        if st.inflight.get(&key) == Some(&reservation_id) {
            st.inflight.remove(&key);
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(false);
        }
    }
}

/// Configuration and live statistics of a namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NamespaceInfo {
    /// The namespace's name.
    pub name: String,
    /// Its configuration.
    pub config: NamespaceConfig,
    /// Live generations, newest first.
    pub generations: Vec<GenerationInfo>,
    /// The chance that an unseen ID is answered `probable_duplicate` now: the
    /// combined estimated rate of the Bloom-only generations. (Generations with
    /// exact tables never produce false positives.)
    pub estimated_fp: f64,
    /// Bytes of filter memory across generations.
    pub memory_bytes: u64,
}

/// Statistics of one generation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationInfo {
    /// Sequence number.
    pub id: u64,
    /// When it opened (ms since the epoch, on the tracker's clock). After a restart
    /// the ring's times are shifted so that downtime and clock steps between runs
    /// are cut out: `now - opened_at` of the open generation is its age in running
    /// time.
    pub opened_at: u64,
    /// When it sealed (shifted like `opened_at`); `None` while open.
    pub sealed_at: Option<u64>,
    /// New IDs marked into it.
    pub ids: u64,
    /// Whether it still has its exact table.
    pub exact: bool,
    /// Its filter's statistics.
    pub filter: FilterStats,
    /// Its filter's memory in bytes.
    pub memory_bytes: u64,
}

/// Whether a reconfiguration may forget remembered IDs at once.
///
/// Lowering `generations` below the number of live generations drops the oldest
/// ones now, and lowering `exact_generations` drops exact tables now (their
/// generations answer `probable_duplicate` from then on). Both forget what consumers
/// may rely on, so they must be asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropPolicy {
    /// Refuse such a change with [`Error::WouldDrop`], changing nothing.
    #[default]
    Refuse,
    /// Apply it, forgetting what it drops.
    DropNow,
}

/// Whether [`Tracker::configure_namespace`] created the namespace or updated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Configured {
    /// It did not exist and was created.
    Created,
    /// It existed; the changes apply as documented on the method.
    Updated,
}

impl Tracker {
    /// A builder with the defaults: durability `flush`, the system clock, the default
    /// namespace configuration.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder {
            path: None,
            durability: Durability::default(),
            clock: Arc::new(SystemClock::new()),
            default_config: NamespaceConfig::default(),
            rocks: RocksOptions::default(),
            store: None,
        }
    }

    /// The durability mode.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The clock the tracker reads.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Checks and marks a batch of IDs atomically per ID: among any number of
    /// concurrent callers marking the same ID, exactly one gets [`Verdict::New`].
    ///
    /// With an `owner`, the same owner marking an ID again gets
    /// [`Verdict::Replayed`] (its original `new`) instead of `duplicate`, as long as
    /// the mark is inside the exact horizon: a client whose response was lost can
    /// retry safely. Verdicts come back in the order of `ids`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`], [`Error::InvalidOwner`] or [`Error::UnknownNamespace`]
    /// before anything is marked; storage errors, in which case nothing of the batch
    /// was acknowledged.
    pub fn check_and_mark<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace_handle(namespace)?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        self.run(&ns, &ids, Mode::Mark(owner), None, false)
    }

    /// [`check_and_mark`](Self::check_and_mark) for a caller that must not block,
    /// such as an async runtime's worker thread.
    ///
    /// `Ok(None)` when the call would have had to wait, and then nothing is marked:
    /// for another caller's write of one of the IDs, for a rotation (which writes a
    /// snapshot), for an exact-table read from disk, for a RocksDB write stall, or
    /// for an fsync (durability `sync`, always), for the namespace's lock when it
    /// does not come free within a short spin. Make the call again with
    /// `check_and_mark`, from a thread that may block. What remains is short:
    /// handing the write to the operating system, and taking the lock back to
    /// settle the call once it is written.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark`](Self::check_and_mark).
    pub fn try_check_and_mark<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace_handle(namespace)?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        gave_up(self.run(&ns, &ids, Mode::Mark(owner), None, true))
    }

    /// Answers like [`check_and_mark`](Self::check_and_mark) without marking: `New`
    /// here means unseen.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark`](Self::check_and_mark).
    pub fn check<T: AsRef<[u8]>>(&self, namespace: &str, ids: &[T]) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace_handle(namespace)?;
        self.run(&ns, &ids, Mode::Check, None, false)
    }

    /// [`check`](Self::check) for a caller that must not block: `Ok(None)` when
    /// the call would have had to wait (for another caller's write of one of the
    /// IDs, for a rotation, for an exact-table read from disk, for a busy lock), as
    /// [`try_check_and_mark`](Self::try_check_and_mark) does.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub fn try_check<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
    ) -> Result<Option<Vec<Verdict>>, Error> {
        let ids = EventId::batch(ids)?;
        let ns = self.namespace_handle(namespace)?;
        gave_up(self.run(&ns, &ids, Mode::Check, None, true))
    }

    fn namespace_handle(&self, name: &str) -> Result<Arc<Namespace>, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let map = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = map.get(name) {
            return Ok(Arc::clone(ns));
        }
        drop(map);
        // Distinguish a malformed name (400) from an unknown one (404).
        NamespaceName::new(name)?;
        Err(Error::UnknownNamespace(name.to_owned()))
    }

    fn sync_writes(&self) -> bool {
        self.inner.durability == Durability::Sync
    }

    /// Decides a batch. `extra` (a checkpoint) is written atomically with the
    /// batch's last marks: the pass that leaves nothing to wait for, or alone at the
    /// end when every mark was someone else's.
    ///
    /// With `nonblocking`, the first pass gives up with [`Error::WouldBlock`] rather
    /// than wait, before anything is written; a later pass (after a write of this
    /// call has landed) can no longer give up, and waits.
    fn run(
        &self,
        ns: &Namespace,
        ids: &[EventId<'_>],
        mode: Mode,
        extra: Option<&Batch>,
        nonblocking: bool,
    ) -> Result<Vec<Verdict>, Error> {
        let hashes: Vec<IdHash> = ids.iter().map(|id| ns.seed.hash(id.as_bytes())).collect();
        let mut verdicts: Vec<Option<Verdict>> = vec![None; ids.len()];
        let mut todo: Vec<usize> = (0..ids.len()).collect();
        let mut extra = extra;
        let mut nonblocking = nonblocking;
        while !todo.is_empty() {
            // `decide` relies on ascending order (input order wins among repeats).
            todo.sort_unstable();
            let call = Call {
                ns,
                ids,
                hashes: &hashes,
                mode,
                nonblocking,
            };
            let waits = self.pass(call, &todo, &mut verdicts, &mut extra)?;
            nonblocking = false;
            todo.clear();
            for (i, flight) in waits {
                if flight.wait() {
                    verdicts[i] = Some(match mode {
                        Mode::Mark(Some(owner)) if flight.owner == Some(owner) => Verdict::Replayed,
                        _ => Verdict::Duplicate,
                    });
                } else {
                    // The other write failed: nothing was marked, decide afresh.
                    todo.push(i);
                }
            }
        }
        if let Some(extra) = extra {
            self.inner.write(extra, self.sync_writes())?;
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.expect("every ID is decided before the loop ends"))
            .collect())
    }

    /// One locked decision over `todo`, the write, and its confirmation. Returns the
    /// IDs found in flight elsewhere.
    fn pass(
        &self,
        call: Call<'_>,
        todo: &[usize],
        verdicts: &mut [Option<Verdict>],
        extra: &mut Option<&Batch>,
    ) -> Result<Vec<(usize, Arc<Flight>)>, Error> {
        let Call {
            ns,
            ids,
            hashes,
            mode,
            ..
        } = call;
        // Every write under `sync` waits for an fsync.
        if call.nonblocking && matches!(mode, Mode::Mark(_)) && self.sync_writes() {
            return Err(Error::WouldBlock);
        }
        let owner = match mode {
            Mode::Mark(owner) => owner,
            Mode::Check => None,
        };
        // The pass exists before the lock is taken, so that on an error or a panic
        // the lock is released (dropped first) before the pass settles its flight,
        // which takes the lock again.
        let mut pass = Pass {
            ns,
            hashes,
            flight: Arc::new(Flight::new(owner)),
            flight_id: ns.next_flight.fetch_add(1, Ordering::Relaxed),
            reservation: Arc::new(Flight::new(None)),
            reservation_id: ns.next_flight.fetch_add(1, Ordering::Relaxed),
            registered: false,
            finished: false,
            batch: Batch::with_capacity(
                todo.len(),
                ids.first().map_or(16, |id| id.as_bytes().len()),
            ),
            mine: Vec::new(),
            reserved: Vec::new(),
            recorded: Vec::new(),
            waits: Vec::new(),
        };
        // Exact-table lookups (duplicates, and the filters' false positives) are
        // disk reads: they run outside the namespace lock, so that concurrent
        // callers do not queue behind them. A batch that needs none is decided in
        // one locked step.
        let probe = {
            let mut st = if call.nonblocking {
                lock_briefly(&ns.state).ok_or(Error::WouldBlock)?
            } else {
                lock(&ns.state)
            };
            st.flights.insert(pass.flight_id, Arc::clone(&pass.flight));
            pass.registered = true;
            let probe = self.probe(call, &mut st, todo, verdicts, &mut pass)?;
            if probe.lookups.is_empty() {
                self.settle(call, &mut st, probe, &[], verdicts, &mut pass)?;
                None
            } else {
                Some(probe)
            }
        };
        if let Some(probe) = probe {
            crate::failpoint!("mark.before-lookup");
            let values = self.lookup(call, &probe.lookups)?;

            let mut st = lock(&ns.state);
            self.settle(call, &mut st, probe, &values, verdicts, &mut pass)?;
        }
        crate::failpoint!("mark.after-filter");
        if pass.waits.is_empty()
            && let Some(extra) = extra.take()
        {
            pass.batch.extend(extra);
        }
        let written = if pass.batch.is_empty() {
            Ok(())
        } else {
            self.inner.heartbeat(&mut pass.batch, false);
            if call.nonblocking {
                self.inner.write_nonblocking(&pass.batch)
            } else {
                self.inner.write(&pass.batch, self.sync_writes())
            }
        };
        pass.finish(written.is_ok());
        written?;
        for &i in &pass.mine {
            verdicts[i] = Some(Verdict::New);
        }
        Ok(std::mem::take(&mut pass.waits))
    }

    /// The locked first step of a pass: IDs in flight elsewhere are set to wait,
    /// the filters are probed, and the IDs that need an exact-table lookup are
    /// returned with the rest of the decision so far.
    fn probe(
        &self,
        call: Call<'_>,
        st: &mut State,
        todo: &[usize],
        verdicts: &mut [Option<Verdict>],
        pass: &mut Pass<'_>,
    ) -> Result<Probe, Error> {
        let Call {
            ns,
            hashes,
            mode,
            nonblocking,
            ..
        } = call;
        Self::usable(ns, st)?;
        let now = self.inner.clock.now();
        // A rotation writes a snapshot, and waiting for another caller's write is
        // waiting: a non-blocking call leaves both to a blocking one.
        if nonblocking && st.ring.due(now).is_some() {
            return Err(Error::WouldBlock);
        }
        self.rotate_due(ns, st, now)?;

        // Probe the filters, one generation at a time over the whole batch so that
        // each filter's cache misses overlap (`contains_batch`); collect the
        // exact-table lookups.
        let mut probe: Vec<usize> = Vec::with_capacity(todo.len());
        for &i in todo {
            match st.inflight.get(&key_of(hashes[i])) {
                Some(fid) => pass.waits.push((i, Arc::clone(&st.flights[fid]))),
                None => probe.push(i),
            }
        }
        if nonblocking && !pass.waits.is_empty() {
            return Err(Error::WouldBlock);
        }
        let probe_hashes: Vec<IdHash> = probe.iter().map(|&i| hashes[i]).collect();
        let hits: Vec<(GenerationId, Vec<bool>)> = st
            .ring
            .iter()
            .map(|g| (g.id(), g.filter().contains_batch(&probe_hashes)))
            .collect();
        let mut out = Probe {
            now,
            epoch: Self::epoch(st),
            lookups: Vec::new(),
            probable: Vec::new(),
            candidates: Vec::new(),
        };
        for (j, &i) in probe.iter().enumerate() {
            let before = out.lookups.len();
            let mut bloom_only_hit = false;
            for (g, hit) in &hits {
                if hit[j] {
                    if *g >= st.exact_floor {
                        out.lookups.push((i, *g));
                    } else {
                        bloom_only_hit = true;
                    }
                }
            }
            if bloom_only_hit {
                out.probable.push(i);
            }
            if out.lookups.len() == before {
                if bloom_only_hit {
                    verdicts[i] = Some(Verdict::ProbableDuplicate);
                } else {
                    out.candidates.push(i);
                }
            }
        }
        // When lookups will run outside the lock, every ID this pass may mark is
        // reserved until it is decided, so that no other caller marks one of them
        // meanwhile. (A repeat within the batch shares its first occurrence's
        // reservation.)
        if matches!(mode, Mode::Mark(_)) && !out.lookups.is_empty() {
            let mut reserve: Vec<usize> = out.lookups.iter().map(|&(i, _)| i).collect();
            reserve.dedup();
            reserve.extend_from_slice(&out.candidates);
            for &i in &reserve {
                st.inflight
                    .entry(key_of(hashes[i]))
                    .or_insert(pass.reservation_id);
            }
            st.flights
                .insert(pass.reservation_id, Arc::clone(&pass.reservation));
            pass.reserved = reserve;
        }
        Ok(out)
    }

    /// What decides whether a lookup made outside the lock still holds: the
    /// generations with exact tables. (Marks cannot have changed for reserved IDs.)
    fn epoch(st: &State) -> (GenerationId, GenerationId) {
        (st.exact_floor, st.ring.current().id())
    }

    /// The exact-table values of `lookups`, in order.
    fn lookup(
        &self,
        call: Call<'_>,
        lookups: &[(usize, GenerationId)],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let keys: Vec<(GenerationId, &[u8])> = lookups
            .iter()
            .map(|&(i, g)| (g, call.ids[i].as_bytes()))
            .collect();
        if call.nonblocking {
            self.inner.store.get_marks_cached(call.ns.id, &keys)
        } else {
            self.inner.store.get_marks(call.ns.id, &keys)
        }
    }

    /// The locked last step of a pass: the lookups' values decide their IDs, and
    /// the new IDs are recorded in the filters and put in the pass's batch.
    ///
    /// Should a rotation have moved the exact horizon since the probe, the looked-up
    /// IDs are decided afresh by the next pass instead.
    fn settle(
        &self,
        call: Call<'_>,
        st: &mut State,
        probe: Probe,
        values: &[Option<Vec<u8>>],
        verdicts: &mut [Option<Verdict>],
        pass: &mut Pass<'_>,
    ) -> Result<(), Error> {
        let flight_id = pass.flight_id;
        let Call {
            ns,
            ids,
            hashes,
            mode,
            nonblocking,
        } = call;
        let Probe {
            now,
            epoch,
            lookups,
            probable,
            mut candidates,
        } = probe;
        Self::usable(ns, st)?;
        // Nothing is changed yet: a non-blocking call may still give up, where it
        // would otherwise have to decide afresh or rotate (which writes a snapshot).
        if nonblocking
            && ((!lookups.is_empty() && Self::epoch(st) != epoch)
                || (matches!(mode, Mode::Mark(_))
                    && st.ring.current().ids() + (candidates.len() + lookups.len()) as u64
                        > st.ring.config().generation_capacity()))
        {
            return Err(Error::WouldBlock);
        }
        // The reserved IDs are decided below: marked by this pass's flight, or
        // answered from what the lookup found.
        release(st, hashes, &pass.reserved, pass.reservation_id);
        let stale = !lookups.is_empty() && Self::epoch(st) != epoch;

        // Lookups of one ID are adjacent, newest generation first: the first value
        // found is the one that counts.
        let mut at = 0;
        while at < lookups.len() {
            let i = lookups[at].0;
            let mut found = None;
            while at < lookups.len() && lookups[at].0 == i {
                if found.is_none() && !stale {
                    found = values[at].as_deref().map(MarkValue::decode).transpose()?;
                }
                at += 1;
            }
            if stale {
                pass.waits.push((i, Arc::new(Flight::failed())));
                continue;
            }
            let verdict = match (found, mode) {
                // The claim's owner marking its own ID completes the claim.
                (Some(MarkValue::Claimed { owner, .. }), Mode::Mark(Some(me))) if owner == me => {
                    None
                }
                (Some(MarkValue::Claimed { until, .. }), _) if until > now => {
                    Some(Verdict::InProgress { until })
                }
                // An expired claim is as good as absent.
                (Some(MarkValue::Claimed { .. }) | None, _) => None,
                (Some(MarkValue::Done { owner: Some(o) }), Mode::Mark(Some(me))) if o == me => {
                    Some(Verdict::Replayed)
                }
                (Some(MarkValue::Done { .. }), _) => Some(Verdict::Duplicate),
            };
            match verdict {
                Some(v) => verdicts[i] = Some(v),
                None if probable.binary_search(&i).is_ok() => {
                    verdicts[i] = Some(Verdict::ProbableDuplicate);
                }
                None => candidates.push(i),
            }
        }

        let Mode::Mark(owner) = mode else {
            for i in candidates {
                verdicts[i] = Some(Verdict::New);
            }
            return Ok(());
        };
        // Input order decides which occurrence of a repeated ID is the new one, and
        // which generation each ID lands in.
        candidates.sort_unstable();
        let value = MarkValue::Done { owner }.encode();
        for i in candidates {
            let key = key_of(hashes[i]);
            if let Some(fid) = st.inflight.get(&key) {
                // Repeated within this batch (or, by a 2^-128 chance, a collision).
                let f = if *fid == flight_id {
                    None
                } else {
                    Some(Arc::clone(&st.flights[fid]))
                };
                match f {
                    Some(f) => pass.waits.push((i, f)),
                    None => {
                        verdicts[i] = Some(match owner {
                            Some(_) => Verdict::Replayed,
                            None => Verdict::Duplicate,
                        });
                    }
                }
                continue;
            }
            if st.ring.current().ids() >= st.ring.config().generation_capacity() {
                self.rotate(ns, st, now, SealReason::Capacity)?;
            }
            st.ring.record_new(hashes[i]);
            let g = st.ring.current().id();
            match pass.recorded.last_mut() {
                Some((last, n)) if *last == g => *n += 1,
                _ => pass.recorded.push((g, 1)),
            }
            pass.batch
                .put_mark(ns.id, g, ids[i].as_bytes(), value.as_slice());
            st.inflight.insert(key, flight_id);
            pass.mine.push(i);
        }
        Ok(())
    }

    fn rotate_due(&self, ns: &Namespace, st: &mut State, now: Timestamp) -> Result<(), Error> {
        if let Some(reason) = st.ring.due(now) {
            self.rotate(ns, st, now, reason)?;
        }
        Ok(())
    }

    /// Seals the open generation, persisting the new ring before it takes effect.
    fn rotate(
        &self,
        ns: &Namespace,
        st: &mut State,
        now: Timestamp,
        reason: SealReason,
    ) -> Result<(), Error> {
        let rotation = st.ring.rotate(now, reason)?;
        let floor = exact_floor(&st.ring, st.exact_floor);
        let persisted = (|| {
            if self.inner.store.persistent() {
                let sealed = st
                    .ring
                    .iter()
                    .nth(1)
                    .expect("a rotation leaves the sealed generation behind the new one");
                self.inner
                    .store
                    .save_snapshot(ns.id, sealed.id(), sealed.filter())?;
            }
            crate::failpoint!("rotation.after-snapshot");
            let mut b = Batch::new();
            b.put_meta(
                &ring_key(ns.id),
                &records::encode(&RingRecord::of(&st.ring, floor)),
            );
            if floor > st.exact_floor {
                b.drop_marks(ns.id, floor);
            }
            // The new generation's age starts now: a heartbeat of now lets a
            // restart count it from here.
            self.inner.heartbeat(&mut b, true);
            self.inner.write(&b, self.sync_writes())
        })();
        if let Err(e) = persisted {
            st.ring.undo(rotation);
            return Err(e);
        }
        st.exact_floor = floor;
        // The new ring is committed and in effect; only tidying is left.
        crate::failpoint!("rotation.before-drop");
        tracing::debug!(
            namespace = %ns.name,
            sealed = rotation.sealed.0,
            reason = ?rotation.reason,
            dropped = rotation.dropped.len(),
            "generation sealed"
        );
        for g in &rotation.dropped {
            self.delete_snapshot_logged(ns, g.id());
        }
        Ok(())
    }

    fn delete_snapshot_logged(&self, ns: &Namespace, g: GenerationId) {
        // A leftover snapshot is only wasted disk, and start-up removes orphans.
        if let Err(e) = self.inner.store.delete_snapshot(ns.id, g) {
            tracing::warn!(namespace = %ns.name, generation = g.0, error = %e, "could not delete snapshot");
        }
    }

    /// Seals every generation whose span has passed. The daemon calls this from a
    /// background ticker, so idle namespaces rotate too.
    ///
    /// It also records the clock's heartbeat (at most once per second; a tiny,
    /// unsynced write) when no mark did, so that the running time a crash can make a
    /// restart miss stays about a second even while the tracker is idle.
    ///
    /// # Errors
    ///
    /// The first storage error of a seal; other namespaces are still ticked.
    pub fn tick(&self) -> Result<(), Error> {
        let mut first_error = None;
        for ns in self.all_namespaces() {
            let mut st = lock(&ns.state);
            if st.deleted || st.closed {
                // After close the open generation's final snapshot is written: a
                // seal now would contradict it.
                continue;
            }
            let now = self.inner.clock.now();
            if let Err(e) = self.rotate_due(&ns, &mut st, now) {
                first_error.get_or_insert(e);
            }
        }
        if !self.inner.closed.load(Ordering::Acquire) {
            let mut b = Batch::new();
            self.inner.heartbeat(&mut b, false);
            if !b.is_empty()
                && let Err(e) = self.inner.write(&b, false)
            {
                // Only undercounts ages after a crash; a failing store shows
                // elsewhere.
                tracing::debug!(error = %e, "could not record the clock heartbeat");
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Seals the open generation of a namespace now.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`], or a storage error (the ring is then unchanged).
    pub fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let mut st = lock(&ns.state);
        if st.deleted {
            return Err(Error::UnknownNamespace(namespace.to_owned()));
        }
        let now = self.inner.clock.now();
        self.rotate(&ns, &mut st, now, SealReason::Manual)
    }

    fn all_namespaces(&self) -> Vec<Arc<Namespace>> {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Names of all namespaces, sorted.
    #[must_use]
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }

    /// Configuration and live statistics of a namespace.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`].
    pub fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
        let ns = self.namespace_handle(namespace)?;
        let st = lock(&ns.state);
        let generations: Vec<GenerationInfo> = st
            .ring
            .iter()
            .map(|g| GenerationInfo {
                id: g.id().0,
                opened_at: g.opened_at().as_millis(),
                sealed_at: g.sealed_at().map(Timestamp::as_millis),
                ids: g.ids(),
                exact: g.id() >= st.exact_floor,
                filter: g.stats(),
                memory_bytes: g.filter().sizing().memory_bytes(),
            })
            .collect();
        let miss_all = generations
            .iter()
            .filter(|g| !g.exact)
            .fold(1.0, |acc, g| acc * (1.0 - g.filter.estimated_fp));
        Ok(NamespaceInfo {
            name: ns.name.to_string(),
            config: st.ring.config().clone(),
            estimated_fp: 1.0 - miss_all,
            memory_bytes: generations.iter().map(|g| g.memory_bytes).sum(),
            generations,
        })
    }

    /// Creates a namespace, or reconfigures an existing one.
    ///
    /// What a reconfiguration changes, and when:
    ///
    /// * `generation_span` applies at once, to the open generation too.
    /// * `generation_capacity` applies at once to when the open generation seals, and
    ///   with `fp_rate` sizes the filters of generations opened from then on; existing
    ///   filters keep their size.
    /// * A larger `generations` keeps more generations from then on; a smaller one
    ///   drops the oldest generations now.
    /// * A smaller `exact_generations` drops the exact tables that fall outside the
    ///   new horizon now (those generations answer `probable_duplicate` from then on);
    ///   a larger one keeps more tables as new generations arrive (tables already
    ///   dropped do not come back).
    ///
    /// A change that would drop generations or exact tables now is refused with
    /// [`Error::WouldDrop`]; [`configure_namespace_with`](Self::configure_namespace_with)
    /// and [`DropPolicy::DropNow`] allow it.
    ///
    /// The namespace's secret seed never changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`] for a bad name; [`Error::WouldDrop`]; storage
    /// errors (then nothing changed).
    pub fn configure_namespace(
        &self,
        namespace: &str,
        config: NamespaceConfig,
    ) -> Result<Configured, Error> {
        self.configure_namespace_with(namespace, config, DropPolicy::Refuse)
    }

    /// [`configure_namespace`](Self::configure_namespace), saying whether the change
    /// may forget remembered IDs at once.
    ///
    /// # Errors
    ///
    /// As [`configure_namespace`](Self::configure_namespace).
    pub fn configure_namespace_with(
        &self,
        namespace: &str,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<Configured, Error> {
        let name = NamespaceName::new(namespace)?;
        let _admin = lock(&self.inner.admin);
        if let Ok(ns) = self.namespace_handle(namespace) {
            self.reconfigure(&ns, config, policy)?;
            return Ok(Configured::Updated);
        }
        let ns = self.create_namespace(name, config)?;
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.to_owned(), Arc::new(ns));
        Ok(Configured::Created)
    }

    fn create_namespace(
        &self,
        name: NamespaceName,
        config: NamespaceConfig,
    ) -> Result<Namespace, Error> {
        let store = &self.inner.store;
        let next = match store.get_meta(records::NEXT_NS_KEY)? {
            Some(bytes) => u32::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                Error::Corrupt("record \"next-ns\" is not a 4-byte counter".into())
            })?),
            None => 1,
        };
        let id = NamespaceId(next);
        let following = next.checked_add(1).ok_or_else(|| {
            Error::Refused("namespace ids are exhausted (2^32 namespaces created)".into())
        })?;
        let seed = HashSeed::random()?;
        let now = self.inner.clock.now();
        let ring = GenerationRing::new(config.clone(), seed, now)?;
        let record = NamespaceRecord {
            v: RECORD_VERSION,
            id: id.0,
            name: name.to_string(),
            config,
            seed: seed.to_u64(),
        };
        let floor = GenerationId(1);
        let mut b = Batch::new();
        b.put_meta(records::NEXT_NS_KEY, &following.to_be_bytes());
        b.put_meta(&ns_key(name.as_str()), &records::encode(&record));
        b.put_meta(
            &ring_key(id),
            &records::encode(&RingRecord::of(&ring, floor)),
        );
        self.inner.write(&b, self.sync_writes())?;
        tracing::info!(namespace = %name, id = id.0, "namespace created");
        Ok(Namespace {
            name,
            id,
            seed,
            next_flight: AtomicU64::new(0),
            state: Mutex::new(State::new(ring, floor)),
        })
    }

    fn reconfigure(
        &self,
        ns: &Namespace,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<(), Error> {
        let mut st = lock(&ns.state);
        if st.deleted {
            return Err(Error::UnknownNamespace(ns.name.to_string()));
        }
        let mut next = st.ring.clone();
        let dropped = next.reconfigure(config.clone());
        let floor = exact_floor(&next, st.exact_floor);
        let lost_tables = st
            .ring
            .iter()
            .filter(|g| g.id() >= st.exact_floor && g.id() < floor)
            .filter(|g| !dropped.iter().any(|d| d.id() == g.id()))
            .count();
        if policy == DropPolicy::Refuse && (!dropped.is_empty() || lost_tables > 0) {
            return Err(Error::WouldDrop {
                generations: u32::try_from(dropped.len()).unwrap_or(u32::MAX),
                exact_tables: u32::try_from(lost_tables).unwrap_or(u32::MAX),
            });
        }
        let record = NamespaceRecord {
            v: RECORD_VERSION,
            id: ns.id.0,
            name: ns.name.to_string(),
            config,
            seed: ns.seed.to_u64(),
        };
        let mut b = Batch::new();
        b.put_meta(&ns_key(ns.name.as_str()), &records::encode(&record));
        b.put_meta(
            &ring_key(ns.id),
            &records::encode(&RingRecord::of(&next, floor)),
        );
        if floor > st.exact_floor {
            b.drop_marks(ns.id, floor);
        }
        self.inner.write(&b, self.sync_writes())?;
        st.ring = next;
        st.exact_floor = floor;
        drop(st);
        for g in &dropped {
            self.delete_snapshot_logged(ns, g.id());
        }
        Ok(())
    }

    /// Deletes a namespace with all its marks, snapshots and checkpoints.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`]; [`Error::Refused`] for `default`, which always
    /// exists; storage errors (then nothing changed).
    pub fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        if namespace == NamespaceName::DEFAULT {
            return Err(Error::Refused(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let _admin = lock(&self.inner.admin);
        let ns = self.namespace_handle(namespace)?;
        let mut st = lock(&ns.state);
        let mut b = Batch::new();
        b.delete_meta(&ns_key(namespace));
        b.delete_meta(&ring_key(ns.id));
        b.delete_meta(&clean_key(ns.id));
        b.delete_meta_prefix(&records::checkpoint_prefix(ns.id));
        b.drop_namespace(ns.id);
        self.inner.write(&b, self.sync_writes())?;
        st.deleted = true;
        let gens: Vec<GenerationId> = st.ring.iter().map(Generation::id).collect();
        drop(st);
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
        for g in gens {
            self.delete_snapshot_logged(&ns, g);
        }
        tracing::info!(namespace, "namespace deleted");
        Ok(())
    }

    /// Flushes everything to disk and snapshots each open generation, so the next
    /// start-up needs no scan. Further calls are refused.
    ///
    /// # Errors
    ///
    /// Storage errors. Marks acknowledged earlier are safe regardless: they are in
    /// the write-ahead log.
    pub fn close(&self) -> Result<(), Error> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let store = &self.inner.store;
        if store.persistent() {
            for ns in self.all_namespaces() {
                let mut st = lock(&ns.state);
                st.closed = true;
                if st.deleted {
                    continue;
                }
                let open = st.ring.current();
                store.save_snapshot(ns.id, open.id(), open.filter())?;
                let mut b = Batch::new();
                let clean = CleanRecord {
                    v: RECORD_VERSION,
                    generation: open.id().0,
                    ids: open.ids(),
                };
                b.put_meta(&clean_key(ns.id), &records::encode(&clean));
                self.inner.write(&b, true)?;
            }
        }
        // The last word on how long the open generations have been open.
        let mut b = Batch::new();
        self.inner.heartbeat(&mut b, true);
        self.inner.write(&b, true)?;
        store.flush()
    }

    /// Whether the store's writes are failing: `Some` from a failed write until a
    /// later one succeeds. (A daemon reports itself unready meanwhile.)
    #[must_use]
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.inner.health.failure()
    }

    /// Writes that failed since the tracker opened.
    #[must_use]
    pub fn storage_errors(&self) -> u64 {
        self.inner.health.errors()
    }

    /// Space the store uses on disk, in bytes, where known.
    #[must_use]
    pub fn disk_bytes(&self) -> Option<u64> {
        self.inner.store.disk_bytes()
    }
}

impl State {
    fn new(ring: GenerationRing, exact_floor: GenerationId) -> Self {
        Self {
            ring,
            exact_floor,
            inflight: HashMap::default(),
            flights: HashMap::new(),
            deleted: false,
            closed: false,
        }
    }
}

/// The exact floor after the ring changed: only the newest `exact_generations` keep
/// tables, tables never come back, and nothing below the oldest live generation has
/// one.
fn exact_floor(ring: &GenerationRing, old: GenerationId) -> GenerationId {
    let newest = ring.current().id().0;
    let horizon = newest.saturating_sub(u64::from(ring.config().exact_generations()) - 1);
    GenerationId(old.0.max(horizon).max(ring.oldest().id().0))
}
