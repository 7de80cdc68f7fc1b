//! The simulated GitLab endpoints tokenwarden calls: token look-up, the three self-rotate
//! endpoints, and the OAuth token endpoint (the refresh grant, and the authorization-code grant
//! with PKCE after the consent page of `consent`) — each with fault injection on its answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::faults::{Fault, FaultTarget};
use super::fields::field;
use super::state::{AccessToken, GitlabState, RefreshError, RotateError, TokenOwner};
use super::{Shared, malformed};

/// The token presented in `PRIVATE-TOKEN` or `Authorization: Bearer`.
pub(super) fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get("private-token").and_then(|v| v.to_str().ok()) {
        return Some(value.to_owned());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// Form fields from the query string and a form-encoded body.
pub(super) fn form_fields(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    fields.extend(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    fields
}

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// GitLab's token JSON.
pub(super) fn token_json(token: &AccessToken, now: chrono::DateTime<chrono::Utc>) -> Value {
    let mut body = json!({
        "id": token.id,
        "name": token.name,
        "revoked": token.revoked,
        "created_at": token.created_at.to_rfc3339(),
        "scopes": token.scopes,
        "user_id": 1,
        "last_used_at": null,
        "active": token.is_active(now),
        "expires_at": token.expires_at.format("%Y-%m-%d").to_string(),
    });
    if token.owner != TokenOwner::Personal {
        body["access_level"] = json!(token.access_level);
    }
    body
}

fn unauthorized() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "invalid_token", "error_description": "Token was revoked. You have to re-authorize from the user."}),
    )
}

/// GitLab's answer to a token that is known and not revoked but past its expiry date.
fn expired() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "invalid_token", "error_description": "Token has expired."}),
    )
}

/// Applies the fault drawn for a request before acting: an error status or a rate limit
/// answers at once; `None` lets the request through.
pub(super) fn answer_before_acting(shared: &Shared, fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::Status { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(json_response(status, json!({"message": format!("{} simulated failure", status.as_u16())})))
        }
        Fault::RateLimited { retry_after_seconds } => {
            shared.block_for(Duration::from_secs(retry_after_seconds));
            let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, json!({"message": "Retry later"}));
            if let Ok(value) = retry_after_seconds.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Some(response)
        }
        Fault::StallBeforeActing { .. } => Some(json_response(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"message": "504 simulated failure: the request waited too long and was not acted on"}),
        )),
        Fault::SlowAfterCommit { .. } | Fault::DropAfterCommit | Fault::Malformed { .. } => None,
    }
}

/// Marks the renewal just performed as one whose answer [`deliver`] will cut off.
fn note_drop(state: &mut GitlabState, fault: Option<Fault>, renewed: bool) {
    if renewed && matches!(fault, Some(Fault::DropAfterCommit)) {
        state.mark_last_renewal_dropped();
    }
}

/// Delivers an answer after acting, slowly, cut off or malformed if the fault says so.
pub(super) async fn deliver(shared: &Arc<Shared>, fault: Option<Fault>, response: Response) -> Response {
    match fault {
        Some(Fault::SlowAfterCommit { delay_ms }) => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            response
        }
        Some(Fault::DropAfterCommit) => {
            shared.with_state(|state| state.stats.dropped_after_commit += 1);
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(Bytes::from_static(b"{\"id\": ")), Err(std::io::Error::other("simulated cut connection"))];
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Some(Fault::Malformed { answer }) => malformed::malform(shared.clone(), answer, response).await,
        _ => response,
    }
}

