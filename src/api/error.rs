//! The one error type of the HTTP layer.
//!
//! Every failure leaves the API as `{"error": "<stable_code>", "message": "<text>"}` with
//! a fitting status. Clients branch on `error`; `message` is for people and may change.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::status::StatusError;
use crate::user::InvalidUserId;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The body of every error answer; the OpenAPI document derives its schema from here.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody<'a> {
    /// A stable code clients branch on, like `invalid_user_id`.
    error: &'a str,
    /// What went wrong, for people; may change.
    message: &'a str,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same error with a header added to its answer (`Retry-After`, say).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Redis did not answer; the client should retry later.
    pub fn redis_unavailable(cause: &redis::RedisError) -> ApiError {
        crate::metrics::redis_error();
        tracing::warn!(error = %cause, "redis unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            "the presence store is unavailable; retry shortly",
        )
    }

    /// The database did not answer.
    pub fn database_unavailable(cause: &anyhow::Error) -> ApiError {
        tracing::warn!(error = format!("{cause:#}"), "database unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the last-seen database is unavailable; retry shortly",
        )
    }

    /// A user id outside the allowed alphabet or length.
    pub fn invalid_user_id(cause: InvalidUserId) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            cause.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> ApiError {
        match e {
            StatusError::Redis(cause) => ApiError::redis_unavailable(&cause),
            StatusError::Database(cause) => ApiError::database_unavailable(&cause),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> ApiError {
        ApiError::redis_unavailable(&e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}
