//! `/healthz` (the process serves), `/readyz` (the store answers and the scheduler ticks) and
//! `/metrics` (Prometheus text): no key needed, so bind the API to a private address.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, AppState, SCHEDULER_STALL, STORE_CHECK_TIMEOUT};

/// The body of a healthy `/healthz` or `/readyz` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// 200 while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process serves requests", body = StatusBody))
)]
pub async fn healthz() -> Json<StatusBody> {
    Json(StatusBody { status: "ok" })
}

/// The Prometheus text exposition of every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 503, description = "`no_metrics`: no metrics recorder is installed", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_metrics", "metrics are not enabled"));
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()))
}

/// 200 when the store answers within the timeout and the scheduler loop ticked recently;
/// 503 with the reason otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "The store answers and the scheduler ticked recently", body = StatusBody),
        (status = 503, description = "`not_ready`: the message says whether the store or the scheduler", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    let unavailable = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(unavailable(format!("store: {err}"))),
        Err(_) => return Err(unavailable(format!("store: no answer within {} s", STORE_CHECK_TIMEOUT.as_secs()))),
    }
    if let Some(handle) = &state.scheduler {
        let stall = chrono::TimeDelta::from_std(SCHEDULER_STALL).unwrap_or_default();
        match handle.last_tick() {
            None => return Err(unavailable("scheduler: has not completed its first pass".into())),
            Some(tick) if Utc::now() - tick > stall => {
                return Err(unavailable(format!("scheduler: no pass since {}", tick.to_rfc3339())));
            }
            Some(_) => {}
        }
    }
    Ok(Json(StatusBody { status: "ready" }))
}
