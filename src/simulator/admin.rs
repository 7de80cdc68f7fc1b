//! The simulator's control endpoints under `/-/sim/`, so a simulator running as its own
//! process (`tokenwarden-sim`) can be seeded, faulted and read.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::faults::{Fault, FaultRates, FaultTarget};
use super::state::{Stats, TokenOwner};

/// The control routes.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/-/sim/access_tokens", post(create_access_token))
        .route("/-/sim/applications", post(create_application))
        .route("/-/sim/grants", post(create_grant))
        .route("/-/sim/redirect_uris", post(register_redirect_uri))
        .route("/-/sim/memberships", put(set_membership))
        .route("/-/sim/stats", get(stats))
        .route("/-/sim/faults", put(set_rates).post(push_fault))
        .route("/-/sim/settings", put(settings))
}

/// `POST /-/sim/access_tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccessToken {
    /// `personal`, `project` or `group`.
    owner: String,
    /// The project or group id (for those owners).
    #[serde(default)]
    resource: Option<String>,
    scopes: Vec<String>,
    expires_at: NaiveDate,
}

async fn create_access_token(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<NewAccessToken>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let owner = match (body.owner.as_str(), body.resource) {
        ("personal", None) => TokenOwner::Personal,
        ("project", Some(id)) => TokenOwner::Project(id),
        ("group", Some(id)) => TokenOwner::Group(id),
        _ => return Err((StatusCode::BAD_REQUEST, "owner is personal, or project/group with a resource".into())),
    };
    let now = shared.now();
    let (id, token) = shared.with_state(|state| state.create_access_token(owner, body.scopes, body.expires_at, now));
    Ok(Json(json!({"id": id, "token": token})))
}

async fn create_application(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let (client_id, client_secret) = shared.with_state(|state| state.create_application());
    Json(json!({"client_id": client_id, "client_secret": client_secret}))
}

/// `POST /-/sim/grants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    client_id: String,
}

async fn create_grant(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<NewGrant>,
) -> Result<Json<Value>, (StatusCode, String)> {
    match shared.with_state(|state| state.create_grant(&body.client_id)) {
        Some(refresh_token) => Ok(Json(json!({"refresh_token": refresh_token}))),
        None => Err((StatusCode::NOT_FOUND, "unknown client_id".into())),
    }
}

/// `POST /-/sim/redirect_uris` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRedirectUri {
    client_id: String,
    redirect_uri: String,
}

async fn register_redirect_uri(State(shared): State<Arc<Shared>>, Json(body): Json<NewRedirectUri>) -> StatusCode {
    if shared.with_state(|state| state.register_redirect_uri(&body.client_id, &body.redirect_uri)) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `PUT /-/sim/memberships` body: the simulated user's role in one project or group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    group: Option<String>,
    access_level: u8,
}

async fn set_membership(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Membership>,
) -> Result<StatusCode, (StatusCode, String)> {
    let namespace = match (body.project, body.group) {
        (Some(project), None) => super::variables::Namespace::Project(project),
        (None, Some(group)) => super::variables::Namespace::Group(group),
        _ => return Err((StatusCode::BAD_REQUEST, "name one project or one group".into())),
    };
    shared.with_state(|state| state.memberships.insert(namespace, body.access_level));
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.with_state(|state| state.stats))
}

async fn set_rates(State(shared): State<Arc<Shared>>, Json(rates): Json<FaultRates>) -> StatusCode {
    shared.with_faults(|plan| plan.rates = rates);
    StatusCode::NO_CONTENT
}

/// `POST /-/sim/faults` body: one scripted fault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedFault {
    target: FaultTarget,
    fault: Fault,
}

async fn push_fault(State(shared): State<Arc<Shared>>, Json(body): Json<ScriptedFault>) -> StatusCode {
    shared.with_faults(|plan| plan.push(body.target, body.fault));
    StatusCode::NO_CONTENT
}

/// `PUT /-/sim/settings` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Lifetime of OAuth access tokens issued from now on, in seconds.
    expires_in: u64,
}

async fn settings(State(shared): State<Arc<Shared>>, Json(body): Json<Settings>) -> StatusCode {
    shared.with_state(|state| state.expires_in = body.expires_in);
    StatusCode::NO_CONTENT
}
