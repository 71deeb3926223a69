//! The daemon's logs under load: a shed storm costs one line, not one per request.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::Harness;
use oncelyd::server::Limits;

const MARK: &str = "/v1/namespaces/default/check-and-mark";

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

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn shedding_logs_one_line_not_one_per_request() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // Process-wide, and this file's only test: a per-thread subscriber would miss
    // lines from other threads, and callsites other tests had reached first.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let h = Harness::with(
        Limits {
            max_concurrency: 1,
            ..Limits::default()
        },
        &[],
    );
    h.faults.hold_writes();
    let app = h.app.clone();
    let held = tokio::spawn(async move {
        let req = Request::post(MARK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"ids": ["held-1"]}"#))
            .unwrap();
        tower::ServiceExt::oneshot(app, req).await.unwrap().status()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.faults.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..300 {
        h.post(MARK, &format!(r#"{{"ids": ["shed-{i}"]}}"#))
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    }
    h.faults.release_writes();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains("oncelyd_requests_shed_total 300"),
        "{metrics}"
    );
    let lines: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|l| l.contains("overloaded"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("WARN"), "{lines:#?}");
}
