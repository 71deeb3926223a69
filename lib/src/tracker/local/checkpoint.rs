//! Checkpoints on the embedded engine: a meta record per consumer, and the lock
//! that makes a write with a precondition atomic.
//!
//! A write with a precondition reads the stored position, decides
//! ([`precondition`]) and writes, holding [`Inner::checkpoints`] exclusively from
//! the read to the write. Every other write of a checkpoint (alone, beside a
//! check-and-mark, or in a transaction's batch) holds it shared while its batch is
//! written, so none can land between the read and the write; those writes still
//! run side by side and share RocksDB's group commit.

use std::sync::{PoisonError, RwLockReadGuard};

use super::Local;
use crate::error::Error;
use crate::records::checkpoint_prefix;
use crate::store::{Batch, NamespaceId};
use crate::tracker::checkpoint::{Write, precondition};

impl Local {
    /// See [`Tracker::set_checkpoint`](crate::Tracker::set_checkpoint).
    pub(crate) fn set_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let _ordered = self.checkpoint_writer();
        self.put(ns.id, consumer, position)
    }

    /// See [`Tracker::set_checkpoint_if`](crate::Tracker::set_checkpoint_if).
    pub(crate) fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        let ns = self.namespace_handle(namespace)?;
        let _alone = self
            .inner
            .checkpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let stored = self.stored(ns.id, consumer)?;
        match precondition(consumer, stored.as_deref(), expected, position)? {
            Write::Store => self.put(ns.id, consumer, position),
            Write::AlreadyThere => Ok(()),
        }
    }

    /// See [`Tracker::checkpoint`](crate::Tracker::checkpoint).
    pub(crate) fn checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        let ns = self.namespace_handle(namespace)?;
        self.stored(ns.id, consumer)
    }

    /// Held (shared) by every write of a checkpoint without a precondition while
    /// its batch is written.
    pub(super) fn checkpoint_writer(&self) -> RwLockReadGuard<'_, ()> {
        self.inner
            .checkpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stored(&self, ns: NamespaceId, consumer: &str) -> Result<Option<String>, Error> {
        self.inner
            .store
            .get_meta(&key(ns, consumer))?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| Error::Corrupt(format!("checkpoint of {consumer:?} is not UTF-8")))
            })
            .transpose()
    }

    fn put(&self, ns: NamespaceId, consumer: &str, position: &str) -> Result<(), Error> {
        let mut b = Batch::new();
        b.put_meta(&key(ns, consumer), position.as_bytes());
        self.inner.write(&b, self.sync_writes())
    }
}

/// A consumer's checkpoint record.
pub(super) fn key(ns: NamespaceId, consumer: &str) -> Vec<u8> {
    [checkpoint_prefix(ns).as_slice(), consumer.as_bytes()].concat()
}
