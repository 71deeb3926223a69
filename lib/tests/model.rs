//! A model test of the durable tracker: random operations against a RocksDB tracker
//! and against a plain simulation of its generation ring, answer by answer.
//!
//! The model simulates the ring exactly as `generation.rs` and `tracker.rs` describe
//! it:
//!
//! * the open generation seals at the start of a non-empty check or mark (and on
//!   `tick`) when it holds `generation_capacity` IDs or has been open for
//!   `generation_span`; inside a mark, a new ID that would exceed the capacity seals
//!   it first; `rotate_namespace` seals it now;
//! * a seal opens the next generation at the current time and drops the oldest once
//!   more than `generations` are live;
//! * the newest `exact_generations` generations keep exact tables.
//!
//! Every answer must then be exact: `New` for IDs never marked or whose generation
//! left the ring (so no false negatives inside the window and no false positives
//! outside it), `Duplicate` (or `Replayed` for the same owner) for IDs in an exact
//! generation, `ProbableDuplicate` exactly for IDs in a Bloom-only generation. The
//! structure the tracker reports (generation ids, sealed, exact, ID counts, opening
//! times) must match too, and none of it may change across a reopen.
//!
//! The filters are sized for a false-positive rate of 1e-9 over a handful of IDs,
//! and the seed is fixed, so a false positive cannot make a run flaky.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use common::{clock, open_rocks, ring_config, scratch_dir};
use oncely::{ManualClock, NamespaceConfig, Tracker, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError};

const NS: &str = "default";
const ALPHABET: u8 = 10;
const OWNERS: [&str; 2] = ["alice", "bob"];
const SPAN_MS: u64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    /// Check-and-mark a batch (IDs are indices into the alphabet), maybe as an owner.
    Mark(Vec<u8>, Option<usize>),
    Check(Vec<u8>),
    Rotate,
    Advance(u64),
    /// Drop the tracker (after a clean `close` when `close` is set) and reopen the
    /// same directory.
    Reopen {
        close: bool,
    },
    Tick,
}

fn name(id: u8) -> String {
    format!("id-{id}")
}

fn op() -> impl Strategy<Value = Op> {
    let batch = || proptest::collection::vec(0..ALPHABET, 1..=6);
    prop_oneof![
        6 => (batch(), proptest::option::of(0..OWNERS.len())).prop_map(|(b, o)| Op::Mark(b, o)),
        3 => batch().prop_map(Op::Check),
        1 => Just(Op::Rotate),
        // Both sides of the span boundary, exactly on it, and far past it.
        2 => prop_oneof![
            0..=2 * SPAN_MS,
            Just(SPAN_MS - 1),
            Just(SPAN_MS),
        ]
        .prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|close| Op::Reopen { close }),
        1 => Just(Op::Tick),
    ]
}

