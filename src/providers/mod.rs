//! Provider clients: how a credential is renewed at GitLab or at an OAuth 2.0 server.
//!
//! One small trait, [`TokenProvider`], with one implementation per way of renewing:
//! [`gitlab::GitlabAccessTokens`] rotates project, group and personal access tokens with the
//! self-rotate endpoints; [`oauth::OauthRefresher`] runs the refresh-token grant (GitLab's
//! `/oauth/token` or any `token_url`). Every call classifies its outcome as success or a
//! [`ProviderError`] that says whether retrying is safe, pointless, or must wait for a probe.

pub mod client_auth;
pub mod discovery;
pub mod gitlab;
pub mod gitlab_admin;
pub mod gitlab_user;
pub mod http;
pub mod oauth;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::SecretString;

pub use http::{HttpSettings, build_http_client};

/// What a provider needs to renew one token.
#[derive(Debug)]
pub struct Credential {
    /// The current access token (GitLab token or OAuth access token), if any.
    pub secret: Option<SecretString>,
    /// The current refresh token (OAuth grants).
    pub refresh_token: Option<SecretString>,
    /// The expiry date to request when rotating a GitLab token.
    pub requested_expiry: NaiveDate,
    /// The engine's time when the request is made; a new secret's lifetime counts from here
    /// (never later than the provider's own clock started it, so expiry is never overestimated).
    pub requested_at: DateTime<Utc>,
}

/// A renewed credential, as the provider returned it.
#[derive(Debug)]
pub struct Renewed {
    /// The new access token.
    pub secret: SecretString,
    /// The new refresh token; `None` keeps the old one (a provider may not rotate it).
    pub refresh_token: Option<SecretString>,
    /// When the new access token expires, if the provider said.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// The provider's id for the new token (GitLab issues a new id on rotation).
    pub external_id: Option<String>,
    /// For OAuth grants: whether the server issued a new refresh token (`false`: it kept the
    /// current one valid, so a lost answer cannot lose the grant). `None` for GitLab tokens.
    pub refresh_token_rotates: Option<bool>,
    /// True when the answer had no `expires_in`, so `expires_at` is an assumption.
    pub assumed_lifetime: bool,
    /// The scope the answer granted, if it named one (space-separated).
    pub scope: Option<String>,
}

/// What GitLab says about a token presented to `GET /personal_access_tokens/self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// GitLab's token id.
    pub id: String,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// Whether GitLab considers it active.
    pub active: bool,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The expiry date (the token stops working at 00:00 UTC that day).
    pub expires_at: Option<NaiveDate>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// True when the token's scopes allow it to rotate itself (`api` or `self_rotate`).
    pub fn can_rotate_itself(&self) -> bool {
        self.scopes.iter().any(|s| s == "api" || s == "self_rotate")
    }
}

/// Why a provider call did not produce a renewed credential, classified by what is safe next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The provider provably did not act (connection refused before sending, 429, a 5xx
    /// saying it failed): retrying later is safe.
    #[error("transient provider error: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// How long the provider asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The credential or the client is rejected (revoked, expired, `invalid_grant`,
    /// `invalid_client`, missing scope): retrying cannot help; a human must act.
    #[error("provider refused: {reason}: {message}")]
    Permanent {
        /// A short machine reason, e.g. `invalid_grant`, `revoked`, `forbidden`.
        reason: String,
        /// The provider's explanation.
        message: String,
    },
    /// The request may have reached the provider and we do not know what it did (timeout
    /// after sending, connection reset mid-response, an unreadable success body).
    #[error("outcome unknown: {message}")]
    Unknown {
        /// What happened.
        message: String,
    },
}

impl ProviderError {
    /// A transient error without `Retry-After`.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient { message: message.into(), retry_after: None }
    }

    /// A permanent error with a machine reason.
    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Permanent { reason: reason.into(), message: message.into() }
    }

    /// An outcome-unknown error.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::Unknown { message: message.into() }
    }
}

/// What a revocation request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The provider revoked the credential now.
    Revoked,
    /// The provider did not know it as a working credential any more (revoked, expired or
    /// rotated before): nothing is left to revoke under this secret.
    AlreadyInvalid,
}

/// Renews one kind of credential at one provider.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// Revokes the credential at the provider (`token remove --revoke`). Providers without a
    /// way to do so refuse with `Permanent("revocation_unsupported")`.
    async fn revoke(&self, _credential: &Credential) -> Result<Revocation, ProviderError> {
        Err(ProviderError::permanent(
            "revocation_unsupported",
            "tokenwarden knows no revocation endpoint for this provider: revoke the credential at the provider, then remove it with --force",
        ))
    }

    /// Renews the credential: rotates a GitLab token or runs the refresh-token grant.
    async fn renew(&self, credential: &Credential) -> Result<Renewed, ProviderError>;

    /// Looks the current secret up without changing anything (GitLab's `…/self`; never
    /// triggers reuse detection). Providers without such an endpoint answer `Ok(None)`.
    async fn inspect(&self, credential: &Credential) -> Result<Option<TokenInfo>, ProviderError>;
}
