//! `POST /v1/tokens/{name}/ack`: a reader granted a token says which version it now uses, so
//! `token show` and `tokenwarden_consumer_version_lag` tell who still runs on an old secret.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorBody;
use super::extract::ApiPath;
use super::{ApiError, AppState};
use crate::domain::{ClientRole, TokenName};
use crate::store::consumers::{self, Consumer};

/// The body of `POST /v1/tokens/{name}/ack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The version the reader now uses (1 to the token's current version).
    #[schema(minimum = 1, example = 3)]
    #[serde(deserialize_with = "whole_number")]
    version: i64,
}

/// An integer as JSON Schema counts one: `3` or `3.0` (a fraction is refused).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_i64() {
        return Ok(value);
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && value.abs() < 9.0e15 => Ok(value as i64),
        _ => Err(serde::de::Error::custom(format!("version must be a whole number, not {number}"))),
    }
}

/// `POST /v1/tokens/{name}/ack` (a reader granted the token): records the version it now uses.
#[utoipa::path(
    post,
    path = "/v1/tokens/{name}/ack",
    tag = "tokens",
    operation_id = "acknowledge_token_version",
    params(("name" = TokenName, Path, description = "The token's name")),
    request_body(content = AckRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (and audited): this reader's entry among the token's consumers", body = Consumer),
        (status = 400, description = "`bad_json` or `bad_path`: an unreadable body or name", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: an operator's key (only a reader granted the token is a consumer)", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token, or a reader not granted it", body = ErrorBody),
        (status = 409, description = "`conflict`: the token never had that version", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body is over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> Result<Json<Consumer>, ApiError> {
    if caller.client.role != ClientRole::Reader {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a reader granted the token acknowledges a version (operators are not consumers)",
        ));
    }
    let name: TokenName = raw.parse().map_err(|_| ApiError::unknown_token(&raw))?;
    let Json(request) = body?;
    let now = state.engine.clock.now();
    let (client_id, client_name) = (caller.client.id.clone(), caller.client.name.to_string());
    let consumer = state
        .store_call(move |conn| consumers::acknowledge(conn, &client_id, &client_name, &name, request.version, now))
        .await?;
    // An old deploy token may be revocable now that this reader moved on.
    state.engine.revocations.notify_one();
    Ok(Json(consumer))
}
