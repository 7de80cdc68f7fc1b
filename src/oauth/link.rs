//! Making a consent link (`token authorize`, `POST /v1/authorizations`): checks what the link
//! will do, records it (state hashed, verifier sealed) and builds the provider's authorisation
//! URL with the PKCE challenge.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::ExposeSecret;

use super::pkce::{Pkce, new_state, state_hash};
use crate::domain::{ProviderKind, ProviderName, TokenKind, TokenName, TokenState};
use crate::engine::EngineContext;
use crate::store::authorizations::{self, NewAuthorization};
use crate::store::models::ProviderRow;
use crate::store::{DbConnection, StoreError, providers, tokens};

/// Scopes a GitLab authorisation requests when neither the request nor the provider names any.
pub const GITLAB_DEFAULT_SCOPES: &str = "api";

/// What a link is asked for.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    /// The token the grant is stored as (an existing OAuth token is re-authorised).
    pub token: TokenName,
    /// The provider to authorise at.
    pub provider: ProviderName,
    /// `gitlab-oauth` or `oauth2`; by default the provider's.
    pub kind: Option<TokenKind>,
    /// Scopes to request; by default the provider's (`provider add --scope`), for GitLab `api`.
    pub scopes: Vec<String>,
    /// Where the callback sends the browser afterwards (`?token=NAME&status=connected`).
    pub return_to: Option<String>,
}

/// A link ready to hand to a user.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConsentLink {
    /// The token it authorises.
    #[schema(value_type = String)]
    pub token: TokenName,
    /// The provider's consent page, with the request's parameters.
    pub url: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// Checks `request`, records a link valid for `timeout` and returns it. The redirect URI is the
/// provider's registered one (`provider add --redirect-uri`, which GitLab's refreshes must repeat)
/// or else `default_redirect_uri` (`<public_url>/oauth/callback`); `actor` is who asks.
pub async fn create_link(
    context: &EngineContext,
    request: LinkRequest,
    default_redirect_uri: &str,
    timeout: Duration,
    actor: &str,
) -> Result<ConsentLink, StoreError> {
    let now = context.clock.now();
    let expires_at = now + TimeDelta::from_std(timeout).unwrap_or(TimeDelta::minutes(10));
    let return_to = request.return_to.as_deref().map(check_return_to).transpose()?;
    let state = new_state();
    let pkce = Pkce::generate();
    let (cipher, default_redirect_uri, actor) =
        (context.cipher.clone(), default_redirect_uri.to_owned(), actor.to_owned());
    let (url, token) = context
        .store
        .run(move |conn| {
            let plan = plan(conn, &request)?;
            let redirect_uri = plan.provider.redirect_uri.clone().unwrap_or(default_redirect_uri);
            let url = authorize_url(&plan, &redirect_uri, state.expose_secret(), &pkce.challenge)?;
            let new = NewAuthorization {
                state_hash: state_hash(state.expose_secret()),
                token_name: request.token.clone(),
                token_id: plan.token_id,
                provider_id: plan.provider.id.clone(),
                kind: plan.kind,
                scopes: plan.scopes,
                redirect_uri,
                return_to,
                verifier: pkce.verifier,
                requested_by: actor,
                expires_at,
            };
            authorizations::insert(conn, &cipher, &new, now)?;
            Ok((url, request.token))
        })
        .await?;
    Ok(ConsentLink { token, url, expires_at })
}

/// What a checked request will do.
struct Plan {
    provider: ProviderRow,
    kind: TokenKind,
    scopes: String,
    token_id: Option<String>,
    authorize_endpoint: String,
}

