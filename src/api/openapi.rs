//! The OpenAPI description of the API, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they answer with, served at `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::ack::{self, AckRequest};
use super::authorizations::{self, AuthorizationRequest};
use super::error::ErrorBody;
use super::health::{self, StatusBody};
use super::sinks::{self, SinkView};
use super::token_update::{self, TokenUpdateRequest};
use super::tokens::{self, RotateRequest, TokenDetail, TokenSecret};
use crate::domain::{PolicyOverrides, ProviderName, TokenKind, TokenName, TokenState};
use crate::store::consumers::Consumer;
use crate::store::models::Token;

/// The name of the security scheme every `/v1` operation requires.
pub const BEARER_SCHEME: &str = "bearer";

/// The document's skeleton: every operation and the schemas they use.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenwarden",
        description = "Internal API of tokenwarden: token metadata, current secrets and forced rotation \
                       (`Authorization: Bearer <api_key>`), plus health, readiness and metrics (no key). \
                       Every error is JSON `{\"error\": \"<machine code>\", \"message\": \"<human text>\"}`."
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        document,
        tokens::list,
        tokens::show,
        tokens::secret,
        tokens::rotate,
        token_update::update,
        ack::acknowledge,
        sinks::list,
        authorizations::create,
    ),
    components(schemas(
        ErrorBody,
        StatusBody,
        Token,
        TokenSecret,
        RotateRequest,
        TokenUpdateRequest,
        AckRequest,
        Consumer,
        TokenDetail,
        SinkView,
        AuthorizationRequest,
        super::authorizations::Scope,
        crate::oauth::ConsentLink,
        crate::store::grant_owners::AuthorizedAs,
        PolicyOverrides,
        TokenName,
        ProviderName,
        TokenKind,
        TokenState,
    )),
    modifiers(&BearerSecurity),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document; no key needed"),
        (name = "tokens", description = "Tokens, their secrets and forced rotation; an API key needed"),
    )
)]
struct ApiDoc;

/// Adds the bearer-key security scheme the `/v1` operations name.
struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme =
            HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("tw_<lookup>_<secret>").description(Some(
                "An API key from `tokenwarden client add`. Operators may do everything; readers may read \
                 only the tokens they were granted (others answer 404).",
            ));
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(scheme.build()));
    }
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json` (no key): this API's OpenAPI description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json"))
)]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
