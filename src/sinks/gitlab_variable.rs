//! The GitLab CI/CD variable sink: the token's current secret written into a project's or a
//! group's CI/CD variable with a managing credential (a token tokenwarden keeps, whose role
//! and `api` scope let it write variables there).
//!
//! GitLab's rules (`../shared/gitlab-api.md`, "CI/CD variables") decide the steps: the secret
//! must pass GitLab's masking rule (checked here first: a secret that cannot be masked is
//! refused, never stored unmasked); an existing variable is read and updated with `PUT` only if
//! it is masked (masking and hiding cannot be changed later, and an unmasked one would show the
//! secret in job logs); a missing one is created masked and hidden. `raw` is always sent, since
//! its default is changing. Every refusal is explained in words an operator can act on.

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the variable lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// A project, by numeric id or full path.
    Project(String),
    /// A group, by numeric id or full path.
    Group(String),
}

impl Namespace {
    fn segment(&self) -> (&'static str, &str) {
        match self {
            Self::Project(id) => ("projects", id),
            Self::Group(id) => ("groups", id),
        }
    }

    /// "project ID" or "group ID".
    pub fn describe(&self) -> String {
        match self {
            Self::Project(id) => format!("project {id}"),
            Self::Group(id) => format!("group {id}"),
        }
    }

    fn needed_role(&self) -> &'static str {
        match self {
            Self::Project(_) => "the Maintainer role in the project",
            Self::Group(_) => "the Owner role in the group",
        }
    }
}

/// A CI/CD variable sink's settings (stored as JSON on the sink; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableSettings {
    /// The GitLab provider (its name) whose instance holds the variable.
    pub provider: String,
    /// The project or group.
    pub namespace: Namespace,
    /// The variable's key.
    pub key: String,
    /// The token (its name) whose secret authenticates the writes.
    pub manager: String,
    /// The variable's environment scope (`*` for all).
    pub environment_scope: String,
    /// Whether the variable is exposed only to protected branches and tags.
    pub protected: bool,
}

/// Whether GitLab accepts `key` as a variable key: letters, digits and `_`, at most 255.
pub fn check_key(key: &str) -> Result<(), String> {
    if !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("'{key}' is not a CI/CD variable key (letters, digits and '_', at most 255)"))
    }
}

/// GitLab's masking rule for a raw variable: at least 8 characters, none of them whitespace
/// (so one line). A secret breaking it is never sent.
pub fn check_maskable(secret: &str) -> Result<(), String> {
    if secret.chars().count() >= 8 && !secret.chars().any(char::is_whitespace) {
        Ok(())
    } else {
        Err("the secret cannot be masked by GitLab (a masked variable needs at least 8 characters and no \
             whitespace), so it is not written: tokenwarden never stores a secret in an unmasked variable"
            .to_owned())
    }
}

/// Where and with what to write.
pub struct Target<'a> {
    /// The GitLab instance's base URL.
    pub base_url: &'a str,
    /// The manager's current secret.
    pub credential: &'a SecretString,
    /// The sink's settings.
    pub settings: &'a VariableSettings,
}

/// Writes `secret` into the variable: updated when it exists (and is masked), created masked
/// and hidden when missing. The error says what GitLab refused and what to do about it.
pub async fn write(http: &reqwest::Client, target: &Target<'_>, secret: &SecretString) -> Result<(), String> {
    check_maskable(secret.expose_secret())?;
    let settings = target.settings;
    let scope = settings.environment_scope.as_str();
    let (status, body) =
        send(http, target, Method::GET, Some(&settings.key), &[("filter[environment_scope]", scope)]).await?;
    let protected = if settings.protected { "true" } else { "false" };
    let value = secret.expose_secret();
    match status {
        StatusCode::OK => {
            let existing: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if existing["masked"] != Value::Bool(true) {
                return Err(format!(
                    "CI/CD variable {} ({}, environment scope '{scope}') exists but is not masked; tokenwarden never \
                     writes a secret into an unmasked variable: delete it in GitLab (it is then created masked and \
                     hidden) or mark it masked",
                    settings.key,
                    settings.namespace.describe()
                ));
            }
            let fields =
                [("value", value), ("raw", "true"), ("protected", protected), ("filter[environment_scope]", scope)];
            let (status, body) = send(http, target, Method::PUT, Some(&settings.key), &fields).await?;
            expect_success(status, &body, target, "update")
        }
        StatusCode::NOT_FOUND if not_found_is_the_variable(&body) => {
            let fields = [
                ("key", settings.key.as_str()),
                ("value", value),
                ("masked_and_hidden", "true"),
                ("raw", "true"),
                ("protected", protected),
                ("environment_scope", scope),
                ("variable_type", "env_var"),
                ("description", "Managed by tokenwarden: replaced after every rotation of its token"),
            ];
            let (status, body) = send(http, target, Method::POST, None, &fields).await?;
            expect_success(status, &body, target, "create")
        }
        _ => Err(explain(status, &body, target, "read")),
    }
}

