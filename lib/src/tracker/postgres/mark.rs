//! Checks and check-and-marks on PostgreSQL: one call of `mark_ids` (see
//! `functions.sql`), in the tracker's own autocommit statement or inside the
//! caller's transaction, with what this node's filters say as hints.
//!
//! The node probes the Bloom filters of sealed generations in memory, so that
//! `mark_ids` looks an ID up only in the tables whose filter holds it, and answers
//! `probable_duplicate` for one that only a Bloom-only generation holds. The hints
//! carry the ring version they were made for; for any other, `mark_ids` changes
//! nothing and answers `stale`, and the node reads the ring again.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::Ctx;
use super::ring::{NsCache, Ring};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::hash::IdHash;
use crate::id::EventId;
use crate::verdict::Verdict;

/// What a call asks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ask<'a> {
    /// Check only (mark nothing).
    pub(crate) check: bool,
    /// Answer [`Answer::Due`] (or [`Answer::Full`]) when the open generation must
    /// rotate first, rather than mark (the caller rotates).
    pub(crate) rotate: bool,
    /// A checkpoint to store with the marks, in the same statement.
    pub(crate) checkpoint: Option<(&'a str, &'a str)>,
}

/// The owner tokens of a call's IDs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Owners<'a> {
    /// None: a retry answers `duplicate`.
    None,
    /// One for every ID: one caller's call.
    One(&'a str),
    /// One (or none) per distinct ID: several callers' calls sharing a statement.
    Each(&'a [Option<&'a str>]),
}

impl Owners<'_> {
    const fn one(&self) -> Option<&str> {
        match self {
            Self::One(o) => Some(o),
            Self::None | Self::Each(_) => None,
        }
    }

    const fn each(&self) -> Option<&[Option<&str>]> {
        match self {
            Self::Each(each) => Some(each),
            Self::None | Self::One(_) => None,
        }
    }
}

/// What `mark_ids` answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// One verdict per distinct ID.
    Decided(Vec<Verdict>),
    /// The ring the hints were made for is not the namespace's any more (its
    /// version, or the namespace itself): read it again.
    Stale,
    /// No such namespace.
    Unknown,
    /// The open generation holds its capacity: it must rotate first.
    Full,
    /// The open generation's span has passed (asked with `rotate`).
    Due,
}

/// A batch's distinct IDs, in ascending order (the order `mark_ids` takes them in
/// and locks them in), and how to give every position its verdict back.
pub(crate) struct Distinct<'a> {
    pub(crate) ids: Vec<&'a [u8]>,
    /// For every position of the batch, its ID's index in `ids`.
    first: Vec<usize>,
}

