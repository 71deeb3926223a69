//! The consumer of `consumer.rs`, against a running `oncelyd` through the typed HTTP
//! client.
//!
//! A simulated broker delivers 2,000 events, redelivering about 20% of them, and the
//! consumer crashes at random points. Each incarnation is a new process, as far as
//! the daemon can tell (a new client), and each delivery it takes gets an owner
//! token of its own (see "Owner tokens" below):
//!
//! 1. resumes from its checkpoint, inclusively (at-least-once: it may see events at
//!    and after the checkpoint again, but never misses one);
//! 2. claims each event with a short lease; a claim left by a crashed incarnation
//!    answers `in_progress` until its lease runs out, then passes to the new one;
//! 3. applies the event's effect to an external system (an [`IdempotentLedger`]),
//!    then completes the claim, and now and then stores its checkpoint.
//!
//! # What it demonstrates, exactly
//!
//! Over HTTP there is no transaction joining the effect and the done mark (the
//! embedded library has one, see `consumer.rs`), so a crash can fall between
//! applying the effect and completing the claim. Therefore:
//!
//! * **Claims** give mutual exclusion (while a lease is live no other owner gets the
//!   event: the new incarnation waits, counted as `waits`) and crash recovery (once
//!   the lease of the dead incarnation expires, the event is claimed again).
//! * **The checkpoint with an inclusive lower bound** gives no loss: every event is
//!   applied (checked).
//! * **The idempotent sink** gives exactly-once effects across the one gap claims
//!   cannot close: every balance is exact (checked).
//! * And Oncely keeps the sink's work down to the minimum: the sink is asked to
//!   re-apply an event only after a crash in that gap. Redeliveries and re-reads
//!   after the checkpoint never reach it (checked: refused attempts equal crashes
//!   between effect and complete, and attempts equal events plus those).
//!
//! # Owner tokens
//!
//! The owner of a claim is one delivery attempt of one event, never the worker: the
//! token is drawn afresh for each delivery, and reused only to retry the same
//! request (which the client does by itself). Were it the worker's name, a
//! redelivery of an event to the worker that holds its claim would come back
//! `acquired` with `replayed: true`, and the event would be processed twice at once.
//!
//! The consumer uses only the light client crate, `oncely_client`; the daemon of
//! the `oncelyd` crate is started here for a self-contained run.
//!
//! With `ONCELY_URL` set (and `ONCELY_TOKEN`, if the daemon wants one) it uses that
//! daemon, in a namespace of its own that it deletes at the end; otherwise it starts
//! one in-process on 127.0.0.1 with a temporary data directory. It panics on any
//! violation.
//!
//! Run: `cargo run -p oncely-examples --example http_consumer`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncely_client::api::NamespaceConfig;
use oncely_client::{ClaimOutcome, Client, Configured, RetryPolicy};
use oncely_examples::{Broker, Crash, Crasher, Event, IdempotentLedger};
use oncelyd::config::Settings;
use oncelyd::server::{AppState, open_tracker, run};
use rand::RngCore;
use tokio::sync::oneshot;

const CONSUMER: &str = "ledger";
/// Short, so that waiting out a crashed incarnation's claim takes little wall time;
/// processing one event takes far less.
const LEASE: Duration = Duration::from_millis(200);
/// Store the checkpoint at most every this many positions: it is only where to
/// resume, and the claims make re-reading the events after it cheap.
const CHECKPOINT_EVERY: u64 = 10;
/// The crash point between the effect and the done mark.
const BETWEEN: &str = "after applying the effect, before completing";

/// Why an incarnation stopped.
enum Stop {
    Crashed(Crash),
    Failed(oncely_client::Error),
}

impl From<Crash> for Stop {
    fn from(c: Crash) -> Self {
        Self::Crashed(c)
    }
}

impl From<oncely_client::Error> for Stop {
    fn from(e: oncely_client::Error) -> Self {
        Self::Failed(e)
    }
}

/// What the run saw.
#[derive(Default)]
struct Tally {
    deliveries: u64,
    crashes_between: u64,
    waits: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let token = std::env::var("ONCELY_TOKEN").ok();
    let (url, daemon) = match std::env::var("ONCELY_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let daemon = InProcess::start().await;
            (daemon.url.clone(), Some(daemon))
        }
    };
    let client = connect(&url, token.as_deref());
    // A namespace of our own, so a shared daemon's other data and earlier runs of
    // this example cannot interfere.
    let ns = format!("http-consumer-{:016x}", rand::rng().next_u64());
    let (configured, _) = client
        .put_namespace(&ns, &NamespaceConfig::default())
        .await
        .expect("the namespace is created");
    assert_eq!(configured, Configured::Created, "a fresh namespace");

    let mut broker = Broker::new(2_000, 0.2, 7);
    let mut crasher = Crasher::new(0.003, 25, 11);
    let mut ledger = IdempotentLedger::new();
    let mut tally = Tally::default();
    let mut incarnation = 0;
    loop {
        incarnation += 1;
        // A new process: a new client.
        let client = connect(&url, token.as_deref());
        let outcome = consume(
            &client,
            &ns,
            &mut broker,
            &mut crasher,
            &mut ledger,
            &mut tally,
        )
        .await;
        match outcome {
            Ok(()) => break,
            Err(Stop::Crashed(Crash(point))) => {
                if point == BETWEEN {
                    tally.crashes_between += 1;
                }
            }
            Err(Stop::Failed(e)) => panic!("incarnation {incarnation} failed: {e}"),
        }
    }

    verify(&ledger, &broker, &tally);
    client
        .delete_namespace(&ns)
        .await
        .expect("the namespace is deleted");
    if let Some(daemon) = daemon {
        daemon.stop().await;
    }
    println!(
        "http_consumer: {} events, {} deliveries, {incarnation} incarnations, {} crashes \
         ({} between effect and complete), {} effect attempts ({} refused by the \
         idempotent ledger), {} waits on live claims: every effect exactly once",
        broker.events().len(),
        tally.deliveries,
        crasher.crashes,
        tally.crashes_between,
        ledger.attempts,
        ledger.refused,
        tally.waits,
    );
}

