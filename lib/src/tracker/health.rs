//! The store's health, as the tracker's own writes see it.
//!
//! A store can fail every write while reads still work (a full disk, a RocksDB
//! background error, no file descriptors left): a load balancer must then stop
//! sending marks to this node, and an operator must see it. The tracker records the
//! outcome of every write it makes; a failure stands until a later write succeeds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::Timestamp;
use crate::error::Error;

/// The store's writes are failing: since when, and the last error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageFailure {
    /// The first failed write of this run of failures, on the tracker's clock.
    pub since: Timestamp,
    /// The last failure's message.
    pub error: String,
}

/// Where a tracker's store is, as a probe just saw it (see
/// [`Tracker::probe_store`](crate::Tracker::probe_store)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreProbe {
    /// `rocksdb`, `memory` or `postgres`.
    pub kind: &'static str,
    /// The server the tracker is connected to (`host:port`), for a remote store.
    pub host: Option<String>,
    /// How long the probe's round trip took, for a remote store.
    pub round_trip: Option<std::time::Duration>,
}

/// Write outcomes: a flag for the hot path, the failure's details beside it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: AtomicBool,
    failure: Mutex<Option<StorageFailure>>,
    errors: AtomicU64,
}

impl Health {
    /// Records one write's outcome. A write that gave up ([`Error::WouldBlock`])
    /// says nothing about the store's health.
    pub(crate) fn record(&self, now: impl FnOnce() -> Timestamp, result: &Result<(), Error>) {
        match result {
            Ok(()) => {
                // One relaxed load per successful write; the lock only on recovery.
                if self.failing.load(Ordering::Relaxed) {
                    *self
                        .failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                    self.failing.store(false, Ordering::Relaxed);
                }
            }
            Err(Error::WouldBlock) => {}
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut failure = self
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let since = failure.as_ref().map_or_else(now, |f| f.since);
                *failure = Some(StorageFailure {
                    since,
                    error: e.to_string(),
                });
                self.failing.store(true, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn failure(&self) -> Option<StorageFailure> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
