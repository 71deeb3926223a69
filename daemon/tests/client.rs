//! The typed client against a real daemon on a loopback socket: every method, typed
//! errors, and retries, with a small HTTP-aware TCP proxy in between that loses an
//! answer, answers 503 or never answers, on cue.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_client::api::NamespaceConfig;
use oncely_client::{Batching, ClaimOutcome, Client, Configured, Error, RetryPolicy, Verdict};
use oncelyd::server::{AppState, Limits, run};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A daemon on 127.0.0.1, port chosen by the OS.
struct Daemon {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), oncelyd::Error>>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// On RocksDB in a temporary directory, durability `flush`, as in production.
    async fn start(tokens: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tracker = common::rocks_tracker(dir.path()).await;
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        let mut daemon = Self::serve(AppState::new(tracker, Limits::default(), &tokens)).await;
        daemon._dir = Some(dir);
        daemon
    }

    async fn serve(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
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
            _dir: None,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.done)
            .await
            .expect("the daemon stops within its grace period")
            .unwrap()
            .expect("a clean shutdown");
    }
}

/// Quick retries, seeded jitter: a test's timing does not depend on luck.
fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .attempts(attempts)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn client(url: &str, attempts: u32) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .retry(fast_retries(attempts))
        .jitter_seed(1)
        .build()
        .unwrap()
}

