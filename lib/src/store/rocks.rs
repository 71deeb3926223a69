//! The embedded RocksDB backend: durability `flush` and `sync`.
//!
//! Layout of a data directory:
//!
//! ```text
//! <dir>/rocksdb/                  RocksDB: column families `default` (meta), `marks`, `user`
//! <dir>/snapshots/<ns>/<gen>.bloom  one filter snapshot per sealed generation
//! ```

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRecoveryMode, IteratorMode, Options, ReadOptions, ReadTier, WriteBatch, WriteBufferManager,
    WriteOptions,
};

use super::{Batch, Entries, MarkVisitor, NamespaceId, Op, Store, keys};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::GenerationId;

const CF_MARKS: &str = "marks";
const CF_USER: &str = "user";

/// Memory budgets of the RocksDB backend.
///
/// RocksDB's memory is fixed by these two numbers, whatever the number of IDs stored:
/// index and filter blocks live inside the block cache, and memtables are charged to
/// it through a write-buffer manager, so `cache_bytes` bounds both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RocksOptions {
    /// Block cache, in bytes, memtables included (default 128 MiB).
    pub cache_bytes: usize,
    /// Memtables, in bytes, across column families (default 64 MiB).
    ///
    /// The exact tables write into many small memtables (2 MiB each) that are flushed
    /// several at a time (8 with the default budget): event IDs are random keys, and inserting one into a
    /// memtable's skiplist costs a cache miss per level visited, so a memtable that
    /// stays within the CPU's cache marks IDs faster; merging them at flush keeps the
    /// level-0 files, and so the files a lookup consults, few and large.
    pub memtable_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 128 << 20,
            memtable_bytes: 64 << 20,
        }
    }
}

impl RocksOptions {
    /// The smallest `memtable_bytes`: 1 MiB.
    ///
    /// RocksDB stalls writers while the memtables use more than the budget, and every
    /// column family holds at least one memtable block however little it stores, so a
    /// budget below those blocks stalls every write for ever. Measured (300,000
    /// marks in batches of 1,000, debug build with optimised dependencies): 8 KiB
    /// hangs at open, 32 KiB at the first marks; 64 KiB takes 568 ms, 1 MiB 160 ms,
    /// 4 MiB and more 122 to 127 ms.
    pub const MIN_MEMTABLE_BYTES: usize = 1 << 20;

    /// Checks the budgets: `memtable_bytes` at least [`Self::MIN_MEMTABLE_BYTES`], and
    /// no larger than `cache_bytes`, which the memtables are charged to (a larger
    /// budget would push every cached block out, and `cache_bytes` would no longer
    /// bound RocksDB's memory).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.memtable_bytes < Self::MIN_MEMTABLE_BYTES {
            return Err(Error::InvalidConfig {
                field: "memtable_bytes",
                reason: format!(
                    "{} bytes is below the minimum of {} bytes (1 MiB): RocksDB would stall \
                     every write (a bare number is bytes; write \"64MiB\" for mebibytes)",
                    self.memtable_bytes,
                    Self::MIN_MEMTABLE_BYTES
                ),
            });
        }
        if self.cache_bytes < self.memtable_bytes {
            return Err(Error::InvalidConfig {
                field: "cache_bytes",
                reason: format!(
                    "{} bytes is below memtable_bytes ({} bytes): the memtables are charged \
                     to the cache, so the cache must be at least as large",
                    self.cache_bytes, self.memtable_bytes
                ),
            });
        }
        Ok(())
    }
}

/// The size of one exact-table memtable, at most.
const MARKS_MEMTABLE_BYTES: usize = 2 << 20;
/// The most exact-table memtables merged into one level-0 file.
const MARKS_MEMTABLES_PER_FLUSH: usize = 8;

/// Marks, metadata and user keys in one RocksDB; snapshots as files beside it.
pub struct RocksStore {
    /// `None` only after a [`recover`](Store::recover) whose reopen failed: every call
    /// then fails until a later one succeeds.
    db: RwLock<Option<DB>>,
    dir: PathBuf,
    snapshots: PathBuf,
    options: RocksOptions,
}

