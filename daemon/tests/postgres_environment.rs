//! `oncelyd serve --store postgres://...` where real deployments live: a consumer's
//! long transaction beside other namespaces and other daemons, a lost synchronous
//! standby, a caller's bad input, and SIGTERM. Real processes through real sockets,
//! on throwaway PostgreSQL servers the tests start.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, metric_value, metrics};
use oncely_testkit::{PgCluster, PgServer};
use serde_json::{Value, json};

/// A daemon on the PostgreSQL database at `url`.
fn node(url: &str) -> Daemon {
    Daemon::start_with(&["--store", url, "--drain-delay", "0s"], &[])
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// A POST with a JSON body: its status, its body, and how long it took.
async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

async fn put_namespace(c: &reqwest::Client, daemon: &Daemon, name: &str, capacity: u64) {
    let r = c
        .put(daemon.url(&format!("/v1/namespaces/{name}")))
        .json(&json!({
            "generations": 4,
            "exact_generations": 2,
            "generation_capacity": capacity,
            "generation_span": "1h",
            "fp_rate": 0.01,
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A consumer's transaction marks in one namespace and stays open for 12 s, while
/// another namespace rotates again and again (a report holding one of its old
/// tables meanwhile): marks in a third namespace, through another daemon, answer
/// 200 well within a second throughout. Its own namespace, once full, answers 503
/// `busy` after a short wait rather than hang or overfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_holds_up_no_other_namespace_on_any_daemon() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let one = node(&url);
    let two = node(&url);
    let c = client();
    for name in ["held", "rotating", "third"] {
        put_namespace(&c, &one, name, 5).await;
    }
    let consumer = connect(&url).await;
    let report = connect(&url).await;
    consumer.batch_execute("BEGIN").await.unwrap();
    let rows = consumer
        .query(
            "SELECT verdict FROM oncely.check_and_mark('held', ARRAY['h-0'])",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "new");
    let rotating: i32 = report
        .query_one(
            "SELECT id FROM oncely.namespaces WHERE name = 'rotating'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    report.batch_execute("BEGIN").await.unwrap();
    report
        .batch_execute(&format!("SELECT count(*) FROM oncely.marks_{rotating}_1"))
        .await
        .unwrap();

    let held_until = Instant::now() + Duration::from_secs(12);
    let mut slowest = Duration::ZERO;
    let mut marks = 0;
    let mut k = 0;
    while Instant::now() < held_until {
        // Five IDs fill a generation of "rotating": every batch rotates it.
        let ids: Vec<String> = (0..5).map(|i| format!("r-{k}-{i}")).collect();
        let (status, body, took) = post(
            &c,
            &one.url("/v1/namespaces/rotating/check-and-mark"),
            json!({ "ids": ids }),
        )
        .await;
        assert_eq!(status, 200, "rotating, batch {k}: {body}");
        slowest = slowest.max(took);
        let (status, body, took) = post(
            &c,
            &two.url("/v1/namespaces/third/check-and-mark"),
            json!({ "ids": [format!("t-{k}")] }),
        )
        .await;
        assert_eq!(status, 200, "third, mark {k}: {body}");
        slowest = slowest.max(took);
        marks += 2;
        k += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest of {marks} marks took {slowest:?}"
    );
    // Its own namespace: five more fill it, the next one waits, then is refused.
    let (status, body, _) = post(
        &c,
        &two.url("/v1/namespaces/held/check-and-mark"),
        json!({ "ids": ["h-1", "h-2", "h-3", "h-4", "h-5"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, took) = post(
        &c,
        &two.url("/v1/namespaces/held/check-and-mark"),
        json!({ "ids": ["h-6"] }),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "busy", "{body}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let deferred = metric_value(&metrics(&c, &two).await, "oncelyd_rotations_deferred_total");
    assert!(deferred >= 1.0, "{deferred}");
    consumer.batch_execute("COMMIT").await.unwrap();
    report.batch_execute("COMMIT").await.unwrap();
    let (status, body, _) = post(
        &c,
        &two.url("/v1/namespaces/held/check-and-mark"),
        json!({ "ids": ["h-6", "h-0"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["verdict"], "new", "{body}");
    assert_eq!(body["results"][1]["verdict"], "duplicate", "{body}");
}

async fn ready_status(c: &reqwest::Client, daemon: &Daemon) -> u16 {
    c.get(daemon.url("/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// With the synchronous standby gone every commit waits in PostgreSQL: `/readyz`
/// turns 503 within a few seconds (its probe writes), marks fail within the call's
/// deadline rather than hang, and once the standby is back the node is ready again
/// without a restart and a retried mark with the same owner tells what landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_commits_when_the_synchronous_standby_is_lost() {
    let mut cluster = PgCluster::start();
    let url = cluster.fresh_database("standby_lost");
    let daemon = node(&url);
    let c = client();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    let check = daemon.url("/v1/namespaces/default/check");
    assert_eq!(post(&c, &mark, json!({ "ids": ["before"] })).await.0, 200);
    assert_eq!(ready_status(&c, &daemon).await, 200);

    cluster.freeze_standby();
    let lost = Instant::now();
    let (status, body, took) = post(
        &c,
        &mark,
        json!({ "ids": ["during"], "owner": "delivery-1" }),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let mut unready_after = None;
    while lost.elapsed() < Duration::from_secs(15) {
        if ready_status(&c, &daemon).await == 503 {
            unready_after = Some(lost.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready_after = unready_after.expect("still ready 15 s after the standby was lost");
    assert!(unready_after < Duration::from_secs(8), "{unready_after:?}");
    // A read does not wait for the standby, nor hang behind a waiting commit.
    let (status, body, took) = post(&c, &check, json!({ "ids": ["before"] })).await;
    assert!(
        took < Duration::from_secs(6),
        "{status} {body} after {took:?}"
    );

    cluster.thaw_standby();
    let back = Instant::now();
    while ready_status(&c, &daemon).await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not ready again after the standby came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body, _) = post(
        &c,
        &mark,
        json!({ "ids": ["during", "before"], "owner": "delivery-1" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["verdict"], "new", "{body}");
    assert_eq!(body["results"][1]["verdict"], "duplicate", "{body}");
}

/// A checkpoint position holding U+0000 is the caller's bad input on either store:
/// 400, nothing stored, readiness untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_with_nul_is_refused_on_both_stores_and_readiness_stays() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let daemons = [node(&url), Daemon::start(dir.path(), &[], &[])];
    let c = client();
    for daemon in &daemons {
        let put = daemon.url("/v1/namespaces/default/checkpoints/ledger");
        let r = c
            .put(&put)
            .json(&json!({ "position": "offset-1\u{0}x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("U+0000"),
            "{body}"
        );
        assert_eq!(c.get(&put).send().await.unwrap().status().as_u16(), 404);
        assert_eq!(ready_status(&c, daemon).await, 200);
    }
}

/// SIGTERM on the PostgreSQL store: the drain, then exit status 0 (not a panic as
/// the engine's runtime is dropped).
#[test]
fn sigterm_on_the_postgres_store_exits_0() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let mut daemon = node(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let (status, body, _) = post(
            &c,
            &daemon.url("/v1/namespaces/default/check-and-mark"),
            json!({ "ids": ["a"] }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    });
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(30));
    let log = daemon.log_text();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}
