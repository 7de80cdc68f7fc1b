//! `POST /v1/authorizations`: a consent link for a platform to send its user to — a new OAuth
//! grant stored as `token`, or the re-authorisation of an existing one (the remedy of a
//! `token.needs_attention` webhook whose `remedy` is `reauthorize`).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::domain::{ProviderName, TokenKind, TokenName};
use crate::oauth::{ConsentLink, LinkRequest, create_link};
use crate::store::StoreError;

/// The body of `POST /v1/authorizations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    /// The token to store the grant as; an existing OAuth token of this provider is re-authorised.
    #[schema(value_type = TokenName, example = "alice-gitlab")]
    token: String,
    /// The provider to authorise at.
    #[schema(value_type = ProviderName, example = "gitlab")]
    provider: String,
    /// `gitlab-oauth` or `oauth2` (default: the provider's).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(gitlab-oauth|oauth2)$", example = "gitlab-oauth")]
    kind: Option<TokenKind>,
    /// Scopes to request (default: the provider's `--scope`, for GitLab `api`).
    #[serde(default)]
    #[schema(value_type = Vec<Scope>, max_items = 32, example = json!(["read_api"]))]
    scopes: Vec<String>,
    /// Where the browser goes after the callback, with `?token=NAME&status=connected` (or
    /// `declined`) added; absolute http(s), no fragment.
    #[serde(default)]
    #[schema(
        max_length = 2048,
        pattern = r"^https?://[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]{1,4})?(/[^\s#]*)?$",
        example = "https://platform.example.com/gitlab/connected"
    )]
    return_to: Option<String>,
}

/// One OAuth scope (RFC 6749 §3.3: printable ASCII without spaces, quotes or backslashes).
pub struct Scope;

impl utoipa::PartialSchema for Scope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("One OAuth scope, e.g. `api` or `read_api`."))
            .pattern(Some(r"^[!#-\[\]-~]{1,100}$"))
            .into()
    }
}

impl utoipa::ToSchema for Scope {}

/// `POST /v1/authorizations` (operator): a consent link, valid for `oauth.authorization_timeout`.
#[utoipa::path(
    post,
    path = "/v1/authorizations",
    tag = "tokens",
    operation_id = "create_authorization",
    request_body(content = AuthorizationRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The link to open: the provider's consent page, with state and PKCE challenge", body = ConsentLink),
        (status = 400, description = "`bad_json` or `bad_request`: an unreadable body, a bad name, kind, scope or return_to", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a reader's key (this needs an operator)", body = ErrorBody),
        (status = 404, description = "`unknown_provider`: no such provider", body = ErrorBody),
        (status = 409, description = "`conflict`: the provider cannot authorise (no OAuth application, no authorization endpoint, another kind of provider), or the token exists with another provider or kind, or is being rotated right now", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body is over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<AuthorizationRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ConsentLink>), ApiError> {
    caller.require_operator()?;
    let Json(request) = body?;
    let bad = |field: &str, err: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("{field} is not usable: {err}"))
    };
    let token: TokenName = request.token.parse().map_err(|err| bad("token", &err))?;
    let provider: ProviderName = request.provider.parse().map_err(|err| bad("provider", &err))?;
    let request =
        LinkRequest { token, provider, kind: request.kind, scopes: request.scopes, return_to: request.return_to };
    let links = &state.consent;
    let link = create_link(&state.engine, request, &links.redirect_uri, links.timeout, caller.actor()).await.map_err(
        |err| match err {
            StoreError::NotFound { what: "provider", name } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_provider", format!("no provider named '{name}'"))
            }
            other => ApiError::from(other),
        },
    )?;
    Ok((StatusCode::CREATED, Json(link)))
}
