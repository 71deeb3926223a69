//! A real server on a loopback socket: HTTP/1.1 through hyper, keep-alive, many
//! concurrent clients, graceful shutdown.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oncely::Tracker;
use oncelyd::server::{AppState, Limits, ShutdownTiming, StopHandle, Stops, run, run_with};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const MARK: &str = "/v1/namespaces/default/check-and-mark";

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
    common::daemon::install_crypto();
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

/// What one delivery of a single-ID request was answered, as a client saw it.
#[derive(Debug)]
enum Seen {
    New,
    Replayed,
    Duplicate,
}

/// Single-ID requests from many connections at once, decided on the async workers
/// (or on the blocking pool when one would have to wait): each must get its own
/// answer, its own verdict for its own ID and owner, its own refusal for its own
/// bad ID, and its own replay.
/// 32 clients deliver 200 events each, drawn from 1,500 with a seeded RNG, each
/// delivery with a fresh owner; some deliveries are retried with the same owner
/// (must be `new` again, `replayed`, when the first was `new`), and some carry a
/// second, bad ID (must be 400 `invalid_id`, their good ID left unmarked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_id_requests_each_get_their_own_answer() {
    use rand::{Rng, SeedableRng};
    const EVENTS: usize = 1_500;
    const CLIENTS: usize = 32;
    const DELIVERIES: usize = 200;
    let server = Server::start().await;
    let url = server.url("/v1/namespaces/default/check-and-mark");
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut rng = rand::rngs::StdRng::seed_from_u64(client_no as u64);
            let mut seen = Vec::new();
            let mut refused = Vec::new();
            for k in 0..DELIVERIES {
                let id = format!("event-{:05}", rng.random_range(0..EVENTS));
                let owner = format!("delivery-{client_no}-{k}");
                if rng.random_ratio(1, 10) {
                    // Never marked by anyone: the bad ID refuses the whole request.
                    // Its length is this request's own, and so must the refusal's be.
                    let good = format!("refused-{client_no}-{k}");
                    let bad_len = 257 + (client_no * DELIVERIES + k) % 200;
                    let bad = "x".repeat(bad_len);
                    let (status, v) =
                        post(&c, &url, &json!({ "ids": [good, bad], "owner": owner })).await;
                    assert_eq!(status, 400, "{v}");
                    assert_eq!(v["error"]["code"], "invalid_id", "{v}");
                    let message = v["error"]["message"].as_str().unwrap_or_default();
                    assert!(message.contains(&format!("{bad_len} bytes")), "{v}");
                    refused.push(good);
                    continue;
                }
                let body = json!({ "ids": [id], "owner": owner });
                let (status, v) = post(&c, &url, &body).await;
                assert_eq!(status, 200, "{v}");
                let r = &v["results"][0];
                assert_eq!(r["id"], id.as_str(), "{v}");
                let first = match (r["verdict"].as_str(), r["replayed"].as_bool()) {
                    (Some("new"), Some(false)) => Seen::New,
                    (Some("duplicate"), Some(false)) => Seen::Duplicate,
                    _ => panic!("a fresh owner's first delivery of {id}: {v}"),
                };
                if rng.random_ratio(1, 4) {
                    // The same delivery again, as after a lost answer.
                    let (status, again) = post(&c, &url, &body).await;
                    assert_eq!(status, 200, "{again}");
                    let r = &again["results"][0];
                    match first {
                        Seen::New => {
                            assert_eq!(r["verdict"], "new", "{again}");
                            assert_eq!(r["replayed"], true, "{again}");
                            seen.push((id.clone(), Seen::Replayed));
                        }
                        _ => {
                            assert_eq!(r["verdict"], "duplicate", "{again}");
                            assert_eq!(r["replayed"], false, "{again}");
                        }
                    }
                }
                seen.push((id, first));
            }
            (seen, refused)
        }));
    }
    let mut new: HashMap<String, usize> = HashMap::new();
    let mut delivered = std::collections::HashSet::new();
    let mut replayed = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let (seen, r) = tokio::time::timeout(Duration::from_secs(90), t)
            .await
            .expect("the clients finish in time")
            .unwrap();
        for (id, s) in seen {
            delivered.insert(id.clone());
            match s {
                Seen::New => *new.entry(id).or_default() += 1,
                Seen::Replayed => replayed += 1,
                Seen::Duplicate => {}
            }
        }
        refused.extend(r);
    }
    assert_eq!(
        new.len(),
        delivered.len(),
        "every event delivered was new once"
    );
    assert!(
        new.values().all(|&n| n == 1),
        "no event was new for two deliveries"
    );
    assert!(replayed > 0 && !refused.is_empty(), "the mix was exercised");
    // A refused request marked nothing; every event delivered was marked.
    let c = client();
    let check = server.url("/v1/namespaces/default/check");
    let marked: Vec<&String> = new.keys().collect();
    for (ids, expected) in [(refused.iter().collect(), "new"), (marked, "duplicate")] {
        let (status, v) = post(&c, &check, &json!({ "ids": ids })).await;
        assert_eq!(status, 200, "{v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), ids.len());
        for r in results {
            assert_eq!(r["verdict"], expected, "{r}");
        }
    }
    server.shutdown().await;
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

/// A daemon on a real socket, stopped through a [`StopHandle`], so that tests can
/// send the first and second stop requests as signals would.
struct Stoppable {
    addr: SocketAddr,
    stops: StopHandle,
    done: tokio::task::JoinHandle<Result<(), oncelyd::Error>>,
    state: AppState,
}

impl Stoppable {
    async fn start(tracker: Tracker, timing: ShutdownTiming) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(tracker, Limits::default(), &[]);
        let (stops, requests) = Stops::channel();
        let done = tokio::spawn(run_with(listener, state.clone(), requests, timing));
        Self {
            addr,
            stops,
            done,
            state,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Sends raw bytes on a fresh connection and reads the whole answer (the server
/// closes the connection after it).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything: ignore a
    // failed write, read what came back.
    let _ = conn.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and the JSON body of a raw HTTP/1.1 answer.
fn parse_answer(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head[9..12].parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hyper_writes_itself_have_the_json_error_shape() {
    let server = Server::start().await;
    // Headers far over hyper's limit: 431.
    let mut huge = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 600 << 10));
    huge.extend_from_slice(b"\r\n\r\n");
    let (status, v) = parse_answer(&raw_exchange(server.addr, &huge).await);
    assert_eq!(status, 431);
    assert_eq!(v["error"]["code"], "headers_too_large");
    // A malformed request line, and a malformed header: 400.
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
        b"GET /he\x01lthz HTTP/1.1\r\n\r\n",
    ] {
        let (status, v) = parse_answer(&raw_exchange(server.addr, junk).await);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(junk));
        assert_eq!(v["error"]["code"], "malformed_request");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    }
    // The application's own answers pass untouched, on the same kind of connection.
    let answer = raw_exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_with_readyz_503_before_the_listener_closes() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let tracker = common::rocks_tracker(dir.path()).await;
    let timing = ShutdownTiming {
        drain_delay: Duration::from_secs(3),
        grace: Duration::from_secs(20),
    };
    let server = Stoppable::start(tracker, timing).await;
    let c = client();
    // A client half-way through its request head when the shutdown begins.
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /v1/namespaces/default/check-and-mark HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let ready = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    let began = std::time::Instant::now();
    server.stops.stop();
    // Unready first, while still serving everything else, new connections included.
    let deadline = began + Duration::from_secs(2);
    loop {
        let r = client().get(server.url("/readyz")).send().await.unwrap();
        if r.status().as_u16() == 503 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "shutting_down");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never went unready");
    }
    let (status, v) = post(
        &client(),
        &server.url("/v1/namespaces/default/check-and-mark"),
        &json!({"ids": ["during-drain"]}),
    )
    .await;
    assert_eq!((status, &v["results"][0]["verdict"]), (200, &json!("new")));
    assert!(
        began.elapsed() < timing.drain_delay,
        "still within the drain"
    );

    // Then the listener closes; the half-sent request does not hold the shutdown
    // for the 20 s grace period.
    tokio::time::timeout(Duration::from_secs(8), server.done)
        .await
        .expect("the half-sent request head does not hold the shutdown")
        .unwrap()
        .expect("a clean shutdown");
    assert!(began.elapsed() >= timing.drain_delay, "the drain was kept");
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed"
    );
    assert!(!server.state.is_ready());
}

