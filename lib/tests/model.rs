//! A model test of the durable tracker: random operations against a RocksDB tracker
//! and against a plain simulation of its semantics, answer by answer.
//!
//! The operations mix everything that meets at the boundaries: marks (with and without
//! an owner), checks, claims (acquired, renewed, taken over, expired), completions,
//! releases, forgets, transactions that apply or fail, writes that fail (a store that refuses
//! every write while told to), reconfigurations (capacity, ring size, exact horizon,
//! span, with and without `drop_now`), manual and timed rotations, ticks, and reopens
//! after a clean close or a drop, with the wall clock stepped forward or back while
//! the tracker is down.
//!
//! The model simulates, independently of the tracker's code:
//!
//! * the ring: the open generation seals at the start of an operation (and on
//!   `tick`) when it holds as many IDs as it seals at, or has been open for
//!   `generation_span`; inside a mark, a new ID that would exceed it seals it first;
//!   a seal opens the next generation and drops the oldest beyond `generations`; the
//!   newest `exact_generations` keep exact tables; a generation seals at the
//!   capacity in force, never past its own filter's capacity, and earlier when its
//!   filter would exceed the rate each generation must meet (after `generations` is
//!   raised);
//! * marks: an ID's latest landed mark, its generation and owner; a forget takes an
//!   exact mark without a live claim away (the generation keeps its count, but the
//!   embedded engine recounts the open generation from its table after a crash);
//! * claims: owner, lease end and lease, apart from the generations; an expired
//!   claim is forgotten by the tick after it has been expired as long as its lease;
//! * time: store time, which resumes across a reopen where it stopped whatever the
//!   wall clock did, and the offset of the caller's clock from it.
//!
//! Every answer must be exact: `New` for IDs never marked, given back, forgotten
//! (also once their generation is Bloom-only), or whose
//! generation left the ring; `Duplicate` (`Replayed` for the same owner) in an exact
//! generation; `ProbableDuplicate` exactly in a Bloom-only one; `InProgress` while
//! another owner's lease runs, with its end; a call that fails changes nothing. The
//! structure the tracker reports (generations, seals, exact flags, counts, opening
//! times on the caller's clock, claims held) must match too.
//!
//! The filters are sized for a false-positive rate of 1e-9 over a handful of IDs:
//! the proptest seed is fixed, but each namespace's hash seed is random, so it is
//! that rate (below one in 100,000 per run, summed over every fresh ID a run checks
//! against a Bloom-only filter) that keeps a false positive from making a run flaky.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Engine, FaultHandle, Place, clock, open_faulty, ring_config, scratch_dir};
use oncely::sizing::{per_generation_fp, size_filter};
use oncely::{
    ClaimOutcome, DropPolicy, Error, ManualClock, NamespaceConfig, Timestamp, Tracker, Transacted,
    Verdict,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError};

const NS: &str = "default";
const ALPHABET: u8 = 10;
const OWNERS: [&str; 2] = ["alice", "bob"];
const SPAN_MS: u64 = 5_000;
const FP: f64 = 1e-9;
const LEASES_MS: [u64; 3] = [1_000, 4_000, 12_000];
const CONSUMERS: u8 = 2;
const POSITIONS: u8 = 4;

fn consumer(c: u8) -> String {
    format!("consumer-{c}")
}

fn position(p: u8) -> String {
    format!("p-{p}")
}

/// The position a transaction on `id` stores for consumer 0.
fn transacted_position(id: u8) -> u8 {
    id % POSITIONS
}

/// A ring's shape: (generations, exact_generations, capacity, span in ms).
type Shape = (u32, u32, u64, u64);

#[derive(Clone, Debug)]
enum Op {
    /// Check-and-mark a batch (IDs are indices into the alphabet), maybe as an owner.
    Mark(Vec<u8>, Option<usize>),
    /// Several callers' check-and-mark calls decided together.
    MarkEach(Vec<(Vec<u8>, Option<usize>)>),
    Check(Vec<u8>),
    Claim(u8, usize, u64),
    Complete(u8, usize),
    Release(u8, usize),
    /// A transaction on one ID whose closure succeeds or fails; it also stores
    /// consumer 0's checkpoint (at the ID's position).
    Transact(u8, Option<usize>, bool),
    /// Stores a consumer's checkpoint position: unconditionally (`None`), or
    /// expecting none stored (`Some(None)`) or a position.
    SetCheckpoint(u8, Option<Option<u8>>, u8),
    /// Forgets a batch of IDs.
    Forget(Vec<u8>),
    /// Every write fails from now on (`true`), or succeeds again.
    FailWrites(bool),
    Reconfigure(Shape, bool),
    Rotate,
    Advance(u64),
    Tick,
    /// Drop the tracker (after a clean `close` when `close` is set), step the wall
    /// clock by `step` ms while it is down, and reopen. Faults clear first.
    Reopen {
        close: bool,
        step: i64,
    },
}