/// A 404 about the variable (to be created), not about the project or group (to be explained).
fn not_found_is_the_variable(body: &[u8]) -> bool {
    let message: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    message["message"].as_str().is_some_and(|text| text.contains("Variable"))
}

/// Tries of one request that GitLab answered with a 5xx or 429, or that got no answer.
const TRIES: u32 = 3;
/// Wait before the second try (doubled before the third).
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends one request, tried again (up to [`TRIES`]) while GitLab answers 5xx or 429 or nothing:
/// each is safe to repeat (a create that did act is refused as a duplicate, and the next
/// delivery then updates).
async fn send(
    http: &reqwest::Client,
    target: &Target<'_>,
    method: Method,
    key: Option<&str>,
    fields: &[(&str, &str)],
) -> Result<(StatusCode, Vec<u8>), String> {
    let (kind, id) = target.settings.namespace.segment();
    let mut url =
        reqwest::Url::parse(target.base_url).map_err(|err| format!("the provider's URL is unusable: {err}"))?;
    {
        let mut segments = url.path_segments_mut().map_err(|()| "the provider's URL cannot take a path".to_owned())?;
        segments.pop_if_empty().extend(["api", "v4", kind, id, "variables"]);
        if let Some(key) = key {
            segments.push(key);
        }
    }
    if method == Method::GET {
        url.query_pairs_mut().extend_pairs(fields);
    }
    let (mut pause, mut tried) = (FIRST_PAUSE, 1);
    loop {
        let request = http.request(method.clone(), url.clone()).bearer_auth(target.credential.expose_secret());
        let request = if method == Method::GET { request } else { request.form(fields) };
        let outcome = crate::providers::http::send(request).await;
        let again = match &outcome {
            Ok(answer) => answer.status.is_server_error() || answer.status == StatusCode::TOO_MANY_REQUESTS,
            Err(_) => true,
        };
        if !again || tried == TRIES {
            let answer =
                outcome.map_err(|err| format!("the CI/CD variable request to GitLab failed ({err}); retrying"))?;
            return Ok((answer.status, answer.body));
        }
        tokio::time::sleep(pause).await;
        (pause, tried) = (pause * 2, tried + 1);
    }
}

fn expect_success(status: StatusCode, body: &[u8], target: &Target<'_>, action: &str) -> Result<(), String> {
    if status.is_success() { Ok(()) } else { Err(explain(status, body, target, action)) }
}

/// What GitLab's refusal means for the operator.
fn explain(status: StatusCode, body: &[u8], target: &Target<'_>, action: &str) -> String {
    let settings = target.settings;
    let (manager, place) = (&settings.manager, settings.namespace.describe());
    let said = gitlab_message(body);
    match status.as_u16() {
        401 => format!(
            "GitLab refused manager token '{manager}' (401: {said}): it is revoked or expired; see `tokenwarden token show {manager}`"
        ),
        403 => format!(
            "manager token '{manager}' may not {action} CI/CD variables of {place} (403: {said}): it needs {} and \
             the api scope",
            settings.namespace.needed_role()
        ),
        404 => format!(
            "{place} was not found, or manager token '{manager}' cannot see it (404: {said}); check --project/--group \
             and the manager's membership"
        ),
        409 => format!("GitLab reports several variables {} in {place} (409: {said})", settings.key),
        400 => format!("GitLab refused to {action} CI/CD variable {} of {place} (400: {said})", settings.key),
        code => format!("GitLab answered {code} to the CI/CD variable {action} ({said}); retrying"),
    }
}

/// GitLab's `message` or `error_description`, or the start of the body.
fn gitlab_message(body: &[u8]) -> String {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = match (&parsed["message"], &parsed["error_description"]) {
        (Value::String(message), _) => message.clone(),
        (Value::Null, Value::String(description)) => description.clone(),
        (Value::Null, _) => String::from_utf8_lossy(body).chars().take(200).collect(),
        (other, _) => other.to_string(),
    };
    if text.is_empty() { "no message".to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_gitlab_cannot_mask_are_refused_before_sending() {
        assert!(check_maskable("glpat-0123456789abcdef").is_ok());
        assert!(check_maskable("a$b%c^d&").is_ok(), "raw values may hold any non-whitespace character");
        let short = check_maskable("1234567").unwrap_err();
        assert!(short.contains("cannot be masked") && short.contains("never stores"), "{short}");
        assert!(check_maskable("has a space").is_err());
        assert!(check_maskable("two\nlines-secret").is_err());
    }

    #[test]
    fn keys_follow_gitlabs_rule() {
        assert!(check_key("GITLAB_TOKEN_2").is_ok());
        assert!(check_key("bad-key").is_err());
        assert!(check_key("").is_err());
        assert!(check_key(&"K".repeat(256)).is_err());
    }

    #[test]
    fn a_namespace_is_stored_as_one_tagged_field() {
        let json = serde_json::to_value(Namespace::Group("acme/platform".into())).unwrap();
        assert_eq!(json, serde_json::json!({"group": "acme/platform"}));
    }
}
