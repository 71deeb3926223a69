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
    with_db_url(place.url(), f)
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
    // The namespace known, so that the next statement executed is the mark.
    assert_eq!(t.check(NS, &["warm-up"]).unwrap(), [Verdict::New]);
    // Landed, but the answer was lost. (A mark is one statement outside a
    // transaction: it commits as it executes.)
    proxy.arm(Cut::AfterExecute);
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
    proxy.arm(Cut::BeforeExecute);
    assert!(t.check_and_mark(NS, &["lost"], Some("attempt-2")).is_err());
    assert_eq!(
        t.check_and_mark(NS, &["lost"], Some("attempt-2")).unwrap(),
        [Verdict::New],
        "the first commit never landed"
    );
    // A claim is a transaction: cut around its COMMIT.
    proxy.arm(Cut::AfterCommit);
    assert!(
        t.claim(NS, "job", "worker-1", Duration::from_secs(60))
            .is_err()
    );
    assert!(
        matches!(
            t.claim(NS, "job", "worker-1", Duration::from_secs(60))
                .unwrap(),
            ClaimOutcome::Acquired { replayed: true, .. }
        ),
        "the first claim landed: the retry renews it"
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

/// A database left by version 1 (`marks` partitioned, keyed on `(ns, gen, id)`) or
/// version 2 (keyed on `(id, ns, gen)`) is migrated in place to version 3 (then 4 and 5): every
/// partition becomes a table of its own keyed on `id`, the parent goes, the ring
/// rows gain what `mark_ids` reads, and the marks and claims stored still count.
#[test]
fn older_schemas_are_migrated_with_their_marks() {
    for (version, key) in [(1, "ns, gen, id"), (2, "id, ns, gen")] {
        let place = Place::new(Engine::Postgres);
        let config = ring_config(4, 4, 2, Duration::from_secs(3600), 0.01);
        let config_json = serde_json::to_string(&config).unwrap();
        sql(&place, &old_schema(version, key, &config_json));
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
                format!("marks: btree ({key})"),
                format!("marks_1_1: btree ({key})"),
                format!("marks_1_2: btree ({key})")
            ],
            "version {version}, as it was"
        );
        let c = clock();
        let t = place.open(&c, config.clone());
        assert_eq!(
            column(
                &place,
                "SELECT value FROM oncely.meta WHERE key = 'schema_version'"
            ),
            ["5"]
        );
        assert_eq!(
            indexes(&place),
            ["marks_1_1: btree (id)", "marks_1_2: btree (id)"],
            "version {version}: tables of their own, keyed on id"
        );
        assert_eq!(
            column(
                &place,
                "SELECT capacity || ' ' || span_ms || ' ' || opened_at FROM oncely.namespaces"
            ),
            ["2 3600000 1700000000000"]
        );
        assert_eq!(
            t.check_and_mark(NS, &["a", "b", "c"], None).unwrap(),
            [Verdict::Duplicate, Verdict::Duplicate, Verdict::Duplicate],
            "version {version}: the stored marks still count"
        );
        assert_eq!(
            t.claim(NS, "job", "w2", Duration::from_secs(60)).unwrap(),
            ClaimOutcome::InProgress {
                until: oncely::Timestamp::from_millis(1_800_000_000_000)
            },
            "version {version}: the stored claim still holds"
        );
        assert_eq!(t.check_and_mark(NS, &["d"], None).unwrap(), [Verdict::New]);
        t.rotate_namespace(NS).unwrap();
        assert_eq!(
            t.check_and_mark(NS, &["d", "job"], None).unwrap(),
            [
                Verdict::Duplicate,
                Verdict::InProgress {
                    until: oncely::Timestamp::from_millis(1_800_000_000_000)
                }
            ],
            "version {version}: the claim followed the open generation"
        );
    }
}

