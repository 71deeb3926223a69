//! Request bodies through the real HTTP stack: arbitrary bytes posted to every JSON
//! route of `oncelyd` (on an in-memory tracker) get a 2xx or 4xx answer with the
//! documented error shape; never a panic, never a 5xx.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request, header};
use libfuzzer_sys::fuzz_target;
use oncely::{Durability, Tracker};
use oncelyd::server::{AppState, Limits, app};
use tower::ServiceExt;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tracker = Tracker::builder()
            .durability(Durability::Memory)
            .open()
            .unwrap();
        let router = app(AppState::new(tracker, Limits::default(), &[]));
        Harness { runtime, router }
    })
}

/// Every route that decodes a body. `PUT /v1/namespaces/{ns}` is left out: a valid
/// body there may legitimately ask for gigabytes of filter (up to the per-namespace
/// limit), which an operator may grant but a fuzzer's memory limit would report;
/// its decoding and validation are covered by the `validation` target.
const ROUTES: [(Method, &str); 7] = [
    (Method::POST, "/v1/namespaces/default/check-and-mark"),
    (Method::POST, "/v1/namespaces/default/check"),
    (Method::POST, "/v1/namespaces/default/claims"),
    (Method::POST, "/v1/namespaces/default/claims/complete"),
    (Method::POST, "/v1/namespaces/default/claims/release"),
    (Method::PUT, "/v1/namespaces/default/checkpoints/fuzzer"),
    (Method::POST, "/v1/namespaces/fuzz%2Fname/check"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, path) = &ROUTES[usize::from(selector) % ROUTES.len()];
    let h = harness();
    let request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = h
        .runtime
        .block_on(h.router.clone().oneshot(request))
        .unwrap();
    let status = response.status();
    assert!(!status.is_server_error(), "{method} {path}: {status} for {body:?}");
    if !status.is_success() {
        let bytes = h
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("errors are JSON");
        assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string());
    }
});