/// The open database, for the length of one call.
struct Open<'a>(RwLockReadGuard<'a, Option<DB>>);

impl std::ops::Deref for Open<'_> {
    type Target = DB;

    fn deref(&self) -> &DB {
        self.0.as_ref().expect("checked when opened")
    }
}

impl Open<'_> {
    fn marks(&self) -> &ColumnFamily {
        self.cf_handle(CF_MARKS)
            .expect("opened with the marks column family")
    }

    fn meta(&self) -> &ColumnFamily {
        self.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .expect("the default column family always exists")
    }

    fn user(&self) -> &ColumnFamily {
        self.cf_handle(CF_USER)
            .expect("opened with the user column family")
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl RocksStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for budgets [`RocksOptions::validate`] refuses (nothing
    /// is created then), [`Error::Io`] when the directory cannot be created,
    /// [`Error::StoreOpen`] when RocksDB refuses to open (a damaged file, another
    /// process holding the lock).
    pub fn open(dir: impl AsRef<Path>, options: RocksOptions) -> Result<Self, Error> {
        // Before anything is created on disk.
        options.validate()?;
        let dir = dir.as_ref().to_owned();
        let db_dir = dir.join("rocksdb");
        let snapshots = dir.join("snapshots");
        for d in [&dir, &db_dir, &snapshots] {
            fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
        }
        remove_temporaries(&snapshots)?;
        let db = open_db(&db_dir, options)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            dir,
            snapshots,
            options,
        })
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Compacts the exact tables fully: for measuring disk use after compaction.
    pub fn compact(&self) {
        if let Ok(db) = self.db() {
            db.compact_range_cf(db.marks(), None::<&[u8]>, None::<&[u8]>);
        }
    }

    fn db(&self) -> Result<Open<'_>, Error> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            return Err(io_err(
                &self.dir.join("rocksdb"),
                std::io::Error::other(
                    "the database is closed: reopening it after a storage fault failed; \
                     the next recovery attempt retries",
                ),
            ));
        }
        Ok(Open(guard))
    }

    fn ns_dir(&self, ns: NamespaceId) -> PathBuf {
        self.snapshots.join(ns.0.to_string())
    }

    fn snapshot_path(&self, ns: NamespaceId, generation: GenerationId) -> PathBuf {
        self.ns_dir(ns).join(format!("{}.bloom", generation.0))
    }

    /// Applies `batch` with `opts`; `error` turns RocksDB's failure into ours.
    fn write_opt(
        &self,
        batch: &Batch,
        mut opts: WriteOptions,
        error: fn(rocksdb::Error) -> Error,
    ) -> Result<(), Error> {
        let db = self.db()?;
        let mut wb = WriteBatch::default();
        let mut key = Vec::with_capacity(keys::MARK_PREFIX_LEN + 32);
        // New marks go into the memtable in key order: RocksDB's skiplist then
        // resumes each insert from where the previous one ended instead of searching
        // from the top, which is most of a random-key insert's cost (see
        // `allow_concurrent_memtable_write` in `open`). Sorting is only done when the
        // batch has no deletes on the exact tables, whose order relative to the
        // puts matters.
        let sortable = batch.ops().all(|op| {
            !matches!(
                op,
                Op::DeleteMark { .. } | Op::DropMarks { .. } | Op::DropNamespace { .. }
            )
        });
        let mut marks: Vec<(Vec<u8>, &[u8])> = Vec::new();
        for op in batch.ops() {
            match op {
                Op::PutMark {
                    ns,
                    generation,
                    id,
                    value,
                } if sortable => {
                    let mut k = Vec::with_capacity(keys::MARK_PREFIX_LEN + id.len());
                    keys::mark_key(&mut k, ns, generation, id);
                    marks.push((k, value));
                }
                Op::PutMark {
                    ns,
                    generation,
                    id,
                    value,
                } => {
                    key.clear();
                    keys::mark_key(&mut key, ns, generation, id);
                    wb.put_cf(db.marks(), &key, value);
                }
                Op::DeleteMark { ns, generation, id } => {
                    key.clear();
                    keys::mark_key(&mut key, ns, generation, id);
                    wb.delete_cf(db.marks(), &key);
                }
                Op::DropMarks { ns, below } => {
                    let (start, end) = keys::mark_range(ns, GenerationId(0), Some(below));
                    wb.delete_range_cf(db.marks(), start, end);
                }
                Op::DropNamespace { ns } => {
                    let (start, end) = keys::mark_range(ns, GenerationId(0), None);
                    wb.delete_range_cf(db.marks(), start, end);
                }
                Op::PutMeta { key, value } => wb.put_cf(db.meta(), key, value),
                Op::DeleteMeta { key } => wb.delete_cf(db.meta(), key),
                Op::DeleteMetaPrefix { prefix } => {
                    let end =
                        keys::prefix_end(prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
                    wb.delete_range_cf(db.meta(), prefix, &end);
                }
                Op::PutUser { key, value } => wb.put_cf(db.user(), key, value),
                Op::DeleteUser { key } => wb.delete_cf(db.user(), key),
            }
        }
        // Stable: should a key appear twice, the later put still wins.
        marks.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, value) in &marks {
            wb.put_cf(db.marks(), k, value);
        }
        crate::failpoint!("store.before-write");
        // Resume each insert from the previous one (see
        // `allow_concurrent_memtable_write` in `open`).
        opts.set_memtable_insert_hint_per_batch(true);
        db.write_opt(wb, &opts).map_err(error)?;
        crate::failpoint!("store.after-write");
        Ok(())
    }

    fn get_marks_opt(
        &self,
        ns: NamespaceId,
        keys_in: &[(GenerationId, &[u8])],
        opts: &ReadOptions,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let encoded: Vec<Vec<u8>> = keys_in
            .iter()
            .map(|&(generation, id)| {
                let mut k = Vec::with_capacity(keys::MARK_PREFIX_LEN + id.len());
                keys::mark_key(&mut k, ns, generation, id);
                k
            })
            .collect();
        let db = self.db()?;
        db.batched_multi_get_cf_opt(db.marks(), &encoded, false, opts)
            .into_iter()
            .map(|r| Ok(r?.map(|v| v.to_vec())))
            .collect()
    }
}

