//! `oncelyd load` against an in-process daemon on a loopback socket: the report's
//! counts agree with each other and with the daemon, its JSON has every key, and
//! `--rate` holds a steady rate. Against a scripted server that stalls for a known
//! time: the stall shows in a paced run's percentiles. Against a daemon that
//! refuses every request: the daemon's error code is reported, there is no latency,
//! and the command exits non-zero.

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use oncely::{Durability, HumanDuration, RocksOptions, Tracker};
use oncely_client::api::{NamespaceConfig, NamespaceView, Remembers};
use oncelyd::cli::{Cli, Command, LoadArgs};
use oncelyd::load::{self, LoadReport};
use oncelyd::server::{AppState, Limits, run};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A daemon on its own runtime thread (the load generator starts its own runtime,
/// which cannot nest in a test's), on RocksDB in a temporary directory.
struct Daemon {
    addr: SocketAddr,
    tracker: Tracker,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), oncelyd::Error>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::builder()
            .path(dir.path())
            .durability(Durability::Flush)
            .rocks_options(RocksOptions {
                cache_bytes: 8 << 20,
                memtable_bytes: 8 << 20,
            })
            .open()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(tracker.clone(), Limits::default(), &[]);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                run(listener, state, shutdown, Duration::from_secs(5)).await
            })
        });
        Self {
            addr,
            tracker,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// New IDs the daemon counted in a namespace, over its live generations.
    fn marked(&self, ns: &str) -> u64 {
        let info = self.tracker.namespace_info(ns).unwrap();
        info.generations.iter().map(|g| g.ids).sum()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("the daemon thread ends")
                .expect("a clean shutdown");
        }
    }
}

fn args(daemon: &Daemon) -> LoadArgs {
    args_for(&format!("http://{}", daemon.addr))
}

fn args_for(url: &str) -> LoadArgs {
    LoadArgs {
        url: url.to_owned(),
        namespace: "default".into(),
        batch: 200,
        concurrency: 2,
        duration: HumanDuration(Duration::from_secs(1)),
        ids: None,
        rate: None,
        duplicates: 0.25,
        token: None,
        json: true,
        seed: Some(42),
        threads: 1,
    }
}

/// The invariants every clean run keeps.
#[track_caller]
fn assert_consistent(r: &LoadReport) {
    assert_eq!(r.errors.total, 0, "{r:?}");
    assert_eq!(r.failed_ids, 0, "{r:?}");
    assert!(r.ids > 0 && r.requests > 0, "{r:?}");
    let v = &r.verdicts;
    assert_eq!(
        v.new + v.duplicate,
        r.ids,
        "every ID answered new or duplicate"
    );
    assert_eq!((v.probable_duplicate, v.in_progress), (0, 0), "{r:?}");
    assert_eq!(r.fresh_ids + r.repeated_ids, r.ids);
    assert_eq!(v.new, r.fresh_ids, "fresh IDs are new");
    assert_eq!(v.duplicate, r.repeated_ids, "repeats are duplicates");
    assert_eq!(
        r.unexpected.fresh_not_new + r.unexpected.repeated_not_duplicate,
        0
    );
    let l = r.latency_us.expect("a latency when requests succeeded");
    assert!(l.p50 > 0 && l.p50 <= l.p99);
    assert!(l.p99 <= l.p999 && l.p999 <= l.max);
}

