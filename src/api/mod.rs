//! The internal HTTP API (axum): health, tokens, secrets and forced rotation, with JSON
//! errors `{"error","message"}` and `Authorization: Bearer <api_key>` authentication.
//! Bind it to a private address: `/metrics` and the health endpoints need no key.
//! `GET /openapi.json` describes it all ([`openapi`]).

mod auth;
mod error;
pub mod extract;
mod health;
pub mod openapi;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, post};

pub use auth::Caller;
pub use error::{ApiError, ErrorBody};

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
    /// State with no scheduler and no metrics.
    pub fn new(store: Store, engine: Arc<EngineContext>) -> Self {
        Self { store, engine, scheduler: None, metrics: None }
    }

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

/// One route the API serves: a method (lower case, as OpenAPI spells it) and a path (with
/// `{param}` placeholders, as both axum and OpenAPI spell them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// `get`, `post`, …
    pub method: &'static str,
    /// E.g. `/v1/tokens/{name}`.
    pub path: &'static str,
}

/// The router being built, with the list of what it serves.
struct RouteTable {
    router: Router<AppState>,
    served: Vec<Route>,
}

impl RouteTable {
    fn new() -> Self {
        Self { router: Router::new(), served: Vec::new() }
    }

    fn add(mut self, method: &'static str, path: &'static str, route: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(path, route);
        self.served.push(Route { method, path });
        self
    }

    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add("get", path, get(handler))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add("post", path, post(handler))
    }
}

/// Every route, in one place: [`router`] serves exactly these and [`routes`] lists them (a
/// test checks each one is in the OpenAPI document).
fn table() -> RouteTable {
    RouteTable::new()
        .get("/healthz", health::healthz)
        .get("/readyz", health::readyz)
        .get("/metrics", health::metrics)
        .get("/openapi.json", openapi::document)
        .get("/v1/tokens", tokens::list)
        .get("/v1/tokens/{name}", tokens::show)
        .get("/v1/tokens/{name}/secret", tokens::secret)
        .post("/v1/tokens/{name}/rotate", tokens::rotate)
}

/// Every method and path the router serves.
pub fn routes() -> Vec<Route> {
    table().served
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    table()
        .router
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
