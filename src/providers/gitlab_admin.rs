//! Token administration at GitLab through a managing credential (a Maintainer's or Owner's
//! token or grant with the `api` scope): project and group access tokens and deploy tokens
//! created, listed by name and revoked. The create call is a provider call like a rotation (its
//! outcome classified the same way); listing and revoking are what resolves an unknown outcome.

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
    /// The namespace `resource` names, by its kind (`project` or `group`).
    pub fn from_parts(resource_kind: &str, resource: &str) -> Option<Self> {
        match resource_kind {
            "project" => Some(Namespace::Project(resource.to_owned())),
            "group" => Some(Namespace::Group(resource.to_owned())),
            _ => None,
        }
    }

    /// `project` or `group`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Namespace::Project(_) => "project",
            Namespace::Group(_) => "group",
        }
    }

    /// The project's or group's id or path.
    pub fn id(&self) -> &str {
        match self {
            Namespace::Project(id) | Namespace::Group(id) => id,
        }
    }

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

/// The most pages of 100 tokens read from one list (50,000 tokens of one name or namespace).
pub const MAX_LIST_PAGES: usize = 500;

/// Which of a namespace's token collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `…/access_tokens`: project or group access tokens.
    AccessTokens,
    /// `…/deploy_tokens`: deploy tokens (no rotate endpoint; no role, a username).
    DeployTokens,
}

/// Where managed tokens are made: a namespace's access tokens or its deploy tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The project or group.
    pub namespace: Namespace,
    /// Its access tokens or its deploy tokens.
    pub family: Family,
}

impl Place {
    fn collection(&self) -> String {
        let family = match self.family {
            Family::AccessTokens => "access_tokens",
            Family::DeployTokens => "deploy_tokens",
        };
        format!("{}/{family}", self.namespace.path())
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewAccessToken {
    /// Its name at GitLab.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its role (10 Guest … 50 Owner; deploy tokens have none).
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
    /// The username it authenticates with (deploy tokens).
    pub username: Option<String>,
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
    /// Whether it expired (deploy tokens say this instead of `active`).
    #[serde(default)]
    pub expired: bool,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct CreateAnswer {
    id: u64,
    token: String,
    expires_at: Option<Expiry>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    username: Option<String>,
}

/// An expiry as GitLab writes it: a date for access tokens, a time for deploy tokens.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expiry {
    Date(NaiveDate),
    Time(DateTime<Utc>),
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

    fn url(&self, place: &Place, rest: &str) -> String {
        format!("{}/api/v4/{}{rest}", self.base_url, place.collection())
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

    /// `POST …/access_tokens` or `POST …/deploy_tokens` (the expiry as a time, no role).
    pub async fn create(&self, place: &Place, new: &NewAccessToken) -> Result<CreatedToken, ProviderError> {
        let mut form: Vec<(&str, String)> = vec![("name", new.name.clone())];
        match place.family {
            Family::AccessTokens => {
                form.push(("access_level", new.access_level.to_string()));
                form.push(("expires_at", new.expires_at.format("%Y-%m-%d").to_string()));
            }
            Family::DeployTokens => form.push(("expires_at", expiry_instant(new.expires_at).to_rfc3339())),
        }
        form.extend(new.scopes.iter().map(|scope| ("scopes[]", scope.clone())));
        let request =
            self.client.post(self.url(place, "")).header("PRIVATE-TOKEN", self.manager.expose_secret()).form(&form);
        let Answer { status, headers, body } = send(request).await?;
        if !status.is_success() {
            return Err(self.refusal(&place.namespace, status, &headers, &body));
        }
        let answer: CreateAnswer = serde_json::from_slice(&body).map_err(|err| {
            ProviderError::unknown(format!(
                "GitLab created a token but its answer is unreadable: {}",
                describe_json_error(&err)
            ))
        })?;
        validate_token_text("token", &answer.token)?;
        let expires_at = match answer.expires_at {
            Some(Expiry::Time(at)) => at,
            Some(Expiry::Date(date)) => expiry_instant(date),
            None => expiry_instant(new.expires_at),
        };
        Ok(CreatedToken {
            id: answer.id.to_string(),
            secret: SecretString::from(answer.token),
            expires_at,
            scopes: answer.scopes,
            username: answer.username,
        })
    }

    /// The live tokens named exactly `name`: `GET …/access_tokens?state=active&search=NAME`, or
    /// `GET …/deploy_tokens?active=true` (deploy tokens cannot be searched by name), 100 a page,
    /// following GitLab's `X-Next-Page` through every page (at most [`MAX_LIST_PAGES`]).
    pub async fn active_named(&self, place: &Place, name: &str) -> Result<Vec<ListedToken>, ProviderError> {
        let filter: &[(&str, &str)] = match place.family {
            Family::AccessTokens => &[("state", "active"), ("search", name)],
            Family::DeployTokens => &[("active", "true")],
        };
        let live = |token: &ListedToken| match place.family {
            Family::AccessTokens => token.active && !token.revoked,
            Family::DeployTokens => !token.revoked && !token.expired,
        };
        let mut found = Vec::new();
        let mut page = String::from("1");
        for _ in 0..MAX_LIST_PAGES {
            let query = filter.iter().copied().chain([("per_page", "100"), ("page", page.as_str())]);
            let url = reqwest::Url::parse_with_params(&self.url(place, ""), query)
                .map_err(|err| ProviderError::permanent("bad_url", format!("the provider's URL is unusable: {err}")))?;
            let request = self.client.get(url).header("PRIVATE-TOKEN", self.manager.expose_secret());
            let Answer { status, headers, body } = look_up(request).await?;
            if !status.is_success() {
                return Err(self.refusal(&place.namespace, status, &headers, &body));
            }
            let listed: Vec<ListedToken> = serde_json::from_slice(&body).map_err(|err| {
                ProviderError::transient(format!("GitLab's token list is unreadable: {}", describe_json_error(&err)))
            })?;
            found.extend(listed.into_iter().filter(|token| token.name == name && live(token)));
            match headers.get("x-next-page").and_then(|next| next.to_str().ok()).map(str::trim) {
                Some(next) if !next.is_empty() => page = next.to_owned(),
                _ => return Ok(found),
            }
        }
        Err(ProviderError::transient(format!(
            "GitLab's token list of {} '{}' runs past {MAX_LIST_PAGES} pages of 100; not all of it was read",
            place.namespace.kind_name(),
            place.namespace.id()
        )))
    }

    /// `DELETE …/access_tokens/:id` or `…/deploy_tokens/:id` (a token already gone counts as
    /// revoked).
    pub async fn revoke(&self, place: &Place, id: u64) -> Result<(), ProviderError> {
        let request = self
            .client
            .delete(self.url(place, &format!("/{id}")))
            .header("PRIVATE-TOKEN", self.manager.expose_secret());
        let Answer { status, headers, body } = send(request).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.refusal(&place.namespace, status, &headers, &body))
    }
}
