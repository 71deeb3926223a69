//! Storage: where exact ID tables, metadata and filter snapshots live.
//!
//! The tracker talks to storage only through the small [`Store`] trait, so the
//! embedded RocksDB backend ([`RocksStore`]), the in-memory backend ([`MemoryStore`])
//! and, later, a distributed one are interchangeable. Every backend must pass the same
//! conformance suite (`store::conformance` in this crate's tests).
//!
//! # Data model
//!
//! * **Marks**: the exact ID tables. Key: namespace id (u32, big-endian) ‖ generation
//!   (u64, big-endian) ‖ event ID. Big-endian integers make one generation of one
//!   namespace a contiguous key range, so dropping a generation's table is one range
//!   deletion ([`Op::DropMarks`]) rather than one delete per ID, and it goes into the
//!   same atomic batch as the metadata that stops referring to it. (A column family
//!   per generation would free disk sooner, but creating and dropping column families
//!   cannot be part of a write batch, which would make rotation a multi-step,
//!   crash-sensitive dance.)
//! * **Meta**: small records (namespace configurations, generation rings,
//!   checkpoints) under string-prefixed keys.
//! * **User**: the caller's own keys, written in the same atomic batch as marks (the
//!   transactional API).
//! * **Snapshots**: one serialised filter per sealed generation.

use std::fmt;

use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::GenerationId;

#[cfg(test)]
pub(crate) mod conformance;
mod memory;
mod rocks;

pub use memory::MemoryStore;
pub use rocks::{RocksOptions, RocksStore};

/// A callback receiving `(event ID, mark value)` pairs from a scan.
pub type MarkVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), Error> + 'a;

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A namespace's numeric id: the prefix of its keys. Never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceId(pub u32);

/// Storage behind a tracker.
///
/// Implementations are shared between threads; every method may be called
/// concurrently. Writes are atomic: after a crash, all of a [`Batch`] is visible or
/// none of it.
pub trait Store: Send + Sync + fmt::Debug {
    /// Whether data survives the process. A non-persistent store skips snapshots.
    fn persistent(&self) -> bool;

    /// Applies a batch atomically. With `sync`, returns only once the batch is on
    /// stable storage; otherwise once it survives a crash of the process.
    ///
    /// # Errors
    ///
    /// Any storage error; then none of the batch is applied.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error>;

    /// [`write`](Self::write) without `sync`, for a caller that must not block:
    /// [`Error::WouldBlock`], with nothing applied, where the write would have to
    /// wait for the store to catch up (a write stall). The default always gives
    /// up: a store that may block must not be called from an async worker unless
    /// it says how not to.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`], or any storage error; then none of the batch is
    /// applied.
    fn write_nonblocking(&self, batch: &Batch) -> Result<(), Error> {
        let _ = batch;
        Err(Error::WouldBlock)
    }

    /// Values of marks, in the order of `keys`; `None` for absent ones.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn get_marks(
        &self,
        ns: NamespaceId,
        keys: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error>;

    /// [`get_marks`](Self::get_marks) from memory only, for a caller that must not
    /// block: [`Error::WouldBlock`] where a value would have to be read from disk.
    /// The default always gives up, as [`write_nonblocking`](Self::write_nonblocking)'s does.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`], or any storage error.
    fn get_marks_cached(
        &self,
        ns: NamespaceId,
        keys: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let _ = (ns, keys);
        Err(Error::WouldBlock)
    }

    /// Calls `visit(id, value)` for every mark of one generation, in key order.
    ///
    /// # Errors
    ///
    /// Any storage error, or the first error `visit` returns.
    fn scan_marks(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        visit: &mut MarkVisitor<'_>,
    ) -> Result<(), Error>;

    /// A metadata value.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Every metadata entry whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn scan_meta(&self, prefix: &[u8]) -> Result<Entries, Error>;

