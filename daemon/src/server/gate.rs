//! The one middleware every request passes through, before any route: it gives the
//! request its ID, counts and times it ([`super::metrics`]), then applies the
//! browser guard ([`super::guard`]) and the bearer token ([`super::auth`]), in that
//! order, so a refusal is counted like any answer and a foreign page learns nothing
//! of tokens.
//!
//! **Request IDs.** A request's ID is its `X-Request-Id` header when the client sent
//! a sane one (1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters, no quote or
//! backslash), so that a caller's or a proxy's ID follows the call into this log;
//! otherwise one is made (32 random hexadecimal digits). The answer carries it back
//! in `X-Request-Id`, and every log line written while the request is handled (the
//! tracker call on the blocking pool included) carries it, as the `request` span's
//! `request_id`.
//!
//! From the first stop request on (the daemon is no longer ready), every answer
//! carries `Connection: close`, and hyper closes its connection once it is written:
//! a client learns from the answer itself to send its next request on a new
//! connection (to this daemon while it still listens, or to another), instead of
//! on a keep-alive connection that the listener's close would cut while the request
//! is on its way. (A connection with no request under way is closed by the drain,
//! see `connection`.)
//!
//! One middleware rather than three: each `from_fn` layer boxes its future and
//! clones the rest of the stack per request. Folding them saved 5,300 of a single-ID
//! check-and-mark's 57,400 instructions (`benches/callgrind.sh`; README, "Single-ID
//! requests").

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::metrics::Route;
use super::{AppState, auth, guard};

/// The header a request's ID comes in and goes back in.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request ID taken from a client; a longer one is replaced.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's ID: the client's `X-Request-Id` if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID)
        && sane_request_id(given.as_bytes())
    {
        return given.clone();
    }
    let made = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&made).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters other than `"` and `\`:
/// nothing that could break a log line, in text or in JSON.
fn sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

pub(crate) async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    // Sane by construction: visible ASCII.
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    let mut response = handle(state, req, next).instrument(span).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

async fn handle(state: AppState, req: Request, next: Next) -> Response {
    let route = Route::of(&req);
    let handled = route.handles(req.method());
    let timed = state.metrics().begin(&req, route);
    let refused = guard::check(&state, req.method(), req.headers(), handled)
        .and_then(|()| auth::check(&state, req.uri().path(), req.headers()));
    let mut response = match refused {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    if !state.is_ready() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    timed.end(state.failures(), response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_when_sane_and_replaced_otherwise() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
            request_id(&h)
        };
        for kept in [
            &b"abc-123"[..],
            b"01HZX/trace:span=1",
            &[b'x'; MAX_REQUEST_ID_LEN],
        ] {
            assert_eq!(with(kept).as_bytes(), kept);
        }
        for replaced in [
            &b""[..],
            b"has space",
            b"quote\"d",
            b"back\\slash",
            b"tab\there",
            &[b'x'; MAX_REQUEST_ID_LEN + 1],
            "caf\u{e9}".as_bytes(),
        ] {
            let made = with(replaced);
            assert_ne!(made.as_bytes(), replaced);
            assert_eq!(made.len(), 32, "{made:?}");
            assert!(
                made.as_bytes().iter().all(u8::is_ascii_hexdigit),
                "{made:?}"
            );
        }
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(a, b, "made IDs differ");
    }
}
