//! Racing check-and-mark: eight threads mark the same IDs, each in its own seeded
//! order and batch sizes. Whatever the interleaving, every ID must be `New` for
//! exactly one thread and `Duplicate` for all the others, with or without rotation
//! running underneath, with owners, and with `sync` group commit.

mod common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{clock, open_memory, open_rocks_with, ring_config};
use oncely::{Durability, NamespaceConfig, Tracker, Verdict};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const THREADS: usize = 8;
const IDS: u32 = 100_000;
const NS: &str = "default";

/// Mostly large batches, with singletons and odd sizes mixed in so that the batches
/// of different threads overlap at ever-changing offsets.
const MIXED_SIZES: [usize; 6] = [1, 17, 250, 1_000, 1_000, 2_500];

/// Small batches: many more concurrent writes, so `sync` callers share fsyncs.
const SMALL_SIZES: [usize; 5] = [1, 5, 50, 100, 200];

fn id(i: u32) -> String {
    format!("event-{i:08}")
}

/// Large enough that nothing rotates: the race is decided by in-flight tracking and
/// exact lookups alone.
fn roomy() -> NamespaceConfig {
    ring_config(4, 2, 1_000_000, Duration::from_secs(3600), 1e-6)
}

/// 4,000-ID generations: the 100,000 IDs fill 25 of them, so rotations (with their
/// snapshots and ring writes) interleave with the marks. 32 generations, all exact,
/// keep every ID inside both the remembering window and the exact horizon, so the
/// answers stay exact: `Duplicate`, never `ProbableDuplicate` or a second `New`.
fn rotating() -> NamespaceConfig {
    ring_config(32, 32, 4_000, Duration::from_secs(3600), 1e-6)
}

/// One thread's answers: ID index and verdict, in the order it asked.
type Answers = Vec<(u32, Verdict)>;

/// A thread's calls, prepared before the start so that all threads begin together.
fn plan(thread: usize, ids: &[u32], seed: u64, sizes: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9e37_79b9));
    let mut order = ids.to_vec();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        let size = sizes[rng.random_range(0..sizes.len())].min(rest.len());
        let (batch, tail) = rest.split_at(size);
        batches.push(batch.to_vec());
        rest = tail;
    }
    batches
}

fn owner_of(thread: usize) -> String {
    format!("owner-{thread}")
}

/// Every thread marks all of `ids` in its own order; returns each thread's answers.
fn race(
    tracker: &Tracker,
    ids: &[u32],
    seed: u64,
    sizes: &[usize],
    with_owners: bool,
) -> Vec<Answers> {
    race_with(tracker, ids, seed, sizes, with_owners, false)
}

/// Calls `try_check_and_mark` answered, and calls it gave up on.
static ANSWERED_BY_TRY: AtomicUsize = AtomicUsize::new(0);
static GAVE_UP: AtomicUsize = AtomicUsize::new(0);

