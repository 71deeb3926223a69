//! The PostgreSQL store: what only a database brings. Many trackers as one
//! authority, marks inside the caller's transaction, commits whose outcome the network
//! hid, failed writes, the schema's version and partitions. (The semantics every
//! store shares run in `boundaries.rs` and `model.rs`, on PostgreSQL too.)
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{Engine, NowMs, Place, clock, ring_config, small_config};
use oncely::postgres::PgOptions;
use oncely::{ClaimOutcome, Tracker, Verdict};
use oncely_testkit::{Cut, CutProxy, PgServer};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NS: &str = "default";

/// Runs `f` with a connection of its own to the place's database, outside any
/// tracker.
fn with_db<T>(place: &Place, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let url = place.url().to_owned();
    runtime().block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        f(&client).await
    })
}

/// Runs SQL on the place's database, outside any tracker.
fn sql(place: &Place, statement: &str) {
    with_db(place, async |c| c.batch_execute(statement).await.unwrap());
}

/// The first column of a query's rows, as text, outside any tracker.
fn column(place: &Place, query: &str) -> Vec<String> {
    with_db(place, async |c| {
        c.query(query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn basics_marks_claims_rotation_and_checkpoints() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(3));
    assert_eq!(
        t.check_and_mark(NS, &["a", "b", "a"], Some("o1")).unwrap(),
        [Verdict::New, Verdict::New, Verdict::Replayed]
    );
    assert_eq!(
        t.check_and_mark(NS, &["a", "c"], Some("o1")).unwrap(),
        [Verdict::Replayed, Verdict::New]
    );
    assert_eq!(
        t.check_and_mark(NS, &["a", "d"], None).unwrap(),
        [Verdict::Duplicate, Verdict::New],
        "d seals generation 1 (3 IDs) first and lands in 2"
    );
    assert_eq!(t.namespace_info(NS).unwrap().generations.len(), 2);
    let until = c.now_ms().saturating_add(Duration::from_secs(30));
    assert!(matches!(
        t.claim(NS, "job", "w1", Duration::from_secs(30)).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    assert_eq!(
        t.claim(NS, "job", "w2", Duration::from_secs(30)).unwrap(),
        ClaimOutcome::InProgress { until }
    );
    t.set_checkpoint(NS, "c1", "p9").unwrap();
    assert_eq!(t.checkpoint(NS, "c1").unwrap().as_deref(), Some("p9"));
}

/// A fault PostgreSQL itself raises: a constraint no write can meet.
#[test]
fn a_write_that_fails_marks_nothing_and_leaves_no_trace() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 1, 1_000, Duration::from_secs(3600), 0.01),
    );
    sql(
        &place,
        "ALTER TABLE oncely.counts ADD CONSTRAINT refuse CHECK (n < 0)",
    );
    assert!(t.check_and_mark(NS, &["event", "other"], None).is_err());
    assert!(t.storage_failure().is_some());
    sql(&place, "ALTER TABLE oncely.counts DROP CONSTRAINT refuse");
    // The generation the attempt met turns Bloom-only.
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        t.check_and_mark(NS, &["event"], None).unwrap(),
        [Verdict::New]
    );
    assert_eq!(t.storage_failure(), None);
}

#[test]
fn a_mark_with_a_checkpoint_stores_both_or_neither() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    sql(
        &place,
        "ALTER TABLE oncely.checkpoints ADD CONSTRAINT refuse CHECK (position <> 'pos-7')",
    );
    assert!(
        t.check_and_mark_with_checkpoint(NS, &["y"], None, "consumer", "pos-7")
            .is_err()
    );
    assert_eq!(t.checkpoint(NS, "consumer").unwrap(), None);
    assert_eq!(t.check(NS, &["y"]).unwrap(), [Verdict::New]);
    t.check_and_mark_with_checkpoint(NS, &["y"], None, "consumer", "pos-8")
        .unwrap();
    assert_eq!(
        t.checkpoint(NS, "consumer").unwrap().as_deref(),
        Some("pos-8")
    );
}

