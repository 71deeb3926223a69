//! The HTTP face's router: every route with its OpenAPI description, and the
//! layers around them.

use axum::Router;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::openapi as document;
use super::{AppState, Limits, gate, routes};

/// Every route, registered together with its OpenAPI description.
pub(super) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(document::ApiDoc::openapi())
        .routes(routes!(routes::check_and_mark))
        .routes(routes!(routes::check))
        .routes(routes!(routes::forget))
        .routes(routes!(routes::claim))
        .routes(routes!(routes::complete))
        .routes(routes!(routes::release))
        .routes(routes!(
            routes::put_namespace,
            routes::patch_namespace,
            routes::get_namespace,
            routes::delete_namespace
        ))
        .routes(routes!(routes::list_namespaces))
        .routes(routes!(routes::put_checkpoint, routes::get_checkpoint))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::openapi_json))
}

/// The OpenAPI document of every route [`app`] serves, as generated from the code.
/// (`/v1/openapi.json` adds the limits of the running server: see [`openapi_json`].)
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    document::add_refusals(&mut doc);
    doc
}

/// The OpenAPI document a server with these limits serves at `/v1/openapi.json`.
#[must_use]
pub fn openapi_json(limits: Limits) -> serde_json::Value {
    document::document(limits)
}

/// The daemon's HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    router
        // Both must come after the routes: they wrap what exists.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            tracing::error!("a request panicked");
            ApiError::internal("the request failed unexpectedly").into_response()
        }))
        .with_state(state)
}