/// A database left by version 3 gains `set_checkpoint_if` (version 4, then 5) and
/// keeps its checkpoints; the functions it had still answer.
#[test]
fn a_version_3_schema_gains_conditional_checkpoints() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    t.set_checkpoint(NS, "ledger", "p-1").unwrap();
    drop(t);
    sql(
        &place,
        "DROP FUNCTION oncely.set_checkpoint_if(text, text, text, text);
         DROP FUNCTION oncely.checkpoint_target(text, text, text);
         UPDATE oncely.meta SET value = '3' WHERE key = 'schema_version'",
    );
    let t = place.open(&c, small_config(1_000));
    assert_eq!(
        column(
            &place,
            "SELECT value FROM oncely.meta WHERE key = 'schema_version'"
        ),
        ["5"]
    );
    assert_eq!(t.checkpoint(NS, "ledger").unwrap().as_deref(), Some("p-1"));
    sql(
        &place,
        "SELECT oncely.set_checkpoint_if('default', 'ledger', 'p-1', 'p-2');
         SELECT oncely.set_checkpoint('default', 'other', 'q-1')",
    );
    assert_eq!(t.checkpoint(NS, "ledger").unwrap().as_deref(), Some("p-2"));
    assert_eq!(t.checkpoint(NS, "other").unwrap().as_deref(), Some("q-1"));
}

/// A database left by version 4 gains forgets (version 5): the count of forgets
/// per generation that filter builds go by, and the SQL functions; its marks
/// still count, and forgets work through the library and SQL alike.
#[test]
fn a_version_4_schema_gains_forget() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    assert_eq!(
        t.check_and_mark(NS, &["a", "b"], None).unwrap(),
        [Verdict::New; 2]
    );
    t.rotate_namespace(NS).unwrap();
    drop(t);
    sql(
        &place,
        "DROP FUNCTION oncely.forget(text, text[]);
         DROP FUNCTION oncely.forget_bytes(text, bytea[]);
         DROP FUNCTION oncely.forget_ids(text, bytea[]);
         ALTER TABLE oncely.generations DROP COLUMN forgets;
         UPDATE oncely.meta SET value = '4' WHERE key = 'schema_version'",
    );
    let t = place.open(&c, small_config(1_000));
    assert_eq!(
        column(
            &place,
            "SELECT value FROM oncely.meta WHERE key = 'schema_version'"
        ),
        ["5"]
    );
    assert_eq!(
        column(
            &place,
            "SELECT gen || ': ' || forgets || ', ' || (filter IS NOT NULL)
               FROM oncely.generations ORDER BY gen"
        ),
        ["1: 0, true", "2: 0, false"],
        "every generation counts no forgets yet; the sealed one keeps its filter"
    );
    assert_eq!(
        t.check(NS, &["a", "b"]).unwrap(),
        [Verdict::Duplicate; 2],
        "the stored marks still count"
    );
    assert_eq!(t.forget(NS, &["a"]).unwrap(), [true]);
    assert_eq!(
        column(
            &place,
            "SELECT id || ' ' || forgotten FROM oncely.forget('default', ARRAY['b', 'c'])"
        ),
        ["b true", "c false"]
    );
    assert_eq!(
        column(
            &place,
            "SELECT gen || ': ' || forgets || ', ' || (filter IS NOT NULL)
               FROM oncely.generations ORDER BY gen"
        ),
        ["1: 2, false", "2: 0, false"]
    );
    assert_eq!(t.check(NS, &["a", "b"]).unwrap(), [Verdict::New; 2]);
}

