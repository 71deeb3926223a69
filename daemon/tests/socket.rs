//! A real server on a loopback socket: HTTP/1.1 through hyper, keep-alive, many
//! concurrent clients, graceful shutdown.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oncely::Tracker;
use oncelyd::server::{AppState, Limits, run};
use serde_json::{Value, json};
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), oncelyd::Error>>,
    tracker: Tracker,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A daemon on 127.0.0.1, port chosen by the OS, on RocksDB in a temporary
    /// directory (durability `flush`, as in production).
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tracker = common::rocks_tracker(dir.path()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(tracker.clone(), Limits::default(), &[]);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(run(
            listener,
            state,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        Self {
            addr,
            stop: Some(stop),
            done,
            tracker,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.done)
            .await
            .expect("the server stops within its grace period")
            .unwrap()
            .expect("a clean shutdown");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_and_check_over_a_socket() {
    let server = Server::start().await;
    let c = client();
    let mark = server.url("/v1/namespaces/default/check-and-mark");
    let (status, v) = post(&c, &mark, &json!({"ids": ["a", "b"]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"results": [
            {"id": "a", "verdict": "new", "replayed": false},
            {"id": "b", "verdict": "new", "replayed": false},
        ]})
    );
    let (_, v) = post(&c, &mark, &json!({"ids": ["b", "c"]})).await;
    assert_eq!(v["results"][0]["verdict"], "duplicate");
    assert_eq!(v["results"][1]["verdict"], "new");
    let (_, v) = post(
        &c,
        &server.url("/v1/namespaces/default/check"),
        &json!({"ids": ["a", "d"]}),
    )
    .await;
    assert_eq!(v["results"][0]["verdict"], "duplicate");
    assert_eq!(v["results"][1]["verdict"], "new");
    let health = c.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Over the body limit, on a real connection: 413 in the error shape.
    let huge = "x".repeat(5 << 20);
    let r = c
        .post(&mark)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_exactly_one_new_per_id() {
    // Bodies of ~10 KiB: decided on the blocking pool.
    one_new_per_id(500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_small_requests_get_exactly_one_new_per_id() {
    // Bodies of ~0.5 KiB: first tried on the async workers, which give up to the
    // blocking pool on IDs in flight elsewhere.
    one_new_per_id(25).await;
}

/// 8 clients mark the same 20,000 IDs in batches of `batch_size`: one `new` per ID.
async fn one_new_per_id(batch_size: usize) {
    const IDS: usize = 20_000;
    const CLIENTS: usize = 8;
    let server = Arc::new(Server::start().await);
    let ids: Arc<Vec<String>> = Arc::new((0..IDS).map(|i| format!("event-{i:06}")).collect());
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let ids = Arc::clone(&ids);
        let url = server.url("/v1/namespaces/default/check-and-mark");
        tasks.push(tokio::spawn(async move {
            let c = client();
            // Each client walks the IDs from a different starting batch, so that
            // every batch is contended by several clients at different moments.
            let batches = IDS / batch_size;
            let mut new = Vec::new();
            for k in 0..batches {
                let b = (k + client_no * batches / CLIENTS) % batches;
                let batch = &ids[b * batch_size..(b + 1) * batch_size];
                let (status, v) = post(&c, &url, &json!({ "ids": batch })).await;
                assert_eq!(status, 200, "{v}");
                let results = v["results"].as_array().unwrap();
                assert_eq!(results.len(), batch_size);
                for (id, r) in batch.iter().zip(results) {
                    assert_eq!(r["id"], id.as_str(), "results follow request order");
                    if r["verdict"] == "new" {
                        new.push(id.clone());
                    } else {
                        assert_eq!(r["verdict"], "duplicate");
                    }
                }
            }
            new
        }));
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for id in tokio::time::timeout(Duration::from_secs(90), t)
            .await
            .expect("the clients finish in time")
            .unwrap()
        {
            *count.entry(id).or_default() += 1;
        }
    }
    assert_eq!(count.len(), IDS, "every ID was new for someone");
    assert!(count.values().all(|&n| n == 1), "no ID was new twice");
    let server = Arc::into_inner(server).expect("the clients are done");
    let tracker = server.tracker.clone();
    server.shutdown().await;
    // The shutdown closed the tracker.
    let after = tokio::task::spawn_blocking(move || tracker.check("default", &["event-000000"]))
        .await
        .unwrap();
    assert!(after.is_err(), "a closed tracker refuses calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_progress_finish() {
    let server = Server::start().await;
    let c = client();
    let url = server.url("/v1/namespaces/default/check-and-mark");
    // Keep a few requests going while the shutdown starts: each one either got its
    // full answer, or its connection was never accepted; none is cut off mid-answer.
    let ids: Vec<String> = (0..2000).map(|i| format!("s-{i}")).collect();
    let mut inflight = Vec::new();
    for chunk in ids.chunks(500) {
        let c = c.clone();
        let url = url.clone();
        let body = json!({ "ids": chunk });
        inflight.push(tokio::spawn(async move {
            c.post(&url)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.shutdown().await;
    for t in inflight {
        if let Ok(status) = t.await.unwrap() {
            assert_eq!(status, 200);
        }
    }
}
