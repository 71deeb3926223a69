//! Group commit for small marks: the marks that callers on different connections
//! send at about the same moment go to the tracker as one call, one RocksDB write.
//!
//! A client that sends one `SET NX` and waits for its answer gives the server one
//! mark at a time; eight such clients give it eight marks at once, on eight
//! connections. Written one by one, each pays a whole write-ahead-log write, and
//! two writers on two cores spend their time in RocksDB's write queue handing the
//! log to each other (`perf` on `redis-benchmark -P 1 -c 8`: the writes and the
//! write thread's waits, `sched_yield` included, are the daemon's own largest cost).
//! Redis writes its AOF once per event-loop pass for the same reason.
//!
//! So a caller puts its calls in the queue; the first to find no leader leads: it
//! yields once, so that the connections whose commands are ready on its worker
//! parse them and queue theirs, takes everything queued and sends each
//! namespace's calls as one tracker call; it repeats while calls keep coming, at
//! most [`LEADER_ROUNDS`] rounds, then hands what is left to a task of its own,
//! so that its own answer is not held up by a steady stream of others'.
//!
//! Measured with `redis-benchmark -P 1 -c 8 --threads 1` on two cores, the
//! release build, alternating with Redis 7 (AOF everysec) at 100,000-117,000
//! requests/s: one write per `SET NX`, 65,000-66,600; this queue without the
//! yield, 55,000-60,000 (rounds of about 2.5 marks, from `strace -c`: the
//! hand-offs cost about what the saved writes gave); with it, on one worker
//! (`--worker-threads 1`), 75,000-82,600, and on two, 48,000-56,000, where the
//! other worker's wake-ups (`epoll_wait`, `futex`) are the cost. A leader spawned
//! as a task for every round answered 51,000-53,000.
//!
//! Each caller still holds its own
//! admission permit, and each call is validated on its own by the tracker, so a bad
//! call fails alone, as it would have alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use oncely::CallVerdicts;
use tokio::sync::oneshot;

use super::authority::{Admitted, MarkCall, borrow_calls};
use super::error::ApiError;
use super::state::AppState;

/// The answer to one queued caller: one entry per call it queued.
type Answer = Result<Vec<CallVerdicts>, ApiError>;

/// Rounds a caller serves before it hands the lead to a task and takes its answer.
const LEADER_ROUNDS: usize = 2;

/// What callers have queued, and whether a leader is serving the queue.
#[derive(Default)]
pub(crate) struct Combiner {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    leading: bool,
    waiting: Vec<Waiting>,
}

struct Waiting {
    namespace: Arc<str>,
    calls: Vec<MarkCall>,
    answer: oneshot::Sender<Answer>,
    /// Held until the caller is answered: `max_concurrency` counts queued marks.
    _admitted: Admitted,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl AppState {
    /// Queues `calls` (marks in `namespace`) to go to the tracker with the other
    /// callers' queued at the same moment, and waits for their verdicts.
    pub(crate) async fn combined_marks(
        &self,
        admitted: Admitted,
        namespace: Arc<str>,
        calls: Vec<MarkCall>,
    ) -> Answer {
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut pending = lock(&self.inner.combiner);
            pending.waiting.push(Waiting {
                namespace,
                calls,
                answer,
                _admitted: admitted,
            });
            !std::mem::replace(&mut pending.leading, true)
        };
        if lead {
            self.lead(LEADER_ROUNDS).await;
        }
        answered.await.unwrap_or_else(|_| {
            Err(ApiError::internal(
                "a combined write was dropped unanswered",
            ))
        })
    }

