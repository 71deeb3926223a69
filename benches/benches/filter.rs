//! The `filter` group: Oncely's Bloom filter against its peers, at the same memory.
//!
//! Measured, for each size:
//!
//! * `insert`: check-and-mark of one ID (`BloomFilter::insert`, fastbloom's `insert`,
//!   bloomfilter's `check_and_set`; all three answer "was it possibly there?").
//! * `contains`: one ID, on a filter holding `capacity` IDs.
//! * `insert_batch` / `contains_batch` (Oncely only, the peers have no batch call):
//!   hash [`BATCH`] IDs, then one batch call, as the tracker does.
//!
//! Subjects:
//!
//! * `oncely-blocked`, `oncely-standard`: both layouts, each sized by
//!   `size_filter_with_layout` for the same capacity and rate, as a user choosing the
//!   layout gets them: the standard one needs a few percent fewer bits for the same
//!   measured rate, which is the trade the module docs describe.
//!
//! The peers are all given exactly the bit count of Oncely's blocked layout (the
//! library's default), so each spends the same memory as `oncely-blocked`:
//!
//! * `fastbloom`: fastbloom 0.17 as it ships, with its default hasher (SipHash-1-3,
//!   seeded), hash count picked by fastbloom for `capacity` items. The headline peer.
//! * `fastbloom-xxh3`: the same fastbloom filter fed through `insert_hash` with the low
//!   half of Oncely's own seeded xxh3 hash, so both pay the same hashing and the
//!   comparison isolates the filter itself.
//! * `bloomfilter`: bloomfilter 3 (two SipHash-1-3 hashes, double hashing), hash count
//!   picked by bloomfilter from bits and `capacity`.
//!
//! IDs are 16 random bytes from seeded RNGs, generated before any clock starts. Before
//! timing anything, every filter takes `capacity` IDs and is probed with 1M IDs it never
//! saw; a table of the measured false-positive rates goes to stderr.
//!
//! Sizes: 1M IDs at 1% (about 1.2 MB: in cache, L2 plus L3 on a current server core)
//! and 100M IDs at 1% (about 125 MB per filter: far beyond any cache). With all five
//! filters alive, the 100M size needs about 0.7 GB for the filters and 1.6 GB for its
//! ID pool. `ONCELY_BENCH_SIZES=1000000,20000000` (say) picks other sizes for a quick
//! run.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use oncely::sizing::{Layout, size_filter_with_layout, standard_fp};
use oncely::{BloomFilter, HashSeed, IdHash};
use oncely_benches::{
    Id, PoolCursor, count_label, env_sizes, random_ids, shuffled_mix, time_over_pool,
};

/// The target false-positive rate every filter is sized for.
const FP: f64 = 0.01;
/// IDs per batch call, as a tracker batch would carry.
const BATCH: usize = 1_000;
/// Unseen IDs probed to measure each filter's false-positive rate.
const FP_PROBES: usize = 1_000_000;
/// Seeds: one per ID stream, one per filter's hash function.
const POOL_SEED: u64 = 0x00c1_1d5e;
const PROBE_SEED: u64 = 0x0bad_1d5e;
const MIX_SEED: u64 = 0x0000_0317;
const HASH_SEED: u64 = 0x5eed_f11e;

/// What every filter under test offers the benchmark. Used through generics only:
/// a virtual call per ID would cost as much as some of the operations measured.
trait Subject {
    fn label(&self) -> String;
    fn bits(&self) -> u64;
    fn hashes(&self) -> u32;
    /// The false-positive rate the filter's own maths expects at `n` IDs.
    fn expected_fp(&self, n: u64) -> f64;
    fn insert(&mut self, id: &Id) -> bool;
    fn contains(&self, id: &Id) -> bool;
    /// Back to empty, with the same size, hash count and seed.
    fn reset(&mut self);
}

struct Oncely(BloomFilter);

