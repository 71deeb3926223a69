//! No client can starve the others: slow bodies, idle and half-sent connections and
//! a full connection cap, each against a real server on a loopback socket.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::{RawConn, request_bytes};
use oncelyd::server::{AppState, Limits, run};
use serde_json::json;
use tokio::sync::oneshot;

const MARK: &str = "/v1/namespaces/default/check-and-mark";
const CHECK: &str = "/v1/namespaces/default/check";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), oncelyd::Error>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A daemon on 127.0.0.1, port chosen by the OS, on RocksDB in a temporary
    /// directory, with these limits.
    async fn start(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tracker = common::rocks_tracker(dir.path()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(tracker, limits, &[]);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(run(
            listener,
            state,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(2),
        ));
        Self {
            addr,
            stop: Some(stop),
            done,
            _dir: dir,
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.done)
            .await
            .expect("the server stops")
            .unwrap()
            .expect("a clean shutdown");
    }
}

/// A check-and-mark head promising a 100-byte body, and the body's first byte.
fn slow_body_start() -> Vec<u8> {
    let mut bytes = format!(
        "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n"
    )
    .into_bytes();
    bytes.push(b'{');
    bytes
}

/// The value of `family` (with these labels, if any) in a metrics text.
fn metric(text: &str, family: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(family)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {family} in:\n{text}"))
}

/// The attack, 300 connections each stalled one byte into a check-and-mark
/// body (then every permit was held, and every honest request was shed with 503 for
/// as long as they stayed open), with 300 idle connections beside them: an honest
/// client on its own connection gets every answer within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_idle_connections_do_not_starve_an_honest_client() {
    let server = Server::start(Limits {
        // Long enough that no timeout frees anything during the test: the slow
        // connections hold what they can for its whole length.
        body_read_timeout: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut c = RawConn::connect(server.addr).await;
        c.send(&slow_body_start()).await;
        slow.push(c);
    }
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(RawConn::connect(server.addr).await);
    }
    // Every slow body has reached the application: each is in flight (or, were
    // admission taken before the body, shed).
    let mut honest = RawConn::connect(server.addr).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = honest
            .request("GET", "/metrics", None, Duration::from_secs(5))
            .await
            .body;
        let reached = metric(&text, "oncelyd_requests_in_flight")
            + metric(&text, "oncelyd_requests_shed_total");
        if reached >= 301.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow bodies never arrived:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        let body = json!({ "ids": [format!("honest-{i}")] }).to_string();
        let a = honest
            .request("POST", MARK, Some(&body), Duration::from_secs(5))
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json()["results"][0]["verdict"], "new");
    }
    // A fresh connection is accepted and answered too.
    let started = Instant::now();
    let mut fresh = RawConn::connect(server.addr).await;
    let a = fresh
        .request("GET", "/readyz", None, Duration::from_secs(5))
        .await;
    assert_eq!(a.status, 200);
    slowest = slowest.max(started.elapsed());
    println!("slowest honest answer beside 300 slow bodies and 300 idle connections: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    let text = honest
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    assert_eq!(metric(&text, "oncelyd_requests_shed_total"), 0.0, "{text}");
    assert!(metric(&text, "oncelyd_connections_open") >= 602.0, "{text}");
    drop((slow, idle));
    server.shutdown().await;
}

/// A body that stops arriving gets 408 `request_timeout` once `body_read_timeout`
/// has passed, the connection closes, and nothing in the request was marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_marks_nothing() {
    let timeout = Duration::from_millis(500);
    let server = Server::start(Limits {
        body_read_timeout: timeout,
        ..Limits::default()
    })
    .await;
    let body = json!({ "ids": ["stalled-1", "stalled-2"] }).to_string();
    let whole = request_bytes("POST", MARK, Some(&body));
    let mut c = RawConn::connect(server.addr).await;
    let started = Instant::now();
    // All but the body's last 10 bytes.
    c.send(&whole[..whole.len() - 10]).await;
    let a = c.answer(Duration::from_secs(10)).await.expect("an answer");
    let took = started.elapsed();
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.code(), "request_timeout", "{a:?}");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body_read_timeout"),
        "{a:?}"
    );
    assert!(a.headers.contains("connection: close"), "{a:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert!(c.closed_within(Duration::from_secs(2)).await, "still open");

    let mut other = RawConn::connect(server.addr).await;
    let check = json!({ "ids": ["stalled-1", "stalled-2"] }).to_string();
    let a = other
        .request("POST", CHECK, Some(&check), Duration::from_secs(5))
        .await;
    assert_eq!(a.status, 200);
    for r in a.json()["results"].as_array().unwrap() {
        assert_eq!(r["verdict"], "new", "the stalled request marked {r}");
    }
    let text = other
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    assert!(
        text.contains(
            "oncelyd_http_requests_total{method=\"POST\",route=\"/v1/namespaces/{ns}/check-and-mark\",status=\"408\"} 1"
        ),
        "{text}"
    );
    server.shutdown().await;
}

