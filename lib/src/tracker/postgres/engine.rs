//! The PostgreSQL engine behind the tracker's seam: each call of [`Engine`] is the
//! inherent method of the same name, in the module of its concern (marks in `ops`
//! and `mark`, checkpoints in `checkpoint`, forgets in `forget`, administration in
//! `admin`).

use std::sync::Arc;
use std::time::Duration;

use super::Pg;
use crate::clock::Clock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::exact::Owner;
use crate::id::EventId;
use crate::tracker::engine::{Engine, MarkCall};
use crate::tracker::{
    CallVerdicts, ClaimOutcome, Configured, DropPolicy, Durability, FilterBudget, NamespaceInfo,
    StorageFailure, StoreProbe,
};
use crate::verdict::Verdict;

impl Engine for Pg {
    fn check_and_mark(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        Self::check_and_mark(self, namespace, ids, owner, nonblocking)
    }

    fn check_and_mark_each(
        &self,
        namespace: &str,
        calls: &[MarkCall<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<CallVerdicts>>, Error> {
        Self::check_and_mark_each(self, namespace, calls, nonblocking)
    }

    fn check(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        nonblocking: bool,
    ) -> Result<Option<Vec<Verdict>>, Error> {
        Self::check(self, namespace, ids, nonblocking)
    }

    fn check_and_mark_with_checkpoint(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error> {
        Self::check_and_mark_with_checkpoint(self, namespace, ids, owner, consumer, position)
    }

    fn claim(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Owner<'_>,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        Self::claim(self, namespace, id, owner, lease)
    }

    fn complete(&self, namespace: &str, id: EventId<'_>, owner: Owner<'_>) -> Result<(), Error> {
        Self::complete(self, namespace, id, owner)
    }

    fn release(&self, namespace: &str, id: EventId<'_>, owner: Owner<'_>) -> Result<(), Error> {
        Self::release(self, namespace, id, owner)
    }

    fn forget(&self, namespace: &str, ids: &[EventId<'_>]) -> Result<Vec<bool>, Error> {
        Self::forget(self, namespace, ids)
    }

    fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Self::user_get(self, key)
    }

    fn set_checkpoint(&self, namespace: &str, consumer: &str, position: &str) -> Result<(), Error> {
        Self::set_checkpoint(self, namespace, consumer, position)
    }

    fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        Self::set_checkpoint_if(self, namespace, consumer, expected, position)
    }

    fn checkpoint(&self, namespace: &str, consumer: &str) -> Result<Option<String>, Error> {
        Self::checkpoint(self, namespace, consumer)
    }

    fn namespaces(&self) -> Vec<String> {
        Self::namespaces(self)
    }

    fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
        Self::namespace_info(self, namespace)
    }

    fn configure_namespace_with(
        &self,
        namespace: &str,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<Configured, Error> {
        Self::configure_namespace_with(self, namespace, config, policy)
    }

    fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        Self::delete_namespace(self, namespace)
    }

    fn tick(&self) -> Result<(), Error> {
        Self::tick(self)
    }

    fn rotate_namespace(&self, namespace: &str) -> Result<(), Error> {
        Self::rotate_namespace(self, namespace)
    }

    fn filter_budget(&self) -> FilterBudget {
        Self::filter_budget(self)
    }

    fn storage_failure(&self) -> Option<StorageFailure> {
        Self::storage_failure(self)
    }

    fn storage_errors(&self) -> u64 {
        Self::storage_errors(self)
    }

    fn rotations_deferred(&self) -> u64 {
        Self::rotations_deferred(self)
    }

    fn disk_bytes(&self) -> Option<u64> {
        Self::disk_bytes(self)
    }

    fn close(&self) -> Result<(), Error> {
        Self::close(self)
    }

    fn durability(&self) -> Durability {
        Self::durability(self)
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        Self::clock(self)
    }

    fn probe_store(&self) -> Result<StoreProbe, Error> {
        Self::probe_store(self)
    }
}
