//! The OpenAPI document: its frame (title, tags, bearer security) here, its paths
//! and schemas from the handlers' `#[utoipa::path]` annotations, collected by the
//! same router that serves them ([`super::api_router`]).

use std::sync::LazyLock;

use axum::body::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{ErrorBody, ErrorResponse};

/// The frame the routes are added to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "oncelyd",
        description = "Oncely's shared dedup authority: check-and-mark event IDs, claims with \
                       leases, checkpoints, and namespace management. Errors are \
                       `{\"error\": {\"code\", \"message\"}}`. When tokens are configured, every \
                       route but /healthz and /readyz needs `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorResponse, ErrorBody)),
    tags(
        (name = "dedup", description = "Check and check-and-mark batches of event IDs"),
        (name = "claims", description = "Leased, exclusive processing rights on an ID"),
        (name = "namespaces", description = "Independent dedup scopes and their statistics"),
        (name = "checkpoints", description = "A consumer's last processed position"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Needed only when the daemon is started with --token (or ONCELY_TOKENS)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, serialised once.
pub(crate) static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    let doc = super::openapi();
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_else(|e| {
        // Cannot happen (the document is plain data), but an error body beats a panic.
        serde_json::json!({"error": {"code": "internal", "message": format!("cannot encode the OpenAPI document: {e}")}})
            .to_string()
            .into_bytes()
    }))
});
