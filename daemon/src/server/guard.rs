//! The browser guard: a web page its visitor opens must not be able to mark, claim,
//! complete, release, reconfigure or delete on a daemon the visitor's browser can
//! reach (one on the visitor's own machine, or inside their network).
//!
//! A page can make a browser send a request to any address without asking the
//! server first only when the request is "simple" (the Fetch standard's CORS
//! safelist): method GET, HEAD or POST, and a body with no `Content-Type` (what
//! `fetch` with an `ArrayBuffer` body and `sendBeacon` send) or one of `text/plain`,
//! `application/x-www-form-urlencoded` and `multipart/form-data`. Anything else,
//! `Content-Type: application/json` or the methods PUT, PATCH and DELETE, is first
//! asked about with a CORS preflight (`OPTIONS`), which this daemon never approves:
//! it sends no CORS headers, so the browser never sends the request itself.
//!
//! Hence two rules, checked before authentication and before any work:
//!
//! * **Content type.** POST, PUT and PATCH must declare `Content-Type:
//!   application/json` (or `application/<something>+json`, parameters such as
//!   `; charset=utf-8` allowed); a missing or other type gets 415. DELETE carries no
//!   body and needs no `Content-Type`: a page can only send it after a preflight,
//!   which fails. (A DELETE that declares a type must declare JSON, like the rest.)
//! * **Origin.** A request with an `Origin` header gets 403 unless the origin is in
//!   `allowed_origins` (empty by default), whatever its method: browsers add the
//!   header to every cross-origin request and to same-origin POSTs. The daemon serves
//!   no web pages, so no page is ever of its own origin; and an `Origin` naming the
//!   daemon's own address (`http://127.0.0.1:7070`) is refused like any other, since
//!   a page on a foreign site whose DNS name is rebound to this address sends exactly
//!   that kind of header. To call the daemon from a page of your own (a dashboard
//!   served behind the same reverse proxy, say), list that page's origin.
//!
//! Programs (curl, the typed client, `oncelyd load`) send no `Origin`, and send
//! `Content-Type: application/json` with their bodies (`curl --json` does).

use axum::http::{HeaderMap, Method, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use oncely_client::api::ErrorCode;

/// Refuses requests from foreign origins (403) and state-changing requests without
/// a JSON content type (415), before anything else is done (run by
/// [`super::gate`]).
///
/// `handled` says whether a handler takes the request: only then does its content
/// type matter. A method its route does not answer gets 405, and a path no route
/// matches 404, whatever the type.
pub(super) fn check(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    handled: bool,
) -> Result<(), ApiError> {
    for origin in headers.get_all(header::ORIGIN) {
        let origin = origin.as_bytes();
        if !state.allowed_origins().iter().any(|o| o.matches(origin)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::ForbiddenOrigin,
                format!(
                    "requests from web pages of origin {:?} are not allowed; list the origin \
                     in allowed_origins to allow them",
                    String::from_utf8_lossy(origin)
                ),
            ));
        }
    }
    let needs_json = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    let content_type = headers.get(header::CONTENT_TYPE);
    let declared_json = content_type.is_some_and(|v| v.to_str().is_ok_and(is_json));
    if !handled || declared_json || (content_type.is_none() && !needs_json) {
        return Ok(());
    }
    let got = content_type.map_or_else(
        || "none".to_owned(),
        |v| format!("{:?}", String::from_utf8_lossy(v.as_bytes())),
    );
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
        format!(
            "{method} requests must declare Content-Type: application/json (got {got}); with \
             curl, use --json or -H 'content-type: application/json'; nothing was done"
        ),
    ))
}

/// `application/json`, `application/problem+json` and the like, with any
/// parameters.
pub(crate) fn is_json(content_type: &str) -> bool {
    // Compared in place: this runs on every request, and lowering a copy first was
    // an allocation per request.
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let has_prefix = |p: &str| {
        essence
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    };
    let has_suffix = |p: &str| {
        essence
            .len()
            .checked_sub(p.len())
            .and_then(|at| essence.get(at..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(p))
    };
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > "application/+json".len()
            && has_prefix("application/")
            && has_suffix("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "application/jsonp",
            "text/json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