/// The exactly-once recipe: the read model's update and the mark in one transaction
/// on the caller's own connection.
#[test]
fn marks_inside_the_callers_transaction_commit_or_roll_back_with_it() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    let marks = t.in_transaction().unwrap();
    let url = place.url().to_owned();
    let rt = runtime();
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE balances (account text PRIMARY KEY, amount bigint)")
            .await
            .unwrap();
        client
            .batch_execute("INSERT INTO balances VALUES ('alice', 0)")
            .await
            .unwrap();
        // Rolled back: neither the update nor the mark.
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            marks
                .check_and_mark(&tx, NS, &["payment-1"], None)
                .await
                .unwrap(),
            [Verdict::New]
        );
        tx.execute(
            "UPDATE balances SET amount = amount + 5 WHERE account = 'alice'",
            &[],
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        // Committed: both.
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            marks
                .check_and_mark(&tx, NS, &["payment-1"], None)
                .await
                .unwrap(),
            [Verdict::New],
            "the rolled-back mark is forgotten"
        );
        tx.execute(
            "UPDATE balances SET amount = amount + 5 WHERE account = 'alice'",
            &[],
        )
        .await
        .unwrap();
        marks
            .set_checkpoint(&tx, NS, "ledger", "offset-1")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // A redelivery is a duplicate, and changes nothing.
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            marks
                .check_and_mark(&tx, NS, &["payment-1"], None)
                .await
                .unwrap(),
            [Verdict::Duplicate]
        );
        tx.commit().await.unwrap();
        let amount: i64 = client
            .query_one("SELECT amount FROM balances WHERE account = 'alice'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(amount, 5);
    });
    assert_eq!(t.check(NS, &["payment-1"]).unwrap(), [Verdict::Duplicate]);
    assert_eq!(
        t.checkpoint(NS, "ledger").unwrap().as_deref(),
        Some("offset-1")
    );
}

/// A connection lost during `COMMIT`: the call fails, and the same owner's retry
/// tells whether the commit had landed.
#[test]
fn a_commit_the_network_hid_is_resolved_by_owner_replay() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let proxy = CutProxy::start(pg.port());
    let through_proxy = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port()));
    let c = clock();
    let t = Tracker::builder()
        .postgres(PgOptions::new(&through_proxy))
        .clock(Arc::new(c.clone()))
        .default_config(small_config(1_000))
        .open()
        .unwrap();
    // Landed, but the answer was lost.
    proxy.arm(Cut::AfterCommit);
    assert!(
        t.check_and_mark(NS, &["landed"], Some("attempt-1"))
            .is_err()
    );
    assert_eq!(
        t.check_and_mark(NS, &["landed"], Some("attempt-1"))
            .unwrap(),
        [Verdict::Replayed],
        "the first commit landed: the retry gets its new back"
    );
    // Never reached the server.
    proxy.arm(Cut::BeforeCommit);
    assert!(t.check_and_mark(NS, &["lost"], Some("attempt-2")).is_err());
    assert_eq!(
        t.check_and_mark(NS, &["lost"], Some("attempt-2")).unwrap(),
        [Verdict::New],
        "the first commit never landed"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    drop(place.open(&c, small_config(1_000)));
    sql(
        &place,
        "UPDATE oncely.meta SET value = '99' WHERE key = 'schema_version'",
    );
    let err = place.builder(&c, small_config(1_000)).open().unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

/// A database left by version 1 (keyed on `(ns, gen, id)`) is migrated in place to
/// the key `(id, ns, gen)`, its marks kept; every partition made after it has the new
/// key, a partition made as a node still on version 1 makes it included (a rolling
/// upgrade).
#[test]
fn a_version_1_schema_is_migrated_with_its_marks() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(4, 4, 2, Duration::from_secs(3600), 0.01);
    let t = place.open(&c, config.clone());
    assert_eq!(
        t.check_and_mark(NS, &["a", "b"], None).unwrap(),
        [Verdict::New, Verdict::New]
    );
    drop(t);
    sql(
        &place,
        "ALTER TABLE oncely.marks DROP CONSTRAINT marks_pkey, ADD PRIMARY KEY (ns, gen, id);
         UPDATE oncely.meta SET value = '1' WHERE key = 'schema_version'",
    );
    let indexes = |place: &Place| {
        column(
            place,
            "SELECT tablename || ': ' || regexp_replace(indexdef, '.* USING ', '')
               FROM pg_indexes WHERE schemaname = 'oncely' AND tablename LIKE 'marks%'
              ORDER BY 1",
        )
    };
    assert_eq!(
        indexes(&place),
        [
            "marks: btree (ns, gen, id)",
            "marks_1_1: btree (ns, gen, id)"
        ],
        "version 1, as it was"
    );

    let t = place.open(&c, config);
    assert_eq!(
        column(
            &place,
            "SELECT value FROM oncely.meta WHERE key = 'schema_version'"
        ),
        ["2"]
    );
    assert_eq!(
        indexes(&place),
        [
            "marks: btree (id, ns, gen)",
            "marks_1_1: btree (id, ns, gen)"
        ]
    );
    assert_eq!(
        t.check_and_mark(NS, &["a", "b", "c"], None).unwrap(),
        [Verdict::Duplicate, Verdict::Duplicate, Verdict::New],
        "the marks of version 1 still count; c seals generation 1 and opens 2"
    );
    // As version 1 creates a partition: no index of its own.
    sql(
        &place,
        "CREATE TABLE oncely.marks_1_3 PARTITION OF oncely.marks FOR VALUES FROM (1, 3) TO (1, 4)",
    );
    assert_eq!(
        indexes(&place),
        [
            "marks: btree (id, ns, gen)",
            "marks_1_1: btree (id, ns, gen)",
            "marks_1_2: btree (id, ns, gen)",
            "marks_1_3: btree (id, ns, gen)"
        ]
    );
    assert_eq!(
        t.check_and_mark(NS, &["c"], None).unwrap(),
        [Verdict::Duplicate],
        "the new partition's key decides"
    );
}

