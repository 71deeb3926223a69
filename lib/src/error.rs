//! The error type of the `oncely` crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in Oncely.
///
/// Validation errors ([`Error::InvalidConfig`], [`Error::InvalidId`],
/// [`Error::InvalidNamespace`], ...) mean the request was refused and nothing changed.
/// Storage errors ([`Error::Storage`], [`Error::Io`]) mean a write may not have
/// happened: nothing in that call was acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The offending field, as named in configuration files.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A whole configuration was asked for, but fields are missing (named here, in
    /// their documented order). Nothing changed.
    #[error(
        "missing configuration field(s): {}; a whole configuration names every field \
         (change some of them with a partial update instead)",
        .0.join(", ")
    )]
    MissingFields(Vec<&'static str>),

    /// An event ID in a batch is empty or too long; nothing in the batch was marked.
    #[error("invalid event id at index {index}: {reason}")]
    InvalidId {
        /// Position of the first bad ID in the batch.
        index: usize,
        /// What is wrong with it.
        reason: IdError,
    },

    /// A namespace name breaks the naming rules.
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidNamespace {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A snapshot could not be decoded.
    #[error("damaged snapshot{}: {source}", path_suffix(path.as_ref()))]
    Snapshot {
        /// The file it came from, when it came from a file.
        path: Option<PathBuf>,
        /// What is wrong with it.
        #[source]
        source: SnapshotError,
    },

    /// An argument is out of range (a checkpoint position, a lease, a consumer name).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument, as named over HTTP.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The ID's state does not allow the operation: completing or releasing a claim
    /// held by another owner, or one that does not exist.
    #[error("conflict: {0}")]
    Conflict(String),

    /// A checkpoint write's precondition failed: the stored position is neither the
    /// one the caller expected nor the one it writes. Nothing changed; read the
    /// checkpoint again (`current`) and resume from there.
    #[error(
        "the checkpoint of consumer {consumer:?} is {}, not {} as expected; nothing changed",
        describe_position(current.as_deref()),
        describe_position(expected.as_deref())
    )]
    CheckpointConflict {
        /// The consumer.
        consumer: String,
        /// The position the caller expected (`None`: that none was stored).
        expected: Option<String>,
        /// The stored position (`None`: none is stored).
        current: Option<String>,
    },

    /// The namespace does not exist.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),

    /// An owner token is empty or too long.
    #[error("invalid owner: {0}")]
    InvalidOwner(&'static str),

    /// The operation is not allowed (for example deleting the `default` namespace).
    #[error("{0}")]
    Refused(String),

    /// A reconfiguration would forget remembered IDs at once (generations leaving the
    /// ring, or exact tables dropped), and the caller did not allow it with
    /// [`DropPolicy::DropNow`](crate::DropPolicy::DropNow). Nothing changed.
    #[error(
        "the change would forget remembered IDs now: {generations} generation(s) would leave \
         the ring and {exact_tables} exact table(s) would be dropped; allow it explicitly \
         (drop_now) or change the configuration gradually"
    )]
    WouldDrop {
        /// Live generations that would leave the ring at once.
        generations: u32,
        /// Generations that would lose their exact table at once (and answer
        /// `probable_duplicate` from then on).
        exact_tables: u32,
    },

    /// A namespace's filters would not fit the filter memory budget (see
    /// [`TrackerBuilder::max_filter_bytes`](crate::TrackerBuilder::max_filter_bytes)).
    /// Nothing changed.
    #[error(
        "the namespace's filters would need up to {asked} bytes over its life, but \
         {in_use} of the {budget}-byte filter budget are charged to other namespaces"
    )]
    OverBudget {
        /// The namespace's footprint under the configuration asked for.
        asked: u64,
        /// Bytes charged to the other namespaces.
        in_use: u64,
        /// The budget.
        budget: u64,
    },

    /// Creating another namespace would exceed the namespace cap. Nothing changed.
    #[error("there are already {max} namespaces, the most this tracker allows")]
    TooManyNamespaces {
        /// The cap.
        max: u32,
    },

    /// The tracker was closed; no further operations are accepted.
    #[error("the tracker is closed")]
    Closed,

    /// A stored record is damaged or from an unknown format version.
    #[error("damaged store: {0}")]
    Corrupt(String),

    /// RocksDB refused to open the store: damaged files, or another process holds
    /// it. RocksDB's message names the damaged file where it knows it.
    #[error("cannot open the store in {}: {source}", path.display())]
    StoreOpen {
        /// The RocksDB directory.
        path: PathBuf,
        /// What RocksDB said.
        #[source]
        source: rocksdb::Error,
    },

    /// A non-blocking operation would have had to wait (a write stall, a read from
    /// disk); nothing was changed. Returned by [`Store`](crate::Store)'s
    /// non-blocking methods; [`Tracker::try_check_and_mark`](crate::Tracker::try_check_and_mark)
    /// answers `Ok(None)` instead.
    #[error("the operation would have had to wait")]
    WouldBlock,

    /// RocksDB failed: nothing in the call was acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),

    /// PostgreSQL failed or refused (the PostgreSQL store): nothing in the call was
    /// acknowledged, unless the connection was lost during `COMMIT`, when the
    /// outcome is unknown and a retry by the same owner tells (see
    /// [`crate::postgres`]).
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    /// PostgreSQL could not be reached or did not answer in time: no connection
    /// could be had (the pool's wait ran out, or no host answered), or the call's
    /// deadline passed (then a call that was committing may have committed: a
    /// retry with the same owner token tells).
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),

    /// The call could not run now and changed nothing: another transaction held
    /// what it needed (one of its IDs, or its namespace during a rotation) past the
    /// store's lock timeout, or its namespace's open generation is full and waits
    /// for a rotation that cannot run yet. Retry shortly.
    #[error("busy: {0}")]
    Busy(String),

    /// The transaction the call ran in must be rolled back and retried as a whole:
    /// PostgreSQL could not serialise it (its snapshot predates a change it would
    /// have had to see, such as another node's rotation of the namespace or another
    /// transaction's mark of one of its IDs), or chose it as a deadlock's victim.
    /// Nothing of it may be committed.
    #[error("roll the transaction back and retry it: {0}")]
    RetryTransaction(String),

    /// An I/O operation on a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn describe_position(position: Option<&str>) -> String {
    position.map_or_else(|| "unset".to_owned(), |p| format!("at {p:?}"))
}

fn path_suffix(path: Option<&PathBuf>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// Why an event ID was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The ID has no bytes.
    #[error("empty")]
    Empty,
    /// The ID is longer than [`crate::MAX_ID_LEN`] bytes.
    #[error("{len} bytes, over the limit of {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a filter snapshot could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// It does not start with the snapshot magic bytes.
    #[error("not an Oncely filter snapshot (bad magic bytes)")]
    BadMagic,
    /// It was written by a format version this build cannot read.
    #[error("unsupported snapshot format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the snapshot.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// It is shorter or longer than its header says.
    #[error("length {found} bytes, expected {expected}")]
    Length {
        /// Bytes present.
        found: usize,
        /// Bytes the header calls for.
        expected: usize,
    },
    /// Its checksum does not match its contents.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum in the snapshot.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// Its header describes an impossible filter.
    #[error("invalid parameters: {0}")]
    Parameters(String),
}
