//! The internal HTTP API (axum): health, tokens, secrets and forced rotation, with JSON
//! errors `{"error","message"}` and `Authorization: Bearer <api_key>` authentication.
//! Bind it to a private address: `/metrics` and the health endpoints need no key.

mod auth;
mod error;
mod health;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use auth::Caller;
pub use error::ApiError;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::engine::{EngineContext, SchedulerHandle};
use crate::store::{DbConnection, Store, StoreError};

/// How long a readiness check waits for the store before answering 503.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any request waits for the store before answering 503 (never a hang).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The scheduler is not ready when its loop has not completed a pass for this long.
pub const SCHEDULER_STALL: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The engine, for forced rotations and opening secrets.
    pub engine: Arc<EngineContext>,
    /// The running scheduler (its heartbeat for readiness, and waking it), if any.
    pub scheduler: Option<SchedulerHandle>,
    /// The Prometheus recorder `/metrics` renders, if installed.
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// Runs a store call with [`STORE_CALL_TIMEOUT`]; a failure or a timeout is a 503.
    pub async fn store_call<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        match tokio::time::timeout(STORE_CALL_TIMEOUT, self.store.run(f)).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::store_unavailable(format!("no answer within {} s", STORE_CALL_TIMEOUT.as_secs()))),
        }
    }
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/tokens", get(tokens::list))
        .route("/v1/tokens/{name}", get(tokens::show))
        .route("/v1/tokens/{name}/secret", get(tokens::secret))
        .route("/v1/tokens/{name}/rotate", post(tokens::rotate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}
