//! The simulator's token administration through a managing credential (issue 13), with
//! GitLab's rules (`../shared/gitlab-api.md`): project and group access tokens created, listed
//! and revoked, and deploy tokens (no rotate endpoint) created, listed and revoked. Every call
//! needs a credential with the `api` scope of a Maintainer (project) or Owner (group); an access
//! token may not get a role above its creator's. Pure state, no HTTP.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::fields::{Fields, field};
use super::state::{AccessToken, GitlabState, TokenOwner, random_secret};
use super::variables::{Namespace, Refusal};

/// The scopes GitLab accepts for a project or group access token.
pub const ACCESS_TOKEN_SCOPES: &[&str] = &[
    "api",
    "read_api",
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
    "create_runner",
    "manage_runner",
    "ai_features",
    "k8s_proxy",
    "self_rotate",
];

/// The scopes GitLab accepts for a deploy token.
pub const DEPLOY_TOKEN_SCOPES: &[&str] =
    &["read_repository", "read_registry", "write_registry", "read_package_registry", "write_package_registry"];

/// One deploy token as GitLab keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployToken {
    /// GitLab's id.
    pub id: u64,
    /// Its project or group.
    pub namespace: Namespace,
    /// Its name.
    pub name: String,
    /// The username it authenticates with.
    pub username: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// The secret (shown once, at creation).
    pub secret: String,
    /// Revoked (deleted).
    pub revoked: bool,
}

impl DeployToken {
    /// GitLab's JSON for it, without the secret.
    pub fn to_json(&self, now: DateTime<Utc>) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "username": self.username,
            "expires_at": self.expires_at.map(|at| at.to_rfc3339()),
            "scopes": self.scopes,
            "revoked": self.revoked,
            "expired": self.expires_at.is_some_and(|at| at <= now),
        })
    }
}

/// The values of an array field (`scopes[]=a&scopes[]=b`, or `scopes=a,b`).
fn list(fields: &Fields, name: &str) -> Vec<String> {
    let array = format!("{name}[]");
    fields
        .iter()
        .filter(|(k, _)| *k == array || k == name)
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned))
        .collect()
}

fn bad_request(message: Value) -> Refusal {
    Refusal { status: 400, message }
}

fn owner_of(namespace: &Namespace) -> TokenOwner {
    match namespace {
        Namespace::Project(id) => TokenOwner::Project(id.clone()),
        Namespace::Group(id) => TokenOwner::Group(id.clone()),
    }
}

impl GitlabState {
    /// Checks that `secret` may administer tokens of `namespace` (GitLab's order: 401, the
    /// `api` scope, visibility 404, the role 403) and returns the presenter's role there.
    pub fn manager_level(
        &self,
        secret: Option<&str>,
        namespace: &Namespace,
        now: DateTime<Utc>,
    ) -> Result<u8, Refusal> {
        let Some(presenter) = secret.and_then(|secret| self.presenter(secret, now)) else {
            return Err(Refusal { status: 401, message: json!("401 Unauthorized") });
        };
        if !presenter.scopes.iter().any(|scope| scope == "api") {
            return Err(Refusal::insufficient_scope());
        }
        match self.access_level(&presenter, namespace) {
            None => Err(Refusal { status: 404, message: json!(namespace.not_found()) }),
            Some(level) if level < namespace.required_level() => {
                Err(Refusal { status: 403, message: json!("403 Forbidden") })
            }
            Some(level) => Ok(level),
        }
    }

    /// `POST …/access_tokens` by a manager whose role there is `manager_level`: `name`,
    /// `scopes[]`, `access_level` (default Maintainer, never above the manager's), `expires_at`
    /// (a date after today, at most 365 days ahead).
    pub fn create_resource_access_token(
        &mut self,
        manager_level: u8,
        namespace: &Namespace,
        fields: &Fields,
        now: DateTime<Utc>,
    ) -> Result<(AccessToken, String), Refusal> {
        let name = field(fields, "name").unwrap_or_default();
        if name.is_empty() {
            return Err(bad_request(json!("name is missing")));
        }
        let scopes = list(fields, "scopes");
        if scopes.is_empty() || scopes.iter().any(|scope| !ACCESS_TOKEN_SCOPES.contains(&scope.as_str())) {
            return Err(bad_request(json!("scopes does not have a valid value")));
        }
        let access_level = match field(fields, "access_level").map(str::parse::<u8>) {
            None => super::variables::MAINTAINER,
            Some(Ok(level)) if [10, 15, 20, 30, 40, 50].contains(&level) => level,
            Some(_) => return Err(bad_request(json!("access_level does not have a valid value"))),
        };
        if access_level > manager_level {
            return Err(Refusal {
                status: 403,
                message: json!(
                    "403 Forbidden - Access level of the token can't be greater than the access level of the user who created the token"
                ),
            });
        }
        let expires_at = expiry_date(field(fields, "expires_at"), now)?;
        let (id, secret) = (self.next_id(), random_secret("glpat-"));
        let token = AccessToken {
            id,
            family: id,
            name: name.to_owned(),
            owner: owner_of(namespace),
            scopes,
            expires_at,
            created_at: now,
            revoked: false,
            rotated: false,
            access_level,
        };
        self.access_tokens.insert(secret.clone(), token.clone());
        Ok((token, secret))
    }

