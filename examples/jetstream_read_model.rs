//! The exactly-once recipe with real parts: NATS JetStream delivers payments at least
//! once, and a consumer applies each to a read model in PostgreSQL and marks it with
//! Oncely **in the same transaction**, then acks.
//!
//! Everything is started here, on 127.0.0.1, in temporary directories, and stopped at
//! the end: a NATS server with JetStream (`nats-server -js`) and a PostgreSQL server
//! (`initdb`), through `oncely-testkit`. The Oncely tracker keeps its state in that
//! database, beside the read model.
//!
//! * **The producer** publishes 2,000 payments to a JetStream stream, and publishes
//!   about one in ten a second time, as a producer does that retries a publish whose
//!   acknowledgement it never saw: the stream holds both copies.
//! * **Two workers** share one durable pull consumer with a short ack wait. Each
//!   delivery is handled in one PostgreSQL transaction on the worker's own
//!   connection: `InTransaction::check_and_mark` marks the payment's ID with an owner
//!   token for this delivery attempt (its stream sequence and delivery count); if the
//!   verdict is new, the transaction updates the account's balance and counts the
//!   effect in an `effects` table; then it commits, and the worker acks the message.
//! * **Forced redeliveries.** A worker "crashes" now and then: before the effect
//!   (after its mark, which the rollback forgets with everything else), or between
//!   the commit and the ack (the message comes back after the ack wait, and its mark
//!   says duplicate). A crash drops the worker's NATS connection, its PostgreSQL
//!   connection and every message it had fetched; a new incarnation starts over.
//!   Some acks come late, after the ack wait, so JetStream redelivers a message the
//!   worker has already committed.
//!
//! At the end, checked against the database: every payment's effect happened exactly
//! once (`effects.applied = 1` for each, and no other row), and every balance is the
//! sum of its account's payments. It panics on any violation, and gives up after 90
//! seconds.
//!
//! Run: `cargo run -p oncely-examples --example jetstream_read_model` (needs the
//! `postgresql` and `nats-server` packages: `scripts/ensure-deps.sh` installs them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use oncely::postgres::{InTransaction, PgOptions};
use oncely::{Configured, NamespaceConfig, Tracker, Verdict};
use oncely_examples::{Broker, Crash, Crasher, Event};
use oncely_testkit::{NatsServer, PgServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::NoTls;

const EVENTS: u64 = 2_000;
const NAMESPACE: &str = "payments";
const STREAM: &str = "PAYMENTS";
const SUBJECT: &str = "payments.made";
const CONSUMER: &str = "ledger";
const WORKERS: u64 = 2;
/// Short, so that a crashed worker's messages come back quickly.
const ACK_WAIT: Duration = Duration::from_millis(300);
/// The crash point before the effect.
const BEFORE: &str = "after marking, before the effect";
/// The crash point after the commit.
const BETWEEN: &str = "after the commit, before the ack";
/// The whole run's bound.
const DEADLINE: Duration = Duration::from_secs(90);

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let started = Instant::now();
    let pg = PgServer::start();
    let url = pg.fresh_database();
    let nats = NatsServer::start();
    // The tracker runs its own queries on a runtime of its own: open (and close) it
    // outside ours.
    let tracker = Tracker::builder()
        .postgres(PgOptions::new(&url).pool_size(2))
        .open()
        .expect("the tracker opens on PostgreSQL");
    let configured = tracker
        .configure_namespace(NAMESPACE, NamespaceConfig::default())
        .expect("the namespace is created");
    assert_eq!(configured, Configured::Created, "a fresh database");
    let marks = tracker.in_transaction().expect("a PostgreSQL tracker");
    let broker = Broker::new(EVENTS, 0.0, 42);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let nats_url = nats.url();
    let tally = runtime.block_on(async {
        let run = run(&url, &nats_url, &marks, broker.events());
        match tokio::time::timeout(DEADLINE, run).await {
            Ok(Ok(tally)) => tally,
            Ok(Err(e)) => panic!("the run failed: {e}"),
            Err(_) => panic!("not done within {DEADLINE:?}"),
        }
    });
    drop(runtime);
    tracker.close().expect("the tracker closes");

    println!(
        "jetstream_read_model: {EVENTS} payments published to JetStream (+{} producer \
         retries), {WORKERS} workers, {} deliveries ({} redeliveries), {} crashes ({} \
         before the effect, {} between commit and ack), {} late acks, {} duplicates \
         skipped, in {:.1} s: every effect exactly once (read model checked)",
        tally.republished,
        tally.deliveries,
        tally.redeliveries,
        tally.crashes_before + tally.crashes_between,
        tally.crashes_before,
        tally.crashes_between,
        tally.late_acks,
        tally.duplicates,
        started.elapsed().as_secs_f64(),
    );
}

