//! The tracker: the dedup authority's API, over the store its state lives in.
//!
//! [`Tracker`] is one API, with the same semantics and promises, over the engines
//! that keep its state: the embedded one (filters in memory, exact tables and claims
//! in RocksDB, or in memory for tests; see its module docs for how a batch is
//! decided, rotation and start-up). What an ID's state means for a caller is decided
//! in one place, `decide`, whichever the engine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::Owner;
use crate::id::EventId;
use crate::verdict::Verdict;
use engine::{Engine, MarkCall};

mod budget;
mod builder;
pub(crate) mod checkpoint;
pub(crate) mod decide;
mod engine;
mod health;
mod info;
mod local;
mod outcome;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod transaction;

pub use budget::FilterBudget;
pub use builder::{Durability, TrackerBuilder};
pub use checkpoint::MAX_POSITION_LEN;
pub use health::{StorageFailure, StoreProbe};
pub use info::{GenerationInfo, NamespaceInfo};
pub(crate) use outcome::check_lease;
pub use outcome::{CallVerdicts, ClaimOutcome, Configured, DropPolicy, MAX_LEASE, Transacted};
pub use transaction::Transaction;

/// The dedup authority: namespaces, their generations and exact tables, claims, and
/// atomic check-and-mark. Cheap to clone; clones share everything.
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
    backend: Backend,
}

/// The engine a tracker runs on.
#[derive(Clone)]
enum Backend {
    Local(local::Local),
    #[cfg(feature = "postgres")]
    Postgres(postgres::Pg),
}

impl Backend {
    /// The engine, through the seam every call but `transact` goes by.
    fn engine(&self) -> &dyn Engine {
        match self {
            Self::Local(t) => t,
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t,
        }
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.backend.engine().fmt(f)
    }
}

/// A blocking call's answer (only non-blocking calls give up).
fn answered<T>(answer: Result<Option<T>, Error>) -> Result<T, Error> {
    answer.map(|a| a.expect("a blocking call answers"))
}

/// Validates each call of a [`Tracker::check_and_mark_each`] on its own: the valid
/// ones, in order, and each call's refusal or its place among them.
fn validate_each<'a, T: AsRef<[u8]>>(
    calls: &'a [(&'a [T], Option<&'a str>)],
) -> (Vec<MarkCall<'a>>, Vec<Result<(), Error>>) {
    let mut valid = Vec::with_capacity(calls.len());
    let checked = calls
        .iter()
        .map(|(ids, owner)| {
            valid.push((EventId::batch(ids)?, Owner::maybe(*owner)?));
            Ok(())
        })
        .collect();
    (valid, checked)
}

/// The answers of the valid calls put back among the refusals, in the callers'
/// order.
fn merge_each(checked: Vec<Result<(), Error>>, answers: Vec<CallVerdicts>) -> Vec<CallVerdicts> {
    let mut answers = answers.into_iter();
    checked
        .into_iter()
        .map(|c| c.and_then(|()| answers.next().expect("one answer per valid call")))
        .collect()
}

