//! `GET /v1/sinks`: where tokens' secrets are delivered and how far each delivery got.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::store::models::utc;
use crate::store::sinks::{self, Sink};

/// One sink as the API shows it (never a secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkView {
    /// The sink's name.
    name: String,
    /// The token whose secret it receives.
    token: String,
    /// `file`.
    kind: String,
    /// `pending` (a version not delivered yet), `current` or `needs_attention` (deliveries
    /// keep failing; still retried).
    state: String,
    /// The version the sink holds, if any.
    delivered_version: Option<i64>,
    /// The token's current version.
    token_version: i64,
    /// When the held version was delivered.
    delivered_at: Option<DateTime<Utc>>,
    /// Failed attempts since the last delivery.
    attempts: i32,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// The kind's settings (for a file: path, mode, format, env_var, exec, exec_timeout_secs).
    #[schema(value_type = Object)]
    settings: serde_json::Value,
}

impl From<Sink> for SinkView {
    fn from(sink: Sink) -> Self {
        Self {
            name: sink.row.name,
            token: sink.token,
            kind: sink.row.kind,
            state: sink.row.state,
            delivered_version: sink.row.delivered_version,
            token_version: sink.token_version,
            delivered_at: sink.row.delivered_at.map(utc),
            attempts: sink.row.attempts,
            last_error: sink.row.last_error,
            settings: sink.settings,
        }
    }
}

/// `GET /v1/sinks` (operator): every sink and what it holds.
#[utoipa::path(
    get,
    path = "/v1/sinks",
    tag = "tokens",
    operation_id = "list_sinks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every sink, by name", body = Vec<SinkView>),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a reader's key (this needs an operator)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store did not answer", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<SinkView>>, ApiError> {
    caller.require_operator()?;
    let all = state.store_call(sinks::list).await?;
    Ok(Json(all.into_iter().map(SinkView::from).collect()))
}
