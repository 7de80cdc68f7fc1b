//! The simulator's authorization-code grant with PKCE (`../shared/gitlab-api.md`, "OAuth 2.0"):
//! what the consent page checks before it shows anything, the single-use codes it issues, and
//! the verifier check at the exchange. Pure state, no HTTP; the grant itself is issued by
//! [`super::state::GitlabState::exchange_code`].

use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

/// How long a code may be exchanged (Doorkeeper's default, 10 minutes).
pub const CODE_LIFETIME: TimeDelta = TimeDelta::minutes(10);

/// A GitLab user (the one signed in at the consent page, or behind a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// GitLab's user id.
    pub id: u64,
    /// The username.
    pub username: String,
}

impl Default for SimUser {
    fn default() -> Self {
        Self { id: 1, username: "alice".to_owned() }
    }
}

/// What `GET /oauth/authorize` is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// `client_id`.
    pub client_id: String,
    /// `redirect_uri`.
    pub redirect_uri: String,
    /// `response_type` (must be `code`).
    pub response_type: String,
    /// `state`, echoed on the redirect.
    pub state: Option<String>,
    /// `scope` (space-separated).
    pub scope: String,
    /// `code_challenge`.
    pub code_challenge: Option<String>,
    /// `code_challenge_method` (`S256`; `plain` is refused here).
    pub code_challenge_method: Option<String>,
}

/// Why the consent page refuses a request outright (an error page, never a redirect: the
/// redirect URI itself may be the problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeError {
    /// No application has this client id.
    UnknownClient,
    /// The redirect URI is not one the application registered.
    RedirectMismatch,
    /// `response_type` is not `code`.
    UnsupportedResponseType,
    /// A code challenge method other than `S256`.
    UnsupportedChallengeMethod,
}

impl AuthorizeError {
    /// GitLab's (Doorkeeper's) words for it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnknownClient => {
                "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."
            }
            Self::RedirectMismatch => "The redirect uri included is not valid.",
            Self::UnsupportedResponseType => "The authorization server does not support this response type.",
            Self::UnsupportedChallengeMethod => "The code challenge method must be S256.",
        }
    }
}

/// A code issued by the consent page, until exchanged or expired.
#[derive(Debug, Clone)]
pub(super) struct CodeRecord {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) challenge: Option<String>,
    pub(super) scope: String,
    pub(super) user: SimUser,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) used: bool,
}

/// The S256 challenge of `verifier`: base64url(SHA-256(verifier)) without padding.
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is a PKCE verifier RFC 7636 allows: 43–128 of `[A-Za-z0-9-._~]`.
pub fn verifier_is_valid(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
}

impl CodeRecord {
    /// Whether the exchange's `redirect_uri` and `code_verifier` match this code at `now`.
    pub(super) fn accepts(
        &self,
        client_id: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
        now: DateTime<Utc>,
    ) -> bool {
        let verified = match (&self.challenge, verifier) {
            (Some(challenge), Some(verifier)) => verifier_is_valid(verifier) && s256(verifier) == *challenge,
            (Some(_), None) => false,
            (None, _) => true,
        };
        !self.used
            && now < self.expires_at
            && self.client_id == client_id
            && self.redirect_uri == redirect_uri
            && verified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_is_rfc_7636s_example() {
        // RFC 7636, appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(s256(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verifier_is_valid(verifier));
        assert!(!verifier_is_valid("too-short"));
        assert!(!verifier_is_valid(&format!("{verifier}+not/allowed")));
    }

    #[test]
    fn a_code_needs_its_verifier_its_redirect_uri_and_time_left_and_works_once() {
        let now = Utc::now();
        let verifier = "a".repeat(43);
        let code = CodeRecord {
            client_id: "app".into(),
            redirect_uri: "https://tw.example/oauth/callback".into(),
            challenge: Some(s256(&verifier)),
            scope: "api".into(),
            user: SimUser::default(),
            expires_at: now + CODE_LIFETIME,
            used: false,
        };
        let uri = "https://tw.example/oauth/callback";
        assert!(code.accepts("app", uri, Some(&verifier), now));
        assert!(!code.accepts("app", uri, None, now), "a missing verifier");
        assert!(!code.accepts("app", uri, Some(&"b".repeat(43)), now), "a wrong verifier");
        assert!(!code.accepts("app", "https://evil.example/cb", Some(&verifier), now), "another redirect URI");
        assert!(!code.accepts("other", uri, Some(&verifier), now), "another client");
        assert!(!code.accepts("app", uri, Some(&verifier), now + CODE_LIFETIME), "expired");
        assert!(!CodeRecord { used: true, ..code }.accepts("app", uri, Some(&verifier), now), "used");
    }
}