/// Forget: a forgotten ID answers new to the next caller (an owner's retry of its
/// first mark too: new, not replayed); the answer is false for an ID never seen,
/// one a live claim holds (the claim is left alone, and still in progress), one
/// whose claim ran out uncompleted, a repeat within the call, and a retried forget
/// whose first attempt worked. A completed claim is a mark, and can be forgotten.
#[test]
fn forget_gives_marks_back_and_says_what_it_did() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    assert_eq!(
        t.check_and_mark(NS, &["a", "b"], Some("o1")).unwrap(),
        [Verdict::New; 2]
    );
    assert!(matches!(
        t.claim(NS, "job", "w1", Duration::from_secs(60)).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    assert!(matches!(
        t.claim(NS, "late", "w1", Duration::from_secs(1)).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    c.advance(Duration::from_secs(2));
    assert_eq!(
        t.forget(NS, &["a", "unseen", "job", "late", "b", "a"])
            .unwrap(),
        [true, false, false, false, true, false]
    );
    assert!(
        matches!(
            t.claim(NS, "job", "w2", Duration::from_secs(60)).unwrap(),
            ClaimOutcome::InProgress { .. }
        ),
        "the live claim is left alone"
    );
    assert_eq!(
        t.forget(NS, &["a", "b"]).unwrap(),
        [false, false],
        "a retried forget: its first attempt worked"
    );
    assert!(matches!(
        t.check(NS, &["a", "b", "job"]).unwrap()[..],
        [Verdict::New, Verdict::New, Verdict::InProgress { .. }]
    ));
    assert_eq!(
        t.check_and_mark(NS, &["a"], Some("o1")).unwrap(),
        [Verdict::New],
        "the owner's retry of its first mark: new, not replayed"
    );
    assert_eq!(
        t.check_and_mark(NS, &["a"], Some("o1")).unwrap(),
        [Verdict::Replayed]
    );
    assert_eq!(t.check_and_mark(NS, &["b"], None).unwrap(), [Verdict::New]);
    t.complete(NS, "job", "w1").unwrap();
    assert_eq!(t.forget(NS, &["job"]).unwrap(), [true]);
    assert!(matches!(
        t.claim(NS, "job", "w3", Duration::from_secs(60)).unwrap(),
        ClaimOutcome::Acquired {
            replayed: false,
            taken_over: false,
            ..
        }
    ));
    assert!(t.forget(NS, &[] as &[&str]).unwrap().is_empty());
    assert!(matches!(
        t.forget("nowhere", &["a"]),
        Err(oncely::Error::UnknownNamespace(_))
    ));
    assert!(matches!(
        t.forget(NS, &["a", ""]),
        Err(oncely::Error::InvalidId { index: 1, .. })
    ));
    assert_eq!(t.check(NS, &["a"]).unwrap(), [Verdict::Duplicate]);
}

/// Given back means given back, Bloom-only generations included: an ID forgotten
/// from a sealed generation whose filter is already built answers new once that
/// generation has turned Bloom-only (the filter is taken away by the forget and
/// built again without it before the table goes), while its neighbour answers
/// probable_duplicate from the same filter. An ID forgotten while its generation
/// was open, likewise. Marked again, a forgotten ID lands in the open generation.
#[test]
fn a_forget_in_a_sealed_generation_holds_once_it_turns_bloom_only() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 2, 1_000, Duration::from_secs(3600), 1e-6),
    );
    let state = |generation: i64| {
        column(
            &place,
            &format!(
                "SELECT (filter IS NOT NULL) || ' ' || forgets FROM oncely.generations
                  WHERE gen = {generation}"
            ),
        )
    };
    assert_eq!(
        t.check_and_mark(NS, &["gone", "kept", "gone-while-open"], None)
            .unwrap(),
        [Verdict::New; 3]
    );
    assert_eq!(t.forget(NS, &["gone-while-open"]).unwrap(), [true]);
    t.rotate_namespace(NS).unwrap();
    assert_eq!(state(1), ["true 1"], "sealed, its filter built");
    assert_eq!(t.forget(NS, &["gone"]).unwrap(), [true]);
    assert_eq!(
        state(1),
        ["false 2"],
        "the filter, which holds the ID, taken away; the forget counted"
    );
    assert_eq!(
        t.check(NS, &["gone", "kept"]).unwrap(),
        [Verdict::New, Verdict::Duplicate]
    );
    // Generation 1 leaves the exact horizon: only once its filter is built again.
    t.rotate_namespace(NS).unwrap();
    assert_eq!(state(1), ["true 2"]);
    assert_eq!(
        column(
            &place,
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'oncely'
              AND tablename LIKE 'marks\\_%' ORDER BY 1"
        ),
        ["marks_1_2", "marks_1_3"],
        "generation 1 is Bloom-only"
    );
    assert_eq!(
        t.check(NS, &["gone", "kept", "gone-while-open"]).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate, Verdict::New]
    );
    assert_eq!(
        t.forget(NS, &["kept"]).unwrap(),
        [false],
        "nothing exact to delete: a Bloom-only filter's bits stay"
    );
    assert_eq!(
        t.check_and_mark(NS, &["gone", "kept"], None).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate]
    );
    assert_eq!(
        column(
            &place,
            "SELECT convert_from(id, 'UTF8') FROM oncely.marks_1_3"
        ),
        ["gone"],
        "marked again in the open generation"
    );
    assert_eq!(t.check(NS, &["gone"]).unwrap(), [Verdict::Duplicate]);
}

