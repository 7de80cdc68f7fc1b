//! Token administration at GitLab through a managing credential (a Maintainer's or Owner's
//! token or grant with the `api` scope): project and group access tokens created, listed by
//! name and revoked. The create call is a provider call like a rotation (its outcome classified
//! the same way); listing and revoking are what resolves an unknown outcome.

use chrono::{DateTime, NaiveDate, Utc};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ProviderError;
use super::gitlab::{encode_path_id, expiry_instant, validate_token_text};
use super::http::{Answer, body_snippet, classify_status, describe_json_error, look_up, send};

/// Where the tokens live: a project or a group (id or URL-encoded path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// `/projects/:id`.
    Project(String),
    /// `/groups/:id`.
    Group(String),
}

impl Namespace {
    fn path(&self) -> String {
        match self {
            Namespace::Project(id) => format!("projects/{}", encode_path_id(id)),
            Namespace::Group(id) => format!("groups/{}", encode_path_id(id)),
        }
    }

    /// The role GitLab requires of the manager here.
    fn required_role(&self) -> &'static str {
        match self {
            Namespace::Project(_) => "Maintainer",
            Namespace::Group(_) => "Owner",
        }
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewAccessToken {
    /// Its name at GitLab.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its role (10 Guest … 50 Owner).
    pub access_level: u8,
    /// Its expiry date.
    pub expires_at: NaiveDate,
}

/// A created token: the secret is in this answer only.
#[derive(Debug)]
pub struct CreatedToken {
    /// GitLab's id.
    pub id: String,
    /// The secret.
    pub secret: SecretString,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Its scopes.
    pub scopes: Vec<String>,
}

/// A listed token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedToken {
    /// GitLab's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Whether it works.
    #[serde(default)]
    pub active: bool,
    /// Whether it was revoked.
    #[serde(default)]
    pub revoked: bool,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct CreateAnswer {
    id: u64,
    token: String,
    expires_at: Option<NaiveDate>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// The client of one GitLab instance acting with one managing credential.
#[derive(Debug, Clone)]
pub struct TokenAdmin {
    client: reqwest::Client,
    base_url: String,
    manager: SecretString,
    manager_name: String,
}

impl TokenAdmin {
    /// Acts at `base_url` with `manager`'s secret; `manager_name` (the managing token's name in
    /// tokenwarden) names it in refusals.
    pub fn new(client: reqwest::Client, base_url: &str, manager: SecretString, manager_name: &str) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            manager,
            manager_name: manager_name.to_owned(),
        }
    }

    fn url(&self, namespace: &Namespace, rest: &str) -> String {
        format!("{}/api/v4/{}/access_tokens{rest}", self.base_url, namespace.path())
    }

    /// Explains a refusal: GitLab's 401/403/404 in terms of what the manager lacks.
    fn refusal(
        &self,
        namespace: &Namespace,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let manager = &self.manager_name;
        let said = body_snippet(body);
        match status {
            StatusCode::UNAUTHORIZED => ProviderError::permanent(
                "manager_rejected",
                format!(
                    "GitLab does not accept the managing token '{manager}' (401: {said}); it may be revoked or expired"
                ),
            ),
            StatusCode::FORBIDDEN if said.contains("insufficient_scope") => ProviderError::permanent(
                "manager_scope",
                format!("the managing token '{manager}' lacks the api scope GitLab requires (403: {said})"),
            ),
            StatusCode::FORBIDDEN => ProviderError::permanent(
                "manager_role",
                format!(
                    "GitLab refused the managing token '{manager}' (403: {said}): it needs the {} role there, and a token's access level may not exceed the manager's",
                    namespace.required_role()
                ),
            ),
            StatusCode::NOT_FOUND => ProviderError::permanent(
                "not_found",
                format!(
                    "GitLab knows no such project or group, or the managing token '{manager}' cannot see it (404: {said})"
                ),
            ),
            StatusCode::BAD_REQUEST => {
                ProviderError::permanent("bad_request", format!("GitLab refused the request (400: {said})"))
            }
            _ => classify_status(status, headers, body),
        }
    }

    /// `POST …/access_tokens`.
    pub async fn create(&self, namespace: &Namespace, new: &NewAccessToken) -> Result<CreatedToken, ProviderError> {
        let mut form: Vec<(&str, String)> = vec![
            ("name", new.name.clone()),
            ("access_level", new.access_level.to_string()),
            ("expires_at", new.expires_at.format("%Y-%m-%d").to_string()),
        ];
        form.extend(new.scopes.iter().map(|scope| ("scopes[]", scope.clone())));
        let request =
            self.client.post(self.url(namespace, "")).header("PRIVATE-TOKEN", self.manager.expose_secret()).form(&form);
        let Answer { status, headers, body } = send(request).await?;
        if !status.is_success() {
            return Err(self.refusal(namespace, status, &headers, &body));
        }
        let answer: CreateAnswer = serde_json::from_slice(&body).map_err(|err| {
            ProviderError::unknown(format!(
                "GitLab created a token but its answer is unreadable: {}",
                describe_json_error(&err)
            ))
        })?;
        validate_token_text("token", &answer.token)?;
        let expires_at = answer.expires_at.unwrap_or(new.expires_at);
        Ok(CreatedToken {
            id: answer.id.to_string(),
            secret: SecretString::from(answer.token),
            expires_at: expiry_instant(expires_at),
            scopes: answer.scopes,
        })
    }

    /// `GET …/access_tokens?state=active&search=NAME`, keeping exactly that name.
    pub async fn active_named(&self, namespace: &Namespace, name: &str) -> Result<Vec<ListedToken>, ProviderError> {
        let url = reqwest::Url::parse_with_params(&self.url(namespace, ""), [("state", "active"), ("search", name)])
            .map_err(|err| ProviderError::permanent("bad_url", format!("the provider's URL is unusable: {err}")))?;
        let request = self.client.get(url).header("PRIVATE-TOKEN", self.manager.expose_secret());
        let Answer { status, headers, body } = look_up(request).await?;
        if !status.is_success() {
            return Err(self.refusal(namespace, status, &headers, &body));
        }
        let listed: Vec<ListedToken> = serde_json::from_slice(&body).map_err(|err| {
            ProviderError::transient(format!("GitLab's token list is unreadable: {}", describe_json_error(&err)))
        })?;
        Ok(listed.into_iter().filter(|token| token.name == name && token.active && !token.revoked).collect())
    }

    /// `DELETE …/access_tokens/:id` (a token already gone counts as revoked).
    pub async fn revoke(&self, namespace: &Namespace, id: u64) -> Result<(), ProviderError> {
        let request = self
            .client
            .delete(self.url(namespace, &format!("/{id}")))
            .header("PRIVATE-TOKEN", self.manager.expose_secret());
        let Answer { status, headers, body } = send(request).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.refusal(namespace, status, &headers, &body))
    }
}