fn name(id: u8) -> String {
    format!("id-{id}")
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        2_u32..=4,
        2_u64..=4,
        prop_oneof![Just(SPAN_MS), Just(8_000)],
    )
        .prop_flat_map(|(g, cap, span)| (Just(g), 1..=g, Just(cap), Just(span)))
}

fn op() -> impl Strategy<Value = Op> {
    let batch = || proptest::collection::vec(0..ALPHABET, 1..=6);
    let id = || 0..ALPHABET;
    let owner = || 0..OWNERS.len();
    prop_oneof![
        6 => (batch(), proptest::option::of(owner())).prop_map(|(b, o)| Op::Mark(b, o)),
        2 => proptest::collection::vec((batch(), proptest::option::of(owner())), 1..=4)
            .prop_map(Op::MarkEach),
        3 => batch().prop_map(Op::Check),
        3 => (id(), owner(), proptest::sample::select(LEASES_MS.to_vec()))
            .prop_map(|(i, o, l)| Op::Claim(i, o, l)),
        2 => (id(), owner()).prop_map(|(i, o)| Op::Complete(i, o)),
        2 => (id(), owner()).prop_map(|(i, o)| Op::Release(i, o)),
        2 => (id(), proptest::option::of(owner()), any::<bool>())
            .prop_map(|(i, o, ok)| Op::Transact(i, o, ok)),
        2 => (0..CONSUMERS, proptest::option::of(proptest::option::of(0..POSITIONS)), 0..POSITIONS)
            .prop_map(|(c, e, p)| Op::SetCheckpoint(c, e, p)),
        2 => batch().prop_map(Op::Forget),
        1 => any::<bool>().prop_map(Op::FailWrites),
        1 => (shape(), any::<bool>()).prop_map(|(s, d)| Op::Reconfigure(s, d)),
        1 => Just(Op::Rotate),
        // Both sides of the span boundary, exactly on it, and far past it.
        2 => prop_oneof![
            0..=2 * SPAN_MS,
            Just(SPAN_MS - 1),
            Just(SPAN_MS),
        ]
        .prop_map(Op::Advance),
        1 => Just(Op::Tick),
        1 => (any::<bool>(), prop_oneof![Just(0_i64), Just(3_600_000), Just(-3_600_000)])
            .prop_map(|(close, step)| Op::Reopen { close, step }),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Gen {
    id: u64,
    opened_at: u64,
    sealed_at: Option<u64>,
    ids: u64,
}

/// A generation in the model: what is reported, plus how its filter was sized.
#[derive(Clone, Debug)]
struct ModelGen {
    shown: Gen,
    /// The capacity and per-generation rate its filter was sized for.
    sized: (u64, f64),
    seal_at: u64,
    /// IDs forgotten from it: a recount of its table misses them.
    forgotten: u64,
}

#[derive(Clone, Copy, Debug)]
struct Claim {
    owner: usize,
    until: u64,
    lease: u64,
}

#[derive(Clone, Debug)]
struct Model {
    /// How the engine seals: the embedded one also inside a batch, the moment the
    /// open generation is full, and never past what its open filter holds within the
    /// rate; PostgreSQL (whose open generation has no filter) only at the start of a
    /// call.
    embedded: bool,
    shape: Shape,
    /// Store time, in ms.
    now: u64,
    /// The caller's clock minus store time, in ms.
    skew: i64,
    /// Oldest first; the back is open.
    ring: VecDeque<ModelGen>,
    /// Generations numbered from here up keep exact tables.
    floor: u64,
    /// Each ID's latest landed mark: its generation and owner. Stale once the
    /// generation has left the ring.
    marks: HashMap<u8, (u64, Option<usize>)>,
    claims: HashMap<u8, Claim>,
    /// Each consumer's stored position.
    checkpoints: HashMap<u8, u8>,
    failing: bool,
}

/// What the model expects of an operation.
#[derive(Debug, PartialEq)]
enum Expect<T> {
    Ok(T),
    /// The call fails and changes nothing.
    Fails,
}

/// What a caller asks of one ID, as the model reads it.
#[derive(Clone, Copy)]
enum Ask {
    Check,
    Mark(Option<usize>),
}

fn sized_seal_at(embedded: bool, sized: (u64, f64), shape: Shape) -> u64 {
    let (generations, _, capacity, _) = shape;
    if !embedded {
        return capacity;
    }
    let sizing = size_filter(sized.0, sized.1).unwrap();
    capacity.min(sizing.capacity_at(per_generation_fp(FP, generations)))
}

impl Model {
    fn new(embedded: bool, shape: Shape, now: u64) -> Self {
        let sized = (shape.2, per_generation_fp(FP, shape.0));
        Self {
            embedded,
            shape,
            now,
            skew: 0,
            ring: VecDeque::from([ModelGen {
                shown: Gen {
                    id: 1,
                    opened_at: now,
                    sealed_at: None,
                    ids: 0,
                },
                sized,
                seal_at: sized_seal_at(embedded, sized, shape),
                forgotten: 0,
            }]),
            floor: 1,
            marks: HashMap::new(),
            claims: HashMap::new(),
            checkpoints: HashMap::new(),
            failing: false,
        }
    }

    fn open(&self) -> &ModelGen {
        self.ring.back().unwrap()
    }

    fn oldest(&self) -> u64 {
        self.ring.front().unwrap().shown.id
    }

    fn settle_floor(&mut self) {
        let newest = self.open().shown.id;
        let horizon = newest.saturating_sub(u64::from(self.shape.1) - 1);
        self.floor = self.floor.max(horizon).max(self.oldest());
    }

    fn rotate(&mut self) {
        let now = self.now;
        let open = self.ring.back_mut().unwrap();
        open.shown.sealed_at = Some(now);
        let id = open.shown.id + 1;
        let sized = (self.shape.2, per_generation_fp(FP, self.shape.0));
        self.ring.push_back(ModelGen {
            shown: Gen {
                id,
                opened_at: now,
                sealed_at: None,
                ids: 0,
            },
            sized,
            seal_at: sized_seal_at(self.embedded, sized, self.shape),
            forgotten: 0,
        });
        while self.ring.len() > self.shape.0 as usize {
            let _ = self.ring.pop_front();
        }
        self.settle_floor();
    }

    fn rotation_due(&self) -> bool {
        let open = self.open();
        open.shown.ids >= open.seal_at || self.now - open.shown.opened_at >= self.shape.3
    }

    fn rotate_if_due(&mut self) -> bool {
        let due = self.rotation_due();
        if due {
            self.rotate();
        }
        due
    }

    /// The ID's landed mark, if its generation is live: `(exact, owner)`.
    fn mark_of(&self, id: u8) -> Option<(bool, Option<usize>)> {
        let &(generation, owner) = self.marks.get(&id)?;
        (generation >= self.oldest()).then_some((generation >= self.floor, owner))
    }

    fn live_claim(&self, id: u8) -> Option<Claim> {
        self.claims.get(&id).copied().filter(|c| c.until > self.now)
    }

    fn on_clock(&self, store_ms: u64) -> Timestamp {
        Timestamp::from_millis(store_ms.saturating_add_signed(self.skew))
    }

    /// `None`: the ID is to be marked new (clearing any claim).
    fn decide(&self, id: u8, ask: Ask) -> Option<Verdict> {
        let mark = self.mark_of(id);
        if let Some((true, by)) = mark {
            return Some(match ask {
                Ask::Mark(Some(me)) if by == Some(me) => Verdict::Replayed,
                _ => Verdict::Duplicate,
            });
        }
        match (self.claims.get(&id), ask) {
            (Some(c), Ask::Mark(Some(me))) if c.owner == me => return None,
            (Some(c), _) if c.until > self.now => {
                return Some(Verdict::InProgress {
                    until: self.on_clock(c.until),
                });
            }
            _ => {}
        }
        if mark.is_some() {
            return Some(Verdict::ProbableDuplicate);
        }
        match ask {
            Ask::Check => Some(Verdict::New),
            Ask::Mark(_) => None,
        }
    }

    /// Marks an ID new into the open generation, sealing it first when full (the
    /// embedded engine; PostgreSQL seals only at the start of a call).
    fn mark_new(&mut self, id: u8, owner: Option<usize>) {
        let open = self.open();
        if self.embedded && open.shown.ids >= open.seal_at {
            self.rotate();
        }
        let open = self.ring.back_mut().unwrap();
        open.shown.ids += 1;
        let generation = open.shown.id;
        let _ = self.marks.insert(id, (generation, owner));
        let _ = self.claims.remove(&id);
    }

    fn check(&mut self, batch: &[u8]) -> (Vec<Verdict>, bool) {
        let wrote = self.rotate_if_due();
        let verdicts = batch
            .iter()
            .map(|&id| self.decide(id, Ask::Check).unwrap())
            .collect();
        (verdicts, wrote)
    }

    fn mark(&mut self, batch: &[u8], owner: Option<usize>) -> (Vec<Verdict>, bool) {
        let owned: Vec<(u8, Option<usize>)> = batch.iter().map(|&id| (id, owner)).collect();
        self.mark_owned(&owned)
    }

    /// Several calls decided as one batch, each ID with its own owner.
    fn mark_each(&mut self, calls: &[(Vec<u8>, Option<usize>)]) -> (Vec<Vec<Verdict>>, bool) {
        let owned: Vec<(u8, Option<usize>)> = calls
            .iter()
            .flat_map(|(batch, owner)| batch.iter().map(|&id| (id, *owner)))
            .collect();
        let (verdicts, wrote) = self.mark_owned(&owned);
        let mut rest = verdicts.into_iter();
        let each = calls
            .iter()
            .map(|(batch, _)| rest.by_ref().take(batch.len()).collect())
            .collect();
        (each, wrote)
    }

    fn mark_owned(&mut self, batch: &[(u8, Option<usize>)]) -> (Vec<Verdict>, bool) {
        let mut wrote = self.rotate_if_due();
        // Every ID is decided against the state at the start of the call; only then
        // are the new ones added, in input order, sealing on the way. An ID marked
        // new earlier in the batch is done for every later occurrence.
        let decided: Vec<Option<Verdict>> = batch
            .iter()
            .map(|&(id, owner)| self.decide(id, Ask::Mark(owner)))
            .collect();
        let mut marked_now: HashMap<u8, Option<usize>> = HashMap::new();
        let verdicts = batch
            .iter()
            .zip(decided)
            .map(|(&(id, owner), decided)| {
                if let Some(&by) = marked_now.get(&id) {
                    return match owner {
                        Some(me) if by == Some(me) => Verdict::Replayed,
                        _ => Verdict::Duplicate,
                    };
                }
                if let Some(v) = decided {
                    return v;
                }
                let _ = marked_now.insert(id, owner);
                wrote = true;
                self.mark_new(id, owner);
                Verdict::New
            })
            .collect();
        (verdicts, wrote)
    }

    fn claim(&mut self, id: u8, owner: usize, lease: u64) -> (ClaimOutcome, bool) {
        let mut wrote = self.rotate_if_due();
        let until = self.now + lease;
        let outcome = if let Some((true, _)) = self.mark_of(id) {
            ClaimOutcome::Duplicate
        } else {
            match self.claims.get(&id).copied() {
                Some(c) if c.owner == owner => {
                    wrote = true;
                    let held = until.max(c.until);
                    self.claims.insert(
                        id,
                        Claim {
                            owner,
                            until: held,
                            lease,
                        },
                    );
                    ClaimOutcome::Acquired {
                        until: self.on_clock(held),
                        replayed: c.until > self.now,
                        taken_over: false,
                    }
                }
                Some(c) if c.until > self.now => ClaimOutcome::InProgress {
                    until: self.on_clock(c.until),
                },
                other if other.is_some() || self.mark_of(id).is_none() => {
                    wrote = true;
                    self.claims.insert(
                        id,
                        Claim {
                            owner,
                            until,
                            lease,
                        },
                    );
                    ClaimOutcome::Acquired {
                        until: self.on_clock(until),
                        replayed: false,
                        taken_over: other.is_some(),
                    }
                }
                _ => ClaimOutcome::ProbableDuplicate,
            }
        };
        (outcome, wrote)
    }

    /// `Ok(())` or a conflict (`Err(())`), and whether it wrote.
    fn complete(&mut self, id: u8, owner: usize) -> (Result<(), ()>, bool) {
        let wrote = self.rotate_if_due();
        match (self.claims.get(&id).copied(), self.mark_of(id)) {
            (Some(c), _) if c.owner == owner => {
                self.mark_new(id, Some(owner));
                (Ok(()), true)
            }
            (Some(_), _) => (Err(()), wrote),
            (None, Some((true, by))) if by == Some(owner) => (Ok(()), wrote),
            _ => (Err(()), wrote),
        }
    }

    fn release(&mut self, id: u8, owner: usize) -> (Result<(), ()>, bool) {
        let wrote = self.rotate_if_due();
        match (self.claims.get(&id).copied(), self.mark_of(id)) {
            (Some(c), _) if c.owner == owner => {
                let _ = self.claims.remove(&id);
                (Ok(()), true)
            }
            (Some(c), _) if c.until > self.now => (Err(()), wrote),
            (Some(_), _) | (None, None | Some((false, _))) => (Ok(()), wrote),
            (None, Some((true, _))) => (Err(()), wrote),
        }
    }

    /// The transaction's verdict (`New` when applied), and whether it wrote.
    fn transact(&mut self, id: u8, owner: Option<usize>, ok: bool) -> (Verdict, bool) {
        let wrote = self.rotate_if_due();
        match self.decide(id, Ask::Mark(owner)) {
            Some(v) => (v, wrote),
            None if ok => {
                self.mark_new(id, owner);
                self.checkpoints.insert(0, transacted_position(id));
                (Verdict::New, true)
            }
            None => (Verdict::New, wrote),
        }
    }

    /// A checkpoint write: `Err` with the stored position for a failed
    /// precondition (decided before anything is written, so also while writes
    /// fail); the new position already stored succeeds without a write.
    fn set_checkpoint(
        &mut self,
        consumer: u8,
        expected: Option<Option<u8>>,
        position: u8,
    ) -> (Result<(), Option<u8>>, bool) {
        let stored = self.checkpoints.get(&consumer).copied();
        match expected {
            Some(_) if stored == Some(position) => (Ok(()), false),
            Some(e) if e != stored => (Err(stored), false),
            _ => {
                self.checkpoints.insert(consumer, position);
                (Ok(()), true)
            }
        }
    }

    /// One answer per ID: whether an exact mark without a live claim was taken
    /// away (once per ID per call); and whether it wrote.
    fn forget(&mut self, batch: &[u8]) -> (Vec<bool>, bool) {
        let mut wrote = self.rotate_if_due();
        let mut seen = HashSet::new();
        let answers = batch
            .iter()
            .map(|&id| {
                let forgettable = seen.insert(id)
                    && matches!(self.mark_of(id), Some((true, _)))
                    && self.live_claim(id).is_none();
                if forgettable {
                    let (generation, _) = self.marks.remove(&id).unwrap();
                    if let Some(g) = self.ring.iter_mut().find(|g| g.shown.id == generation) {
                        g.forgotten += 1;
                    }
                    wrote = true;
                }
                forgettable
            })
            .collect();
        (answers, wrote)
    }

    /// A restart after a crash: the embedded engine recounts the open
    /// generation from its table, which the forgotten IDs have left.
    fn recount_open(&mut self) {
        if self.embedded {
            let open = self.ring.back_mut().unwrap();
            open.shown.ids -= open.forgotten;
            open.forgotten = 0;
        }
    }

    fn tick(&mut self) -> bool {
        let rotated = self.rotate_if_due();
        let now = self.now;
        let before = self.claims.len();
        self.claims.retain(|_, c| now < c.until + c.lease);
        rotated || self.claims.len() != before
    }

    /// Whether `shape` would forget generations or exact tables at once.
    fn would_drop(&self, shape: Shape) -> bool {
        let (generations, exact, _, _) = shape;
        let newest = self.open().shown.id;
        let kept = (self.ring.len() as u64).min(u64::from(generations));
        let new_oldest = newest + 1 - kept;
        let horizon = newest.saturating_sub(u64::from(exact) - 1);
        self.ring.len() as u64 > kept || horizon > self.floor.max(new_oldest)
    }

    fn reconfigure(&mut self, shape: Shape) {
        self.shape = shape;
        while self.ring.len() > shape.0 as usize {
            let _ = self.ring.pop_front();
        }
        let embedded = self.embedded;
        let open = self.ring.back_mut().unwrap();
        open.seal_at = sized_seal_at(embedded, open.sized, shape);
        self.settle_floor();
    }

    /// What `namespace_info` should report: newest first, with the exact flag, times
    /// on the caller's clock.
    fn expected_info(&self) -> Vec<(Gen, bool)> {
        let on_clock = |t: u64| t.saturating_add_signed(self.skew);
        self.ring
            .iter()
            .rev()
            .map(|g| {
                let mut shown = g.shown.clone();
                shown.opened_at = on_clock(shown.opened_at);
                shown.sealed_at = shown.sealed_at.map(on_clock);
                (shown, g.shown.id >= self.floor)
            })
            .collect()
    }
}

/// The waves in which the PostgreSQL engine sends calls that come in an order
/// (`Pg::in_order`): the longest runs of calls whose IDs are disjoint, a call of
/// more distinct IDs than it combines going alone. A call without IDs belongs to
/// the wave it comes in.
fn pg_waves(calls: &[(Vec<u8>, Option<usize>)]) -> Vec<&[(Vec<u8>, Option<usize>)]> {
    // The engine's `combine::MAX_IDS`.
    const COMBINED_MAX_IDS: usize = 64;
    let mut waves = Vec::new();
    let mut start = 0;
    let mut ids = HashSet::new();
    for (i, (batch, _)) in calls.iter().enumerate() {
        let distinct: HashSet<u8> = batch.iter().copied().collect();
        let alone = distinct.len() > COMBINED_MAX_IDS;
        if alone || !ids.is_disjoint(&distinct) {
            if start < i {
                waves.push(&calls[start..i]);
            }
            start = i;
            ids.clear();
        }
        if alone {
            waves.push(&calls[i..=i]);
            start = i + 1;
        } else {
            ids.extend(distinct);
        }
    }
    if start < calls.len() {
        waves.push(&calls[start..]);
    }
    waves
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

fn config(shape: Shape) -> NamespaceConfig {
    let (generations, exact, capacity, span) = shape;
    ring_config(
        generations,
        exact,
        capacity,
        Duration::from_millis(span),
        FP,
    )
}

/// Runs the model's prediction of a call on a copy: a call that must write while
/// writes fail is expected to fail and change nothing; otherwise the copy becomes
/// the model.
fn predict<T>(model: &mut Model, f: impl FnOnce(&mut Model) -> (T, bool)) -> Expect<T> {
    let mut next = model.clone();
    let (answer, wrote) = f(&mut next);
    if wrote && model.failing {
        return Expect::Fails;
    }
    *model = next;
    Expect::Ok(answer)
}

fn outcome<T>(result: Result<T, Error>) -> Expect<T> {
    match result {
        Ok(t) => Expect::Ok(t),
        Err(_) => Expect::Fails,
    }
}

/// Where the tracker under test keeps its state: RocksDB behind a store that fails
/// writes when told to, or a PostgreSQL database.
enum Store {
    Rocks(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Postgres(Place),
}

struct Harness {
    store: Store,
    clock: ManualClock,
    tracker: Tracker,
    fault: Option<FaultHandle>,
}

impl Harness {
    fn open(store: &Store, clock: &ManualClock, shape: Shape) -> (Tracker, Option<FaultHandle>) {
        match store {
            Store::Rocks(dir) => {
                let (t, fault) = open_faulty(dir.path(), clock, config(shape));
                (t, Some(fault))
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(place) => (place.open(clock, config(shape)), None),
        }
    }

    fn fail_writes(&self, on: bool) {
        if let Some(f) = &self.fault {
            f.fail_writes.store(on, Ordering::SeqCst);
        }
    }
}

fn run(engine: Engine, shape: Shape, ops: &[Op]) -> Result<(), TestCaseError> {
    let store = match engine {
        Engine::Rocks => Store::Rocks(scratch_dir()),
        #[cfg(feature = "postgres")]
        Engine::Postgres => Store::Postgres(Place::new(Engine::Postgres)),
    };
    let embedded = engine == Engine::Rocks;
    let c = clock();
    let (tracker, fault) = Harness::open(&store, &c, shape);
    let mut h = Harness {
        store,
        clock: c,
        tracker,
        fault,
    };
    let mut model = Model::new(embedded, shape, now(&h.clock));

    for (step, op) in ops.iter().enumerate() {
        let at = || format!("step {step}: {op:?}");
        let t = &h.tracker;
        match op {
            Op::Mark(batch, owner) => {
                let names: Vec<String> = batch.iter().map(|&i| name(i)).collect();
                let got = outcome(t.check_and_mark(NS, &names, owner.map(|o| OWNERS[o])));
                let want = predict(&mut model, |m| m.mark(batch, *owner));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::MarkEach(calls) => {
                let names: Vec<(Vec<String>, Option<&str>)> = calls
                    .iter()
                    .map(|(b, o)| (b.iter().map(|&i| name(i)).collect(), o.map(|o| OWNERS[o])))
                    .collect();
                let asked: Vec<(&[String], Option<&str>)> =
                    names.iter().map(|(b, o)| (b.as_slice(), *o)).collect();
                let got = outcome(
                    t.check_and_mark_each(NS, &asked)
                        .and_then(|each| each.into_iter().collect::<Result<Vec<_>, Error>>()),
                );
                // PostgreSQL answers the calls in waves, in order: each wave of
                // calls with disjoint IDs as one batch.
                let want = if embedded {
                    predict(&mut model, |m| m.mark_each(calls))
                } else {
                    let mut each = Vec::with_capacity(calls.len());
                    for wave in pg_waves(calls) {
                        // Calls without IDs are answered without a statement.
                        if wave.iter().all(|(b, _)| b.is_empty()) {
                            each.extend(wave.iter().map(|_| Vec::new()));
                            continue;
                        }
                        match predict(&mut model, |m| m.mark_each(wave)) {
                            Expect::Ok(v) => each.extend(v),
                            Expect::Fails => unreachable!("PostgreSQL writes do not fail here"),
                        }
                    }
                    Expect::Ok(each)
                };
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Check(batch) => {
                let names: Vec<String> = batch.iter().map(|&i| name(i)).collect();
                let got = outcome(t.check(NS, &names));
                let want = predict(&mut model, |m| m.check(batch));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Claim(id, owner, lease) => {
                let got =
                    outcome(t.claim(NS, name(*id), OWNERS[*owner], Duration::from_millis(*lease)));
                let want = predict(&mut model, |m| m.claim(*id, *owner, *lease));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Complete(id, owner) => {
                let got = match t.complete(NS, name(*id), OWNERS[*owner]) {
                    Ok(()) => Expect::Ok(Ok(())),
                    Err(Error::Conflict(_)) => Expect::Ok(Err(())),
                    Err(_) => Expect::Fails,
                };
                let want = predict(&mut model, |m| m.complete(*id, *owner));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Release(id, owner) => {
                let got = match t.release(NS, name(*id), OWNERS[*owner]) {
                    Ok(()) => Expect::Ok(Ok(())),
                    Err(Error::Conflict(_)) => Expect::Ok(Err(())),
                    Err(_) => Expect::Fails,
                };
                let want = predict(&mut model, |m| m.release(*id, *owner));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Transact(id, owner, ok) => {
                let result: Result<Transacted<()>, Error> =
                    t.transact(NS, name(*id), owner.map(|o| OWNERS[o]), |tx| {
                        tx.set_checkpoint(&consumer(0), &position(transacted_position(*id)))?;
                        if *ok {
                            Ok(())
                        } else {
                            Err(Error::Refused("the effect failed".into()))
                        }
                    });
                let got = match result {
                    Ok(Transacted::Applied(())) => Expect::Ok(Verdict::New),
                    Ok(Transacted::Skipped(v)) => Expect::Ok(v),
                    Err(Error::Refused(_)) if !ok => Expect::Ok(Verdict::New),
                    Err(_) => Expect::Fails,
                };
                let want = predict(&mut model, |m| m.transact(*id, *owner, *ok));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::SetCheckpoint(c, expected, p) => {
                let (name, to) = (consumer(*c), position(*p));
                let result = match expected {
                    None => t.set_checkpoint(NS, &name, &to),
                    Some(e) => t.set_checkpoint_if(NS, &name, e.map(position).as_deref(), &to),
                };
                let got = match result {
                    Ok(()) => Expect::Ok(Ok(())),
                    Err(Error::CheckpointConflict { current, .. }) => Expect::Ok(Err(current)),
                    Err(_) => Expect::Fails,
                };
                let want = match predict(&mut model, |m| m.set_checkpoint(*c, *expected, *p)) {
                    Expect::Ok(answer) => Expect::Ok(answer.map_err(|e| e.map(position))),
                    Expect::Fails => Expect::Fails,
                };
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            Op::Forget(batch) => {
                let names: Vec<String> = batch.iter().map(|&i| name(i)).collect();
                let got = outcome(t.forget(NS, &names));
                let want = predict(&mut model, |m| m.forget(batch));
                prop_assert_eq!(got, want, "tracker (left) vs model (right) at {}", at());
            }
            // Faults are injected into the embedded store only (PostgreSQL's own
            // failures have tests of their own).
            Op::FailWrites(_) if !embedded => {}
            Op::FailWrites(on) => {
                h.fail_writes(*on);
                model.failing = *on;
            }
            Op::Reconfigure(next, drop_now) => {
                let policy = if *drop_now {
                    DropPolicy::DropNow
                } else {
                    DropPolicy::Refuse
                };
                let got = t.configure_namespace_with(NS, config(*next), policy);
                if !drop_now && model.would_drop(*next) {
                    prop_assert!(
                        matches!(got, Err(Error::WouldDrop { .. })),
                        "{}: expected WouldDrop, got {:?}",
                        at(),
                        got
                    );
                } else if model.failing {
                    prop_assert!(got.is_err(), "{}: a failing store took it", at());
                } else {
                    prop_assert!(got.is_ok(), "{}: {:?}", at(), got);
                    model.reconfigure(*next);
                }
            }
            Op::Rotate => {
                let got = outcome(t.rotate_namespace(NS));
                let want = predict(&mut model, |m| {
                    m.rotate();
                    ((), true)
                });
                prop_assert_eq!(got, want, "{}", at());
            }
            Op::Advance(ms) => {
                h.clock.advance(Duration::from_millis(*ms));
                model.now += ms;
            }
            Op::Tick => {
                let got = outcome(t.tick());
                let want = predict(&mut model, |m| ((), m.tick()));
                prop_assert_eq!(got, want, "{}", at());
            }
            Op::Reopen { close, step } => {
                // PostgreSQL's time is the database's (here the injected clock), not
                // running time: a step would move it, as documented.
                let step = if embedded { *step } else { 0 };
                let step = &step;
                h.fail_writes(false);
                model.failing = false;
                let before = reported_info(&h.tracker);
                if *close {
                    h.tracker.close().unwrap();
                }
                let Harness {
                    store,
                    clock,
                    tracker,
                    ..
                } = h;
                drop(tracker);
                let stepped = now(&clock).saturating_add_signed(*step);
                clock.set(Timestamp::from_millis(stepped));
                model.skew += step;
                let (tracker, fault) = Harness::open(&store, &clock, model.shape);
                h = Harness {
                    store,
                    clock,
                    tracker,
                    fault,
                };
                let recounted = if *close {
                    0
                } else {
                    let forgotten = model.open().forgotten;
                    model.recount_open();
                    forgotten - model.open().forgotten
                };
                let shifted: Vec<(Gen, bool)> = before
                    .into_iter()
                    .enumerate()
                    .map(|(i, (mut g, exact))| {
                        g.opened_at = g.opened_at.saturating_add_signed(*step);
                        g.sealed_at = g.sealed_at.map(|s| s.saturating_add_signed(*step));
                        // Newest first: the open generation is recounted.
                        if i == 0 {
                            g.ids -= recounted;
                        }
                        (g, exact)
                    })
                    .collect();
                prop_assert_eq!(
                    reported_info(&h.tracker),
                    shifted,
                    "{}: reopening changed the ring",
                    at()
                );
            }
        }
        let info = h.tracker.namespace_info(NS).unwrap();
        // (On PostgreSQL the open generation has no filter: a batch may take it past
        // its capacity, and its filter is built at sealing for what it holds.)
        for g in info
            .generations
            .iter()
            .filter(|g| embedded || g.sealed_at.is_some())
        {
            prop_assert!(
                g.ids <= g.capacity,
                "{}: generation {} holds {} IDs, sized for {}",
                at(),
                g.id,
                g.ids,
                g.capacity
            );
        }
        prop_assert_eq!(
            info.claims,
            model.claims.len() as u64,
            "claims held after {}",
            at()
        );
        for c in 0..CONSUMERS {
            prop_assert_eq!(
                h.tracker.checkpoint(NS, &consumer(c)).unwrap(),
                model.checkpoints.get(&c).copied().map(position),
                "consumer {}'s checkpoint after {}",
                c,
                at()
            );
        }
        prop_assert_eq!(
            reported_info(&h.tracker),
            model.expected_info(),
            "ring: tracker (left) vs model (right) after {}; model {:?}",
            at(),
            model
        );
    }

    // Forgetting: with writes working, `generations` seals with no new marks push
    // every generation that held an ID out of the ring; claims stay until their
    // lease runs out.
    h.fail_writes(false);
    model.failing = false;
    for _ in 0..model.shape.0 {
        h.tracker.rotate_namespace(NS).unwrap();
        model.rotate();
    }
    let everything: Vec<u8> = (0..ALPHABET).collect();
    let names: Vec<String> = everything.iter().map(|&i| name(i)).collect();
    let got = h.tracker.check(NS, &names).unwrap();
    for (i, v) in got.iter().enumerate() {
        let claimed = model.live_claim(everything[i]).is_some();
        prop_assert!(
            *v == Verdict::New || (claimed && matches!(v, Verdict::InProgress { .. })),
            "after {} rotations only live claims are remembered: {:?}",
            model.shape.0,
            got
        );
    }
    let (want, _) = model.check(&everything);
    prop_assert_eq!(got, want);
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
    fn tracker_matches_the_model(
        shape in shape(),
        ops in proptest::collection::vec(op(), 1..64),
    ) {
        run(Engine::Rocks, shape, &ops)?;
    }
}

#[cfg(feature = "postgres")]
proptest! {
    #![proptest_config(ProptestConfig {
        // Each case is a database of its own: fewer, longer cases.
        cases: 24,
        rng_seed: RngSeed::Fixed(0x0DBD_EC1D),
        failure_persistence: None,
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tracker_on_postgres_matches_the_model(
        shape in shape(),
        ops in proptest::collection::vec(op(), 1..64),
    ) {
        run(Engine::Postgres, shape, &ops)?;
    }
}

/// A longer search, for after changes to rotation, claims or recovery:
/// `cargo test -p oncely --test model -- --ignored`.
#[test]
#[ignore = "long: 1,000 cases"]
fn tracker_matches_the_model_long() {
    long_search(
        Engine::Rocks,
        ProptestConfig {
            cases: 1_000,
            rng_seed: RngSeed::Fixed(0x0_10_96),
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        128,
    );
}

/// The longer search on PostgreSQL, for after changes to its schema or statements:
/// `cargo test -p oncely --features postgres --test model -- --ignored`.
#[cfg(feature = "postgres")]
#[test]
#[ignore = "long: 300 cases, a database each"]
fn tracker_on_postgres_matches_the_model_long() {
    long_search(
        Engine::Postgres,
        ProptestConfig {
            cases: 300,
            rng_seed: RngSeed::Fixed(0x00DB_1096),
            failure_persistence: None,
            max_shrink_iters: 500,
            ..ProptestConfig::default()
        },
        96,
    );
}

/// The longer searches: cases of up to `max_ops - 1` operations, as `config` says.
fn long_search(engine: Engine, config: ProptestConfig, max_ops: usize) {
    proptest::test_runner::TestRunner::new(config)
        .run(
            &(shape(), proptest::collection::vec(op(), 1..max_ops)),
            |(shape, ops)| run(engine, shape, &ops),
        )
        .unwrap();
}
