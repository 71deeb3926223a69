//! Small calls of many callers at once share one statement.
//!
//! A mark on PostgreSQL costs a round trip and a commit whatever its size, and the
//! database's work per statement (its lock, its ring read, its count) is several
//! times its work per ID: `mark_ids` for one ID ran at 0.45x a bare single-row
//! insert under `pgbench` (8 clients, this machine), a 1,000-ID batch at 0.85x the
//! same batch inserted bare. So while a namespace already has calls in flight,
//! further small calls (at most [`MAX_IDS`] distinct IDs each) wait in its lane,
//! and the next statement carries all of them: one `mark_ids` with an owner token
//! per ID. A lone call never waits: it goes at once, and only calls that would
//! otherwise queue for the database join others.
//!
//! Calls share a statement only when their IDs are disjoint, so that each is
//! decided exactly as it would be alone (an ID two calls carry waits for the next
//! statement, after the first call's, and so does every later call carrying it).
//! The statement commits or fails as a whole; a failure that is one ID's (another
//! transaction held it past the lock timeout) sends each call again on its own, so
//! that one busy ID never fails another caller's call.
//!
//! Calls that come in an order ([`Pg::in_order`]: a RESP pipeline, or the daemon's
//! own group of several connections' marks) go the same way, a wave at a time: the
//! longest run of calls whose IDs are disjoint goes to the lane at once (so it
//! shares statements), and the next wave only after it is decided, so that a later
//! call sees every earlier one. Sent one transaction after the other instead, eight
//! `redis-benchmark` connections pipelining 16 `SET NX` each got 264 requests/s
//! (one commit, one fsync, per command).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::Pg;
use super::mark::{Ask, Owners};
use crate::error::Error;
use crate::id::NamespaceName;
use crate::verdict::Verdict;

/// Calls of at most this many distinct IDs are combined; larger ones are batches
/// already, and go on their own.
pub(crate) const MAX_IDS: usize = 64;

/// Statements a namespace's lane keeps in flight at once. Two keep the database busy
/// with one statement while the next fills up; more would mostly split the waiting
/// calls into smaller statements.
const MAX_IN_FLIGHT: usize = 2;

/// The most IDs one shared statement carries.
const MAX_STATEMENT_IDS: usize = 1_000;

/// The lanes of every namespace this node marks in.
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<String, Arc<Lane>>>);

#[derive(Default)]
pub(crate) struct Lane(Mutex<LaneState>);

#[derive(Default)]
struct LaneState {
    in_flight: usize,
    queue: VecDeque<Waiting>,
}

/// A call waiting for a statement.
struct Waiting {
    /// Distinct, sorted.
    ids: Vec<Vec<u8>>,
    owner: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Verdict>, Error>>,
}

impl Lanes {
    fn lane(&self, name: &NamespaceName) -> Arc<Lane> {
        let mut lanes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(lanes.entry(name.to_string()).or_default())
    }
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One call's distinct, sorted IDs and its owner token.
pub(crate) type Call<'a> = (Vec<&'a [u8]>, Option<&'a str>);

const MARK: Ask<'static> = Ask {
    check: false,
    rotate: true,
    checkpoint: None,
};

impl Pg {
    /// A small call of distinct, sorted IDs, in its namespace's lane: at once when
    /// fewer than [`MAX_IN_FLIGHT`] statements are in flight, else with the calls
    /// waiting beside it, in the next statement. A verdict per ID.
    pub(crate) async fn combined(
        &self,
        name: &NamespaceName,
        ids: &[&[u8]],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let mut answers = self.combined_disjoint(name, &[(ids.to_vec(), owner)]).await;
        answers.pop().unwrap_or_else(|| Err(dropped()))
    }

