//! The seam between the tracker's front door and the engines that keep its state.
//!
//! [`Tracker`](super::Tracker) validates each call once: event IDs, owner tokens,
//! leases, consumer names and positions, each by the one function that owns the
//! rule. It then hands the validated inputs ([`EventId`], [`Owner`], a lease in
//! range) to the engine through [`Engine`], which both the embedded engine and
//! PostgreSQL implement. An engine looks the namespace up (so an unknown
//! namespace is its error), fingerprints owners with the namespace's seed, asks
//! `decide` what each ID's state means for the caller, and writes; it never
//! validates an input again.
//!
//! `transact` is the one call outside the trait: its closure's generic types
//! keep it out of an object-safe trait, so the front door validates its inputs
//! alike and calls the engine it has directly.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::Owner;
use crate::id::EventId;
use crate::verdict::Verdict;

use super::outcome::{CallVerdicts, ClaimOutcome, Configured, DropPolicy};
use super::{Durability, FilterBudget, NamespaceInfo, StorageFailure, StoreProbe};

/// One caller's validated check-and-mark, among several decided together.
pub(crate) type MarkCall<'a> = (Vec<EventId<'a>>, Option<Owner<'a>>);

/// What the tracker asks of the engine that keeps its state, every input
/// validated. Answers as [`Tracker`](super::Tracker)'s methods of the same names
/// document; `nonblocking` calls answer `Ok(None)`, having done nothing, where they
/// would have had to wait.
pub(crate) trait Engine: fmt::Debug + Send + Sync {
    fn check_and_mark(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error>;

    /// Valid calls only, in order: one answer each.
    fn check_and_mark_each(
        &self,
        namespace: &str,
        calls: &[MarkCall<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<CallVerdicts>>, Error>;

    fn check(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error>;

    fn check_and_mark_with_checkpoint(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error>;

    /// `lease` is within 1 ms ..= [`MAX_LEASE`](super::MAX_LEASE).
    fn claim(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error>;

    fn complete(&self, namespace: &str, id: EventId<'_>, owner: Owner<'_>) -> Result<(), Error>;

    fn release(&self, namespace: &str, id: EventId<'_>, owner: Owner<'_>) -> Result<(), Error>;

    fn forget(&self, namespace: &str, ids: &[EventId<'_>]) -> Result<Vec<bool>, Error>;

    fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    fn set_checkpoint(&self, namespace: &str, consumer: &str, position: &str) -> Result<(), Error>;

    fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error>;

    fn checkpoint(&self, namespace: &str, consumer: &str) -> Result<Option<String>, Error>;

    fn namespaces(&self) -> Vec<String>;

    fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error>;

    fn configure_namespace_with(
        &self,
        namespace: &str,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<Configured, Error>;

    fn delete_namespace(&self, namespace: &str) -> Result<(), Error>;

    fn tick(&self) -> Result<(), Error>;

    fn rotate_namespace(&self, namespace: &str) -> Result<(), Error>;

    fn filter_budget(&self) -> FilterBudget;

    fn storage_failure(&self) -> Option<StorageFailure>;

    fn storage_errors(&self) -> u64;

    /// Always 0 on an engine whose rotations never wait for another process.
    fn rotations_deferred(&self) -> u64 {
        0
    }

    fn disk_bytes(&self) -> Option<u64>;

    fn close(&self) -> Result<(), Error>;

    fn durability(&self) -> Durability;

    fn clock(&self) -> &Arc<dyn Clock>;

    fn probe_store(&self) -> Result<StoreProbe, Error>;
}