    /// A user value (see [`Op::PutUser`]).
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Stores a sealed generation's filter, durably, replacing any earlier one.
    ///
    /// # Errors
    ///
    /// Any storage error; an earlier snapshot of the generation is then intact.
    fn save_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        filter: &BloomFilter,
    ) -> Result<(), Error>;

    /// Loads a generation's filter; `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] naming the snapshot when it is damaged; never an empty
    /// filter in its place.
    fn load_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
    ) -> Result<Option<BloomFilter>, Error>;

    /// Generations of a namespace that have a snapshot.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn snapshot_generations(&self, ns: NamespaceId) -> Result<Vec<GenerationId>, Error>;

    /// Namespaces that have at least one snapshot.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn snapshot_namespaces(&self) -> Result<Vec<NamespaceId>, Error>;

    /// Deletes one snapshot; absent is fine.
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn delete_snapshot(&self, ns: NamespaceId, generation: GenerationId) -> Result<(), Error>;

    /// Makes everything written so far durable (memtables flushed, logs synced).
    ///
    /// # Errors
    ///
    /// Any storage error.
    fn flush(&self) -> Result<(), Error>;

    /// Space used on disk, in bytes, where that is known.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Called while writes fail, for a store that stays stuck after the cause of a
    /// failure has cleared (a disk with room again, file descriptors free again):
    /// brings it back to taking writes, without losing anything acknowledged. The
    /// default does nothing: the store recovers by itself.
    ///
    /// # Errors
    ///
    /// Any storage error; the tracker tries again later.
    fn recover(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// One operation of a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op<'a> {
    /// Sets a mark.
    PutMark {
        /// Namespace.
        ns: NamespaceId,
        /// Generation.
        generation: GenerationId,
        /// Event ID.
        id: &'a [u8],
        /// Encoded mark value.
        value: &'a [u8],
    },
    /// Removes one mark.
    DeleteMark {
        /// Namespace.
        ns: NamespaceId,
        /// Generation.
        generation: GenerationId,
        /// Event ID.
        id: &'a [u8],
    },
    /// Drops the exact tables of every generation of `ns` numbered below `below`.
    DropMarks {
        /// Namespace.
        ns: NamespaceId,
        /// First generation kept.
        below: GenerationId,
    },
    /// Drops every mark of a namespace.
    DropNamespace {
        /// Namespace.
        ns: NamespaceId,
    },
    /// Sets a metadata value.
    PutMeta {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Removes a metadata value.
    DeleteMeta {
        /// Key.
        key: &'a [u8],
    },
    /// Removes every metadata value whose key starts with `prefix`.
    DeleteMetaPrefix {
        /// Key prefix.
        prefix: &'a [u8],
    },
    /// Sets a user value.
    PutUser {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Removes a user value.
    DeleteUser {
        /// Key.
        key: &'a [u8],
    },
}

/// An atomic group of writes.
///
/// Byte strings are copied into one arena, so a batch of thousands of marks costs a
/// few allocations, not one per ID.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    arena: Vec<u8>,
    ops: Vec<RawOp>,
}

type Span = (u32, u32);

#[derive(Clone, Copy, Debug)]
enum RawOp {
    PutMark(NamespaceId, GenerationId, Span, Span),
    DeleteMark(NamespaceId, GenerationId, Span),
    DropMarks(NamespaceId, GenerationId),
    DropNamespace(NamespaceId),
    PutMeta(Span, Span),
    DeleteMeta(Span),
    DeleteMetaPrefix(Span),
    PutUser(Span, Span),
    DeleteUser(Span),
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `marks` marks of about `id_len` bytes.
    #[must_use]
    pub fn with_capacity(marks: usize, id_len: usize) -> Self {
        Self {
            arena: Vec::with_capacity(marks * (id_len + 9)),
            ops: Vec::with_capacity(marks + 2),
        }
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Span {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        (
            u32::try_from(start).expect("batches stay under 4 GiB"),
            u32::try_from(self.arena.len()).expect("batches stay under 4 GiB"),
        )
    }

    fn bytes(&self, (start, end): Span) -> &[u8] {
        &self.arena[start as usize..end as usize]
    }

    /// Adds [`Op::PutMark`].
    pub fn put_mark(&mut self, ns: NamespaceId, generation: GenerationId, id: &[u8], value: &[u8]) {
        let id = self.push_bytes(id);
        let value = self.push_bytes(value);
        self.ops.push(RawOp::PutMark(ns, generation, id, value));
    }

    /// Adds [`Op::DeleteMark`].
    pub fn delete_mark(&mut self, ns: NamespaceId, generation: GenerationId, id: &[u8]) {
        let id = self.push_bytes(id);
        self.ops.push(RawOp::DeleteMark(ns, generation, id));
    }

    /// Adds [`Op::DropMarks`].
    pub fn drop_marks(&mut self, ns: NamespaceId, below: GenerationId) {
        self.ops.push(RawOp::DropMarks(ns, below));
    }

    /// Adds [`Op::DropNamespace`].
    pub fn drop_namespace(&mut self, ns: NamespaceId) {
        self.ops.push(RawOp::DropNamespace(ns));
    }

    /// Adds [`Op::PutMeta`].
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        let key = self.push_bytes(key);
        let value = self.push_bytes(value);
        self.ops.push(RawOp::PutMeta(key, value));
    }

    /// Adds [`Op::DeleteMeta`].
    pub fn delete_meta(&mut self, key: &[u8]) {
        let key = self.push_bytes(key);
        self.ops.push(RawOp::DeleteMeta(key));
    }

    /// Adds [`Op::DeleteMetaPrefix`].
    pub fn delete_meta_prefix(&mut self, prefix: &[u8]) {
        let prefix = self.push_bytes(prefix);
        self.ops.push(RawOp::DeleteMetaPrefix(prefix));
    }

    /// Adds [`Op::PutUser`].
    pub fn put_user(&mut self, key: &[u8], value: &[u8]) {
        let key = self.push_bytes(key);
        let value = self.push_bytes(value);
        self.ops.push(RawOp::PutUser(key, value));
    }

    /// Adds [`Op::DeleteUser`].
    pub fn delete_user(&mut self, key: &[u8]) {
        let key = self.push_bytes(key);
        self.ops.push(RawOp::DeleteUser(key));
    }

    /// Appends every operation of `other`.
    pub fn extend(&mut self, other: &Self) {
        for op in other.ops() {
            self.push(op);
        }
    }

    fn push(&mut self, op: Op<'_>) {
        match op {
            Op::PutMark {
                ns,
                generation,
                id,
                value,
            } => self.put_mark(ns, generation, id, value),
            Op::DeleteMark { ns, generation, id } => self.delete_mark(ns, generation, id),
            Op::DropMarks { ns, below } => self.drop_marks(ns, below),
            Op::DropNamespace { ns } => self.drop_namespace(ns),
            Op::PutMeta { key, value } => self.put_meta(key, value),
            Op::DeleteMeta { key } => self.delete_meta(key),
            Op::DeleteMetaPrefix { prefix } => self.delete_meta_prefix(prefix),
            Op::PutUser { key, value } => self.put_user(key, value),
            Op::DeleteUser { key } => self.delete_user(key),
        }
    }

    /// Number of operations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = Op<'_>> {
        self.ops.iter().map(|op| match *op {
            RawOp::PutMark(ns, generation, id, value) => Op::PutMark {
                ns,
                generation,
                id: self.bytes(id),
                value: self.bytes(value),
            },
            RawOp::DeleteMark(ns, generation, id) => Op::DeleteMark {
                ns,
                generation,
                id: self.bytes(id),
            },
            RawOp::DropMarks(ns, below) => Op::DropMarks { ns, below },
            RawOp::DropNamespace(ns) => Op::DropNamespace { ns },
            RawOp::PutMeta(key, value) => Op::PutMeta {
                key: self.bytes(key),
                value: self.bytes(value),
            },
            RawOp::DeleteMeta(key) => Op::DeleteMeta {
                key: self.bytes(key),
            },
            RawOp::DeleteMetaPrefix(prefix) => Op::DeleteMetaPrefix {
                prefix: self.bytes(prefix),
            },
            RawOp::PutUser(key, value) => Op::PutUser {
                key: self.bytes(key),
                value: self.bytes(value),
            },
            RawOp::DeleteUser(key) => Op::DeleteUser {
                key: self.bytes(key),
            },
        })
    }
}