    /// Small calls with pairwise disjoint IDs (each distinct and sorted), in their
    /// namespace's lane as one: at once, in statements of their own, when fewer than
    /// [`MAX_IN_FLIGHT`] statements are in flight, else queued together for the
    /// next statement. A result per call, in order.
    async fn combined_disjoint(
        &self,
        name: &NamespaceName,
        members: &[Call<'_>],
    ) -> Vec<Result<Vec<Verdict>, Error>> {
        let lane = self.inner.lanes.lane(name);
        let waiting = {
            let mut state = lane.state();
            if state.in_flight < MAX_IN_FLIGHT {
                state.in_flight += 1;
                None
            } else {
                let answers = members
                    .iter()
                    .map(|(ids, owner)| {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        state.queue.push_back(Waiting {
                            ids: ids.iter().map(|id| id.to_vec()).collect(),
                            owner: owner.map(str::to_owned),
                            reply,
                        });
                        answer
                    })
                    .collect::<Vec<_>>();
                Some(answers)
            }
        };
        if let Some(answers) = waiting {
            let mut each = Vec::with_capacity(answers.len());
            for answer in answers {
                each.push(answer.await.unwrap_or_else(|_| Err(dropped())));
            }
            return each;
        }
        // Whatever becomes of this future, the lane's slot is handed on.
        let slot = Slot {
            pg: self,
            lane: &lane,
            name,
        };
        let mut each = Vec::with_capacity(members.len());
        for statement in statements(members) {
            each.extend(self.decide_group(name, statement).await);
        }
        drop(slot);
        each
    }

    /// Calls in their order, each decided as it would be alone after the ones
    /// before it: waves of calls with disjoint IDs, each wave in the lane as one
    /// (see the module's notes), and a call of more than [`MAX_IDS`] IDs alone.
    /// `calls` are distinct, sorted IDs with their owner, or `None` for a call
    /// refused already, which is skipped (and answered `None`).
    pub(crate) async fn in_order(
        &self,
        name: &NamespaceName,
        calls: &[Option<Call<'_>>],
    ) -> Vec<Option<Result<Vec<Verdict>, Error>>> {
        let mut each: Vec<Option<Result<Vec<Verdict>, Error>>> =
            std::iter::repeat_with(|| None).take(calls.len()).collect();
        let mut wave: Vec<usize> = Vec::new();
        let mut wave_ids: HashSet<&[u8]> = HashSet::new();
        for (i, call) in calls.iter().enumerate() {
            let Some((ids, owner)) = call else {
                continue;
            };
            if ids.is_empty() {
                each[i] = Some(Ok(Vec::new()));
                continue;
            }
            let small = ids.len() <= MAX_IDS;
            if !small || ids.iter().any(|id| wave_ids.contains(id)) {
                self.send_wave(name, calls, &mut wave, &mut each).await;
                wave_ids.clear();
            }
            if small {
                wave.push(i);
                wave_ids.extend(ids.iter().copied());
            } else {
                let owners = owner.map_or(Owners::None, Owners::One);
                each[i] = Some(self.decide(name, ids, owners, MARK).await);
            }
        }
        self.send_wave(name, calls, &mut wave, &mut each).await;
        each
    }

    /// One wave of [`Self::in_order`], answered in `each`; `wave` is emptied.
    async fn send_wave(
        &self,
        name: &NamespaceName,
        calls: &[Option<Call<'_>>],
        wave: &mut Vec<usize>,
        each: &mut [Option<Result<Vec<Verdict>, Error>>],
    ) {
        if wave.is_empty() {
            return;
        }
        let members: Vec<Call<'_>> = wave.iter().filter_map(|&i| calls[i].clone()).collect();
        let answers = self.combined_disjoint(name, &members).await;
        for (i, answer) in wave.drain(..).zip(answers) {
            each[i] = Some(answer);
        }
    }

    /// After a statement of the lane: the calls that waited meanwhile go in the
    /// next one, from the engine's runtime (the caller who sent this one has its
    /// answer and goes on).
    fn hand_on(&self, lane: &Arc<Lane>, name: &NamespaceName) {
        {
            let mut state = lane.state();
            if state.queue.is_empty() {
                state.in_flight -= 1;
                return;
            }
        }
        let pg = self.clone();
        let lane = Arc::clone(lane);
        let name = name.clone();
        self.runtime().spawn(async move {
            // Handed on when the queue is empty, and also should a statement panic
            // (the calls of that statement are told they were dropped).
            let _slot = Slot {
                pg: &pg,
                lane: &lane,
                name: &name,
            };
            loop {
                let group = take_group(&mut lane.state().queue);
                if group.is_empty() {
                    return;
                }
                let members: Vec<Call<'_>> = group
                    .iter()
                    .map(|w| {
                        (
                            w.ids.iter().map(Vec::as_slice).collect(),
                            w.owner.as_deref(),
                        )
                    })
                    .collect();
                let answers = pg.decide_group(&name, &members).await;
                drop(members);
                for (w, answer) in group.into_iter().zip(answers) {
                    // A caller that stopped waiting has gone: nothing to tell.
                    let _ = w.reply.send(answer);
                }
            }
        });
    }

    /// Calls with disjoint IDs in one statement: each call's verdicts per its own
    /// (distinct, sorted) IDs. One ID held by another transaction fails the
    /// statement: then each call goes again on its own.
    async fn decide_group(
        &self,
        name: &NamespaceName,
        members: &[Call<'_>],
    ) -> Vec<Result<Vec<Verdict>, Error>> {
        if let [(ids, owner)] = members {
            let owners = owner.map_or(Owners::None, Owners::One);
            return vec![self.decide(name, ids, owners, MARK).await];
        }
        // All the IDs, sorted, each with its owner and where its verdict goes.
        let mut all: Vec<(&[u8], Option<&str>, usize, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(m, (ids, owner))| {
                ids.iter()
                    .enumerate()
                    .map(move |(i, id)| (*id, *owner, m, i))
            })
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let ids: Vec<&[u8]> = all.iter().map(|a| a.0).collect();
        let owners: Vec<Option<&str>> = all.iter().map(|a| a.1).collect();
        match self.decide(name, &ids, Owners::Each(&owners), MARK).await {
            Ok(verdicts) => {
                let mut answers: Vec<Vec<Verdict>> = members
                    .iter()
                    .map(|(ids, _)| vec![Verdict::New; ids.len()])
                    .collect();
                for ((_, _, m, i), v) in all.iter().zip(verdicts) {
                    answers[*m][*i] = v;
                }
                answers.into_iter().map(Ok).collect()
            }
            Err(Error::Busy(_)) => {
                let mut answers = Vec::with_capacity(members.len());
                for (ids, owner) in members {
                    let owners = owner.map_or(Owners::None, Owners::One);
                    answers.push(self.decide(name, ids, owners, MARK).await);
                }
                answers
            }
            Err(e) => members.iter().map(|_| Err(shared(&e))).collect(),
        }
    }
}

/// The next statement's calls: from the front of the queue, those whose IDs are
/// disjoint from the ones taken before them, up to [`MAX_STATEMENT_IDS`]; the
/// others keep their places.
///
/// An ID of a call left behind is taken by no later call of this statement either:
/// calls carrying one ID are decided in the order they came.
fn take_group(queue: &mut VecDeque<Waiting>) -> Vec<Waiting> {
    // Every ID of a call seen so far, taken or left behind.
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut group = Vec::new();
    let mut kept = VecDeque::with_capacity(queue.len());
    let mut size = 0;
    while let Some(w) = queue.pop_front() {
        let fits = group.is_empty()
            || (size + w.ids.len() <= MAX_STATEMENT_IDS
                && w.ids.iter().all(|id| !seen.contains(id)));
        seen.extend(w.ids.iter().cloned());
        if fits {
            size += w.ids.len();
            group.push(w);
        } else {
            kept.push_back(w);
        }
    }
    *queue = kept;
    group
}

/// Disjoint calls cut into statements of at most [`MAX_STATEMENT_IDS`] IDs, in order
/// (a call is never split).
fn statements<'m, 'a>(members: &'m [Call<'a>]) -> impl Iterator<Item = &'m [Call<'a>]> {
    let mut rest = members;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let mut n = 0;
        for (ids, _) in rest {
            if n > 0 && size + ids.len() > MAX_STATEMENT_IDS {
                break;
            }
            size += ids.len();
            n += 1;
        }
        let (statement, after) = rest.split_at(n);
        rest = after;
        Some(statement)
    })
}

