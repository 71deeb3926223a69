//! Auto-batching: concurrent check-and-mark calls from many tasks share requests.
//!
//! Calls are grouped in lanes: one namespace, one owner (or none), one retry policy.
//! A call finds its lane idle (fewer than `max_in_flight` requests in flight) and
//! goes at once, alone, from the caller's own task: an idle client waits for
//! nothing. Otherwise it joins the lane's open batch and waits; a batch goes when a
//! request of the lane is answered (the lane's queue moves on, oldest batch first),
//! when its first call has waited `window`, or when it holds `max_ids` IDs. This is
//! "natural batching": the busier the daemon, the fuller the requests, with no
//! timer on the idle path.
//!
//! A batch never carries the same ID twice (a second call with an ID already in the
//! batch opens the next one), so two deliveries of one event coalesced together
//! cannot both read `new` under the batch's shared owner token. A batch the daemon
//! refuses as a whole (400: a bad ID, too many IDs; 413) marked nothing, so its calls
//! are sent again one by one and each gets its own answer. Other errors (the
//! daemon unreachable, 503 after retries) are every call's.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::{Client, Marked, random_owner};
use crate::error::{Error, Shared};
use crate::retry::RetryPolicy;

/// The longest event ID the API takes, in bytes (the daemon's `invalid_id` rule).
const MAX_ID_BYTES: usize = 256;

/// How [`Client::check_and_mark`] coalesces concurrent calls (on by default; see
/// [`ClientBuilder::batching`](crate::ClientBuilder::batching)).
///
/// Most consumers mark one event at a time from many tasks: a webhook handler, a
/// queue worker. One request per event costs the daemon an HTTP exchange and a
/// write per ID; the same IDs in one request cost one of each for all of them.
///
/// # When a call waits
///
/// Calls to one namespace with the same owner (every `owner: None` call is in one
/// such lane) and the same retry policy form a lane. A call of at most
/// [`max_ids`](Self::max_ids) IDs whose lane has fewer than
/// [`max_in_flight`](Self::max_in_flight) requests in flight is sent at once, alone,
/// from the caller's task, exactly as with batching off: **an idle client adds no
/// wait**. Otherwise the call waits for batch mates, and the waiting calls go as one
/// request as soon as one of the lane's requests is answered, when the first of them
/// has waited [`window`](Self::window), or when they hold `max_ids` IDs, whichever
/// comes first. So a call waits at most `window` before it is sent, and only while
/// the lane is busy.
///
/// # What coalesced calls share, and what they do not
///
/// * Each call gets its own verdicts, for its own IDs, in its own order.
/// * A request carries one owner token. Calls with an owner are only coalesced with
///   calls of the same owner; `owner: None` calls share a token the client draws for
///   their request, and [`Marked::owner`] returns it to each. Replay works as for a
///   lone call: a retry of the request after a lost answer (the client's own retry,
///   or yours with that token and your own IDs) gets [`Verdict::Replayed`](crate::Verdict::Replayed).
/// * A request never carries the same ID twice: two calls with the same ID go in
///   separate requests, so exactly one of them reads `new`.
/// * A bad ID fails its own call only. A call that would wait is checked before it
///   joins a batch (1 to 256 bytes per ID, the daemon's rule) and refused at once
///   with the daemon's own 400 `invalid_id` and wording, the index counted in the
///   call's own IDs, and [`Error::attempts`] 0: no request was made. (A call that
///   goes alone is answered by the daemon, as with batching off.) Should the
///   daemon still refuse a whole request with 400 or 413 (a `max_ids` lower than
///   this [`max_ids`](Self::max_ids), say), nothing in it was marked, and its calls
///   are sent again one by one: each gets its own answer.
/// * Other failures are shared: a daemon that cannot be reached, or answers 503
///   until the retries run out, fails every call of the request, each with its own
///   copy of the error.
/// * The retry budget and deadline of a request are those of its calls' policy
///   (calls with different policies are never coalesced), counted from when its
///   first call was made.
/// * A call whose future is dropped while it waits is left out of the request.
///   Once sent, it stays sent, as any request that may have reached the daemon.
///
/// ```
/// use std::time::Duration;
/// use oncely_client::{Batching, Client};
///
/// let client = Client::builder("http://127.0.0.1:7070")
///     .batching(Batching::default().window(Duration::from_millis(5)).max_in_flight(2))
///     .build()?;
/// assert!(client.batching_stats().is_some());
/// let lone = Client::builder("http://127.0.0.1:7070").no_batching().build()?;
/// assert!(lone.batching_stats().is_none());
/// # Ok::<(), oncely_client::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batching {
    /// Requests of one lane in flight before a call waits for batch mates (at least
    /// 1).
    pub max_in_flight: usize,
    /// The longest a call waits for batch mates before it is sent.
    pub window: Duration,
    /// The most IDs in one coalesced request (at least 1; at most the daemon's
    /// `max_ids`, 10,000 by default). Larger calls are sent alone.
    pub max_ids: usize,
}