/// `race`; with `try_first`, each call is made as the daemon makes small ones:
/// `try_check_and_mark` first, `check_and_mark` when it gives up.
fn race_with(
    tracker: &Tracker,
    ids: &[u32],
    seed: u64,
    sizes: &[usize],
    with_owners: bool,
    try_first: bool,
) -> Vec<Answers> {
    let plans: Vec<Vec<Vec<u32>>> = (0..THREADS).map(|t| plan(t, ids, seed, sizes)).collect();
    let start = Barrier::new(THREADS);
    thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(t, batches)| {
                let start = &start;
                s.spawn(move || {
                    let owner = with_owners.then(|| owner_of(t));
                    let calls: Vec<Vec<String>> = batches
                        .iter()
                        .map(|b| b.iter().map(|&i| id(i)).collect())
                        .collect();
                    let mut answers = Vec::with_capacity(ids.len());
                    start.wait();
                    for (batch, names) in batches.iter().zip(&calls) {
                        let tried = if try_first {
                            tracker
                                .try_check_and_mark(NS, names, owner.as_deref())
                                .unwrap()
                        } else {
                            None
                        };
                        let verdicts = match tried {
                            Some(verdicts) => {
                                ANSWERED_BY_TRY.fetch_add(1, Ordering::Relaxed);
                                verdicts
                            }
                            None => {
                                if try_first {
                                    GAVE_UP.fetch_add(1, Ordering::Relaxed);
                                }
                                tracker.check_and_mark(NS, names, owner.as_deref()).unwrap()
                            }
                        };
                        assert_eq!(verdicts.len(), batch.len());
                        answers.extend(batch.iter().copied().zip(verdicts));
                    }
                    answers
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Asserts that every ID got exactly one `New` and `Duplicate` everywhere else;
/// returns, per ID, the thread that got the `New`.
fn assert_one_new_each(ids: &[u32], answers: &[Answers]) -> Vec<Option<usize>> {
    assert_one_new_each_else(ids, answers, |v| v == Verdict::Duplicate)
}

/// Asserts that every ID got exactly one `New`, and an answer `other` accepts
/// everywhere else.
fn assert_one_new_each_else(
    ids: &[u32],
    answers: &[Answers],
    other: fn(Verdict) -> bool,
) -> Vec<Option<usize>> {
    let n = ids.iter().max().map_or(0, |&m| m as usize + 1);
    let mut winner: Vec<Option<usize>> = vec![None; n];
    let mut wrong: Vec<String> = Vec::new();
    for (t, answers) in answers.iter().enumerate() {
        assert_eq!(
            answers.len(),
            ids.len(),
            "thread {t} answered every ID once"
        );
        for &(i, verdict) in answers {
            match verdict {
                Verdict::New => {
                    if let Some(first) = winner[i as usize].replace(t) {
                        wrong.push(format!("{}: New for threads {first} and {t}", id(i)));
                    }
                }
                v if other(v) => {}
                v => wrong.push(format!("{}: {v:?} for thread {t}", id(i))),
            }
        }
    }
    let never_new: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&i| winner[i as usize].is_none())
        .collect();

    assert!(
        wrong.is_empty() && never_new.is_empty(),
        "{} wrong answers, e.g. {:?}; {} IDs never answered New, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        never_new.len(),
        &never_new[..never_new.len().min(5)],
    );
    let per_thread: Vec<usize> = (0..THREADS)
        .map(|t| winner.iter().filter(|w| **w == Some(t)).count())
        .collect();
    println!("New per thread: {per_thread:?}");
    winner
}

/// After a restart every ID must still read `Duplicate`.
fn assert_all_duplicate(tracker: &Tracker, ids: &[u32]) {
    for chunk in ids.chunks(10_000) {
        let names: Vec<String> = chunk.iter().map(|&i| id(i)).collect();
        let verdicts = tracker.check(NS, &names).unwrap();
        let lost: Vec<&String> = names
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v != Verdict::Duplicate)
            .map(|(n, _)| n)
            .collect();
        assert!(
            lost.is_empty(),
            "{} IDs no longer Duplicate after reopen, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

fn newest_generation(tracker: &Tracker) -> u64 {
    tracker.namespace_info(NS).unwrap().generations[0].id
}

/// Races on a RocksDB tracker, then reopens it and checks that the marks held.
fn race_on_rocks(config: NamespaceConfig, seed: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let ids: Vec<u32> = (0..IDS).collect();
    let newest = {
        let t = open_rocks_with(dir.path(), &c, config.clone(), Durability::Flush);
        let answers = race(&t, &ids, seed, &MIXED_SIZES, false);
        let _ = assert_one_new_each(&ids, &answers);
        newest_generation(&t)
    };
    let t = open_rocks_with(dir.path(), &c, config, Durability::Flush);
    assert_all_duplicate(&t, &ids);
    newest
}

fn race_in_memory(config: NamespaceConfig, seed: u64) -> u64 {
    let t = open_memory(&clock(), config);
    let ids: Vec<u32> = (0..IDS).collect();
    let answers = race(&t, &ids, seed, &MIXED_SIZES, false);
    let _ = assert_one_new_each(&ids, &answers);
    assert_all_duplicate(&t, &ids);
    newest_generation(&t)
}

#[test]
fn rocks_one_new_per_id_without_rotation() {
    let newest = race_on_rocks(roomy(), 0xC0FFEE);
    assert_eq!(newest, 1, "nothing rotated");
}

#[test]
fn memory_one_new_per_id_without_rotation() {
    let newest = race_in_memory(roomy(), 0xBEEF);
    assert_eq!(newest, 1, "nothing rotated");
}

#[test]
fn rocks_one_new_per_id_while_rotating() {
    let newest = race_on_rocks(rotating(), 0xF00D);
    // 100,000 IDs in 4,000-ID generations fill generations 1..=25.
    assert!(newest >= 25, "rotation ran alongside: newest is {newest}");
}

#[test]
fn memory_one_new_per_id_while_rotating() {
    let newest = race_in_memory(rotating(), 0xD00D);
    assert!(newest >= 25, "rotation ran alongside: newest is {newest}");
}

/// A call that gave up marked nothing: trying first and falling back still gives
/// one `New` per ID, with rotations (which make tries give up) running alongside.
#[test]
fn trying_first_one_new_per_id_while_rotating() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let ids: Vec<u32> = (0..IDS).collect();
    {
        let t = open_rocks_with(dir.path(), &c, rotating(), Durability::Flush);
        let answers = race_with(&t, &ids, 0x7E57, &MIXED_SIZES, false, true);
        let _ = assert_one_new_each(&ids, &answers);
        assert!(newest_generation(&t) >= 25, "rotation ran alongside");
        let (answered, gave_up) = (
            ANSWERED_BY_TRY.load(Ordering::Relaxed),
            GAVE_UP.load(Ordering::Relaxed),
        );
        println!("try_check_and_mark answered {answered} calls and gave up on {gave_up}");
        assert!(answered > 0 && gave_up > 0, "both ways were taken");
    }
    let t = open_rocks_with(dir.path(), &c, rotating(), Durability::Flush);
    assert_all_duplicate(&t, &ids);
}

#[test]
fn each_owner_gets_its_own_new_back() {
    const OWNED: u32 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let ids: Vec<u32> = (0..OWNED).collect();
    // Rotating while owners race: replay must find the owner in whichever exact
    // table the ID landed in.
    let config = ring_config(32, 32, 4_000, Duration::from_secs(3600), 1e-6);
    let t = open_rocks_with(dir.path(), &c, config.clone(), Durability::Flush);
    let answers = race(&t, &ids, 0x0A11CE, &MIXED_SIZES, true);
    let winner = assert_one_new_each(&ids, &answers);

    // Each thread now retries its own IDs, interleaved with a neighbour's: its own
    // come back Replayed, the neighbour's stay Duplicate. All threads at once.
    let replay = |t: &Tracker, seed: u64| {
        let start = Barrier::new(THREADS);
        thread::scope(|s| {
            for me in 0..THREADS {
                let (start, winner) = (&start, &winner);
                s.spawn(move || {
                    let neighbour = (me + 1) % THREADS;
                    let mut mine: Vec<(u32, bool)> = (0..OWNED)
                        .filter(|&i| winner[i as usize] == Some(me))
                        .map(|i| (i, true))
                        .chain(
                            (0..OWNED)
                                .filter(|&i| winner[i as usize] == Some(neighbour))
                                .step_by(4)
                                .map(|i| (i, false)),
                        )
                        .collect();
                    let mut rng = StdRng::seed_from_u64(seed ^ me as u64);
                    mine.shuffle(&mut rng);
                    let owner = owner_of(me);
                    start.wait();
                    for batch in mine.chunks(700) {
                        let names: Vec<String> = batch.iter().map(|&(i, _)| id(i)).collect();
                        let verdicts = t.check_and_mark(NS, &names, Some(&owner)).unwrap();
                        for (&(i, own), v) in batch.iter().zip(verdicts) {
                            let want = if own {
                                Verdict::Replayed
                            } else {
                                Verdict::Duplicate
                            };
                            assert_eq!(v, want, "{} retried by {owner} (own: {own})", id(i));
                        }
                    }
                });
            }
        });
    };
    replay(&t, 1);
    drop(t);
    // The owner is part of the durable mark.
    let t = open_rocks_with(dir.path(), &c, config, Durability::Flush);
    replay(&t, 2);
    assert_eq!(
        t.check_and_mark(NS, &[id(0)], None).unwrap(),
        [Verdict::Duplicate],
        "without an owner a retry is a duplicate"
    );
}

#[test]
fn sync_group_commit_one_new_per_id() {
    const SYNCED: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let ids: Vec<u32> = (0..SYNCED).collect();
    {
        let t = open_rocks_with(dir.path(), &c, roomy(), Durability::Sync);
        let answers = race(&t, &ids, 0x5EC, &SMALL_SIZES, false);
        let _ = assert_one_new_each(&ids, &answers);
    }
    let t = open_rocks_with(dir.path(), &c, roomy(), Durability::Sync);
    assert_all_duplicate(&t, &ids);
}

/// 4,000-ID generations of which only the open one keeps its exact table: every seal
/// turns the sealed generation Bloom-only while other threads' writes into it may
/// still be landing. Its snapshot and the floor must wait for them, so that no
/// landed mark is missing from a Bloom-only filter.
fn bloom_only_behind() -> NamespaceConfig {
    ring_config(32, 1, 4_000, Duration::from_secs(3600), 1e-9)
}

/// After the race, or a restart: no ID is `New` (each is `Duplicate` in the open
/// generation or `ProbableDuplicate` in a Bloom-only one).
fn assert_none_new(tracker: &Tracker, ids: &[u32]) {
    for chunk in ids.chunks(10_000) {
        let names: Vec<String> = chunk.iter().map(|&i| id(i)).collect();
        let verdicts = tracker.check(NS, &names).unwrap();
        let lost = verdicts.iter().filter(|v| **v == Verdict::New).count();
        assert_eq!(lost, 0, "{lost} landed marks read new");
    }
}

#[test]
fn rocks_marks_land_in_bloom_only_filters_while_racing() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let ids: Vec<u32> = (0..IDS).collect();
    {
        let t = open_rocks_with(dir.path(), &c, bloom_only_behind(), Durability::Flush);
        let answers = race(&t, &ids, 0x5EA1, &MIXED_SIZES, false);
        let _ = assert_one_new_each_else(&ids, &answers, |v| {
            matches!(v, Verdict::Duplicate | Verdict::ProbableDuplicate)
        });
        assert_none_new(&t, &ids);
        let info = t.namespace_info(NS).unwrap();
        assert!(info.generations.len() >= 25, "rotation ran alongside");
        assert!(
            info.generations.iter().skip(1).all(|g| !g.exact),
            "once the writes settled, every sealed generation turned Bloom-only"
        );
        // Dropped without close: the open generation is rebuilt from its table, and
        // every sealed one must have its snapshot.
    }
    {
        let t = open_rocks_with(dir.path(), &c, bloom_only_behind(), Durability::Flush);
        assert_none_new(&t, &ids);
        t.close().unwrap();
    }
    let t = open_rocks_with(dir.path(), &c, bloom_only_behind(), Durability::Flush);
    assert_none_new(&t, &ids);
}
