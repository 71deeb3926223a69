//! The `tracker` group: the embedded tracker's check-and-mark on real storage.
//!
//! * `flush/fresh`: batches of 1,000 fresh 16-byte IDs at durability `flush`, one
//!   thread; `flush/fresh-2t` the same from two threads (the machine has two cores).
//! * `flush/dup10`: the same with 10% of each batch already marked.
//! * `sync/fresh-1t`, `sync/fresh-8t`: durability `sync`, one thread (one fsync per
//!   batch) and eight threads (concurrent batches share RocksDB's group commit).
//! * Baselines: `memory/fresh` (the tracker with no disk at all) and
//!   `hashset/fresh` (a `HashSet<[u8; 16]>`, which is what "dedup in RAM" usually
//!   means, with neither persistence nor a bounded window).
//!
//! After the timed groups, one untimed measurement: 10M IDs marked into two exact
//! generations, fully compacted, give the disk bytes per ID; then reopening that store
//! is timed after a clean close and after a crash (the open generation's table is
//! rescanned).
//!
//! Run: `cargo bench -p oncely-benches --bench tracker`
//! (`ONCELY_BENCH_REOPEN_IDS=1000000` for a quicker reopen measurement.)

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oncely::{Durability, NamespaceConfig, RocksOptions, RocksStore, Tracker};
use oncely_benches::{Id, PoolCursor, count_label, env_sizes, random_ids, time_over_pool};
use tempfile::TempDir;

const BATCH: usize = 1_000;
/// Fresh IDs available before a tracker is replaced by an empty one.
const POOL: usize = 4_000_000;

/// 4 generations of 5M, 2 exact: room for the whole pool without rotation, as in
/// a namespace sized for its traffic; rotation is measured by the fresh-tracker
/// resets being out of the timed span.
fn config() -> NamespaceConfig {
    NamespaceConfig::builder()
        .generations(4)
        .exact_generations(2)
        .generation_capacity(5_000_000)
        .fp_rate(0.01)
        .build()
        .expect("a valid configuration")
}

/// A tracker in a fresh temporary directory, which lives as long as it does.
struct Subject {
    tracker: Tracker,
    _dir: Option<TempDir>,
}

/// RocksDB's budgets: the defaults, or `ONCELY_BENCH_MEMTABLE_BYTES` to try others.
fn rocks_options() -> RocksOptions {
    let mut o = RocksOptions::default();
    if let Some(&bytes) = env_sizes("ONCELY_BENCH_MEMTABLE_BYTES", &[]).first() {
        o.memtable_bytes = bytes;
    }
    o
}

fn open(durability: Durability) -> Subject {
    let builder = Tracker::builder()
        .durability(durability)
        .default_config(config())
        .rocks_options(rocks_options());
    if durability == Durability::Memory {
        return Subject {
            tracker: builder.open().expect("opens"),
            _dir: None,
        };
    }
    let dir = tempfile::tempdir_in(bench_dir()).expect("a temporary directory");
    Subject {
        tracker: builder.path(dir.path()).open().expect("opens"),
        _dir: Some(dir),
    }
}

/// Where benchmark stores live: `ONCELY_BENCH_DIR`, or the system temp directory.
fn bench_dir() -> std::path::PathBuf {
    std::env::var_os("ONCELY_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into)
}

fn mark(tracker: &Tracker, ids: &[Id]) {
    for batch in ids.chunks(BATCH) {
        let verdicts = tracker
            .check_and_mark("default", batch, None)
            .expect("marks");
        std::hint::black_box(verdicts);
    }
}

fn single_thread(c: &mut Criterion) {
    let pool = random_ids(POOL, 1);
    let mut g = c.benchmark_group("tracker");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));

    for (name, durability) in [
        ("flush/fresh", Durability::Flush),
        ("memory/fresh", Durability::Memory),
        ("sync/fresh-1t", Durability::Sync),
    ] {
        let mut cursor = PoolCursor::new(open(durability));
        g.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                time_over_pool(
                    rounds,
                    BATCH,
                    &pool,
                    &mut cursor,
                    |s| *s = open(durability),
                    |s, ids| mark(&s.tracker, ids),
                )
            });
        });
    }

    // 10% of every batch repeats IDs marked at the start of the pool (by the first
    // batch after each reset, which therefore repeats them within itself).
    let mut cursor = PoolCursor::new(open(Durability::Flush));
    g.bench_function("flush/dup10", |b| {
        b.iter_custom(|rounds| {
            time_over_pool(
                rounds,
                BATCH,
                &pool,
                &mut cursor,
                |s| *s = open(Durability::Flush),
                |s, ids| {
                    for fresh in ids.chunks(BATCH) {
                        let mut batch: Vec<Id> = fresh[..BATCH * 9 / 10].to_vec();
                        batch.extend_from_slice(&pool[..BATCH / 10]);
                        mark(&s.tracker, &batch);
                    }
                },
            )
        });
    });

    let mut set = PoolCursor::new(HashSet::<Id>::with_capacity(POOL));
    g.bench_function("hashset/fresh", |b| {
        b.iter_custom(|rounds| {
            time_over_pool(rounds, BATCH, &pool, &mut set, HashSet::clear, |s, ids| {
                for id in ids {
                    std::hint::black_box(s.insert(*id));
                }
            })
        });
    });
    g.finish();
}

