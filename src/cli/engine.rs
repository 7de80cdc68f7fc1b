//! Building the rotation engine from settings, for `serve` and for commands that rotate.

use std::sync::Arc;

use super::CliError;
use crate::config::Settings;
use crate::crypto::Cipher;
use crate::engine::backoff::Backoff;
use crate::engine::{EngineContext, EngineSettings, Limits, SystemClock};
use crate::providers::HttpSettings;
use crate::providers::oauth::OauthSettings;
use crate::store::Store;

/// The engine settings the configuration asks for.
pub fn engine_settings(settings: &Settings) -> EngineSettings {
    let scheduler = &settings.scheduler;
    EngineSettings {
        http: HttpSettings {
            timeout: scheduler.provider_timeout.get(),
            connect_timeout: scheduler.provider_timeout.get().min(std::time::Duration::from_secs(10)),
        },
        backoff: Backoff { base: scheduler.retry_base.get(), max: scheduler.retry_max.get() },
        oauth: OauthSettings { assumed_lifetime: settings.oauth.assumed_lifetime.get() },
    }
}

/// The concurrency limits the configuration asks for.
pub fn limits(settings: &Settings) -> Limits {
    Limits {
        max_concurrency: settings.scheduler.max_concurrency,
        per_provider: settings.scheduler.provider_concurrency,
    }
}

/// An engine context on the real clock; `label` names this process in lease owners.
pub fn engine_context(
    settings: &Settings,
    store: Store,
    cipher: Cipher,
    label: &str,
) -> Result<EngineContext, CliError> {
    EngineContext::new(
        store,
        Arc::new(cipher),
        Arc::new(SystemClock),
        settings.policy,
        engine_settings(settings),
        label,
    )
    .map_err(|err| CliError::Failed(err.to_string()))
}