#[test]
fn a_one_second_run_reports_consistent_counts_and_every_json_key() {
    let daemon = Daemon::start();
    let a = args(&daemon);
    let r = load::run(&a).unwrap();
    assert_consistent(&r);
    assert_eq!(r.ids, r.requests * 200, "full batches only");
    assert!(
        (r.duplicates_sent - 0.25).abs() < 0.03,
        "duplicates ≈ requested: {}",
        r.duplicates_sent
    );
    assert!(r.elapsed_s >= 1.0 && r.elapsed_s < 10.0, "{}", r.elapsed_s);
    assert!(r.ids_per_sec > 0.0 && r.requests_per_sec > 0.0);
    assert_eq!(daemon.marked("default"), r.fresh_ids, "the daemon agrees");

    let mut out = Vec::new();
    load::write_report(&r, true, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON object on one line");
    let v: Value = serde_json::from_str(&text).unwrap();
    for key in [
        "url",
        "namespace",
        "batch",
        "concurrency",
        "threads",
        "duplicates_requested",
        "seed",
        "id_format",
        "elapsed_s",
        "requests",
        "ids",
        "fresh_ids",
        "repeated_ids",
        "duplicates_sent",
        "ids_per_sec",
        "requests_per_sec",
        "target_ids_per_sec",
        "missed_requests",
        "below_target",
        "verdicts",
        "unexpected",
        "errors",
        "failed_ids",
        "latency_from",
        "latency_us",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {text}");
    }
    for key in ["new", "duplicate", "probable_duplicate", "in_progress"] {
        assert!(v["verdicts"][key].is_u64(), "verdicts.{key}");
    }
    for key in ["min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][key].is_number(), "latency_us.{key}");
    }
    for key in ["total", "transport", "timeout", "decode", "http", "answers"] {
        assert!(v["errors"].get(key).is_some(), "errors.{key}");
    }
    assert_eq!(v["ids"], r.ids);
    assert!(v["target_ids_per_sec"].is_null(), "unlimited: null");
    assert_eq!(v["latency_from"], "send");
    assert!(load::check(&r).is_ok());
    assert_eq!((r.missed_requests, r.below_target), (0, false));

    let text = load::render_text(&r);
    for needle in [
        "IDs/s",
        "req/s",
        "p99",
        "p99.9",
        "new ",
        "errors",
        "unlimited",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }

    // The same seed again: the same fresh IDs, now all duplicates of the first run.
    let again = load::run(&LoadArgs {
        duplicates: 0.0,
        ids: Some(1_000),
        ..a
    })
    .unwrap();
    assert_eq!(again.ids, 1_000);
    assert_eq!(again.verdicts.duplicate, 1_000, "{again:?}");
    assert_eq!(again.unexpected.fresh_not_new, 1_000);
}

#[test]
fn an_id_budget_single_id_requests_and_bad_arguments() {
    let daemon = Daemon::start();
    // A budget that is not a multiple of the batch: the last batch is partial.
    let r = load::run(&LoadArgs {
        ids: Some(5_050),
        batch: 300,
        duration: HumanDuration(Duration::from_secs(30)),
        seed: Some(1),
        ..args(&daemon)
    })
    .unwrap();
    assert_consistent(&r);
    assert_eq!(r.ids, 5_050);
    assert_eq!(r.requests, 17, "16 full batches and one of 250");

    let r = load::run(&LoadArgs {
        batch: 1,
        duration: HumanDuration(Duration::from_millis(300)),
        seed: Some(2),
        ..args(&daemon)
    })
    .unwrap();
    assert_consistent(&r);
    assert_eq!(r.ids, r.requests, "one ID per request");

    for (bad, setting) in [
        (
            LoadArgs {
                batch: 0,
                ..args(&daemon)
            },
            "batch",
        ),
        (
            LoadArgs {
                concurrency: 0,
                ..args(&daemon)
            },
            "concurrency",
        ),
        (
            LoadArgs {
                duplicates: 1.0,
                ..args(&daemon)
            },
            "duplicates",
        ),
        (
            LoadArgs {
                url: "https://127.0.0.1:1".into(),
                ..args(&daemon)
            },
            "url",
        ),
    ] {
        match load::run(&bad) {
            Err(oncelyd::Error::Config { setting: s, .. }) => assert_eq!(s, setting),
            other => panic!("expected a bad {setting}, got {other:?}"),
        }
    }
    // An unknown namespace is one clear error before any load.
    match load::run(&LoadArgs {
        namespace: "nowhere".into(),
        ..args(&daemon)
    }) {
        Err(oncelyd::Error::Client(e)) => assert_eq!(e.code(), Some("unknown_namespace")),
        other => panic!("expected unknown_namespace, got {other:?}"),
    }
}

#[test]
fn a_rate_is_held_steady_and_reported() {
    let daemon = Daemon::start();
    // 2,000 IDs/s in batches of 100: one request every 50 ms, shared by 2
    // connections, for 2 s. Loose bounds: a loaded 2-core machine may fall behind,
    // and the schedule itself never sends more than the target.
    let target = 2_000.0;
    let r = load::run(&LoadArgs {
        rate: Some(target),
        batch: 100,
        duration: HumanDuration(Duration::from_secs(2)),
        seed: Some(3),
        ..args(&daemon)
    })
    .unwrap();
    assert_consistent(&r);
    assert_eq!(r.target_ids_per_sec, Some(target));
    let ratio = r.ids_per_sec / target;
    assert!(
        (0.5..=1.3).contains(&ratio),
        "achieved {} IDs/s for a target of {target}: {r:?}",
        r.ids_per_sec
    );
    // At most the 40 requests due in 2 s were sent, and the run took at least 2 s.
    assert!(r.ids <= 4_000, "{r:?}");
    assert!(r.elapsed_s >= 2.0, "{}", r.elapsed_s);
    assert_eq!(r.below_target, ratio < load::BELOW_TARGET);
    assert_eq!(daemon.marked("default"), r.fresh_ids, "the daemon agrees");

    let mut out = Vec::new();
    load::write_report(&r, true, &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["target_ids_per_sec"], target);
    assert_eq!(v["latency_from"], "schedule");
    assert!(v["missed_requests"].is_u64() && v["below_target"].is_boolean());
    let text = load::render_text(&r);
    assert!(text.contains("2,000 IDs/s"), "{text}");

    // A target no daemon reaches: the report says so instead of bursting.
    let r = load::run(&LoadArgs {
        rate: Some(1e12),
        batch: 100,
        duration: HumanDuration(Duration::from_millis(300)),
        seed: Some(4),
        ..args(&daemon)
    })
    .unwrap();
    assert_consistent(&r);
    assert!(r.below_target && r.missed_requests > 0, "{r:?}");
    assert!(load::render_text(&r).contains("BELOW TARGET"));

    // Set in code rather than on the command line: still checked.
    match load::run(&LoadArgs {
        rate: Some(0.0),
        ..args(&daemon)
    }) {
        Err(oncelyd::Error::Config { setting, .. }) => assert_eq!(setting, "rate"),
        other => panic!("expected a bad rate, got {other:?}"),
    }
}

#[test]
fn the_command_line_refuses_a_rate_that_is_not_positive_and_finite() {
    let parse = |rate: &str| {
        let rate = format!("--rate={rate}");
        Cli::try_parse_from(["oncelyd", "load", "--url", "http://127.0.0.1:1", &rate])
    };
    for bad in ["0", "-5", "0.0", "NaN", "inf", "-inf", "fast", ""] {
        let e = parse(bad).expect_err(bad);
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("--rate"), "{bad}: {e}");
    }
    // Written apart, a negative number still reaches the check.
    let e = Cli::try_parse_from(["oncelyd", "load", "--url", "http://x", "--rate", "-5"])
        .expect_err("-5");
    assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
    for (good, want) in [("2000", 2_000.0), ("2.5e4", 25_000.0), ("0.5", 0.5)] {
        match parse(good).unwrap().command {
            Command::Load(a) => assert_eq!(a.rate, Some(want)),
            other => panic!("{other:?}"),
        }
    }
    let Command::Load(a) = Cli::try_parse_from(["oncelyd", "load", "--url", "http://x"])
        .unwrap()
        .command
    else {
        panic!("a load command")
    };
    assert_eq!(a.rate, None, "unlimited by default");
}

