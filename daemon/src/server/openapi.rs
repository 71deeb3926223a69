//! The OpenAPI document: its frame (title, tags, bearer security) here, its paths
//! and schemas from the handlers' `#[utoipa::path]` annotations, collected by the
//! same router that serves them ([`super::api_router`]), and the limits this server
//! was started with patched in ([`document`]).

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::Method;
use oncely_client::api::schema::Name;
use oncely_client::api::{ErrorBody, ErrorResponse};
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::Limits;

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
    // `Name` is only in path parameters, which utoipa does not collect schemas from.
    components(schemas(ErrorResponse, ErrorBody, Name)),
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

/// The document as served: the generated one with this server's limits, which are
/// settings rather than code, patched in: `maxItems` of every `ids` array is
/// `max_ids`, and the description states `max_body_bytes` and
/// `max_body_bytes_in_flight`.
#[must_use]
pub(crate) fn document(limits: Limits) -> Value {
    let mut doc = serde_json::to_value(super::openapi()).unwrap_or_else(|e| {
        // Cannot happen (the document is plain data), but an error body beats a panic.
        serde_json::json!({"error": {"code": "internal", "message": format!("cannot encode the OpenAPI document: {e}")}})
    });
    for request in ["MarkRequest", "CheckRequest", "ForgetRequest"] {
        if let Some(ids) = doc.pointer_mut(&format!("/components/schemas/{request}/properties/ids"))
            && let Some(ids) = ids.as_object_mut()
        {
            ids.insert("maxItems".into(), Value::from(limits.max_ids));
        }
    }
    if let Some(Value::String(description)) = doc.pointer_mut("/info/description") {
        description.push_str(&format!(
            " This server takes at most {} IDs per check, check-and-mark or forget (more: 400 \
             `too_many_ids`) and request bodies of at most {} bytes (more: 413 \
             `payload_too_large`, at once for a declared Content-Length). The bodies being \
             read and handled may hold {} bytes between them: a body over 4 KiB that finds \
             no room within a second is answered 503 `overloaded`, with nothing done.",
            limits.max_ids, limits.max_body_bytes, limits.max_body_bytes_in_flight
        ));
    }
    doc
}

/// [`document`], serialised once per application.
pub(crate) fn document_bytes(limits: Limits) -> Bytes {
    Bytes::from(serde_json::to_vec(&document(limits)).unwrap_or_default())
}

/// The served routes' patterns and the methods each answers, from the OpenAPI router
/// that serves them.
#[derive(Debug)]
pub(crate) struct Routes {
    patterns: Box<[&'static str]>,
    /// Per pattern, in its order: the methods its operations take.
    methods: Box<[Vec<Method>]>,
}

impl Routes {
    pub(crate) fn patterns(&self) -> &[&'static str] {
        &self.patterns
    }

    /// The index of the route `pattern` (as matched), if it is served.
    pub(crate) fn index(&self, pattern: &str) -> Option<u16> {
        self.patterns
            .iter()
            .position(|p| *p == pattern)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Whether the route at `index` answers `method`.
    pub(crate) fn allows(&self, index: u16, method: &Method) -> bool {
        self.methods[usize::from(index)].contains(method)
    }
}

/// The table of served routes, built once per process.
pub(crate) fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let (patterns, methods) = super::openapi()
            .paths
            .paths
            .into_iter()
            .map(|(pattern, item)| {
                let methods = [
                    (item.get.is_some(), Method::GET),
                    (item.post.is_some(), Method::POST),
                    (item.put.is_some(), Method::PUT),
                    (item.patch.is_some(), Method::PATCH),
                    (item.delete.is_some(), Method::DELETE),
                ]
                .into_iter()
                .filter_map(|(has, m)| has.then_some(m))
                .collect::<Vec<_>>();
                // Leaked once per process: a few hundred bytes, for its life, so
                // that labelling a request with its route allocates nothing.
                (&*String::leak(pattern), methods)
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Routes {
            patterns: patterns.into(),
            methods: methods.into(),
        }
    })
}

/// The answers a request can get before any handler runs, from the middleware and
/// the body extractor: added here to every operation they apply to, rather than
/// repeated in each route's annotation.
const REFUSALS: [(&str, &str, Applies); 6] = [
    ("401", "Missing or wrong bearer token", Applies::Secured),
    (
        "403",
        "The request's Origin is not in allowed_origins (browser guard)",
        Applies::All,
    ),
    (
        "408",
        "The body did not arrive within body_read_timeout; nothing was done (the \
         connection is closed)",
        Applies::WithBody,
    ),
    (
        "413",
        "Body over max_body_bytes (a declared Content-Length over it is refused before the \
         body is read); nothing was done (the connection is closed)",
        Applies::WithBody,
    ),
    (
        "415",
        "Content-Type is not application/json",
        Applies::WithBody,
    ),
    (
        "504",
        "deadline_exceeded: the tracker did not answer within tracker_timeout; the call \
         goes on and what it does stands, so retry (with the same owner token) to learn \
         the outcome",
        Applies::TrackerCalls,
    ),
];

/// Which operations a refusal applies to.
#[derive(Clone, Copy)]
enum Applies {
    All,
    /// Every route but the health routes, when tokens are configured.
    Secured,
    /// POST, PUT and PATCH.
    WithBody,
    /// The routes that wait for the tracker under `tracker_timeout`: all but the
    /// health routes and this document.
    TrackerCalls,
}

/// Adds [`REFUSALS`] to `doc`'s operations.
pub(crate) fn add_refusals(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in &mut doc.paths.paths {
        let public = super::auth::PUBLIC.contains(&path.as_str());
        let operations: [(&mut Option<Operation>, bool); 5] = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, false),
        ];
        for (op, takes_body) in operations {
            let Some(op) = op else { continue };
            for (status, description, applies) in REFUSALS {
                let applies = match applies {
                    Applies::All => true,
                    Applies::Secured => !public,
                    Applies::WithBody => takes_body,
                    Applies::TrackerCalls => !public && path != "/v1/openapi.json",
                };
                if applies {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                super::JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorResponse")))
                    .build(),
            )
            .build(),
    )
}
