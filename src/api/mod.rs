//! The internal HTTP API (axum): health endpoints now; tokens, secrets and rotation later.

mod error;
mod health;

use std::time::Duration;

use axum::Router;
use axum::routing::get;

pub use error::ApiError;

use crate::store::Store;

/// How long a readiness check waits for the store before answering 503.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz)).with_state(state)
}
