//! The PostgreSQL store as PostgreSQL people run it: callers' transactions at every
//! isolation level, a long transaction holding locks, other languages marking
//! through the SQL functions, a namespace deleted and created again on another
//! node, and bad input that must not pass for a failing store.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Place, clock, ring_config, small_config};
use oncely::{ClaimOutcome, Error, Verdict};
use tokio_postgres::error::SqlState;

const NS: &str = "default";

/// A connection of the test's own, as a consumer's: its statements run on a
/// runtime that keeps driving the connection between steps, so a transaction can
/// stay open while the test calls trackers.
struct Session {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Session {
    fn connect(place: &Place) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = place.url().to_owned();
        let client = runtime.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        });
        Self { runtime, client }
    }

    fn run<T>(&self, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
        self.runtime.block_on(f(&self.client))
    }

    fn sql(&self, statement: &str) {
        self.run(async |c| c.batch_execute(statement).await.unwrap());
    }

    /// `(id, verdict, replayed)` rows of a query of the SQL functions.
    fn verdicts(
        &self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(String, String, bool)>, tokio_postgres::Error> {
        self.run(async |c| {
            Ok(c.query(query, params)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }
}

fn sql_state(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(SqlState::code)
}

const LEVELS: [&str; 3] = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"];

/// The double `new` of a stale snapshot: a consumer's transaction whose snapshot
/// predates another node's rotation must not mark into the generation just sealed
/// (another node would then mark the same ID `new` in the new one). At READ
/// COMMITTED the mark is right; at REPEATABLE READ and SERIALIZABLE it is refused,
/// saying to retry the transaction, and the retry is right. Through the Rust API and
/// through the SQL function alike.
#[test]
fn a_rotation_after_the_callers_snapshot_is_never_acted_on() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(8, 8, 1_000_000, Duration::from_secs(3600), 0.01);
    let caller = place.open(&c, config.clone());
    let other = place.open(&c, config);
    let marks = caller.in_transaction().unwrap();
    let session = Session::connect(&place);
    for (n, level) in LEVELS.iter().enumerate() {
        let strict = n > 0;
        for via_sql in [false, true] {
            let id = format!("event-{n}-{via_sql}");
            // The caller's node has seen the ring as it is now.
            assert_eq!(caller.check(NS, &["warm-up"]).unwrap(), [Verdict::New]);
            session.sql(&format!("BEGIN ISOLATION LEVEL {level}"));
            session.sql("SELECT count(*) FROM oncely.namespaces");
            other.rotate_namespace(NS).unwrap();
            let first = if via_sql {
                session
                    .verdicts(
                        "SELECT id, verdict, replayed FROM oncely.check_and_mark('default', ARRAY[$1::text])",
                        &[&id],
                    )
                    .map(|rows| rows[0].1 == "new")
                    .map_err(|e| sql_state(&e).map(str::to_owned))
            } else {
                session
                    .run(async |c| marks.check_and_mark(c, NS, &[&id], None).await)
                    .map(|v| v == [Verdict::New])
                    .map_err(|e| match e {
                        Error::RetryTransaction(m) => Some(m),
                        other => panic!("{level}: {other}"),
                    })
            };
            if strict {
                let why = first.expect_err(&format!("{level}, sql {via_sql}: must be refused"));
                if via_sql {
                    assert_eq!(why.as_deref(), Some("40001"), "{level}");
                }
                session.sql("ROLLBACK");
                // Retried as a whole: a fresh snapshot, the right generation.
                session.sql(&format!("BEGIN ISOLATION LEVEL {level}"));
                let again = session
                    .run(async |c| marks.check_and_mark(c, NS, &[&id], None).await)
                    .unwrap();
                assert_eq!(again, [Verdict::New], "{level}");
            } else {
                assert_eq!(first, Ok(true), "{level}, sql {via_sql}");
            }
            session.sql("COMMIT");
            assert_eq!(
                other.check_and_mark(NS, &[&id], None).unwrap(),
                [Verdict::Duplicate],
                "{level}, sql {via_sql}: one new, on one node"
            );
        }
    }
}

/// The claims of the in-transaction API take the same guard.
#[test]
fn a_claim_in_a_stale_snapshot_is_refused() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let caller = place.open(&c, small_config(1_000_000));
    let other = place.open(&c, small_config(1_000_000));
    let marks = caller.in_transaction().unwrap();
    let session = Session::connect(&place);
    let _ = caller.check(NS, &["warm-up"]).unwrap();
    session.sql("BEGIN ISOLATION LEVEL REPEATABLE READ");
    session.sql("SELECT count(*) FROM oncely.namespaces");
    other.rotate_namespace(NS).unwrap();
    let claimed = session.run(async |c| {
        marks
            .claim(c, NS, "job-1", "delivery-1", Duration::from_secs(30))
            .await
    });
    assert!(
        matches!(claimed, Err(Error::RetryTransaction(_))),
        "{claimed:?}"
    );
    session.sql("ROLLBACK");
    assert!(matches!(
        other
            .claim(NS, "job-1", "delivery-2", Duration::from_secs(30))
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
}

/// Other languages mark with one SQL call and get the library's verdicts: new,
/// duplicate, an owner's replay, repeats inside a batch, a duplicate found in a
/// sealed generation, a live claim in progress, and the same owner fingerprints
/// as the library's. Bad input is refused with an error that says why.
#[test]
fn sql_callers_get_the_librarys_verdicts() {
    let place = Place::new(Engine::Postgres);
    // The SQL functions read the database's clock: the tracker's must agree, for
    // the lease of a claim taken through the library to be live for SQL.
    let c = oncely::ManualClock::new(oncely::Clock::now(&oncely::SystemClock::new()));
    let t = place.open(
        &c,
        ring_config(4, 4, 1_000_000, Duration::from_secs(3600), 0.01),
    );
    let s = Session::connect(&place);
    let mark = |ids: &[&str], owner: Option<&str>| {
        let ids: Vec<String> = ids.iter().map(|i| (*i).to_owned()).collect();
        s.verdicts(
            "SELECT id, verdict, replayed FROM oncely.check_and_mark('default', $1, $2)",
            &[&ids, &owner],
        )
        .unwrap()
        .into_iter()
        .map(|(id, v, replayed)| format!("{id}:{v}{}", if replayed { "+replayed" } else { "" }))
        .collect::<Vec<_>>()
    };
    assert_eq!(
        mark(&["a", "b", "a"], Some("d1")),
        ["a:new", "b:new", "a:new+replayed"]
    );
    assert_eq!(
        mark(&["a", "c", "c"], None),
        ["a:duplicate", "c:new", "c:duplicate"]
    );
    assert_eq!(mark(&["b"], Some("d1")), ["b:new+replayed"]);
    assert_eq!(mark(&["b"], Some("d2")), ["b:duplicate"]);
    // The library sees SQL's marks and owners, and SQL the library's.
    assert_eq!(
        t.check_and_mark(NS, &["a", "x"], Some("d1")).unwrap(),
        [Verdict::Replayed, Verdict::New]
    );
    assert_eq!(
        t.check_and_mark(NS, &["x"], Some("d3")).unwrap(),
        [Verdict::Duplicate]
    );
    t.check_and_mark(NS, &["y"], Some("lib-owner")).unwrap();
    assert_eq!(mark(&["y"], Some("lib-owner")), ["y:new+replayed"]);
    // Sealed: still found, by every exact generation's table.
    t.rotate_namespace(NS).unwrap();
    t.rotate_namespace(NS).unwrap();
    assert_eq!(mark(&["a", "z"], None), ["a:duplicate", "z:new"]);
    assert_eq!(mark(&["b"], Some("d1")), ["b:new+replayed"]);
    // A live claim: in progress, until its lease's end; its owner's mark completes it.
    assert!(matches!(
        t.claim(NS, "job", "w1", Duration::from_secs(60)).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    let rows = s
        .run(async |c| {
            c.query(
                "SELECT verdict, until_ms FROM oncely.check_and_mark('default', ARRAY['job'])",
                &[],
            )
            .await
        })
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "in_progress");
    assert!(rows[0].get::<_, Option<i64>>(1).is_some());
    assert_eq!(mark(&["job"], Some("w1")), ["job:new"]);
    assert_eq!(t.check(NS, &["job"]).unwrap(), [Verdict::Duplicate]);
    // check, and the bytes variants.
    let checked: Vec<(String, String)> = s
        .run(async |c| {
            c.query(
                "SELECT id, verdict FROM oncely.check('default', ARRAY['a', 'never'])",
                &[],
            )
            .await
        })
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        checked,
        [
            ("a".into(), "duplicate".into()),
            ("never".into(), "new".into())
        ]
    );
    let raw: Vec<u8> = vec![0, 159, 146, 150];
    let bytes_verdict = |ids: &[Vec<u8>]| -> Vec<String> {
        s.run(async |c| {
            c.query(
                "SELECT verdict FROM oncely.check_and_mark_bytes('default', $1)",
                &[&ids],
            )
            .await
        })
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(bytes_verdict(std::slice::from_ref(&raw)), ["new"]);
    assert_eq!(bytes_verdict(std::slice::from_ref(&raw)), ["duplicate"]);
    assert_eq!(t.check(NS, &[&raw]).unwrap(), [Verdict::Duplicate]);
    // Refusals, each naming its reason; nothing marked.
    for (query, state, says) in [
        (
            "SELECT * FROM oncely.check_and_mark('nope', ARRAY['q'])",
            "42704",
            "unknown namespace",
        ),
        (
            "SELECT * FROM oncely.check_and_mark('default', ARRAY['q', ''])",
            "22023",
            "index 1: empty",
        ),
        (
            "SELECT * FROM oncely.check_and_mark('default', ARRAY['q', NULL])",
            "22023",
            "index 1: NULL",
        ),
        (
            "SELECT * FROM oncely.check_and_mark('default', ARRAY['q'], '')",
            "22023",
            "invalid owner",
        ),
        (
            "SELECT * FROM oncely.check_and_mark('default', ARRAY['q', repeat('x', 257)])",
            "22023",
            "257 bytes",
        ),
    ] {
        let err = s.run(async |c| c.query(query, &[]).await).expect_err(query);
        assert_eq!(sql_state(&err), Some(state), "{query}: {err:?}");
        let message = err.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(says), "{query}: {message}");
    }
    assert_eq!(
        t.check(NS, &["q"]).unwrap(),
        [Verdict::New],
        "refused: nothing marked"
    );
    // Checkpoints, kept where the library keeps them.
    s.sql("SELECT oncely.set_checkpoint('default', 'ledger', 'offset-7')");
    assert_eq!(
        t.checkpoint(NS, "ledger").unwrap().as_deref(),
        Some("offset-7")
    );
    t.set_checkpoint(NS, "ledger", "offset-8").unwrap();
    let read: Option<String> = s.run(async |c| {
        c.query_one("SELECT oncely.checkpoint('default', 'ledger')", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(read.as_deref(), Some("offset-8"));
    for bad in [
        "SELECT oncely.set_checkpoint('default', '..', 'p')",
        "SELECT oncely.set_checkpoint('default', 'ledger', '')",
        "SELECT oncely.set_checkpoint('nope', 'ledger', 'p')",
    ] {
        let err = s.run(async |c| c.batch_execute(bad).await).expect_err(bad);
        assert!(
            matches!(sql_state(&err), Some("22023" | "42704")),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(
        t.checkpoint(NS, "ledger").unwrap().as_deref(),
        Some("offset-8")
    );
}

/// Batches of 2,000 IDs in opposite orders, from two transactions at once, many
/// times: the function takes its row locks in ID order, so they wait for one
/// another and never deadlock; exactly one `new` per ID.
#[test]
fn opposite_order_batches_never_deadlock() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let _t = place.open(&c, small_config(100_000_000));
    let sessions = [Session::connect(&place), Session::connect(&place)];
    for race in 0..20 {
        let ids: Vec<String> = (0..2_000).map(|i| format!("r{race}-{i:05}")).collect();
        let start = Arc::new(Barrier::new(2));
        let news: Vec<usize> = thread::scope(|scope| {
            let runs: Vec<_> = sessions
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let mut mine = ids.clone();
                    if k == 1 {
                        mine.reverse();
                    }
                    let start = Arc::clone(&start);
                    scope.spawn(move || {
                        s.sql("BEGIN");
                        start.wait();
                        let rows = s
                            .verdicts(
                                "SELECT id, verdict, replayed FROM oncely.check_and_mark('default', $1)",
                                &[&mine],
                            )
                            .unwrap_or_else(|e| panic!("race {race}: {e:?}"));
                        s.sql("COMMIT");
                        rows.iter().filter(|r| r.1 == "new").count()
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            news.iter().sum::<usize>(),
            ids.len(),
            "race {race}: {news:?}"
        );
    }
}

/// The README's recipe for other languages runs as written, and the crate docs show
/// the same one.
#[test]
fn the_readme_recipe_runs_as_written() {
    let readme = include_str!("../../README.md");
    let recipe = sql_block_after(readme, "<!-- sql-recipe -->");
    let crate_docs = include_str!("../src/postgres.rs");
    let doc_block: String = crate_docs
        .lines()
        .filter_map(|l| l.strip_prefix("//! ").or_else(|| l.strip_prefix("//!")))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        sql_block_after(&doc_block, "<!-- sql-recipe -->"),
        recipe,
        "README and crate docs show one recipe"
    );
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000_000));
    let _ = t
        .configure_namespace("payments", small_config(1_000_000))
        .unwrap();
    let s = Session::connect(&place);
    s.sql("CREATE TABLE balances (account text PRIMARY KEY, amount bigint NOT NULL)");
    s.sql("INSERT INTO balances VALUES ('alice', 0)");
    for _ in 0..2 {
        // Run twice: the second time the event is a duplicate and nothing changes.
        run_recipe(&s, &recipe);
    }
    let amount: i64 = s.run(async |c| {
        c.query_one("SELECT amount FROM balances WHERE account = 'alice'", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(amount, 5, "credited once");
    assert_eq!(
        t.check("payments", &["payment-42"]).unwrap(),
        [Verdict::Duplicate]
    );
}

/// Runs a recipe as a consumer in any language would: statement by statement, the
/// one after a comment that says "verdict is 'new'" only for the IDs marked new.
fn run_recipe(s: &Session, recipe: &str) {
    let mut last_verdicts: Vec<String> = Vec::new();
    let mut only_if_new = false;
    let mut statement = String::new();
    for line in recipe.lines() {
        let (code, comment) = line.split_once("--").unwrap_or((line, ""));
        if code.trim().is_empty() {
            only_if_new |= comment.contains("verdict is 'new'");
            continue;
        }
        statement.push_str(code);
        statement.push('\n');
        if !code.trim_end().ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut statement);
        if std::mem::take(&mut only_if_new) && !last_verdicts.iter().all(|v| v == "new") {
            continue;
        }
        if sql.contains("check_and_mark") {
            last_verdicts = s.run(async |c| {
                c.query(sql.trim().trim_end_matches(';'), &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>("verdict"))
                    .collect()
            });
        } else {
            s.sql(&sql);
        }
    }
}

/// The first ```sql block after `marker`.
fn sql_block_after(text: &str, marker: &str) -> String {
    let after = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} missing"))..];
    let start = after.find("```sql\n").expect("a sql block") + "```sql\n".len();
    let end = after[start..].find("```").expect("the block's end");
    after[start..start + end].to_owned()
}

/// A consumer's transaction that marked in one namespace and stays open holds up
/// that namespace's rotation and nothing else: another namespace rotates, even with
/// a report holding its old table, and a third one marks at once, on another node.
#[test]
fn a_long_transaction_holds_up_only_its_own_namespace() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(4, 1, 1_000_000, Duration::from_secs(3600), 0.01);
    let consumer_node = place.open(&c, config.clone());
    let other_node = place.open(&c, config.clone());
    for ns in ["held", "rotating", "third"] {
        let _ = other_node.configure_namespace(ns, config.clone()).unwrap();
    }
    let marks = consumer_node.in_transaction().unwrap();
    let consumer = Session::connect(&place);
    let report = Session::connect(&place);
    assert_eq!(
        other_node
            .check_and_mark("rotating", &["r-0"], None)
            .unwrap(),
        [Verdict::New]
    );
    // The consumer's transaction: a mark, then it stays open.
    consumer.sql("BEGIN");
    let held = consumer.run(async |cl| marks.check_and_mark(cl, "held", &["h-1"], None).await);
    assert_eq!(held.unwrap(), [Verdict::New]);
    let rotating: i32 = report.run(async |cl| {
        cl.query_one(
            "SELECT id FROM oncely.namespaces WHERE name = 'rotating'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    let first_table = format!("marks_{rotating}_1");
    // A report reads the rotating namespace's first table, and keeps its lock.
    report.sql("BEGIN");
    report.sql(&format!("SELECT count(*) FROM oncely.{first_table}"));
    let slowest = (0..3)
        .map(|k| {
            let started = Instant::now();
            other_node.rotate_namespace("rotating").unwrap();
            assert_eq!(
                other_node
                    .check_and_mark("third", &[format!("t-{k}")], None)
                    .unwrap(),
                [Verdict::New]
            );
            started.elapsed()
        })
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a rotation and a mark elsewhere took {slowest:?}"
    );
    // Its own namespace's rotation waits for it, briefly, and says so.
    let started = Instant::now();
    let deferred = other_node.rotate_namespace("held").unwrap_err();
    assert!(matches!(deferred, Error::Busy(_)), "{deferred}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(other_node.rotations_deferred() >= 1);
    // The report still holds the old table: it stays until the report ends.
    let tables = |s: &Session| -> Vec<String> {
        s.run(async |cl| {
            cl.query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'oncely' \
                 AND tablename LIKE 'marks\\_' || $1 || '\\_%' ORDER BY 1",
                &[&rotating.to_string()],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
    };
    assert!(tables(&consumer).contains(&first_table));
    report.sql("COMMIT");
    consumer.sql("COMMIT");
    other_node.tick().unwrap();
    assert_eq!(
        tables(&consumer),
        [format!("marks_{rotating}_4")],
        "the tables that left the exact horizon are dropped once nobody reads them"
    );
    assert_eq!(
        other_node.check_and_mark("held", &["h-1"], None).unwrap(),
        [Verdict::Duplicate]
    );
    other_node.rotate_namespace("held").unwrap();
}

/// A full open generation whose rotation cannot run yet (a consumer's transaction
/// holds the namespace) does not take more IDs: the mark waits a moment for the
/// rotation, then is refused as busy, having marked nothing.
#[test]
fn a_full_generation_waits_for_its_rotation_then_answers_busy() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(4, 4, 10, Duration::from_secs(3600), 0.01);
    let consumer_node = place.open(&c, config.clone());
    let node = place.open(&c, config);
    let marks = consumer_node.in_transaction().unwrap();
    let consumer = Session::connect(&place);
    consumer.sql("BEGIN");
    let held = consumer.run(async |cl| marks.check_and_mark(cl, NS, &["held"], None).await);
    assert_eq!(held.unwrap(), [Verdict::New]);
    let ids: Vec<String> = (0..10).map(|i| format!("fill-{i}")).collect();
    assert!(
        node.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    let started = Instant::now();
    let refused = node.check_and_mark(NS, &["one-more"], None).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(refused, Error::Busy(_)), "{refused}");
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(
        node.check(NS, &["one-more"]).unwrap(),
        [Verdict::New],
        "nothing marked"
    );
    // In the consumer's own transaction: refused at once.
    let in_tx = consumer.run(async |cl| marks.check_and_mark(cl, NS, &["in-tx"], None).await);
    assert!(matches!(in_tx, Err(Error::Busy(_))), "{in_tx:?}");
    consumer.sql("ROLLBACK");
    assert_eq!(
        node.check_and_mark(NS, &["one-more"], None).unwrap(),
        [Verdict::New]
    );
    let info = node.namespace_info(NS).unwrap();
    assert_eq!(info.generations[0].ids, 1, "a new generation took it");
    assert_eq!(
        info.generations[1].ids, 10,
        "the full one kept its capacity"
    );
}

/// A namespace deleted and created again on one node is another namespace: the
/// other node's first call finds it (no 404), and the old marks are gone.
#[test]
fn a_namespace_created_again_elsewhere_is_found_at_once() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let one = place.open(&c, small_config(1_000));
    let two = place.open(&c, small_config(1_000));
    let _ = one
        .configure_namespace("orders", small_config(1_000))
        .unwrap();
    assert_eq!(
        two.check_and_mark("orders", &["o-1"], Some("d-1")).unwrap(),
        [Verdict::New]
    );
    let _ = two
        .claim("orders", "job", "w", Duration::from_secs(60))
        .unwrap();
    one.delete_namespace("orders").unwrap();
    let _ = one
        .configure_namespace("orders", small_config(1_000))
        .unwrap();
    assert_eq!(
        two.check_and_mark("orders", &["o-1"], Some("d-1")).unwrap(),
        [Verdict::New],
        "found at once; the old namespace's marks went with it"
    );
    assert!(matches!(
        two.claim("orders", "job", "w2", Duration::from_secs(60))
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    one.delete_namespace("orders").unwrap();
    assert!(matches!(
        two.check_and_mark("orders", &["o-2"], None),
        Err(Error::UnknownNamespace(_))
    ));
}

/// One caller's bad input, or a lock another transaction held, is that caller's
/// refusal, never a failing store: readiness stays.
#[test]
fn bad_input_and_busy_ids_never_pass_for_a_failing_store() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000));
    let refused = t.set_checkpoint(NS, "ledger", "offset-1\0x").unwrap_err();
    assert!(
        matches!(
            refused,
            Error::InvalidArgument {
                field: "position",
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(t.checkpoint(NS, "ledger").unwrap(), None);
    // Another transaction holds an ID: the mark waits out the lock timeout.
    let marks = t.in_transaction().unwrap();
    let holder = Session::connect(&place);
    holder.sql("BEGIN");
    let held = holder.run(async |cl| marks.check_and_mark(cl, NS, &["held"], None).await);
    assert_eq!(held.unwrap(), [Verdict::New]);
    let busy = t.check_and_mark(NS, &["held"], None).unwrap_err();
    assert!(matches!(busy, Error::Busy(_)), "{busy}");
    holder.sql("COMMIT");
    assert_eq!(
        t.storage_failure(),
        None,
        "readiness is not the caller's to lose"
    );
    assert_eq!(
        t.check_and_mark(NS, &["held"], None).unwrap(),
        [Verdict::Duplicate]
    );
}

/// Marks of many callers on one node, with rotations among them: the verdicts the
/// function gives agree with a count of every ID (a smoke test of the hot path
/// with hints).
#[test]
fn hints_from_the_filters_keep_answers_exact_across_rotations() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, ring_config(8, 8, 300, Duration::from_secs(3600), 1e-4));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for round in 0..20 {
        let batch: Vec<String> = (0..120)
            .map(|i| format!("e-{}", (round * 77 + i * 13) % 1_500))
            .collect();
        let verdicts = t.check_and_mark(NS, &batch, None).unwrap();
        for (id, v) in batch.iter().zip(verdicts) {
            let n = seen.entry(id.clone()).or_default();
            let expected = if *n == 0 {
                Verdict::New
            } else {
                Verdict::Duplicate
            };
            assert_eq!(v, expected, "round {round}: {id}");
            *n += 1;
        }
        t.tick().unwrap();
    }
    let generations = t.namespace_info(NS).unwrap().generations.len();
    assert!(generations >= 5, "{generations} generations");
}

/// Single IDs from many threads at once share statements: exactly one `new` per ID
/// whatever the interleaving, an owner's retry gets its `new` back, and an ID
/// another transaction holds fails only the call that carries it, not the calls it
/// shared a statement with.
#[test]
fn single_ids_from_many_callers_share_statements_and_stay_exact() {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(100_000_000));
    let marks = t.in_transaction().unwrap();
    let holder = Session::connect(&place);
    holder.sql("BEGIN");
    let held = holder.run(async |cl| marks.check_and_mark(cl, NS, &["held"], None).await);
    assert_eq!(held.unwrap(), [Verdict::New]);
    let ids: Vec<String> = (0..400).map(|i| format!("s-{i:04}")).collect();
    let start = Arc::new(Barrier::new(17));
    let answers: Vec<Vec<(String, String, Verdict)>> = thread::scope(|scope| {
        let mut workers: Vec<_> = (0..16_u64)
            .map(|w| {
                let (t, start) = (t.clone(), Arc::clone(&start));
                let mut mine = ids.clone();
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5EED + w);
                    mine.shuffle(&mut rng);
                    start.wait();
                    let mut got = Vec::new();
                    for (n, id) in mine.iter().take(150).enumerate() {
                        let owner = format!("w{w}-d{n}");
                        let v = t.check_and_mark(NS, &[id], Some(&owner)).unwrap();
                        got.push((id.clone(), owner.clone(), v[0]));
                        if rng.random_bool(0.2) {
                            // The same delivery retried: its answer again, replayed.
                            let again = t.check_and_mark(NS, &[id], Some(&owner)).unwrap();
                            let expected = if v[0].is_new() {
                                Verdict::Replayed
                            } else {
                                v[0]
                            };
                            assert_eq!(again[0], expected, "{id} retried by {owner}");
                        }
                    }
                    got
                })
            })
            .collect();
        let t2 = t.clone();
        let start2 = Arc::clone(&start);
        let busy = scope.spawn(move || {
            start2.wait();
            let started = Instant::now();
            let r = t2.check_and_mark(NS, &["held"], None);
            (r, started.elapsed())
        });
        let answers = workers.drain(..).map(|w| w.join().unwrap()).collect();
        let (r, took) = busy.join().unwrap();
        assert!(matches!(r, Err(Error::Busy(_))), "{r:?} after {took:?}");
        answers
    });
    holder.sql("COMMIT");
    let mut news: HashMap<String, usize> = HashMap::new();
    for (id, owner, v) in answers.iter().flatten() {
        match v {
            Verdict::New => *news.entry(id.clone()).or_default() += 1,
            Verdict::Duplicate => {}
            other => panic!("{id} for {owner}: {other:?}"),
        }
    }
    assert!(news.values().all(|&n| n == 1), "an ID was new twice");
    let marked: Vec<&String> = ids.iter().filter(|id| news.contains_key(*id)).collect();
    assert!(marked.len() > 300, "{}", marked.len());
    assert!(
        t.check(NS, &marked)
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::Duplicate),
        "every new was stored"
    );
}

/// A checkpoint write with a precondition inside the caller's transaction, through
/// the SQL function and the Rust API alike, at every isolation level: when another
/// writer moved the checkpoint after the caller read it, the write is refused (at
/// READ COMMITTED as a conflict naming the stored position, SQLSTATE OC002 with it
/// in DETAIL; at REPEATABLE READ and SERIALIZABLE, whose snapshot cannot see that
/// write, as a transaction to retry), never applied over the other's.
#[test]
fn a_checkpoint_precondition_holds_at_every_isolation_level() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000_000));
    let marks = t.in_transaction().unwrap();
    let session = Session::connect(&place);
    for (n, level) in LEVELS.iter().enumerate() {
        for via_sql in [false, true] {
            let consumer = format!("ledger-{n}-{via_sql}");
            t.set_checkpoint(NS, &consumer, "p-1").unwrap();
            session.sql(&format!("BEGIN ISOLATION LEVEL {level}"));
            let read: Option<String> = session.run(async |c| {
                c.query_one("SELECT oncely.checkpoint('default', $1)", &[&consumer])
                    .await
                    .unwrap()
                    .get(0)
            });
            assert_eq!(read.as_deref(), Some("p-1"));
            t.set_checkpoint(NS, &consumer, "p-2-other").unwrap();
            if via_sql {
                let err = session
                    .run(async |c| {
                        c.execute(
                            "SELECT oncely.set_checkpoint_if('default', $1, $2, 'p-2-mine')",
                            &[&consumer, &read],
                        )
                        .await
                    })
                    .expect_err(level);
                if n == 0 {
                    assert_eq!(sql_state(&err), Some("OC002"), "{level}: {err:?}");
                    let db = err.as_db_error().unwrap();
                    assert_eq!(db.detail(), Some(r#"{"current" : "p-2-other"}"#));
                    assert!(
                        db.message().contains("is at 'p-2-other', not at 'p-1'"),
                        "{db:?}"
                    );
                } else {
                    assert_eq!(sql_state(&err), Some("40001"), "{level}: {err:?}");
                }
            } else {
                let refused = session.run(async |c| {
                    marks
                        .set_checkpoint_if(c, NS, &consumer, read.as_deref(), "p-2-mine")
                        .await
                });
                match (n, refused) {
                    (0, Err(Error::CheckpointConflict { current, .. })) => {
                        assert_eq!(current.as_deref(), Some("p-2-other"));
                    }
                    (1 | 2, Err(Error::RetryTransaction(_))) => {}
                    (_, other) => panic!("{level}: {other:?}"),
                }
            }
            session.sql("ROLLBACK");
            assert_eq!(
                t.checkpoint(NS, &consumer).unwrap().as_deref(),
                Some("p-2-other"),
                "{level}, sql {via_sql}: the other writer's position stands"
            );
            // Read again in a fresh transaction: the write lands.
            session.sql(&format!("BEGIN ISOLATION LEVEL {level}"));
            session.sql(&format!(
                "SELECT oncely.set_checkpoint_if('default', '{consumer}', 'p-2-other', 'p-3')"
            ));
            session.sql("COMMIT");
            assert_eq!(t.checkpoint(NS, &consumer).unwrap().as_deref(), Some("p-3"));
        }
    }
    // The SQL function refuses bad input as the library does.
    for (bad, state) in [
        (
            "SELECT oncely.set_checkpoint_if('default', 'ledger', '', 'p')",
            "22023",
        ),
        (
            "SELECT oncely.set_checkpoint_if('default', 'ledger', NULL, '')",
            "22023",
        ),
        (
            "SELECT oncely.set_checkpoint_if('default', '..', NULL, 'p')",
            "22023",
        ),
        (
            "SELECT oncely.set_checkpoint_if('nope', 'ledger', NULL, 'p')",
            "42704",
        ),
    ] {
        let err = session
            .run(async |c| c.batch_execute(bad).await)
            .expect_err(bad);
        assert_eq!(sql_state(&err), Some(state), "{bad}: {err:?}");
    }
    assert_eq!(t.checkpoint(NS, "ledger").unwrap(), None);
}

/// A conditional write holds the checkpoint's row until the caller's transaction
/// ends: another writer waits for it, then decides on what it committed. So also
/// when no row existed yet, and both wrote expecting none.
#[test]
fn a_checkpoint_written_in_a_transaction_is_held_until_it_ends() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let t = place.open(&c, small_config(1_000_000));
    let session = Session::connect(&place);
    for (consumer, first) in [("fresh", None), ("stored", Some("p-0"))] {
        if let Some(p) = first {
            t.set_checkpoint(NS, consumer, p).unwrap();
        }
        session.sql("BEGIN");
        session.run(async |c| {
            c.execute(
                "SELECT oncely.set_checkpoint_if('default', $1, $2, 'p-mine')",
                &[&consumer, &first],
            )
            .await
            .unwrap()
        });
        let other = {
            let t = t.clone();
            thread::spawn(move || t.set_checkpoint_if(NS, consumer, first, "p-other"))
        };
        thread::sleep(Duration::from_millis(300));
        assert!(!other.is_finished(), "{consumer}: the other writer waits");
        session.sql("COMMIT");
        match other.join().unwrap() {
            Err(Error::CheckpointConflict { current, .. }) => {
                assert_eq!(current.as_deref(), Some("p-mine"), "{consumer}");
            }
            other => panic!("{consumer}: {other:?}"),
        }
        assert_eq!(
            t.checkpoint(NS, consumer).unwrap().as_deref(),
            Some("p-mine")
        );
    }
}

/// A forget inside the caller's transaction, through the Rust API and the SQL
/// function alike, at every isolation level: it lands with the transaction's
/// commit and not with its rollback (the mark stays: duplicate), it answers false
/// for an ID another node forgot meanwhile (at REPEATABLE READ and SERIALIZABLE,
/// whose snapshot still holds the mark, it is refused as a transaction to retry:
/// never two forgets of one mark), and it never acts on a snapshot from before
/// another node's rotation.
#[test]
fn a_forget_in_a_callers_transaction_holds_at_every_isolation_level() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(8, 8, 1_000_000, Duration::from_secs(3600), 0.01);
    let caller = place.open(&c, config.clone());
    let other = place.open(&c, config);
    let marks = caller.in_transaction().unwrap();
    let session = Session::connect(&place);
    // A forget's answers, or the SQLSTATE (40001 for `RetryTransaction`).
    let forget = |ids: &[&str], via_sql: bool| -> Result<Vec<bool>, String> {
        if via_sql {
            let ids: Vec<String> = ids.iter().map(|i| (*i).to_owned()).collect();
            session
                .run(async |c| {
                    c.query(
                        "SELECT forgotten FROM oncely.forget('default', $1)",
                        &[&ids],
                    )
                    .await
                })
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .map_err(|e| sql_state(&e).unwrap_or("none").to_owned())
        } else {
            session
                .run(async |c| marks.forget(c, NS, ids).await)
                .map_err(|e| match e {
                    Error::RetryTransaction(_) => "40001".to_owned(),
                    other => other.to_string(),
                })
        }
    };
    for (n, level) in LEVELS.iter().enumerate() {
        let strict = n > 0;
        for via_sql in [false, true] {
            let id = format!("event-{n}-{via_sql}");
            let id = id.as_str();
            let begin = || session.sql(&format!("BEGIN ISOLATION LEVEL {level}"));
            assert_eq!(
                other.check_and_mark(NS, &[id], None).unwrap(),
                [Verdict::New]
            );
            // Rolled back with the caller's transaction: the mark stays.
            begin();
            assert_eq!(
                forget(&[id, id, "unseen"], via_sql),
                Ok(vec![true, false, false]),
                "{level}, sql {via_sql}"
            );
            session.sql("ROLLBACK");
            assert_eq!(
                other.check(NS, &[id]).unwrap(),
                [Verdict::Duplicate],
                "{level}, sql {via_sql}: rolled back, the mark stays"
            );
            // Committed: given back.
            begin();
            assert_eq!(forget(&[id], via_sql), Ok(vec![true]));
            session.sql("COMMIT");
            assert_eq!(
                other.check_and_mark(NS, &[id], None).unwrap(),
                [Verdict::New],
                "{level}, sql {via_sql}: committed, the ID is new again"
            );
            // Forgotten by another node after the snapshot was taken.
            begin();
            session.sql("SELECT count(*) FROM oncely.namespaces");
            assert_eq!(other.forget(NS, &[id]).unwrap(), [true]);
            let again = forget(&[id], via_sql);
            if strict {
                assert_eq!(again, Err("40001".to_owned()), "{level}, sql {via_sql}");
            } else {
                assert_eq!(again, Ok(vec![false]), "{level}, sql {via_sql}");
            }
            session.sql("ROLLBACK");
            // Rotated by another node after the snapshot was taken: the ID is in a
            // sealed generation now.
            assert_eq!(
                other.check_and_mark(NS, &[id], None).unwrap(),
                [Verdict::New]
            );
            begin();
            session.sql("SELECT count(*) FROM oncely.namespaces");
            other.rotate_namespace(NS).unwrap();
            let after = forget(&[id], via_sql);
            if strict {
                assert_eq!(after, Err("40001".to_owned()), "{level}, sql {via_sql}");
                session.sql("ROLLBACK");
                begin();
                assert_eq!(forget(&[id], via_sql), Ok(vec![true]), "{level}: retried");
            } else {
                assert_eq!(after, Ok(vec![true]), "{level}, sql {via_sql}");
            }
            session.sql("COMMIT");
            assert_eq!(
                other.check(NS, &[id]).unwrap(),
                [Verdict::New],
                "{level}, sql {via_sql}: forgotten from the sealed generation"
            );
        }
    }
}

/// A filter build that read a generation's table before a forget of one of its
/// IDs committed stores nothing (the forget moved the generation's count of
/// forgets after the build read it): the generation stays exact until a filter is
/// built without the ID, and the ID answers new once it is Bloom-only.
#[test]
fn a_filter_built_while_a_forget_commits_is_not_stored() {
    let place = Place::new(Engine::Postgres);
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3600), 1e-6);
    let t = place.open(&c, config.clone());
    assert_eq!(
        t.check_and_mark(NS, &["gone", "kept"], None).unwrap(),
        [Verdict::New; 2]
    );
    t.rotate_namespace(NS).unwrap();
    let session = Session::connect(&place);
    let watch = Session::connect(&place);
    // Generation 1 sealed without its filter yet, as when the node that sealed it
    // stopped before building it; a node that opens now finds it to build.
    session.sql("UPDATE oncely.generations SET filter = NULL WHERE gen = 1");
    let builder = place.open(&c, config);
    session.sql("BEGIN");
    let forgotten: Vec<bool> = session.run(async |c| {
        c.query(
            "SELECT forgotten FROM oncely.forget('default', ARRAY['gone'])",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(forgotten, [true]);
    // The build reads the table (the forget not committed: `gone` still in it),
    // then waits for the forget's lock on the generation's row to store.
    let build = {
        let b = builder.clone();
        thread::spawn(move || b.tick())
    };
    let waiting = || -> i64 {
        watch.run(async |c| {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND query LIKE '%SET filter = $3%'
                    AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
        })
    };
    let since = Instant::now();
    while waiting() == 0 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the build never waited"
        );
        thread::sleep(Duration::from_millis(10));
    }
    session.sql("COMMIT");
    build.join().unwrap().unwrap();
    let filter_is_null: bool = watch.run(async |c| {
        c.query_one(
            "SELECT filter IS NULL FROM oncely.generations WHERE gen = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert!(
        filter_is_null,
        "the build that still held `gone` stored nothing"
    );
    t.rotate_namespace(NS).unwrap();
    for node in [&t, &builder] {
        assert_eq!(
            node.check(NS, &["gone", "kept"]).unwrap(),
            [Verdict::New, Verdict::ProbableDuplicate]
        );
    }
}

/// Other languages forget with one SQL call and get the library's answers: a
/// forgotten ID is new to the library, a live claim (taken through the library)
/// is left alone, repeats and unknown IDs are false, IDs in a sealed generation
/// are found; bytes through `forget_bytes`. Bad input is refused as by
/// `check_and_mark`.
#[test]
fn sql_callers_forget_as_the_library_does() {
    let place = Place::new(Engine::Postgres);
    // The SQL functions read the database's clock: the tracker's must agree, for
    // the lease of a claim taken through the library to be live for SQL.
    let c = oncely::ManualClock::new(oncely::Clock::now(&oncely::SystemClock::new()));
    let t = place.open(
        &c,
        ring_config(4, 4, 1_000_000, Duration::from_secs(3600), 0.01),
    );
    let s = Session::connect(&place);
    let forget = |ids: &[&str]| -> Vec<String> {
        let ids: Vec<String> = ids.iter().map(|i| (*i).to_owned()).collect();
        s.run(async |c| {
            c.query(
                "SELECT id, forgotten FROM oncely.forget('default', $1)",
                &[&ids],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{}:{}", r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect()
        })
    };
    assert_eq!(
        t.check_and_mark(NS, &["a", "b", "sealed"], Some("d1"))
            .unwrap(),
        [Verdict::New; 3]
    );
    t.rotate_namespace(NS).unwrap();
    assert_eq!(t.check_and_mark(NS, &["c"], None).unwrap(), [Verdict::New]);
    assert!(matches!(
        t.claim(NS, "job", "w1", Duration::from_secs(60)).unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    assert_eq!(
        forget(&["c", "x", "job", "c", "sealed"]),
        ["c:true", "x:false", "job:false", "c:false", "sealed:true"]
    );
    let generations: Vec<String> = s.run(async |c| {
        c.query(
            "SELECT gen || ': ' || forgets || ', ' || (filter IS NOT NULL)
               FROM oncely.generations ORDER BY gen",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(
        generations,
        ["1: 1, false", "2: 1, false"],
        "each generation counts its forget; the sealed one's filter, which holds \
         the ID, is taken away"
    );
    assert!(matches!(
        t.check(NS, &["c", "job", "sealed", "a"]).unwrap()[..],
        [
            Verdict::New,
            Verdict::InProgress { .. },
            Verdict::New,
            Verdict::Duplicate
        ]
    ));
    assert_eq!(forget(&["c"]), ["c:false"], "a retried forget");
    assert!(forget(&[]).is_empty());
    let bytes: Vec<(Vec<u8>, bool)> = s.run(async |c| {
        c.query(
            "SELECT id, forgotten FROM oncely.forget_bytes('default', $1)",
            &[&vec![b"a".to_vec(), b"b".to_vec()]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    });
    assert_eq!(bytes, [(b"a".to_vec(), true), (b"b".to_vec(), true)]);
    assert_eq!(
        t.check_and_mark(NS, &["a"], Some("d1")).unwrap(),
        [Verdict::New],
        "forgotten through SQL: new to the library, not replayed"
    );
    let too_long = format!(
        "SELECT * FROM oncely.forget('default', ARRAY['{}'])",
        "x".repeat(257)
    );
    for (bad, state) in [
        ("SELECT * FROM oncely.forget('default', ARRAY[''])", "22023"),
        (
            "SELECT * FROM oncely.forget('default', ARRAY[NULL]::text[])",
            "22023",
        ),
        (too_long.as_str(), "22023"),
        ("SELECT * FROM oncely.forget('default', NULL)", "22004"),
        ("SELECT * FROM oncely.forget(NULL, ARRAY['a'])", "22004"),
        ("SELECT * FROM oncely.forget('nope', ARRAY['a'])", "42704"),
        (
            "SELECT * FROM oncely.forget_bytes('default', ARRAY[''::bytea])",
            "22023",
        ),
    ] {
        let err = s.run(async |c| c.batch_execute(bad).await).expect_err(bad);
        assert_eq!(sql_state(&err), Some(state), "{bad}: {err:?}");
    }
    assert_eq!(t.check(NS, &["a"]).unwrap(), [Verdict::Duplicate]);
}
