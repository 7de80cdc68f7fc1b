//! JSON error bodies: `{"error": "<machine code>", "message": "<human text>"}`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": "unknown_token", "message": "no token named 'ci'"}))]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `unknown_token`, `unauthorized`, `provider_error`.
    pub error: String,
    /// A sentence for humans.
    pub message: String,
}

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code, e.g. `not_ready`.
    pub code: &'static str,
    /// A sentence for humans.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 404 for a token that does not exist (or that the caller may not know about).
    pub fn unknown_token(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_token", format!("no token named '{name}'"))
    }

    /// 500 for a fault in tokenwarden itself; the details are logged, not answered.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "tokenwarden failed; see its log")
    }

    /// 503: the store did not answer; the request changed nothing.
    pub fn store_unavailable(err: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store is unavailable: {err}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { what: "token", name } => Self::unknown_token(&name),
            StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } | StoreError::InvalidInput(_) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string())
            }
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            other => Self::store_unavailable(other),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request bodies are limited to 64 KiB");
        }
        Self::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(rejection) => Self::from(rejection),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ),
            other => Self::new(StatusCode::BAD_REQUEST, "bad_json", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_server_error() {
            tracing::error!(error = %rejection.body_text(), "a route's path parameters do not fit its handler");
            return Self::internal();
        }
        Self::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.code.to_owned(), message: self.message });
        (self.status, body).into_response()
    }
}