impl Subject for Oncely {
    fn label(&self) -> String {
        format!("oncely-{}", self.0.sizing().layout.as_str())
    }
    fn bits(&self) -> u64 {
        self.0.sizing().bits
    }
    fn hashes(&self) -> u32 {
        self.0.sizing().hashes
    }
    fn expected_fp(&self, n: u64) -> f64 {
        self.0.sizing().fp_after(n)
    }
    #[inline]
    fn insert(&mut self, id: &Id) -> bool {
        self.0.insert(id)
    }
    #[inline]
    fn contains(&self, id: &Id) -> bool {
        self.0.contains(id)
    }
    fn reset(&mut self) {
        // The public API has no clear: a fresh filter of the same sizing and seed is
        // the same thing, and its allocation happens with the clock stopped.
        self.0 = BloomFilter::new(*self.0.sizing(), self.0.seed()).expect("same sizing");
    }
}

struct FastBloom(fastbloom::BloomFilter);

impl FastBloom {
    fn new(bits: u64, capacity: usize) -> Self {
        let bits = usize::try_from(bits).expect("filter fits in memory");
        Self(
            fastbloom::BloomFilter::with_num_bits(bits)
                .seed(&u128::from(HASH_SEED))
                .expected_items(capacity),
        )
    }
}

impl Subject for FastBloom {
    fn label(&self) -> String {
        "fastbloom".into()
    }
    fn bits(&self) -> u64 {
        self.0.num_bits() as u64
    }
    fn hashes(&self) -> u32 {
        self.0.num_hashes()
    }
    fn expected_fp(&self, n: u64) -> f64 {
        self.0.expected_false_pos(n as usize)
    }
    #[inline]
    fn insert(&mut self, id: &Id) -> bool {
        self.0.insert(id.as_slice())
    }
    #[inline]
    fn contains(&self, id: &Id) -> bool {
        self.0.contains(id.as_slice())
    }
    fn reset(&mut self) {
        self.0.clear();
    }
}

struct FastBloomXxh3 {
    filter: fastbloom::BloomFilter,
    seed: HashSeed,
}

impl Subject for FastBloomXxh3 {
    fn label(&self) -> String {
        "fastbloom-xxh3".into()
    }
    fn bits(&self) -> u64 {
        self.filter.num_bits() as u64
    }
    fn hashes(&self) -> u32 {
        self.filter.num_hashes()
    }
    fn expected_fp(&self, n: u64) -> f64 {
        self.filter.expected_false_pos(n as usize)
    }
    #[inline]
    fn insert(&mut self, id: &Id) -> bool {
        self.filter.insert_hash(self.seed.hash(id).lo)
    }
    #[inline]
    fn contains(&self, id: &Id) -> bool {
        self.filter.contains_hash(self.seed.hash(id).lo)
    }
    fn reset(&mut self) {
        self.filter.clear();
    }
}

struct BloomCrate(bloomfilter::Bloom<[u8]>);

impl Subject for BloomCrate {
    fn label(&self) -> String {
        "bloomfilter".into()
    }
    fn bits(&self) -> u64 {
        self.0.len()
    }
    fn hashes(&self) -> u32 {
        self.0.number_of_hash_functions()
    }
    fn expected_fp(&self, n: u64) -> f64 {
        standard_fp(self.bits(), self.hashes(), n)
    }
    #[inline]
    fn insert(&mut self, id: &Id) -> bool {
        self.0.check_and_set(id.as_slice())
    }
    #[inline]
    fn contains(&self, id: &Id) -> bool {
        self.0.check(id.as_slice())
    }
    fn reset(&mut self) {
        self.0.clear();
    }
}

/// One line of the false-positive table.
struct FpRow {
    label: String,
    bits: u64,
    hashes: u32,
    expected: f64,
    false_positives: usize,
}

/// Fills `s` with the whole pool (`capacity` IDs) and probes it with unseen IDs.
fn fill_and_measure<S: Subject>(s: &mut S, pool: &[Id], unseen: &[Id]) -> FpRow {
    fill(s, pool);
    FpRow {
        label: s.label(),
        bits: s.bits(),
        hashes: s.hashes(),
        expected: s.expected_fp(pool.len() as u64),
        false_positives: count_present(s, unseen),
    }
}

