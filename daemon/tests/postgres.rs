//! `oncelyd serve --store postgres://...`, real processes through real sockets: two
//! daemons on one database answer as one authority, also while one is killed with
//! SIGKILL; readiness and metrics follow the database; settings that do not fit a
//! store stop start-up with a clear message. Each test has a database of its own on
//! a throwaway PostgreSQL server started by the test process (`oncely-testkit`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, command, metric_value, metrics, run_to_exit, verdicts};
use oncely_testkit::PgServer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

/// A daemon on the PostgreSQL database at `url`.
fn node(url: &str) -> Daemon {
    Daemon::start_with(&["--store", url, "--drain-delay", "0s"], &[])
}

/// The database's name, the last segment of its URL.
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Runs SQL on the server's `postgres` database (outside the daemons' database).
async fn admin(pg: &PgServer, sql: &str) {
    let (c, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
    drop(c);
    let _ = conn.await;
}

const CLIENTS: usize = 8;
const IDS: usize = 20_000;
const BATCH: usize = 250;

/// What one client was finally told about an ID, and by which node.
#[derive(Clone, Debug)]
struct Told {
    id: String,
    verdict: String,
    replayed: bool,
    node: usize,
}

/// One client: every ID of `ids` once, in an order of its own, in batches spread
/// over both nodes. Each batch is one delivery attempt with its own owner token; a
/// batch whose node fails (killed, or answering 503) is retried with the same owner
/// on the other node, as a consumer behind a load balancer would.
async fn race_client(
    k: usize,
    phase: &'static str,
    nodes: Arc<[String; 2]>,
    ids: Arc<Vec<String>>,
    answered: Arc<AtomicUsize>,
    dead: Arc<AtomicBool>,
) -> Vec<Told> {
    let c = client();
    let mut order: Vec<&String> = ids.iter().collect();
    order.shuffle(&mut StdRng::seed_from_u64(k as u64));
    let mut told = Vec::with_capacity(order.len());
    for (j, batch) in order.chunks(BATCH).enumerate() {
        let owner = format!("{phase}-client{k}-batch{j}");
        let mut n = (k + j) % 2;
        let mut attempts = 0;
        let results = loop {
            attempts += 1;
            assert!(
                attempts <= 50,
                "batch {j} of client {k} never got an answer"
            );
            if n == 0 && dead.load(Ordering::SeqCst) {
                n = 1;
            }
            let sent = c
                .post(format!("{}/v1/namespaces/race/check-and-mark", nodes[n]))
                .json(&json!({ "ids": batch, "owner": owner }))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 200 => {
                    // An answer cut off by the node's death is an unknown outcome:
                    // retried, with the same owner.
                    if let Ok(v) = r.json::<Value>().await {
                        break v["results"].as_array().unwrap().clone();
                    }
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    assert_eq!(status, 503, "only unavailability is retried: {body}");
                }
                Err(_) => {}
            }
            n = 1 - n;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for (id, r) in batch.iter().zip(&results) {
            assert_eq!(r["id"], id.as_str());
            told.push(Told {
                id: (*id).clone(),
                verdict: r["verdict"].as_str().unwrap().to_owned(),
                replayed: r["replayed"].as_bool().unwrap(),
                node: n,
            });
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
    told
}

/// Runs the clients of one phase to their end (bounded), calling `meanwhile` with the
/// count of answered batches until they are done.
async fn race(
    phase: &'static str,
    nodes: &[String; 2],
    ids: &[String],
    dead: &Arc<AtomicBool>,
    mut meanwhile: impl FnMut(usize),
) -> Vec<Told> {
    let nodes = Arc::new(nodes.clone());
    let ids = Arc::new(ids.to_vec());
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            tokio::spawn(race_client(
                k,
                phase,
                Arc::clone(&nodes),
                Arc::clone(&ids),
                Arc::clone(&answered),
                Arc::clone(dead),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !clients.iter().all(tokio::task::JoinHandle::is_finished) {
        assert!(Instant::now() < deadline, "the {phase} race took too long");
        meanwhile(answered.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut told = Vec::new();
    for c in clients {
        told.extend(c.await.unwrap());
    }
    told
}

/// Exactly one client was told `new` for each ID (a replay of its own lost answer
/// included: that is the same delivery attempt), every other one `duplicate`.
fn exactly_one_new(told: &[Told], ids: &[String]) {
    let mut news: HashMap<&str, usize> = HashMap::new();
    for t in told {
        match t.verdict.as_str() {
            "new" => *news.entry(&t.id).or_default() += 1,
            "duplicate" => {}
            other => panic!("{}: {other}", t.id),
        }
    }
    assert_eq!(told.len(), ids.len() * CLIENTS);
    for id in ids {
        assert_eq!(news.get(id.as_str()), Some(&1), "{id}: `new` count");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_on_one_database_are_one_authority_even_when_one_is_killed() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let mut a = node(&url);
    let b = node(&url);
    let nodes = [a.url(""), b.url("")];
    let c = client();
    // Small generations, all exact: rotations happen during both races.
    let r = c
        .put(format!("{}/v1/namespaces/race", nodes[0]))
        .json(&json!({
            "generations": 12,
            "generation_capacity": 5000,
            "generation_span": "1h",
            "fp_rate": 0.01,
            "exact_generations": 12,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let none_dead = Arc::new(AtomicBool::new(false));

    // Eight clients, the same 20,000 IDs, both nodes.
    let ids: Vec<String> = (0..IDS).map(|i| format!("race-{i:05}")).collect();
    let started = Instant::now();
    let told = race("both", &nodes, &ids, &none_dead, |_| {}).await;
    let both_took = started.elapsed();
    exactly_one_new(&told, &ids);
    assert!(
        told.iter().all(|t| !t.replayed),
        "no batch was retried, so none replayed"
    );
    for n in 0..2 {
        assert!(
            told.iter().any(|t| t.node == n && t.verdict == "new"),
            "node {n} marked some"
        );
    }
    let info: Value = c
        .get(format!("{}/v1/namespaces/race", nodes[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generations = info["generations"].as_array().unwrap().len();
    assert!(
        generations >= 4,
        "20,000 new IDs at 5,000 per generation sealed several: {info}"
    );

    // Again with fresh IDs, and node A killed without warning a third of the way in.
    let ids: Vec<String> = (0..IDS).map(|i| format!("kill-{i:05}")).collect();
    let dead = Arc::new(AtomicBool::new(false));
    let total_batches = CLIENTS * IDS.div_ceil(BATCH);
    let mut killed_at = None;
    let told = race("kill", &nodes, &ids, &dead, |answered| {
        if killed_at.is_none() && answered >= total_batches / 3 {
            a.child.kill().unwrap();
            dead.store(true, Ordering::SeqCst);
            killed_at = Some(answered);
        }
    })
    .await;
    assert!(killed_at.is_some(), "node A was killed mid-run");
    assert!(!a.wait_exit(Duration::from_secs(5)).success());
    exactly_one_new(&told, &ids);
    let acknowledged_by_a: Vec<String> = told
        .iter()
        .filter(|t| t.node == 0 && t.verdict == "new")
        .map(|t| t.id.clone())
        .collect();
    assert!(
        acknowledged_by_a.len() > 1000,
        "node A acknowledged marks before it died"
    );
    // Every mark node A acknowledged (and every other) is there, through node B.
    let check = b.url("/v1/namespaces/race/check");
    for chunk in ids.chunks(5000) {
        let got = verdicts(&c, &check, chunk).await;
        for (id, v) in chunk.iter().zip(got) {
            assert_eq!(v, "duplicate", "{id} was lost with node A");
        }
    }
    eprintln!(
        "race: {CLIENTS} clients x {IDS} IDs over 2 nodes in {both_took:?}; {generations} \
         generations; {} new answers acknowledged by node A before its kill",
        acknowledged_by_a.len()
    );
}

/// Polls `path` until it answers `status`, at most 15 s.
async fn wait_status(c: &reqwest::Client, daemon: &Daemon, path: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.get(daemon.url(path)).send().await.unwrap();
        if r.status().as_u16() == status {
            return r.json().await.unwrap_or(Value::Null);
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_metrics_and_errors_follow_the_database() {
    let pg = PgServer::shared();
    let url = pg.fresh_database();
    let db = db_name(&url).to_owned();
    let daemon = node(&url);
    let c = client();
    let host = format!("127.0.0.1:{}", pg.port());
    let log = daemon.log_text();
    assert!(log.contains(&format!("store_host={host}")), "{log}");
    assert!(log.contains("store reached"), "{log}");
    assert!(!log.contains("data_dir="), "{log}");
    wait_status(&c, &daemon, "/readyz", 200).await;
    let text = metrics(&c, &daemon).await;
    assert!(
        text.contains(&format!(
            "oncelyd_store_info{{kind=\"postgres\",host=\"{host}\"}} 1"
        )),
        "{text}"
    );
    let rtt = metric_value(&text, "oncelyd_store_round_trip_seconds");
    assert!(rtt > 0.0 && rtt < 5.0, "{rtt}");
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    let ids = vec!["before".to_owned()];
    assert_eq!(verdicts(&c, &mark, &ids).await, ["new"]);

    // The database goes away: no connection is allowed, and the open ones are cut.
    admin(
        pg,
        &format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
        ),
    )
    .await;
    let r = c
        .post(&mark)
        .json(&json!({ "ids": ["during"], "owner": "delivery-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("same owner token"), "{message}");
    let unready = wait_status(&c, &daemon, "/readyz", 503).await;
    assert_eq!(unready["error"]["code"], "storage_unavailable", "{unready}");
    assert!(
        metrics(&c, &daemon)
            .await
            .contains("oncelyd_storage_failing 1")
    );

    // Back: ready again without a restart, and nothing was marked meanwhile.
    admin(pg, &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await;
    wait_status(&c, &daemon, "/readyz", 200).await;
    let ids = vec!["during".to_owned(), "before".to_owned()];
    assert_eq!(verdicts(&c, &mark, &ids).await, ["new", "duplicate"]);
    assert!(
        metrics(&c, &daemon)
            .await
            .contains("oncelyd_storage_failing 0")
    );
}

#[test]
fn settings_that_do_not_fit_a_store_stop_start_up_and_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://oncely:s3cret@127.0.0.1:{port}/oncely");
    let limit = Duration::from_secs(30);
    for (args, envs, expected) in [
        (
            vec!["--store", &url, "--data-dir", dir],
            vec![],
            "invalid setting data_dir: given together with store (postgres://oncely:***@",
        ),
        (
            vec!["--store", &url],
            vec![("ONCELY_DURABILITY", "memory")],
            "invalid setting durability: memory does not apply to a PostgreSQL store",
        ),
        (
            vec!["--store", "mysql://oncely:s3cret@db/app"],
            vec![],
            "invalid value",
        ),
        (
            vec![],
            vec![("ONCELY_STORE", "s3cret")],
            "invalid setting store: ONCELY_STORE: not a PostgreSQL URL",
        ),
        (
            vec!["--store", &url],
            vec![],
            "error: cannot open the PostgreSQL store postgres://oncely:***@127.0.0.1:",
        ),
    ] {
        let mut full = vec!["--listen", "127.0.0.1:0"];
        full.extend(args.iter().copied());
        let (status, stderr) = run_to_exit(command(&full, &envs), limit);
        assert!(!status.success(), "{full:?}: {stderr}");
        assert!(stderr.contains(expected), "{full:?}: {stderr}");
        if !full.contains(&"mysql://oncely:s3cret@db/app") {
            // (clap quotes a value it cannot parse, as given on the command line.)
            assert!(!stderr.contains("s3cret"), "{full:?}: {stderr}");
        }
    }
}