impl<'a> Distinct<'a> {
    pub(crate) fn new(batch: &[EventId<'a>]) -> Self {
        let mut ids: Vec<&'a [u8]> = batch.iter().map(|id| id.as_bytes()).collect();
        ids.sort_unstable();
        ids.dedup();
        let first = batch
            .iter()
            .map(|id| {
                ids.binary_search(&id.as_bytes())
                    .expect("every ID is among the distinct ones")
            })
            .collect();
        Self { ids, first }
    }

    /// The batch's verdicts from the distinct IDs': a repeat follows its first
    /// occurrence, except that a `new` repeated is, for a mark (`check` false), the
    /// same owner's replay (or, with no owner, a duplicate).
    pub(crate) fn spread(&self, decided: &[Verdict], check: bool, owned: bool) -> Vec<Verdict> {
        let mut seen = vec![false; self.ids.len()];
        self.first
            .iter()
            .map(|&k| {
                let repeat = std::mem::replace(&mut seen[k], true);
                match decided[k] {
                    Verdict::New if repeat && !check && owned => Verdict::Replayed,
                    Verdict::New if repeat && !check => Verdict::Duplicate,
                    other => other,
                }
            })
            .collect()
    }

    /// The batch's answers to a forget from the distinct IDs': a repeat is `false`
    /// (its first occurrence forgot it, if anything did).
    pub(crate) fn spread_forgotten(&self, decided: &[bool]) -> Vec<bool> {
        let mut seen = vec![false; self.ids.len()];
        self.first
            .iter()
            .map(|&k| !std::mem::replace(&mut seen[k], true) && decided[k])
            .collect()
    }
}

/// The hints for `ids` from the ring's filters: (ID, generation) pairs to look up,
/// the generations to look every ID up in (sealed, no filter yet), the IDs a
/// Bloom-only filter holds. Indexes are 1-based, as SQL arrays are.
struct Hints {
    look_idx: Vec<i32>,
    look_gen: Vec<i64>,
    look_all: Vec<i64>,
    bloom: Vec<i32>,
}

fn hints(ns: &NsCache, ring: &Ring, ids: &[&[u8]]) -> Hints {
    let mut h = Hints {
        look_idx: Vec::new(),
        look_gen: Vec::new(),
        look_all: Vec::new(),
        bloom: Vec::new(),
    };
    if ring.sealed.is_empty() {
        return h;
    }
    let hashes: Vec<IdHash> = ids.iter().map(|id| ns.seed.hash(id)).collect();
    let mut bloom = vec![false; ids.len()];
    for g in ring
        .sealed
        .iter()
        .rev()
        .filter(|g| g.generation >= ring.oldest)
    {
        let exact = g.generation >= ring.floor;
        match &g.filter {
            // Not built yet: the generation is exact (the floor waits for its
            // filter), and every ID must be looked up.
            None => h.look_all.push(g.generation),
            Some(f) => {
                for (i, hit) in f.contains_batch(&hashes).into_iter().enumerate() {
                    if !hit {
                        continue;
                    }
                    if exact {
                        h.look_idx.push(one_based(i));
                        h.look_gen.push(g.generation);
                    } else {
                        bloom[i] = true;
                    }
                }
            }
        }
    }
    h.bloom = (0..ids.len())
        .filter(|&i| bloom[i])
        .map(one_based)
        .collect();
    h
}

fn one_based(i: usize) -> i32 {
    i32::try_from(i + 1).unwrap_or(i32::MAX)
}

/// Calls `mark_ids` for the distinct, sorted `ids` with the ring `ring` of `ns`.
pub(crate) async fn call<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: &NsCache,
    ring: &Ring,
    ids: &[&[u8]],
    owners: Owners<'_>,
    ask: &Ask<'_>,
) -> Result<Answer, Error> {
    debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "distinct and sorted");
    let h = hints(ns, ring, ids);
    let (consumer, position) = ask.checkpoint.unzip();
    let now = ctx.injected_now();
    let (owner, each) = (owners.one(), owners.each());
    let rows = ctx
        .query(
            client,
            &format!(
                "SELECT idx, verdict, until_ms FROM {}.mark_ids(
                     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                ctx.schema
            ),
            &[
                (&ns.name.as_str(), Type::TEXT),
                (&ns.id, Type::INT4),
                (&ring.version, Type::INT8),
                (&ids, Type::BYTEA_ARRAY),
                (&owner, Type::TEXT),
                (&each, Type::TEXT_ARRAY),
                (&ask.check, Type::BOOL),
                (&ask.rotate, Type::BOOL),
                (&now, Type::INT8),
                (&h.look_idx, Type::INT4_ARRAY),
                (&h.look_gen, Type::INT8_ARRAY),
                (&h.look_all, Type::INT8_ARRAY),
                (&h.bloom, Type::INT4_ARRAY),
                (&consumer, Type::TEXT),
                (&position, Type::TEXT),
            ],
        )
        .await?;
    let mut verdicts = vec![Verdict::New; ids.len()];
    for row in &rows {
        let idx: i32 = row.get(0);
        let verdict: &str = row.get(1);
        let until: Option<i64> = row.get(2);
        if idx == 0 {
            return Ok(match verdict {
                "stale" => Answer::Stale,
                "unknown" => Answer::Unknown,
                "full" => Answer::Full,
                "due" => Answer::Due,
                other => return Err(unexpected(other)),
            });
        }
        let slot = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| verdicts.get_mut(i))
            .ok_or_else(|| unexpected(&format!("index {idx}")))?;
        *slot = match verdict {
            "duplicate" => Verdict::Duplicate,
            "replayed" => Verdict::Replayed,
            "probable_duplicate" => Verdict::ProbableDuplicate,
            "in_progress" => Verdict::InProgress {
                until: Timestamp::from_millis(until.unwrap_or(0).max(0) as u64),
            },
            other => return Err(unexpected(other)),
        };
    }
    Ok(Answer::Decided(verdicts))
}

fn unexpected(what: &str) -> Error {
    Error::Corrupt(format!(
        "mark_ids answered {what:?}, which this build does not know: is the schema's \
         function from another version?"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_follow_their_first_occurrence() {
        let batch = EventId::batch(&["a", "b", "a", "c", "b", "a"]).unwrap();
        let distinct = Distinct::new(&batch);
        assert_eq!(distinct.ids, [&b"a"[..], b"b", b"c"], "sorted");
        use Verdict::{Duplicate, New, ProbableDuplicate, Replayed};
        let decided = [New, Duplicate, ProbableDuplicate];
        assert_eq!(
            distinct.spread(&decided, false, false),
            [
                New,
                Duplicate,
                Duplicate,
                ProbableDuplicate,
                Duplicate,
                Duplicate
            ],
            "without an owner, a new repeated is a duplicate"
        );
        assert_eq!(
            distinct.spread(&decided, false, true),
            [
                New,
                Duplicate,
                Replayed,
                ProbableDuplicate,
                Duplicate,
                Replayed
            ],
            "with one, the same owner's replay"
        );
        assert_eq!(
            distinct.spread(&decided, true, false),
            [New, Duplicate, New, ProbableDuplicate, Duplicate, New],
            "a check repeats its answer"
        );
    }
}