    /// Serves the queue until it is empty, or for `rounds` rounds and then hands
    /// what is left to a task of its own, so that a caller leading under a steady
    /// load is not kept from its own answer.
    async fn lead(&self, rounds: usize) {
        let mut guard = Leading {
            state: self,
            done: false,
        };
        for _ in 0..rounds {
            // The connections whose commands are ready on this worker run first
            // and join this round (see the module's measurements).
            tokio::task::yield_now().await;
            let round = {
                let mut pending = lock(&self.inner.combiner);
                if pending.waiting.is_empty() {
                    pending.leading = false;
                    guard.done = true;
                    return;
                }
                std::mem::take(&mut pending.waiting)
            };
            let mut round = round.into_iter().map(Some).collect::<Vec<_>>();
            // One tracker call per namespace, in the order the namespaces came.
            for first in 0..round.len() {
                let Some(head) = round[first].as_ref() else {
                    continue;
                };
                let namespace = Arc::clone(&head.namespace);
                let members: Vec<Waiting> = round[first..]
                    .iter_mut()
                    .filter(|w| w.as_ref().is_some_and(|w| w.namespace == namespace))
                    .filter_map(Option::take)
                    .collect();
                // At most `max_ids` IDs per tracker call, as one HTTP request
                // holds (each member holds at most that many): a write far larger
                // can stall the store.
                let max_ids = self.limits().max_ids;
                let mut chunk = Vec::new();
                let mut ids = 0;
                for member in members {
                    let n: usize = member.calls.iter().map(|c| c.ids.len()).sum();
                    if !chunk.is_empty() && ids + n > max_ids {
                        self.write_round(Arc::clone(&namespace), std::mem::take(&mut chunk))
                            .await;
                        ids = 0;
                    }
                    ids += n;
                    chunk.push(member);
                }
                if !chunk.is_empty() {
                    self.write_round(namespace, chunk).await;
                }
            }
        }
        // Still leading: the task takes over the lead.
        guard.done = true;
        tokio::spawn(self.clone().lead_on());
    }

    /// [`Self::lead`] as a task: boxed, so that a leader handing over to a task
    /// does not make its own future's type (and its `Send`) depend on itself.
    fn lead_on(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.lead(usize::MAX).await })
    }

    /// One tracker call for `members`' calls, each member answered with its own.
    async fn write_round(&self, namespace: Arc<str>, members: Vec<Waiting>) {
        let mut calls = Vec::with_capacity(members.iter().map(|m| m.calls.len()).sum());
        let mut answers = Vec::with_capacity(members.len());
        for m in members {
            answers.push((m.calls.len(), m.answer, m._admitted));
            calls.extend(m.calls);
        }
        let each = self.mark_calls(namespace, calls).await;
        match each {
            Ok(each) => {
                let mut each = each.into_iter();
                for (n, answer, _admitted) in answers {
                    let _ = answer.send(Ok(each.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for (_, answer, _admitted) in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }

    /// The tracker call itself: on this worker when it need not wait, else on the
    /// blocking pool under the deadline.
    async fn mark_calls(&self, namespace: Arc<str>, calls: Vec<MarkCall>) -> Answer {
        let each = {
            let borrowed = borrow_calls(&calls);
            self.inline(|tracker| Ok(tracker.try_check_and_mark_each(&namespace, &borrowed)?))?
        };
        match each {
            Some(each) => Ok(each),
            None => {
                self.blocking_unadmitted(move |tracker| {
                    let borrowed = borrow_calls(&calls);
                    Ok(tracker.check_and_mark_each(&namespace, &borrowed)?)
                })
                .await
            }
        }
    }
}

/// A leader's watch: should it stop before the queue is served (a tracker call
/// that panics, a caller's future dropped mid-round), its round's callers get
/// their senders dropped ("dropped unanswered"), and whoever queued since gets a
/// new leader rather than waiting for one that is gone.
struct Leading<'a> {
    state: &'a AppState,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut pending = lock(&self.state.inner.combiner);
        if pending.waiting.is_empty() {
            pending.leading = false;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.state.clone().lead_on());
        }
    }
}

fn lock(combiner: &Combiner) -> std::sync::MutexGuard<'_, Pending> {
    // Nothing panics while holding it; a poisoned queue is still a queue.
    combiner
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