/// Opens the database in `db_dir` with the tuning described inline.
fn open_db(db_dir: &Path, options: RocksOptions) -> Result<DB, Error> {
    let cache = Cache::new_lru_cache(options.cache_bytes);
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Two cores: one flush and one compaction at a time.
    db_opts.set_max_background_jobs(2);
    // Write back SST and WAL data in 1 MiB steps instead of in bursts at fsync.
    db_opts.set_bytes_per_sync(1 << 20);
    db_opts.set_wal_bytes_per_sync(1 << 20);
    // Every open starts a new info log; the default keeps 1,000 of them, which a
    // frequently restarted process (tests, crash loops) turns into slow opens.
    db_opts.set_keep_log_file_num(8);
    // Replaying the write-ahead log: a torn last record is what an interrupted
    // write leaves, and it was never acknowledged, so it is dropped; damage
    // anywhere else refuses to open, naming the log file. (RocksDB's default,
    // point-in-time recovery, would instead stop at the damage and silently drop
    // every acknowledged mark after it. See the RocksDB wiki, "WAL Recovery
    // Modes".)
    db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    // Each writer inserts its own batch into the memtable, in parallel with the
    // other writers of its group, rather than the group's leader inserting them
    // all. Every batch arrives sorted, and `memtable_insert_hint_per_batch` (set
    // on each write) lets a writer resume each insert from where its previous one
    // ended instead of searching the skiplist from the top. Under the daemon's
    // load the two together marked about 7% more IDs per second than one
    // inserter per group.
    db_opts.set_allow_concurrent_memtable_write(true);
    // Charge memtables to the block cache so that one number bounds RocksDB's
    // memory; stall writers rather than exceed it.
    let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
        options.memtable_bytes,
        true,
        cache.clone(),
    );
    db_opts.set_write_buffer_manager(&wbm);

    let cfs = vec![
        ColumnFamilyDescriptor::new(
            rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
            small_cf_options(&cache),
        ),
        ColumnFamilyDescriptor::new(CF_MARKS, marks_cf_options(&cache, options)),
        ColumnFamilyDescriptor::new(CF_USER, small_cf_options(&cache)),
    ];
    DB::open_cf_descriptors(&db_opts, db_dir, cfs).map_err(|source| Error::StoreOpen {
        path: db_dir.to_owned(),
        source,
    })
}