/// Checks the provider, the kind and the token the request names.
fn plan(conn: &mut DbConnection, request: &LinkRequest) -> Result<Plan, StoreError> {
    // What the provider or the token is, not what was asked, stops these: conflicts.
    let conflict = |message: String| Err(StoreError::Conflict(message));
    let provider = providers::find_row(conn, &request.provider)?;
    let provider_kind: ProviderKind = provider
        .kind
        .parse()
        .map_err(|err| StoreError::Corrupt(format!("provider '{}' kind: {err}", provider.name)))?;
    let kind = request.kind.unwrap_or(match provider_kind {
        ProviderKind::Gitlab => TokenKind::GitlabOauth,
        ProviderKind::Oauth2 => TokenKind::Oauth2,
    });
    if !kind.is_oauth_grant() {
        return Err(StoreError::InvalidInput(format!(
            "a {kind} is not an OAuth grant; only gitlab-oauth and oauth2 tokens are authorised"
        )));
    }
    tokens::check_compatible(kind, &provider).map_err(|err| match err {
        StoreError::InvalidInput(message) => StoreError::Conflict(message),
        other => other,
    })?;
    if provider.client_id.is_none() {
        return conflict(format!("provider '{}' has no OAuth client id; add it with `provider update`", provider.name));
    }
    let authorize_endpoint = match provider_kind {
        ProviderKind::Gitlab => format!("{}/oauth/authorize", provider.url.clone().unwrap_or_default()),
        ProviderKind::Oauth2 => match &provider.authorization_url {
            Some(url) => url.clone(),
            None => {
                return conflict(format!(
                    "provider '{}' has no authorization endpoint; set it with `tokenwarden provider update {} --authorize-url URL`",
                    provider.name, provider.name
                ));
            }
        },
    };
    let scopes = scopes_of(request, &provider, provider_kind)?;
    let token_id = match tokens::find(conn, &request.token) {
        Ok(token) => {
            if token.provider != request.provider || token.kind != kind {
                return Err(StoreError::Conflict(format!(
                    "token '{}' exists as a {} of provider '{}'; a link re-authorises a token only with its own provider and kind",
                    token.name, token.kind, token.provider
                )));
            }
            if token.state == TokenState::Rotating {
                return Err(StoreError::Conflict(format!(
                    "token '{}' is being rotated right now; ask for the link when the rotation has finished",
                    token.name
                )));
            }
            Some(token.id)
        }
        Err(StoreError::NotFound { .. }) => None,
        Err(err) => return Err(err),
    };
    Ok(Plan { provider, kind, scopes, token_id, authorize_endpoint })
}

/// The scopes to request, space-separated: the request's, else the provider's, else GitLab's
/// default. Each is checked to be a scope token (RFC 6749 §3.3).
fn scopes_of(request: &LinkRequest, provider: &ProviderRow, kind: ProviderKind) -> Result<String, StoreError> {
    check_scope_list(&request.scopes)?;
    let scopes = if !request.scopes.is_empty() {
        request.scopes.join(" ")
    } else if let Some(scopes) = &provider.scopes {
        scopes.clone()
    } else if kind == ProviderKind::Gitlab {
        GITLAB_DEFAULT_SCOPES.to_owned()
    } else {
        String::new()
    };
    check_scopes(&scopes)?;
    Ok(scopes)
}

/// Checks scopes given one by one (`--scope S`…, a JSON list): each one scope, without spaces,
/// and usable as [`check_scopes`] says.
pub fn check_scope_list(scopes: &[String]) -> Result<(), StoreError> {
    if let Some(bad) = scopes.iter().find(|scope| scope.is_empty() || scope.contains(char::is_whitespace)) {
        return Err(StoreError::InvalidInput(format!(
            "scope '{}' is not one scope: give each scope on its own, without spaces",
            bad.escape_debug()
        )));
    }
    check_scopes(&scopes.join(" "))
}

/// Checks space-separated scopes: each 1–100 printable ASCII characters without `"` or `\`.
pub fn check_scopes(scopes: &str) -> Result<(), StoreError> {
    for scope in scopes.split(' ').filter(|s| !s.is_empty()) {
        let usable = scope.len() <= 100 && scope.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if !usable {
            return Err(StoreError::InvalidInput(format!(
                "scope '{}' is not an OAuth scope (printable ASCII without spaces, quotes or backslashes)",
                scope.escape_debug()
            )));
        }
    }
    Ok(())
}

/// Checks `return_to`: an absolute http(s) URL without a fragment (the callback adds
/// `token` and `status` to its query).
pub fn check_return_to(value: &str) -> Result<String, StoreError> {
    let invalid = |why: &str| StoreError::InvalidInput(format!("return_to is not usable: {why}"));
    let parsed = url::Url::parse(value).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("use an absolute http:// or https:// URL"));
    }
    if parsed.fragment().is_some() {
        return Err(invalid("a URL with a fragment cannot carry the result"));
    }
    Ok(parsed.to_string())
}

/// The provider's consent page URL for this request.
fn authorize_url(plan: &Plan, redirect_uri: &str, state: &str, challenge: &str) -> Result<String, StoreError> {
    let mut url = url::Url::parse(&plan.authorize_endpoint).map_err(|err| {
        StoreError::InvalidInput(format!(
            "provider '{}' has an unusable authorization endpoint: {err}",
            plan.provider.name
        ))
    })?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", plan.provider.client_id.as_deref().unwrap_or_default())
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if !plan.scopes.is_empty() {
            query.append_pair("scope", &plan.scopes);
        }
    }
    Ok(url.to_string())
}