    /// `GET …/access_tokens` (`state=active|inactive`, `search=` on the name): metadata only.
    pub fn resource_access_tokens(
        &self,
        namespace: &Namespace,
        fields: &Fields,
        now: DateTime<Utc>,
    ) -> Vec<AccessToken> {
        let owner = owner_of(namespace);
        let wanted_state = field(fields, "state");
        let search = field(fields, "search").unwrap_or_default().to_lowercase();
        let mut tokens: Vec<AccessToken> = self
            .access_tokens
            .values()
            .filter(|token| token.owner == owner)
            .filter(|token| match wanted_state {
                Some("active") => token.is_active(now),
                Some("inactive") => !token.is_active(now),
                _ => true,
            })
            .filter(|token| token.name.to_lowercase().contains(&search))
            .cloned()
            .collect();
        tokens.sort_by_key(|token| token.id);
        tokens
    }

    /// `DELETE …/access_tokens/:id`: revokes it (404 when it is not this namespace's).
    pub fn revoke_resource_access_token(&mut self, namespace: &Namespace, id: u64) -> Result<(), Refusal> {
        let owner = owner_of(namespace);
        let token = self.access_tokens.values_mut().find(|token| token.id == id && token.owner == owner);
        let Some(token) = token else {
            return Err(Refusal { status: 404, message: json!("404 Not Found") });
        };
        token.revoked = true;
        self.stats.revocations += 1;
        Ok(())
    }

    /// `POST …/deploy_tokens`: `name`, `scopes[]`, optional `expires_at` (ISO 8601) and
    /// `username` (default `gitlab+deploy-token-ID`). The answer is the only time the secret is
    /// shown.
    pub fn create_deploy_token(&mut self, namespace: &Namespace, fields: &Fields) -> Result<DeployToken, Refusal> {
        let name = field(fields, "name").unwrap_or_default();
        if name.is_empty() {
            return Err(bad_request(json!({"name": ["can't be blank"]})));
        }
        let scopes = list(fields, "scopes");
        if scopes.is_empty() || scopes.iter().any(|scope| !DEPLOY_TOKEN_SCOPES.contains(&scope.as_str())) {
            return Err(bad_request(json!("scopes does not have a valid value")));
        }
        let expires_at = match field(fields, "expires_at").filter(|text| !text.is_empty()) {
            None => None,
            Some(text) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map(|at| at.with_timezone(&Utc))
                    .or_else(|_| {
                        NaiveDate::parse_from_str(text, "%Y-%m-%d")
                            .map(|date| date.and_time(chrono::NaiveTime::MIN).and_utc())
                    })
                    .map_err(|_| bad_request(json!("expires_at is invalid")))?,
            ),
        };
        let id = self.next_id();
        let token = DeployToken {
            id,
            namespace: namespace.clone(),
            name: name.to_owned(),
            username: field(fields, "username").map_or_else(|| format!("gitlab+deploy-token-{id}"), str::to_owned),
            scopes,
            expires_at,
            secret: random_secret("gldt-"),
            revoked: false,
        };
        self.deploy_tokens.push(token.clone());
        Ok(token)
    }

    /// `GET …/deploy_tokens`: this namespace's deploy tokens (metadata only).
    pub fn deploy_tokens_of(&self, namespace: &Namespace) -> Vec<DeployToken> {
        self.deploy_tokens.iter().filter(|token| token.namespace == *namespace).cloned().collect()
    }

    /// `DELETE …/deploy_tokens/:id`: revokes and removes it.
    pub fn revoke_deploy_token(&mut self, namespace: &Namespace, id: u64) -> Result<(), Refusal> {
        let before = self.deploy_tokens.len();
        self.deploy_tokens.retain(|token| !(token.id == id && token.namespace == *namespace));
        if self.deploy_tokens.len() == before {
            return Err(Refusal { status: 404, message: json!("404 Not Found") });
        }
        self.stats.revocations += 1;
        Ok(())
    }

    /// Whether a deploy token with this secret exists (not revoked, not expired).
    pub fn deploy_token_works(&self, secret: &str, now: DateTime<Utc>) -> bool {
        self.deploy_tokens.iter().any(|token| token.secret == secret && token.expires_at.is_none_or(|at| at > now))
    }
}