/// The exact ID tables: point lookups of random keys, written once, dropped by range.
/// RocksDB's `Incomplete`, from a call told not to wait, is [`Error::WouldBlock`].
/// (Only such calls use this: from any other, `Incomplete` is a storage error.)
fn would_block(e: rocksdb::Error) -> Error {
    if e.kind() == rocksdb::ErrorKind::Incomplete {
        Error::WouldBlock
    } else {
        Error::Storage(e)
    }
}

fn marks_cf_options(cache: &Cache, options: RocksOptions) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks inside the cache, so their memory is part of the fixed
    // budget rather than growing with the number of SST files; L0's are pinned
    // because every lookup consults them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(10.0, false);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    // Lookups only reach RocksDB after our in-memory filter said "maybe", so they are
    // mostly hits; a last-level filter would cost memory to answer what we already
    // know. RocksDB then builds filters for the upper levels only (~90% less filter
    // memory; see the RocksDB tuning guide, "optimize_filters_for_hits").
    opts.set_optimize_filters_for_hits(true);
    // IDs are random bytes, but each entry's 8-byte sequence/type trailer and the
    // shared namespace/generation prefix compress well: lz4 while data is young,
    // zstd once it settles in the last level.
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts.set_level_compaction_dynamic_level_bytes(true);
    // Random keys make every level-0 file overlap all of the open generation's
    // data below it, so each level-0 compaction rewrites that data: compaction was
    // the largest consumer of CPU under load. Small memtables merged several at a
    // time (8 with the default budget) make level-0 files of ~250k IDs, and
    // compacting only once 32 of them have gathered (and not earlier for their size:
    // hence the large level base) means a generation of 10M IDs is rewritten about
    // once. Lookups, which only follow a filter hit, pay with more files to
    // consult, each screened by its own filter.
    let (memtable, per_flush) = marks_memtables(options.memtable_bytes);
    let per_flush = i32::try_from(per_flush).unwrap_or(i32::MAX);
    opts.set_write_buffer_size(memtable);
    opts.set_min_write_buffer_number_to_merge(per_flush);
    // Room for a second set to fill while the first is flushed: RocksDB delays
    // writes (to 16 MB/s) once all but one memtable are waiting for a flush, which
    // with one set's worth plus two happened every flush.
    opts.set_max_write_buffer_number(2 * per_flush + 2);
    opts.set_level_zero_file_num_compaction_trigger(32);
    opts.set_level_zero_slowdown_writes_trigger(64);
    opts.set_level_zero_stop_writes_trigger(96);
    opts.set_max_bytes_for_level_base(1 << 30);
    // A duplicate's lookup must search every memtable not yet flushed, up to 18 of
    // them by default; a whole-key filter per memtable lets it skip those without the key.
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

/// The exact tables' memtable size and how many are merged per flush, for a budget.
///
/// Two sets of memtables, one filling while the other is flushed, take at most
/// about half the budget, leaving the rest to the other column families and to
/// memtables whose flush is under way.
fn marks_memtables(budget: usize) -> (usize, usize) {
    let each = MARKS_MEMTABLE_BYTES.min(budget / 8).max(64 << 10);
    let per_flush = (budget / 4 / each).clamp(1, MARKS_MEMTABLES_PER_FLUSH);
    (each, per_flush)
}