/// A request's arrival: its `User-Agent` noted, then the simulator's latency.
pub(super) async fn arrive(shared: &Shared, headers: &HeaderMap) {
    if let Some(agent) = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        shared.with_state(|state| state.user_agents.insert(agent.to_owned()));
    }
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Common start of every request: latency, the `User-Agent`, the fault draw, and the
/// `Retry-After` check.
pub(super) async fn begin(shared: &Shared, headers: &HeaderMap, target: FaultTarget) -> Option<Fault> {
    arrive(shared, headers).await;
    if target == FaultTarget::Renewal {
        shared.note_renewal_arrival();
    }
    let fault = shared.next_fault(target);
    if fault.is_some() {
        shared.with_state(|state| state.stats.faults_injected += 1);
    }
    if let Some(Fault::StallBeforeActing { delay_ms }) = fault {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    fault
}

/// `GET /api/v4/personal_access_tokens/self`.
pub async fn look_up(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let fault = begin(&shared, &headers, FaultTarget::Lookup).await;
    if let Some(response) = answer_before_acting(&shared, fault) {
        return response;
    }
    let Some(secret) = presented_token(&headers) else {
        return unauthorized();
    };
    let now = shared.now();
    let response = match shared.with_state(|state| state.look_up(&secret, now)) {
        Some(token) => json_response(StatusCode::OK, token_json(&token, now)),
        None if shared.with_state(|state| state.access_token(&secret).is_some_and(|t| !t.revoked)) => expired(),
        None => unauthorized(),
    };
    deliver(&shared, fault, response).await
}

/// `DELETE /personal_access_tokens/self`: the presented token revokes itself (204), or 401.
pub async fn revoke_self(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let fault = begin(&shared, &headers, FaultTarget::Renewal).await;
    if let Some(response) = answer_before_acting(&shared, fault) {
        return response;
    }
    let now = shared.now();
    let revoked = presented_token(&headers).is_some_and(|secret| shared.with_state(|s| s.revoke_self(&secret, now)));
    let response = if revoked { StatusCode::NO_CONTENT.into_response() } else { unauthorized() };
    deliver(&shared, fault, response).await
}

/// `POST /oauth/revoke` (RFC 7009): the client revokes a token of its grant; 200 `{}` whether
/// or not the token was known, 401 `invalid_client` for bad client credentials.
pub async fn oauth_revoke(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = begin(&shared, &headers, FaultTarget::Renewal).await;
    if let Some(response) = answer_before_acting(&shared, fault) {
        return response;
    }
    let fields = form_fields(None, &body);
    let (client_id, client_secret) = client_credentials(&headers, &fields);
    let token = field(&fields, "token").unwrap_or_default().to_owned();
    let result = shared.with_state(|state| {
        state.revoke_oauth(client_id.as_deref().unwrap_or_default(), client_secret.as_deref(), &token)
    });
    let response = match result {
        Ok(()) => json_response(StatusCode::OK, json!({})),
        Err(_) => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."}),
        ),
    };
    deliver(&shared, fault, response).await
}

/// `GET /oauth/token/info` with the access token as a bearer token.
pub async fn oauth_token_info(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let fault = begin(&shared, &headers, FaultTarget::Lookup).await;
    if let Some(response) = answer_before_acting(&shared, fault) {
        return response;
    }
    let now = shared.now();
    let expires_in = presented_token(&headers).and_then(|token| shared.with_state(|s| s.oauth_token_info(&token, now)));
    let response = match expires_in {
        Some(expires_in) => json_response(
            StatusCode::OK,
            json!({"resource_owner_id": 1, "scope": ["api"], "expires_in": expires_in, "created_at": now.timestamp()}),
        ),
        None => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token", "error_description": "The access token is invalid"}),
        ),
    };
    deliver(&shared, fault, response).await
}

/// `POST /api/v4/personal_access_tokens/self/rotate`.
pub async fn rotate_personal(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rotate(&shared, TokenOwner::Personal, query, &headers, &body).await
}

/// `POST /api/v4/projects/{id}/access_tokens/self/rotate`.
pub async fn rotate_project(
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rotate(&shared, TokenOwner::Project(project), query, &headers, &body).await
}

/// `POST /api/v4/groups/{id}/access_tokens/self/rotate`.
pub async fn rotate_group(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rotate(&shared, TokenOwner::Group(group), query, &headers, &body).await
}

