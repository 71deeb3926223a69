//! The HTTP API through the whole application stack (routing, extractors, auth,
//! limits, error mapping, metrics), driven in process with `oneshot`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Answer, Harness, verdicts, whole_config};
use oncelyd::server::Limits;
use serde_json::{Value, json};

const MARK: &str = "/v1/namespaces/default/check-and-mark";
const CHECK: &str = "/v1/namespaces/default/check";

#[tokio::test]
async fn mark_then_check_in_request_order() {
    let h = Harness::new();
    let a = h.post(MARK, r#"{"ids": ["a", "b", "c"]}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(
        a.json(),
        json!({"results": [
            {"id": "a", "verdict": "new", "replayed": false},
            {"id": "b", "verdict": "new", "replayed": false},
            {"id": "c", "verdict": "new", "replayed": false},
        ]})
    );
    // Order follows the request, not the store; a repeat inside one batch is new once.
    assert_eq!(
        h.mark(&["d", "c", "d", "a", "e"], None).await,
        ["new", "duplicate", "duplicate", "duplicate", "new"]
    );
    let a = h.post(CHECK, r#"{"ids": ["e", "zz", "b"]}"#).await;
    assert_eq!(
        a.json(),
        json!({"results": [
            {"id": "e", "verdict": "duplicate"},
            {"id": "zz", "verdict": "new"},
            {"id": "b", "verdict": "duplicate"},
        ]})
    );
    // check marks nothing.
    assert_eq!(h.check(&["zz"]).await, ["new"]);
    // An empty batch is a valid, empty answer.
    assert_eq!(
        h.post(MARK, r#"{"ids": []}"#).await.json(),
        json!({"results": []})
    );
}

#[tokio::test]
async fn ids_round_trip_through_json_escapes() {
    let h = Harness::new();
    let ids = ["quote\"d", "back\\slash", "é-ünïcode", "tab\there", "🦀"];
    let body = json!({ "ids": ids }).to_string();
    let a = h.post(MARK, &body).await;
    let v = a.json();
    let echoed: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, ids);
    // Escaped and unescaped spellings of one ID are one ID.
    let a = h
        .post(CHECK, r#"{"ids": ["\u00e9-\u00fcn\u00efcode"]}"#)
        .await;
    assert_eq!(verdicts(&a.json()), ["duplicate"]);
}

#[tokio::test]
async fn owner_replay_over_http() {
    let h = Harness::new();
    let first = h
        .post(MARK, r#"{"ids": ["o-1", "o-2"], "owner": "delivery-7"}"#)
        .await
        .json();
    assert_eq!(first["results"][0]["replayed"], false);
    // The same owner retrying (its first answer was lost) gets its `new` back.
    let retry = h
        .post(
            MARK,
            r#"{"ids": ["o-1", "o-2", "o-3"], "owner": "delivery-7"}"#,
        )
        .await
        .json();
    assert_eq!(
        retry,
        json!({"results": [
            {"id": "o-1", "verdict": "new", "replayed": true},
            {"id": "o-2", "verdict": "new", "replayed": true},
            {"id": "o-3", "verdict": "new", "replayed": false},
        ]})
    );
    // Anyone else, or no owner, sees a duplicate.
    assert_eq!(h.mark(&["o-1"], Some("delivery-8")).await, ["duplicate"]);
    assert_eq!(h.mark(&["o-1"], None).await, ["duplicate"]);
    // An explicit null owner is no owner.
    let a = h.post(MARK, r#"{"ids": ["o-4"], "owner": null}"#).await;
    assert_eq!(verdicts(&a.json()), ["new"]);
}

#[tokio::test]
async fn every_kind_of_bad_input_is_400_and_marks_nothing() {
    let h = Harness::with(
        Limits {
            max_ids: 5,
            ..Limits::default()
        },
        &[],
    );
    let long = "x".repeat(257);
    let cases: Vec<(&str, String, &str)> = vec![
        (MARK, r#"{"ids": ["ok-1", ""]}"#.into(), "invalid_id"),
        (
            MARK,
            format!(r#"{{"ids": ["ok-1", "{long}"]}}"#),
            "invalid_id",
        ),
        (MARK, r#"{"ids": ["ok-1", "ok-2""#.into(), "invalid_json"),
        (MARK, "not json at all".into(), "invalid_json"),
        (MARK, "".into(), "invalid_json"),
        (MARK, r#"{"ids": ["ok-1", 5]}"#.into(), "invalid_request"),
        (MARK, r#"{"ids": "ok-1"}"#.into(), "invalid_request"),
        (MARK, r#"{"owner": "w"}"#.into(), "invalid_request"),
        (
            MARK,
            r#"{"ids": ["ok-1"], "extra": 1}"#.into(),
            "invalid_request",
        ),
        (MARK, r#"["ok-1"]"#.into(), "invalid_request"),
        (
            MARK,
            r#"{"ids": ["ok-1"], "owner": ""}"#.into(),
            "invalid_owner",
        ),
        (
            MARK,
            format!(r#"{{"ids": ["ok-1"], "owner": "{long}"}}"#),
            "invalid_owner",
        ),
        (
            MARK,
            r#"{"ids": ["ok-1", "ok-2", "ok-3", "ok-4", "ok-5", "ok-6"]}"#.into(),
            "too_many_ids",
        ),
        (CHECK, r#"{"ids": [""]}"#.into(), "invalid_id"),
        (
            CHECK,
            r#"{"ids": ["1", "2", "3", "4", "5", "6"]}"#.into(),
            "too_many_ids",
        ),
        (
            "/v1/namespaces/bad*name/check-and-mark",
            r#"{"ids": ["ok-1"]}"#.into(),
            "invalid_namespace",
        ),
        (
            "/v1/namespaces/%FF%FE/check-and-mark",
            r#"{"ids": ["ok-1"]}"#.into(),
            "invalid_path",
        ),
        (
            "/v1/namespaces/default/claims",
            r#"{"id": "c", "owner": "w", "lease_ms": 0}"#.into(),
            "invalid_argument",
        ),
        (
            "/v1/namespaces/default/claims",
            r#"{"id": "c", "owner": "w", "lease_ms": 999999999999}"#.into(),
            "invalid_argument",
        ),
        (
            "/v1/namespaces/default/claims",
            r#"{"id": "c", "owner": "w", "lease_ms": -1}"#.into(),
            "invalid_request",
        ),
        (
            "/v1/namespaces/default/claims",
            r#"{"id": "", "owner": "w", "lease_ms": 1000}"#.into(),
            "invalid_id",
        ),
        (
            "/v1/namespaces/default/claims",
            r#"{"id": "c", "owner": "", "lease_ms": 1000}"#.into(),
            "invalid_owner",
        ),
        (
            "/v1/namespaces/default/claims/complete",
            r#"{"id": "c"}"#.into(),
            "invalid_request",
        ),
    ];
    for (uri, body, code) in &cases {
        let a = h.post(uri, body).await;
        assert!(
            a.status == StatusCode::BAD_REQUEST,
            "{uri} {body}: {} {}",
            a.status,
            a.text
        );
        a.assert_error(StatusCode::BAD_REQUEST, code);
    }
    // Nothing of any refused batch was marked, nor claimed.
    assert_eq!(
        h.check(&["ok-1", "ok-2", "ok-3", "ok-4", "c"]).await,
        ["new"; 5]
    );

    // Checkpoints: bad position, bad consumer.
    let cp = "/v1/namespaces/default/checkpoints/consumer-1";
    let a = h.call(Method::PUT, cp, Some(r#"{"position": ""}"#)).await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_argument");
    let big = format!(r#"{{"position": "{}"}}"#, "p".repeat(1025));
    let a = h.call(Method::PUT, cp, Some(&big)).await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_argument");
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/default/checkpoints/bad*consumer",
            Some(r#"{"position": "1"}"#),
        )
        .await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("consumer")
    );
    let a = h
        .get("/v1/namespaces/default/checkpoints/bad*consumer")
        .await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_argument");

    // Namespace configuration: each bad field is named.
    for (changes, field) in [
        (json!({"fp_rate": 2}), "fp_rate"),
        (json!({"generations": 0}), "generations"),
        (json!({"generations": 1025}), "generations"),
        (json!({"exact_generations": 0}), "exact_generations"),
        (json!({"generation_capacity": 0}), "generation_capacity"),
        (json!({"generation_span": "soon"}), "soon"),
        (json!({"generation_span": 0}), "generation_span"),
        (json!({"bogus": 1}), "bogus"),
        (json!({"drop_now": "yes"}), "expected a boolean"),
    ] {
        let body = whole_config(changes.clone());
        let a = h
            .call(Method::PUT, "/v1/namespaces/orders", Some(&body))
            .await;
        a.assert_error(StatusCode::BAD_REQUEST, "invalid_config");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(field), "{changes}: {message}");
    }
    let a = h
        .call(Method::PUT, "/v1/namespaces/orders", Some("{"))
        .await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/no%20spaces",
            Some(&whole_config(json!({}))),
        )
        .await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_namespace");
    let long_name = format!("/v1/namespaces/{}", "n".repeat(65));
    h.call(Method::PUT, &long_name, Some("{}"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_namespace");
    // None of those created a namespace.
    assert_eq!(
        h.get("/v1/namespaces").await.json(),
        json!({"namespaces": ["default"]})
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_marks_nothing() {
    let h = Harness::with(
        Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        },
        &[],
    );
    let ids: Vec<String> = (0..100).map(|i| format!("big-{i:04}")).collect();
    let body = json!({ "ids": ids }).to_string();
    assert!(body.len() > 1024);
    let a = h.post(MARK, &body).await;
    a.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let first: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
    assert_eq!(h.check(&first).await, ["new"; 5]);
}

/// A request as a web page could make a browser send it, with the given
/// Content-Type (or none) and Origin (or none).
fn browser_request(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if let Some(origin) = origin {
        req = req.header(header::ORIGIN, origin);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn state_changing_requests_must_declare_json() {
    let h = Harness::new();
    // What a page can send without a preflight: no type (fetch with an ArrayBuffer,
    // sendBeacon), text/plain, a form. All refused, on every state-changing route,
    // and nothing is done.
    let routes = [
        (Method::POST, MARK, r#"{"ids": ["g-1"]}"#),
        (Method::POST, CHECK, r#"{"ids": ["g-1"]}"#),
        (
            Method::POST,
            "/v1/namespaces/default/claims",
            r#"{"id": "g-2", "owner": "page", "lease_ms": 60000}"#,
        ),
        (
            Method::POST,
            "/v1/namespaces/default/claims/complete",
            r#"{"id": "g-2", "owner": "page"}"#,
        ),
        (
            Method::POST,
            "/v1/namespaces/default/claims/release",
            r#"{"id": "g-2", "owner": "page"}"#,
        ),
        (Method::PUT, "/v1/namespaces/page-made", "{}"),
        (
            Method::PUT,
            "/v1/namespaces/default/checkpoints/page",
            r#"{"position": "9"}"#,
        ),
        (
            Method::PATCH,
            "/v1/namespaces/default",
            r#"{"generations": 2}"#,
        ),
    ];
    for (method, uri, body) in &routes {
        for ct in [
            None,
            Some("text/plain"),
            Some("text/plain; charset=utf-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/json"),
        ] {
            let a = h
                .raw(browser_request(method.clone(), uri, ct, None, body))
                .await;
            a.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
            assert!(
                a.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("--json")
            );
        }
    }
    assert_eq!(h.check(&["g-1"]).await, ["new"], "nothing was marked");
    let claim = h
        .post(
            "/v1/namespaces/default/claims",
            r#"{"id": "g-2", "owner": "worker", "lease_ms": 60000}"#,
        )
        .await;
    assert_eq!(claim.json()["verdict"], "acquired", "nothing was claimed");
    h.get("/v1/namespaces/page-made")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.get("/v1/namespaces/default/checkpoints/page")
        .await
        .assert_error(StatusCode::NOT_FOUND, "checkpoint_not_found");

    // JSON, with parameters or as a +json type: accepted.
    for (ct, id) in [
        ("application/json", "j-1"),
        ("application/json; charset=utf-8", "j-2"),
        ("Application/JSON", "j-3"),
    ] {
        let body = format!(r#"{{"ids": ["{id}"]}}"#);
        let a = h
            .raw(browser_request(Method::POST, MARK, Some(ct), None, &body))
            .await;
        assert_eq!(verdicts(&a.json()), ["new"], "{ct}");
    }

    // DELETE carries no body and needs no type: a page cannot send it without a
    // preflight, which the daemon never approves. A declared type must be JSON.
    let created = h
        .call(
            Method::PUT,
            "/v1/namespaces/to-delete",
            Some(&whole_config(json!({}))),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let uri = "/v1/namespaces/to-delete";
    h.raw(browser_request(
        Method::DELETE,
        uri,
        Some("text/plain"),
        None,
        "",
    ))
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_eq!(h.get(uri).await.status, StatusCode::OK, "still there");
    let a = h
        .raw(browser_request(Method::DELETE, uri, None, None, ""))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);

    // The type only matters to a request a handler takes: a method its route does
    // not answer gets 405, and a path no route matches 404, whatever the type.
    for uri in ["/healthz", "/metrics", "/v1/namespaces"] {
        let a = h
            .raw(browser_request(Method::PUT, uri, None, None, ""))
            .await;
        a.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    let a = h
        .raw(browser_request(
            Method::POST,
            "/v1/nowhere",
            Some("text/plain"),
            None,
            "x",
        ))
        .await;
    a.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn foreign_origins_get_403_before_anything_else() {
    let h = Harness::with_origins(&["https://ops.example"], &["a-token-of-sixteen+"]);
    let auth = ("authorization", "Bearer a-token-of-sixteen+");
    for origin in [
        "https://evil.example",
        // The daemon's own address: what a page whose DNS name was rebound to it
        // sends.
        "http://127.0.0.1:7070",
        "http://localhost:7070",
        "null",
        "https://ops.example.evil",
        "http://ops.example",
    ] {
        let mut req = browser_request(
            Method::POST,
            MARK,
            Some("application/json"),
            Some(origin),
            r#"{"ids": ["o-1"]}"#,
        );
        req.headers_mut()
            .insert(header::AUTHORIZATION, auth.1.parse().unwrap());
        let a = h.raw(req).await;
        a.assert_error(StatusCode::FORBIDDEN, "forbidden_origin");
        assert!(a.text.contains(origin), "{}", a.text);
        // Reads and health too: a page must not read them either; and the origin is
        // judged before the token (no token here: still 403, not 401).
        for uri in ["/metrics", "/healthz", "/v1/namespaces"] {
            let req = browser_request(Method::GET, uri, None, Some(origin), "");
            h.raw(req)
                .await
                .assert_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
    }
    let check = |_| async {
        let req = Request::post(CHECK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(auth.0, auth.1)
            .body(Body::from(r#"{"ids": ["o-1"]}"#))
            .unwrap();
        verdicts(&h.raw(req).await.json())
    };
    assert_eq!(check(()).await, ["new"], "nothing was marked");
    // The allowed origin, however capitalised, passes (and still needs the token).
    for origin in ["https://ops.example", "HTTPS://OPS.EXAMPLE"] {
        let mut req = browser_request(
            Method::POST,
            MARK,
            Some("application/json"),
            Some(origin),
            r#"{"ids": ["o-2"]}"#,
        );
        assert_eq!(h.raw(req).await.status, StatusCode::UNAUTHORIZED);
        req = browser_request(
            Method::POST,
            MARK,
            Some("application/json"),
            Some(origin),
            r#"{"ids": ["o-2"]}"#,
        );
        req.headers_mut()
            .insert(header::AUTHORIZATION, auth.1.parse().unwrap());
        assert_eq!(h.raw(req).await.status, StatusCode::OK, "{origin}");
    }
    // Refusals are counted like any answer.
    let req = Request::get("/metrics")
        .header(auth.0, auth.1)
        .body(Body::empty())
        .unwrap();
    let metrics = h.raw(req).await.text;
    assert!(
        metrics.contains(
            r#"oncelyd_http_requests_total{method="POST",route="/v1/namespaces/{ns}/check-and-mark",status="403"} 6"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_origin_is_allowed_by_default() {
    let h = Harness::new();
    let req = browser_request(
        Method::POST,
        MARK,
        Some("application/json"),
        Some("http://127.0.0.1:7070"),
        r#"{"ids": ["d-1"]}"#,
    );
    h.raw(req)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden_origin");
    // Programs send no Origin.
    assert_eq!(h.mark(&["d-1"], None).await, ["new"]);
}

#[tokio::test]
async fn dot_names_are_refused_wherever_a_name_goes() {
    let h = Harness::new();
    // Clients and proxies resolve "." and ".." as path segments; percent-encoded
    // they still reach the daemon, which refuses them as names.
    for ns in ["%2E", "%2E%2E", ".", ".."] {
        h.call(Method::PUT, &format!("/v1/namespaces/{ns}"), Some("{}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_namespace");
        h.post(
            &format!("/v1/namespaces/{ns}/check-and-mark"),
            r#"{"ids": ["x"]}"#,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_namespace");
        h.call(
            Method::PUT,
            &format!("/v1/namespaces/default/checkpoints/{ns}"),
            Some(r#"{"position": "1"}"#),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let list = h.get("/v1/namespaces").await.json();
    assert_eq!(list["namespaces"], json!(["default"]));
}

#[tokio::test]
async fn unknown_things_are_404_and_wrong_methods_405() {
    let h = Harness::new();
    let a = h
        .post("/v1/namespaces/nope/check-and-mark", r#"{"ids": ["a"]}"#)
        .await;
    a.assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.post("/v1/namespaces/nope/check", r#"{"ids": ["a"]}"#)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.get("/v1/namespaces/nope")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.call(Method::DELETE, "/v1/namespaces/nope", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.get("/v1/namespaces/nope/checkpoints/c")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.get("/v1/no-such-route")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    let a = h.get(MARK).await;
    a.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(a.headers.get(header::ALLOW).unwrap(), "POST");
    let a = h
        .call(Method::POST, "/v1/namespaces/default", Some("{}"))
        .await;
    a.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = a.headers.get(header::ALLOW).unwrap().to_str().unwrap();
    for m in ["GET", "PUT", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
    h.call(Method::DELETE, "/healthz", None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn auth_on() {
    let h = Harness::with(Limits::default(), &["s3cret", "other-token"]);
    let body = Some(r#"{"ids": ["auth-1"]}"#);
    // Missing, wrong, malformed: 401 with a challenge, and nothing marked.
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Bearer s3cre")],
        vec![("authorization", "Bearer s3cret-and-more")],
        vec![("authorization", "Basic czNjcmV0")],
        vec![("authorization", "s3cret")],
    ] {
        let a = h.send(Method::POST, MARK, body, &headers).await;
        a.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(a.headers.get(header::WWW_AUTHENTICATE).is_some());
    }
    // Every configured token works, with any capitalisation of the scheme.
    for auth in ["Bearer s3cret", "bearer other-token"] {
        let a = h
            .send(Method::POST, CHECK, body, &[("authorization", auth)])
            .await;
        assert_eq!(verdicts(&a.json()), ["new"], "{auth}");
    }
    // Health routes need no token; everything else does, unknown routes included.
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(h.get("/readyz").await.status, StatusCode::OK);
    for uri in [
        "/metrics",
        "/v1/openapi.json",
        "/v1/namespaces",
        "/v1/nowhere",
    ] {
        h.get(uri)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let a = h
        .send(
            Method::GET,
            "/metrics",
            None,
            &[("authorization", "Bearer s3cret")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn auth_off_needs_no_header() {
    let h = Harness::new();
    assert_eq!(h.mark(&["x"], None).await, ["new"]);
    // A stray header is ignored when no token is configured.
    let a = h
        .send(
            Method::GET,
            "/v1/namespaces",
            None,
            &[("authorization", "Bearer anything")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn claims_over_http() {
    let h = Harness::new();
    let claims = "/v1/namespaces/default/claims";
    let a = h
        .post(
            claims,
            r#"{"id": "job-1", "owner": "w1", "lease_ms": 30000}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let now = 1_700_000_000_000_u64;
    assert_eq!(
        a.json(),
        json!({"verdict": "acquired", "until_ms": now + 30_000, "replayed": false, "taken_over": false})
    );
    // Another owner: in progress (200, not an error), with the lease end.
    let a = h
        .post(
            claims,
            r#"{"id": "job-1", "owner": "w2", "lease_ms": 30000}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        json!({"verdict": "in_progress", "until_ms": now + 30_000})
    );
    // check-and-mark sees the claim too.
    let a = h.post(MARK, r#"{"ids": ["job-1"], "owner": "w2"}"#).await;
    assert_eq!(
        a.json()["results"][0],
        json!({"id": "job-1", "verdict": "in_progress", "replayed": false, "until_ms": now + 30_000})
    );
    // The holder renews.
    h.clock.advance(Duration::from_secs(10));
    let a = h
        .post(
            claims,
            r#"{"id": "job-1", "owner": "w1", "lease_ms": 30000}"#,
        )
        .await;
    assert_eq!(
        a.json(),
        json!({"verdict": "acquired", "until_ms": now + 40_000, "replayed": true, "taken_over": false})
    );
    // Only the holder may complete or release.
    let complete = "/v1/namespaces/default/claims/complete";
    let release = "/v1/namespaces/default/claims/release";
    h.post(complete, r#"{"id": "job-1", "owner": "w2"}"#)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    h.post(release, r#"{"id": "job-1", "owner": "w2"}"#)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    let a = h.post(complete, r#"{"id": "job-1", "owner": "w1"}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"id": "job-1", "state": "completed"}));
    // Done: a duplicate for claims and marks; releasing a done ID conflicts.
    let a = h
        .post(
            claims,
            r#"{"id": "job-1", "owner": "w2", "lease_ms": 1000}"#,
        )
        .await;
    assert_eq!(a.json(), json!({"verdict": "duplicate"}));
    assert_eq!(h.check(&["job-1"]).await, ["duplicate"]);
    h.post(release, r#"{"id": "job-1", "owner": "w1"}"#)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    // Completing something never claimed conflicts.
    h.post(complete, r#"{"id": "never", "owner": "w1"}"#)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");

    // Release lets the next claimant in; so does an expired lease.
    h.post(
        claims,
        r#"{"id": "job-2", "owner": "w1", "lease_ms": 5000}"#,
    )
    .await;
    let a = h.post(release, r#"{"id": "job-2", "owner": "w1"}"#).await;
    assert_eq!(a.json(), json!({"id": "job-2", "state": "released"}));
    let a = h
        .post(
            claims,
            r#"{"id": "job-2", "owner": "w2", "lease_ms": 5000}"#,
        )
        .await;
    assert_eq!(a.json()["verdict"], "acquired");
    h.clock.advance(Duration::from_secs(6));
    let a = h
        .post(
            claims,
            r#"{"id": "job-2", "owner": "w3", "lease_ms": 5000}"#,
        )
        .await;
    assert_eq!(a.json()["verdict"], "acquired");
    assert_eq!(a.json()["replayed"], false);
}

#[tokio::test]
async fn namespaces_lifecycle() {
    let h = Harness::new();
    let six = whole_config(json!({"generations": 6, "generation_span": "10m", "fp_rate": 0.001}));
    let a = h
        .call(Method::PUT, "/v1/namespaces/orders", Some(&six))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    assert_eq!(v["name"], "orders");
    assert_eq!(
        v["config"],
        json!({"generations": 6, "generation_capacity": 100_000, "generation_span": "10m",
               "fp_rate": 0.001, "exact_generations": 2})
    );
    assert_eq!(v["remembers_at_least"]["ms"], 5 * 600_000);

    let a = h
        .post(
            "/v1/namespaces/orders/check-and-mark",
            r#"{"ids": ["o1", "o2", "o3"]}"#,
        )
        .await;
    assert_eq!(verdicts(&a.json()), ["new"; 3]);
    // Namespaces are independent.
    assert_eq!(h.check(&["o1"]).await, ["new"]);

    let v = h.get("/v1/namespaces/orders").await.json();
    let open = &v["generations"][0];
    assert_eq!(open["ids"], 3);
    assert_eq!(open["exact"], true);
    assert!(open["filter"]["fill_ratio"].as_f64().unwrap() > 0.0);
    assert!(open["filter"]["estimated_fp"].as_f64().is_some());
    assert!(open["filter"]["bits"].as_u64().unwrap() > 0);
    assert!(v["memory_bytes"].as_u64().unwrap() > 0);
    assert!(v["estimated_fp"].as_f64().is_some());

    // Updating answers 200.
    let five = whole_config(json!({"generations": 5}));
    let a = h
        .call(Method::PUT, "/v1/namespaces/orders", Some(&five))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["config"]["generations"], 5);
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/empty",
            Some(&whole_config(json!({}))),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json()["config"]["generations"], 4);

    assert_eq!(
        h.get("/v1/namespaces").await.json(),
        json!({"namespaces": ["default", "empty", "orders"]})
    );
    let a = h.call(Method::DELETE, "/v1/namespaces/orders", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.text.is_empty());
    h.get("/v1/namespaces/orders")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.post("/v1/namespaces/orders/check", r#"{"ids": ["o1"]}"#)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    // The default namespace always exists.
    h.call(Method::DELETE, "/v1/namespaces/default", None)
        .await
        .assert_error(StatusCode::CONFLICT, "refused");
    assert_eq!(h.get("/v1/namespaces/default").await.status, StatusCode::OK);
}

#[tokio::test]
async fn checkpoints_round_trip() {
    let h = Harness::new();
    let uri = "/v1/namespaces/default/checkpoints/billing";
    h.get(uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "checkpoint_not_found");
    let a = h
        .call(Method::PUT, uri, Some(r#"{"position": "offset:1041"}"#))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let stored = json!({"namespace": "default", "consumer": "billing", "position": "offset:1041"});
    assert_eq!(a.json(), stored);
    assert_eq!(h.get(uri).await.json(), stored);
    h.call(Method::PUT, uri, Some(r#"{"position": "offset:2000"}"#))
        .await;
    assert_eq!(h.get(uri).await.json()["position"], "offset:2000");
    // Per namespace.
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/other",
            Some(&whole_config(json!({}))),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    h.get("/v1/namespaces/other/checkpoints/billing")
        .await
        .assert_error(StatusCode::NOT_FOUND, "checkpoint_not_found");
    h.call(
        Method::PUT,
        "/v1/namespaces/nope/checkpoints/billing",
        Some(r#"{"position": "1"}"#),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
}

/// `expected` on a checkpoint PUT: absent stores whatever was stored, `null`
/// only if none is, a position only if it is stored; otherwise 409
/// `checkpoint_conflict` naming the stored position (`null` when none) and
/// nothing changes. A retry whose first attempt landed answers 200.
#[tokio::test]
async fn checkpoint_preconditions_refuse_a_stale_read_with_409() {
    let h = Harness::new();
    let uri = "/v1/namespaces/default/checkpoints/billing";
    let put = |body: &'static str| h.call(Method::PUT, uri, Some(body));
    let a = put(r#"{"position": "5", "expected": "4"}"#).await;
    a.assert_error(StatusCode::CONFLICT, "checkpoint_conflict");
    assert_eq!(a.json()["error"]["current"], Value::Null);
    assert!(
        a.json()["error"]
            .as_object()
            .unwrap()
            .contains_key("current")
    );
    h.get(uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "checkpoint_not_found");
    for _ in 0..2 {
        let a = put(r#"{"position": "5", "expected": null}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["position"], "5");
    }
    let a = put(r#"{"position": "6", "expected": null}"#).await;
    a.assert_error(StatusCode::CONFLICT, "checkpoint_conflict");
    assert_eq!(a.json()["error"]["current"], "5");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"is at "5", not unset as expected"#),
        "{}",
        a.text
    );
    assert_eq!(
        put(r#"{"position": "6", "expected": "5"}"#).await.status,
        StatusCode::OK
    );
    let a = put(r#"{"position": "7", "expected": "5"}"#).await;
    a.assert_error(StatusCode::CONFLICT, "checkpoint_conflict");
    assert_eq!(a.json()["error"]["current"], "6");
    assert_eq!(h.get(uri).await.json()["position"], "6");
    // Without `expected`, as before: stored whatever was stored.
    assert_eq!(put(r#"{"position": "2"}"#).await.status, StatusCode::OK);
    assert_eq!(h.get(uri).await.json()["position"], "2");
    // Other errors carry no `current`.
    let a = put(r#"{"position": "3", "expected": ""}"#).await;
    a.assert_error(StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(
        !a.json()["error"]
            .as_object()
            .unwrap()
            .contains_key("current")
    );
    assert!(a.text.contains("expected"), "{}", a.text);
    put(r#"{"position": "3", "expected": 4}"#)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        h.get(uri).await.json()["position"],
        "2",
        "refusals changed nothing"
    );
}

#[tokio::test]
async fn forget_gives_marks_back_and_refuses_bad_input_whole() {
    let h = Harness::new();
    const FORGET: &str = "/v1/namespaces/default/forget";
    assert_eq!(h.mark(&["f-1", "f-2"], None).await, ["new", "new"]);
    let claim = h
        .post(
            "/v1/namespaces/default/claims",
            r#"{"id": "f-held", "owner": "w", "lease_ms": 60000}"#,
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text);
    let a = h
        .post(FORGET, r#"{"ids": ["f-1", "f-1", "f-held", "f-unseen"]}"#)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json(),
        serde_json::json!({"results": [
            {"id": "f-1", "forgotten": true},
            {"id": "f-1", "forgotten": false},
            {"id": "f-held", "forgotten": false},
            {"id": "f-unseen", "forgotten": false},
        ]})
    );
    assert_eq!(h.check(&["f-1", "f-2"]).await, ["new", "duplicate"]);
    assert_eq!(h.check(&["f-held"]).await, ["in_progress"]);
    // A retry answers false: nothing is left to forget.
    let again = h.post(FORGET, r#"{"ids": ["f-1"]}"#).await;
    assert_eq!(again.json()["results"][0]["forgotten"], false);
    assert_eq!(h.mark(&["f-1"], None).await, ["new"], "given back");

    // Refused whole, nothing forgotten.
    for (body, code) in [
        (r#"{"ids": ["f-2", ""]}"#, "invalid_id"),
        (r#"{"ids": "f-2"}"#, "invalid_request"),
        (r#"{"ids": ["f-2"], "owner": "o"}"#, "invalid_request"),
    ] {
        h.post(FORGET, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, code);
    }
    h.post("/v1/namespaces/nowhere/forget", r#"{"ids": ["f-2"]}"#)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    assert_eq!(
        h.check(&["f-2"]).await,
        ["duplicate"],
        "refusals changed nothing"
    );
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"oncelyd_forgets_total{protocol="http",outcome="forgotten"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"oncelyd_forgets_total{protocol="http",outcome="kept"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn storage_failure_is_503_and_acknowledges_nothing() {
    let h = Harness::new();
    h.faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = h.post(MARK, r#"{"ids": ["s-1", "s-2"]}"#).await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert_eq!(a.headers.get(header::RETRY_AFTER).unwrap(), "1");
    h.call(
        Method::PUT,
        "/v1/namespaces/default/checkpoints/c",
        Some(r#"{"position": "1"}"#),
    )
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    h.call(
        Method::PUT,
        "/v1/namespaces/new-one",
        Some(&whole_config(json!({}))),
    )
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    h.post(
        "/v1/namespaces/default/claims",
        r#"{"id": "s-1", "owner": "w", "lease_ms": 1000}"#,
    )
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    // Reads still work, and nothing was marked.
    assert_eq!(h.check(&["s-1", "s-2"]).await, ["new", "new"]);
    h.faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(h.mark(&["s-1", "s-2"], None).await, ["new", "new"]);
}

#[tokio::test]
async fn damaged_store_is_500() {
    let h = Harness::new();
    h.faults
        .corrupt_meta
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.get("/v1/namespaces/default/checkpoints/c")
        .await
        .assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_at_once() {
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
    // Wait until the first request is inside the store, holding the only permit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.faults.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    let a = h.post(MARK, r#"{"ids": ["shed-1"]}"#).await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shed, not queued"
    );
    // Health and metrics are not admission-controlled.
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains("oncelyd_requests_shed_total 1"),
        "{metrics}"
    );
    h.faults.release_writes();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    // The permit is back: requests pass again; the shed one marked nothing.
    assert_eq!(h.check(&["held-1", "shed-1"]).await, ["duplicate", "new"]);
}

/// A tracker call that outlasts `tracker_timeout` is answered 504
/// `deadline_exceeded` at the deadline, and goes on: what it marks stands, and the
/// owner's retry gets those marks back as `new`, `replayed: true`. Nothing that
/// landed is hidden by the late answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_tracker_call_answers_504_and_hides_no_mark() {
    let timeout = Duration::from_millis(300);
    let h = Harness::with(
        Limits {
            tracker_timeout: timeout,
            ..Limits::default()
        },
        &[],
    );
    h.faults.hold_writes();
    let body = r#"{"ids": ["late-1", "late-2"], "owner": "delivery-7"}"#;
    let started = std::time::Instant::now();
    let a = h.post(MARK, body).await;
    let took = started.elapsed();
    a.assert_error(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(3),
        "answered after {took:?}"
    );
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("tracker_timeout") && message.contains("same owner token"),
        "{message}"
    );
    assert_eq!(a.headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert_eq!(
        h.faults.held.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the call still waits in the store"
    );

    h.faults.release_writes();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = h.get("/metrics").await.text;
        if metrics.contains("oncelyd_tracker_calls_late_total 1") {
            assert!(
                metrics.contains(
                    "oncelyd_http_requests_total{method=\"POST\",route=\"/v1/namespaces/{ns}/check-and-mark\",status=\"504\"} 1"
                ),
                "{metrics}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the late call never finished:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = h.post(MARK, body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json()["results"],
        json!([
            {"id": "late-1", "verdict": "new", "replayed": true},
            {"id": "late-2", "verdict": "new", "replayed": true},
        ]),
        "the owner's retry learns that the late call marked both"
    );
    assert_eq!(h.mark(&["late-1"], None).await, ["duplicate"]);
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::new();
    let a = h.get("/healthz").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let a = h.get("/readyz").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"status": "ready"}))
    );
    h.state.set_ready(false);
    h.get("/readyz")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    // Once the tracker is closed, calls answer 503 rather than a conflict.
    let tracker = h.tracker().clone();
    tokio::task::spawn_blocking(move || tracker.close())
        .await
        .unwrap()
        .unwrap();
    h.post(MARK, r#"{"ids": ["late"]}"#)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
}

#[tokio::test]
async fn metrics_have_the_expected_families() {
    let h = Harness::new();
    h.mark(&["m-1", "m-2", "m-3"], None).await;
    h.mark(&["m-1", "m-4"], Some("w")).await;
    h.mark(&["m-4"], Some("w")).await;
    h.check(&["m-1", "m-9"]).await;
    h.get("/nowhere").await;
    let a = h.get("/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = a.text;
    for needle in [
        "# TYPE oncelyd_http_requests_total counter",
        r#"oncelyd_http_requests_total{method="POST",route="/v1/namespaces/{ns}/check-and-mark",status="200"} 3"#,
        r#"oncelyd_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        "# TYPE oncelyd_http_request_duration_seconds histogram",
        r#"oncelyd_http_request_duration_seconds_count{method="POST",route="/v1/namespaces/{ns}/check",outcome="ok"} 1"#,
        r#"oncelyd_http_request_duration_seconds_count{method="GET",route="unmatched",outcome="client_error"} 1"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check_and_mark",verdict="new"} 4"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check_and_mark",verdict="duplicate"} 1"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check_and_mark",verdict="replayed"} 1"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check",verdict="duplicate"} 1"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check",verdict="new"} 1"#,
        r#"oncelyd_ids_total{namespace="default",protocol="http",op="check",verdict="in_progress"} 0"#,
        r#"oncelyd_ids_total{namespace="default",protocol="resp",op="check_and_mark",verdict="new"} 0"#,
        "# TYPE oncelyd_namespace_fill_ratio gauge",
        r#"oncelyd_namespace_fill_ratio{namespace="default"}"#,
        "# TYPE oncelyd_namespace_estimated_fp_ratio gauge",
        r#"oncelyd_namespace_estimated_fp_ratio{namespace="default"}"#,
        r#"oncelyd_namespace_target_fp_ratio{namespace="default"} 0.0001"#,
        r#"oncelyd_namespace_generations{namespace="default"} 1"#,
        r#"oncelyd_namespace_ids{namespace="default"} 4"#,
        r#"oncelyd_namespace_open_ids{namespace="default"} 4"#,
        r#"oncelyd_namespace_generation_capacity{namespace="default"} 100000"#,
        r#"oncelyd_namespace_memory_bytes{namespace="default"}"#,
        "oncelyd_requests_shed_total 0",
        "oncelyd_requests_in_flight 1",
        "oncelyd_storage_failing 0",
        "oncelyd_storage_write_errors_total 0",
        "oncelyd_ready 1",
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="acquired"} 0"#,
        r#"oncelyd_claims_ended_total{namespace="default",protocol="http",outcome="completed"} 0"#,
        r#"oncelyd_namespace_charged_bytes{namespace="default"}"#,
        "# TYPE oncelyd_build_info gauge",
        &format!(
            r#"oncelyd_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
        "oncelyd_connections_max 4096",
        "oncelyd_ticks_failed_total 0",
        "oncelyd_filter_charged_bytes ",
        "oncelyd_filter_allocated_bytes ",
        "oncelyd_namespaces 1",
        "oncelyd_connections_open 0",
        "oncelyd_connection_cap_reached_total 0",
        r#"oncelyd_connections_closed_total{reason="idle_timeout"} 0"#,
        "oncelyd_tracker_calls_late_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // A check marks nothing, so it never replays: no such series.
    assert!(!text.contains(r#"op="check",verdict="replayed""#), "{text}");
    // The process's own figures, under the names every Prometheus client gives them
    // (no prefix), on Linux.
    if cfg!(target_os = "linux") {
        for family in [
            "process_cpu_seconds_total counter",
            "process_open_fds gauge",
            "process_max_fds gauge",
            "process_virtual_memory_bytes gauge",
            "process_resident_memory_bytes gauge",
            "process_start_time_seconds gauge",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family}\n")),
                "missing {family:?} in\n{text}"
            );
        }
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_resident_memory_bytes") > f64::from(1 << 20));
        assert!(value("process_start_time_seconds") > 1.6e9);
    }
    // No ratio without `_ratio`: every namespace gauge between 0 and 1 says so.
    for l in text
        .lines()
        .filter(|l| l.starts_with("# TYPE oncelyd_namespace_"))
    {
        let family = l.split(' ').nth(2).unwrap();
        assert!(
            !family.contains("fp") || family.ends_with("_ratio"),
            "{family} is a ratio not named _ratio"
        );
    }
    // docs/metrics.md describes exactly the families served (disk_bytes is absent
    // with memory durability, as here, filter_budget_bytes for a tracker with no
    // budget, as this one, and the store's families until the ticker, which this
    // harness has not, first probes it).
    let doc = include_str!("../../docs/metrics.md");
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for family in &served {
        assert!(
            doc.contains(&format!("| `{family}` |")),
            "{family} undocumented"
        );
    }
    for line in doc.lines().filter(|l| l.starts_with("| `oncelyd_")) {
        let family = line.split('`').nth(1).unwrap();
        assert!(
            served.contains(&family)
                || family == "oncelyd_disk_bytes"
                || family == "oncelyd_filter_budget_bytes"
                || family.starts_with("oncelyd_store_"),
            "{family} documented but not served"
        );
    }
}

#[tokio::test]
async fn latency_buckets_resolve_single_id_requests_and_refusals_are_apart() {
    let h = Harness::with(Limits::default(), &["a-token-of-sixteen+"]);
    let auth = [("authorization", "Bearer a-token-of-sixteen+")];
    for i in 0..20 {
        let body = format!(r#"{{"ids": ["lat-{i}"]}}"#);
        let a = h.send(Method::POST, MARK, Some(&body), &auth).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // Refused at once: its own series, so it cannot pull the 200s' percentiles.
    let a = h
        .send(Method::POST, MARK, Some(r#"{"ids": ["x"]}"#), &[])
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let text = h.send(Method::GET, "/metrics", None, &auth).await.text;
    let series = r#"method="POST",route="/v1/namespaces/{ns}/check-and-mark""#;
    for needle in [
        format!("oncelyd_http_request_duration_seconds_count{{{series},outcome=\"ok\"}} 20"),
        format!(
            "oncelyd_http_request_duration_seconds_count{{{series},outcome=\"client_error\"}} 1"
        ),
        format!("oncelyd_http_requests_total{{{series},status=\"401\"}} 1"),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    // Buckets below 100 µs, the old lowest, where single-ID requests fall.
    let bound = |le: &str| {
        let needle = format!(
            "oncelyd_http_request_duration_seconds_bucket{{{series},outcome=\"ok\",le=\"{le}\"}} "
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&needle))
            .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"));
        line[needle.len()..].parse::<u64>().unwrap()
    };
    for le in ["1e-06", "2.5e-06", "5e-06", "1e-05", "2.5e-05", "5e-05"] {
        assert!(bound(le) <= 20);
    }
    assert_eq!(bound("10"), 20);
}

#[tokio::test]
async fn claims_are_counted_by_outcome() {
    let h = Harness::new();
    let claims = "/v1/namespaces/default/claims";
    let claim = |id: &'static str, owner: &'static str, lease_ms: u64| {
        let body = json!({"id": id, "owner": owner, "lease_ms": lease_ms}).to_string();
        let h = &h;
        async move { h.post(claims, &body).await.json()["verdict"].clone() }
    };
    assert_eq!(claim("c-1", "w1", 5_000).await, "acquired");
    assert_eq!(claim("c-1", "w2", 5_000).await, "in_progress");
    assert_eq!(claim("c-1", "w1", 5_000).await, "acquired"); // renewed
    h.post(
        "/v1/namespaces/default/claims/complete",
        r#"{"id": "c-1", "owner": "w1"}"#,
    )
    .await;
    assert_eq!(claim("c-1", "w2", 5_000).await, "duplicate");
    assert_eq!(claim("c-2", "w1", 5_000).await, "acquired");
    h.post(
        "/v1/namespaces/default/claims/release",
        r#"{"id": "c-2", "owner": "w1"}"#,
    )
    .await;
    assert_eq!(claim("c-3", "w1", 5_000).await, "acquired");
    // w1 dies; its lease runs out; w2 takes the work over.
    h.clock.advance(Duration::from_secs(6));
    assert_eq!(claim("c-3", "w2", 5_000).await, "acquired");
    // A refused end (not the holder) is not counted.
    h.post(
        "/v1/namespaces/default/claims/complete",
        r#"{"id": "c-3", "owner": "w1"}"#,
    )
    .await
    .assert_error(StatusCode::CONFLICT, "conflict");
    let text = h.get("/metrics").await.text;
    for needle in [
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="acquired"} 3"#,
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="renewed"} 1"#,
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="taken_over"} 1"#,
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="in_progress"} 1"#,
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="duplicate"} 1"#,
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="probable_duplicate"} 0"#,
        r#"oncelyd_claims_ended_total{namespace="default",protocol="http",outcome="completed"} 1"#,
        r#"oncelyd_claims_ended_total{namespace="default",protocol="http",outcome="released"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

/// `/readyz` needs no token, so it tells an unauthenticated caller only that the
/// store fails, never the store's error (which names the data directory's files, or
/// the database's servers): that is for a caller presenting a valid token, and for
/// the log.
#[tokio::test]
async fn readiness_shows_the_stores_error_only_to_a_caller_with_a_token() {
    let h = Harness::with(Limits::default(), &["s3cret-token-0123"]);
    h.faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = h
        .send(
            Method::POST,
            MARK,
            Some(r#"{"ids": ["f-1"]}"#),
            &[("authorization", "Bearer s3cret-token-0123")],
        )
        .await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-token-0123456")],
        vec![("authorization", "s3cret-token-0123")],
    ] {
        let a = h.send(Method::GET, "/readyz", None, &headers).await;
        a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("the store's writes are failing"),
            "{message}"
        );
        for secret in ["/injected", "no space left on device", "I/O"] {
            assert!(!message.contains(secret), "{headers:?}: {message}");
        }
    }
    let a = h
        .send(
            Method::GET,
            "/readyz",
            None,
            &[("authorization", "Bearer s3cret-token-0123")],
        )
        .await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert!(a.text.contains("no space left on device"), "{}", a.text);
    assert!(a.text.contains("/injected"), "{}", a.text);
}

#[tokio::test]
async fn failing_storage_makes_the_daemon_unready_until_a_write_succeeds() {
    let h = Harness::new();
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    h.faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.post(MARK, r#"{"ids": ["f-1"]}"#)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    // Unready, saying why, but not the store's error (it names files and servers)
    // to a caller without a token; alive all the same (a restart would not free the
    // disk).
    let a = h.get("/readyz").await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert!(
        a.text.contains("the store's writes are failing"),
        "{}",
        a.text
    );
    assert!(!a.text.contains("no space left on device"), "{}", a.text);
    assert!(!a.text.contains("/injected"), "{}", a.text);
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    let text = h.get("/metrics").await.text;
    assert_eq!(metric(&text, "oncelyd_storage_failing"), 1.0);
    assert_eq!(metric(&text, "oncelyd_ready"), 0.0);
    assert!(metric(&text, "oncelyd_storage_write_errors_total") >= 1.0);

    // The disk is freed, but no client writes: the daemon's ticker, a second later,
    // writes the clock's heartbeat, and that write brings readiness back.
    h.faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    h.clock.advance(Duration::from_secs(2));
    let tracker = h.tracker().clone();
    tokio::task::spawn_blocking(move || tracker.tick())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.get("/readyz").await.status, StatusCode::OK);
    let text = h.get("/metrics").await.text;
    assert_eq!(metric(&text, "oncelyd_storage_failing"), 0.0);
    assert_eq!(metric(&text, "oncelyd_ready"), 1.0);
    assert_eq!(h.mark(&["f-1"], None).await, ["new"]);
}

/// Every route of the contract, as (method, path pattern).
const ROUTES: [(&str, &str); 17] = [
    ("post", "/v1/namespaces/{ns}/check-and-mark"),
    ("post", "/v1/namespaces/{ns}/check"),
    ("post", "/v1/namespaces/{ns}/claims"),
    ("post", "/v1/namespaces/{ns}/claims/complete"),
    ("post", "/v1/namespaces/{ns}/claims/release"),
    ("put", "/v1/namespaces/{ns}"),
    ("patch", "/v1/namespaces/{ns}"),
    ("get", "/v1/namespaces/{ns}"),
    ("delete", "/v1/namespaces/{ns}"),
    ("get", "/v1/namespaces"),
    ("put", "/v1/namespaces/{ns}/checkpoints/{consumer}"),
    ("get", "/v1/namespaces/{ns}/checkpoints/{consumer}"),
    ("post", "/v1/namespaces/{ns}/forget"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

#[tokio::test]
async fn openapi_document_lists_every_route_and_every_listed_route_is_served() {
    let h = Harness::new();
    let a = h.get("/v1/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head"].contains(&method.as_str()) {
                listed.push((method.clone(), path.clone()));
            }
        }
    }
    listed.sort();
    let mut want: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    // Schemas the handlers name are all defined, and bearer auth is declared.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "MarkRequest",
        "MarkResponse",
        "ErrorResponse",
        "NamespaceView",
        "NamespaceConfig",
        "ClaimResponse",
        "ForgetRequest",
        "ForgetResponse",
        "ErrorCode",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    // The error codes are listed once, as the daemon defines them.
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let defined: Vec<&str> = oncely_client::api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, defined);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let check_and_mark = &paths["/v1/namespaces/{ns}/check-and-mark"]["post"];
    for status in ["200", "400", "401", "404", "413", "503"] {
        assert!(check_and_mark["responses"][status].is_object(), "{status}");
    }

    // Each documented route is really served: no 404 `not_found`, no 405.
    for (method, path) in &listed {
        let uri = path.replace("{ns}", "default").replace("{consumer}", "c1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = [Method::POST, Method::PUT, Method::PATCH]
            .contains(&method)
            .then_some("{}");
        let a = h.call(method.clone(), &uri, body).await;
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        if a.status == StatusCode::NOT_FOUND {
            let v: Value = a.json();
            assert_ne!(v["error"]["code"], "not_found", "{method} {uri}");
        }
    }
}

#[tokio::test]
async fn head_requests_and_odd_methods_do_not_break_anything() {
    let h = Harness::new();
    let req = Request::head("/healthz").body(Body::empty()).unwrap();
    assert_eq!(h.raw(req).await.status, StatusCode::OK);
    let req = Request::builder()
        .method(Method::from_bytes(b"BREW").unwrap())
        .uri("/v1/namespaces")
        .body(Body::empty())
        .unwrap();
    h.raw(req)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let metrics = h.get("/metrics").await.text;
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
}

/// Deterministic junk: random-ish bytes, truncated JSON, deep nesting. None of it may
/// panic the daemon or mark anything.
#[tokio::test]
async fn junk_bodies_are_refused_cleanly() {
    let h = Harness::new();
    let mut bodies: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00".to_vec(),
        b"{\"ids\": [\"\xff\"]}".to_vec(),
        "[".repeat(10_000).into_bytes(),
        b"{\"ids\": null}".to_vec(),
        b"{\"ids\": [null]}".to_vec(),
        b"{\"ids\": [\"a\"], \"ids\": [\"b\"]}".to_vec(),
        b"null".to_vec(),
        b"{\"ids\": [\"\\ud800\"]}".to_vec(),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1_usize, 7, 64, 300] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        bodies.push(junk);
    }
    for body in bodies {
        let req = Request::post(MARK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        let a: Answer = h.raw(req).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{:?}: {}",
            String::from_utf8_lossy(&body),
            a.text
        );
    }
    assert_eq!(h.check(&["a", "b"]).await, ["new", "new"]);
}

#[tokio::test]
async fn put_takes_the_whole_configuration_and_names_every_missing_field() {
    let h = Harness::new();
    let uri = "/v1/namespaces/orders";
    // No body, an empty object, a partial one: 400 naming each missing field, and
    // nothing created.
    for body in [
        None,
        Some("{}"),
        Some(r#"{"generations": 6, "fp_rate": 0.001}"#),
    ] {
        let a = h.call(Method::PUT, uri, body).await;
        a.assert_error(StatusCode::BAD_REQUEST, "missing_fields");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        for field in [
            "generation_capacity",
            "generation_span",
            "exact_generations",
        ] {
            assert!(message.contains(field), "{body:?}: {message}");
        }
        assert_eq!(
            message.contains("generations,"),
            body.is_none_or(|b| b == "{}"),
            "{body:?}: {message}"
        );
    }
    h.get(uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");

    // Created whole; a partial PUT then changes nothing (it used to reset the
    // missing fields to their defaults).
    let six = whole_config(json!({"generations": 6, "exact_generations": 3}));
    assert_eq!(
        h.call(Method::PUT, uri, Some(&six)).await.status,
        StatusCode::CREATED
    );
    h.call(Method::PUT, uri, Some(r#"{"fp_rate": 0.01}"#))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "missing_fields");
    let config = h.get(uri).await.json()["config"].clone();
    assert_eq!(config["generations"], 6);
    assert_eq!(config["exact_generations"], 3);
    assert_eq!(config["fp_rate"], 1e-4);

    // Fields each in range that do not fit together: 409, and nothing changed.
    let a = h
        .call(
            Method::PUT,
            uri,
            Some(&whole_config(
                json!({"generations": 2, "exact_generations": 3}),
            )),
        )
        .await;
    a.assert_error(StatusCode::CONFLICT, "config_conflict");
    assert!(a.text.contains("exact_generations"), "{}", a.text);
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/huge",
            Some(&whole_config(
                json!({"generations": 1024, "generation_capacity": 1_000_000_000_000_u64}),
            )),
        )
        .await;
    a.assert_error(StatusCode::CONFLICT, "config_conflict");
    assert_eq!(h.get(uri).await.json()["config"], config);
    h.get("/v1/namespaces/huge")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
}

#[tokio::test]
async fn patch_changes_only_the_fields_given() {
    let h = Harness::new();
    let uri = "/v1/namespaces/orders";
    h.call(Method::PATCH, uri, Some(r#"{"generations": 6}"#))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.get(uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
    h.call(Method::PUT, uri, Some(&whole_config(json!({}))))
        .await;
    let before = h.get(uri).await.json()["config"].clone();

    let a = h
        .call(
            Method::PATCH,
            uri,
            Some(r#"{"generations": 6, "generation_span": "10m"}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let mut want = before.clone();
    want["generations"] = json!(6);
    want["generation_span"] = json!("10m");
    assert_eq!(a.json()["config"], want);
    assert_eq!(h.get(uri).await.json()["config"], want);

    // Absent and null fields are kept; an empty PATCH changes nothing.
    for body in ["{}", r#"{"fp_rate": null, "generations": null}"#] {
        let a = h.call(Method::PATCH, uri, Some(body)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["config"], want, "{body}");
    }
    // Bad fields: 400, a field that does not fit the others as they are: 409.
    for (body, code) in [
        (r#"{"generations": 0}"#, "invalid_config"),
        (r#"{"fp_rate": 1}"#, "invalid_config"),
        (r#"{"bogus": 1}"#, "invalid_config"),
        ("", "invalid_json"),
    ] {
        h.call(Method::PATCH, uri, Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, code);
    }
    let a = h
        .call(Method::PATCH, uri, Some(r#"{"exact_generations": 7}"#))
        .await;
    a.assert_error(StatusCode::CONFLICT, "config_conflict");
    assert_eq!(h.get(uri).await.json()["config"], want);
}

/// A namespace of 4 generations of 10 IDs, 2 of them exact, with 4 live generations
/// (35 IDs marked); its URI.
async fn full_ring(h: &Harness) -> &'static str {
    let uri = "/v1/namespaces/ring";
    let body =
        whole_config(json!({"generations": 4, "generation_capacity": 10, "exact_generations": 2}));
    assert_eq!(
        h.call(Method::PUT, uri, Some(&body)).await.status,
        StatusCode::CREATED
    );
    let ids: Vec<String> = (0..35).map(|i| format!("ring-{i:02}")).collect();
    let a = h
        .post(
            "/v1/namespaces/ring/check-and-mark",
            &json!({ "ids": ids }).to_string(),
        )
        .await;
    assert_eq!(verdicts(&a.json()), vec!["new"; 35]);
    let view = h.get(uri).await.json();
    assert_eq!(view["generations"].as_array().unwrap().len(), 4, "{view}");
    uri
}

#[tokio::test]
async fn dropping_remembered_ids_needs_drop_now() {
    let h = Harness::new();
    let uri = full_ring(&h).await;
    let fewer =
        whole_config(json!({"generations": 2, "generation_capacity": 10, "exact_generations": 2}));
    let before = h.get(uri).await.json();
    // PUT with fewer generations, PATCH with fewer exact tables: 409 saying what
    // would be dropped, and nothing changes.
    let a = h.call(Method::PUT, uri, Some(&fewer)).await;
    a.assert_error(StatusCode::CONFLICT, "would_drop");
    assert!(a.text.contains("2 generation(s)"), "{}", a.text);
    let a = h
        .call(Method::PATCH, uri, Some(r#"{"exact_generations": 1}"#))
        .await;
    a.assert_error(StatusCode::CONFLICT, "would_drop");
    assert!(a.text.contains("1 exact table(s)"), "{}", a.text);
    let after = h.get(uri).await.json();
    assert_eq!(after["config"], before["config"]);
    assert_eq!(after["generations"], before["generations"]);
    let check = "/v1/namespaces/ring/check";
    assert_eq!(
        verdicts(
            &h.post(check, r#"{"ids": ["ring-00", "ring-34"]}"#)
                .await
                .json()
        ),
        ["probable_duplicate", "duplicate"]
    );

    // With drop_now they apply.
    let a = h
        .call(
            Method::PATCH,
            uri,
            Some(r#"{"exact_generations": 1, "drop_now": true}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["config"]["exact_generations"], 1);
    let fewer_now = whole_config(
        json!({"generations": 2, "generation_capacity": 10, "exact_generations": 1, "drop_now": true}),
    );
    let a = h.call(Method::PUT, uri, Some(&fewer_now)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["generations"].as_array().unwrap().len(), 2);
    assert_eq!(
        verdicts(&h.post(check, r#"{"ids": ["ring-00"]}"#).await.json()),
        ["new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_all_land() {
    let h = Harness::new();
    let uri = "/v1/namespaces/orders";
    h.call(Method::PUT, uri, Some(&whole_config(json!({}))))
        .await;
    for round in 0..100_u64 {
        let capacity = 1_000 + round;
        let generations = 4 + round % 50;
        let a = {
            let app = h.app.clone();
            let body = json!({ "generation_capacity": capacity }).to_string();
            tokio::spawn(async move { patch(app, uri, body).await })
        };
        let b = {
            let app = h.app.clone();
            let body = json!({ "generations": generations }).to_string();
            tokio::spawn(async move { patch(app, uri, body).await })
        };
        assert_eq!(a.await.unwrap(), StatusCode::OK);
        assert_eq!(b.await.unwrap(), StatusCode::OK);
        let config = h.get(uri).await.json()["config"].clone();
        assert_eq!(
            (
                config["generation_capacity"].clone(),
                config["generations"].clone()
            ),
            (json!(capacity), json!(generations)),
            "round {round}: one PATCH undid the other"
        );
    }
}

async fn patch(app: axum::Router, uri: &str, body: String) -> StatusCode {
    let req = Request::patch(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    tower::ServiceExt::oneshot(app, req).await.unwrap().status()
}

/// The owner recipe of the README and the OpenAPI document: one fresh token per
/// delivery attempt, reused only to retry the same request.
#[tokio::test]
async fn owner_tokens_identify_delivery_attempts_not_workers() {
    let h = Harness::new();
    let mark = |id: &'static str, owner: &'static str| {
        let body = json!({ "ids": [id], "owner": owner }).to_string();
        let h = &h;
        async move { h.post(MARK, &body).await }
    };
    // Delivery 1 of evt-1; its answer is lost and the same request is retried with
    // the same token: new, replayed (process it: nobody has).
    assert_eq!(
        mark("evt-1", "delivery-1").await.json()["results"][0],
        json!({"id": "evt-1", "verdict": "new", "replayed": false})
    );
    assert_eq!(
        mark("evt-1", "delivery-1").await.json()["results"][0],
        json!({"id": "evt-1", "verdict": "new", "replayed": true})
    );
    // The broker redelivers evt-1 to the same worker: a new delivery, a fresh
    // token: duplicate (skip it).
    assert_eq!(
        mark("evt-1", "delivery-2").await.json()["results"][0],
        json!({"id": "evt-1", "verdict": "duplicate", "replayed": false})
    );
    // What a per-worker token would do instead: the redelivery comes back new,
    // replayed, and the event is processed twice.
    mark("evt-2", "worker-7").await;
    assert_eq!(
        mark("evt-2", "worker-7").await.json()["results"][0]["verdict"],
        "new"
    );
}

/// The document states the limits the server enforces, from the library's own
/// constants and this server's settings, so the two cannot drift apart.
#[tokio::test]
async fn openapi_document_states_every_limit() {
    let limits = Limits {
        max_ids: 5,
        max_body_bytes: 12_345,
        ..Limits::default()
    };
    let h = Harness::with(limits, &[]);
    let doc = h.get("/v1/openapi.json").await.json();
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    for (name, max) in [
        ("EventId", oncely::MAX_ID_LEN),
        ("Owner", oncely::MAX_OWNER_LEN),
        ("Position", oncely::MAX_POSITION_LEN),
        ("Name", oncely::MAX_NAMESPACE_LEN),
    ] {
        assert_eq!(schema(name)["minLength"], 1, "{name}");
        assert_eq!(schema(name)["maxLength"], max, "{name}");
    }
    assert!(
        schema("EventId")["description"]
            .as_str()
            .unwrap()
            .contains("bytes of UTF-8")
    );
    for request in ["MarkRequest", "CheckRequest"] {
        assert_eq!(schema(request)["properties"]["ids"]["maxItems"], 5);
    }
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("at most 12345 bytes")
    );
    let lease = &schema("ClaimRequest")["properties"]["lease_ms"];
    assert_eq!(lease["minimum"], 1);
    assert_eq!(
        lease["maximum"],
        u64::try_from(oncely::MAX_LEASE.as_millis()).unwrap()
    );
    for body in ["NamespacePut", "NamespacePatch"] {
        let fields = &schema(body)["properties"];
        assert_eq!(schema(body)["additionalProperties"], false, "{body}");
        for field in ["generations", "exact_generations"] {
            let f = if fields[field]["maximum"].is_null() {
                // Optional fields: `oneOf` null and the number.
                fields[field]["oneOf"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["maximum"].is_number())
                    .unwrap()
                    .clone()
            } else {
                fields[field].clone()
            };
            assert_eq!(f["minimum"], 1, "{body}.{field}");
            assert_eq!(
                f["maximum"],
                oncely::config::MAX_GENERATIONS,
                "{body}.{field}"
            );
        }
    }
    assert_eq!(
        schema("NamespacePut")["required"],
        json!([
            "generations",
            "generation_capacity",
            "generation_span",
            "fp_rate",
            "exact_generations"
        ])
    );
    // Path parameters are names, with the name rules.
    let params = &doc["paths"]["/v1/namespaces/{ns}/checkpoints/{consumer}"]["put"]["parameters"];
    for p in params.as_array().unwrap() {
        assert_eq!(p["schema"]["$ref"], "#/components/schemas/Name", "{p}");
    }
    // Examples of owners are delivery tokens, never workers.
    assert!(!doc.to_string().contains("worker-"));
}

/// The server refuses what the document's name pattern refuses, and takes what it
/// takes (`.` and `..` included: the library refuses them too).
#[tokio::test]
async fn names_follow_the_documented_rules() {
    let h = Harness::new();
    for (name, ok) in [
        ("a", true),
        ("-", true),
        (".a", true),
        ("..a", true),
        ("a..", true),
        ("...", true),
        (".", false),
        ("..", false),
        ("a b", false),
        ("a*", false),
    ] {
        let uri = format!(
            "/v1/namespaces/{}/checkpoints/c",
            name.replace(' ', "%20").replace('*', "%2A")
        );
        let a = h.get(&uri).await;
        if ok {
            a.assert_error(StatusCode::NOT_FOUND, "unknown_namespace");
        } else {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}: {}", a.text);
        }
    }
}

/// One duration grammar: the HTTP API reads `"2 h"` as settings do, and writes
/// it back without the space; what the grammar refuses is a 400 naming the field.
#[tokio::test]
async fn a_span_with_a_space_before_its_unit_reads_as_settings_read_it() {
    let h = Harness::new();
    let a = h
        .call(
            Method::PATCH,
            "/v1/namespaces/default",
            Some(r#"{"generation_span": "2 h"}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        h.get("/v1/namespaces/default").await.json()["config"]["generation_span"],
        "2h"
    );
    for bad in [r#""2  h""#, r#"" 2h""#, r#""2 ""#, r#""2 hours""#] {
        let a = h
            .call(
                Method::PATCH,
                "/v1/namespaces/default",
                Some(&format!(r#"{{"generation_span": {bad}}}"#)),
            )
            .await;
        a.assert_error(StatusCode::BAD_REQUEST, "invalid_config");
        assert!(a.text.contains("generation_span"), "{bad}: {}", a.text);
    }
}

/// The series of a family, without their values: `name{labels}`.
fn series_of(text: &str, family: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect()
}

/// A fuzzing run sends every kind of bad request, with paths, methods and bodies of
/// its choosing: the latency histogram keeps one series per route pattern, method
/// and outcome (ok, client_error, server_error), whatever the statuses, so its
/// lines stay bounded however long the run.
#[tokio::test]
async fn bad_requests_cannot_grow_the_latency_histogram() {
    let h = Harness::with(
        Limits {
            max_body_bytes: 256,
            ..Limits::default()
        },
        &[],
    );
    h.mark(&["fine"], None).await;
    // The scrape's own series (counted once answered) exist from here on.
    h.get("/metrics").await;
    let mut statuses = std::collections::BTreeSet::new();
    let mut lines_after = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            let tag = format!("{round}-{i}");
            let no_json = Request::post(MARK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(format!(r#"{{"ids": ["{tag}"]}}"#)))
                .unwrap();
            let method =
                Method::from_bytes(format!("FUZZ{tag}").replace('-', "X").as_bytes()).unwrap();
            for a in [
                h.post(MARK, &format!(r#"{{"ids": ["{tag}""#)).await,
                h.post(MARK, &format!(r#"{{"ids": [""], "x{tag}": 1}}"#))
                    .await,
                h.post(MARK, &format!(r#"{{"ids": ["{}"]}}"#, "x".repeat(300)))
                    .await,
                h.post(
                    &format!("/v1/namespaces/nope-{tag}/check-and-mark"),
                    r#"{"ids": ["a"]}"#,
                )
                .await,
                h.post(
                    &format!("/v1/namespaces/bad%20{tag}/check"),
                    r#"{"ids": ["a"]}"#,
                )
                .await,
                h.raw(no_json).await,
                h.get(&format!("/fuzz/{tag}?q={i}")).await,
                h.call(method, MARK, None).await,
                h.call(Method::DELETE, MARK, None).await,
            ] {
                assert!(a.status.is_client_error(), "{} {}", a.status, a.text);
                statuses.insert(a.status.as_u16());
            }
        }
        let text = h.get("/metrics").await.text;
        let histogram: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("oncelyd_http_request_duration_seconds"))
            .collect();
        lines_after.push(histogram.len());
        // The check-and-mark route: one series for its answers, one for its
        // refusals, whatever their statuses.
        // (In the order the family holds them, which is a hash map's: sorted here.)
        let mut mark: Vec<String> = series_of(&text, "oncelyd_http_request_duration_seconds_count")
            .into_iter()
            .filter(|s| s.contains(r#"method="POST",route="/v1/namespaces/{ns}/check-and-mark""#))
            .collect();
        mark.sort();
        assert_eq!(
            mark,
            [
                r#"oncelyd_http_request_duration_seconds_count{method="POST",route="/v1/namespaces/{ns}/check-and-mark",outcome="client_error"}"#,
                r#"oncelyd_http_request_duration_seconds_count{method="POST",route="/v1/namespaces/{ns}/check-and-mark",outcome="ok"}"#,
            ],
            "{text}"
        );
        for s in series_of(&text, "oncelyd_http_request_duration_seconds_count") {
            assert!(!s.contains("status="), "{s}");
        }
    }
    // Refusals of five different statuses (400, 404, 405, 413, 415) went in ...
    for status in [400, 404, 405, 413, 415] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
    // ... and the histogram holds the few series they share (each 22 buckets, +Inf,
    // sum and count), the same number after every round.
    assert!(
        lines_after.iter().all(|&n| n == lines_after[0]),
        "{lines_after:?}"
    );
    assert!(lines_after[0] <= 8 * 25, "{lines_after:?}");
}

/// `oncelyd_ids_total` and the claim counters carry the namespace, so duplicates per
/// consumer group show; a namespace's series are there from its creation (zeros
/// included) and go with it, whether it is deleted through this daemon or not.
#[tokio::test]
async fn verdicts_are_counted_per_namespace_and_leave_with_it() {
    let h = Harness::new();
    for ns in ["orders", "idle"] {
        let a = h
            .call(
                Method::PUT,
                &format!("/v1/namespaces/{ns}"),
                Some(&whole_config(json!({}))),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    let orders = "/v1/namespaces/orders/check-and-mark";
    for ids in [r#"{"ids": ["o-1", "o-2"]}"#, r#"{"ids": ["o-1"]}"#] {
        assert_eq!(h.post(orders, ids).await.status, StatusCode::OK);
    }
    h.mark(&["d-1"], None).await;
    let claim = json!({"id": "c-1", "owner": "w1", "lease_ms": 5_000}).to_string();
    assert_eq!(
        h.post("/v1/namespaces/orders/claims", &claim).await.status,
        StatusCode::OK
    );
    let text = h.get("/metrics").await.text;
    let ids = |ns: &str, verdict: &str| {
        format!(
            r#"oncelyd_ids_total{{namespace="{ns}",protocol="http",op="check_and_mark",verdict="{verdict}"}}"#
        )
    };
    for needle in [
        format!("{} 2\n", ids("orders", "new")),
        format!("{} 1\n", ids("orders", "duplicate")),
        format!("{} 1\n", ids("default", "new")),
        format!("{} 0\n", ids("default", "duplicate")),
        format!("{} 0\n", ids("idle", "new")),
        r#"oncelyd_claims_total{namespace="orders",protocol="http",outcome="acquired"} 1"#.into(),
        r#"oncelyd_claims_total{namespace="default",protocol="http",outcome="acquired"} 0"#.into(),
        r#"oncelyd_claims_ended_total{namespace="idle",protocol="resp",outcome="released"} 0"#
            .into(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    // Deleted over HTTP: gone from the next scrape.
    let a = h.call(Method::DELETE, "/v1/namespaces/orders", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    // Deleted behind this daemon's back (another daemon on the same database):
    // gone once a scrape no longer finds it.
    h.tracker().delete_namespace("idle").unwrap();
    let text = h.get("/metrics").await.text;
    for gone in [r#"namespace="orders""#, r#"namespace="idle""#] {
        assert!(!text.contains(gone), "{gone} lingers in\n{text}");
    }
    assert!(
        text.contains(&format!("{} 1\n", ids("default", "new"))),
        "{text}"
    );
    // A namespace made again under the name starts from zero.
    let a = h
        .call(
            Method::PUT,
            "/v1/namespaces/orders",
            Some(&whole_config(json!({}))),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(
        h.post(orders, r#"{"ids": ["o-1"]}"#).await.status,
        StatusCode::OK
    );
    let text = h.get("/metrics").await.text;
    assert!(
        text.contains(&format!("{} 1\n", ids("orders", "new"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 0\n", ids("orders", "duplicate"))),
        "{text}"
    );
}