/// An access token's `expires_at`: a date after today, at most 365 days ahead (required).
fn expiry_date(text: Option<&str>, now: DateTime<Utc>) -> Result<NaiveDate, Refusal> {
    let today = now.date_naive();
    let date = text
        .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .ok_or_else(|| bad_request(json!("expires_at is missing or not a date")))?;
    let latest = today + chrono::Days::new(super::state::MAX_LIFETIME_DAYS);
    if date <= today || date > latest {
        return Err(bad_request(json!(format!("expires_at must be after today and no later than {latest}"))));
    }
    Ok(date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::variables::{MAINTAINER, OWNER};

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn in_days(days: u64) -> String {
        (Utc::now().date_naive() + chrono::Days::new(days)).format("%Y-%m-%d").to_string()
    }

    #[test]
    fn a_maintainer_with_api_creates_lists_and_revokes_project_access_tokens_but_not_above_its_role() {
        let mut state = GitlabState::new();
        let project = Namespace::Project("42".into());
        state.memberships.insert(project.clone(), MAINTAINER);
        let manager = state
            .create_access_token(
                TokenOwner::Personal,
                vec!["api".into()],
                Utc::now().date_naive() + chrono::Days::new(30),
                Utc::now(),
            )
            .1;
        let level = state.manager_level(Some(&manager), &project, Utc::now()).unwrap();
        assert_eq!(level, MAINTAINER);
        let expiry = in_days(30);
        let ok =
            fields(&[("name", "ci"), ("scopes[]", "api"), ("scopes[]", "read_repository"), ("expires_at", &expiry)]);
        let (token, secret) = state.create_resource_access_token(level, &project, &ok, Utc::now()).unwrap();
        assert_eq!((token.access_level, token.scopes.len()), (MAINTAINER, 2));
        assert!(state.access_token(&secret).is_some_and(|t| t.is_active(Utc::now())));
        let owner_token =
            fields(&[("name", "x"), ("scopes[]", "api"), ("access_level", "50"), ("expires_at", &expiry)]);
        assert_eq!(
            state.create_resource_access_token(level, &project, &owner_token, Utc::now()).unwrap_err().status,
            403
        );
        let too_long = fields(&[("name", "x"), ("scopes[]", "api"), ("expires_at", &in_days(400))]);
        assert_eq!(state.create_resource_access_token(level, &project, &too_long, Utc::now()).unwrap_err().status, 400);
        let listed =
            state.resource_access_tokens(&project, &fields(&[("state", "active"), ("search", "CI")]), Utc::now());
        assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [token.id]);
        state.revoke_resource_access_token(&project, token.id).unwrap();
        assert!(!state.access_token(&secret).unwrap().is_active(Utc::now()));
        assert_eq!(
            state.revoke_resource_access_token(&Namespace::Project("7".into()), token.id).unwrap_err().status,
            404
        );
    }

    #[test]
    fn managers_without_the_role_or_the_scope_are_refused_as_gitlab_does() {
        let mut state = GitlabState::new();
        let group = Namespace::Group("g".into());
        let expires = Utc::now().date_naive() + chrono::Days::new(30);
        let reader = state.create_access_token(TokenOwner::Personal, vec!["read_api".into()], expires, Utc::now()).1;
        let writer = state.create_access_token(TokenOwner::Personal, vec!["api".into()], expires, Utc::now()).1;
        assert_eq!(state.manager_level(None, &group, Utc::now()).unwrap_err().status, 401);
        assert_eq!(state.manager_level(Some(&writer), &group, Utc::now()).unwrap_err().status, 404, "not a member");
        state.memberships.insert(group.clone(), MAINTAINER);
        assert_eq!(
            state.manager_level(Some(&writer), &group, Utc::now()).unwrap_err().status,
            403,
            "a group needs an Owner"
        );
        assert_eq!(
            state.manager_level(Some(&reader), &group, Utc::now()).unwrap_err().status,
            403,
            "read_api is not enough"
        );
        state.memberships.insert(group.clone(), OWNER);
        assert_eq!(state.manager_level(Some(&writer), &group, Utc::now()), Ok(OWNER));
    }

    #[test]
    fn deploy_tokens_show_their_secret_once_and_are_gone_when_revoked() {
        let mut state = GitlabState::new();
        let project = Namespace::Project("42".into());
        let created = state
            .create_deploy_token(
                &project,
                &fields(&[("name", "deploy"), ("scopes[]", "read_repository"), ("username", "bot")]),
            )
            .unwrap();
        assert!(created.secret.starts_with("gldt-") && state.deploy_token_works(&created.secret, Utc::now()));
        let listed = state.deploy_tokens_of(&project);
        assert!(!listed[0].to_json(Utc::now()).to_string().contains(&created.secret), "never listed with its secret");
        assert_eq!(
            state.create_deploy_token(&project, &fields(&[("name", "d"), ("scopes[]", "api")])).unwrap_err().status,
            400
        );
        state.revoke_deploy_token(&project, created.id).unwrap();
        assert!(!state.deploy_token_works(&created.secret, Utc::now()) && state.deploy_tokens_of(&project).is_empty());
    }
}
