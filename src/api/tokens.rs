//! `/v1/tokens`: list and inspect tokens, read the current secret, force a rotation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::{TokenName, TokenState};
use crate::engine::{ForcedRotation, RotationOutcome, rotate_now};
use crate::store::audit::{self, AuditTarget};
use crate::store::models::Token;
use crate::store::tokens;

/// Parses a token name from the path; an invalid one cannot exist, so it is a 404.
fn token_name(raw: &str) -> Result<TokenName, ApiError> {
    raw.parse().map_err(|_| ApiError::unknown_token(raw))
}

/// `GET /v1/tokens` (operator): every token's metadata.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Token>>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.store_call(tokens::list).await?))
}

/// `GET /v1/tokens/{name}` (operator, or a reader granted it): metadata, never the secret.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Token>, ApiError> {
    let name = token_name(&raw)?;
    caller.require_access(&name)?;
    Ok(Json(state.store_call(move |conn| tokens::find(conn, &name)).await?))
}

/// `GET /v1/tokens/{name}/secret` (operator, or a reader granted it): the current secret, its
/// version and expiry; every read is an audit row naming the client.
pub async fn secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = token_name(&raw)?;
    caller.require_access(&name)?;
    let (cipher, actor) = (state.engine.cipher.clone(), caller.actor().to_owned());
    let (token, secret) = state.store_call(move |conn| tokens::read_current(conn, &cipher, &name)).await?;
    let target = AuditTarget { kind: "token", name: token.name.as_str() };
    let row = audit::row(Utc::now(), &actor, "token.secret_read", target, Some(format!("version={}", token.version)));
    tokio::time::timeout(super::STORE_CALL_TIMEOUT, state.store.record_audit(row))
        .await
        .map_err(|_| ApiError::store_unavailable("the audit log did not answer in time"))??;
    let Some(secret) = secret else {
        let message = format!("token '{}' has no secret yet (its first refresh has not succeeded)", token.name);
        return Err(ApiError::new(StatusCode::CONFLICT, "no_secret", message));
    };
    Ok(Json(json!({
        "name": token.name,
        "version": token.version,
        "secret": secret.expose_secret(),
        "expires_at": token.expires_at,
    })))
}

/// The optional body of a forced rotation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Why, recorded in the audit log.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/tokens/{name}/rotate` (operator): rotates now through the scheduler's lease and
/// answers when it finished — 200 with the new metadata, 409 when the token may not be rotated
/// now, 502 with the provider's error.
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Token>, ApiError> {
    caller.require_operator()?;
    let request = parse_rotate_request(&body?)?;
    let name = token_name(&raw)?;
    if let Some(reason) = request.reason {
        tracing::info!(token = %name, actor = caller.actor(), %reason, "forced rotation requested");
    }
    let result = rotate_now(&state.engine, &name, caller.actor()).await?;
    if let Some(handle) = &state.scheduler {
        handle.wake();
    }
    let token = state.store_call(move |conn| tokens::find(conn, &name)).await?;
    forced_rotation_response(result, token)
}

fn parse_rotate_request(body: &[u8]) -> Result<RotateRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RotateRequest::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not a rotate request: {err}"))
    })
}

/// Maps what a forced rotation did to the contract's statuses.
fn forced_rotation_response(result: ForcedRotation, token: Token) -> Result<Json<Token>, ApiError> {
    let provider_error = |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", message);
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, "conflict", message);
    match result {
        ForcedRotation::Attempted(report) => match report.outcome {
            RotationOutcome::Rotated { .. } => Ok(Json(token)),
            RotationOutcome::Retrying { error, next_attempt_at } => {
                Err(provider_error(format!("{error}; the next attempt is at {next_attempt_at}")))
            }
            RotationOutcome::NeedsAttention { reason, error } => Err(provider_error(format!("{reason}: {error}"))),
            RotationOutcome::LeaseLost => Err(conflict("another worker took the rotation over".to_owned())),
            RotationOutcome::StoreFailed { error } => Err(ApiError::store_unavailable(error)),
        },
        ForcedRotation::CompletedElsewhere { state: TokenState::Active, .. } => Ok(Json(token)),
        ForcedRotation::CompletedElsewhere { state, .. } => Err(provider_error(format!(
            "a rotation already in flight ended in state {state}: {}",
            token.last_error.clone().unwrap_or_default()
        ))),
        ForcedRotation::Refused(state) => {
            Err(conflict(format!("token '{}' cannot be rotated while {state}", token.name)))
        }
    }
}
