//! Generations: a ring of Bloom filters that forgets the oldest slice of IDs.
//!
//! A namespace's memory is a ring of up to `generations` [`Generation`]s. The newest
//! is open and takes every new ID; it seals when it holds `generation_capacity` new IDs
//! or has been open for `generation_span`, whichever comes first. Sealing opens a new
//! generation and, once the ring is full, drops the oldest. Memory stays bounded and
//! every ID is remembered for the window [`NamespaceConfig::remembers_at_least`]
//! states.
//!
//! Time-based sealing is lazy: [`GenerationRing::due`] compares the injected clock with
//! the open generation's age on every access (and a background ticker can call it on
//! idle namespaces). Sealing late only lengthens memory, never shortens it, and a new
//! generation's span starts when it opens.
//!
//! Ages are time on the ring's clock. A persisted ring comes back rebased onto the
//! new run's clock ([`crate::Tracker`] shifts its timestamps so that the open
//! generation keeps the age it had when the previous run last recorded its clock):
//! downtime and wall-clock steps between runs do not age a generation, so a span is
//! at least that much real time.
//!
//! The ring on its own is a complete in-memory deduplicator
//! ([`GenerationRing::check_and_mark`]). [`crate::Tracker`] adds exact tables and
//! persistence around it.

use std::collections::VecDeque;

use crate::clock::Timestamp;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::{BloomFilter, FilterStats};
use crate::hash::{HashSeed, IdHash};

/// The sequence number of a generation within its namespace: 1, 2, 3, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GenerationId(pub u64);

/// One slice of a namespace's memory.
#[derive(Clone, Debug)]
pub struct Generation {
    id: GenerationId,
    filter: BloomFilter,
    opened_at: Timestamp,
    sealed_at: Option<Timestamp>,
    ids: u64,
    /// How many IDs it takes before sealing: the namespace's capacity, unless its
    /// filter holds fewer within the namespace's rate (after a reconfiguration).
    seal_at: u64,
}

impl Generation {
    /// A generation rebuilt from persisted parts. It seals at its filter's capacity
    /// until a ring says otherwise.
    #[must_use]
    pub const fn from_parts(
        id: GenerationId,
        filter: BloomFilter,
        opened_at: Timestamp,
        sealed_at: Option<Timestamp>,
        ids: u64,
    ) -> Self {
        let seal_at = filter.sizing().capacity;
        Self {
            id,
            filter,
            opened_at,
            sealed_at,
            ids,
            seal_at,
        }
    }

    /// Its sequence number.
    #[must_use]
    pub const fn id(&self) -> GenerationId {
        self.id
    }

    /// Its filter.
    #[must_use]
    pub const fn filter(&self) -> &BloomFilter {
        &self.filter
    }

    /// When it opened.
    #[must_use]
    pub const fn opened_at(&self) -> Timestamp {
        self.opened_at
    }

    /// When it sealed; `None` while it is open.
    #[must_use]
    pub const fn sealed_at(&self) -> Option<Timestamp> {
        self.sealed_at
    }

    /// New IDs marked into it.
    #[must_use]
    pub const fn ids(&self) -> u64 {
        self.ids
    }

    /// The IDs its filter was sized for.
    #[must_use]
    pub const fn capacity(&self) -> u64 {
        self.filter.sizing().capacity
    }

    /// How many IDs it holds when it seals (while open): the namespace's capacity,
    /// or fewer when its filter, sized before a reconfiguration, would otherwise
    /// exceed the namespace's false-positive target.
    #[must_use]
    pub const fn seals_at(&self) -> u64 {
        self.seal_at
    }

    /// Statistics of its filter (constant time).
    #[must_use]
    pub fn stats(&self) -> FilterStats {
        self.filter.stats()
    }
}

/// Why a generation sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SealReason {
    /// It held `generation_capacity` new IDs.
    Capacity,
    /// It had been open for `generation_span`.
    Span,
    /// A caller asked for it.
    Manual,
}

