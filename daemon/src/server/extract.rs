//! Extractors whose rejections are [`ApiError`]s, so that axum's own failures (a
//! body over the limit, a bad path segment) answer in the same JSON shape as ours.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, json_error};

/// A request body, kept as bytes and parsed later (on the blocking pool, where the
/// parsed value may borrow from it).
///
/// The `Content-Type` must be absent or JSON (`application/json`, `*/*+json`).
/// `text/plain`, form and multipart bodies are refused with 415: those are the types
/// a browser sends cross-origin without asking first, so refusing them keeps a web
/// page from marking IDs on a daemon it can reach.
#[derive(Debug)]
pub(crate) struct JsonBody(Bytes);

impl JsonBody {
    /// Parses the body; syntax errors answer `invalid_json`, shape errors
    /// `data_code`.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(
        &'a self,
        data_code: &'static str,
    ) -> Result<T, ApiError> {
        // Every body is an object; serde would also read a struct from an array of
        // its fields in order (`[null, null]`), which no schema promises.
        if self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&self.0) {
                    Err(e) => json_error(&e, data_code),
                    Ok(_) => ApiError::bad_request(data_code, "the body must be a JSON object"),
                },
            );
        }
        serde_json::from_slice(&self.0).map_err(|e| json_error(&e, data_code))
    }

    /// The body's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the body is empty (or only whitespace).
    pub(crate) fn is_blank(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(value) = req.headers().get(header::CONTENT_TYPE) {
            let ok = value.to_str().is_ok_and(is_json);
            if !ok {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "the body must be JSON: send Content-Type: application/json or none \
                         (got {:?}; with curl, use --json or -H 'content-type: \
                         application/json')",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                ));
            }
        }
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over the limit of {} bytes (max_body_bytes)",
                        state.limits().max_body_bytes
                    ),
                ))
            }
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_body",
                format!("cannot read the request body: {}", rejection.body_text()),
            )),
        }
    }
}

/// `application/json`, `application/problem+json` and the like, with any
/// parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Path parameters; a segment that does not decode (bad percent-encoding, not UTF-8)
/// answers 400 `invalid_path`.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Self(t)),
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
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
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
