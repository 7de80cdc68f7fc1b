//! The simulated token administration endpoints of projects and groups (what a managing
//! credential calls, issue 13): `…/access_tokens` (list, create, revoke) and `…/deploy_tokens`
//! (list, create, revoke; lists paginated as GitLab's are), each checking the credential, its
//! `api` scope, the namespace's visibility and the role before acting
//! ([`GitlabState::manager_level`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::gitlab_api::{json_response, token_json};
use super::pagination::page_of;
use super::state::GitlabState;
use super::variables_api::{Managed, refused, serve_managed};

/// What a request asks.
enum Action {
    ListAccess,
    CreateAccess,
    RevokeAccess(String),
    ListDeploy,
    CreateDeploy,
    RevokeDeploy(String),
}

/// Acts on a request that passed GitLab's checks.
fn act(state: &mut GitlabState, request: Managed<'_>, action: Action) -> Response {
    let Managed { namespace, level, fields, now } = request;
    let id = |text: &str| text.parse::<u64>().ok();
    let not_found = || json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    let result = match action {
        Action::ListAccess => {
            let tokens: Vec<Value> = state
                .resource_access_tokens(namespace, fields, now)
                .iter()
                .map(|token| token_json(token, now))
                .collect();
            return page_of(tokens, fields);
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
            return page_of(tokens, fields);
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

/// `GET` (list) and `POST` (create) `/{projects|groups}/:id/{access_tokens|deploy_tokens}`.
pub async fn collection(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((kind, id, collection)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acts = method != Method::GET;
    let action = match (collection.as_str(), method) {
        ("access_tokens", Method::GET) => Some(Action::ListAccess),
        ("access_tokens", Method::POST) => Some(Action::CreateAccess),
        ("deploy_tokens", Method::GET) => Some(Action::ListDeploy),
        ("deploy_tokens", Method::POST) => Some(Action::CreateDeploy),
        _ => None,
    };
    serve_managed(shared, (kind, id), action, acts, (query, headers, body), act).await
}

/// `DELETE /{projects|groups}/:id/{access_tokens|deploy_tokens}/:token_id`.
pub async fn item(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, collection, token_id)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acts = true;
    let action = match collection.as_str() {
        "access_tokens" => Some(Action::RevokeAccess(token_id)),
        "deploy_tokens" => Some(Action::RevokeDeploy(token_id)),
        _ => None,
    };
    serve_managed(shared, (kind, id), action, acts, (query, headers, body), act).await
}