/// A connection with nothing under way closes after `idle_timeout`, whether it
/// never sent anything or was answered before; one whose request head trickles in
/// closes `header_read_timeout` after the head's first byte, however steadily the
/// bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_header_slow_connections_are_closed() {
    let idle_timeout = Duration::from_millis(800);
    let header_read_timeout = Duration::from_millis(300);
    let server = Server::start(Limits {
        idle_timeout,
        header_read_timeout,
        ..Limits::default()
    })
    .await;

    let started = Instant::now();
    let mut silent = RawConn::connect(server.addr).await;
    let mut answered = RawConn::connect(server.addr).await;
    let a = answered
        .request("GET", "/healthz", None, Duration::from_secs(5))
        .await;
    assert_eq!(a.status, 200);
    let answered_at = Instant::now();

    // A head a byte every 50 ms: never idle, never complete.
    let mut trickle = RawConn::connect(server.addr).await;
    let head = request_bytes("GET", "/healthz", None);
    let trickle_started = Instant::now();
    let mut closed_after = None;
    for &byte in &head[..head.len() - 2] {
        if trickle.stream.try_write(&[byte]).is_err() {
            closed_after = Some(trickle_started.elapsed());
            break;
        }
        if trickle.closed_within(Duration::from_millis(50)).await {
            closed_after = Some(trickle_started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling head was never cut off");
    assert!(
        closed_after >= header_read_timeout && closed_after < header_read_timeout * 4,
        "closed after {closed_after:?}"
    );

    assert!(silent.closed_within(Duration::from_secs(5)).await);
    let silent_after = started.elapsed();
    assert!(
        silent_after >= idle_timeout && silent_after < idle_timeout * 3,
        "closed after {silent_after:?}"
    );
    assert!(answered.closed_within(Duration::from_secs(5)).await);
    let answered_after = answered_at.elapsed();
    assert!(
        answered_after >= idle_timeout - Duration::from_millis(50)
            && answered_after < idle_timeout * 3,
        "closed after {answered_after:?}"
    );

    let mut c = RawConn::connect(server.addr).await;
    let text = c
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    assert_eq!(
        metric(
            &text,
            "oncelyd_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "oncelyd_connections_closed_total{reason=\"header_timeout\"}"
        ),
        1.0,
        "{text}"
    );
    server.shutdown().await;
}

/// At `max_connections` the server accepts no more: a new client waits, unanswered
/// and unrefused, until a connection closes, and is then served; the metric counts
/// the time the cap was reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let server = Server::start(Limits {
        max_connections: 4,
        ..Limits::default()
    })
    .await;
    let mut honest = RawConn::connect(server.addr).await;
    assert_eq!(
        honest
            .request("GET", "/healthz", None, Duration::from_secs(5))
            .await
            .status,
        200
    );
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(RawConn::connect(server.addr).await);
    }
    let mut waiting = RawConn::connect(server.addr).await;
    waiting.send(&request_bytes("GET", "/healthz", None)).await;
    assert!(
        waiting.answer(Duration::from_millis(700)).await.is_none(),
        "a fifth connection was served over the cap of 4"
    );
    let text = honest
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    assert_eq!(metric(&text, "oncelyd_connections_open"), 4.0, "{text}");
    assert_eq!(
        metric(&text, "oncelyd_connection_cap_reached_total"),
        1.0,
        "{text}"
    );

    drop(holders.pop());
    let a = waiting
        .answer(Duration::from_secs(5))
        .await
        .expect("served once a connection closed");
    assert_eq!(a.status, 200);
    drop((holders, waiting));
    server.shutdown().await;
}
