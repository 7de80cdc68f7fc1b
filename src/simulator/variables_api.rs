//! The simulated CI/CD variables endpoints of projects and groups (where GitLab CI/CD variable
//! sinks write): list, create, get, update and delete, each checking the credential (401), its
//! `api` scope (403 `insufficient_scope`), that the namespace is visible to it (404) and its role
//! (403) before acting; a share of requests fails with a 5xx without acting
//! ([`GitlabState::variables_error_rate`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::fields::Fields;
use super::gitlab_api::{form_fields, json_response, presented_token};
use super::state::GitlabState;
use super::variables::{Namespace, Refusal};

/// What a request asks of the variables.
enum Action {
    List,
    Create,
    Get(String),
    Update(String),
    Delete(String),
}

/// The request's fields: the query string, then a form or JSON body.
fn fields(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
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

/// A request to a namespace's administration endpoints (variables, tokens), as its handler
/// gets it once GitLab's checks passed.
pub(super) struct Managed<'a> {
    /// The project or group of the path.
    pub namespace: &'a Namespace,
    /// The credential's role there.
    pub level: u8,
    /// The query and body fields.
    pub fields: &'a Fields,
    /// GitLab's time.
    pub now: chrono::DateTime<chrono::Utc>,
}

/// Serves a request to `/{projects|groups}/:id/…` with `act`: the simulator's latency and any
/// scripted `admin` fault of a request that `acts` (answered before or after acting), then 404
/// for a path naming neither (or an `action` of `None`), GitLab's credential checks
/// ([`GitlabState::manager_level`]), and only then `act`.
pub(super) async fn serve_managed<A>(
    shared: Arc<Shared>,
    (kind, id): (String, String),
    action: Option<A>,
    acts: bool,
    (query, headers, body): (Option<String>, HeaderMap, Bytes),
    act: impl FnOnce(&mut GitlabState, Managed<'_>, A) -> Response,
) -> Response {
    let (Some(namespace), Some(action)) = (namespace(&kind, id), action) else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    };
    // Scripted `admin` faults hit the requests that change something, never the reads.
    let fault = if acts {
        super::gitlab_api::begin(&shared, &headers, super::faults::FaultTarget::Admin).await
    } else {
        super::gitlab_api::arrive(&shared, &headers).await;
        None
    };
    if let Some(response) = super::gitlab_api::answer_before_acting(&shared, fault) {
        return response;
    }
    let fields = fields(query.as_deref(), &headers, &body);
    let secret = presented_token(&headers);
    let now = shared.now();
    let response = shared.with_state(|state| match state.manager_level(secret.as_deref(), &namespace, now) {
        Ok(level) => act(state, Managed { namespace: &namespace, level, fields: &fields, now }, action),
        Err(refusal) => refused(refusal),
    });
    super::gitlab_api::deliver(&shared, fault, response).await
}

/// The namespace of a `/{projects|groups}/:id/…` path.
fn namespace(kind: &str, id: String) -> Option<Namespace> {
    match kind {
        "projects" => Some(Namespace::Project(id)),
        "groups" => Some(Namespace::Group(id)),
        _ => None,
    }
}

/// A share of variables requests fails with a 503 without acting
/// ([`GitlabState::variables_error_rate`]); the others act.
fn act_or_fail(state: &mut GitlabState, request: Managed<'_>, action: Action) -> Response {
    if state.variables_error_rate > 0.0 && rand::random::<f64>() < state.variables_error_rate {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "503 simulated failure"}));
    }
    act(state, request.namespace, action, request.fields)
}

/// `GET` (list) and `POST` (create) `/{projects|groups}/:id/variables`.
pub async fn collection(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(at): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acts = method != Method::GET;
    let action = match method {
        Method::GET => Some(Action::List),
        Method::POST => Some(Action::Create),
        _ => None,
    };
    serve_managed(shared, at, action, acts, (query, headers, body), act_or_fail).await
}

/// `GET`, `PUT` and `DELETE` `/{projects|groups}/:id/variables/:key`.
pub async fn item(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((kind, id, key)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acts = method != Method::GET;
    let action = match method {
        Method::GET => Some(Action::Get(key)),
        Method::PUT => Some(Action::Update(key)),
        Method::DELETE => Some(Action::Delete(key)),
        _ => None,
    };
    serve_managed(shared, (kind, id), action, acts, (query, headers, body), act_or_fail).await
}
