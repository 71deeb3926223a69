//! `ceiling`: the daemon's HTTP stack answering check-and-mark without a tracker,
//! for `benches/peers/run.sh`: what single-ID requests cost before any dedup work,
//! so that the tracker's share of each request shows beside `oncelyd` in the same
//! run.
//!
//! What it shares with `oncelyd serve`: the allocator (jemalloc), the runtime
//! (`oncelyd::server::runtime`, with `--worker-threads` as the daemon's), `axum::serve` with `TCP_NODELAY` on
//! every connection, the route `POST /v1/namespaces/{ns}/check-and-mark`, the
//! default body limit (4 MiB), the panic guard, the body read as bytes after a
//! JSON content-type check, parsed into the same wire type
//! ([`oncely_client::api::MarkRequest`], IDs borrowed from the body), the same
//! checks of the ID count (at most 10,000) and of each ID (1 to 256 bytes), and the
//! same answer type ([`MarkResponse`]) written into one buffer: every ID `new`.
//!
//! What it leaves out, and so counts as the daemon's own work beyond the stack:
//! the tracker, the admission permit, the bearer-token and metrics middlewares, and
//! the namespace lookup. It keeps no state, so it answers `new` to repeats too.
//!
//! `ceiling --listen 127.0.0.1:0 [--worker-threads N]` prints `listening on ADDR`
//! once bound, then serves until killed.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use clap::Parser;
use oncely_client::api::{
    ErrorCode, ErrorResponse, MarkRequest, MarkResponse, MarkResult, VerdictName,
};
use tower_http::catch_panic::CatchPanicLayer;

/// As `oncelyd`'s (see daemon/src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The daemon's defaults: `max_ids`, `max_body_bytes`, the longest ID.
const MAX_IDS: usize = 10_000;
const MAX_BODY_BYTES: usize = 4 << 20;
const MAX_ID_BYTES: usize = 256;

/// Bytes of JSON per result, as the daemon guesses them.
const RESULT_BYTES: usize = 96;

/// Serve check-and-mark with the daemon's HTTP stack and no tracker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port, printed once bound).
    #[arg(long, default_value = "127.0.0.1:7071")]
    listen: SocketAddr,

    /// Worker threads of the runtime, as `oncelyd serve --worker-threads` (and
    /// checked by the daemon's rules) [default: one per CPU].
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    json(status, &ErrorResponse::new(code, message), 128)
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn check_and_mark(Path(_ns): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(value) = headers.get(header::CONTENT_TYPE)
        && !value
            .to_str()
            .is_ok_and(|v| v.split(';').next().unwrap_or_default().trim() == "application/json")
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON".into(),
        );
    }
    let request: MarkRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                e.to_string(),
            );
        }
    };
    if request.ids.len() > MAX_IDS {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::TooManyIds,
            format!(
                "{} IDs in one request, over the limit of {MAX_IDS}",
                request.ids.len()
            ),
        );
    }
    if let Some(index) = request
        .ids
        .iter()
        .position(|id| id.is_empty() || id.len() > MAX_ID_BYTES)
    {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidId,
            format!("invalid event id at index {index}"),
        );
    }
    let results: Vec<MarkResult<'_>> = request
        .ids
        .iter()
        .map(|id| MarkResult {
            id: Cow::Borrowed(id.as_ref()),
            verdict: VerdictName::New,
            replayed: false,
            until_ms: None,
        })
        .collect();
    json(
        StatusCode::OK,
        &MarkResponse { results },
        request.ids.len() * RESULT_BYTES + 16,
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    oncely_benches::serve_ceiling(
        "ceiling",
        args.listen,
        args.worker_threads,
        |listener| async move {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = Router::new()
                .route("/v1/namespaces/{ns}/check-and-mark", post(check_and_mark))
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
                .layer(CatchPanicLayer::new());
            axum::serve(listener, app).await
        },
    )
}