// Not inlined, so that a profiler run with a filter matching no benchmark (for
// instance `valgrind --tool=callgrind`, where wall time means nothing) shows each
// subject's cost per insert and per probe as one function each.
#[inline(never)]
fn fill<S: Subject>(s: &mut S, ids: &[Id]) {
    for id in ids {
        let _ = s.insert(id);
    }
}

#[inline(never)]
fn count_present<S: Subject>(s: &S, ids: &[Id]) -> usize {
    ids.iter().filter(|id| s.contains(id)).count()
}

fn print_fp_table(size: &str, capacity: usize, probes: usize, rows: &[FpRow]) {
    eprintln!();
    eprintln!(
        "filter/{size}: false positives after {capacity} IDs, {probes} unseen probes, target {FP}"
    );
    eprintln!("| filter | bits | bits/key | hashes | expected FP | measured FP |");
    eprintln!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        eprintln!(
            "| {} | {} | {:.3} | {} | {:.5} | {:.5} |",
            r.label,
            r.bits,
            r.bits as f64 / capacity as f64,
            r.hashes,
            r.expected,
            r.false_positives as f64 / probes as f64,
        );
    }
    eprintln!();
}

/// Check-and-mark of fresh IDs, one at a time.
///
/// The filter starts empty and takes the pool's IDs in order; once all `capacity` of
/// them are in, it is at its sized capacity and is reset (clock stopped) before the
/// pool starts over. Every timed insert is therefore of an ID the filter has not seen,
/// at a fill that sweeps from empty to capacity, as a generation's filter does over
/// its life, and never beyond it.
fn bench_insert<S: Subject>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    pool: &[Id],
    s: &mut S,
) {
    s.reset();
    let id = format!("{size}/insert/{}", s.label());
    let mut cursor = PoolCursor::new(s);
    g.throughput(Throughput::Elements(1));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            time_over_pool(
                iters,
                1,
                pool,
                &mut cursor,
                |s| s.reset(),
                |s, ids| {
                    let mut present = 0_u64;
                    for id in ids {
                        present += u64::from(s.insert(id));
                    }
                    black_box(present);
                },
            )
        });
    });
}

/// Membership of a shuffled half-and-half mix of inserted and unseen IDs, on a filter
/// holding `capacity` IDs: inserted ones make a filter read all its bits, unseen ones
/// let a standard filter stop at its first clear bit.
fn bench_contains<S: Subject>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    probes: &[Id],
    s: &S,
) {
    let id = format!("{size}/contains/{}", s.label());
    let mut cursor = PoolCursor::new(s);
    g.throughput(Throughput::Elements(1));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            time_over_pool(
                iters,
                1,
                probes,
                &mut cursor,
                |_| {},
                |s, ids| {
                    black_box(ids.iter().filter(|id| s.contains(id)).count());
                },
            )
        });
    });
}

/// Oncely's batch calls, [`BATCH`] IDs per call, hashing included in the time. The
/// check-and-mark pool cycles and resets as in [`bench_insert`].
fn bench_batches(
    g: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    pool: &[Id],
    probes: &[Id],
    s: &mut Oncely,
) {
    let label = s.label();
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut hashes: Vec<IdHash> = Vec::with_capacity(BATCH);

    let mut cursor = PoolCursor::new(&*s);
    g.bench_function(format!("{size}/contains_batch/{label}"), |b| {
        b.iter_custom(|iters| {
            time_over_pool(
                iters,
                BATCH,
                probes,
                &mut cursor,
                |_| {},
                |s, ids| {
                    for chunk in ids.chunks(BATCH) {
                        hashes.clear();
                        hashes.extend(chunk.iter().map(|id| s.0.hash(id)));
                        black_box(s.0.contains_batch(&hashes));
                    }
                },
            )
        });
    });

    s.reset();
    let mut cursor = PoolCursor::new(s);
    g.bench_function(format!("{size}/insert_batch/{label}"), |b| {
        b.iter_custom(|iters| {
            time_over_pool(
                iters,
                BATCH,
                pool,
                &mut cursor,
                |s| s.reset(),
                |s, ids| {
                    for chunk in ids.chunks(BATCH) {
                        hashes.clear();
                        hashes.extend(chunk.iter().map(|id| s.0.hash(id)));
                        black_box(s.0.insert_batch(&hashes));
                    }
                },
            )
        });
    });
}

