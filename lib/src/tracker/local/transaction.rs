//! Transactional marks.
//!
//! A [`Transaction`] marks one event and writes the caller's own keys (and
//! checkpoints) in the same atomic RocksDB batch: a read model kept beside the marks
//! changes exactly once per event, whatever the redeliveries and crashes. So does a
//! check-and-mark with a checkpoint.

use super::mark::{Mode, Owners};
use super::single::One;
use super::{Local, checkpoint, lock};
use crate::error::Error;
use crate::exact::{Owner, OwnerFp};
use crate::id::EventId;
use crate::store::{Batch, NamespaceId};
use crate::tracker::decide::{Ask, Decision};
use crate::tracker::transaction::{UserRead, Writes};
use crate::tracker::{Transacted, Transaction};
use crate::verdict::Verdict;

impl Local {
    /// See [`Tracker::transact`](crate::Tracker::transact).
    pub(crate) fn transact<T, E, F>(
        &self,
        namespace: &str,
        id: EventId<'_>,
        owner: Option<Owner<'_>>,
        f: F,
    ) -> Result<Transacted<T>, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    {
        let ns = self.namespace_handle(namespace)?;
        let me = owner.map(|o| OwnerFp::of(o, ns.seed));
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
        let mut tx = Transaction::new(self);
        let value = f(&mut tx)?;
        let writes = tx.into_writes();
        let _ordered = (!writes.checkpoints.is_empty()).then(|| self.checkpoint_writer());
        held.commit(|batch| put_writes(batch, ns.id, &writes))?;
        Ok(Transacted::Applied(value))
    }

    /// See [`Tracker::user_get`](crate::Tracker::user_get).
    pub(crate) fn user_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.store.get_user(key)
    }

    /// See [`Tracker::check_and_mark_with_checkpoint`](crate::Tracker::check_and_mark_with_checkpoint).
    pub(crate) fn check_and_mark_with_checkpoint(
        &self,
        namespace: &str,
        ids: &[EventId<'_>],
        owner: Option<Owner<'_>>,
        consumer: &str,
        position: &str,
    ) -> Result<Vec<Verdict>, Error> {
        let ns = self.namespace_handle(namespace)?;
        let owner = owner.map(|o| OwnerFp::of(o, ns.seed));
        let mut extra = Batch::new();
        extra.put_meta(&checkpoint::key(ns.id, consumer), position.as_bytes());
        let _ordered = self.checkpoint_writer();
        self.run(
            &ns,
            ids,
            Mode::Mark(Owners::One(owner)),
            Some(&extra),
            false,
        )
    }
}

impl UserRead for Local {
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.store.get_user(key)
    }
}

/// A transaction's writes, into the batch that carries its mark.
fn put_writes(batch: &mut Batch, ns: NamespaceId, writes: &Writes) {
    for (key, value) in &writes.user {
        match value {
            Some(v) => batch.put_user(key, v),
            None => batch.delete_user(key),
        }
    }
    for (consumer, position) in &writes.checkpoints {
        batch.put_meta(&checkpoint::key(ns, consumer), position.as_bytes());
    }
}
