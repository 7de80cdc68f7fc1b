//! A rotation engine on a fresh store with a manual clock, for tests that drive rotations and
//! time by hand (the engine, notification and hostile-provider tests).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokenwarden::engine::backoff::Backoff;
use tokenwarden::engine::{EngineSettings, ManualClock};
use tokenwarden::providers::HttpSettings;
use tokenwarden::simulator::harness::EngineHarness;

/// The manual clock's starting time.
pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc)
}

/// Engine settings with provider requests timing out after `timeout` (1 s to connect) and
/// retries backing off from 10 s up to 10 minutes.
pub fn engine_settings(timeout: Duration) -> EngineSettings {
    EngineSettings {
        http: HttpSettings { timeout, connect_timeout: Duration::from_secs(1) },
        backoff: Backoff { base: Duration::from_secs(10), max: Duration::from_secs(600) },
        oauth: Default::default(),
    }
}

/// An engine harness, its clock, and the directory holding its store (removed on drop).
pub struct Setup {
    pub harness: EngineHarness,
    pub clock: ManualClock,
    /// Held for as long as the store is used.
    pub _dir: tempfile::TempDir,
}

/// An engine with `settings` on a fresh store, its clock at [`start_time`].
pub async fn setup_with(settings: EngineSettings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start_time());
    let harness = EngineHarness::start(dir.path(), Arc::new(clock.clone()), settings).await.unwrap();
    Setup { harness, clock, _dir: dir }
}