/// What the run saw, over every worker and incarnation.
#[derive(Debug, Default)]
struct Tally {
    republished: u64,
    deliveries: u64,
    redeliveries: u64,
    applied: u64,
    duplicates: u64,
    crashes_before: u64,
    crashes_between: u64,
    late_acks: u64,
}

impl Tally {
    fn add(&mut self, o: &Self) {
        self.republished += o.republished;
        self.deliveries += o.deliveries;
        self.redeliveries += o.redeliveries;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.crashes_before += o.crashes_before;
        self.crashes_between += o.crashes_between;
        self.late_acks += o.late_acks;
    }
}

async fn run(
    db: &str,
    nats_url: &str,
    marks: &InTransaction,
    events: &[Event],
) -> Result<Tally, Failure> {
    let (setup, conn) = tokio_postgres::connect(db, NoTls).await?;
    tokio::spawn(conn);
    setup
        .batch_execute(
            "CREATE TABLE accounts (account text PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE effects (payment text PRIMARY KEY, applied integer NOT NULL);",
        )
        .await?;

    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut tally = Tally {
        republished: publish(&js, events).await?,
        ..Tally::default()
    };
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            ..Default::default()
        })
        .await?;

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (db, nats_url, marks) = (db.to_owned(), nats_url.to_owned(), marks.clone());
            tokio::spawn(async move { worker(w, &db, &nats_url, &marks, EVENTS).await })
        })
        .collect();
    for w in workers {
        tally.add(&w.await??);
    }
    verify(&setup, events).await?;
    assert_eq!(
        tally.applied, EVENTS,
        "one effect per payment, counted by the workers"
    );
    assert!(
        tally.crashes_before > 0 && tally.crashes_between > 0 && tally.late_acks > 0,
        "every kind of redelivery was forced: {tally:?}"
    );
    Ok(tally)
}

/// Publishes every event, and about one in ten again (a producer's retry): the stream
/// keeps both copies. How many were published twice.
async fn publish(js: &jetstream::Context, events: &[Event]) -> Result<u64, Failure> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut again = 0;
    for e in events {
        let times = if rng.random_bool(0.1) { 2 } else { 1 };
        for _ in 0..times {
            let payload = format!("{},{},{}", e.id, e.account, e.amount);
            js.publish(SUBJECT, payload.into()).await?.await?;
        }
        again += times - 1;
    }
    Ok(again)
}

/// One worker: incarnations until every payment's effect is in and nothing is left
/// to deliver.
async fn worker(
    w: u64,
    db: &str,
    nats_url: &str,
    marks: &InTransaction,
    events: u64,
) -> Result<Tally, Failure> {
    let mut tally = Tally::default();
    let mut crasher = Crasher::new(0.01, 40, 100 + w);
    let mut late = StdRng::seed_from_u64(200 + w);
    loop {
        // A new process, as far as anyone can tell: new connections to both.
        let (mut pg, conn) = tokio_postgres::connect(db, NoTls).await?;
        let conn = tokio::spawn(conn);
        let js = jetstream::new(async_nats::connect(nats_url).await?);
        let consumer: consumer::PullConsumer =
            js.get_stream(STREAM).await?.get_consumer(CONSUMER).await?;
        let outcome = incarnation(
            &mut pg,
            &consumer,
            marks,
            events,
            &mut crasher,
            &mut late,
            &mut tally,
        )
        .await;
        // The crash: everything this incarnation held is gone. Its open transaction
        // (if any) rolls back with the connection; its unacked messages come back
        // after the ack wait.
        drop(consumer);
        drop(js);
        drop(pg);
        conn.abort();
        match outcome {
            Ok(()) => return Ok(tally),
            Err(Stop::Crashed(Crash(point))) => {
                if point == BEFORE {
                    tally.crashes_before += 1;
                } else {
                    tally.crashes_between += 1;
                }
            }
            Err(Stop::Failed(e)) => return Err(e),
        }
    }
}

enum Stop {
    Crashed(Crash),
    Failed(Failure),
}

