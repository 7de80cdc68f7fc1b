//! Who a GitLab access token belongs to (`GET /api/v4/user`): how an authorisation learns which
//! GitLab user consented, so a re-authorisation by somebody else can be refused.

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ProviderError;
use super::http::{Answer, body_snippet, classify_status, describe_json_error, look_up};

/// A GitLab user as tokenwarden records it on a grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GitlabUser {
    /// GitLab's numeric user id, as text.
    pub id: String,
    /// The username (without `@`).
    pub username: String,
}

#[derive(Deserialize)]
struct UserAnswer {
    id: u64,
    username: String,
}

/// Asks `{base_url}/api/v4/user` who `access_token` belongs to. A look-up: any failure to get
/// the answer is transient, a 401 permanent (`revoked`).
pub async fn current_user(
    client: &reqwest::Client,
    base_url: &str,
    access_token: &SecretString,
) -> Result<GitlabUser, ProviderError> {
    let url = format!("{}/api/v4/user", base_url.trim_end_matches('/'));
    let Answer { status, headers, body } = look_up(client.get(url).bearer_auth(access_token.expose_secret())).await?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(ProviderError::permanent(
            "revoked",
            format!("GitLab did not accept the new access token at /api/v4/user: {}", body_snippet(&body)),
        ));
    }
    if !status.is_success() {
        return Err(classify_status(status, &headers, &body));
    }
    let user: UserAnswer = serde_json::from_slice(&body).map_err(|err| {
        ProviderError::transient(format!("GitLab's /api/v4/user answer is not a user: {}", describe_json_error(&err)))
    })?;
    if user.username.is_empty() || user.username.len() > 255 || user.username.chars().any(char::is_control) {
        return Err(ProviderError::transient("GitLab's /api/v4/user answer has no usable username"));
    }
    Ok(GitlabUser { id: user.id.to_string(), username: user.username })
}