impl Default for Batching {
    /// 4 requests in flight per lane, a 1 ms window, 1,000 IDs per request.
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            window: Duration::from_millis(1),
            max_ids: 1_000,
        }
    }
}

impl Batching {
    /// With `n` requests of a lane in flight before calls wait.
    #[must_use]
    pub const fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// With this longest wait for batch mates.
    #[must_use]
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// With at most `n` IDs per coalesced request.
    #[must_use]
    pub const fn max_ids(mut self, n: usize) -> Self {
        self.max_ids = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == 0 {
            return Err(Error::Config {
                setting: "batching.max_in_flight",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_ids == 0 {
            return Err(Error::Config {
                setting: "batching.max_ids",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// What auto-batching has done since the client was built
/// ([`Client::batching_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Check-and-mark calls that went through batching.
    pub calls: u64,
    /// Requests they were sent in (retries not counted): `calls / requests` calls
    /// per request on average.
    pub requests: u64,
    /// Calls waiting for batch mates right now.
    pub waiting: u64,
}

/// The client's batching state: lanes and counters.
pub(crate) struct Batcher {
    config: Batching,
    lanes: Mutex<HashMap<Arc<LaneKey>, Lane, Keyed>>,
    /// The hasher of IDs for the one-ID-per-batch rule.
    ids: Keyed,
    next_seq: AtomicU64,
    calls: AtomicU64,
    requests: AtomicU64,
    waiting: AtomicU64,
}

/// Calls that may share a request.
#[derive(Debug)]
struct LaneKey {
    namespace: String,
    owner: Option<String>,
    policy: RetryPolicy,
}

/// A lane's key as a call has it, borrowed: finding the lane allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LaneRef<'a> {
    namespace: &'a str,
    owner: Option<&'a str>,
    policy: RetryPolicy,
}

impl LaneRef<'_> {
    fn to_key(self) -> LaneKey {
        LaneKey {
            namespace: self.namespace.to_owned(),
            owner: self.owner.map(str::to_owned),
            policy: self.policy,
        }
    }
}

/// What the lane map hashes and compares: its own keys and a call's borrowed one
/// alike (the map is keyed by `Arc<LaneKey>` and looked up by `dyn AsLane`).
trait AsLane {
    fn lane(&self) -> LaneRef<'_>;
}

impl AsLane for LaneKey {
    fn lane(&self) -> LaneRef<'_> {
        LaneRef {
            namespace: &self.namespace,
            owner: self.owner.as_deref(),
            policy: self.policy,
        }
    }
}

impl AsLane for LaneRef<'_> {
    fn lane(&self) -> LaneRef<'_> {
        *self
    }
}

impl PartialEq for LaneKey {
    fn eq(&self, other: &Self) -> bool {
        self.lane() == other.lane()
    }
}

impl Eq for LaneKey {}

impl Hash for LaneKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.lane().hash(state);
    }
}

impl PartialEq for dyn AsLane + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.lane() == other.lane()
    }
}

impl Eq for dyn AsLane + '_ {}

impl Hash for dyn AsLane + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.lane().hash(state);
    }
}

impl<'a> Borrow<dyn AsLane + 'a> for Arc<LaneKey> {
    fn borrow(&self) -> &(dyn AsLane + 'a) {
        &**self
    }
}

struct Lane {
    /// The map's key, for the requests and timers of the lane.
    key: Arc<LaneKey>,
    in_flight: usize,
    /// Batches not yet sent, oldest first; only the newest takes calls.
    queue: VecDeque<Batch>,
}

/// Calls waiting to go in one request.
struct Batch {
    seq: u64,
    /// Every call's IDs, one after the other.
    ids: Vec<String>,
    /// Hashes of `ids` ([`Batcher::ids`]).
    seen: HashSet<u64, Keyed>,
    calls: Vec<Waiter>,
    /// When its first call was made: the request's deadline counts from then.
    opened: Instant,
}

