//! An in-repo GitLab simulator, following `../shared/gitlab-api.md`, for tests, the benchmark
//! and manual runs (`tokenwarden-sim`). GitLab itself is never reachable from our machines.
//!
//! It serves the endpoints tokenwarden calls with GitLab's semantics — rotation revokes the
//! old token at once, a rotated token presented to a rotate endpoint revokes its family, a
//! refresh token works once — plus fault injection ([`faults`]) and counters ([`Stats`]) that
//! tests assert on (`family_revocations` and `refresh_token_reuses` must stay 0).
//! Seeding and faults are also reachable over HTTP under `/-/sim/` ([`admin`]).

pub mod admin;
pub mod authorization;
mod consent;
mod discovery;
pub mod faults;
mod fields;
mod gitlab_api;
pub mod harness;
pub mod malformed;
mod pagination;
pub mod state;
pub mod token_admin;
mod token_admin_api;
pub mod variables;
mod variables_api;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::engine::SharedClock;
pub use faults::{Fault, FaultRates, FaultTarget, Malformation};
pub use state::{GitlabState, Renewal, Stats, TokenOwner};

/// What the handlers share: the clock, GitLab's state and the fault plan.
#[derive(Debug)]
pub struct Shared {
    clock: SharedClock,
    state: Mutex<GitlabState>,
    faults: Mutex<faults::FaultPlan>,
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut GitlabState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn with_faults<T>(&self, f: impl FnOnce(&mut faults::FaultPlan) -> T) -> T {
        f(&mut self.faults.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn latency(&self) -> Duration {
        self.with_faults(|plan| plan.latency())
    }

    fn next_fault(&self, target: FaultTarget) -> Option<Fault> {
        self.with_faults(|plan| plan.next(target))
    }

    /// Remembers that no renewal may arrive for `wait` (a `Retry-After` was sent).
    fn block_for(&self, wait: Duration) {
        let until = self.now() + TimeDelta::from_std(wait).unwrap_or_default();
        self.with_state(|state| state.blocked_until = Some(state.blocked_until.map_or(until, |t| t.max(until))));
    }

    /// Counts a renewal that arrived before the `Retry-After` it was given.
    fn note_renewal_arrival(&self) {
        let now = self.now();
        self.with_state(|state| {
            if state.blocked_until.is_some_and(|until| now < until) {
                state.stats.retry_after_violations += 1;
            }
        });
    }
}

/// A running simulator: its URL, and direct access to its state for tests.
#[derive(Debug)]
pub struct Simulator {
    url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The simulator's routes: GitLab's and the `/-/sim/` control endpoints.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v4/personal_access_tokens/self", get(gitlab_api::look_up).delete(gitlab_api::revoke_self))
        .route("/api/v4/personal_access_tokens/self/rotate", post(gitlab_api::rotate_personal))
        .route("/api/v4/projects/{id}/access_tokens/self/rotate", post(gitlab_api::rotate_project))
        .route("/api/v4/groups/{id}/access_tokens/self/rotate", post(gitlab_api::rotate_group))
        .route("/oauth/authorize", get(consent::show).post(consent::decide))
        .route("/oauth/token", post(gitlab_api::oauth_token))
        .route("/api/v4/user", get(consent::current_user))
        .route("/oauth/token/info", get(gitlab_api::oauth_token_info))
        .route("/oauth/revoke", post(gitlab_api::oauth_revoke))
        .route("/api/v4/{kind}/{id}/variables", get(variables_api::collection).post(variables_api::collection))
        .route(
            "/api/v4/{kind}/{id}/variables/{key}",
            get(variables_api::item).put(variables_api::item).delete(variables_api::item),
        )
        .route("/api/v4/{kind}/{id}/{collection}", get(token_admin_api::collection).post(token_admin_api::collection))
        .route("/api/v4/{kind}/{id}/{collection}/{token_id}", delete(token_admin_api::item))
        .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
        .merge(admin::router())
        .with_state(shared)
}

impl Simulator {
    /// Starts a simulator on a free loopback port with `clock` as GitLab's time.
    pub async fn start(clock: SharedClock) -> std::io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), clock).await
    }

    /// Starts a simulator on `addr`.
    pub async fn bind(addr: SocketAddr, clock: SharedClock) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            clock,
            state: Mutex::new(GitlabState::new()),
            faults: Mutex::new(faults::FaultPlan::default()),
        });
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "the GitLab simulator stopped");
            }
        });
        Ok(Self { url: format!("http://{local}"), shared, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (use it as the provider's `--url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on GitLab's state (to seed it or to look at it).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut GitlabState) -> T) -> T {
        self.shared.with_state(f)
    }

    /// Creates an access token expiring on `expires_at`; returns its id and secret.
    pub fn create_access_token(&self, owner: TokenOwner, scopes: &[&str], expires_at: NaiveDate) -> (u64, String) {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        let now = self.shared.now();
        self.with_state(|state| state.create_access_token(owner, scopes, expires_at, now))
    }

    /// Registers an OAuth application; returns its client id and secret.
    pub fn create_application(&self) -> (String, String) {
        self.with_state(GitlabState::create_application)
    }

    /// Issues a grant to `client_id`; returns its refresh token.
    pub fn create_grant(&self, client_id: &str) -> String {
        self.with_state(|state| state.create_grant(client_id)).unwrap_or_default()
    }

    /// Sets the lifetime of OAuth access tokens issued from now on.
    pub fn set_expires_in(&self, lifetime: Duration) {
        self.with_state(|state| state.expires_in = lifetime.as_secs());
    }

    /// Makes refreshes keep the presented refresh token (and answer without a new one), as
    /// providers that do not rotate refresh tokens do.
    pub fn set_keep_refresh_tokens(&self, keep: bool) {
        self.with_state(|state| state.keep_refresh_tokens = keep);
    }

    /// Queues a fault for the next request of `target`.
    pub fn push_fault(&self, target: FaultTarget, fault: Fault) {
        self.shared.with_faults(|plan| plan.push(target, fault));
    }

    /// Drops every scripted fault not used yet.
    pub fn clear_faults(&self) {
        self.shared.with_faults(faults::FaultPlan::clear_scripted);
    }

    /// Sets random fault rates and latency.
    pub fn set_rates(&self, rates: FaultRates) {
        self.shared.with_faults(|plan| plan.rates = rates);
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.with_state(|state| state.stats)
    }

    /// Whether an access token (GitLab token or OAuth access token) works now.
    pub fn accepts(&self, secret: &str) -> bool {
        let now = self.shared.now();
        self.with_state(|state| {
            state.access_token(secret).is_some_and(|token| token.is_active(now))
                || state.oauth_access_is_active(secret, now)
        })
    }
}
