//! The caller's side of a transaction: its writes and checkpoints, collected while
//! its closure runs and applied by the tracker together with the event's mark.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Error;
use crate::tracker::checkpoint::validate_checkpoint;

/// Reads of user keys for a [`Transaction`]: from the store the marks live in.
pub(crate) trait UserRead {
    /// A user key's value.
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
}

/// The caller's writes inside [`Tracker::transact`](crate::Tracker::transact). Reads
/// see the transaction's own writes, then the store.
pub struct Transaction<'a> {
    read: &'a dyn UserRead,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    checkpoints: Vec<(String, String)>,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("writes", &self.writes.len())
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

/// What a transaction leaves to apply: user writes (`None` deletes) and checkpoints.
pub(crate) struct Writes {
    pub(crate) user: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub(crate) checkpoints: Vec<(String, String)>,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(read: &'a dyn UserRead) -> Self {
        Self {
            read,
            writes: BTreeMap::new(),
            checkpoints: Vec::new(),
        }
    }

    pub(crate) fn into_writes(self) -> Writes {
        Writes {
            user: self.writes,
            checkpoints: self.checkpoints,
        }
    }

    /// A user key's value.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.read.get_user(key),
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
}
