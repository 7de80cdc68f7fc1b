//! `/v1/tokens`: list and inspect tokens, read the current secret, force a rotation.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::ErrorBody;
use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState};
use crate::domain::{ClientRole, TokenName, TokenState};
use crate::engine::{ForcedRotation, RotationOutcome, rotate_now};
use crate::store::audit::{self, AuditTarget};
use crate::store::consumers::{self, Consumer};
use crate::store::models::Token;
use crate::store::tokens;

/// Parses a token name from the path; an invalid one cannot exist, so it is a 404.
fn token_name(raw: &str) -> Result<TokenName, ApiError> {
    raw.parse().map_err(|_| ApiError::unknown_token(raw))
}

/// The query of `GET /v1/tokens`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tokens in this state (e.g. `needs_attention`).
    state: Option<TokenState>,
}

/// `GET /v1/tokens` (operator): every token's metadata, optionally only those in one state.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every token's metadata (never a secret), by name", body = Vec<Token>),
        (status = 400, description = "`bad_query`: an unknown query parameter or state", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a reader's key (this needs an operator)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Token>>, ApiError> {
    caller.require_operator()?;
    let mut all = state.store_call(tokens::list).await?;
    if let Some(wanted) = query.state {
        all.retain(|token| token.state == wanted);
    }
    Ok(Json(all))
}

/// `GET /v1/tokens/{name}` (operator, or a reader granted it): metadata, never the secret.
#[utoipa::path(
    get,
    path = "/v1/tokens/{name}",
    tag = "tokens",
    operation_id = "show_token",
    params(("name" = TokenName, Path, description = "The token's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token's metadata (never its secret) and its consumers", body = TokenDetail),
        (status = 400, description = "`bad_path`: the name cannot be decoded (e.g. `%FF`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token, or a reader not granted it", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TokenDetail>, ApiError> {
    let name = token_name(&raw)?;
    let detail = state
        .store_call(move |conn| {
            let token = tokens::find_shown(conn, &name, caller.read_as())?;
            let mut consumers = consumers::of_token(conn, &token.id)?;
            if caller.client.role == ClientRole::Reader {
                consumers.retain(|consumer| consumer.client == caller.client.name.as_str());
            }
            Ok(TokenDetail { token, consumers })
        })
        .await?;
    Ok(Json(detail))
}

/// The body of `GET /v1/tokens/{name}`: the token's metadata and its consumers.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenDetail {
    /// The token's metadata.
    #[serde(flatten)]
    token: Token,
    /// The readers granted it and the version each acknowledged (`POST /v1/tokens/{name}/ack`);
    /// a reader sees only its own entry.
    consumers: Vec<Consumer>,
}

/// The body of `GET /v1/tokens/{name}/secret`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenSecret {
    /// The token's name.
    name: TokenName,
    /// The version of this secret (starts at 1, +1 on every rotation).
    version: i64,
    /// The username to present with the secret (deploy tokens only).
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    /// The current secret: the GitLab token, or for OAuth grants the current access token.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    secret: SecretString,
    /// When this secret stops working.
    expires_at: Option<DateTime<Utc>>,
}