#[test]
fn leaving_the_exact_horizon_drops_a_partition() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 1, 1_000, Duration::from_secs(3600), 0.01),
    );
    let _ = t.check_and_mark(NS, &["a"], None).unwrap();
    let partitions = |place: &Place| {
        column(
            place,
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'oncely'
              AND tablename LIKE 'marks\\_%' ORDER BY 1",
        )
    };
    assert_eq!(partitions(&place), ["marks_1_1"]);
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        partitions(&place),
        ["marks_1_2"],
        "generation 1 turned Bloom-only: its table is gone, whole"
    );
    assert_eq!(t.check(NS, &["a"]).unwrap(), [Verdict::ProbableDuplicate]);
}

/// Two trackers on one database, four threads each, on the same 20,000 IDs in their
/// own orders and batch sizes, while a fifth thread forces rotations: exactly one
/// `new` per ID among all of them.
#[test]
fn two_trackers_on_one_database_are_one_authority() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    // Every generation keeps its exact table: the answers stay exact.
    let config = ring_config(64, 64, 2_000, Duration::from_secs(3600), 1e-6);
    let nodes = [place.open(&c, config.clone()), place.open(&c, config)];
    let ids: Vec<String> = (0..20_000).map(|i| format!("event-{i:06}")).collect();
    let start = Arc::new(Barrier::new(9));
    let mut workers = Vec::new();
    for w in 0..8_usize {
        let t = nodes[w % 2].clone();
        let mut mine = ids.clone();
        let start = Arc::clone(&start);
        workers.push(thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(0xA11CE + w as u64);
            mine.shuffle(&mut rng);
            start.wait();
            let mut answers: Vec<(String, Verdict)> = Vec::new();
            let mut rest = mine.as_slice();
            while !rest.is_empty() {
                let n = [1, 7, 100, 500][rng.random_range(0..4)].min(rest.len());
                let (batch, tail) = rest.split_at(n);
                let verdicts = t.check_and_mark(NS, batch, None).unwrap();
                answers.extend(batch.iter().cloned().zip(verdicts));
                rest = tail;
            }
            answers
        }));
    }
    let rotator = {
        let t = nodes[1].clone();
        let start = Arc::clone(&start);
        thread::spawn(move || {
            start.wait();
            for _ in 0..10 {
                thread::sleep(Duration::from_millis(30));
                t.rotate_namespace(NS).unwrap();
            }
        })
    };
    let mut news: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (id, v) in w.join().unwrap() {
            match v {
                Verdict::New => *news.entry(id).or_default() += 1,
                Verdict::Duplicate => {}
                other => panic!("{id}: {other:?}"),
            }
        }
    }
    rotator.join().unwrap();
    assert_eq!(news.len(), ids.len(), "every ID was new once");
    assert!(news.values().all(|&n| n == 1), "and only once");
    let generations = nodes[0].namespace_info(NS).unwrap().generations.len();
    assert!(generations > 10, "rotations ran alongside: {generations}");
}