/// What a rotation did.
#[derive(Debug)]
#[must_use]
pub struct Rotation {
    /// The generation that sealed.
    pub sealed: GenerationId,
    /// Why.
    pub reason: SealReason,
    /// The generation that opened.
    pub opened: GenerationId,
    /// Generations that left the ring, oldest first.
    pub dropped: Vec<Generation>,
}

/// A ring of generations: the newest open, up to `generations` in all.
#[derive(Clone, Debug)]
pub struct GenerationRing {
    config: NamespaceConfig,
    seed: HashSeed,
    /// Oldest first; the back is open.
    gens: VecDeque<Generation>,
}

impl GenerationRing {
    /// A ring with one empty, open generation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the filter cannot be allocated.
    pub fn new(config: NamespaceConfig, seed: HashSeed, now: Timestamp) -> Result<Self, Error> {
        let mut first = Generation::from_parts(
            GenerationId(1),
            BloomFilter::new(config.filter_sizing(), seed)?,
            now,
            None,
            0,
        );
        first.seal_at = seal_limit(&config, &first.filter);
        Ok(Self {
            config,
            seed,
            gens: VecDeque::from([first]),
        })
    }

    /// A ring rebuilt from persisted generations, given oldest first with the newest
    /// open.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the generations are not in increasing order, the
    /// newest is sealed, an older one is open, or a filter's seed differs.
    pub fn restore(
        config: NamespaceConfig,
        seed: HashSeed,
        gens: Vec<Generation>,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "generations",
            reason,
        };
        let Some(newest) = gens.last() else {
            return Err(bad("no generations to restore".into()));
        };
        if newest.sealed_at.is_some() {
            return Err(bad(format!("newest generation {} is sealed", newest.id.0)));
        }
        for pair in gens.windows(2) {
            if pair[0].id >= pair[1].id || pair[0].sealed_at.is_none() {
                return Err(bad(format!(
                    "generations {} and {} are out of order or the older is open",
                    pair[0].id.0, pair[1].id.0
                )));
            }
        }
        if let Some(g) = gens.iter().find(|g| g.filter.seed() != seed) {
            return Err(bad(format!("generation {} has another hash seed", g.id.0)));
        }
        let mut ring = Self {
            config,
            seed,
            gens: gens.into(),
        };
        ring.trim();
        ring.reset_seal();
        Ok(ring)
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &NamespaceConfig {
        &self.config
    }

    /// Replaces the configuration. The new filter size applies from the next
    /// generation on; the open generation seals at the new capacity, or earlier when
    /// its filter would otherwise exceed the new false-positive target, never later
    /// than its filter's own capacity. A smaller `generations` drops the oldest
    /// generations now.
    ///
    /// Returns the configuration replaced and the generations dropped, which
    /// [`undo_reconfigure`](Self::undo_reconfigure) puts back.
    pub fn reconfigure(&mut self, config: NamespaceConfig) -> (NamespaceConfig, Vec<Generation>) {
        let old = std::mem::replace(&mut self.config, config);
        let dropped = self.trim();
        self.reset_seal();
        (old, dropped)
    }

    /// Reverts [`reconfigure`](Self::reconfigure), when what it implies could not be
    /// persisted.
    pub fn undo_reconfigure(&mut self, old: NamespaceConfig, dropped: Vec<Generation>) {
        self.config = old;
        for g in dropped.into_iter().rev() {
            self.gens.push_front(g);
        }
        self.reset_seal();
    }

    /// How many IDs a ring with `config` would drop at once: `generations` live
    /// generations beyond the new ring size.
    #[must_use]
    pub fn would_drop(&self, config: &NamespaceConfig) -> usize {
        self.gens
            .len()
            .saturating_sub(config.generations() as usize)
    }

    fn reset_seal(&mut self) {
        let config = &self.config;
        let open = self
            .gens
            .back_mut()
            .expect("a ring always has an open generation");
        open.seal_at = seal_limit(config, &open.filter);
    }

    /// The hash seed.
    #[must_use]
    pub const fn seed(&self) -> HashSeed {
        self.seed
    }

    /// Hashes an ID with the ring's seed.
    #[inline]
    #[must_use]
    pub fn hash(&self, id: &[u8]) -> IdHash {
        self.seed.hash(id)
    }

