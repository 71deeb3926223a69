//! Request IDs and JSON logs: every HTTP answer carries `X-Request-Id` (the
//! client's when sane, else a new one), and every log line of that request carries
//! the same ID, the lines of its tracker call on the blocking pool included.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::Harness;
use common::daemon::{Daemon, client, command};
use oncelyd::config::LogFormat;
use oncelyd::server::Limits;
use serde_json::Value;

const MARK: &str = "/v1/namespaces/default/check-and-mark";

/// Log lines captured by the process's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line, parsed: each must be one JSON object.
    fn json_lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
            .collect()
    }

    /// The lines whose message is `message`.
    fn with_message(&self, message: &str) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"].as_str() == Some(message))
            .collect()
    }
}

fn id_of(a: &common::Answer) -> String {
    a.headers
        .get("x-request-id")
        .expect("an X-Request-Id header")
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_made(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The process-wide subscriber is set once: one test in this file uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_and_every_line_of_a_request_carry_its_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = oncelyd::logging::subscriber(
        LogFormat::Json,
        tracing_subscriber::EnvFilter::new("info"),
        move || writer.clone(),
        false,
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let timeout = Duration::from_millis(300);
    let h = Harness::with(
        Limits {
            tracker_timeout: timeout,
            ..Limits::default()
        },
        &[],
    );
    // A sane ID of the client's comes back as it went.
    let a = h
        .send(
            Method::GET,
            "/healthz",
            None,
            &[("x-request-id", "trace-7/span:42")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(id_of(&a), "trace-7/span:42");
    // An insane one (a space, a quote, too long) is replaced by a made one.
    let long = "x".repeat(129);
    for bad in ["two words", "quo\"te", long.as_str()] {
        let a = h
            .send(Method::GET, "/healthz", None, &[("x-request-id", bad)])
            .await;
        let id = id_of(&a);
        assert!(is_made(&id), "{bad:?} gave {id:?}");
    }
    // Without one, each answer gets its own, refusals included.
    let (a, b) = (h.get("/healthz").await, h.get("/nowhere").await);
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert!(is_made(&id_of(&a)) && is_made(&id_of(&b)), "{a:?} {b:?}");
    assert_ne!(id_of(&a), id_of(&b));

    // A request that fails for the store's sake: its line names its ID.
    h.faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = h
        .send(
            Method::POST,
            MARK,
            Some(r#"{"ids": ["x"]}"#),
            &[("x-request-id", "failing-req-1")],
        )
        .await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert_eq!(id_of(&a), "failing-req-1");
    h.faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let lines = captured.json_lines();
    let line = lines
        .iter()
        .find(|l| l["fields"]["code"] == "storage_unavailable")
        .unwrap_or_else(|| panic!("no line for the failure: {lines:#?}"));
    assert_eq!(line["span"]["request_id"], "failing-req-1", "{line:#}");
    assert_eq!(line["spans"][0]["request_id"], "failing-req-1", "{line:#}");

    // A tracker call answered 504 and finishing later, on the blocking pool: that
    // line, written after the answer went, still names the request.
    h.faults.hold_writes();
    let a = h
        .send(
            Method::POST,
            MARK,
            Some(r#"{"ids": ["late"]}"#),
            &[("x-request-id", "late-req-2")],
        )
        .await;
    a.assert_error(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded");
    assert_eq!(id_of(&a), "late-req-2");
    h.faults.release_writes();
    let late = "a tracker call finished after its request was answered 504; what it did stands";
    let deadline = Instant::now() + Duration::from_secs(10);
    while captured.with_message(late).is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", captured.json_lines());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let line = &captured.with_message(late)[0];
    assert_eq!(line["span"]["request_id"], "late-req-2", "{line:#}");
    assert_eq!(line["level"], "WARN", "{line:#}");
    // Every line written was one JSON object, and none of another request names
    // these IDs.
    let lines = captured.json_lines();
    assert!(lines.len() >= 3, "{lines:#?}");
}

/// `--log-format json` (or `ONCELY_LOG_FORMAT`, or `log_format` in the file) makes
/// every line of the real binary one JSON object, from the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_json_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = dir.path().join("oncely.toml");
    std::fs::write(&toml, "log_format = \"json\"\n").unwrap();
    let data = data.to_str().unwrap();
    let toml = toml.to_str().unwrap();
    for (args, envs) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("ONCELY_LOG_FORMAT", "json")]),
        (vec!["--config", toml], vec![]),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0", "--data-dir", data];
        all.extend(args.iter().copied());
        let daemon = Daemon::spawn(command(&all, &envs));
        let r = client()
            .get(daemon.url("/healthz"))
            .header("x-request-id", "from-the-binary")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-request-id"], "from-the-binary");
        // The log as written so far: all JSON.
        let log = daemon.log_text();
        drop(daemon);
        for line in log.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?} {envs:?}: {e}: not JSON: {line}"));
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        }
        assert!(log.contains("oncelyd listening on"), "{log}");
    }
    // An unknown format is refused at start-up, naming the setting.
    let (status, said) = common::daemon::run_to_exit(
        command(&["--log-format", "yaml", "--data-dir", data], &[]),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        said.contains("yaml") && said.contains("text or json"),
        "{said}"
    );
}