/// Writes a secret into a response body (the one place the API exposes one).
fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// `GET /v1/tokens/{name}/secret` (operator, or a reader granted it): the current secret, its
/// version and expiry; every read is an audit row naming the client.
#[utoipa::path(
    get,
    path = "/v1/tokens/{name}/secret",
    tag = "tokens",
    operation_id = "read_token_secret",
    params(("name" = TokenName, Path, description = "The token's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The current secret; the read is recorded in the audit log", body = TokenSecret),
        (status = 400, description = "`bad_path`: the name cannot be decoded (e.g. `%FF`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token, or a reader not granted it", body = ErrorBody),
        (status = 409, description = "`no_secret`: an OAuth grant whose first refresh has not succeeded", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store or the audit log did not answer", body = ErrorBody),
    )
)]
pub async fn secret(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TokenSecret>, ApiError> {
    let name = token_name(&raw)?;
    let (cipher, actor) = (state.engine.cipher.clone(), caller.actor().to_owned());
    let (token, secret) =
        state.store_call(move |conn| tokens::read_current_as(conn, &cipher, &name, caller.read_as())).await?;
    let target = AuditTarget { kind: "token", name: token.name.as_str() };
    let row = audit::row(Utc::now(), &actor, "token.secret_read", target, Some(format!("version={}", token.version)));
    tokio::time::timeout(super::STORE_CALL_TIMEOUT, state.store.record_audit(row))
        .await
        .map_err(|_| ApiError::store_unavailable("the audit log did not answer in time"))??;
    let Some(secret) = secret else {
        let message = format!("token '{}' has no secret yet (its first refresh has not succeeded)", token.name);
        return Err(ApiError::new(StatusCode::CONFLICT, "no_secret", message));
    };
    Ok(Json(TokenSecret {
        name: token.name,
        version: token.version,
        username: token.username,
        secret,
        expires_at: token.expires_at,
    }))
}

/// The optional body of a forced rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Why, written to the log with the operator's name.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/tokens/{name}/rotate` (operator): rotates now through the scheduler's lease and
/// answers when it finished — 200 with the new metadata, 409 when the token may not be rotated
/// now, 502 with the provider's error.
///
/// The rotation runs on a task of its own, so a client that disconnects (which drops this
/// handler) never cancels it between the provider's answer and the commit. The request waits
/// for it at most two rotation leases (3 minutes with the default 30 s provider timeout); past
/// that it is answered 503 `rotation_in_progress` while the rotation carries on.
#[utoipa::path(
    post,
    path = "/v1/tokens/{name}/rotate",
    tag = "tokens",
    operation_id = "rotate_token",
    params(("name" = TokenName, Path, description = "The token's name")),
    request_body(
        content = Option<RotateRequest>,
        content_type = "application/json",
        description = "Optional; an empty body is the same as `{}`"
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rotated: the token's new metadata (version + 1)", body = Token),
        (status = 400, description = "`bad_json` or `bad_path`: the body or the name cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a reader's key (this needs an operator)", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token", body = ErrorBody),
        (status = 409, description = "`conflict`: paused, needs attention or expired, or another worker took the rotation over", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body is over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal_error`: the rotation task failed; see the daemon's log", body = ErrorBody),
        (status = 502, description = "`provider_error`: the provider refused or failed; the message has its error", body = ErrorBody),
        (status = 503, description = "`rotation_in_progress`: still running when the wait ran out (see GET /v1/tokens/{name}); or `store_unavailable`", body = ErrorBody),
    )
)]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Token>, ApiError> {
    caller.require_operator()?;
    let request = parse_rotate_request(&body?)?;
    let name = token_name(&raw)?;
    if let Some(reason) = request.reason {
        tracing::info!(token = %name, actor = caller.actor(), %reason, "forced rotation requested");
    }
    let result = run_detached(&state, &name, caller.actor()).await?;
    let token = state.store_call(move |conn| tokens::find(conn, &name)).await?;
    forced_rotation_response(result, token)
}

/// Runs the forced rotation on its own task and waits for it at most
/// [`AppState::forced_rotation_wait`]. Dropping the returned future (the client went away)
/// or running out of time detaches the task; it always runs to its commit.
async fn run_detached(state: &AppState, name: &TokenName, actor: &str) -> Result<ForcedRotation, ApiError> {
    let (engine, scheduler) = (state.engine.clone(), state.scheduler.clone());
    let (task_name, actor) = (name.clone(), actor.to_owned());
    let running = state.rotations.enter();
    let task = tokio::spawn(async move {
        let _running = running;
        let result = rotate_now(&engine, &task_name, &actor).await;
        if let Some(handle) = scheduler {
            handle.wake();
        }
        if let Err(err) = &result {
            tracing::warn!(token = %task_name, error = %err, "a forced rotation could not be run");
        }
        result
    });
    match tokio::time::timeout(state.forced_rotation_wait, task).await {
        Ok(Ok(result)) => result.map_err(ApiError::from),
        Ok(Err(err)) => {
            tracing::error!(token = %name, error = %err, "the forced rotation task failed");
            Err(ApiError::internal())
        }
        Err(_) => Err(still_in_progress(name, state.forced_rotation_wait)),
    }
}

/// 503 for a forced rotation that outlived the request's wait; it is still running.
fn still_in_progress(name: &TokenName, waited: Duration) -> ApiError {
    tracing::warn!(token = %name, waited_s = waited.as_secs_f64(), "a forced rotation is still running; answering 503");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "rotation_in_progress",
        format!("rotation still in progress; see GET /v1/tokens/{name}"),
    )
}

/// Reads the optional rotate request: no body and a JSON `null` (which the OpenAPI description
/// allows) both mean `{}`; anything but an object or `null` is `bad_json` — a body of only
/// white space as well (it is not JSON), and a JSON array (serde alone would read it as the
/// struct's fields in order).
fn parse_rotate_request(body: &[u8]) -> Result<RotateRequest, ApiError> {
    let bad_json = |err: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not a rotate request: {err}"))
    };
    if body.is_empty() {
        return Ok(RotateRequest::default());
    }
    match serde_json::from_slice::<serde_json::Value>(body).map_err(|err| bad_json(&err))? {
        serde_json::Value::Null => Ok(RotateRequest::default()),
        object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(|err| bad_json(&err)),
        _ => Err(bad_json(&"it must be a JSON object or null")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_body_null_and_an_empty_object_are_the_same_rotate_request() {
        for body in [&b""[..], b"null", b" null ", b"{}"] {
            let request = parse_rotate_request(body).unwrap_or_else(|err| panic!("{body:?}: {}", err.message));
            assert_eq!(request.reason, None);
        }
        assert_eq!(parse_rotate_request(br#"{"reason":"leak"}"#).unwrap().reason.as_deref(), Some("leak"));
    }

    #[test]
    fn other_bodies_are_bad_json() {
        for body in [&b"[]"[..], b"\"x\"", b"{\"other\":1}", b"nul", b"{", b"\t", b"  \n"] {
            let err = parse_rotate_request(body).unwrap_err();
            assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, "bad_json"), "{body:?}");
        }
    }
}
