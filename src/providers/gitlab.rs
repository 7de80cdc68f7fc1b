//! GitLab project, group and personal access tokens, rotated with the self-rotate endpoints.
//!
//! Rotation revokes the old token at once, and presenting an already-rotated token to a
//! rotate endpoint makes GitLab revoke the whole token family. So this client never retries
//! a rotation by itself; the engine probes with [`TokenProvider::inspect`] first.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{Answer, body_snippet, classify_status, describe_json_error, look_up, send};
use super::{Credential, ProviderError, Renewed, Revocation, TokenInfo, TokenProvider};

/// Which self-rotate endpoint a token uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTokenScope {
    /// A personal access token.
    Personal,
    /// A project access token of this project (numeric id or path).
    Project(String),
    /// A group access token of this group (numeric id or path).
    Group(String),
}

/// Rotates GitLab access tokens of one scope at one GitLab instance.
#[derive(Debug, Clone)]
pub struct GitlabAccessTokens {
    client: reqwest::Client,
    base_url: String,
    scope: AccessTokenScope,
}

/// GitLab's token JSON (from `/self` and from rotate).
#[derive(Debug, Deserialize)]
struct TokenJson {
    id: serde_json::Value,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    revoked: Option<bool>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

/// Percent-encodes a project or group path for use in a URL (`group/project` →
/// `group%2Fproject`); values that are already encoded or numeric pass unchanged.
pub fn encode_path_id(id: &str) -> String {
    if id.contains('%') {
        return id.to_owned();
    }
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The moment a GitLab token with expiry date `date` stops working: 00:00 UTC that day.
pub fn expiry_instant(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(NaiveTime::MIN).and_utc()
}

/// Checks that a secret from a provider looks like a token: non-empty, printable, bounded.
pub fn validate_token_text(what: &str, value: &str) -> Result<(), ProviderError> {
    if value.is_empty() || value.len() > 4096 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProviderError::unknown(format!(
            "the provider answered success but its {what} is not a usable token"
        )));
    }
    Ok(())
}

impl GitlabAccessTokens {
    /// A client for tokens of `scope` at the GitLab instance `base_url`.
    pub fn new(client: reqwest::Client, base_url: &str, scope: AccessTokenScope) -> Self {
        Self { client, base_url: base_url.trim_end_matches('/').to_owned(), scope }
    }

    fn rotate_url(&self) -> String {
        match &self.scope {
            AccessTokenScope::Personal => format!("{}/api/v4/personal_access_tokens/self/rotate", self.base_url),
            AccessTokenScope::Project(id) => {
                format!("{}/api/v4/projects/{}/access_tokens/self/rotate", self.base_url, encode_path_id(id))
            }
            AccessTokenScope::Group(id) => {
                format!("{}/api/v4/groups/{}/access_tokens/self/rotate", self.base_url, encode_path_id(id))
            }
        }
    }

    fn secret(credential: &Credential) -> Result<&SecretString, ProviderError> {
        credential
            .secret
            .as_ref()
            .ok_or_else(|| ProviderError::permanent("no_secret", "the token has no stored secret to rotate"))
    }
}