/// The same through SQL (`oncely.forget`): an ID forgotten from a sealed
/// generation whose filter is built answers new once the generation is
/// Bloom-only, its neighbour probable_duplicate.
#[test]
fn a_forget_through_sql_holds_once_its_generation_turns_bloom_only() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 2, 1_000, Duration::from_secs(3600), 1e-6),
    );
    assert_eq!(
        t.check_and_mark(NS, &["gone", "kept"], None).unwrap(),
        [Verdict::New; 2]
    );
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        column(
            &place,
            "SELECT id || ' ' || forgotten FROM oncely.forget('default', ARRAY['gone', 'gone'])"
        ),
        ["gone true", "gone false"]
    );
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        t.check(NS, &["gone", "kept"]).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate]
    );
}

/// A node holding a generation's filter from before a forget loads the filter
/// built again without the ID, although it is as long as the one it holds: the ID
/// answers new on that node too, once the generation is Bloom-only.
#[test]
fn a_filter_built_again_after_a_forget_reaches_every_node() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3600), 1e-6);
    let forgetter = place.open(&c, config.clone());
    let ids = common::ids(0..100);
    let _ = forgetter.check_and_mark(NS, &ids, None).unwrap();
    forgetter.rotate_namespace(NS).unwrap();
    let length = || {
        column(
            &place,
            "SELECT octet_length(filter)::text FROM oncely.generations WHERE gen = 1",
        )
    };
    let built = length();
    // Another node, holding generation 1's filter.
    let other = place.open(&c, config);
    assert_eq!(
        other.check(NS, &[&ids[0], &ids[1]]).unwrap(),
        [Verdict::Duplicate; 2]
    );
    assert_eq!(forgetter.forget(NS, &[&ids[0]]).unwrap(), [true]);
    forgetter.rotate_namespace(NS).unwrap();
    assert_eq!(
        length(),
        built,
        "built again without the ID, and as long as the one the other node holds"
    );
    assert_eq!(
        other.check(NS, &[&ids[0], &ids[1]]).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate]
    );
    assert_eq!(
        forgetter.check(NS, &[&ids[0], &ids[1]]).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate]
    );
}

/// A database as version 1 or 2 left it: namespace `default` with generations 1
/// (sealed, `a` and `b`) and 2 (open, `c` and a claim's placeholder for `job`).
fn old_schema(version: i32, key: &str, config: &str) -> String {
    format!(
        "CREATE SCHEMA oncely;
        CREATE TABLE oncely.meta (key text PRIMARY KEY, value text NOT NULL);
        INSERT INTO oncely.meta VALUES ('schema_version', '{version}');
        CREATE TABLE oncely.namespaces (
            id serial PRIMARY KEY, name text NOT NULL UNIQUE, config text NOT NULL,
            seed bigint NOT NULL, version bigint NOT NULL DEFAULT 1, open_gen bigint NOT NULL,
            exact_floor bigint NOT NULL, oldest_gen bigint NOT NULL);
        CREATE TABLE oncely.generations (
            ns integer NOT NULL REFERENCES oncely.namespaces (id) ON DELETE CASCADE,
            gen bigint NOT NULL, opened_at bigint NOT NULL, sealed_at bigint,
            ids bigint NOT NULL DEFAULT 0, filter bytea, PRIMARY KEY (ns, gen));
        CREATE TABLE oncely.counts (ns integer NOT NULL, gen bigint NOT NULL,
            shard integer NOT NULL, n bigint NOT NULL, PRIMARY KEY (ns, gen, shard));
        CREATE TABLE oncely.marks (ns integer NOT NULL, gen bigint NOT NULL, id bytea NOT NULL,
            owner bigint, claim boolean NOT NULL DEFAULT false, PRIMARY KEY ({key}))
            PARTITION BY RANGE (ns, gen);
        CREATE TABLE oncely.claims (ns integer NOT NULL, id bytea NOT NULL, owner bigint NOT NULL,
            until_ms bigint NOT NULL, lease_ms bigint NOT NULL, PRIMARY KEY (ns, id));
        CREATE TABLE oncely.checkpoints (ns integer NOT NULL, consumer text NOT NULL,
            position text NOT NULL, PRIMARY KEY (ns, consumer));
        CREATE TABLE oncely.user_kv (key bytea PRIMARY KEY, value bytea NOT NULL);
        INSERT INTO oncely.namespaces (name, config, seed, version, open_gen, exact_floor, oldest_gen)
             VALUES ('default', '{config}', 77, 3, 2, 1, 1);
        INSERT INTO oncely.generations (ns, gen, opened_at, sealed_at, ids)
             VALUES (1, 1, 1600000000000, 1650000000000, 2), (1, 2, 1700000000000, NULL, 0);
        CREATE TABLE oncely.marks_1_1 PARTITION OF oncely.marks FOR VALUES FROM (1, 1) TO (1, 2);
        CREATE TABLE oncely.marks_1_2 PARTITION OF oncely.marks FOR VALUES FROM (1, 2) TO (1, 3);
        INSERT INTO oncely.marks (ns, gen, id, owner, claim) VALUES
            (1, 1, 'a', NULL, false), (1, 1, 'b', 5, false), (1, 2, 'c', NULL, false),
            (1, 2, 'job', 9, true);
        INSERT INTO oncely.counts VALUES (1, 2, 0, 1);
        INSERT INTO oncely.claims VALUES (1, 'job', 9, 1800000000000, 60000);"
    )
}

