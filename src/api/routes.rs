//! The request handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::heartbeat::Beat;
use crate::status::Presence;
use crate::time::{Millis, Rfc3339};
use crate::user::UserId;

type Shared = State<Arc<AppState>>;

/// A user's presence as JSON.
#[derive(Serialize, ToSchema)]
pub struct PresenceBody {
    user_id: String,
    online: bool,
    /// RFC 3339 UTC with milliseconds; `null` for a user never seen.
    #[schema(value_type = Option<String>, format = DateTime)]
    last_seen: Option<Rfc3339>,
}

impl From<Presence> for PresenceBody {
    fn from(p: Presence) -> PresenceBody {
        PresenceBody {
            user_id: p.user.into_string(),
            online: p.online,
            last_seen: p.last_seen.map(Rfc3339),
        }
    }
}

/// The answer to a ping: the new state and when to ping next.
#[derive(Serialize, ToSchema)]
pub struct PingBody {
    #[serde(flatten)]
    presence: PresenceBody,
    next_ping_in_seconds: u64,
}

/// A batch query.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    user_ids: Vec<String>,
}

/// The answer to a batch query, in request order.
#[derive(Serialize, ToSchema)]
pub struct QueryBody {
    users: Vec<PresenceBody>,
}

fn user_from(path: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let Path(raw) = path?;
    UserId::parse(&raw).map_err(ApiError::invalid_user_id)
}

/// The user a write names, once the caller may act for them and the rate limit allows
/// one more write: both checked before Redis is touched.
fn writable_user(
    app: &AppState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<UserId, ApiError> {
    let user = user_from(path)?;
    caller.may_act_for(&user)?;
    app.ping_limiter
        .check(user.as_str(), std::time::Instant::now())
        .map_err(super::limits::rate_limited)?;
    Ok(user)
}

fn presence_of(user: UserId, online: bool, at: Millis) -> PresenceBody {
    PresenceBody::from(Presence {
        user,
        online,
        last_seen: Some(at),
    })
}

/// `POST /v1/users/{user_id}/ping`
#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/ping",
    summary = "Heartbeat: the user is online for the online TTL",
    params(("user_id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 _ - . @")),
    responses(
        (status = 200, description = "the user is online", body = PingBody),
        (status = 400, description = "invalid_user_id or invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: a missing or invalid token", body = ErrorBody),
        (status = 403, description = "forbidden: the token is not this user's", body = ErrorBody),
        (status = 429, description = "rate_limited: see Retry-After", body = ErrorBody),
        (status = 503, description = "redis_unavailable", body = ErrorBody),
    )
)]
pub async fn ping(
    State(app): Shared,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PingBody>, ApiError> {
    let user = writable_user(&app, &caller, path)?;
    let at = app.heartbeats.record(user.clone(), Beat::Ping).await?;
    tracing::debug!(user = %user, at, "ping");
    Ok(Json(PingBody {
        presence: presence_of(user, true, at),
        next_ping_in_seconds: app.ping_interval,
    }))
}

/// `POST /v1/users/{user_id}/offline`
#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/offline",
    summary = "The app closed: the user is offline now, last seen now",
    params(("user_id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 _ - . @")),
    responses(
        (status = 200, description = "the user is offline, last seen now", body = PresenceBody),
        (status = 400, description = "invalid_user_id or invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: a missing or invalid token", body = ErrorBody),
        (status = 403, description = "forbidden: the token is not this user's", body = ErrorBody),
        (status = 429, description = "rate_limited: see Retry-After", body = ErrorBody),
        (status = 503, description = "redis_unavailable", body = ErrorBody),
    )
)]
pub async fn offline(
    State(app): Shared,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PresenceBody>, ApiError> {
    let user = writable_user(&app, &caller, path)?;
    let at = app.heartbeats.record(user.clone(), Beat::Offline).await?;
    tracing::debug!(user = %user, at, "offline");
    Ok(Json(presence_of(user, false, at)))
}

/// `GET /v1/users/{user_id}/presence`
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/presence",
    summary = "A user's presence: online now, and last seen",
    params(("user_id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 _ - . @")),
    responses(
        (status = 200, description = "online now, and last seen", body = PresenceBody),
        (status = 400, description = "invalid_user_id or invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: a missing or invalid token", body = ErrorBody),
        (status = 503, description = "redis_unavailable or database_unavailable", body = ErrorBody),
    )
)]
pub async fn presence(
    State(app): Shared,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PresenceBody>, ApiError> {
    let user = user_from(path)?;
    let mut found = app
        .status
        .read_many(&mut app.redis.clone(), vec![user])
        .await?;
    let one = found.pop().expect("one user asked, one answered");
    Ok(Json(one.into()))
}

/// `POST /v1/presence/query`
#[utoipa::path(
    post,
    path = "/v1/presence/query",
    summary = "The presence of up to --max-batch users, in request order",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "every user asked, in request order", body = QueryBody),
        (status = 400, body = ErrorBody,
            description = "invalid_json, invalid_user_id or batch_too_large"),
        (status = 413, description = "body_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 401, description = "unauthorized: a missing or invalid token", body = ErrorBody),
        (status = 503, description = "redis_unavailable or database_unavailable", body = ErrorBody),
    )
)]
pub async fn query(
    State(app): Shared,
    _caller: Caller,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Json<QueryBody>, ApiError> {
    let Json(request) = body?;
    let users = parse_batch(&request.user_ids, app.max_batch)?;
    let found = app.status.read_many(&mut app.redis.clone(), users).await?;
    Ok(Json(QueryBody {
        users: found.into_iter().map(PresenceBody::from).collect(),
    }))
}

fn parse_batch(raw: &[String], max: usize) -> Result<Vec<UserId>, ApiError> {
    if raw.len() > max {
        let message = format!("a query may name at most {max} users, not {}", raw.len());
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            message,
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, id)| {
            UserId::parse(id).map_err(|e| {
                let message = format!("user_ids[{i}]: {e}");
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_user_id", message)
            })
        })
        .collect()
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    summary = "The process is up",
    responses(
        (status = 200, description = "the process is up", body = serde_json::Value),
    )
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: Redis and the database both answer.
#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Redis and the database answer",
    responses(
        (status = 200, description = "Redis and the database answer", body = serde_json::Value),
        (status = 503, description = "redis_unavailable or database_unavailable", body = ErrorBody),
    )
)]
pub async fn readyz(State(app): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let _: String = redis::cmd("PING")
        .query_async(&mut app.redis.clone())
        .await?;
    let db = Arc::clone(&app.db);
    tokio::task::spawn_blocking(move || db.with_conn(|c| c.query_row("SELECT 1", [], |_| Ok(()))))
        .await
        .map_err(|e| ApiError::database_unavailable(&e.into()))?
        .map_err(|e| ApiError::database_unavailable(&e))?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// Any path the API does not have.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