/// Several threads marking disjoint fresh batches into one tracker; the time is the
/// wall time for all of them.
fn multi_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracker");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (name, durability, threads) in [
        ("flush/fresh-2t", Durability::Flush, 2_usize),
        ("sync/fresh-8t", Durability::Sync, 8),
    ] {
        g.throughput(Throughput::Elements(BATCH as u64));
        let pool = random_ids(POOL, 2);
        let mut subject = open(durability);
        let mut next = 0_usize;
        g.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                let n = usize::try_from(rounds).expect("fits") * BATCH;
                if next + n > pool.len() {
                    subject = open(durability);
                    next = 0;
                }
                let ids = &pool[next..next + n.min(pool.len())];
                next += ids.len();
                let per_thread = ids.len().div_ceil(threads).div_ceil(BATCH) * BATCH;
                let tracker = &subject.tracker;
                let start = Instant::now();
                std::thread::scope(|s| {
                    for part in ids.chunks(per_thread.max(BATCH)) {
                        s.spawn(move || mark(tracker, part));
                    }
                });
                start.elapsed()
            });
        });
    }
    g.finish();
}

/// Untimed by criterion: disk per ID after compaction, and reopen times.
fn disk_and_reopen(c: &mut Criterion) {
    let n = env_sizes("ONCELY_BENCH_REOPEN_IDS", &[10_000_000])[0];
    let dir = tempfile::tempdir_in(bench_dir()).expect("a temporary directory");
    {
        let tracker = Tracker::builder()
            .path(dir.path())
            .default_config(config())
            .open()
            .expect("opens");
        let ids = random_ids(n, 3);
        let start = Instant::now();
        mark(&tracker, &ids);
        eprintln!(
            "tracker: marked {} IDs in {:.2?} ({:.0} IDs/s)",
            count_label(n),
            start.elapsed(),
            n as f64 / start.elapsed().as_secs_f64()
        );
        tracker.close().expect("closes");
    }
    {
        let store = RocksStore::open(dir.path(), RocksOptions::default()).expect("opens");
        store.compact();
    }
    let sst = files_size(&dir.path().join("rocksdb"), "sst");
    let snapshots = files_size(&dir.path().join("snapshots"), "bloom");
    eprintln!(
        "tracker: after compaction, exact tables {sst} bytes = {:.2} bytes per 16-byte ID; \
         filter snapshots {snapshots} bytes = {:.2} bytes per ID",
        sst as f64 / n as f64,
        snapshots as f64 / n as f64
    );

    let mut g = c.benchmark_group("tracker");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("reopen-clean", count_label(n)), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let t = reopen(dir.path());
                spent += start.elapsed();
                t.close().expect("closes");
            }
            spent
        });
    });
    g.bench_function(
        BenchmarkId::new("reopen-after-crash", count_label(n)),
        |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // Open and drop without close: the next open finds no clean record and
                    // rescans the open generation's exact table, as after kill -9.
                    drop(reopen(dir.path()));
                    let start = Instant::now();
                    let t = reopen(dir.path());
                    spent += start.elapsed();
                    drop(t);
                }
                spent
            });
        },
    );
    g.finish();
}

fn reopen(dir: &Path) -> Tracker {
    Tracker::builder()
        .path(dir)
        .default_config(config())
        .open()
        .expect("reopens")
}

/// Total size of the files with extension `ext` under `dir`, recursively.
fn files_size(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += files_size(&path, ext);
        } else if path.extension().is_some_and(|e| e == ext) {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    total
}

criterion_group!(benches, single_thread, multi_thread, disk_and_reopen);
criterion_main!(benches);