fn bench_size(c: &mut Criterion, capacity: usize, sample_size: usize, measure: Duration) {
    assert!(
        capacity >= FP_PROBES && capacity.is_multiple_of(BATCH),
        "sizes are whole batches of at least {FP_PROBES} IDs, not {capacity}"
    );
    let size = count_label(capacity);
    let pool = random_ids(capacity, POOL_SEED ^ capacity as u64);
    let unseen = random_ids(FP_PROBES, PROBE_SEED ^ capacity as u64);
    let mix = shuffled_mix(&pool[..FP_PROBES / 2], &unseen[..FP_PROBES / 2], MIX_SEED);

    let n = capacity as u64;
    let blocked = size_filter_with_layout(n, FP, Layout::Blocked).expect("valid sizing");
    let standard = size_filter_with_layout(n, FP, Layout::Standard).expect("valid sizing");
    let seed = HashSeed::from_u64(HASH_SEED);
    let mut ob = Oncely(BloomFilter::new(blocked, seed).expect("valid sizing"));
    let mut os = Oncely(BloomFilter::new(standard, seed).expect("valid sizing"));
    let mut fb = FastBloom::new(blocked.bits, capacity);
    let mut fx = FastBloomXxh3 {
        filter: FastBloom::new(blocked.bits, capacity).0,
        seed,
    };
    let seed32: [u8; 32] = std::array::from_fn(|i| (HASH_SEED >> (8 * (i % 8))) as u8 ^ i as u8);
    let bytes = usize::try_from(blocked.bits / 8).expect("filter fits in memory");
    let mut bc = BloomCrate(
        bloomfilter::Bloom::new_with_seed(bytes, capacity, &seed32).expect("valid sizing"),
    );

    let rows = [
        fill_and_measure(&mut ob, &pool, &unseen),
        fill_and_measure(&mut os, &pool, &unseen),
        fill_and_measure(&mut fb, &pool, &unseen),
        fill_and_measure(&mut fx, &pool, &unseen),
        fill_and_measure(&mut bc, &pool, &unseen),
    ];
    print_fp_table(&size, capacity, unseen.len(), &rows);

    let mut g = c.benchmark_group("filter");
    g.sample_size(sample_size)
        .measurement_time(measure)
        .warm_up_time(Duration::from_secs(1));

    // Membership first, while every filter still holds exactly `capacity` IDs.
    bench_contains(&mut g, &size, &mix, &ob);
    bench_contains(&mut g, &size, &mix, &os);
    bench_contains(&mut g, &size, &mix, &fb);
    bench_contains(&mut g, &size, &mix, &fx);
    bench_contains(&mut g, &size, &mix, &bc);

    bench_insert(&mut g, &size, &pool, &mut ob);
    bench_insert(&mut g, &size, &pool, &mut os);
    bench_insert(&mut g, &size, &pool, &mut fb);
    bench_insert(&mut g, &size, &pool, &mut fx);
    bench_insert(&mut g, &size, &pool, &mut bc);

    // Both batch benchmarks reset the filter they are given: refill for contains.
    for o in [&mut ob, &mut os] {
        o.reset();
        for id in &pool {
            let _ = o.insert(id);
        }
        bench_batches(&mut g, &size, &pool, &mix, o);
    }
    g.finish();
}

fn bench_filter(c: &mut Criterion) {
    for capacity in env_sizes("ONCELY_BENCH_SIZES", &[1_000_000, 100_000_000]) {
        // Out of cache, every sample costs seconds and resets cost a large memset:
        // fewer, longer samples keep the run to minutes.
        if capacity >= 10_000_000 {
            bench_size(c, capacity, 10, Duration::from_secs(5));
        } else {
            bench_size(c, capacity, 50, Duration::from_secs(3));
        }
    }
}

criterion_group!(filter, bench_filter);
criterion_main!(filter);
