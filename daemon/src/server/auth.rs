//! Bearer-token authentication.
//!
//! With no token configured every request passes. With tokens, every route but the
//! health routes (`/healthz`, `/readyz`, which orchestrators probe without
//! credentials) needs `Authorization: Bearer <token>` matching one of them, else 401.
//! Unknown routes answer 401 too, so the route table is not disclosed to strangers.
//! `/readyz` shows why the store fails only to a caller that proves a token
//! ([`proves_token`]): the store's errors name files and servers.

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use oncely_client::api::ErrorCode;

/// Paths reachable without a token.
pub(super) const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];

/// Refuses requests without a valid token when tokens are configured (run by
/// [`super::gate`]).
pub(super) fn check(state: &AppState, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    if !state.requires_token() || PUBLIC.contains(&path) {
        return Ok(());
    }
    match presented(headers) {
        Some(given) if state.authorises(given) => Ok(()),
        Some(_) => Err(unauthorized("the bearer token is not valid")),
        None => Err(unauthorized(
            "this daemon requires Authorization: Bearer <token>",
        )),
    }
}

/// Whether the request proves a token: false when none is configured, since then no
/// caller can. (For what only such callers are shown, such as the store's error
/// on `/readyz`.)
pub(super) fn proves_token(state: &AppState, headers: &HeaderMap) -> bool {
    presented(headers).is_some_and(|given| state.authorises(given))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as RFC 9110 says).
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Compares against every token in constant time, without stopping at the first
/// match, so timing reveals neither the token's bytes nor which token matched. (Only
/// a length mismatch is cheaper, which reveals a token's length at most.)
pub(super) fn matches_any(tokens: &[Box<[u8]>], given: &[u8]) -> bool {
    let mut any = subtle::Choice::from(0);
    for token in tokens {
        any |= token.as_ref().ct_eq(given);
    }
    any.into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        for (value, want) in [
            ("Bearer abc", Some(&b"abc"[..])),
            ("bearer abc", Some(b"abc")),
            ("BEARER  abc ", Some(b"abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearerabc", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(presented(&h), want, "{value}");
        }
    }

    #[test]
    fn any_token_matches() {
        let tokens: Vec<Box<[u8]>> = vec![Box::from(&b"one"[..]), Box::from(&b"two"[..])];
        assert!(matches_any(&tokens, b"one"));
        assert!(matches_any(&tokens, b"two"));
        assert!(!matches_any(&tokens, b"three"));
        assert!(!matches_any(&tokens, b""));
        assert!(!matches_any(&tokens, b"on"));
    }
}