/// One waiting call: its IDs in the batch, and where its answer goes.
struct Waiter {
    range: Range<usize>,
    tx: oneshot::Sender<Result<Marked, Error>>,
}

impl Batcher {
    pub(crate) fn new(config: Batching) -> Self {
        Self {
            config,
            lanes: Mutex::new(HashMap::with_hasher(Keyed::new())),
            ids: Keyed::new(),
            next_seq: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    pub(crate) const fn config(&self) -> &Batching {
        &self.config
    }

    /// Whether a call of `n` IDs goes through batching (an empty call, or one larger
    /// than a batch, gains nothing from it).
    pub(crate) const fn takes(&self, n: usize) -> bool {
        n > 0 && n <= self.config.max_ids
    }

    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            calls: self.calls.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, HashMap<Arc<LaneKey>, Lane, Keyed>> {
        // Nothing panics while the lock is held; if it ever did, the map is still
        // whole (every change to it is a single insert, remove or push).
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `batch` out of the waiting count, as it is sent.
    fn dequeued(&self, batch: &Batch) {
        self.waiting
            .fetch_sub(batch.calls.len() as u64, Ordering::Relaxed);
    }
}

/// What a call does once it has joined its lane.
enum Admission {
    /// Send at once, alone: the lane had a free slot.
    Alone(Arc<LaneKey>),
    /// Fail at once: a bad ID, in a call that would have waited for batch mates.
    Refused(Error),
    /// Wait for the answer; maybe send a batch now, maybe start its window.
    Queued {
        rx: oneshot::Receiver<Result<Marked, Error>>,
        /// The lane's key, for the batch the call sends or the window it starts.
        key: Arc<LaneKey>,
        send: Option<Batch>,
        timer: Option<u64>,
    },
}

/// [`Client::check_and_mark`] with batching on, for calls the batcher takes.
pub(crate) async fn check_and_mark<S: AsRef<str>>(
    client: &Client,
    batcher: &Batcher,
    namespace: &str,
    ids: &[S],
    owner: Option<&str>,
) -> Result<Marked, Error> {
    let bad_id = check_ids(ids).err();
    let lane = LaneRef {
        namespace,
        owner,
        policy: client.retry_policy(),
    };
    match admit(batcher, lane, ids, bad_id) {
        Admission::Refused(e) => Err(e),
        Admission::Alone(key) => {
            // The slot is given back (and the lane's queue moved on) however this
            // ends, the caller dropping the future included.
            let _slot = Slot::new(client.clone(), Arc::clone(&key));
            batcher.requests.fetch_add(1, Ordering::Relaxed);
            let owner = match owner {
                Some(o) => o.to_owned(),
                None => random_owner()?,
            };
            let end = Instant::now() + key.policy.deadline;
            client.mark_once(namespace, ids, owner, end).await
        }
        Admission::Queued {
            rx,
            key,
            send,
            timer,
        } => {
            if let Some(batch) = send {
                let slot = Slot::new(client.clone(), Arc::clone(&key));
                tokio::spawn(run(slot, batch));
            }
            // (When the new batch was the one sent, its timer finds nothing.)
            if let Some(seq) = timer {
                tokio::spawn(expire(client.clone(), key, seq));
            }
            match rx.await {
                Ok(answer) => answer,
                // Only when the task sending the request was dropped unfinished: the
                // runtime is shutting down.
                Err(_) => Err(Error::Transport {
                    url: client.mark_url(namespace).to_string(),
                    attempts: 0,
                    source: "the request carrying this call ended without an answer \
                             (is the runtime shutting down?)"
                        .into(),
                }),
            }
        }
    }
}

/// Joins the call to its lane: a free slot, or the lane's open batch. A call with
/// a bad ID (`bad_id`) goes alone when it can, so that the daemon answers it as it
/// would with batching off, and never joins a batch.
fn admit<S: AsRef<str>>(
    batcher: &Batcher,
    wanted: LaneRef<'_>,
    ids: &[S],
    bad_id: Option<Error>,
) -> Admission {
    let max = batcher.config.max_in_flight;
    let mut lanes = batcher.lanes();
    let lane = match lanes.get_mut(&wanted as &dyn AsLane) {
        Some(lane) => lane,
        None => {
            let key = Arc::new(wanted.to_key());
            lanes.entry(Arc::clone(&key)).or_insert(Lane {
                key,
                in_flight: 0,
                queue: VecDeque::new(),
            })
        }
    };
    if lane.queue.is_empty() && lane.in_flight < max {
        lane.in_flight += 1;
        batcher.calls.fetch_add(1, Ordering::Relaxed);
        return Admission::Alone(Arc::clone(&lane.key));
    }
    if let Some(e) = bad_id {
        if lane.in_flight == 0 && lane.queue.is_empty() {
            lanes.remove(&wanted as &dyn AsLane);
        }
        return Admission::Refused(e);
    }
    batcher.calls.fetch_add(1, Ordering::Relaxed);
    let hashes: Vec<u64> = ids
        .iter()
        .map(|id| batcher.ids.hash_one(id.as_ref()))
        .collect();
    let fits = |b: &Batch| {
        b.ids.len() + ids.len() <= batcher.config.max_ids
            && hashes.iter().all(|h| !b.seen.contains(h))
    };
    let mut timer = None;
    let mut batch = match lane.queue.pop_back() {
        Some(open) if fits(&open) => open,
        last => {
            lane.queue.extend(last);
            let seq = batcher.next_seq.fetch_add(1, Ordering::Relaxed);
            timer = Some(seq);
            Batch {
                seq,
                ids: Vec::with_capacity(ids.len()),
                seen: HashSet::with_capacity_and_hasher(ids.len(), batcher.ids),
                calls: Vec::with_capacity(1),
                opened: Instant::now(),
            }
        }
    };
    let (tx, rx) = oneshot::channel();
    let start = batch.ids.len();
    batch
        .ids
        .extend(ids.iter().map(|id| id.as_ref().to_owned()));
    batch.seen.extend(hashes);
    batch.calls.push(Waiter {
        range: start..batch.ids.len(),
        tx,
    });
    batcher.waiting.fetch_add(1, Ordering::Relaxed);
    // A full batch gains nothing by waiting; and a lane with a free slot (left by a
    // request whose end could not start the next one) sends its oldest batch now.
    let send = if batch.ids.len() >= batcher.config.max_ids {
        Some(batch)
    } else {
        lane.queue.push_back(batch);
        if lane.in_flight < max {
            lane.queue.pop_front()
        } else {
            None
        }
    };
    if let Some(b) = &send {
        lane.in_flight += 1;
        batcher.dequeued(b);
    }
    Admission::Queued {
        rx,
        key: Arc::clone(&lane.key),
        send,
        timer,
    }
}

/// The batcher's hasher, of IDs (the one-ID-per-batch rule) and of lane keys: a
/// multiply-rotate over 8-byte words, keyed per client, then MurmurHash3's 64-bit
/// finaliser. It does not defend against crafted collisions, and need not: two IDs
/// that collide only open the next batch early, and lane keys are the caller's own
/// namespaces and owners. SipHash, which does defend, was 16% of a coalesced call's
/// instructions (callgrind, `client_batching --max-in-flight 2`).
#[derive(Clone, Copy)]
struct Keyed {
    key: u64,
}

impl Keyed {
    fn new() -> Self {
        Self {
            key: RandomState::new().hash_one(0_u64),
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = Mix;

    fn build_hasher(&self) -> Mix {
        Mix(self.key)
    }
}

/// The state of a [`Keyed`] hash.
struct Mix(u64);

impl Mix {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::M).rotate_left(29);
    }
}

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        self.word((bytes.len() as u64).wrapping_mul(Self::M));
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("chunks of 8")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0_u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.word(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.word(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.word(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.word(n as u64);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The window of batch `seq`: when it ends with the batch still waiting, the batch
/// goes, whatever the lane has in flight.
async fn expire(client: Client, key: Arc<LaneKey>, seq: u64) {
    let Some(batcher) = client.batcher() else {
        return;
    };
    tokio::time::sleep(batcher.config.window).await;
    let batch = {
        let mut lanes = batcher.lanes();
        let Some(lane) = lanes.get_mut(&key) else {
            return;
        };
        let Some(at) = lane.queue.iter().position(|b| b.seq == seq) else {
            return;
        };
        let Some(batch) = lane.queue.remove(at) else {
            return;
        };
        lane.in_flight += 1;
        batcher.dequeued(&batch);
        batch
    };
    run(Slot::new(client, key), batch).await;
}

/// A request slot of a lane, given back on drop: the lane's oldest waiting batch
/// then takes it over (in a task of its own), or the lane has one fewer request in
/// flight.
struct Slot {
    client: Client,
    key: Arc<LaneKey>,
}

impl Slot {
    /// For a slot already counted in the lane's `in_flight`.
    const fn new(client: Client, key: Arc<LaneKey>) -> Self {
        Self { client, key }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(batcher) = self.client.batcher() else {
            return;
        };
        // A slot dropped outside a runtime (a future dropped after its runtime
        // ended) cannot start a task: its lane's waiting batches then go when their
        // windows end, and the timers of a runtime that ended with them never do.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let next = {
            let mut lanes = batcher.lanes();
            let Some(lane) = lanes.get_mut(&self.key) else {
                return;
            };
            let next = runtime.as_ref().and_then(|_| lane.queue.pop_front());
            match &next {
                Some(batch) => batcher.dequeued(batch),
                None => {
                    lane.in_flight = lane.in_flight.saturating_sub(1);
                    if lane.in_flight == 0 && lane.queue.is_empty() {
                        lanes.remove(&self.key);
                    }
                }
            }
            next
        };
        if let (Some(batch), Some(runtime)) = (next, runtime) {
            let slot = Self::new(self.client.clone(), Arc::clone(&self.key));
            runtime.spawn(run(slot, batch));
        }
    }
}

/// Sends one batch on a slot, then gives the slot back.
async fn run(slot: Slot, batch: Batch) {
    send_batch(&slot.client, &slot.key, batch).await;
    drop(slot);
}

/// Sends a batch as one request and hands each call its answer.
async fn send_batch(client: &Client, key: &LaneKey, batch: Batch) {
    let Some(batcher) = client.batcher() else {
        return;
    };
    let Batch {
        ids, calls, opened, ..
    } = batch;
    // Calls whose callers have gone are left out.
    let (ids, calls) = withdraw_abandoned(ids, calls);
    if calls.is_empty() {
        return;
    }
    batcher.requests.fetch_add(1, Ordering::Relaxed);
    let end = opened + key.policy.deadline;
    let owner = match &key.owner {
        Some(o) => o.clone(),
        None => match random_owner() {
            Ok(o) => o,
            Err(e) => return fail_all(calls, e),
        },
    };
    match client
        .mark_once(&key.namespace, &ids, owner.clone(), end)
        .await
    {
        Ok(marked) => {
            for w in calls {
                let verdicts = marked.verdicts[w.range].to_vec();
                let _ = w.tx.send(Ok(Marked {
                    owner: marked.owner.clone(),
                    verdicts,
                }));
            }
        }
        Err(e) if calls.len() > 1 && refused_whole(&e) => {
            // Nothing in the request was marked: each call goes again on its own,
            // with the same token, and gets the answer it would have had alone.
            for w in calls {
                let client = client.clone();
                let namespace = key.namespace.clone();
                let owner = owner.clone();
                let own: Vec<String> = ids[w.range].to_vec();
                batcher.requests.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let answer = client.mark_once(&namespace, &own, owner, end).await;
                    let _ = w.tx.send(answer);
                });
            }
        }
        Err(e) => fail_all(calls, e),
    }
}

fn fail_all(calls: Vec<Waiter>, e: Error) {
    let shared = Shared::from(e);
    for w in calls {
        let _ = w.tx.send(Err(shared.get()));
    }
}

/// The IDs and calls of a batch without the calls nobody waits for any more.
fn withdraw_abandoned(ids: Vec<String>, calls: Vec<Waiter>) -> (Vec<String>, Vec<Waiter>) {
    if calls.iter().all(|w| !w.tx.is_closed()) {
        return (ids, calls);
    }
    let mut kept_ids = Vec::with_capacity(ids.len());
    let mut kept = Vec::with_capacity(calls.len());
    let mut ids = ids.into_iter().map(Some).collect::<Vec<_>>();
    for w in calls {
        if w.tx.is_closed() {
            continue;
        }
        let start = kept_ids.len();
        kept_ids.extend(ids[w.range].iter_mut().filter_map(Option::take));
        kept.push(Waiter {
            range: start..kept_ids.len(),
            tx: w.tx,
        });
    }
    (kept_ids, kept)
}

/// Whether the daemon refused the request as a whole for what it carried, so that
/// nothing in it was marked and its calls may fare differently alone: 400 (a bad
/// ID, too many IDs, ...) and 413 (too large a body).
fn refused_whole(e: &Error) -> bool {
    matches!(
        e.status(),
        Some(StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE)
    )
}

/// The daemon's ID rule, checked before a call joins a batch, so that a bad ID
/// fails its own call and not its batch mates': the daemon's own 400 `invalid_id`,
/// worded as the daemon words it, with no request made.
fn check_ids<S: AsRef<str>>(ids: &[S]) -> Result<(), Error> {
    for (index, id) in ids.iter().enumerate() {
        let len = id.as_ref().len();
        let reason = if len == 0 {
            "empty".to_owned()
        } else if len > MAX_ID_BYTES {
            format!("{len} bytes, over the limit of {MAX_ID_BYTES}")
        } else {
            continue;
        };
        return Err(Error::Http {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_id".into(),
            message: format!("invalid event id at index {index}: {reason}"),
            attempts: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_the_daemons_rule_and_words() {
        assert!(check_ids(&["a", &"x".repeat(256)]).is_ok());
        let e = check_ids(&["a", ""]).unwrap_err();
        assert_eq!(e.code(), Some("invalid_id"));
        assert_eq!(e.attempts(), 0);
        assert_eq!(
            e.to_string(),
            "400 Bad Request invalid_id: invalid event id at index 1: empty"
        );
        let long = "é".repeat(129);
        let e = check_ids(&[long.as_str()]).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("invalid event id at index 0: 258 bytes, over the limit of 256"),
            "{e}"
        );
    }

    #[test]
    fn a_call_finds_its_lane_by_a_borrowed_key() {
        let policy = RetryPolicy::default();
        let wanted: Vec<LaneRef<'_>> = [("a", None), ("a", Some("o")), ("b", None), ("", Some(""))]
            .into_iter()
            .map(|(namespace, owner)| LaneRef {
                namespace,
                owner,
                policy,
            })
            .collect();
        let mut lanes: HashMap<Arc<LaneKey>, usize, Keyed> = HashMap::with_hasher(Keyed::new());
        for (i, lane) in wanted.iter().enumerate() {
            lanes.insert(Arc::new(lane.to_key()), i);
        }
        assert_eq!(lanes.len(), 4, "no two of them are one lane");
        for (i, lane) in wanted.iter().enumerate() {
            assert_eq!(lanes.get(lane as &dyn AsLane), Some(&i));
        }
        let other = LaneRef {
            namespace: "a",
            owner: None,
            policy: policy.attempts(policy.attempts + 1),
        };
        assert_eq!(lanes.get(&other as &dyn AsLane), None, "the policy counts");
    }

    #[test]
    fn id_hashes_are_keyed_and_tell_ids_apart() {
        let (k7, k8) = (Keyed { key: 7 }, Keyed { key: 8 });
        let ids: Vec<String> = (0..10_000).map(|i| format!("event-{i}")).collect();
        let hashes: HashSet<u64> = ids.iter().map(|id| k7.hash_one(id)).collect();
        assert_eq!(hashes.len(), ids.len());
        // Every length up to two words and a bit, zero bytes all.
        let lengths: HashSet<u64> = (0..=17).map(|n| k7.hash_one(vec![0_u8; n])).collect();
        assert_eq!(lengths.len(), 18);
        assert_eq!(k7.hash_one("x"), k7.hash_one("x"));
        assert_ne!(k7.hash_one("x"), k8.hash_one("x"));
    }

    #[test]
    fn settings_are_validated() {
        assert!(Batching::default().validate().is_ok());
        assert!(Batching::default().max_in_flight(0).validate().is_err());
        assert!(Batching::default().max_ids(0).validate().is_err());
    }

    #[test]
    fn abandoned_calls_are_left_out_with_their_ids() {
        let ids: Vec<String> = ["a", "b", "c", "d"].map(str::to_owned).to_vec();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let (tx3, rx3) = oneshot::channel();
        let calls = vec![
            Waiter {
                range: 0..1,
                tx: tx1,
            },
            Waiter {
                range: 1..3,
                tx: tx2,
            },
            Waiter {
                range: 3..4,
                tx: tx3,
            },
        ];
        drop(rx2);
        let (ids, calls) = withdraw_abandoned(ids, calls);
        assert_eq!(ids, ["a", "d"]);
        let ranges: Vec<_> = calls.iter().map(|w| w.range.clone()).collect();
        assert_eq!(ranges, [0..1, 1..2]);
        drop((rx1, rx3));
    }
}