impl Tracker {
    /// Checks and marks a batch of IDs atomically per ID: among any number of
    /// concurrent callers marking the same ID, exactly one gets [`Verdict::New`].
    ///
    /// With an `owner`, the same owner marking an ID again gets
    /// [`Verdict::Replayed`] (its original `new`) instead of `duplicate`, as long as
    /// the mark is inside the exact horizon: a client whose response was lost can
    /// retry safely. An owner token must identify one delivery attempt of one event
    /// (draw a fresh one per delivery, reuse it only to retry the same call), never a
    /// worker: a genuine redelivery to a worker that reused its token would come back
    /// `Replayed` and be processed twice. Verdicts come back in the order of `ids`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`], [`Error::InvalidOwner`] or [`Error::UnknownNamespace`]
    /// before anything is marked; storage errors, in which case nothing of the batch
    /// was marked (a call writes once, all of its marks or none).
    pub fn check_and_mark<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let (ids, owner) = (EventId::batch(ids)?, Owner::maybe(owner)?);
        answered(
            self.backend
                .engine()
                .check_and_mark(namespace, &ids, owner, false),
        )
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
        let (ids, owner) = (EventId::batch(ids)?, Owner::maybe(owner)?);
        self.backend
            .engine()
            .check_and_mark(namespace, &ids, owner, true)
    }

    /// Several callers' [`check_and_mark`](Self::check_and_mark) calls on one
    /// namespace, decided together and written in one write, as one batch would be:
    /// every ID is decided against the state before the calls, except that an ID an
    /// earlier call marks new is, for every later call, a duplicate (or replayed, for
    /// the same owner). Each call is validated on its own: a bad one is refused
    /// alone, in its place in the answer. A daemon coalesces concurrent small
    /// requests this way, sharing one decision pass and one write among them.
    ///
    /// On PostgreSQL the calls go in waves, in order: the longest run of calls
    /// whose IDs are disjoint is decided as one batch (in shared statements, one
    /// commit for many calls), the next run once it is decided. So the verdicts are
    /// the ones above; a wave fails or commits as a whole, and, as in one batch, no
    /// generation seals between the calls of a wave.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`]; a storage error, in which case none of the calls'
    /// marks was written (on PostgreSQL, a storage error is the failed wave's
    /// calls' own `Err`, and the waves before it stand, as their answers say).
    pub fn check_and_mark_each<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        calls: &[(&[T], Option<&str>)],
    ) -> Result<Vec<CallVerdicts>, Error> {
        let (valid, checked) = validate_each(calls);
        let answers = answered(
            self.backend
                .engine()
                .check_and_mark_each(namespace, &valid, false),
        )?;
        Ok(merge_each(checked, answers))
    }

    /// [`check_and_mark_each`](Self::check_and_mark_each) for a caller that must not
    /// block, as [`try_check_and_mark`](Self::try_check_and_mark): `Ok(None)`, with
    /// nothing marked, where it would have had to wait.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark_each`](Self::check_and_mark_each).
    pub fn try_check_and_mark_each<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        calls: &[(&[T], Option<&str>)],
    ) -> Result<Option<Vec<CallVerdicts>>, Error> {
        let (valid, checked) = validate_each(calls);
        Ok(self
            .backend
            .engine()
            .check_and_mark_each(namespace, &valid, true)?
            .map(|answers| merge_each(checked, answers)))
    }

    /// Answers like [`check_and_mark`](Self::check_and_mark) without marking: `New`
    /// here means unseen.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark`](Self::check_and_mark).
    pub fn check<T: AsRef<[u8]>>(&self, namespace: &str, ids: &[T]) -> Result<Vec<Verdict>, Error> {
        answered(
            self.backend
                .engine()
                .check(namespace, &EventId::batch(ids)?, false),
        )
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
        self.backend
            .engine()
            .check(namespace, &EventId::batch(ids)?, true)
    }

    /// [`check_and_mark`](Self::check_and_mark) that also stores a checkpoint in the
    /// same atomic write as the batch's new marks (alone when none is new), so
    /// "processed up to here" and "these IDs are done" never disagree after a crash.
    ///
    /// # Errors
    ///
    /// As [`check_and_mark`](Self::check_and_mark) and
    /// [`set_checkpoint`](Self::set_checkpoint); on error neither is stored.
    pub fn check_and_mark_with_checkpoint<T: AsRef<[u8]>>(
        &self,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error> {
        checkpoint::validate_checkpoint(consumer, position)?;
        let (ids, owner) = (EventId::batch(ids)?, Owner::maybe(owner)?);
        self.backend
            .engine()
            .check_and_mark_with_checkpoint(namespace, &ids, owner, consumer, position)
    }

    /// Claims an ID for `owner` for `lease`.
    ///
    /// The same owner claiming again renews its lease (`replayed`; a renewal never
    /// shortens the lease held); a lease that ran out goes to the next claimant
    /// (`taken_over`). While a claim is live, other owners' claims, checks and marks
    /// answer in progress, whatever rotations happen meanwhile. A claim is not a
    /// mark: it does not count towards `generation_capacity`, and once released or
    /// expired uncompleted it leaves no trace.
    ///
    /// # Errors
    ///
    /// Invalid ID, owner, lease (zero or over [`MAX_LEASE`]) or namespace; storage
    /// errors (then nothing was claimed).
    pub fn claim(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let (id, owner) = (EventId::one(id.as_ref())?, Owner::new(owner)?);
        check_lease(lease)?;
        self.backend.engine().claim(namespace, id, owner, lease)
    }

    /// Turns `owner`'s claim into a done mark, in the open generation. Completing
    /// twice is fine. A claim whose lease ran out can still be completed as long as
    /// no other owner has taken it since (and the tracker still remembers it: see the
    /// module docs).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when another owner holds or completed the ID, or there is
    /// no claim; validation and storage errors as for [`claim`](Self::claim).
    pub fn complete(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        let (id, owner) = (EventId::one(id.as_ref())?, Owner::new(owner)?);
        self.backend.engine().complete(namespace, id, owner)
    }

    /// Forgets `owner`'s claim so that a redelivery can take the ID. Releasing an ID
    /// with no claim of this owner's (never claimed, already released, or another
    /// owner's expired claim) is fine: a retried release succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when another owner holds a live claim or the ID is done;
    /// validation and storage errors as for [`claim`](Self::claim).
    pub fn release(&self, namespace: &str, id: impl AsRef<[u8]>, owner: &str) -> Result<(), Error> {
        let (id, owner) = (EventId::one(id.as_ref())?, Owner::new(owner)?);
        self.backend.engine().release(namespace, id, owner)
    }

    /// Forgets IDs, so that the next caller marking one gets it as new: for replays
    /// an operator orders, and for erasure requests. One answer per ID, in order:
    /// `true` where an exact mark was deleted; `false` where nothing exact
    /// remembered the ID (never seen, or only a Bloom-only generation's filter
    /// holds it: its bits cannot be taken out), where a live claim holds it (the
    /// claim is left alone), for a repeated ID, and for a retried forget whose
    /// first attempt worked.
    ///
    /// A forgotten ID stays forgotten once its generation turns Bloom-only: the
    /// generation's filter is rebuilt from its exact table, without the forgotten
    /// IDs, before that table is dropped. (An older Bloom-only generation whose
    /// filter happens to hold the ID too, a false positive at most `fp_rate`
    /// likely, still answers `probable_duplicate` for it.)
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] or [`Error::UnknownNamespace`] before anything changes;
    /// storage errors, in which case nothing was forgotten (a call writes once).
    pub fn forget<T: AsRef<[u8]>>(&self, namespace: &str, ids: &[T]) -> Result<Vec<bool>, Error> {
        self.backend
            .engine()
            .forget(namespace, &EventId::batch(ids)?)
    }

    /// Marks one event and applies the closure's writes in the same atomic batch,
    /// only if the event is new.
    ///
    /// The closure runs only for a new event, and its writes ([`Transaction::put`],
    /// [`Transaction::delete`], [`Transaction::set_checkpoint`]) land together with
    /// the mark or not at all. If the event was already marked (including by the same
    /// owner: a replayed transaction was applied the first time), nothing is written
    /// and the verdict says why. If the closure fails, nothing is written and the
    /// event stays unmarked.
    ///
    /// Transactions run one at a time per tracker, so reads inside one see every
    /// earlier transaction's writes: read-modify-write of a balance is safe. User keys
    /// are shared by all namespaces; write them only through transactions. The closure
    /// must not call the tracker.
    ///
    /// ```
    /// use oncely::{Durability, Tracker, Transacted};
    ///
    /// let tracker = Tracker::builder().durability(Durability::Memory).open()?;
    /// let credit = |event: &str, amount: i64| {
    ///     tracker.transact("default", event, None, |tx| {
    ///         let balance = tx
    ///             .get(b"balance:alice")?
    ///             .map_or(0, |v| String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0));
    ///         tx.put("balance:alice", (balance + amount).to_string());
    ///         Ok::<_, oncely::Error>(())
    ///     })
    /// };
    /// assert!(matches!(credit("deposit-1", 5)?, Transacted::Applied(())));
    /// assert!(matches!(credit("deposit-1", 5)?, Transacted::Skipped(_)), "redelivery");
    /// assert_eq!(tracker.user_get(b"balance:alice")?, Some(b"5".to_vec()));
    /// # Ok::<(), oncely::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The closure's error, or an [`Error`] (validation, storage) converted into `E`.
    pub fn transact<T, E, F>(
        &self,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: Option<&str>,
        f: F,
    ) -> Result<Transacted<T>, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    {
        let id = EventId::one(id.as_ref())?;
        let owner = Owner::maybe(owner)?;
        match &self.backend {
            Backend::Local(t) => t.transact(namespace, id, owner, f),
            #[cfg(feature = "postgres")]
            Backend::Postgres(t) => t.transact(namespace, id, owner, f),
        }
    }

    /// A user key's value, as transactions left it.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.backend.engine().user_get(key)
    }

    /// Stores a consumer's last processed position in a namespace, durably (as a
    /// mark is). Resume from it with an inclusive lower bound: at-least-once, made
    /// effectively-once by check-and-mark.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a consumer name that breaks the namespace naming
    /// rules or a position that is empty or over 1 KiB; unknown namespace; storage
    /// errors.
    pub fn set_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        checkpoint::validate_checkpoint(consumer, position)?;
        self.backend
            .engine()
            .set_checkpoint(namespace, consumer, position)
    }

    /// Stores a consumer's position only if the stored one is `expected` (`None`:
    /// only if none is stored yet): a compare-and-set, so that two instances of one
    /// consumer never move its checkpoint over each other. Each reads the
    /// checkpoint, processes from there, and writes its new position expecting the
    /// one it read; the one that comes second is refused and reads again.
    ///
    /// When `position` is stored already the call succeeds whatever was expected
    /// and writes nothing, so a retry whose first attempt landed is safe. Other
    /// writes of the checkpoint ([`set_checkpoint`](Self::set_checkpoint),
    /// [`check_and_mark_with_checkpoint`](Self::check_and_mark_with_checkpoint),
    /// a transaction's) are ordered with it: none lands between its read and its
    /// write.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointConflict`] with the stored position when it is neither
    /// `expected` nor `position` (nothing changed); [`Error::InvalidArgument`] for a
    /// bad consumer name, position or expected position; unknown namespace; storage
    /// errors.
    pub fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        checkpoint::validate_conditional(consumer, expected, position)?;
        self.backend
            .engine()
            .set_checkpoint_if(namespace, consumer, expected, position)
    }

    /// A consumer's stored position, if any.
    ///
    /// # Errors
    ///
    /// Invalid consumer name, unknown namespace, storage errors.
    pub fn checkpoint(&self, namespace: &str, consumer: &str) -> Result<Option<String>, Error> {
        checkpoint::validate_consumer(consumer)?;
        self.backend.engine().checkpoint(namespace, consumer)
    }

    /// Names of all namespaces, sorted.
    #[must_use]
    pub fn namespaces(&self) -> Vec<String> {
        self.backend.engine().namespaces()
    }

    /// Configuration and live statistics of a namespace.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`].
    pub fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
        self.backend.engine().namespace_info(namespace)
    }

    /// Creates a namespace, or reconfigures an existing one.
    ///
    /// What a reconfiguration changes, and when:
    ///
    /// * `generation_span` applies at once, to the open generation too.
    /// * `generation_capacity` and `fp_rate` size the filters of generations opened
    ///   from then on. The open generation seals at the new capacity, or earlier
    ///   when its filter would otherwise exceed the rate each generation must now
    ///   meet, and never later than its filter's own capacity: no filter ever holds
    ///   more IDs than it was sized for. A generation whose filter was built for a
    ///   looser rate is rebuilt from its exact table before it turns Bloom-only;
    ///   generations already Bloom-only keep the rate they were built for until they
    ///   leave the ring.
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
    /// [`Error::InvalidNamespace`] for a bad name; [`Error::WouldDrop`];
    /// [`Error::Closed`] once the tracker is closed; storage errors (then nothing
    /// changed).
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
        self.backend
            .engine()
            .configure_namespace_with(namespace, config, policy)
    }

    /// Deletes a namespace with all its marks, claims, snapshots and checkpoints.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`]; [`Error::Refused`] for `default`, which always
    /// exists; storage errors (then nothing changed).
    pub fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        self.backend.engine().delete_namespace(namespace)
    }

    /// Seals every generation whose span has passed, catches up what rotations and
    /// settled writes left to do, and forgets long-expired claims. The daemon calls
    /// this from a background ticker, so idle namespaces rotate too.
    ///
    /// It also records the clock's heartbeat (at most once per second; a tiny,
    /// unsynced write) when no mark did, so that the running time a crash can make a
    /// restart miss stays about a second even while the tracker is idle.
    ///
    /// # Errors
    ///
    /// The first storage error; other namespaces are still ticked.
    pub fn tick(&self) -> Result<(), Error> {
        self.backend.engine().tick()
    }

    /// Seals the open generation of a namespace now.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`], or a storage error (the ring is then unchanged).
    pub fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        self.backend.engine().rotate_namespace(namespace)
    }

    /// The filter memory budget, what namespaces are charged against it, and what
    /// their filters take now. Cheap: a few reads per namespace.
    #[must_use]
    pub fn filter_budget(&self) -> FilterBudget {
        self.backend.engine().filter_budget()
    }

    /// Whether the store's writes are failing: `Some` from a failed write until a
    /// later one succeeds. (A daemon reports itself unready meanwhile.)
    #[must_use]
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.backend.engine().storage_failure()
    }

    /// Writes that failed since the tracker opened.
    #[must_use]
    pub fn storage_errors(&self) -> u64 {
        self.backend.engine().storage_errors()
    }

    /// Rotations left for later because their namespace was held (on PostgreSQL, a
    /// transaction marking in it kept the rotation from its lock past a short
    /// wait); each is tried again at the next tick or mark. Always 0 on the
    /// embedded store, whose rotations never wait for another process.
    #[must_use]
    pub fn rotations_deferred(&self) -> u64 {
        self.backend.engine().rotations_deferred()
    }

    /// Space the store uses on disk, in bytes, where known.
    #[must_use]
    pub fn disk_bytes(&self) -> Option<u64> {
        self.backend.engine().disk_bytes()
    }

    /// Lets the writes in flight settle, then flushes everything to disk and
    /// snapshots every generation, so the next start-up needs no scan. Further calls
    /// are refused (configuration included).
    ///
    /// # Errors
    ///
    /// Storage errors. Marks acknowledged earlier are safe regardless: they are in
    /// the write-ahead log.
    pub fn close(&self) -> Result<(), Error> {
        self.backend.engine().close()
    }

    /// The durability mode.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.backend.engine().durability()
    }

    /// The clock the tracker reads. (Times the tracker reports, lease ends and
    /// generation opening times, are on this clock.)
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.backend.engine().clock()
    }

    /// Oncely's operations inside a transaction you opened on your own PostgreSQL
    /// connection (see [`crate::postgres`]).
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] for a tracker that is not on PostgreSQL.
    #[cfg(feature = "postgres")]
    pub fn in_transaction(&self) -> Result<postgres::InTransaction, Error> {
        match &self.backend {
            Backend::Postgres(pg) => Ok(postgres::InTransaction { pg: pg.clone() }),
            Backend::Local(_) => Err(Error::Refused(
                "marks inside your transaction need the PostgreSQL store".into(),
            )),
        }
    }

    /// Probes the store: which server a remote store is on, and the round trip to
    /// it. For the embedded store, answers at once without a round trip.
    ///
    /// # Errors
    ///
    /// The store cannot be reached (recorded in
    /// [`storage_failure`](Self::storage_failure) too).
    pub fn probe_store(&self) -> Result<StoreProbe, Error> {
        self.backend.engine().probe_store()
    }
}