    /// The open generation.
    #[must_use]
    pub fn current(&self) -> &Generation {
        self.gens
            .back()
            .expect("a ring always has an open generation")
    }

    /// Live generations, newest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Generation> + DoubleEndedIterator {
        self.gens.iter().rev()
    }

    /// Number of live generations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.gens.len()
    }

    /// Always `false`: a ring holds at least its open generation.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Why the open generation must seal now, if it must.
    #[must_use]
    pub fn due(&self, now: Timestamp) -> Option<SealReason> {
        let open = self.current();
        if open.ids >= open.seal_at {
            Some(SealReason::Capacity)
        } else if now.saturating_since(open.opened_at) >= self.config.generation_span() {
            Some(SealReason::Span)
        } else {
            None
        }
    }

    /// Seals the open generation, opens a new one at `now` and drops what no longer
    /// fits the ring.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the new filter cannot be allocated; the ring is
    /// then unchanged.
    pub fn rotate(&mut self, now: Timestamp, reason: SealReason) -> Result<Rotation, Error> {
        let filter = BloomFilter::new(self.config.filter_sizing(), self.seed)?;
        Ok(self.rotate_with(filter, now, reason))
    }

    /// [`rotate`](Self::rotate) with the new generation's (empty) filter supplied.
    fn rotate_with(&mut self, filter: BloomFilter, now: Timestamp, reason: SealReason) -> Rotation {
        let open = self
            .gens
            .back_mut()
            .expect("a ring always has an open generation");
        open.sealed_at = Some(now);
        let sealed = open.id;
        let opened = GenerationId(sealed.0 + 1);
        let mut new = Generation::from_parts(opened, filter, now, None, 0);
        new.seal_at = seal_limit(&self.config, &new.filter);
        self.gens.push_back(new);
        Rotation {
            sealed,
            reason,
            opened,
            dropped: self.trim(),
        }
    }

    /// Reverts the last rotation, when what it implies could not be persisted.
    pub(crate) fn undo(&mut self, rotation: Rotation) {
        let opened = self.gens.pop_back().expect("the rotation's new generation");
        debug_assert_eq!(opened.id, rotation.opened);
        let sealed = self
            .gens
            .back_mut()
            .expect("the rotation's sealed generation");
        debug_assert_eq!(sealed.id, rotation.sealed);
        sealed.sealed_at = None;
        for g in rotation.dropped.into_iter().rev() {
            self.gens.push_front(g);
        }
    }

    /// The oldest live generation.
    #[must_use]
    pub fn oldest(&self) -> &Generation {
        self.gens
            .front()
            .expect("a ring always has an open generation")
    }

    /// Seals as often as the clock and capacity require (at most once per call:
    /// a generation opened now is neither full nor old).
    ///
    /// # Errors
    ///
    /// As [`rotate`](Self::rotate).
    pub fn advance(&mut self, now: Timestamp) -> Result<Option<Rotation>, Error> {
        match self.due(now) {
            Some(reason) => self.rotate(now, reason).map(Some),
            None => Ok(None),
        }
    }

    /// Whether any live generation may hold the ID.
    #[must_use]
    pub fn contains(&self, id: &[u8]) -> bool {
        self.contains_hash(self.hash(id))
    }

    /// [`contains`](Self::contains) for a hash from [`hash`](Self::hash).
    #[must_use]
    pub fn contains_hash(&self, h: IdHash) -> bool {
        self.gens.iter().rev().any(|g| g.filter.contains_hash(h))
    }

    /// The live generations whose filters may hold the hash, newest first.
    pub fn hits(&self, h: IdHash) -> impl Iterator<Item = &Generation> {
        self.gens
            .iter()
            .rev()
            .filter(move |g| g.filter.contains_hash(h))
    }

    /// Adds a hash to the open generation as a new ID. Callers decide newness (this
    /// counts the ID towards the generation's capacity whatever its filter says).
    pub fn record_new(&mut self, h: IdHash) {
        let open = self
            .gens
            .back_mut()
            .expect("a ring always has an open generation");
        let _ = open.filter.insert_hash(h);
        open.ids += 1;
    }

    /// Counts one new ID into the open generation without touching its filter, and
    /// returns the generation: [`crate::Tracker`] sets an ID's bits only once its mark
    /// has landed ([`insert_landed`](Self::insert_landed)), so that a mark that fails
    /// or is given back leaves no trace a Bloom-only generation could report.
    pub(crate) fn count_new(&mut self) -> GenerationId {
        let open = self
            .gens
            .back_mut()
            .expect("a ring always has an open generation");
        open.ids += 1;
        open.id
    }

    /// Sets the bits of a landed mark in its generation, if that is still live.
    pub(crate) fn insert_landed(&mut self, generation: GenerationId, h: IdHash) {
        if let Some(g) = self.generation_mut(generation) {
            let _ = g.filter.insert_hash(h);
        }
    }

    /// A live generation by id.
    #[must_use]
    pub fn generation(&self, id: GenerationId) -> Option<&Generation> {
        self.position(id).map(|at| &self.gens[at])
    }

    fn generation_mut(&mut self, id: GenerationId) -> Option<&mut Generation> {
        self.position(id).map(|at| &mut self.gens[at])
    }

    /// Where a generation sits: ids are consecutive, so its offset from the oldest,
    /// checked (a restored ring need only be increasing).
    fn position(&self, id: GenerationId) -> Option<usize> {
        let guess = usize::try_from(id.0.checked_sub(self.oldest().id.0)?).ok()?;
        if self.gens.get(guess).is_some_and(|g| g.id == id) {
            return Some(guess);
        }
        self.gens.iter().position(|g| g.id == id)
    }

    /// Replaces a sealed generation's filter with one rebuilt from its exact table
    /// (sized for the rate a Bloom-only generation must meet). `false` when the
    /// generation is gone or open.
    pub(crate) fn replace_filter(&mut self, id: GenerationId, filter: BloomFilter) -> bool {
        self.swap_filter(id, filter).is_some()
    }

    /// [`replace_filter`](Self::replace_filter), handing the filter it replaced
    /// back (to put back if what replaced it is undone).
    pub(crate) fn swap_filter(
        &mut self,
        id: GenerationId,
        filter: BloomFilter,
    ) -> Option<BloomFilter> {
        match self.generation_mut(id) {
            Some(g) if g.sealed_at.is_some() => Some(std::mem::replace(&mut g.filter, filter)),
            _ => None,
        }
    }

    /// Takes back the count of `n` IDs recorded into `generation` whose write
    /// failed, if it is still in the ring. Their filter bits stay: at worst a few
    /// more false positives, never a false negative.
    pub fn unrecord(&mut self, generation: GenerationId, n: u64) {
        if let Some(g) = self.gens.iter_mut().find(|g| g.id == generation) {
            g.ids = g.ids.saturating_sub(n);
        }
    }

    /// In-memory check-and-mark: rotates if due, then answers whether the ID was
    /// possibly seen within the window, marking it when it was not.
    ///
    /// # Errors
    ///
    /// As [`rotate`](Self::rotate).
    pub fn check_and_mark(&mut self, id: &[u8], now: Timestamp) -> Result<bool, Error> {
        let _ = self.advance(now)?;
        let h = self.hash(id);
        if self.contains_hash(h) {
            return Ok(true);
        }
        self.record_new(h);
        Ok(false)
    }

    fn trim(&mut self) -> Vec<Generation> {
        let keep = self.config.generations() as usize;
        let excess = self.gens.len().saturating_sub(keep);
        self.gens.drain(..excess).collect()
    }
}

