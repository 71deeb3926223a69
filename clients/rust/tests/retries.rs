//! Retries against a scripted server on 127.0.0.1: each request gets the next answer
//! of a script (an answer, a dropped connection, or none at all), and the server
//! records when each request arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_client::{Client, Error, RetryPolicy, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the server does with one request.
#[derive(Clone, Debug)]
enum Reply {
    /// Answers with this status, extra header lines and JSON body.
    Answer(u16, &'static str, &'static str),
    /// Reads the request, then closes the connection without answering: the request
    /// may have been acted on, the answer is lost.
    Close,
    /// Reads the request and never answers (within the test).
    Hang,
}

const SHED: Reply = Reply::Answer(
    503,
    "retry-after: 1\r\n",
    r#"{"error":{"code":"overloaded","message":"scripted"}}"#,
);
const SHED_NO_WAIT: Reply = Reply::Answer(
    503,
    "retry-after: 0\r\n",
    r#"{"error":{"code":"overloaded","message":"scripted"}}"#,
);
const CHECKED: Reply = Reply::Answer(200, "", r#"{"results":[{"id":"a","verdict":"new"}]}"#);

/// A server answering request `n` (from 0) with `script[n]`, or the last entry.
struct Scripted {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let arrivals = Arc::clone(&arrivals);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let arrivals = Arc::clone(&arrivals);
                    let script = script.clone();
                    tokio::spawn(async move { serve(stream, &script, &arrivals).await });
                }
            }
        });
        Self {
            addr,
            arrivals,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

/// One connection: one request, one reply, then the connection closes.
async fn serve(mut stream: TcpStream, script: &[Reply], arrivals: &Mutex<Vec<Instant>>) {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                break;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let n = {
        let mut arrivals = arrivals.lock().unwrap();
        arrivals.push(Instant::now());
        arrivals.len() - 1
    };
    match script[n.min(script.len() - 1)].clone() {
        Reply::Answer(status, headers, body) => {
            let answer = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n{headers}\
                 connection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        Reply::Close => {}
        // Bounded: every test is over long before.
        Reply::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
    }
}

fn client(url: &str, policy: RetryPolicy, seed: u64) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .retry(policy)
        .jitter_seed(seed)
        .build()
        .unwrap()
}

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .attempts(attempts)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_clients_wait_retry_after_plus_jitter_and_spread_out() {
    // Four clients shed at the same moment (503, Retry-After: 1). Each waits at
    // least the second asked for, and they come back spread over the next second,
    // not together at +1 s (the wait used to be max(backoff, Retry-After)).
    let mut calls = Vec::new();
    for seed in 1..=4 {
        let server = Scripted::start(vec![SHED, CHECKED]).await;
        let c = client(&server.url(), quick(2), seed);
        calls.push(tokio::spawn(async move {
            let verdicts = c.check("default", &["a"]).await.unwrap();
            assert_eq!(verdicts, [Verdict::New]);
            let at = server.arrivals();
            assert_eq!(at.len(), 2);
            at[1] - at[0]
        }));
    }
    let mut gaps = Vec::new();
    for call in calls {
        gaps.push(call.await.unwrap());
    }
    for gap in &gaps {
        assert!(*gap >= Duration::from_secs(1), "{gaps:?}");
        assert!(*gap < Duration::from_millis(2_200), "{gaps:?}");
    }
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    assert!(
        *max - *min >= Duration::from_millis(100),
        "the retries are spread out: {gaps:?}"
    );
}

#[tokio::test]
async fn the_default_budget_is_the_documented_one() {
    // A daemon that sheds every attempt: 4 attempts, waits of 1-2 s each, so 3-6 s
    // in all (the documentation of RetryPolicy says so), well within 15 s.
    let server = Scripted::start(vec![SHED]).await;
    let c = client(&server.url(), RetryPolicy::default(), 7);
    let started = Instant::now();
    let e = c.check("default", &["a"]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Some("overloaded"));
    assert_eq!(e.attempts(), 4);
    assert_eq!(server.arrivals().len(), 4);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(6_500),
        "{took:?}"
    );
}