/// (generations, exact_generations, capacity)
fn shape() -> impl Strategy<Value = (u32, u32, u64)> {
    (3_u32..=4, 1_u32..=2, 2_u64..=4)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Gen {
    id: u64,
    opened_at: u64,
    sealed_at: Option<u64>,
    ids: u64,
}

#[derive(Debug)]
struct Model {
    generations: usize,
    exact: u64,
    capacity: u64,
    span: u64,
    now: u64,
    /// Oldest first; the back is open.
    ring: VecDeque<Gen>,
    /// Each ID's latest marking: its generation and owner. Stale once the generation
    /// has left the ring.
    marks: HashMap<u8, (u64, Option<usize>)>,
}

/// How a mark or check asks: checks never replay.
#[derive(Clone, Copy)]
enum Asking {
    Check,
    Mark(Option<usize>),
}

impl Model {
    fn new(generations: u32, exact: u32, capacity: u64, now: u64) -> Self {
        Self {
            generations: generations as usize,
            exact: u64::from(exact),
            capacity,
            span: SPAN_MS,
            now,
            ring: VecDeque::from([Gen {
                id: 1,
                opened_at: now,
                sealed_at: None,
                ids: 0,
            }]),
            marks: HashMap::new(),
        }
    }

    fn open(&self) -> &Gen {
        self.ring.back().unwrap()
    }

    /// The oldest generation that keeps its exact table.
    fn exact_floor(&self) -> u64 {
        let newest = self.open().id;
        newest
            .saturating_sub(self.exact - 1)
            .max(self.ring.front().unwrap().id)
    }

    fn rotate(&mut self) {
        let now = self.now;
        let open = self.ring.back_mut().unwrap();
        open.sealed_at = Some(now);
        let id = open.id + 1;
        self.ring.push_back(Gen {
            id,
            opened_at: now,
            sealed_at: None,
            ids: 0,
        });
        while self.ring.len() > self.generations {
            let _ = self.ring.pop_front();
        }
    }

    fn rotate_if_due(&mut self) {
        let open = self.open();
        if open.ids >= self.capacity || self.now - open.opened_at >= self.span {
            self.rotate();
        }
    }

    /// The answer from the marks alone; `None` when the ID is unseen (a candidate
    /// for `New`).
    fn lookup(&self, id: u8, asking: Asking) -> Option<Verdict> {
        let &(generation, owner) = self.marks.get(&id)?;
        if generation < self.ring.front().unwrap().id {
            return None;
        }
        if generation < self.exact_floor() {
            return Some(Verdict::ProbableDuplicate);
        }
        Some(match asking {
            Asking::Mark(Some(me)) if owner == Some(me) => Verdict::Replayed,
            _ => Verdict::Duplicate,
        })
    }

    fn check(&mut self, batch: &[u8]) -> Vec<Verdict> {
        self.rotate_if_due();
        batch
            .iter()
            .map(|&id| self.lookup(id, Asking::Check).unwrap_or(Verdict::New))
            .collect()
    }

    fn mark(&mut self, batch: &[u8], owner: Option<usize>) -> Vec<Verdict> {
        self.rotate_if_due();
        // Every ID is decided against the ring as it stood at the start of the call;
        // only then are the new ones added, in input order, sealing on the way.
        let decided: Vec<Option<Verdict>> = batch
            .iter()
            .map(|&id| self.lookup(id, Asking::Mark(owner)))
            .collect();
        let mut marked_now = HashSet::new();
        batch
            .iter()
            .zip(decided)
            .map(|(&id, decided)| {
                if let Some(v) = decided {
                    return v;
                }
                if !marked_now.insert(id) {
                    return if owner.is_some() {
                        Verdict::Replayed
                    } else {
                        Verdict::Duplicate
                    };
                }
                if self.open().ids >= self.capacity {
                    self.rotate();
                }
                let open = self.ring.back_mut().unwrap();
                open.ids += 1;
                let generation = open.id;
                let _ = self.marks.insert(id, (generation, owner));
                Verdict::New
            })
            .collect()
    }

    /// What `namespace_info` should report: newest first, with the exact flag.
    fn expected_info(&self) -> Vec<(Gen, bool)> {
        let floor = self.exact_floor();
        self.ring
            .iter()
            .rev()
            .map(|g| (g.clone(), g.id >= floor))
            .collect()
    }
}

fn reported_info(t: &Tracker) -> Vec<(Gen, bool)> {
    t.namespace_info(NS)
        .unwrap()
        .generations
        .iter()
        .map(|g| {
            (
                Gen {
                    id: g.id,
                    opened_at: g.opened_at,
                    sealed_at: g.sealed_at,
                    ids: g.ids,
                },
                g.exact,
            )
        })
        .collect()
}

fn config(generations: u32, exact: u32, capacity: u64) -> NamespaceConfig {
    ring_config(
        generations,
        exact,
        capacity,
        Duration::from_millis(SPAN_MS),
        1e-9,
    )
}

fn run(shape: (u32, u32, u64), ops: &[Op]) -> Result<(), TestCaseError> {
    let (generations, exact, capacity) = shape;
    let dir = scratch_dir();
    let c = clock();
    let config = config(generations, exact, capacity);
    let open = |dir: &Path, c: &ManualClock| open_rocks(dir, c, config.clone());
    let mut t = open(dir.path(), &c);
    let mut model = Model::new(generations, exact, capacity, now(&c));

    for (step, op) in ops.iter().enumerate() {
        let at = || format!("step {step}: {op:?}");
        match op {
            Op::Mark(batch, owner) => {
                let names: Vec<String> = batch.iter().map(|&i| name(i)).collect();
                let got = t
                    .check_and_mark(NS, &names, owner.map(|o| OWNERS[o]))
                    .unwrap();
                let want = model.mark(batch, *owner);
                prop_assert_eq!(
                    got,
                    want,
                    "tracker (left) vs model (right) at {}; model {:?}",
                    at(),
                    model
                );
            }
            Op::Check(batch) => {
                let names: Vec<String> = batch.iter().map(|&i| name(i)).collect();
                let got = t.check(NS, &names).unwrap();
                let want = model.check(batch);
                prop_assert_eq!(
                    got,
                    want,
                    "tracker (left) vs model (right) at {}; model {:?}",
                    at(),
                    model
                );
            }
            Op::Rotate => {
                t.rotate_namespace(NS).unwrap();
                model.rotate();
            }
            Op::Advance(ms) => {
                c.advance(Duration::from_millis(*ms));
                model.now += ms;
            }
            Op::Reopen { close } => {
                let before = reported_info(&t);
                if *close {
                    t.close().unwrap();
                }
                drop(t);
                t = open(dir.path(), &c);
                prop_assert_eq!(
                    reported_info(&t),
                    before,
                    "{}: reopening changed the ring",
                    at()
                );
            }
            Op::Tick => {
                t.tick().unwrap();
                model.rotate_if_due();
            }
        }
        prop_assert_eq!(
            reported_info(&t),
            model.expected_info(),
            "ring: tracker (left) vs model (right) after {}",
            at()
        );
    }

    // Forgetting: `generations` seals with no new marks push every generation that
    // held an ID out of the ring.
    for _ in 0..generations {
        t.rotate_namespace(NS).unwrap();
        model.rotate();
    }
    let everything: Vec<u8> = (0..ALPHABET).collect();
    let names: Vec<String> = everything.iter().map(|&i| name(i)).collect();
    let got = t.check(NS, &names).unwrap();
    prop_assert!(
        got.iter().all(|v| *v == Verdict::New),
        "after {generations} rotations everything is forgotten: {got:?}"
    );
    prop_assert_eq!(got, model.check(&everything));
    Ok(())
}

fn now(c: &ManualClock) -> u64 {
    oncely::Clock::now(c).as_millis()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x0_DEC1DE),
        // Regressions are reproduced from the fixed seed, not from files in the tree.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tracker_matches_the_ring_model(
        shape in shape(),
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        run(shape, &ops)?;
    }
}

/// A longer search, for after changes to rotation or recovery:
/// `cargo test -p oncely --test model -- --ignored`.
#[test]
#[ignore = "long: 1,000 cases"]
fn tracker_matches_the_ring_model_long() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1_000,
        rng_seed: RngSeed::Fixed(0x0_10_96),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(shape(), proptest::collection::vec(op(), 1..96)),
            |(shape, ops)| run(shape, &ops),
        )
        .unwrap();
}