fn small_config() -> NamespaceConfig {
    NamespaceConfig {
        generations: 3,
        generation_capacity: 10_000,
        fp_rate: 0.001,
        exact_generations: 2,
        ..NamespaceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_against_a_real_daemon() {
    let daemon = Daemon::start(&[]).await;
    let c = client(&daemon.url(), 3);

    assert_eq!(c.health().await.unwrap().status, "ok");
    assert_eq!(c.ready().await.unwrap().status, "ready");
    assert_eq!(c.namespaces().await.unwrap(), ["default"]);

    // Namespaces: created, then updated, listed, read back.
    let (configured, view) = c.put_namespace("orders", &small_config()).await.unwrap();
    assert_eq!(configured, Configured::Created);
    assert_eq!(view.name, "orders");
    assert_eq!(view.config, small_config());
    let bigger = NamespaceConfig {
        generations: 4,
        ..small_config()
    };
    let (configured, view) = c.put_namespace("orders", &bigger).await.unwrap();
    assert_eq!(configured, Configured::Updated);
    assert_eq!(view.config.generations, 4);
    assert_eq!(c.namespaces().await.unwrap(), ["default", "orders"]);
    assert_eq!(c.namespace("orders").await.unwrap().config, bigger);

    // Check-and-mark: new, then the same owner's replay, another owner's duplicate.
    let marked = c
        .check_and_mark("orders", &["a", "b"], Some("w1"))
        .await
        .unwrap();
    assert_eq!(marked.owner, "w1");
    assert_eq!(marked.verdicts, [Verdict::New, Verdict::New]);
    let again = c
        .check_and_mark("orders", &["b", "c"], Some("w1"))
        .await
        .unwrap();
    assert_eq!(again.verdicts, [Verdict::Replayed, Verdict::New]);
    let other = c
        .check_and_mark("orders", &["a", "c", "d"], None)
        .await
        .unwrap();
    assert!(other.owner.starts_with("client-"), "a generated owner");
    assert_eq!(
        other.verdicts,
        [Verdict::Duplicate, Verdict::Duplicate, Verdict::New]
    );
    let stats = c.namespace("orders").await.unwrap();
    assert_eq!(stats.generations.iter().map(|g| g.ids).sum::<u64>(), 4);

    // Check marks nothing.
    assert_eq!(
        c.check("orders", &["a", "zz"]).await.unwrap(),
        [Verdict::Duplicate, Verdict::New]
    );
    assert_eq!(
        c.check("orders", &["zz"]).await.unwrap(),
        [Verdict::New],
        "check marked nothing"
    );

    // Claims: acquired, in progress for another owner, renewed, completed; released.
    let lease = Duration::from_secs(30);
    let ClaimOutcome::Acquired { replayed, .. } =
        c.claim("orders", "job-1", "w1", lease).await.unwrap()
    else {
        panic!("the first claim is acquired");
    };
    assert!(!replayed);
    assert!(matches!(
        c.claim("orders", "job-1", "w2", lease).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    assert!(matches!(
        c.check_and_mark("orders", &["job-1"], Some("w2"))
            .await
            .unwrap()
            .verdicts[0],
        Verdict::InProgress { .. }
    ));
    assert!(matches!(
        c.claim("orders", "job-1", "w1", lease).await.unwrap(),
        ClaimOutcome::Acquired { replayed: true, .. }
    ));
    c.complete("orders", "job-1", "w1").await.unwrap();
    c.complete("orders", "job-1", "w1")
        .await
        .expect("completing twice is fine");
    assert_eq!(
        c.claim("orders", "job-1", "w2", lease).await.unwrap(),
        ClaimOutcome::Duplicate
    );
    assert!(matches!(
        c.claim("orders", "job-2", "w1", lease).await.unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    c.release("orders", "job-2", "w1").await.unwrap();
    c.release("orders", "job-2", "w1")
        .await
        .expect("releasing twice is fine");
    assert!(matches!(
        c.claim("orders", "job-2", "w2", lease).await.unwrap(),
        ClaimOutcome::Acquired { .. }
    ));

    // Checkpoints: none, stored, read back, moved.
    assert_eq!(c.checkpoint("orders", "ledger").await.unwrap(), None);
    c.set_checkpoint("orders", "ledger", "41").await.unwrap();
    assert_eq!(
        c.checkpoint("orders", "ledger").await.unwrap().as_deref(),
        Some("41")
    );
    c.set_checkpoint("orders", "ledger", "42").await.unwrap();
    assert_eq!(
        c.checkpoint("orders", "ledger").await.unwrap().as_deref(),
        Some("42")
    );
    // With a precondition: moved only from what was read; a stale read is told
    // the stored position, typed.
    c.set_checkpoint_if("orders", "ledger", Some("42"), "43")
        .await
        .unwrap();
    match c
        .set_checkpoint_if("orders", "ledger", Some("42"), "44")
        .await
    {
        Err(e @ Error::CheckpointConflict { .. }) => {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(409));
            assert_eq!(e.code(), Some("checkpoint_conflict"));
            let Error::CheckpointConflict { current, .. } = e else {
                unreachable!()
            };
            assert_eq!(current.as_deref(), Some("43"));
        }
        other => panic!("{other:?}"),
    }
    match c.set_checkpoint_if("orders", "fresh", Some("1"), "2").await {
        Err(Error::CheckpointConflict { current: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    c.set_checkpoint_if("orders", "fresh", None, "1")
        .await
        .unwrap();
    c.set_checkpoint_if("orders", "fresh", None, "1")
        .await
        .expect("a retry finds its position stored");

    // Forget: the mark given back, once.
    let marked = c.check_and_mark("orders", &["fg-1"], None).await.unwrap();
    assert!(marked.verdicts[0].is_new());
    assert_eq!(
        c.forget("orders", &["fg-1", "fg-1", "fg-unseen"])
            .await
            .unwrap(),
        [true, false, false]
    );
    assert_eq!(c.forget("orders", &["fg-1"]).await.unwrap(), [false]);
    assert!(c.check("orders", &["fg-1"]).await.unwrap()[0].is_new());
    let e = c.forget("orders", &[""]).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_id"));

    // Deleted: gone, with its marks.
    c.delete_namespace("orders").await.unwrap();
    assert_eq!(c.namespaces().await.unwrap(), ["default"]);
    let e = c.namespace("orders").await.unwrap_err();
    assert_eq!(e.code(), Some("unknown_namespace"));
    daemon.shutdown().await;
}

/// Asserts an [`Error::Http`] with this status and code, made in one attempt.
#[track_caller]
fn assert_http(e: &Error, status: u16, code: &str) {
    match e {
        Error::Http {
            status: s,
            code: c,
            message,
            attempts,
        } => {
            assert_eq!(s.as_u16(), status, "{e}");
            assert_eq!(c, code, "{e}");
            assert!(!message.is_empty(), "{e}");
            assert_eq!(*attempts, 1, "a {status} is never retried: {e}");
        }
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_4xx_are_not_retried() {
    let daemon = Daemon::start(&["s3cret"]).await;
    let c = Client::builder(daemon.url())
        .token("s3cret")
        .retry(fast_retries(5))
        .build()
        .unwrap();

    let e = c.check_and_mark("default", &[""], None).await.unwrap_err();
    assert_http(&e, 400, "invalid_id");
    let long = "x".repeat(257);
    let e = c.check("default", &[long.as_str()]).await.unwrap_err();
    assert_http(&e, 400, "invalid_id");
    let e = c.check_and_mark("no such", &["a"], None).await.unwrap_err();
    assert_http(&e, 400, "invalid_namespace");
    let e = c.check_and_mark("nowhere", &["a"], None).await.unwrap_err();
    assert_http(&e, 404, "unknown_namespace");
    let e = c
        .claim("default", "a", "w", Duration::ZERO)
        .await
        .unwrap_err();
    assert_http(&e, 400, "invalid_argument");
    let e = c
        .complete("default", "never-claimed", "w")
        .await
        .unwrap_err();
    assert_http(&e, 409, "conflict");
    let e = c.delete_namespace("default").await.unwrap_err();
    assert_http(&e, 409, "refused");
    let e = c.delete_namespace("nowhere").await.unwrap_err();
    assert_http(&e, 404, "unknown_namespace");
    let e = c.checkpoint("nowhere", "ledger").await.unwrap_err();
    assert_http(&e, 404, "unknown_namespace");
    let e = c.set_checkpoint("default", "ledger", "").await.unwrap_err();
    assert_http(&e, 400, "invalid_argument");
    let (configured, _) = c
        .put_namespace("default", &small_config())
        .await
        .expect("with the token, reconfiguring default is allowed");
    assert_eq!(configured, Configured::Updated);

    // Without the token: 401, typed; health needs none.
    let anonymous = client(&daemon.url(), 5);
    let e = anonymous.namespaces().await.unwrap_err();
    assert_http(&e, 401, "unauthorized");
    assert_eq!(anonymous.health().await.unwrap().status, "ok");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_and_timeouts_are_retried_then_typed() {
    // Nothing listens on a port just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), 3);
    match c.check_and_mark("default", &["a"], None).await {
        Err(Error::Transport { attempts: 3, .. }) => {}
        other => panic!("expected a transport error after 3 attempts, got {other:?}"),
    }

    // A daemon that takes the request and never answers.
    let daemon = Daemon::start(&[]).await;
    let proxy = Proxy::start(daemon.addr, |_| Act::Hang).await;
    let c = Client::builder(proxy.url())
        .timeout(Duration::from_millis(200))
        .retry(fast_retries(2))
        .build()
        .unwrap();
    match c.check("default", &["a"]).await {
        Err(Error::Timeout { attempts: 2, .. }) => {}
        other => panic!("expected a timeout after 2 attempts, got {other:?}"),
    }
    assert_eq!(proxy.requests(), 2, "one request per attempt");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_with_the_same_owner_and_replayed() {
    let daemon = Daemon::start(&[]).await;
    // The first request reaches the daemon, which marks the IDs and answers; the
    // proxy drops the connection instead of passing the answer on.
    let proxy = Proxy::start(daemon.addr, |n| {
        if n == 0 {
            Act::DropAnswer
        } else {
            Act::Forward
        }
    })
    .await;
    let c = client(&proxy.url(), 4);
    let ids: Vec<String> = (0..100).map(|i| format!("lost-{i:03}")).collect();
    let marked = c.check_and_mark("default", &ids, None).await.unwrap();
    assert!(
        marked.verdicts.iter().all(|v| *v == Verdict::Replayed),
        "every ID comes back new, flagged replayed: {:?}",
        marked.verdicts
    );
    assert_eq!(proxy.requests(), 2, "the lost attempt and its retry");
    let owners: Vec<Value> = proxy
        .bodies()
        .iter()
        .map(|b| serde_json::from_slice::<Value>(b).unwrap()["owner"].clone())
        .collect();
    assert_eq!(owners[0], owners[1], "both attempts carry the same owner");
    assert_eq!(owners[0], marked.owner.as_str());

    // Anyone else: duplicate, every one.
    let direct = client(&daemon.url(), 1);
    let other = direct
        .check_and_mark("default", &ids, Some("another-owner"))
        .await
        .unwrap();
    assert!(other.verdicts.iter().all(|v| *v == Verdict::Duplicate));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_claims_complete_and_release_are_retried_safely() {
    let daemon = Daemon::start(&[]).await;
    // Every other request loses its answer: each call below needs its retry.
    let proxy = Proxy::start(daemon.addr, |n| {
        if n % 2 == 0 {
            Act::DropAnswer
        } else {
            Act::Forward
        }
    })
    .await;
    let c = client(&proxy.url(), 3);
    let lease = Duration::from_secs(30);
    assert!(matches!(
        c.claim("default", "job", "w1", lease).await.unwrap(),
        ClaimOutcome::Acquired { replayed: true, .. }
    ));
    c.complete("default", "job", "w1").await.unwrap();
    assert!(matches!(
        c.claim("default", "job-2", "w1", lease).await.unwrap(),
        ClaimOutcome::Acquired { replayed: true, .. }
    ));
    c.release("default", "job-2", "w1").await.unwrap();
    let (configured, _) = c.put_namespace("tmp", &small_config()).await.unwrap();
    assert_eq!(
        configured,
        Configured::Updated,
        "the lost attempt created it; the retry updated it"
    );
    c.delete_namespace("tmp")
        .await
        .expect("a retried delete that finds the namespace gone succeeds");
    assert_eq!(proxy.requests(), 12, "two attempts per call");

    let direct = client(&daemon.url(), 1);
    assert_eq!(
        direct.claim("default", "job", "w2", lease).await.unwrap(),
        ClaimOutcome::Duplicate,
        "completed"
    );
    assert!(
        matches!(
            direct.claim("default", "job-2", "w2", lease).await.unwrap(),
            ClaimOutcome::Acquired {
                replayed: false,
                ..
            }
        ),
        "released"
    );
    assert_eq!(direct.namespaces().await.unwrap(), ["default"]);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_nothing_was_acknowledged_by_it() {
    let daemon = Daemon::start(&[]).await;
    let proxy = Proxy::start(daemon.addr, |n| {
        if n == 0 { Act::Answer503 } else { Act::Forward }
    })
    .await;
    let c = client(&proxy.url(), 3);
    let marked = c
        .check_and_mark("default", &["x", "y"], None)
        .await
        .unwrap();
    assert_eq!(marked.verdicts, [Verdict::New, Verdict::New]);
    assert_eq!(proxy.requests(), 2);

    // With one attempt only, the 503 comes back typed.
    let proxy = Proxy::start(daemon.addr, |_| Act::Answer503).await;
    let once = client(&proxy.url(), 1);
    let e = once.check("default", &["x"]).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(e.code(), Some("overloaded"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_retried_until_it_recovers() {
    let harness = common::Harness::new();
    let faults = harness.faults.clone();
    let daemon = Daemon::serve(harness.state.clone()).await;
    let proxy = Proxy::start(daemon.addr, |_| Act::Forward).await;
    faults.fail_writes.store(true, Ordering::SeqCst);
    let c = client(&proxy.url(), 100);
    let call = tokio::spawn(async move { c.check_and_mark("default", &["p", "q"], None).await });
    // Recover once the daemon has refused at least one attempt with 503 and the
    // client has come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.requests() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the client retries");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    faults.fail_writes.store(false, Ordering::SeqCst);
    let marked = call.await.unwrap().unwrap();
    assert_eq!(
        marked.verdicts,
        [Verdict::New, Verdict::New],
        "not replayed: the failed attempts stored nothing"
    );
    assert!(proxy.requests() >= 2);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_release_is_released_even_once_another_owner_has_claimed() {
    let daemon = Daemon::start(&[]).await;
    let direct = client(&daemon.url(), 1);
    let lease = Duration::from_secs(30);
    assert!(matches!(
        direct
            .claim("default", "job-r", "delivery-a", lease)
            .await
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    // The release lands but its answer is lost; its retry is held at the proxy
    // while another delivery claims the event, then goes through.
    let proxy = Proxy::start(daemon.addr, |n| {
        if n == 0 { Act::DropAnswer } else { Act::Gated }
    })
    .await;
    let c = client(&proxy.url(), 3);
    let release = tokio::spawn(async move { c.release("default", "job-r", "delivery-a").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.requests() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the client retries");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        matches!(
            direct
                .claim("default", "job-r", "delivery-b", lease)
                .await
                .unwrap(),
            ClaimOutcome::Acquired {
                replayed: false,
                taken_over: false,
                ..
            }
        ),
        "the first attempt released it"
    );
    proxy.open_gate();
    release
        .await
        .unwrap()
        .expect("released: the retry's 409 follows an attempt that may have landed");
    assert!(matches!(
        direct.check("default", &["job-r"]).await.unwrap()[0],
        Verdict::InProgress { .. }
    ));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_delete_then_404_is_not_a_success() {
    let daemon = Daemon::start(&[]).await;
    // The daemon's own 503 (shed): nothing was deleted, so the retry's 404 says the
    // namespace never existed.
    let proxy = Proxy::start(daemon.addr, |n| {
        if n == 0 { Act::Answer503 } else { Act::Forward }
    })
    .await;
    let c = client(&proxy.url(), 3);
    let e = c.delete_namespace("nowhere").await.unwrap_err();
    assert_eq!(e.code(), Some("unknown_namespace"));
    assert_eq!(e.attempts(), 2);
    daemon.shutdown().await;
}

/// A client that coalesces: one request in flight per lane, and a window long
/// enough that, in these tests, waiting calls go only when that request is answered.
fn coalescing(url: &str, attempts: u32) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .retry(fast_retries(attempts))
        .jitter_seed(1)
        .batching(
            Batching::default()
                .max_in_flight(1)
                .window(Duration::from_secs(60)),
        )
        .build()
        .unwrap()
}

/// Waits until `n` calls of `c` wait for batch mates.
async fn until_waiting(c: &Client, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.batching_stats().unwrap().waiting != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} calls should be waiting: {:?}",
            c.batching_stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the proxy has seen `n` requests.
async fn until_requests(proxy: &Proxy, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.requests() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {n} arrives"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

type Call = tokio::task::JoinHandle<Result<oncely_client::Marked, Error>>;

fn spawn_mark(c: &Client, ids: &[&str]) -> Call {
    let c = c.clone();
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    tokio::spawn(async move { c.check_and_mark("default", &ids, None).await })
}

fn body_of(proxy: &Proxy, n: usize) -> Value {
    serde_json::from_slice(&proxy.bodies()[n]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_get_their_own_verdicts_and_errors() {
    let daemon = Daemon::start(&[]).await;
    let direct = client(&daemon.url(), 1);
    let seen = direct
        .check_and_mark("default", &["seen-1", "seen-2"], None)
        .await
        .unwrap();
    assert_eq!(seen.verdicts, [Verdict::New, Verdict::New]);

    // The first call finds the lane idle and goes at once; the proxy holds it, so
    // the lane stays busy while the others come.
    let proxy = Proxy::start(
        daemon.addr,
        |n| {
            if n == 0 { Act::Gated } else { Act::Forward }
        },
    )
    .await;
    let c = coalescing(&proxy.url(), 3);
    let first = spawn_mark(&c, &["first"]);
    until_requests(&proxy, 1).await;

    // The calls join one at a time, so that which batch each joins is known: ten
    // fresh IDs, one marked before, a call of two IDs, then two deliveries of one
    // event (never in one request, so one of them reads new: the second opens the
    // next batch, which the last call joins).
    let fresh: Vec<String> = (0..10).map(|i| format!("fresh-{i}")).collect();
    let mut order: Vec<Vec<&str>> = fresh.iter().map(|id| vec![id.as_str()]).collect();
    order.extend([
        vec!["seen-1"],
        vec!["fresh-a", "seen-2"],
        vec!["twice"],
        vec!["twice"],
        vec!["abandoned"],
    ]);
    let mut calls = Vec::new();
    for ids in &order {
        calls.push(spawn_mark(&c, ids));
        until_waiting(&c, calls.len() as u64).await;
    }
    let gone = calls.pop().unwrap();
    let twice = [calls.pop().unwrap(), calls.pop().unwrap()];
    let pair_call = calls.pop().unwrap();
    let seen_call = calls.pop().unwrap();
    let fresh_calls = calls;
    // A caller that gives up while it waits is left out of the request.
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    // A bad ID fails its own call at once, with the daemon's error, and nothing
    // else: no request is made for it and its would-be batch mates still wait.
    let long = "x".repeat(257);
    let e = c
        .check_and_mark("default", &["fine", long.as_str()], None)
        .await
        .unwrap_err();
    match &e {
        Error::Http {
            status,
            code,
            message,
            attempts,
        } => {
            assert_eq!((status.as_u16(), code.as_str()), (400, "invalid_id"), "{e}");
            assert!(
                message.contains("index 1") && message.contains("257 bytes"),
                "{e}"
            );
            assert_eq!(*attempts, 0, "no request was made: {e}");
        }
        other => panic!("expected invalid_id, got {other:?}"),
    }
    assert_eq!(c.batching_stats().unwrap().waiting, 15);

    proxy.open_gate();
    assert_eq!(first.await.unwrap().unwrap().verdicts, [Verdict::New]);
    let mut owners = Vec::new();
    for call in fresh_calls {
        let marked = call.await.unwrap().unwrap();
        assert_eq!(marked.verdicts, [Verdict::New]);
        owners.push(marked.owner);
    }
    let marked = seen_call.await.unwrap().unwrap();
    assert_eq!(marked.verdicts, [Verdict::Duplicate]);
    owners.push(marked.owner);
    let marked = pair_call.await.unwrap().unwrap();
    assert_eq!(marked.verdicts, [Verdict::New, Verdict::Duplicate]);
    owners.push(marked.owner);
    let mut twice_verdicts = Vec::new();
    for call in twice {
        let marked = call.await.unwrap().unwrap();
        twice_verdicts.push(marked.verdicts[0]);
    }
    twice_verdicts.sort_by_key(|v| *v != Verdict::New);
    assert_eq!(twice_verdicts, [Verdict::New, Verdict::Duplicate]);

    // Three requests: the first call, one for the thirteen calls of the first batch
    // (14 IDs), one for the second "twice" (the abandoned call left out).
    assert_eq!(proxy.requests(), 3);
    let batch = body_of(&proxy, 1);
    let sent: Vec<&str> = batch["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 14, "{batch}");
    assert_eq!(sent.iter().filter(|id| **id == "twice").count(), 1);
    assert!(!sent.contains(&"abandoned"));
    assert!(
        owners.iter().all(|o| *o == batch["owner"]),
        "one token per request"
    );
    let second = body_of(&proxy, 2);
    assert_eq!(second["ids"], serde_json::json!(["twice"]), "{second}");
    assert_ne!(second["owner"], batch["owner"]);
    assert_eq!(
        direct.check("default", &["abandoned"]).await.unwrap(),
        [Verdict::New],
        "never marked"
    );
    let stats = c.batching_stats().unwrap();
    assert_eq!((stats.calls, stats.requests, stats.waiting), (16, 3, 0));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_whole_is_split_and_other_errors_reach_every_call() {
    // The daemon takes 4 IDs per request; the client would put 10 in one.
    let dir = tempfile::tempdir().unwrap();
    let tracker = common::rocks_tracker(dir.path()).await;
    let limits = Limits {
        max_ids: 4,
        ..Limits::default()
    };
    let daemon = Daemon::serve(AppState::new(tracker, limits, &[])).await;
    let proxy = Proxy::start(
        daemon.addr,
        |n| {
            if n == 0 { Act::Gated } else { Act::Forward }
        },
    )
    .await;
    let c = coalescing(&proxy.url(), 3);
    let first = spawn_mark(&c, &["first"]);
    until_requests(&proxy, 1).await;
    let a = spawn_mark(&c, &["a1", "a2"]);
    let b = spawn_mark(&c, &["b1", "b2", "b3"]);
    let too_many = spawn_mark(&c, &["c1", "c2", "c3", "c4", "c5"]);
    until_waiting(&c, 3).await;
    proxy.open_gate();
    first.await.unwrap().unwrap();
    // Refused as a whole (400 too_many_ids), so nothing was marked: each call goes
    // again alone, with the same token. New, not replayed: the refusal marked
    // nothing.
    assert_eq!(a.await.unwrap().unwrap().verdicts, [Verdict::New; 2]);
    assert_eq!(b.await.unwrap().unwrap().verdicts, [Verdict::New; 3]);
    let e = too_many.await.unwrap().unwrap_err();
    assert_http(&e, 400, "too_many_ids");
    assert_eq!(
        proxy.requests(),
        5,
        "first, the refused batch, three calls alone"
    );
    assert_eq!(
        body_of(&proxy, 1)["ids"].as_array().unwrap().len(),
        10,
        "one request for the three waiting calls"
    );

    // An error about the whole lane (here an unknown namespace) is every call's.
    let proxy = Proxy::start(
        daemon.addr,
        |n| {
            if n == 0 { Act::Gated } else { Act::Forward }
        },
    )
    .await;
    let c = coalescing(&proxy.url(), 3);
    let mark = |ids: &'static [&'static str]| {
        let c = c.clone();
        tokio::spawn(async move { c.check_and_mark("nowhere", ids, None).await })
    };
    let first = mark(&["n0"]);
    until_requests(&proxy, 1).await;
    let waiting = [mark(&["n1"]), mark(&["n2"]), mark(&["n3", "n4"])];
    until_waiting(&c, 3).await;
    proxy.open_gate();
    assert_http(&first.await.unwrap().unwrap_err(), 404, "unknown_namespace");
    for call in waiting {
        assert_http(&call.await.unwrap().unwrap_err(), 404, "unknown_namespace");
    }
    assert_eq!(
        proxy.requests(),
        2,
        "not split: alone, each would get the same"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_of_a_coalesced_batch_is_replayed_for_every_call() {
    let daemon = Daemon::start(&[]).await;
    // The first call is held; the batch after it is marked but its answer lost; the
    // client's retry of the batch goes through.
    let proxy = Proxy::start(daemon.addr, |n| match n {
        0 => Act::Gated,
        1 => Act::DropAnswer,
        _ => Act::Forward,
    })
    .await;
    let c = coalescing(&proxy.url(), 4);
    let first = spawn_mark(&c, &["held"]);
    until_requests(&proxy, 1).await;
    let ids: Vec<String> = (0..8).map(|i| format!("batched-{i}")).collect();
    let calls: Vec<Call> = ids.iter().map(|id| spawn_mark(&c, &[id])).collect();
    until_waiting(&c, 8).await;
    proxy.open_gate();
    assert_eq!(first.await.unwrap().unwrap().verdicts, [Verdict::New]);
    let mut marked = Vec::new();
    for call in calls {
        marked.push(call.await.unwrap().unwrap());
    }
    assert!(
        marked.iter().all(|m| m.verdicts == [Verdict::Replayed]),
        "every call gets its new back, flagged replayed: {marked:?}"
    );
    assert_eq!(
        proxy.requests(),
        3,
        "the first call, the lost batch, its retry"
    );
    let (lost, retry) = (body_of(&proxy, 1), body_of(&proxy, 2));
    assert_eq!(lost, retry, "the retry is the same request, same owner");
    assert_eq!(lost["ids"].as_array().unwrap().len(), 8);
    assert!(marked.iter().all(|m| m.owner == lost["owner"]));

    // A caller's own later retry with the returned token replays its own ID; a
    // new delivery of the event, with a token of its own, is a duplicate.
    let direct = client(&daemon.url(), 1);
    let again = direct
        .check_and_mark("default", &[&ids[3]], Some(&marked[3].owner))
        .await
        .unwrap();
    assert_eq!(again.verdicts, [Verdict::Replayed]);
    let redelivered = direct.check_and_mark("default", &ids, None).await.unwrap();
    assert!(
        redelivered
            .verdicts
            .iter()
            .all(|v| *v == Verdict::Duplicate)
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_sends_each_call_at_once() {
    let daemon = Daemon::start(&[]).await;
    let proxy = Proxy::start(daemon.addr, |_| Act::Forward).await;
    // A 60 s window: a call that waited for it would not finish in time.
    let c = coalescing(&proxy.url(), 1);
    let calls = async {
        for i in 0..3 {
            let id = format!("idle-{i}");
            let marked = c.check_and_mark("default", &[&id], None).await.unwrap();
            assert_eq!(marked.verdicts, [Verdict::New]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), calls)
        .await
        .expect("a lone call does not wait for the window");
    assert_eq!(proxy.requests(), 3);
    let stats = c.batching_stats().unwrap();
    assert_eq!((stats.calls, stats.requests, stats.waiting), (3, 3, 0));
    daemon.shutdown().await;
}

/// What the proxy does with the `n`-th request (from 0, across connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Pass the request on and the answer back.
    Forward,
    /// Pass the request on, wait for the whole answer, then close the client's
    /// connection without passing it back: the work is done, the answer lost.
    DropAnswer,
    /// Answer 503 `overloaded` without passing the request on.
    Answer503,
    /// Take the request and never answer.
    Hang,
    /// Hold the request until the test opens the gate ([`Proxy::open_gate`]), then
    /// forward it.
    Gated,
}

struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    gate: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, plan: fn(usize) -> Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            let gate = Arc::clone(&gate);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(
                        client,
                        upstream,
                        plan,
                        Arc::clone(&seen),
                        Arc::clone(&gate),
                    ));
                }
            }
        });
        Self {
            addr,
            seen,
            gate,
            task,
        }
    }

    /// Lets one [`Act::Gated`] request through.
    fn open_gate(&self) {
        self.gate.add_permits(1);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The request bodies, in arrival order.
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// One client connection, request by request.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: fn(usize) -> Act,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    gate: Arc<tokio::sync::Semaphore>,
) {
    let mut from_client = Vec::new();
    let mut daemon: Option<(TcpStream, Vec<u8>)> = None;
    while let Some((request, body_at)) = read_message(&mut client, &mut from_client).await {
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(request[body_at..].to_vec());
            seen.len() - 1
        };
        match plan(n) {
            Act::Answer503 => {
                let body =
                    r#"{"error":{"code":"overloaded","message":"injected by the test proxy"}}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(answer.as_bytes()).await;
                return;
            }
            Act::Hang => {
                // Bounded: the test is long over by then.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            act @ (Act::Forward | Act::DropAnswer | Act::Gated) => {
                if act == Act::Gated {
                    let Ok(permit) = gate.acquire().await else {
                        return;
                    };
                    permit.forget();
                }
                if daemon.is_none() {
                    daemon = Some((TcpStream::connect(upstream).await.unwrap(), Vec::new()));
                }
                let Some((up, from_daemon)) = daemon.as_mut() else {
                    return;
                };
                if up.write_all(&request).await.is_err() {
                    return;
                }
                let Some((answer, _)) = read_message(up, from_daemon).await else {
                    return;
                };
                if act == Act::DropAnswer || client.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 message (head and `content-length` body) from `stream`, with
/// `buf` holding bytes read past the previous one: the message, and where its body
/// starts. `None` at end of stream.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + length;
            if buf.len() >= total {
                let message: Vec<u8> = buf.drain(..total).collect();
                return Some((message, end + 4));
            }
        }
        let mut chunk = [0_u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
