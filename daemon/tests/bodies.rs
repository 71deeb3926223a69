//! Request bodies against a real server on a loopback socket: a declared length over
//! `max_body_bytes` is refused before the body is read, chunked bodies are limited
//! and charged as they arrive, and the bytes bodies hold are bounded by
//! `max_body_bytes_in_flight` (a body with no room waits a moment, then gets 503),
//! while small bodies are never held up. (`body_memory.rs` runs the attack that
//! OOM-killed a daemon, in a memory-limited cgroup.)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::RawConn;
use oncelyd::server::{AppState, Limits, run};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

const MARK: &str = "/v1/namespaces/default/check-and-mark";

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

    async fn metric(&self, family: &str) -> f64 {
        let mut c = RawConn::connect(self.addr).await;
        let text = c
            .request("GET", "/metrics", None, Duration::from_secs(5))
            .await
            .body;
        text.lines()
            .find_map(|l| l.strip_prefix(family)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {family} in:\n{text}"))
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

/// A check-and-mark head declaring a body of `length` bytes, with `extra` header
/// lines.
fn head(length: usize, extra: &str) -> Vec<u8> {
    format!(
        "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A valid check-and-mark body of exactly `length` bytes marking `id`: the JSON,
/// padded with blanks before its closing brace.
fn padded_body(id: &str, length: usize) -> Vec<u8> {
    let start = format!(r#"{{"ids": ["{id}"]"#);
    assert!(length > start.len() + 1);
    let mut body = start.into_bytes();
    body.resize(length - 1, b' ');
    body.push(b'}');
    body
}

/// A declared `Content-Length` over `max_body_bytes` is answered 413 at once, with
/// `Connection: close`, before any of the body is read: it used to be read until
/// `body_read_timeout` and answered 408. A client waiting for `100 Continue` gets
/// the 413 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_at_once() {
    let server = Server::start(Limits {
        body_read_timeout: Duration::from_secs(5),
        ..Limits::default()
    })
    .await;
    for expect in ["", "expect: 100-continue\r\n"] {
        let mut c = RawConn::connect(server.addr).await;
        let started = Instant::now();
        // 100 MB declared; not a byte of it sent.
        c.send(&head(100_000_000, expect)).await;
        let a = c.answer(Duration::from_secs(10)).await.expect("an answer");
        let took = started.elapsed();
        assert_eq!(a.status, 413, "{expect:?}: {a:?}");
        assert_eq!(a.code(), "payload_too_large", "{a:?}");
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("4194304 bytes (max_body_bytes)"),
            "{a:?}"
        );
        assert!(a.headers.contains("connection: close"), "{a:?}");
        assert!(
            took < Duration::from_secs(1),
            "{expect:?}: answered after {took:?}"
        );
        assert!(c.closed_within(Duration::from_secs(2)).await, "still open");
    }
    // A client that writes its whole body before it reads (as clients do without
    // `Expect: 100-continue`) still gets the 413: the connection reads and discards
    // what it sends until it closes, rather than resetting it mid-write.
    let mut c = RawConn::connect(server.addr).await;
    let body = vec![b' '; 16 << 20];
    c.send(&head(body.len(), "")).await;
    tokio::time::timeout(Duration::from_secs(10), c.stream.write_all(&body))
        .await
        .expect("the daemon takes what the client sends")
        .expect("the write is not cut off");
    let a = c.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.code(), "payload_too_large", "{a:?}");
    // One byte over, declared: the same. Exactly the limit: read and parsed.
    let limit = Limits::default().max_body_bytes;
    let mut c = RawConn::connect(server.addr).await;
    c.send(&head(limit + 1, "")).await;
    let a = c.answer(Duration::from_secs(2)).await.expect("an answer");
    assert_eq!(a.status, 413, "{a:?}");
    let mut c = RawConn::connect(server.addr).await;
    c.send(&head(limit, "")).await;
    c.send(&padded_body("at-the-limit", limit)).await;
    let a = c.answer(Duration::from_secs(10)).await.expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["results"][0]["verdict"], "new");
    server.shutdown().await;
}

/// A chunked body (no `Content-Length`) over `max_body_bytes` is answered 413 as
/// soon as what has arrived is over it, before the body ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_refused_as_soon_as_it_is_over_the_limit() {
    let server = Server::start(Limits {
        max_body_bytes: 64 << 10,
        max_body_bytes_in_flight: 1 << 20,
        body_read_timeout: Duration::from_secs(10),
        ..Limits::default()
    })
    .await;
    let mut c = RawConn::connect(server.addr).await;
    c.send(
        format!(
            "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // 80 KiB in chunks of 8 KiB, and no last chunk: the body never ends.
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(8192));
    let started = Instant::now();
    for _ in 0..10 {
        c.send(chunk.as_bytes()).await;
    }
    let a = c.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.code(), "payload_too_large", "{a:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(a.headers.contains("connection: close"), "{a:?}");
    // A chunked body within the limit is read whole.
    let body = serde_json::to_vec(&json!({"ids": ["chunked-1"]})).unwrap();
    let mut c = RawConn::connect(server.addr).await;
    let mut request = format!(
        "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(5) {
        request.extend(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend(part);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    c.send(&request).await;
    let a = c.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["results"][0]["verdict"], "new");
    server.shutdown().await;
}

/// Bodies are charged as they arrive against `max_body_bytes_in_flight`: four
/// stalled bodies of 256 KiB, each one byte short, take the whole 1 MiB budget; a
/// fifth body of 8 KiB, declared or chunked, waits a second, then gets 503
/// `overloaded` with `Retry-After` (and the connection closes), while a small body
/// (at most 4 KiB, not charged) is answered at once. A body given back lets a
/// waiting one in; when the stalled clients leave, the charge goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_are_bounded_by_the_budget() {
    const BODY: usize = 256 << 10;
    let server = Server::start(Limits {
        max_body_bytes: BODY,
        max_body_bytes_in_flight: 4 * BODY,
        body_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    })
    .await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let body = padded_body(&format!("stalled-{i}"), BODY);
        let mut c = RawConn::connect(server.addr).await;
        c.send(&head(BODY, "")).await;
        c.send(&body[..BODY - 1]).await;
        stalled.push((c, body));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let charged = server.metric("oncelyd_body_bytes_in_flight").await;
        // Each is charged its buffer: between what it sent and its declared length.
        if charged >= (4 * (BODY - 1)) as f64 {
            assert!(charged <= (4 * BODY) as f64, "{charged}");
            break;
        }
        assert!(Instant::now() < deadline, "charged {charged} only");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.metric("oncelyd_body_budget_bytes").await,
        (4 * BODY) as f64
    );

    // A small body passes at once.
    let mut small = RawConn::connect(server.addr).await;
    let started = Instant::now();
    let a = small
        .request(
            "POST",
            MARK,
            Some(r#"{"ids": ["small-1"]}"#),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // An 8 KiB body, declared, then chunked: no room, refused after the wait.
    let declared = {
        let mut request = head(8192, "");
        request.extend(padded_body("over-budget-1", 8192));
        request
    };
    let chunked = {
        let mut request = format!(
            "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n2000\r\n"
        )
        .into_bytes();
        request.extend(padded_body("over-budget-2", 8192));
        request.extend(b"\r\n0\r\n\r\n");
        request
    };
    for request in [declared.clone(), chunked] {
        let mut c = RawConn::connect(server.addr).await;
        let started = Instant::now();
        c.send(&request).await;
        let a = c.answer(Duration::from_secs(10)).await.expect("an answer");
        let took = started.elapsed();
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.code(), "overloaded", "{a:?}");
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_body_bytes_in_flight"),
            "{a:?}"
        );
        assert!(a.headers.contains("retry-after: 1"), "{a:?}");
        assert!(a.headers.contains("connection: close"), "{a:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "answered after {took:?}"
        );
    }
    assert_eq!(server.metric("oncelyd_bodies_shed_total").await, 2.0);
    assert_eq!(server.metric("oncelyd_requests_shed_total").await, 0.0);

    // A body waiting for room gets in when a stalled one finishes and gives its
    // bytes back.
    let mut waiting = RawConn::connect(server.addr).await;
    let started = Instant::now();
    waiting.send(&declared).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut first, body) = stalled.remove(0);
    first.send(&body[BODY - 1..]).await;
    let a = first
        .answer(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["results"][0]["verdict"], "new");
    let a = waiting
        .answer(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["results"][0]["id"], "over-budget-1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The stalled clients leave: what their bodies held is given back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("oncelyd_body_bytes_in_flight").await > 0.0 {
        assert!(Instant::now() < deadline, "the charge never went back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}
