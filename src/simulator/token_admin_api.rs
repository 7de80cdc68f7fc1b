//! The simulated token administration endpoints of projects and groups (what a managing
//! credential calls, issue 13): `…/access_tokens` (list, create, revoke) and `…/deploy_tokens`
//! (list, create, revoke), each checking the credential, its `api` scope, the namespace's
//! visibility and the role before acting ([`GitlabState::manager_level`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::gitlab_api::{json_response, presented_token, token_json};
use super::state::GitlabState;
use super::variables::{Fields, Namespace};
use super::variables_api::{fields, namespace, refused};

/// What a request asks.
enum Action {
    ListAccess,
    CreateAccess,
    RevokeAccess(String),
    ListDeploy,
    CreateDeploy,
    RevokeDeploy(String),
}

fn act(
    state: &mut GitlabState,
    namespace: &Namespace,
    level: u8,
    action: Action,
    fields: &Fields,
    now: chrono::DateTime<chrono::Utc>,
) -> Response {
    let id = |text: &str| text.parse::<u64>().ok();
    let not_found = || json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    let result = match action {
        Action::ListAccess => {
            let tokens: Vec<Value> = state
                .resource_access_tokens(namespace, fields, now)
                .iter()
                .map(|token| token_json(token, now))
                .collect();
            return json_response(StatusCode::OK, Value::Array(tokens));
        }
        Action::CreateAccess => {
            state.create_resource_access_token(level, namespace, fields, now).map(|(token, secret)| {
                let mut body = token_json(&token, now);
                body["token"] = json!(secret);
                body
            })
        }
        Action::ListDeploy => {
            let tokens: Vec<Value> = state.deploy_tokens_of(namespace).iter().map(|token| token.to_json(now)).collect();
            return json_response(StatusCode::OK, Value::Array(tokens));
        }
        Action::CreateDeploy => state.create_deploy_token(namespace, fields).map(|token| {
            let mut body = token.to_json(now);
            body["token"] = json!(token.secret);
            body
        }),
        Action::RevokeAccess(token_id) => {
            let Some(token_id) = id(&token_id) else { return not_found() };
            return state
                .revoke_resource_access_token(namespace, token_id)
                .map_or_else(refused, |()| json_response(StatusCode::NO_CONTENT, Value::Null));
        }
        Action::RevokeDeploy(token_id) => {
            let Some(token_id) = id(&token_id) else { return not_found() };
            return state
                .revoke_deploy_token(namespace, token_id)
                .map_or_else(refused, |()| json_response(StatusCode::NO_CONTENT, Value::Null));
        }
    };
    result.map_or_else(refused, |body| json_response(StatusCode::CREATED, body))
}

async fn handle(
    shared: Arc<Shared>,
    (kind, id): (String, String),
    action: Action,
    request: (Option<String>, HeaderMap, Bytes),
) -> Response {
    let Some(namespace) = namespace(&kind, id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    };
    let (query, headers, body) = request;
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fields = fields(query.as_deref(), &headers, &body);
    let secret = presented_token(&headers);
    let now = shared.now();
    shared.with_state(|state| match state.manager_level(secret.as_deref(), &namespace, now) {
        Ok(level) => act(state, &namespace, level, action, &fields, now),
        Err(refusal) => refused(refusal),
    })
}

/// `GET /{projects|groups}/:id/access_tokens`.
pub async fn list_access(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, at, Action::ListAccess, (query, headers, body)).await
}

/// `POST /{projects|groups}/:id/access_tokens`.
pub async fn create_access(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, at, Action::CreateAccess, (query, headers, body)).await
}

/// `DELETE /{projects|groups}/:id/access_tokens/:token_id`.
pub async fn revoke_access(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, token_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, (kind, id), Action::RevokeAccess(token_id), (query, headers, body)).await
}

/// `GET /{projects|groups}/:id/deploy_tokens`.
pub async fn list_deploy(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, at, Action::ListDeploy, (query, headers, body)).await
}

/// `POST /{projects|groups}/:id/deploy_tokens`.
pub async fn create_deploy(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, at, Action::CreateDeploy, (query, headers, body)).await
}

/// `DELETE /{projects|groups}/:id/deploy_tokens/:token_id`.
pub async fn revoke_deploy(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, token_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, (kind, id), Action::RevokeDeploy(token_id), (query, headers, body)).await
}
