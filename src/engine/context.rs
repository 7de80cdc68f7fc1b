//! Everything a rotation needs, shared by the scheduler's workers and forced rotations.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeDelta;
use secrecy::SecretString;

use super::backoff::Backoff;
use super::clock::SharedClock;
use crate::config::PolicyDefaults;
use crate::crypto::Cipher;
use crate::domain::{ProviderKind, TokenKind};
use crate::providers::client_auth::ClientCredentials;
use crate::providers::gitlab::{AccessTokenScope, GitlabAccessTokens};
use crate::providers::oauth::{OauthRefresher, OauthSettings};
use crate::providers::{HttpSettings, ProviderError, TokenProvider, build_http_client};
use crate::store::models::ProviderRow;
use crate::store::{Store, providers};

/// Least time a lease leaves for committing after the provider calls.
pub const LEASE_COMMIT_MARGIN: Duration = Duration::from_secs(5);

/// Tunables of the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineSettings {
    /// Provider HTTP timeouts.
    pub http: HttpSettings,
    /// Retry backoff after transient failures.
    pub backoff: Backoff,
    /// How OAuth answers are read.
    pub oauth: OauthSettings,
}

/// Shared state for rotations.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// The store.
    pub store: Store,
    /// Seals and opens secrets.
    pub cipher: Arc<Cipher>,
    /// The engine's time.
    pub clock: SharedClock,
    /// The HTTP client all providers share.
    pub http: reqwest::Client,
    /// Policy defaults from configuration.
    pub policy: PolicyDefaults,
    /// Tunables.
    pub settings: EngineSettings,
    /// This process's lease owner id.
    pub owner: String,
    /// Tokens already warned about a missing `expires_in` (warned once per process).
    pub assumed_lifetime_warned: Arc<Mutex<HashSet<String>>>,
    /// Wakes the revocation worker (an acknowledgement or a committed successor may have made
    /// an old deploy token's revocation due).
    pub revocations: Arc<tokio::sync::Notify>,
}

impl EngineContext {
    /// Builds a context; `owner_label` prefixes the lease owner id (e.g. `serve`, `cli`).
    pub fn new(
        store: Store,
        cipher: Arc<Cipher>,
        clock: SharedClock,
        policy: PolicyDefaults,
        settings: EngineSettings,
        owner_label: &str,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            http: build_http_client(settings.http)?,
            store,
            cipher,
            clock,
            policy,
            settings,
            owner: owner_id(owner_label),
            assumed_lifetime_warned: Arc::default(),
            revocations: Arc::default(),
        })
    }

    /// True the first time it is asked about `token_id` in this process: whether to warn that
    /// its provider's answers carry no `expires_in`.
    pub fn first_assumed_lifetime(&self, token_id: &str) -> bool {
        let mut warned = self.assumed_lifetime_warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        warned.insert(token_id.to_owned())
    }

    /// How long a claimed lease lasts: room for a probe and a rotation at the full timeout,
    /// plus the commit (another timeout, at least [`LEASE_COMMIT_MARGIN`]).
    pub fn lease(&self) -> TimeDelta {
        let timeout = self.settings.http.timeout;
        let calls = timeout.saturating_mul(2) + timeout.max(LEASE_COMMIT_MARGIN);
        TimeDelta::from_std(calls).unwrap_or(TimeDelta::minutes(5))
    }

    /// How long to wait after an unknown outcome before touching the token again, so a slow
    /// request still being processed by the provider has finished.
    pub fn settle(&self) -> TimeDelta {
        TimeDelta::from_std(self.settings.http.timeout.saturating_mul(2)).unwrap_or(TimeDelta::minutes(1))
    }
}

/// `label:host:pid:random`, unique per process.
fn owner_id(label: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut nonce = [0u8; 3];
    rand::fill(&mut nonce);
    format!("{label}:{}:{}:{}", host.trim(), std::process::id(), hex::encode(nonce))
}

/// Builds the provider client that renews a token of `kind` at `provider`.
pub fn build_provider(
    context: &EngineContext,
    provider: &ProviderRow,
    kind: TokenKind,
    resource: Option<&str>,
) -> Result<Box<dyn TokenProvider>, String> {
    let base_url = || provider.url.clone().ok_or_else(|| format!("provider '{}' has no --url", provider.name));
    let resource = || resource.map(str::to_owned).ok_or_else(|| format!("a {kind} needs a project or group"));
    match kind {
        TokenKind::GitlabPersonalAccessToken => {
            Ok(Box::new(GitlabAccessTokens::new(context.http.clone(), &base_url()?, AccessTokenScope::Personal)))
        }
        TokenKind::GitlabProjectAccessToken => Ok(Box::new(GitlabAccessTokens::new(
            context.http.clone(),
            &base_url()?,
            AccessTokenScope::Project(resource()?),
        ))),
        TokenKind::GitlabGroupAccessToken => Ok(Box::new(GitlabAccessTokens::new(
            context.http.clone(),
            &base_url()?,
            AccessTokenScope::Group(resource()?),
        ))),
        TokenKind::GitlabOauth | TokenKind::Oauth2 => Ok(Box::new(build_oauth_client(context, provider)?)),
        TokenKind::GitlabDeployToken => Err("a deploy token is replaced through its manager, not renewed".to_owned()),
    }
}

/// The OAuth client of `provider`: its token endpoint with its client credentials, and for
/// GitLab the token-info and revocation endpoints (for another provider its discovered
/// revocation endpoint). Refreshes, code exchanges and revocations all go through it.
pub fn build_oauth_client(context: &EngineContext, provider: &ProviderRow) -> Result<OauthRefresher, String> {
    let provider_kind: ProviderKind = provider.kind.parse().map_err(|err| format!("{err}"))?;
    let base_url = || provider.url.clone().ok_or_else(|| format!("provider '{}' has no --url", provider.name));
    let token_url = match provider_kind {
        ProviderKind::Gitlab => format!("{}/oauth/token", base_url()?),
        ProviderKind::Oauth2 => {
            provider.token_url.clone().ok_or_else(|| format!("provider '{}' has no --token-url", provider.name))?
        }
    };
    let client_id =
        provider.client_id.clone().ok_or_else(|| format!("provider '{}' has no OAuth client id", provider.name))?;
    let method = provider.client_auth.parse().map_err(|err| format!("{err}"))?;
    let credentials = ClientCredentials { id: client_id, secret: open_client_secret(context, provider)?, method };
    let refresher = OauthRefresher::new(
        context.http.clone(),
        &token_url,
        credentials,
        &provider.name,
        provider.redirect_uri.clone(),
    )
    .with_assumed_lifetime(context.settings.oauth.assumed_lifetime);
    Ok(match provider_kind {
        ProviderKind::Gitlab => refresher
            .with_token_info_url(format!("{}/oauth/token/info", base_url()?))
            .with_revocation_url(format!("{}/oauth/revoke", base_url()?)),
        ProviderKind::Oauth2 => match provider.revocation_url.clone() {
            Some(url) => refresher.with_revocation_url(url),
            None => refresher,
        },
    })
}

/// Opens the provider's sealed OAuth client secret, if it has one.
fn open_client_secret(context: &EngineContext, provider: &ProviderRow) -> Result<Option<SecretString>, String> {
    provider
        .client_secret
        .as_ref()
        .map(|sealed| {
            context.cipher.open(providers::client_secret_context(&provider.id), sealed).map_err(|err| err.to_string())
        })
        .transpose()
}