/// A lane's in-flight slot, held by whoever sends its statements (a caller, or the
/// task that serves the queue): handed on when it is done, or dropped mid-way (a
/// panic, a dropped future), so that the calls queued behind it are never left
/// without a sender.
struct Slot<'a> {
    pg: &'a Pg,
    lane: &'a Arc<Lane>,
    name: &'a NamespaceName,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.pg.hand_on(self.lane, self.name);
    }
}

fn dropped() -> Error {
    Error::Unavailable("the call waiting for a shared statement was dropped".into())
}

/// A statement's failure, told to each call it carried.
fn shared(e: &Error) -> Error {
    match e {
        Error::Busy(m) => Error::Busy(m.clone()),
        Error::UnknownNamespace(n) => Error::UnknownNamespace(n.clone()),
        Error::Closed => Error::Closed,
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        other => Error::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(ids: &[&str]) -> Waiting {
        let (reply, _) = tokio::sync::oneshot::channel();
        Waiting {
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
            owner: None,
            reply,
        }
    }

    #[test]
    fn a_statement_takes_calls_with_disjoint_ids_in_order() {
        let mut queue: VecDeque<Waiting> = [
            waiting(&["a", "b"]),
            waiting(&["b", "c"]),
            waiting(&["d"]),
            waiting(&["c"]),
        ]
        .into_iter()
        .collect();
        let ids =
            |g: &[Waiting]| -> Vec<Vec<Vec<u8>>> { g.iter().map(|w| w.ids.clone()).collect() };
        let first = take_group(&mut queue);
        assert_eq!(
            ids(&first),
            [vec![b"a".to_vec(), b"b".to_vec()], vec![b"d".to_vec()]]
        );
        let second = take_group(&mut queue);
        assert_eq!(
            ids(&second),
            [vec![b"b".to_vec(), b"c".to_vec()]],
            "the call that overlapped waits its turn, and the later call carrying \
             one of its IDs waits behind it"
        );
        assert_eq!(ids(&take_group(&mut queue)), [vec![b"c".to_vec()]]);
        assert!(take_group(&mut queue).is_empty());
    }

    #[test]
    fn statements_keep_calls_whole_and_in_order() {
        let a: Vec<&[u8]> = vec![b"a"; 600];
        let b: Vec<&[u8]> = vec![b"b"; 300];
        let c: Vec<&[u8]> = vec![b"c"; 200];
        let d: Vec<&[u8]> = vec![b"d"; 1_200];
        let members = vec![
            (a, None),
            (b, None),
            (c, None),
            (d, None),
            (vec![&b"e"[..]], None),
        ];
        let sizes: Vec<Vec<usize>> = statements(&members)
            .map(|s| s.iter().map(|(ids, _)| ids.len()).collect())
            .collect();
        assert_eq!(sizes, [vec![600, 300], vec![200], vec![1_200], vec![1]]);
    }
}
