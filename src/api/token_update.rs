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

/// The body of `PATCH /v1/tokens/{name}`: the settings to change (at least one); absent ones
/// are kept. The schema states every rule a single field has, so a request it allows is
/// refused only for how its settings meet the token's (409).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct TokenUpdateRequest {
    /// Lifetime requested when the GitLab token is rotated: whole days, `1d` to `365d`.
    #[serde(default, deserialize_with = "present")]
    #[schema(example = "90d", nullable = false, pattern = r"^([1-9]|[1-9][0-9]|[12][0-9][0-9]|3[0-5][0-9]|36[0-5])d$")]
    lifetime: Option<String>,
    /// Minimum margin before expiry, e.g. `10d`, `12h`, `30m` (also accepted as `margin`).
    #[serde(alias = "margin", default, deserialize_with = "present")]
    #[schema(example = "10d", nullable = false, pattern = r"^[0-9]{1,6}[smhd]$")]
    rotate_before: Option<String>,
    /// Rotate when this fraction of the lifetime has passed (0 < F <= 1).
    #[serde(default, deserialize_with = "present")]
    #[schema(example = 0.5, nullable = false, exclusive_minimum = 0.0, maximum = 1.0)]
    rotate_at_fraction: Option<f64>,
    /// The name the token has at GitLab (1 to 255 characters, no control characters).
    #[serde(default, deserialize_with = "present")]
    #[schema(
        example = "tokenwarden: dbt-ci",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    gitlab_name: Option<String>,
}

/// A field that is present must have a value: `null` is refused (absent means "keep").
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A 400 for a request the schema already refuses.
fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Checks what the schema states of each field (the store checks it again; here a refusal is
/// told apart from a conflict with the token).
fn check_fields(change: &TokenChange) -> Result<(), ApiError> {
    if change.is_empty() {
        return Err(bad_request(
            "nothing to change: give lifetime, rotate_before, rotate_at_fraction or gitlab_name".into(),
        ));
    }
    if let Some(lifetime) = change.lifetime {
        crate::config::validate_lifetime(lifetime).map_err(|m| bad_request(format!("lifetime {m}")))?;
    }
    if let Some(fraction) = change.rotate_at_fraction {
        crate::config::validate_fraction(fraction).map_err(|m| bad_request(format!("rotate_at_fraction {m}")))?;
    }
    if let Some(margin) = change.rotate_before
        && margin > HumanDuration::days(999_999)
    {
        return Err(bad_request(format!("rotate_before {margin} is longer than 999999d")));
    }
    if let Some(name) = &change.gitlab_name
        && let Err(message) = tokens::check_gitlab_name(name)
    {
        return Err(bad_request(message));
    }
    Ok(())
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
        (status = 409, description = "`conflict`: the settings do not fit the token (a margin not shorter than its lifetime, a lifetime for an OAuth grant), or it is being rotated right now", body = ErrorBody),
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
    check_fields(&change)?;
    let (defaults, actor) = (state.engine.policy, caller.actor().to_owned());
    let token = state
        .store_call(move |conn| {
            let replan = |token: &Token| replanned(token, &defaults, FIELD_NAMES);
            tokens::update(conn, &name, &change, replan, &actor, Utc::now())
        })
        .await
        .map_err(|err| match err {
            // Every field was checked above: what the store still refuses is how the settings
            // meet the token's kind and policy.
            ApiError { code: "bad_request", message, .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            other => other,
        })?;
    if let Some(scheduler) = &state.scheduler {
        scheduler.wake();
    }
    Ok(Json(token))
}
