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

    fn rotations_deferred(&self) -> u64;

    fn disk_bytes(&self) -> Option<u64>;

    fn close(&self) -> Result<(), Error>;

    fn durability(&self) -> Durability;

    fn clock(&self) -> &Arc<dyn Clock>;

    fn probe_store(&self) -> Result<StoreProbe, Error>;
}

/// Implements [`Engine`] for an engine whose inherent methods of the same names
/// take the same validated inputs: every call forwards, so that the trait states
/// the contract and each engine keeps each call in the module of its concern.
macro_rules! forward_engine {
    ($engine:ty) => {
        impl $crate::tracker::engine::Engine for $engine {
            fn check_and_mark(
                &self,
                namespace: &str,
                ids: &[$crate::id::EventId<'_>],
                owner: Option<$crate::exact::Owner<'_>>,
                nonblocking: bool,
            ) -> Result<Option<Vec<$crate::verdict::Verdict>>, $crate::error::Error> {
                <$engine>::check_and_mark(self, namespace, ids, owner, nonblocking)
            }

            fn check_and_mark_each(
                &self,
                namespace: &str,
                calls: &[$crate::tracker::engine::MarkCall<'_>],
                nonblocking: bool,
            ) -> Result<Option<Vec<$crate::tracker::CallVerdicts>>, $crate::error::Error> {
                <$engine>::check_and_mark_each(self, namespace, calls, nonblocking)
            }

            fn check(
                &self,
                namespace: &str,
                ids: &[$crate::id::EventId<'_>],
                nonblocking: bool,
            ) -> Result<Option<Vec<$crate::verdict::Verdict>>, $crate::error::Error> {
                <$engine>::check(self, namespace, ids, nonblocking)
            }

            fn check_and_mark_with_checkpoint(
                &self,
                namespace: &str,
                ids: &[$crate::id::EventId<'_>],
                owner: Option<$crate::exact::Owner<'_>>,
                consumer: &str,
                position: &str,
            ) -> Result<Vec<$crate::verdict::Verdict>, $crate::error::Error> {
                <$engine>::check_and_mark_with_checkpoint(
                    self, namespace, ids, owner, consumer, position,
                )
            }

            fn claim(
                &self,
                namespace: &str,
                id: $crate::id::EventId<'_>,
                owner: $crate::exact::Owner<'_>,
                lease: ::std::time::Duration,
            ) -> Result<$crate::tracker::ClaimOutcome, $crate::error::Error> {
                <$engine>::claim(self, namespace, id, owner, lease)
            }

            fn complete(
                &self,
                namespace: &str,
                id: $crate::id::EventId<'_>,
                owner: $crate::exact::Owner<'_>,
            ) -> Result<(), $crate::error::Error> {
                <$engine>::complete(self, namespace, id, owner)
            }

            fn release(
                &self,
                namespace: &str,
                id: $crate::id::EventId<'_>,
                owner: $crate::exact::Owner<'_>,
            ) -> Result<(), $crate::error::Error> {
                <$engine>::release(self, namespace, id, owner)
            }

            fn forget(
                &self,
                namespace: &str,
                ids: &[$crate::id::EventId<'_>],
            ) -> Result<Vec<bool>, $crate::error::Error> {
                <$engine>::forget(self, namespace, ids)
            }

            fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, $crate::error::Error> {
                <$engine>::user_get(self, key)
            }

            fn set_checkpoint(
                &self,
                namespace: &str,
                consumer: &str,
                position: &str,
            ) -> Result<(), $crate::error::Error> {
                <$engine>::set_checkpoint(self, namespace, consumer, position)
            }

            fn set_checkpoint_if(
                &self,
                namespace: &str,
                consumer: &str,
                expected: Option<&str>,
                position: &str,
            ) -> Result<(), $crate::error::Error> {
                <$engine>::set_checkpoint_if(self, namespace, consumer, expected, position)
            }

            fn checkpoint(
                &self,
                namespace: &str,
                consumer: &str,
            ) -> Result<Option<String>, $crate::error::Error> {
                <$engine>::checkpoint(self, namespace, consumer)
            }

            fn namespaces(&self) -> Vec<String> {
                <$engine>::namespaces(self)
            }

            fn namespace_info(
                &self,
                namespace: &str,
            ) -> Result<$crate::tracker::NamespaceInfo, $crate::error::Error> {
                <$engine>::namespace_info(self, namespace)
            }

            fn configure_namespace_with(
                &self,
                namespace: &str,
                config: $crate::config::NamespaceConfig,
                policy: $crate::tracker::DropPolicy,
            ) -> Result<$crate::tracker::Configured, $crate::error::Error> {
                <$engine>::configure_namespace_with(self, namespace, config, policy)
            }

            fn delete_namespace(&self, namespace: &str) -> Result<(), $crate::error::Error> {
                <$engine>::delete_namespace(self, namespace)
            }

            fn tick(&self) -> Result<(), $crate::error::Error> {
                <$engine>::tick(self)
            }

            fn rotate_namespace(&self, namespace: &str) -> Result<(), $crate::error::Error> {
                <$engine>::rotate_namespace(self, namespace)
            }

            fn filter_budget(&self) -> $crate::tracker::FilterBudget {
                <$engine>::filter_budget(self)
            }

            fn storage_failure(&self) -> Option<$crate::tracker::StorageFailure> {
                <$engine>::storage_failure(self)
            }

            fn storage_errors(&self) -> u64 {
                <$engine>::storage_errors(self)
            }

            fn rotations_deferred(&self) -> u64 {
                <$engine>::rotations_deferred(self)
            }

            fn disk_bytes(&self) -> Option<u64> {
                <$engine>::disk_bytes(self)
            }

            fn close(&self) -> Result<(), $crate::error::Error> {
                <$engine>::close(self)
            }

            fn durability(&self) -> $crate::tracker::Durability {
                <$engine>::durability(self)
            }

            fn clock(&self) -> &::std::sync::Arc<dyn $crate::clock::Clock> {
                <$engine>::clock(self)
            }

            fn probe_store(&self) -> Result<$crate::tracker::StoreProbe, $crate::error::Error> {
                <$engine>::probe_store(self)
            }
        }
    };
}

pub(crate) use forward_engine;