fn small_cf_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(4 << 20);
    opts
}

impl Store for RocksStore {
    fn persistent(&self) -> bool {
        true
    }

    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        // Without sync, RocksDB still hands the WAL record to the OS before
        // returning (manual_wal_flush is off), which is what survives kill -9.
        opts.set_sync(sync);
        self.write_opt(batch, opts, Error::Storage)
    }

    fn write_nonblocking(&self, batch: &Batch) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        // A write that would be delayed or stopped (too many memtables or level-0
        // files waiting) fails at once with `Incomplete` instead, before anything
        // is applied.
        opts.set_no_slowdown(true);
        self.write_opt(batch, opts, would_block)
    }

    fn get_marks(
        &self,
        ns: NamespaceId,
        keys_in: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.get_marks_opt(ns, keys_in, &ReadOptions::default())
    }

    fn get_marks_cached(
        &self,
        ns: NamespaceId,
        keys_in: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut opts = ReadOptions::default();
        // Memtables and block cache only: a read that needs a block from disk
        // answers `Incomplete` instead of reading it. One key at a time: RocksDB's
        // batched MultiGet reads from disk whatever the read tier.
        opts.set_read_tier(ReadTier::BlockCache);
        let mut key = Vec::with_capacity(keys::MARK_PREFIX_LEN + 32);
        let db = self.db()?;
        keys_in
            .iter()
            .map(|&(generation, id)| {
                key.clear();
                keys::mark_key(&mut key, ns, generation, id);
                let value = db
                    .get_pinned_cf_opt(db.marks(), &key, &opts)
                    .map_err(would_block)?;
                Ok(value.map(|v| v.to_vec()))
            })
            .collect()
    }

    fn scan_marks(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        visit: &mut MarkVisitor<'_>,
    ) -> Result<(), Error> {
        let prefix = keys::mark_prefix(ns, generation);
        let next = generation.0.checked_add(1).map(GenerationId);
        let (_, end) = keys::mark_range(ns, generation, next);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        // A recovery scan reads each block once: keep it out of the cache.
        ro.fill_cache(false);
        ro.set_readahead_size(2 << 20);
        let db = self.db()?;
        let iter = db.iterator_cf_opt(
            db.marks(),
            ro,
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            visit(&k[keys::MARK_PREFIX_LEN..], &v)?;
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let db = self.db()?;
        Ok(db.get_cf(db.meta(), key)?)
    }

    fn scan_meta(&self, prefix: &[u8]) -> Result<Entries, Error> {
        let db = self.db()?;
        let iter = db.iterator_cf(
            db.meta(),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let db = self.db()?;
        Ok(db.get_cf(db.user(), key)?)
    }

    fn save_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        filter: &BloomFilter,
    ) -> Result<(), Error> {
        let dir = self.ns_dir(ns);
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let path = self.snapshot_path(ns, generation);
        let tmp = path.with_extension("bloom.tmp");
        // Write aside, fsync, then rename over: a crash leaves either the old file or
        // the complete new one, never a torn snapshot under the real name.
        let write = || -> std::io::Result<()> {
            let file = File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            filter.write_snapshot(&mut w)?;
            w.flush()?;
            w.get_ref().sync_all()?;
            Ok(())
        };
        write().map_err(|e| io_err(&tmp, e))?;
        crate::failpoint!("snapshot.before-rename");
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(&dir)
    }

    fn load_snapshot(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
    ) -> Result<Option<BloomFilter>, Error> {
        let path = self.snapshot_path(ns, generation);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        // The file's size bounds what a damaged header can make us allocate.
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        match BloomFilter::read_snapshot_of_len(BufReader::with_capacity(1 << 20, file), len) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Snapshot { source, .. }) => Err(Error::Snapshot {
                path: Some(path),
                source,
            }),
            Err(Error::Io { source, .. }) => Err(io_err(&path, source)),
            Err(other) => Err(other),
        }
    }

    fn snapshot_generations(&self, ns: NamespaceId) -> Result<Vec<GenerationId>, Error> {
        let dir = self.ns_dir(ns);
        let mut gens = Vec::new();
        for name in list_dir(&dir)? {
            if let Some(g) = name.strip_suffix(".bloom").and_then(|g| g.parse().ok()) {
                gens.push(GenerationId(g));
            }
        }
        gens.sort_unstable();
        Ok(gens)
    }

    fn snapshot_namespaces(&self) -> Result<Vec<NamespaceId>, Error> {
        let mut out: Vec<NamespaceId> = list_dir(&self.snapshots)?
            .iter()
            .filter_map(|name| name.parse().ok().map(NamespaceId))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn delete_snapshot(&self, ns: NamespaceId, generation: GenerationId) -> Result<(), Error> {
        let path = self.snapshot_path(ns, generation);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }?;
        let dir = self.ns_dir(ns);
        if list_dir(&dir)?.is_empty() {
            // Only succeeds when empty; a racing writer simply keeps it.
            let _ = fs::remove_dir(&dir);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        let db = self.db()?;
        db.flush_wal(true)?;
        for cf in [db.meta(), db.marks(), db.user()] {
            db.flush_cf(cf)?;
        }
        Ok(())
    }

    /// Reopens the database. A write that fails puts RocksDB into a read-only
    /// state (its "background error") that it leaves on its own only for errors it
    /// knows to be retryable; a full disk or exhausted file descriptors stay stuck
    /// until the database is reopened, and the RocksDB C API offers no `Resume`. The
    /// reopen replays the write-ahead log: everything acknowledged is back, nothing
    /// else (a write that failed was not acknowledged).
    fn recover(&self) -> Result<(), Error> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closed first: RocksDB refuses a second open of a directory it holds.
        *guard = None;
        *guard = Some(open_db(&self.dir.join("rocksdb"), self.options)?);
        tracing::info!(dir = %self.dir.display(), "store reopened after a storage fault");
        Ok(())
    }

    fn disk_bytes(&self) -> Option<u64> {
        dir_size(&self.dir).ok()
    }
}