/// The IDs after which a generation with `filter` seals under `config` (see
/// `ring_policy::seal_limit`).
fn seal_limit(config: &NamespaceConfig, filter: &BloomFilter) -> u64 {
    crate::ring_policy::seal_limit(
        config.generation_capacity(),
        Some(filter.sizing()),
        config.generation_fp_rate(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(generations: u32, capacity: u64, span_ms: u64) -> NamespaceConfig {
        NamespaceConfig::builder()
            .generations(generations)
            .exact_generations(1)
            .generation_capacity(capacity)
            .generation_span(Duration::from_millis(span_ms))
            .fp_rate(1e-6)
            .build()
            .unwrap()
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn seals_on_capacity() {
        let mut ring =
            GenerationRing::new(config(3, 2, 1_000_000), HashSeed::from_u64(1), t(0)).unwrap();
        assert!(!ring.check_and_mark(b"a", t(0)).unwrap());
        assert!(!ring.check_and_mark(b"b", t(0)).unwrap());
        assert_eq!(ring.due(t(0)), Some(SealReason::Capacity));
        assert!(!ring.check_and_mark(b"c", t(0)).unwrap());
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.current().id(), GenerationId(2));
        assert!(ring.check_and_mark(b"a", t(0)).unwrap());
    }

    #[test]
    fn seals_on_span_and_drops_the_oldest() {
        let mut ring =
            GenerationRing::new(config(2, 1_000, 100), HashSeed::from_u64(1), t(0)).unwrap();
        assert!(!ring.check_and_mark(b"a", t(0)).unwrap());
        assert_eq!(ring.due(t(99)), None);
        assert_eq!(ring.due(t(100)), Some(SealReason::Span));
        assert!(
            ring.check_and_mark(b"a", t(150)).unwrap(),
            "one span later: still remembered"
        );
        let rotation = ring.advance(t(250)).unwrap().expect("due");
        assert_eq!(rotation.dropped.len(), 1);
        assert_eq!(rotation.dropped[0].id(), GenerationId(1));
        assert!(!ring.contains(b"a"), "two seals later: forgotten");
    }

    #[test]
    fn restore_checks_order_and_seed() {
        let ring = GenerationRing::new(config(3, 10, 100), HashSeed::from_u64(1), t(0)).unwrap();
        let open = ring.current().clone();
        assert!(
            GenerationRing::restore(
                ring.config().clone(),
                HashSeed::from_u64(1),
                vec![open.clone()]
            )
            .is_ok()
        );
        assert!(
            GenerationRing::restore(
                ring.config().clone(),
                HashSeed::from_u64(2),
                vec![open.clone()]
            )
            .is_err()
        );
        assert!(
            GenerationRing::restore(ring.config().clone(), HashSeed::from_u64(1), vec![]).is_err()
        );
        assert!(
            GenerationRing::restore(
                ring.config().clone(),
                HashSeed::from_u64(1),
                vec![open.clone(), open]
            )
            .is_err()
        );
    }

    #[test]
    fn undo_restores_the_ring() {
        let mut ring =
            GenerationRing::new(config(2, 1, 1_000), HashSeed::from_u64(1), t(0)).unwrap();
        let _ = ring.check_and_mark(b"a", t(0)).unwrap();
        let _ = ring.check_and_mark(b"b", t(0)).unwrap();
        let before: Vec<(GenerationId, Option<Timestamp>)> =
            ring.iter().map(|g| (g.id(), g.sealed_at())).collect();
        let rotation = ring.rotate(t(5), SealReason::Manual).unwrap();
        assert_eq!(rotation.dropped.len(), 1);
        ring.undo(rotation);
        let after: Vec<(GenerationId, Option<Timestamp>)> =
            ring.iter().map(|g| (g.id(), g.sealed_at())).collect();
        assert_eq!(before, after);
        assert!(ring.contains(b"a") && ring.contains(b"b"));
    }

    #[test]
    fn shrinking_the_ring_drops_the_oldest_now() {
        let mut ring =
            GenerationRing::new(config(4, 1, 1_000), HashSeed::from_u64(1), t(0)).unwrap();
        for i in 0..5_u8 {
            let _ = ring.check_and_mark(&[i], t(0)).unwrap();
        }
        assert_eq!(ring.len(), 4);
        let (_, dropped) = ring.reconfigure(config(2, 1, 1_000));
        assert_eq!(dropped.len(), 2);
        assert_eq!(ring.len(), 2);
    }
}
