//! One namespace's live state: its ring of generations, the exact horizon, writes in
//! flight, and its claims.
//!
//! # Marks land before their bits
//!
//! A new ID is counted into the open generation when a caller decides to mark it
//! (so that a filter never takes more IDs than it was sized for), but its filter bits
//! are set only once its write has landed. Until then the ID is held in flight, and
//! concurrent callers wait for it instead of probing the filter. A write that fails,
//! or a transaction whose closure fails, gives its count back and never touches a
//! filter, so a Bloom-only generation can only ever report IDs whose mark landed.
//!
//! The price: a generation must not lose its exact table, nor have its final
//! snapshot taken, while writes into it are still settling. So each generation
//! counts its pending writes, a sealed generation's snapshot waits until they have
//! settled, and the exact floor moves past a generation only once its snapshot is
//! saved. Until then the generation simply stays exact, which answers more
//! precisely, never less.
//!
//! # Forgotten IDs leave their bits behind
//!
//! A forget deletes an ID's mark from its exact table, but a Bloom filter's bits
//! cannot be taken out. While the generation keeps its table, the table rules the
//! hit out; before the table goes, the filter is rebuilt from it (see
//! [`State::needs_resize`]), so the ID answers new once the generation is
//! Bloom-only too. A generation with forgets is recorded in the store (a marker
//! record, written with the forget) so that a restart rebuilds it as well.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};

use crate::error::Error;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::records;
use crate::ring_policy;
use crate::store::{Batch, NamespaceId};

use super::claim_table::ClaimTable;
use super::flight::Flights;

pub(super) struct Namespace {
    pub(super) name: NamespaceName,
    pub(super) id: NamespaceId,
    pub(super) seed: HashSeed,
    /// Numbers flights; only uniqueness matters.
    pub(super) next_flight: AtomicU64,
    // A std mutex, not an async one: critical sections are short, CPU-bound or a
    // quick RocksDB read, and never span an await; the daemon calls the tracker from
    // blocking threads (or tries, without waiting, from async ones).
    pub(super) state: Mutex<State>,
    /// Signalled whenever the namespace's pending writes drop to none.
    pub(super) settled: Condvar,
}

impl Namespace {
    pub(super) fn new(name: NamespaceName, id: NamespaceId, seed: HashSeed, state: State) -> Self {
        Self {
            name,
            id,
            seed,
            next_flight: AtomicU64::new(0),
            state: Mutex::new(state),
            settled: Condvar::new(),
        }
    }
}

pub(super) struct State {
    pub(super) ring: GenerationRing,
    /// Generations numbered from here up keep their exact tables.
    pub(super) exact_floor: GenerationId,
    pub(super) flights: Flights,
    pub(super) claims: ClaimTable,
    /// Marks written or being written but not yet settled, per generation: counted
    /// in the generation, their bits not yet set.
    pending: Vec<(GenerationId, u64)>,
    /// Sealed generations whose filter snapshot is not saved: deferred while writes
    /// into them settled, rebuilt at start-up, or resized.
    pub(super) unsaved: BTreeSet<GenerationId>,
    /// A generation whose filter a caller is rebuilding outside the lock.
    pub(super) resizing: Option<GenerationId>,
    /// Whether [`Local::catch_up`](super::Tracker::catch_up) has work: a floor
    /// behind the configuration's, or a snapshot to save.
    pub(super) catch_up_due: bool,
    /// Set by delete; calls holding an old handle then fail as unknown.
    pub(super) deleted: bool,
    /// Set by close: no mark may land after the open generation's final snapshot.
    pub(super) closed: bool,
    /// Exact generations that IDs were forgotten from (see the module docs).
    pub(super) forgets: BTreeMap<GenerationId, Forgets>,
}

/// The forgets in one generation, counted since the tracker opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Forgets {
    /// Forgets made (at start-up: 1 for a generation the store has a marker for,
    /// whose filter may predate its forgets).
    pub(super) made: u64,
    /// How many of them the generation's filter was last rebuilt without.
    pub(super) rebuilt_without: u64,
}

impl State {
    pub(super) fn new(ring: GenerationRing, exact_floor: GenerationId, claims: ClaimTable) -> Self {
        Self {
            ring,
            exact_floor,
            flights: Flights::default(),
            claims,
            pending: Vec::new(),
            unsaved: BTreeSet::new(),
            resizing: None,
            catch_up_due: false,
            deleted: false,
            closed: false,
            forgets: BTreeMap::new(),
        }
    }