/// A stand-in daemon on 127.0.0.1: it knows the namespace `default` and answers
/// every check-and-mark with `new` for each ID, except that, from `stall_after` past
/// the first check-and-mark, it holds every request arriving in the next `stall`
/// until that time is over: a daemon stalled for a known time.
struct Stalling {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stalling {
    fn start(stall_after: Duration, stall: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let first = Arc::new(OnceLock::<Instant>::new());
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        let first = Arc::clone(&first);
                        tokio::spawn(serve_stalling(stream, first, stall_after, stall));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the scripted server ends");
        }
    }
}

/// One keep-alive connection of [`Stalling`].
async fn serve_stalling(
    mut stream: TcpStream,
    first: Arc<OnceLock<Instant>>,
    stall_after: Duration,
    stall: Duration,
) {
    let view = serde_json::to_vec(&NamespaceView {
        name: "default".into(),
        config: NamespaceConfig::default(),
        remembers_at_least: Remembers { ms: 0, ids: 0 },
        generations: Vec::new(),
        estimated_fp: 0.0,
        memory_bytes: 0,
        charged_bytes: 0,
        filter_budget: None,
    })
    .unwrap();
    let mut buf = Vec::new();
    loop {
        // One request: its head, then `content-length` bytes of body.
        let (head, body) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if buf.len() >= end + 4 + length {
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    buf.drain(..end + 4 + length);
                    break (head, body);
                }
            }
            let mut chunk = [0_u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let answer = if head.starts_with("get ") {
            view.clone()
        } else {
            let now = Instant::now();
            let from = *first.get_or_init(|| now) + stall_after;
            if (from..from + stall).contains(&now) {
                tokio::time::sleep_until(from + stall).await;
            }
            let request: Value = serde_json::from_slice(&body).unwrap();
            let results: Vec<Value> = request["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| serde_json::json!({"id": id, "verdict": "new", "replayed": false}))
                .collect();
            serde_json::to_vec(&serde_json::json!({ "results": results })).unwrap()
        };
        // One write: the answer's head and body in two segments would wait for
        // the client's delayed ACK.
        let mut message = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        message.extend_from_slice(&answer);
        if stream.write_all(&message).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_stall_of_the_daemon_shows_in_a_paced_runs_percentiles() {
    // 200 requests a second for 3 s on 2 connections; 1 s after the first request
    // the server stalls for 1 s. A third of the schedule falls in the stall, its
    // requests due evenly over it: timed from when they were due (the dropped ones
    // with the time they had waited), they take up to 1 s, so p99 is near 1 s.
    // Timed from their sending, as before, only the two requests in flight when
    // the stall began would show it, and p99 stayed under a millisecond or so.
    let server = Stalling::start(Duration::from_secs(1), Duration::from_secs(1));
    let r = load::run(&LoadArgs {
        url: format!("http://{}", server.addr),
        batch: 1,
        concurrency: 2,
        duration: HumanDuration(Duration::from_secs(3)),
        rate: Some(200.0),
        duplicates: 0.0,
        seed: Some(5),
        json: true,
        ..args_for("http://unused")
    })
    .unwrap();
    assert_eq!(r.errors.total, 0, "{r:?}");
    assert!(r.missed_requests > 100, "the stall dropped requests: {r:?}");
    let l = r.latency_us.expect("requests succeeded");
    assert!(
        l.p99 >= 800_000,
        "p99 {} µs: the 1 s stall must show: {r:?}",
        l.p99
    );
    assert!(l.max >= 900_000 && l.max < 5_000_000, "{l:?}");
    assert!(
        l.p50 < l.p90 && l.p90 < l.p99,
        "most requests were not in the stall: {l:?}"
    );
    assert!(load::render_text(&r).contains("timed from when they were due"));
}

#[test]
fn a_run_where_every_request_fails_reports_the_code_and_no_latency() {
    let daemon = Daemon::start();
    // One ID over the daemon's max_ids (10,000): every request is refused.
    let a = LoadArgs {
        batch: 10_001,
        duration: HumanDuration(Duration::from_millis(300)),
        duplicates: 0.0,
        ..args(&daemon)
    };
    let r = load::run(&a).unwrap();
    assert_eq!((r.requests, r.ids), (0, 0), "{r:?}");
    assert!(
        r.errors.total > 0 && r.failed_ids == r.errors.total * 10_001,
        "{r:?}"
    );
    assert_eq!(r.errors.http.get(&400), Some(&r.errors.total));
    assert_eq!(r.errors.answers.len(), 1, "{r:?}");
    let answer = &r.errors.answers[0];
    assert_eq!((answer.status, answer.code.as_str()), (400, "too_many_ids"));
    assert_eq!(answer.requests, r.errors.total);
    assert!(answer.message.contains("10001 IDs"), "{}", answer.message);
    assert_eq!(r.latency_us, None, "no request succeeded: no latency");

    let text = load::render_text(&r);
    assert!(text.contains("HTTP 400 too_many_ids"), "{text}");
    assert!(text.contains("latency     none"), "{text}");
    assert!(!text.contains("0.000 ms"), "{text}");
    let mut out = Vec::new();
    load::write_report(&r, true, &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v["latency_us"].is_null());
    assert_eq!(v["errors"]["answers"][0]["code"], "too_many_ids");
    match load::check(&r) {
        Err(e @ oncelyd::Error::LoadFailed { .. }) => {
            assert!(e.to_string().contains("too_many_ids"), "{e}");
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    assert_eq!(daemon.marked("default"), 0);

    // The command: the report on standard output, the failure on standard error,
    // and a non-zero exit status.
    let out = Process::new(env!("CARGO_BIN_EXE_oncelyd"))
        .args([
            "load",
            "--url",
            &a.url,
            "--batch",
            "10001",
            "--duration",
            "300ms",
        ])
        .env_remove("ONCELY_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("too_many_ids"), "{stdout}");
    assert!(stdout.contains("latency     none"), "{stdout}");
    assert!(
        stderr.contains("requests failed") && stderr.contains("too_many_ids"),
        "{stderr}"
    );
}
