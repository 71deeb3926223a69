//! The connection cap's log lines under a client reconnecting in a loop at the cap:
//! a line when the cap is first reached and one when it is freed, not a pair per
//! reconnect (9,009 reconnects once wrote 7,114 lines in 3 s, no token needed),
//! while the metric counts every time.

mod common;

use std::time::Duration;

use common::daemon::metric_value;
use common::raw::RawConn;
use oncelyd::server::{AppState, Limits, run};

/// Log lines captured by the process's subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_at_the_cap_logs_a_line_per_window_and_counts_every_time() {
    const RECONNECTS: usize = 300;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // Process-wide, and this file's only test (see `logs.rs`).
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tracker = common::rocks_tracker(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(run(
        listener,
        AppState::new(tracker, limits, &[]),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(2),
    ));
    // One connection held throughout (it also reads the metrics); the other slot is
    // taken and given back by a client reconnecting: each of its connections
    // reaches the cap, and each close frees it.
    let mut holder = RawConn::connect(addr).await;
    assert_eq!(
        holder
            .request("GET", "/healthz", None, Duration::from_secs(5))
            .await
            .status,
        200
    );
    for _ in 0..RECONNECTS {
        let mut c = RawConn::connect(addr).await;
        let a = c
            .request("GET", "/healthz", None, Duration::from_secs(5))
            .await;
        assert_eq!(a.status, 200);
    }
    let text = holder
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    let reached = metric_value(&text, "oncelyd_connection_cap_reached_total");
    assert_eq!(reached, RECONNECTS as f64, "{text}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection cap"))
        .collect();
    // The first reach and its end; the 299 after it within the 10 s window are only
    // counted (their count is logged once the window has passed).
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("connection cap reached"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("INFO") && lines[1].contains("below the connection cap again"),
        "{lines:#?}"
    );
}