/// Key encodings shared by the backends that keep ordered byte keys.
pub mod keys {
    use super::NamespaceId;
    use crate::generation::GenerationId;

    /// Bytes before the event ID in a mark key.
    pub const MARK_PREFIX_LEN: usize = 12;

    /// Appends the key of a mark to `out`.
    pub fn mark_key(out: &mut Vec<u8>, ns: NamespaceId, generation: GenerationId, id: &[u8]) {
        out.extend_from_slice(&mark_prefix(ns, generation));
        out.extend_from_slice(id);
    }

    /// The key prefix shared by one generation's marks.
    #[must_use]
    pub fn mark_prefix(ns: NamespaceId, generation: GenerationId) -> [u8; MARK_PREFIX_LEN] {
        let mut k = [0_u8; MARK_PREFIX_LEN];
        k[..4].copy_from_slice(&ns.0.to_be_bytes());
        k[4..].copy_from_slice(&generation.0.to_be_bytes());
        k
    }

    /// The key range `[start, end)` holding the marks of generations `from..to` of a
    /// namespace. `to = None` means every later generation, up to the next namespace.
    #[must_use]
    pub fn mark_range(
        ns: NamespaceId,
        from: GenerationId,
        to: Option<GenerationId>,
    ) -> (Vec<u8>, Vec<u8>) {
        let start = mark_prefix(ns, from).to_vec();
        let end = match to {
            Some(to) => mark_prefix(ns, to).to_vec(),
            None => namespace_end(ns),
        };
        (start, end)
    }

