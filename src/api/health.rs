//! `/healthz` (the process serves) and `/readyz` (the store answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState, STORE_CHECK_TIMEOUT};

/// 200 while the process serves requests.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the store answers within the timeout; 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(err)) => Err(unavailable(format!("store: {err}"))),
        Err(_) => Err(unavailable(format!("store: no answer within {} s", STORE_CHECK_TIMEOUT.as_secs()))),
    }
}
