//! `/healthz` (the process serves) and `/readyz` (the store answers and the scheduler ticks).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Value, json};

use super::{ApiError, AppState, SCHEDULER_STALL, STORE_CHECK_TIMEOUT};

/// 200 while the process serves requests.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The Prometheus text exposition of every metric.
pub async fn metrics(State(state): State<AppState>) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_metrics", "metrics are not enabled"));
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()))
}

/// 200 when the store answers within the timeout and the scheduler loop ticked recently;
/// 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "status": "ready" })))
}