    /// Records a forget in `g`, whose filter still holds the ID's bits.
    pub(super) fn forgot_in(&mut self, g: GenerationId) {
        self.forgets.entry(g).or_default().made += 1;
    }

    /// Forgets in `g` its filter still holds the bits of.
    pub(super) fn forgets_unbuilt(&self, g: GenerationId) -> u64 {
        self.forgets
            .get(&g)
            .map_or(0, |f| f.made.saturating_sub(f.rebuilt_without))
    }

    /// Moves the exact floor up to `floor` in `b`: the tables below it go, and
    /// with them the markers of their forgets. [`floor_moved`](Self::floor_moved)
    /// once `b` is written.
    pub(super) fn drop_tables_below(&self, b: &mut Batch, ns: NamespaceId, floor: GenerationId) {
        b.drop_marks(ns, floor);
        for g in self.forgets.range(..floor).map(|(g, _)| *g) {
            b.delete_meta(&records::forgets_key(ns, g));
        }
    }

    /// The floor `floor` is written: generations below it have no table to
    /// forget from any more.
    pub(super) fn floor_moved(&mut self, floor: GenerationId) {
        self.exact_floor = floor;
        self.forgets.retain(|g, _| *g >= floor);
    }

    /// Refuses operations on a deleted namespace or a closed tracker.
    pub(super) fn usable(&self, name: &NamespaceName) -> Result<(), Error> {
        if self.deleted {
            return Err(Error::UnknownNamespace(name.to_string()));
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(super) fn add_pending(&mut self, g: GenerationId, n: u64) {
        match self.pending.iter_mut().find(|(id, _)| *id == g) {
            Some((_, count)) => *count += n,
            None => self.pending.push((g, n)),
        }
    }

    /// Settles `n` pending writes of `g`.
    pub(super) fn settle_pending(&mut self, g: GenerationId, n: u64) {
        if let Some(at) = self.pending.iter().position(|(id, _)| *id == g) {
            let count = &mut self.pending[at].1;
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.pending.swap_remove(at);
            }
        }
    }

    pub(super) fn pending_in(&self, g: GenerationId) -> u64 {
        self.pending
            .iter()
            .find(|(id, _)| *id == g)
            .map_or(0, |(_, n)| *n)
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The floor the configuration asks for: only the newest `exact_generations`
    /// keep tables, tables never come back, and nothing below the oldest live
    /// generation has one.
    pub(super) fn wanted_floor(&self) -> GenerationId {
        GenerationId(ring_policy::wanted_floor(
            self.exact_floor.0,
            self.ring.current().id().0,
            self.ring.oldest().id().0,
            self.ring.config().exact_generations(),
        ))
    }

    /// The highest floor, up to the wanted one, that every generation it passes is
    /// ready for (see [`ready_to_lose_table`](Self::ready_to_lose_table)); never
    /// below the oldest live generation.
    pub(super) fn ready_floor(&self, persistent: bool) -> GenerationId {
        GenerationId(ring_policy::ready_floor(
            self.exact_floor.0,
            self.ring.oldest().id().0,
            self.wanted_floor().0,
            |g| {
                self.ring
                    .generation(GenerationId(g))
                    .is_some_and(|g| self.ready_to_lose_table(g, persistent))
            },
        ))
    }

    /// Whether a generation may lose its exact table now: sealed, every write into
    /// it settled, its snapshot saved (where snapshots are kept), and its filter
    /// within the rate a Bloom-only generation must now meet.
    pub(super) fn ready_to_lose_table(&self, g: &Generation, persistent: bool) -> bool {
        g.sealed_at().is_some()
            && self.pending_in(g.id()) == 0
            && !(persistent && self.unsaved.contains(&g.id()))
            && !self.needs_resize(g)
    }

    /// Whether a sealed generation's filter, with the IDs it holds, answers false
    /// positives above the rate each generation must meet under the configuration
    /// now in force: it holds more IDs than it was sized for (a store from before
    /// filters were sized per generation), was filled for a looser rate (before the
    /// target was lowered or `generations` raised), or lays its bits out the first
    /// standard way, which misses low rates ([`Layout::StandardV1`]), or still
    /// holds the bits of IDs forgotten since it was built. Such a filter is rebuilt
    /// from its exact table while it still has one.
    pub(super) fn needs_resize(&self, g: &Generation) -> bool {
        let target = self.ring.config().generation_fp_rate();
        g.sealed_at().is_some()
            && (ring_policy::filter_too_loose(g.filter().sizing(), g.ids(), target)
                || self.forgets_unbuilt(g.id()) > 0)
    }
}