/// Parses GitLab's `YYYY-MM-DD` expiry.
fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Parses GitLab's RFC 3339 timestamps.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// GitLab ids are numbers; keep them as text.
fn id_text(id: &serde_json::Value) -> String {
    match id {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Maps a 401 to "revoked or expired", and other errors by the shared rules.
fn classify_gitlab_error(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &[u8]) -> ProviderError {
    match status {
        StatusCode::UNAUTHORIZED => ProviderError::permanent(
            "revoked",
            format!("GitLab rejected the token (revoked, expired or unknown): {}", body_snippet(body)),
        ),
        StatusCode::FORBIDDEN => ProviderError::permanent(
            "forbidden",
            format!(
                "GitLab refused: the token may not rotate itself (needs the api or self_rotate scope): {}",
                body_snippet(body)
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => ProviderError::permanent(
            "wrong_kind",
            format!("GitLab says this is not a token of that kind (405): {}", body_snippet(body)),
        ),
        StatusCode::BAD_REQUEST => {
            ProviderError::permanent("bad_request", format!("GitLab answered 400 Bad Request: {}", body_snippet(body)))
        }
        _ => classify_status(status, headers, body),
    }
}

#[async_trait::async_trait]
impl TokenProvider for GitlabAccessTokens {
    async fn renew(&self, credential: &Credential) -> Result<Renewed, ProviderError> {
        let secret = Self::secret(credential)?;
        let expires_at = credential.requested_expiry.format("%Y-%m-%d").to_string();
        let request = self
            .client
            .post(self.rotate_url())
            .header("PRIVATE-TOKEN", secret.expose_secret())
            .form(&[("expires_at", expires_at.as_str())]);
        let Answer { status, headers, body } = send(request).await?;
        if !status.is_success() {
            return Err(classify_gitlab_error(status, &headers, &body));
        }
        let parsed: TokenJson = serde_json::from_slice(&body).map_err(|err| {
            ProviderError::unknown(format!(
                "GitLab may have rotated the token but its answer is not token JSON: {}",
                describe_json_error(&err)
            ))
        })?;
        let token =
            parsed.token.ok_or_else(|| ProviderError::unknown("GitLab answered the rotation without a token field"))?;
        validate_token_text("token", &token)?;
        let expiry = parsed.expires_at.as_deref().and_then(parse_date).unwrap_or(credential.requested_expiry);
        Ok(Renewed {
            secret: SecretString::from(token),
            refresh_token: None,
            expires_at: Some(expiry_instant(expiry)),
            issued_at: parsed.created_at.as_deref().and_then(parse_time).unwrap_or(credential.requested_at),
            external_id: Some(id_text(&parsed.id)),
            refresh_token_rotates: None,
            assumed_lifetime: false,
            scope: None,
        })
    }

    /// `DELETE /personal_access_tokens/self` with the token itself (personal, project and group
    /// tokens alike): 204 revoked it; 401 means it no longer worked anyway.
    async fn revoke(&self, credential: &Credential) -> Result<Revocation, ProviderError> {
        let secret = Self::secret(credential)?;
        let request = self
            .client
            .delete(format!("{}/api/v4/personal_access_tokens/self", self.base_url))
            .header("PRIVATE-TOKEN", secret.expose_secret());
        let Answer { status, headers, body } = send(request).await?;
        match status {
            status if status.is_success() => Ok(Revocation::Revoked),
            StatusCode::UNAUTHORIZED => Ok(Revocation::AlreadyInvalid),
            StatusCode::FORBIDDEN => Err(ProviderError::permanent(
                "forbidden",
                format!("GitLab refused to let the token revoke itself: {}", body_snippet(&body)),
            )),
            _ => Err(classify_gitlab_error(status, &headers, &body)),
        }
    }

    async fn inspect(&self, credential: &Credential) -> Result<Option<TokenInfo>, ProviderError> {
        let secret = Self::secret(credential)?;
        let request = self
            .client
            .get(format!("{}/api/v4/personal_access_tokens/self", self.base_url))
            .header("PRIVATE-TOKEN", secret.expose_secret());
        let Answer { status, headers, body } = look_up(request).await?;
        if !status.is_success() {
            return Err(classify_gitlab_error(status, &headers, &body));
        }
        let parsed: TokenJson = serde_json::from_slice(&body).map_err(|err| {
            ProviderError::transient(format!(
                "GitLab's token lookup answer is not token JSON: {}",
                describe_json_error(&err)
            ))
        })?;
        Ok(Some(TokenInfo {
            id: id_text(&parsed.id),
            scopes: parsed.scopes,
            active: parsed.active.unwrap_or(true),
            revoked: parsed.revoked.unwrap_or(false),
            expires_at: parsed.expires_at.as_deref().and_then(parse_date),
            created_at: parsed.created_at.as_deref().and_then(parse_time),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_once() {
        assert_eq!(encode_path_id("42"), "42");
        assert_eq!(encode_path_id("group/sub/project"), "group%2Fsub%2Fproject");
        assert_eq!(encode_path_id("group%2Fproject"), "group%2Fproject");
    }

    #[test]
    fn expiry_is_midnight_utc_of_the_date() {
        let date = NaiveDate::from_ymd_opt(2027, 1, 31).unwrap();
        assert_eq!(expiry_instant(date).to_rfc3339(), "2027-01-31T00:00:00+00:00");
    }

    #[test]
    fn token_text_must_be_printable_and_bounded() {
        assert!(validate_token_text("token", "glpat-abc").is_ok());
        for bad in ["", "has space", "new\nline", &"x".repeat(5000)] {
            assert!(validate_token_text("token", bad).is_err());
        }
    }
}