    /// The first key after every key of namespace `ns`.
    #[must_use]
    pub fn namespace_end(ns: NamespaceId) -> Vec<u8> {
        match ns.0.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            // The last namespace id: everything from its prefix on is its own.
            None => vec![0xff; MARK_PREFIX_LEN + crate::MAX_ID_LEN + 1],
        }
    }

    /// The first key after every key that starts with `prefix`, or `None` when no
    /// such key exists (an all-0xff prefix).
    #[must_use]
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last != 0xff {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_its_ops() {
        let mut b = Batch::with_capacity(2, 16);
        b.put_mark(NamespaceId(1), GenerationId(2), b"id", b"v");
        b.drop_marks(NamespaceId(1), GenerationId(2));
        b.put_meta(b"k", b"");
        b.delete_meta_prefix(b"p");
        b.put_user(b"u", b"x");
        b.delete_user(b"u");
        b.delete_mark(NamespaceId(1), GenerationId(2), b"id");
        b.drop_namespace(NamespaceId(3));
        b.delete_meta(b"k");
        let mut c = Batch::new();
        c.extend(&b);
        assert_eq!(b.ops().collect::<Vec<_>>(), c.ops().collect::<Vec<_>>());
        assert_eq!(c.len(), 9);
        assert_eq!(
            c.ops().next(),
            Some(Op::PutMark {
                ns: NamespaceId(1),
                generation: GenerationId(2),
                id: b"id",
                value: b"v"
            })
        );
    }

    #[test]
    fn key_ranges_order_by_namespace_then_generation() {
        let mut a = Vec::new();
        keys::mark_key(&mut a, NamespaceId(1), GenerationId(2), &[0xff; 4]);
        let mut b = Vec::new();
        keys::mark_key(&mut b, NamespaceId(1), GenerationId(3), &[0]);
        assert!(a < b);
        let (start, end) = keys::mark_range(NamespaceId(1), GenerationId(0), None);
        assert!(start <= a && b < end);
        let (_, end) = keys::mark_range(NamespaceId(u32::MAX), GenerationId(0), None);
        let mut last = Vec::new();
        keys::mark_key(
            &mut last,
            NamespaceId(u32::MAX),
            GenerationId(u64::MAX),
            &[0xff; 256],
        );
        assert!(last < end);
        assert_eq!(keys::prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(keys::prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(keys::prefix_end(&[0xff]), None);
    }
}
