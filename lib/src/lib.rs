//! Oncely answers one question for event consumers: **have I already processed this
//! event?**
//!
//! Delivery over a network is at-least-once at best, so consumers must be idempotent.
//! Oncely is the memory that makes them so: a ring of Bloom filters in RAM for speed,
//! exact ID tables in RocksDB for certainty, and an atomic check-and-mark.
//!
//! # Architecture
//!
//! * [`Tracker`]: the API. Namespaces, atomic batch check-and-mark with owner replay,
//!   claims, transactions, checkpoints, rotation and crash recovery.
//! * [`generation`]: a ring of filters per namespace that seals by capacity or time
//!   and forgets the oldest generation; [`config`] holds a namespace's validated
//!   configuration and its remembering guarantee.
//! * [`filter`]: the cache-line-blocked Bloom filter, with check-and-mark inserts and
//!   versioned, checksummed snapshots; [`sizing`] is the pure maths behind it.
//! * [`store`]: the small storage trait behind the exact tables, metadata and
//!   snapshots, with the RocksDB and in-memory backends.
//! * [`clock`]: injected time, so tests drive rotation and leases by hand.
//!
//! # Example
//!
//! ```
//! use oncely::{Durability, Tracker, Verdict};
//!
//! let tracker = Tracker::builder().durability(Durability::Memory).open()?;
//! let verdicts = tracker.check_and_mark("default", &["order-1042", "order-1043"], None)?;
//! assert_eq!(verdicts, [Verdict::New, Verdict::New]);
//! // A redelivery is a duplicate.
//! assert_eq!(tracker.check_and_mark("default", &["order-1042"], None)?, [Verdict::Duplicate]);
//! # Ok::<(), oncely::Error>(())
//! ```

/// A named fault-injection point. Built with the `failpoints` feature, an active point
/// makes the enclosing function return an injected I/O error (see the `fail` crate:
/// `fail::cfg("store.before-write", "return")`); otherwise it compiles to nothing.
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err($crate::Error::Io {
            path: concat!("<failpoint ", $name, ">").into(),
            source: std::io::Error::other("injected fault"),
        }))
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
}

pub(crate) use failpoint;

pub mod clock;
pub mod config;
mod error;
mod exact;
pub mod filter;
pub mod generation;
mod hash;
mod id;
#[cfg(feature = "postgres")]
pub mod postgres;
mod records;
mod ring_policy;
pub mod sizing;
pub mod store;
mod tracker;
mod verdict;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use config::{ConfigFields, HumanDuration, NamespaceConfig, NamespaceConfigBuilder};
pub use error::{Error, IdError, SnapshotError};
pub use exact::MAX_OWNER_LEN;
pub use filter::{BloomFilter, FilterStats};
pub use generation::{Generation, GenerationId, GenerationRing, Rotation, SealReason};
pub use hash::{HashSeed, IdHash};
pub use id::{EventId, MAX_ID_LEN, MAX_NAMESPACE_LEN, NamespaceName};
pub use sizing::{FilterSizing, Layout};
pub use store::{MemoryStore, RocksOptions, RocksStore, Store};
pub use tracker::{
    CallVerdicts, ClaimOutcome, Configured, DropPolicy, Durability, FilterBudget, GenerationInfo,
    MAX_LEASE, MAX_POSITION_LEN, NamespaceInfo, StorageFailure, StoreProbe, Tracker,
    TrackerBuilder, Transacted, Transaction,
};
pub use verdict::Verdict;

/// The README's Rust snippets, compiled and run as doctests so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
