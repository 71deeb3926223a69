//! Oncely answers one question for event consumers: **have I already processed this
//! event?**
//!
//! Delivery over a network is at-least-once at best, so consumers must be idempotent.
//! Oncely is the memory that makes them so: a ring of Bloom filters in RAM for speed,
//! exact ID tables in RocksDB for certainty, and an atomic check-and-mark.
//!
//! # Architecture
//!
//! * [`sizing`]: pure maths: bits and hashes for a capacity and false-positive rate.
//! * [`filter`]: the cache-blocked Bloom filter, with check-and-mark inserts and
//!   versioned, checksummed snapshots.
//! * [`generation`]: a ring of filters that seals by capacity or time and forgets the
//!   oldest generation.
//! * [`config`]: a namespace's validated configuration and its remembering guarantee.
//! * [`clock`]: injected time.
//!
//! # Example
//!
//! ```
//! use oncely::{GenerationRing, HashSeed, ManualClock, NamespaceConfig, Clock, Timestamp};
//!
//! let clock = ManualClock::new(Timestamp::from_millis(0));
//! let mut ring = GenerationRing::new(NamespaceConfig::default(), HashSeed::random()?, clock.now())?;
//! assert!(!ring.check_and_mark(b"order-1042", clock.now())?, "first delivery: new");
//! assert!(ring.check_and_mark(b"order-1042", clock.now())?, "redelivery: seen");
//! # Ok::<(), oncely::Error>(())
//! ```

pub mod clock;
pub mod config;
mod error;
mod exact;
pub mod filter;
pub mod generation;
mod hash;
mod id;
mod records;
pub mod sizing;
pub mod store;
mod tracker;
mod verdict;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use config::{HumanDuration, NamespaceConfig, NamespaceConfigBuilder};
pub use error::{Error, IdError, SnapshotError};
pub use exact::MAX_OWNER_LEN;
pub use filter::{BloomFilter, FilterStats};
pub use generation::{Generation, GenerationId, GenerationRing, Rotation, SealReason};
pub use hash::{HashSeed, IdHash};
pub use id::{EventId, MAX_ID_LEN, MAX_NAMESPACE_LEN, NamespaceName};
pub use sizing::{FilterSizing, Layout};
pub use store::{MemoryStore, RocksOptions, RocksStore, Store};
pub use tracker::{
    ClaimOutcome, Configured, Durability, GenerationInfo, MAX_LEASE, MAX_POSITION_LEN,
    NamespaceInfo, Tracker, TrackerBuilder, Transacted, Transaction,
};
pub use verdict::Verdict;