impl<E: Into<Failure>> From<E> for Stop {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

async fn incarnation(
    pg: &mut tokio_postgres::Client,
    consumer: &consumer::PullConsumer,
    marks: &InTransaction,
    events: u64,
    crasher: &mut Crasher,
    late: &mut StdRng,
    tally: &mut Tally,
) -> Result<(), Stop> {
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(20)
            .expires(Duration::from_millis(200))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message?;
            got += 1;
            let info = message.info()?;
            tally.deliveries += 1;
            if info.delivered > 1 {
                tally.redeliveries += 1;
            }
            // One delivery attempt of one event: its own token, never reused by
            // another delivery (see the README on owner tokens).
            let owner = format!("delivery-{}-{}", info.stream_sequence, info.delivered);
            let payment = parse(&message.payload)?;
            handle(pg, marks, &payment, &owner, crasher, tally).await?;
            if late.random_bool(0.005) {
                // A slow worker: JetStream has redelivered by the time it acks.
                tally.late_acks += 1;
                tokio::time::sleep(ACK_WAIT + Duration::from_millis(100)).await;
            }
            message.ack().await?;
        }
        if got == 0 && done(pg, consumer, events).await? {
            return Ok(());
        }
    }
}

/// One delivery: mark and effect in one transaction, then (the caller) ack.
async fn handle(
    pg: &mut tokio_postgres::Client,
    marks: &InTransaction,
    payment: &Payment,
    owner: &str,
    crasher: &mut Crasher,
    tally: &mut Tally,
) -> Result<(), Stop> {
    // A transaction on the worker's own connection; the mark is made inside it.
    let tx = pg.transaction().await?;
    let verdict = marks
        .check_and_mark(&tx, NAMESPACE, &[payment.id.as_str()], Some(owner))
        .await?[0];
    match verdict {
        Verdict::New | Verdict::Replayed => {
            // Dying here drops the transaction uncommitted: it rolls back, and the
            // mark with it.
            crasher.point(BEFORE).map_err(Stop::Crashed)?;
            tx.execute(
                "INSERT INTO accounts VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET balance = accounts.balance + excluded.balance",
                &[&payment.account, &payment.amount],
            )
            .await?;
            tx.execute(
                "INSERT INTO effects VALUES ($1, 1)
                 ON CONFLICT (payment) DO UPDATE SET applied = effects.applied + 1",
                &[&payment.id],
            )
            .await?;
            tx.commit().await?;
            tally.applied += 1;
        }
        Verdict::Duplicate => {
            tx.commit().await?;
            tally.duplicates += 1;
        }
        other => panic!("{}: unexpected verdict {other:?}", payment.id),
    }
    crasher.point(BETWEEN).map_err(Stop::Crashed)
}

/// Whether every payment's effect is in and JetStream has nothing left to deliver.
async fn done(
    pg: &tokio_postgres::Client,
    consumer: &consumer::PullConsumer,
    events: u64,
) -> Result<bool, Stop> {
    let applied: i64 = pg
        .query_one("SELECT count(*) FROM effects", &[])
        .await?
        .get(0);
    let mut consumer = consumer.clone();
    let info = consumer.info().await?;
    Ok(u64::try_from(applied).unwrap_or(0) == events
        && info.num_pending == 0
        && info.num_ack_pending == 0)
}

/// The read model, checked against the log.
async fn verify(pg: &tokio_postgres::Client, events: &[Event]) -> Result<(), Failure> {
    let row = pg
        .query_one(
            "SELECT count(*), coalesce(sum(applied), 0)::bigint, coalesce(max(applied), 0)
               FROM effects",
            &[],
        )
        .await?;
    let (payments, effects, most): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    let n = i64::try_from(events.len())?;
    assert_eq!(payments, n, "every payment's effect is in");
    assert_eq!(effects, n, "no effect happened twice");
    assert_eq!(most, 1, "no effect happened twice");
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for e in events {
        *expected.entry(e.account.as_str()).or_default() += e.amount;
    }
    for (account, sum) in expected {
        let got: i64 = pg
            .query_one(
                "SELECT balance FROM accounts WHERE account = $1",
                &[&account],
            )
            .await?
            .get(0);
        assert_eq!(got, sum, "balance of {account}");
    }
    Ok(())
}

struct Payment {
    id: String,
    account: String,
    amount: i64,
}

fn parse(payload: &[u8]) -> Result<Payment, Failure> {
    let text = std::str::from_utf8(payload)?;
    let mut fields = text.split(',');
    let mut next = || fields.next().ok_or("a field is missing");
    Ok(Payment {
        id: next()?.to_owned(),
        account: next()?.to_owned(),
        amount: next()?.parse()?,
    })
}