#[test]
fn leaving_the_exact_horizon_drops_a_generations_table() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(
        &c,
        ring_config(4, 1, 1_000, Duration::from_secs(3600), 0.01),
    );
    let _ = t.check_and_mark(NS, &["a"], None).unwrap();
    let tables = |place: &Place| {
        column(
            place,
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'oncely'
              AND tablename LIKE 'marks\\_%' ORDER BY 1",
        )
    };
    assert_eq!(tables(&place), ["marks_1_1"]);
    t.rotate_namespace(NS).unwrap();
    assert_eq!(
        tables(&place),
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

/// Several callers' calls decided together on PostgreSQL (a RESP pipeline, the
/// daemon's group of connections' marks): each answered as it would be alone after
/// the ones before it, as on the embedded engine (`common::calls_decided_together`),
/// and calls with disjoint IDs share statements: 128 single-ID calls commit in a
/// few transactions, not one each. A server of its own, so that no other test's
/// transactions are counted.
#[test]
fn calls_decided_together_answer_in_order_and_share_statements() {
    let server = PgServer::start();
    let url = server.fresh_database();
    let c = clock();
    let t = Tracker::builder()
        .clock(Arc::new(c.clone()))
        .default_config(small_config(10_000))
        .postgres(PgOptions::new(&url))
        .open()
        .unwrap();
    common::calls_decided_together(&t);

    // 128 fresh single IDs, the last 28 of them repeats of earlier ones.
    let ids: Vec<String> = (0..100).map(|i| format!("fresh-{i}")).collect();
    let ids: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .chain(ids[..28].iter().map(String::as_str))
        .collect();
    let singles: Vec<[&str; 1]> = ids.iter().map(|id| [*id]).collect();
    let calls: Vec<(&[&str], Option<&str>)> = singles.iter().map(|one| (&one[..], None)).collect();
    let xid = || -> i64 {
        with_db_url(&url, async |c| {
            let row = c
                .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
                .await
                .unwrap();
            row.get(0)
        })
    };
    let before = xid();
    let each = t.check_and_mark_each(NS, &calls).unwrap();
    let transactions = xid() - before - 1;
    let verdicts: Vec<Verdict> = each.into_iter().map(|v| v.unwrap()[0]).collect();
    assert_eq!(verdicts[..100], [Verdict::New; 100]);
    assert_eq!(
        verdicts[100..],
        [Verdict::Duplicate; 28],
        "a repeat comes after its first"
    );
    assert!(
        transactions <= 4,
        "128 calls committed in {transactions} transactions"
    );
}

/// Runs `f` with a connection of its own to the database at `url`.
fn with_db_url<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let url = url.to_owned();
    runtime().block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        f(&client).await
    })
}
