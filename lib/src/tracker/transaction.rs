//! Transactional marks and checkpoints.
//!
//! A [`Transaction`] marks one event and writes the caller's own keys in the same
//! atomic RocksDB batch: a read model kept beside the marks changes exactly once per
//! event, whatever the redeliveries and crashes. A checkpoint is a consumer's last
//! processed position, written durably, alone or in the same batch as marks.

use std::collections::BTreeMap;

use super::decide::{Ask, Decision};
use super::mark::Mode;
use super::single::One;
use super::{Tracker, lock};
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::id::EventId;
use crate::records::checkpoint_prefix;
use crate::store::{Batch, NamespaceId};
use crate::verdict::Verdict;

/// The longest checkpoint position, in bytes.
pub const MAX_POSITION_LEN: usize = 1024;

/// The outcome of [`Tracker::transact`].
#[must_use = "says whether the transaction's writes were applied"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transacted<T> {
    /// The event was new: the closure ran and its writes were applied with the mark.
    Applied(T),
    /// The event was not new (the verdict says why): nothing was written.
    Skipped(Verdict),
}

/// The caller's writes inside [`Tracker::transact`]. Reads see the transaction's own
/// writes, then the store.
#[derive(Debug)]
pub struct Transaction<'a> {
    tracker: &'a Tracker,
    ns: NamespaceId,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    checkpoints: Vec<(String, String)>,
}

impl Transaction<'_> {
    /// A user key's value.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.tracker.inner.store.get_user(key),
        }
    }

    /// Sets a user key.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    /// Deletes a user key.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// Records a consumer's checkpoint with the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad consumer name or position.
    pub fn set_checkpoint(&mut self, consumer: &str, position: &str) -> Result<(), Error> {
        validate_checkpoint(consumer, position)?;
        self.checkpoints
            .push((consumer.to_owned(), position.to_owned()));
        Ok(())
    }

    fn into_batch(self, batch: &mut Batch) {
        for (key, value) in &self.writes {
            match value {
                Some(v) => batch.put_user(key, v),
                None => batch.delete_user(key),
            }
        }
        for (consumer, position) in &self.checkpoints {
            batch.put_meta(&checkpoint_key(self.ns, consumer), position.as_bytes());
        }
    }
}

impl Tracker {
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
        let id =
            EventId::new(id.as_ref()).map_err(|reason| Error::InvalidId { index: 0, reason })?;
        let ns = self.namespace_handle(namespace)?;
        let me = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        let _serial = lock(&self.inner.transactions);
        let held = match self.decide_one(&ns, id.as_bytes(), |_| Ask::Mark(me))? {
            One::Answered(Decision::Verdict(verdict)) => {
                return Ok(Transacted::Skipped(match verdict {
                    Verdict::InProgress { until } => Verdict::InProgress {
                        until: self.inner.time.to_clock(until),
                    },
                    other => other,
                }));
            }
            One::Held(held) => held,
            One::Answered(other) => unreachable!("a mark decided {other:?}"),
        };
        // The ID is held in flight, but the namespace is unlocked: the closure may
        // take its time without holding up other callers. Should it fail, dropping
        // the hold writes nothing and counts nothing.
        let mut tx = Transaction {
            tracker: self,
            ns: ns.id,
            writes: BTreeMap::new(),
            checkpoints: Vec::new(),
        };
        let value = f(&mut tx)?;
        held.commit(|batch| tx.into_batch(batch))?;
        Ok(Transacted::Applied(value))
    }

    /// A user key's value, as transactions left it.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.store.get_user(key)
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
        validate_checkpoint(consumer, position)?;
        let ns = self.namespace_handle(namespace)?;
        let mut b = Batch::new();
        b.put_meta(&checkpoint_key(ns.id, consumer), position.as_bytes());
        self.inner.write(&b, self.sync_writes())
    }

    /// A consumer's stored position, if any.
    ///
    /// # Errors
    ///
    /// Invalid consumer name, unknown namespace, storage errors.
    pub fn checkpoint(&self, namespace: &str, consumer: &str) -> Result<Option<String>, Error> {
        validate_consumer(consumer)?;
        let ns = self.namespace_handle(namespace)?;
        self.inner
            .store
            .get_meta(&checkpoint_key(ns.id, consumer))?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| Error::Corrupt(format!("checkpoint of {consumer:?} is not UTF-8")))
            })
            .transpose()
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
        validate_checkpoint(consumer, position)?;
        let ids = EventId::batch(ids)?;
        let ns = self.namespace_handle(namespace)?;
        let owner = owner.map(|o| OwnerFp::new(o, ns.seed)).transpose()?;
        let mut extra = Batch::new();
        extra.put_meta(&checkpoint_key(ns.id, consumer), position.as_bytes());
        self.run(&ns, &ids, Mode::Mark(owner), Some(&extra), false)
    }
}

fn checkpoint_key(ns: NamespaceId, consumer: &str) -> Vec<u8> {
    [checkpoint_prefix(ns).as_slice(), consumer.as_bytes()].concat()
}

fn validate_consumer(consumer: &str) -> Result<(), Error> {
    crate::id::NamespaceName::new(consumer)
        .map(drop)
        .map_err(|e| match e {
            Error::InvalidNamespace { reason, .. } => Error::InvalidArgument {
                field: "consumer",
                reason: format!("{consumer:?}: {reason}"),
            },
            other => other,
        })
}

fn validate_checkpoint(consumer: &str, position: &str) -> Result<(), Error> {
    validate_consumer(consumer)?;
    if position.is_empty() || position.len() > MAX_POSITION_LEN {
        return Err(Error::InvalidArgument {
            field: "position",
            reason: format!("{} bytes is outside 1..={MAX_POSITION_LEN}", position.len()),
        });
    }
    Ok(())
}
