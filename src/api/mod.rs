//! The internal HTTP API (axum): health, tokens, secrets and forced rotation, with JSON
//! errors `{"error","message"}` and `Authorization: Bearer <api_key>` authentication.
//! Bind it to a private address: `/metrics` and the health endpoints need no key.
//! `GET /openapi.json` describes it all ([`openapi`]).

mod ack;
mod auth;
mod auth_failures;
mod authorizations;
mod error;
pub mod extract;
mod health;
mod key_cache;
pub mod listener;
pub mod openapi;
mod sinks;
pub mod tls;
mod token_update;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, patch, post};
use tokio::sync::watch;

pub use auth::Caller;
pub use auth_failures::{AuthFailure, AuthFailures, LOG_INTERVAL as AUTH_FAILURE_LOG_INTERVAL};
pub use error::{ApiError, ErrorBody};
pub use key_cache::{KEY_CACHE_TTL, KeyCache};

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

/// A forced rotation's HTTP request waits this many engine leases for the outcome before it
/// is answered 503 (the rotation carries on): one lease to wait out a rotation already in
/// flight, one for this one.
pub const FORCED_ROTATION_WAIT_LEASES: u32 = 2;

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
    /// How long `POST /v1/tokens/{name}/rotate` waits for the outcome before answering 503
    /// (the rotation carries on); [`FORCED_ROTATION_WAIT_LEASES`] × the engine's lease by default.
    pub forced_rotation_wait: Duration,
    /// Forced rotations running on their own tasks; shutdown waits for them.
    pub rotations: DetachedRotations,
    /// API keys the store accepted recently ([`KEY_CACHE_TTL`] on the engine's clock by default).
    pub keys: KeyCache,
    /// Failed authentication, counted and logged at most once a minute per address (on the
    /// engine's clock).
    pub auth_failures: AuthFailures,
    /// How consent links are made (redirect URI, lifetime).
    pub consent: ConsentSettings,
}

/// How consent links are made: the redirect URI (`<public_url>/oauth/callback`) and how long a
/// link stays usable (`oauth.authorization_timeout`).
#[derive(Debug, Clone)]
pub struct ConsentSettings {
    /// The address users' browsers reach tokenwarden at (`public_url`).
    pub public_url: String,
    /// `<public_url>/oauth/callback`.
    pub redirect_uri: String,
    /// A link's lifetime.
    pub timeout: Duration,
    /// Whether the console's session cookie is `Secure` (`public_url` is https).
    pub secure_cookies: bool,
}

impl ConsentSettings {
    /// The settings for `settings.public_url` and `settings.oauth`.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            public_url: settings.public_url.clone(),
            redirect_uri: settings.redirect_uri(),
            timeout: settings.oauth.authorization_timeout.get(),
            secure_cookies: settings.public_url.starts_with("https://"),
        }
    }
}

impl Default for ConsentSettings {
    fn default() -> Self {
        Self {
            public_url: format!("http://{}", crate::config::DEFAULT_LISTEN),
            redirect_uri: format!("http://{}/oauth/callback", crate::config::DEFAULT_LISTEN),
            timeout: Duration::from_secs(600),
            secure_cookies: false,
        }
    }
}

impl AppState {
    /// State with no scheduler and no metrics, and the default forced-rotation wait.
    pub fn new(store: Store, engine: Arc<EngineContext>) -> Self {
        let lease = engine.lease().to_std().unwrap_or(Duration::from_secs(300));
        Self {
            store,
            scheduler: None,
            metrics: None,
            forced_rotation_wait: lease.saturating_mul(FORCED_ROTATION_WAIT_LEASES),
            rotations: DetachedRotations::default(),
            keys: KeyCache::new(KEY_CACHE_TTL, engine.clock.clone()),
            auth_failures: AuthFailures::new(engine.clock.clone()),
            consent: ConsentSettings::default(),
            engine,
        }
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

    /// Adds a PATCH to a path already routed (axum merges the methods of one path).
    fn patch<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add("patch", path, patch(handler))
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
        .post("/v1/tokens/{name}/ack", ack::acknowledge)
        .patch("/v1/tokens/{name}", token_update::update)
        .get("/v1/sinks", sinks::list)
        .post("/v1/authorizations", authorizations::create)
}

/// Every method and path the router serves.
pub fn routes() -> Vec<Route> {
    table().served
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    table()
        .router
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Counts forced rotations running on tasks of their own, so shutdown can wait for them.
#[derive(Debug, Clone)]
pub struct DetachedRotations {
    running: Arc<watch::Sender<usize>>,
}

impl Default for DetachedRotations {
    fn default() -> Self {
        Self { running: Arc::new(watch::Sender::new(0)) }
    }
}

/// Held by one running forced rotation; dropping it counts the rotation as finished.
#[derive(Debug)]
pub struct RunningRotation {
    running: Arc<watch::Sender<usize>>,
}

impl Drop for RunningRotation {
    fn drop(&mut self) {
        self.running.send_modify(|count| *count = count.saturating_sub(1));
    }
}

impl DetachedRotations {
    /// Counts one more running rotation until the returned guard is dropped.
    pub fn enter(&self) -> RunningRotation {
        self.running.send_modify(|count| *count += 1);
        RunningRotation { running: self.running.clone() }
    }

    /// How many are running now.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Returns once none is running.
    pub async fn idle(&self) {
        let mut watcher = self.running.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = watcher.wait_for(|count| *count == 0).await;
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}