/// What one keep-alive client saw from the first stop request on.
#[derive(Debug, Default)]
struct DrainSeen {
    /// Answers, each with `Connection: close`.
    answered: usize,
    /// Times the client found its connection closed by the daemon before sending
    /// on it (as a client pool checks before reusing one).
    closed_before_sending: usize,
    /// Connections refused: the listener had closed.
    refused: usize,
    /// Requests sent that got no answer: lost to a close, their outcome unknown.
    swallowed: Vec<String>,
}

/// From the drain's start, every answer carries `Connection: close` and keep-alive
/// connections with nothing under way are closed, so that clients reconnect rather
/// than lose requests: 8 clients on keep-alive connections, sending through the
/// drain and past the listener's close (half of them first on their idle
/// connection just as the listener closes, the moment at which, with keep-alive
/// kept through the drain, 7 of 8 such clients once got no answer), each get an
/// answer to every request they send, or find their connection closed (or refused)
/// before sending, as a client pool checks before reusing one. None sends a
/// request that is then swallowed. (Before, the answers during the drain kept
/// their connections alive, and the idle connections stayed open until the
/// listener closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_reconnect_through_the_drain_and_lose_no_request() {
    use common::raw::RawConn;
    const CLIENTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let tracker = common::rocks_tracker(dir.path()).await;
    let drain = Duration::from_millis(1500);
    let timing = ShutdownTiming {
        drain_delay: drain,
        grace: Duration::from_secs(5),
    };
    let server = Stoppable::start(tracker, timing).await;
    let mark =
        |client: usize, n: usize| json!({ "ids": [format!("drain-{client}-{n}")] }).to_string();
    let mut conns = Vec::new();
    for i in 0..CLIENTS {
        let mut c = RawConn::connect(server.addr).await;
        let a = c
            .request("POST", MARK, Some(&mark(i, 0)), Duration::from_secs(5))
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(!a.headers.contains("connection: close"), "{a:?}");
        conns.push(c);
    }
    let stopped = std::time::Instant::now() + Duration::from_millis(50);
    let addr = server.addr;
    let mut clients = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        clients.push(tokio::spawn(async move {
            let mut seen = DrainSeen::default();
            let mut conn = Some(conn);
            // Even clients first send 400 ms into the drain, odd ones as the
            // listener closes; then each every 150 ms, until refused.
            let first = if i % 2 == 0 {
                Duration::from_millis(400 + 20 * i as u64)
            } else {
                drain - Duration::from_millis(60) + Duration::from_millis(10 * i as u64)
            };
            for n in 1..40 {
                let at = stopped + first + Duration::from_millis(150) * (n as u32 - 1);
                tokio::time::sleep_until(at.into()).await;
                if conn.as_ref().is_some_and(RawConn::closed_now) {
                    seen.closed_before_sending += 1;
                    conn = None;
                }
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => match tokio::net::TcpStream::connect(addr).await {
                        Ok(stream) => {
                            stream.set_nodelay(true).unwrap();
                            RawConn::from_stream(stream)
                        }
                        Err(_) => {
                            seen.refused += 1;
                            break;
                        }
                    },
                };
                let body = mark(i, n);
                c.send(&common::raw::request_bytes("POST", MARK, Some(&body)))
                    .await;
                match c.answer(Duration::from_secs(5)).await {
                    Some(a) => {
                        assert_eq!(a.status, 200, "{a:?}");
                        assert!(
                            a.headers.contains("connection: close"),
                            "an answer during the drain keeps its connection alive: {a:?}"
                        );
                        seen.answered += 1;
                    }
                    None => seen.swallowed.push(body),
                }
                // Told to close: a new connection for the next request.
            }
            seen
        }));
    }
    tokio::time::sleep_until(stopped.into()).await;
    server.stops.stop();
    let mut seen = Vec::new();
    for client in clients {
        seen.push(client.await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("the shutdown ends")
        .unwrap()
        .expect("a clean shutdown");
    println!("{seen:#?}");
    for (i, s) in seen.iter().enumerate() {
        assert!(s.swallowed.is_empty(), "client {i}: {s:?}");
        // Its idle keep-alive connection was closed before it sent on it again.
        assert!(s.closed_before_sending >= 1, "client {i}: {s:?}");
        assert!(
            s.refused == 1,
            "client {i} never found the listener closed: {s:?}"
        );
    }
    // The even clients sent during the drain, on new connections, and were answered.
    assert!(seen.iter().step_by(2).all(|s| s.answered >= 1), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_request_cuts_the_drain_and_grace_short_and_still_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = common::rocks_tracker(dir.path()).await;
    let timing = ShutdownTiming {
        drain_delay: Duration::from_secs(60),
        grace: Duration::from_secs(60),
    };
    let server = Stoppable::start(tracker.clone(), timing).await;
    let ids: Vec<String> = (0..500).map(|i| format!("second-{i}")).collect();
    let (status, _) = post(
        &client(),
        &server.url("/v1/namespaces/default/check-and-mark"),
        &json!({ "ids": ids }),
    )
    .await;
    assert_eq!(status, 200);
    server.stops.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "draining");
    let began = std::time::Instant::now();
    server.stops.stop();
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("the second stop request ends the 60 s drain")
        .unwrap()
        .expect("still a clean close");
    assert!(began.elapsed() < Duration::from_secs(10));
    // The tracker was closed cleanly: reopened, the marks are there.
    drop((tracker, server.state));
    let reopened = common::rocks_tracker(dir.path()).await;
    let got = tokio::task::spawn_blocking(move || reopened.check("default", &ids))
        .await
        .unwrap()
        .unwrap();
    assert!(got.iter().all(|v| *v == oncely::Verdict::Duplicate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_comes_back_when_storage_recovers_with_no_client_writing() {
    let faults = common::Faults::default();
    let tracker = Tracker::builder()
        .store(Box::new(common::Faulty::new(faults.clone())))
        .durability(oncely::Durability::Memory)
        .default_config(common::small_config())
        .open()
        .unwrap();
    let server = Stoppable::start(
        tracker,
        ShutdownTiming {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(5),
        },
    )
    .await;
    let c = client();
    faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, v) = post(
        &c,
        &server.url("/v1/namespaces/default/check-and-mark"),
        &json!({"ids": ["r-1"]}),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (503, &json!("storage_unavailable"))
    );
    let r = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Nobody writes; the daemon's own ticker finds out within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(server.url("/readyz")).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still unready 10 s after the store recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stops.stop();
    server.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_json_passes_the_browser_guard() {
    let server = Server::start().await;
    let url = server.url("/v1/namespaces/default/check-and-mark");
    let curl = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", "--noproxy", "*", "--max-time", "10"])
                .args(&args)
                .output()
                .expect("curl runs (the test needs curl 7.82 or later, for --json)")
        })
        .await
        .unwrap()
    };
    let out = curl(vec![
        "--json".into(),
        r#"{"ids":["curl-1"]}"#.into(),
        url.clone(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["verdict"], "new");
    // Plain -d sends a form type: refused, with a hint.
    let out = curl(vec!["-d".into(), r#"{"ids":["curl-2"]}"#.into(), url]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type");
    assert!(v["error"]["message"].as_str().unwrap().contains("--json"));
    server.shutdown().await;
}