/// Removes snapshot files a crash left half-written (`*.tmp`): they were never
/// renamed into place, so nothing refers to them.
fn remove_temporaries(snapshots: &Path) -> Result<(), Error> {
    for ns in list_dir(snapshots)? {
        let dir = snapshots.join(ns);
        let entries = fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io_err(&dir, e))?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// File names in `dir` (temporary files excluded); empty when `dir` is absent.
fn list_dir(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.ends_with(".tmp")
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_too_small_for_rocksdb_are_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for (options, field) in [
            (
                RocksOptions {
                    memtable_bytes: 64,
                    ..RocksOptions::default()
                },
                "memtable_bytes",
            ),
            (
                RocksOptions {
                    cache_bytes: 32 << 20,
                    memtable_bytes: 64 << 20,
                },
                "cache_bytes",
            ),
        ] {
            match RocksStore::open(&data, options) {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{options:?}: expected InvalidConfig, got {other:?}"),
            }
            assert!(!data.exists(), "nothing is created for refused budgets");
        }
    }

    #[test]
    fn the_smallest_budget_still_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions {
            cache_bytes: RocksOptions::MIN_MEMTABLE_BYTES,
            memtable_bytes: RocksOptions::MIN_MEMTABLE_BYTES,
        };
        assert_eq!(options.validate().ok(), Some(()));
        let tracker = crate::Tracker::builder()
            .path(dir.path())
            .rocks_options(options)
            .open()
            .unwrap();
        for batch in 0..50 {
            let ids: Vec<String> = (0..1000).map(|i| format!("{batch}-{i}")).collect();
            let verdicts = tracker.check_and_mark("default", &ids, None).unwrap();
            assert!(verdicts.iter().all(|v| v.is_new()));
        }
        tracker.close().unwrap();
    }
}
