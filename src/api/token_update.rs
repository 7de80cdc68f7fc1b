//! `PATCH /v1/tokens/{name}`: change a token's policy (or its GitLab name) in place, as
//! `tokenwarden token update` does; the token is re-planned at once and its history unchanged.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorBody;
use super::extract::ApiPath;
use super::{ApiError, AppState};
use crate::config::HumanDuration;
use crate::domain::{PolicyNames, TokenName};
use crate::engine::policy::replanned;
use crate::store::models::Token;
use crate::store::tokens::{self, TokenChange};

/// What the API calls the policy settings in refusals.
const FIELD_NAMES: PolicyNames =
    PolicyNames { lifetime: "lifetime", rotate_before: "rotate_before", rotate_at_fraction: "rotate_at_fraction" };

/// The body of `PATCH /v1/tokens/{name}`: the settings to change; absent ones are kept.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUpdateRequest {
    /// Lifetime requested when the GitLab token is rotated (`1d`..`365d`).
    #[schema(example = "90d")]
    lifetime: Option<String>,
    /// Minimum margin before expiry (also accepted as `margin`).
    #[serde(alias = "margin")]
    #[schema(example = "10d")]
    rotate_before: Option<String>,
    /// Rotate when this fraction of the lifetime has passed (0 < F <= 1).
    #[schema(example = 0.5)]
    rotate_at_fraction: Option<f64>,
    /// The name the token has at GitLab.
    gitlab_name: Option<String>,
}

/// A duration field of the request, or a 400 naming it.
fn duration(field: &str, value: Option<String>) -> Result<Option<HumanDuration>, ApiError> {
    value
        .map(|text| {
            text.parse::<HumanDuration>().map_err(|err| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{field} '{text}' is not a duration: {err}"),
                )
            })
        })
        .transpose()
}

/// `PATCH /v1/tokens/{name}` (operator): changes the policy in place and re-plans at once.
#[utoipa::path(
    patch,
    path = "/v1/tokens/{name}",
    tag = "tokens",
    operation_id = "update_token",
    params(("name" = TokenName, Path, description = "The token's name")),
    request_body(content = TokenUpdateRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed and re-planned: the token's metadata (same version)", body = Token),
        (status = 400, description = "`bad_json`, `bad_path` or `bad_request`: an unreadable body, nothing to change, or a setting out of range", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a reader's key (this needs an operator)", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token", body = ErrorBody),
        (status = 409, description = "`conflict`: the token is being rotated right now", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body is over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    body: Result<Json<TokenUpdateRequest>, JsonRejection>,
) -> Result<Json<Token>, ApiError> {
    caller.require_operator()?;
    let name: TokenName = raw.parse().map_err(|_| ApiError::unknown_token(&raw))?;
    let Json(request) = body?;
    let change = TokenChange {
        lifetime: duration("lifetime", request.lifetime)?,
        rotate_before: duration("rotate_before", request.rotate_before)?,
        rotate_at_fraction: request.rotate_at_fraction,
        gitlab_name: request.gitlab_name,
    };
    let (defaults, actor) = (state.engine.policy, caller.actor().to_owned());
    let token = state
        .store_call(move |conn| {
            let replan = |token: &Token| replanned(token, &defaults, FIELD_NAMES);
            tokens::update(conn, &name, &change, replan, &actor, Utc::now())
        })
        .await?;
    if let Some(scheduler) = &state.scheduler {
        scheduler.wake();
    }
    Ok(Json(token))
}
