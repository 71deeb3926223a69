//! The in-memory backend: durability `memory`, and the reference for the conformance
//! suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{Batch, Entries, MarkVisitor, NamespaceId, Op, Store, keys};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::GenerationId;

/// Everything in ordered maps behind one lock: atomic batches for free, nothing
/// survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    marks: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    user: BTreeMap<Vec<u8>, Vec<u8>>,
    snapshots: HashMap<(NamespaceId, GenerationId), Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied batch (batches
        // are applied to a copy-free map one op at a time, but every op is
        // infallible), so a poisoned lock's data is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn remove_range(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, start: &[u8], end: Option<&[u8]>) {
    let doomed: Vec<Vec<u8>> = map
        .range(start.to_vec()..)
        .map(|(k, _)| k)
        .take_while(|k| end.is_none_or(|end| k.as_slice() < end))
        .cloned()
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

impl Store for MemoryStore {
    fn persistent(&self) -> bool {
        false
    }

    // Memory never waits on anything but its own short lock.
    fn write_nonblocking(&self, batch: &Batch) -> Result<(), Error> {
        self.write(batch, false)
    }

    fn get_marks_cached(
        &self,
        ns: NamespaceId,
        keys_in: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.get_marks(ns, keys_in)
    }

    fn write(&self, batch: &Batch, _sync: bool) -> Result<(), Error> {
        let mut inner = self.lock();
        let mut key = Vec::new();
        for op in batch.ops() {
            match op {
                Op::PutMark {
                    ns,
                    generation,
                    id,
                    value,
                } => {
                    key.clear();
                    keys::mark_key(&mut key, ns, generation, id);
                    inner.marks.insert(key.clone(), value.to_vec());
                }
                Op::DeleteMark { ns, generation, id } => {
                    key.clear();
                    keys::mark_key(&mut key, ns, generation, id);
                    inner.marks.remove(&key);
                }
                Op::DropMarks { ns, below } => {
                    let (start, end) = keys::mark_range(ns, GenerationId(0), Some(below));
                    remove_range(&mut inner.marks, &start, Some(&end));
                }
                Op::DropNamespace { ns } => {
                    let (start, end) = keys::mark_range(ns, GenerationId(0), None);
                    remove_range(&mut inner.marks, &start, Some(&end));
                }
                Op::PutMeta { key, value } => {
                    inner.meta.insert(key.to_vec(), value.to_vec());
                }
                Op::DeleteMeta { key } => {
                    inner.meta.remove(key);
                }
                Op::DeleteMetaPrefix { prefix } => {
                    let end = keys::prefix_end(prefix);
                    remove_range(&mut inner.meta, prefix, end.as_deref());
                }
                Op::PutUser { key, value } => {
                    inner.user.insert(key.to_vec(), value.to_vec());
                }
                Op::DeleteUser { key } => {
                    inner.user.remove(key);
                }
            }
        }
        Ok(())
    }

    fn get_marks(
        &self,
        ns: NamespaceId,
        keys_in: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let inner = self.lock();
        let mut key = Vec::new();
        Ok(keys_in
            .iter()
            .map(|&(generation, id)| {
                key.clear();
                keys::mark_key(&mut key, ns, generation, id);
                inner.marks.get(&key).cloned()
            })
            .collect())
    }

    fn scan_marks(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        visit: &mut MarkVisitor<'_>,
    ) -> Result<(), Error> {
        let prefix = keys::mark_prefix(ns, generation);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = {
            let inner = self.lock();
            inner
                .marks
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (k, v) in entries {
            visit(&k[keys::MARK_PREFIX_LEN..], &v)?;
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn scan_meta(&self, prefix: &[u8]) -> Result<Entries, Error> {
        Ok(self
            .lock()
            .meta
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().user.get(key).cloned())
    }

    fn save_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        filter: &BloomFilter,
    ) -> Result<(), Error> {
        let bytes = filter.to_snapshot();
        self.lock().snapshots.insert((ns, generation), bytes);
        Ok(())
    }

    fn load_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
    ) -> Result<Option<BloomFilter>, Error> {
        let bytes = self.lock().snapshots.get(&(ns, generation)).cloned();
        bytes.map(|b| BloomFilter::from_snapshot(&b)).transpose()
    }

    fn snapshot_generations(&self, ns: NamespaceId) -> Result<Vec<GenerationId>, Error> {
        let mut gens: Vec<GenerationId> = self
            .lock()
            .snapshots
            .keys()
            .filter(|(n, _)| *n == ns)
            .map(|&(_, g)| g)
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    fn snapshot_namespaces(&self) -> Result<Vec<NamespaceId>, Error> {
        let mut ns: Vec<NamespaceId> = self.lock().snapshots.keys().map(|&(n, _)| n).collect();
        ns.sort_unstable();
        ns.dedup();
        Ok(ns)
    }

    fn delete_snapshot(&self, ns: NamespaceId, generation: GenerationId) -> Result<(), Error> {
        self.lock().snapshots.remove(&(ns, generation));
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}