fn connect(url: &str, token: Option<&str>) -> Client {
    let builder = Client::builder(url)
        .timeout(Duration::from_secs(10))
        .retry(RetryPolicy::default());
    match token {
        Some(t) => builder.token(t),
        None => builder,
    }
    .build()
    .expect("a usable daemon URL")
}

async fn consume(
    client: &Client,
    ns: &str,
    broker: &mut Broker,
    crasher: &mut Crasher,
    ledger: &mut IdempotentLedger,
    tally: &mut Tally,
) -> Result<(), Stop> {
    // Resume at the checkpoint itself: the inclusive lower bound.
    let from = client
        .checkpoint(ns, CONSUMER)
        .await?
        .map_or(0, |p| p.parse::<u64>().expect("positions are numbers"));
    // Every event up to here is done: the checkpoint is stored only after the
    // in-order event at its position is complete, and the ones before it were.
    let mut done_up_to = from;
    let mut stored = from;
    for event in broker.deliver_from(from) {
        tally.deliveries += 1;
        // This delivery's own owner token: its retries (made by the client) reuse
        // it, the next delivery of the same event gets another.
        let owner = format!("delivery-{:016x}", rand::rng().next_u64());
        crasher.point("before claiming")?;
        if claim(client, ns, &event, &owner, tally).await? {
            crasher.point("after claiming")?;
            ledger.apply(&event);
            crasher.point(BETWEEN)?;
            client.complete(ns, &event.id, &owner).await?;
            crasher.point("after completing")?;
        }
        // Done now, by us or earlier. Deliveries from `from` on are in order, with
        // redeliveries of earlier events mixed in, so this advances past a contiguous
        // run of done events.
        done_up_to = done_up_to.max(event.position);
        if done_up_to >= stored + CHECKPOINT_EVERY {
            client
                .set_checkpoint(ns, CONSUMER, &done_up_to.to_string())
                .await?;
            stored = done_up_to;
        }
    }
    if done_up_to > stored {
        client
            .set_checkpoint(ns, CONSUMER, &done_up_to.to_string())
            .await?;
    }
    Ok(())
}

/// Claims an event: `true` to process it, `false` when it is done already. Waits
/// out a claim that a crashed incarnation left behind.
async fn claim(
    client: &Client,
    ns: &str,
    event: &Event,
    owner: &str,
    tally: &mut Tally,
) -> Result<bool, Stop> {
    loop {
        match client.claim(ns, &event.id, owner, LEASE).await? {
            ClaimOutcome::Acquired { .. } => return Ok(true),
            ClaimOutcome::Duplicate => return Ok(false),
            ClaimOutcome::ProbableDuplicate => {
                panic!("event {} left the exact horizon: impossible here", event.id)
            }
            ClaimOutcome::InProgress { until_ms } => {
                // In production: move on and let the broker redeliver. Here we wait
                // for the dead incarnation's lease to end.
                tally.waits += 1;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let left = Duration::from_millis(until_ms.saturating_sub(now));
                tokio::time::sleep(
                    left.clamp(Duration::from_millis(1), LEASE) + Duration::from_millis(1),
                )
                .await;
            }
        }
    }
}

fn verify(ledger: &IdempotentLedger, broker: &Broker, tally: &Tally) {
    let mut expected = std::collections::BTreeMap::new();
    for e in broker.events() {
        assert!(ledger.is_applied(&e.id), "event {} was lost", e.id);
        *expected.entry(e.account.as_str()).or_insert(0_i64) += e.amount;
    }
    for (account, sum) in expected {
        assert_eq!(ledger.balance(account), sum, "balance of {account}");
    }
    let events = broker.events().len();
    assert_eq!(ledger.applied(), events, "no effect of an unknown event");
    // The ledger was asked again only for events whose claim a crash left between
    // effect and complete; redeliveries and re-reads never got that far.
    assert_eq!(
        ledger.refused, tally.crashes_between,
        "re-applications beyond the crash window"
    );
    assert_eq!(ledger.attempts, events as u64 + tally.crashes_between);
}

/// A daemon in this process: RocksDB in a temporary directory, durability `flush`,
/// on a port the OS picks.
struct InProcess {
    url: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), oncelyd::Error>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let settings = Settings {
            listen: "127.0.0.1:0".parse().expect("an address"),
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        let tracker = open_tracker(&settings).await.expect("the tracker opens");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let state = AppState::from_settings(tracker, &settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let done = tokio::spawn(run(listener, state, shutdown, settings.shutdown_grace));
        Self {
            url,
            stop,
            done,
            _dir: dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.done
            .await
            .expect("the daemon task ends")
            .expect("a clean shutdown");
    }
}
