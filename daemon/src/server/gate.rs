//! The one middleware every request passes through, before any route: it counts and
//! times the request ([`super::metrics`]), then applies the browser guard
//! ([`super::guard`]) and the bearer token ([`super::auth`]), in that order, so a
//! refusal is counted like any answer and a foreign page learns nothing of tokens.
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
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::metrics::Route;
use super::{AppState, auth, guard};

pub(crate) async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
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
