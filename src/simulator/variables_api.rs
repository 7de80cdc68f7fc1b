//! The simulated CI/CD variables endpoints of projects and groups (where GitLab CI/CD variable
//! sinks write): list, create, get, update and delete, each checking the credential (401), its
//! `api` scope (403 `insufficient_scope`), that the namespace is visible to it (404) and its role
//! (403) before acting; a share of requests fails with a 5xx without acting
//! ([`GitlabState::variables_error_rate`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::gitlab_api::{form_fields, json_response, presented_token};
use super::state::GitlabState;
use super::variables::{Fields, Namespace, Refusal};

/// What a request asks of the variables.
enum Action {
    List,
    Create,
    Get(String),
    Update(String),
    Delete(String),
}

/// The request's fields: the query string, then a form or JSON body.
pub(super) fn fields(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !is_json {
        return form_fields(query, body);
    }
    let mut fields = form_fields(query, b"");
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
        for (key, value) in object {
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            fields.push((key, text));
        }
    }
    fields
}

/// GitLab's answer to a refused request.
pub(super) fn refused(refusal: Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, refusal.body())
}

fn act(state: &mut GitlabState, namespace: &Namespace, action: Action, fields: &Fields) -> Response {
    let scope = fields.iter().find(|(k, _)| k == "filter[environment_scope]").map(|(_, v)| v.as_str());
    let answer = match action {
        Action::List => {
            let all: Vec<Value> = state.variables.list(namespace).iter().map(|v| v.to_json()).collect();
            return json_response(StatusCode::OK, Value::Array(all));
        }
        Action::Create => {
            return match state.variables.create(namespace, fields) {
                Ok(variable) => json_response(StatusCode::CREATED, variable.to_json()),
                Err(refusal) => refused(refusal),
            };
        }
        Action::Get(key) => state.variables.get(namespace, &key, scope).map(|v| v.to_json()),
        Action::Update(key) => state.variables.update(namespace, &key, fields).map(|v| v.to_json()),
        Action::Delete(key) => {
            return match state.variables.delete(namespace, &key, scope) {
                Ok(()) => json_response(StatusCode::NO_CONTENT, Value::Null),
                Err(refusal) => refused(refusal),
            };
        }
    };
    answer.map_or_else(refused, |body| json_response(StatusCode::OK, body))
}

async fn handle(
    shared: Arc<Shared>,
    namespace: Namespace,
    action: Action,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fields = fields(query.as_deref(), &headers, &body);
    let secret = presented_token(&headers);
    let now = shared.now();
    shared.with_state(|state| {
        if state.variables_error_rate > 0.0 && rand::random::<f64>() < state.variables_error_rate {
            return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "503 simulated failure"}));
        }
        if let Err(refusal) = state.manager_level(secret.as_deref(), &namespace, now) {
            return refused(refusal);
        }
        act(state, &namespace, action, &fields)
    })
}

/// The namespace of a `/{projects|groups}/:id/…` path.
pub(super) fn namespace(kind: &str, id: String) -> Option<Namespace> {
    match kind {
        "projects" => Some(Namespace::Project(id)),
        "groups" => Some(Namespace::Group(id)),
        _ => None,
    }
}

async fn route(
    shared: Arc<Shared>,
    (kind, id): (String, String),
    action: Action,
    request: (Option<String>, HeaderMap, Bytes),
) -> Response {
    let Some(namespace) = namespace(&kind, id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    };
    let (query, headers, body) = request;
    handle(shared, namespace, action, query, headers, body).await
}

/// `GET /{projects|groups}/:id/variables`.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(shared, at, Action::List, (query, headers, body)).await
}

/// `POST /{projects|groups}/:id/variables`.
pub async fn create(
    State(shared): State<Arc<Shared>>,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(shared, at, Action::Create, (query, headers, body)).await
}

/// `GET /{projects|groups}/:id/variables/:key`.
pub async fn get(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, key)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(shared, (kind, id), Action::Get(key), (query, headers, body)).await
}

/// `PUT /{projects|groups}/:id/variables/:key`.
pub async fn update(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, key)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(shared, (kind, id), Action::Update(key), (query, headers, body)).await
}

/// `DELETE /{projects|groups}/:id/variables/:key`.
pub async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((kind, id, key)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(shared, (kind, id), Action::Delete(key), (query, headers, body)).await
}