#[tokio::test]
async fn the_deadline_bounds_a_call() {
    // A daemon that never answers: attempts of 10 s each, but the deadline is 300 ms.
    let server = Scripted::start(vec![Reply::Hang]).await;
    let policy = quick(5).deadline(Duration::from_millis(300));
    let c = client(&server.url(), policy, 1);
    let started = Instant::now();
    let e = c.check("default", &["a"]).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // A daemon asking for 5 s when 1 s is left: no pointless sleep, the 503 at once.
    let server = Scripted::start(vec![Reply::Answer(
        503,
        "retry-after: 5\r\n",
        r#"{"error":{"code":"overloaded","message":"scripted"}}"#,
    )])
    .await;
    let c = client(&server.url(), quick(5).deadline(Duration::from_secs(1)), 1);
    let started = Instant::now();
    let e = c.check("default", &["a"]).await.unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some("overloaded"), 1));
    assert!(started.elapsed() < Duration::from_millis(500));

    // And a deadline per call, on a clone sharing the connections.
    let server = Scripted::start(vec![Reply::Hang]).await;
    let c = client(&server.url(), quick(5), 1);
    let hurried = c
        .with_retry(quick(5).deadline(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    assert!(hurried.check("default", &["a"]).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

const CONFLICT: Reply = Reply::Answer(
    409,
    "",
    r#"{"error":{"code":"conflict","message":"another owner holds the claim"}}"#,
);
const RELEASED: Reply = Reply::Answer(200, "", r#"{"id":"job","state":"released"}"#);

#[tokio::test]
async fn a_retried_release_whose_first_attempt_may_have_landed_takes_a_conflict_as_released() {
    // The first attempt reached the daemon and its answer was lost; meanwhile
    // another owner claimed the ID, so the retry hears 409: the claim was given
    // back, which is what release promises.
    let server = Scripted::start(vec![Reply::Close, CONFLICT]).await;
    let c = client(&server.url(), quick(3), 1);
    c.release("default", "job", "delivery-1").await.unwrap();
    assert_eq!(server.arrivals().len(), 2);

    // A proxy's 502 says nothing of whether the daemon behind it acted: the same.
    let bad_gateway = Reply::Answer(502, "", "<html>bad gateway</html>");
    let server = Scripted::start(vec![bad_gateway, CONFLICT]).await;
    let c = client(&server.url(), quick(3), 1);
    c.release("default", "job", "delivery-1").await.unwrap();

    // But after a 503 of the daemon's own, nothing was done: a 409 then means the
    // caller never held the claim, and is an error, as on a first attempt.
    let server = Scripted::start(vec![SHED_NO_WAIT, CONFLICT]).await;
    let c = client(&server.url(), quick(3), 1);
    let e = c.release("default", "job", "delivery-1").await.unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some("conflict"), 2));
    let server = Scripted::start(vec![CONFLICT]).await;
    let c = client(&server.url(), quick(3), 1);
    let e = c.release("default", "job", "delivery-1").await.unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some("conflict"), 1));

    // Complete never reads a conflict as success: another owner's completion is not
    // ours.
    let server = Scripted::start(vec![Reply::Close, CONFLICT]).await;
    let c = client(&server.url(), quick(3), 1);
    let e = c
        .complete("default", "job", "delivery-1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"));

    // And a release answered at once is read as such.
    let server = Scripted::start(vec![RELEASED]).await;
    let c = client(&server.url(), quick(3), 1);
    c.release("default", "job", "delivery-1").await.unwrap();
}

const UNKNOWN: Reply = Reply::Answer(
    404,
    "",
    r#"{"error":{"code":"unknown_namespace","message":"unknown namespace \"gone\""}}"#,
);

#[tokio::test]
async fn a_retried_delete_is_done_on_404_only_if_an_earlier_attempt_may_have_deleted() {
    // Shed, then 404: nothing deleted anything, the namespace did not exist.
    let server = Scripted::start(vec![SHED_NO_WAIT, UNKNOWN]).await;
    let c = client(&server.url(), quick(3), 1);
    let e = c.delete_namespace("gone").await.unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some("unknown_namespace"), 2));

    // Answer lost, then 404: the first attempt deleted it.
    let server = Scripted::start(vec![Reply::Close, UNKNOWN]).await;
    let c = client(&server.url(), quick(3), 1);
    c.delete_namespace("gone").await.unwrap();

    // Shed, answer lost, 404: one attempt may have deleted it.
    let server = Scripted::start(vec![SHED_NO_WAIT, Reply::Close, UNKNOWN]).await;
    let c = client(&server.url(), quick(3), 1);
    c.delete_namespace("gone").await.unwrap();

    // A first 404 is an error.
    let server = Scripted::start(vec![UNKNOWN]).await;
    let c = client(&server.url(), quick(3), 1);
    let e = c.delete_namespace("gone").await.unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some("unknown_namespace"), 1));
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_typed() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), quick(3), 1);
    match c.delete_namespace("gone").await {
        Err(Error::Transport { attempts: 3, .. }) => {}
        other => panic!("expected a transport error after 3 attempts, got {other:?}"),
    }
}
