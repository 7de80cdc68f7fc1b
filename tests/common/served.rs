//! tokenwarden's API, callback and console on loopback over an engine harness with a manual
//! clock, the simulated GitLab's OAuth application having
//! `<url>/oauth/callback` registered: what the consent, console and browser tests start from.

use std::sync::Arc;

use tokenwarden::api::{AppState, ConsentSettings, router};
use tokenwarden::engine::{EngineSettings, ManualClock};
use tokenwarden::simulator::harness::EngineHarness;

/// The served harness.
pub struct Served {
    pub harness: EngineHarness,
    pub clock: Arc<ManualClock>,
    /// Where the router listens (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Holds the store's directory for as long as the test runs.
    pub dir: tempfile::TempDir,
}

impl Served {
    /// Serves the router with the consent settings `consent` builds from the listening URL, the
    /// clock at `start`.
    pub async fn start(start: chrono::DateTime<chrono::Utc>, consent: impl FnOnce(&str) -> ConsentSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let harness = EngineHarness::start(dir.path(), clock.clone(), EngineSettings::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let redirect_uri = format!("{url}/oauth/callback");
        assert!(harness.sim.with_state(|state| state.register_redirect_uri(&harness.client_id, &redirect_uri)));
        let state = AppState {
            consent: consent(&url),
            ..AppState::new(harness.context.store.clone(), harness.context.clone())
        };
        tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { harness, clock, url, dir }
    }
}
