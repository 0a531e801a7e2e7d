//! The OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Each handler carries its own `#[utoipa::path]` and each body its own schema, derived
//! from the types that serialize it, so the document changes with the code. A test holds
//! it to the router: every route the router has must be here with its error answers.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;

use super::error::ErrorBody;
use super::routes::{self, PingBody, PresenceBody, QueryBody, QueryRequest};

/// The document: every route of the API and the operations routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "presence",
        description = "Who is online now, and when everyone else was last seen."
    ),
    paths(
        routes::ping,
        routes::offline,
        routes::presence,
        routes::query,
        routes::healthz,
        routes::readyz,
        crate::metrics::render,
        spec,
    ),
    components(schemas(ErrorBody, PresenceBody, PingBody, QueryRequest, QueryBody))
)]
pub struct ApiDoc;

/// `GET /openapi.json` for the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/openapi.json", get(spec))
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This document",
    tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = serde_json::Value))
)]
async fn spec() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOC.get_or_init(ApiDoc::openapi))
}