async fn rotate(
    shared: &Arc<Shared>,
    endpoint: TokenOwner,
    query: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let fault = begin(shared, headers, FaultTarget::Renewal).await;
    if let Some(response) = answer_before_acting(shared, fault) {
        return response;
    }
    let Some(secret) = presented_token(headers) else {
        return unauthorized();
    };
    let fields = form_fields(query.as_deref(), body);
    let now = shared.now();
    let result = shared.with_state(|state| {
        let result = state.rotate(&secret, &endpoint, field(&fields, "expires_at"), now);
        note_drop(state, fault, result.is_ok());
        result
    });
    let response = match result {
        Ok((token, new_secret)) => {
            let mut body = token_json(&token, now);
            body["token"] = json!(new_secret);
            json_response(StatusCode::OK, body)
        }
        Err(RotateError::Unauthorized { .. }) => unauthorized(),
        Err(RotateError::Forbidden) => json_response(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"})),
        Err(RotateError::NotFound) => json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"})),
        Err(RotateError::WrongKind) => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "405 Method Not Allowed"}))
        }
        Err(RotateError::BadExpiry(message)) => json_response(StatusCode::BAD_REQUEST, json!({"message": message})),
    };
    deliver(shared, fault, response).await
}

/// One form-URL-encoded part of HTTP Basic client credentials, decoded (RFC 6749 §2.3.1).
fn form_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// Client credentials from the form or from HTTP Basic authentication (form-URL-encoded, then
/// base64, as RFC 6749 §2.3.1 requires).
fn client_credentials(headers: &HeaderMap, fields: &[(String, String)]) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, secret)| (form_decode(id), form_decode(secret))));
    if let Some((id, secret)) = basic {
        return (Some(id), Some(secret));
    }
    (field(fields, "client_id").map(str::to_owned), field(fields, "client_secret").map(str::to_owned))
}

/// `POST /oauth/token` with `grant_type=refresh_token`.
pub async fn oauth_token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = begin(&shared, &headers, FaultTarget::Renewal).await;
    if let Some(response) = answer_before_acting(&shared, fault) {
        return response;
    }
    let fields = form_fields(None, &body);
    let grant_type = field(&fields, "grant_type").unwrap_or_default().to_owned();
    if grant_type != "refresh_token" && grant_type != "authorization_code" {
        let error = json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."});
        return json_response(StatusCode::BAD_REQUEST, error);
    }
    let (client_id, client_secret) = client_credentials(&headers, &fields);
    let by_basic = headers.get(header::AUTHORIZATION).is_some_and(|value| value.as_bytes().starts_with(b"Basic "));
    let refresh_token = field(&fields, "refresh_token").unwrap_or_default().to_owned();
    let now = shared.now();
    let (client_id, client_secret) = (client_id.unwrap_or_default(), client_secret.as_deref());
    let result = shared.with_state(|state| {
        if state.require_basic_auth && !by_basic {
            return Err(RefreshError::InvalidClient);
        }
        let result = if grant_type == "authorization_code" {
            let (code, redirect_uri) = (field(&fields, "code"), field(&fields, "redirect_uri"));
            let verifier = field(&fields, "code_verifier");
            let exchanged = state.exchange_code(
                &client_id,
                client_secret,
                code.unwrap_or_default(),
                redirect_uri.unwrap_or_default(),
                verifier,
                now,
            );
            exchanged.map(|(issued, scope)| (issued, Some(scope)))
        } else {
            state.refresh(&client_id, client_secret, &refresh_token, now).map(|refreshed| (refreshed, None))
        };
        note_drop(state, fault, result.is_ok());
        result
    });
    let (omit_expires_in, configured_scope) =
        shared.with_state(|state| (state.omit_expires_in, state.oauth_scope.clone()));
    let response = match result {
        Ok((refreshed, granted_scope)) => {
            let scope = granted_scope.or(configured_scope);
            let mut body = json!({
                "access_token": refreshed.access_token,
                "token_type": "Bearer",
                "expires_in": refreshed.expires_in,
                "scope": scope.as_deref().unwrap_or("api"),
                "created_at": refreshed.created_at,
            });
            if omit_expires_in && let Some(fields) = body.as_object_mut() {
                fields.remove("expires_in");
            }
            if let Some(refresh_token) = refreshed.refresh_token {
                body["refresh_token"] = json!(refresh_token);
            }
            json_response(StatusCode::OK, body)
        }
        Err(RefreshError::InvalidClient) => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."}),
        ),
        Err(RefreshError::InvalidGrant) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."}),
        ),
    };
    deliver(&shared, fault, response).await
}
