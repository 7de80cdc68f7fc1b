//! The simulator's CI/CD variables of projects and groups, with GitLab's rules
//! (`../shared/gitlab-api.md`, "CI/CD variables"): who may write them (Maintainer for a project,
//! Owner for a group, the `api` scope), keys, masking, `masked_and_hidden` on create only,
//! several variables of one key told apart by environment scope. Pure state, no HTTP.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::fields::{Fields, field};

/// GitLab's Maintainer access level.
pub const MAINTAINER: u8 = 40;
/// GitLab's Owner access level.
pub const OWNER: u8 = 50;

/// A project or a group, by id or path as given in the URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// `/projects/:id`.
    Project(String),
    /// `/groups/:id`.
    Group(String),
}

impl Namespace {
    /// The level GitLab asks of a credential that writes this namespace's variables.
    pub fn required_level(&self) -> u8 {
        match self {
            Self::Project(_) => MAINTAINER,
            Self::Group(_) => OWNER,
        }
    }

    /// GitLab's 404 text for it.
    pub fn not_found(&self) -> &'static str {
        match self {
            Self::Project(_) => "404 Project Not Found",
            Self::Group(_) => "404 Group Not Found",
        }
    }
}

/// One CI/CD variable as GitLab keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// `env_var` or `file`.
    pub variable_type: String,
    /// Only for protected branches and tags.
    pub protected: bool,
    /// Masked in job logs.
    pub masked: bool,
    /// Never shown again through the API or the UI.
    pub hidden: bool,
    /// Not expanded.
    pub raw: bool,
    /// The environments it applies to.
    pub environment_scope: String,
    /// Free text.
    pub description: Option<String>,
}

impl Variable {
    /// GitLab's JSON for it (a hidden variable's value is `null`).
    pub fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "value": if self.hidden { Value::Null } else { Value::from(self.value.clone()) },
            "variable_type": self.variable_type,
            "protected": self.protected,
            "masked": self.masked,
            "hidden": self.hidden,
            "raw": self.raw,
            "environment_scope": self.environment_scope,
            "description": self.description,
        })
    }
}

/// Why a variables request was refused: the status and GitLab's `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// GitLab's `message` (a string or an object of field errors).
    pub message: Value,
}

impl Refusal {
    fn new(status: u16, message: impl Into<Value>) -> Self {
        Self { status, message: message.into() }
    }

    /// GitLab's 403 for a credential without the `api` scope.
    pub fn insufficient_scope() -> Self {
        Self::new(
            403,
            json!({
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": "api"
            }),
        )
    }

    /// The response body: `{"message": …}`, or an OAuth error object as it is.
    pub fn body(&self) -> Value {
        if self.message.get("error").is_some() { self.message.clone() } else { json!({"message": self.message}) }
    }
}

fn flag(fields: &Fields, name: &str) -> Option<bool> {
    field(fields, name).map(|value| matches!(value, "true" | "1"))
}

/// Whether GitLab accepts `key`: letters, digits and `_`, at most 255.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// GitLab's masking rule: at least 8 characters on one line; when not raw only
/// `[a-zA-Z0-9_+=/@:.~-]`, when raw any non-whitespace character.
pub fn maskable(value: &str, raw: bool) -> bool {
    let allowed = |c: char| {
        if raw { !c.is_whitespace() } else { c.is_ascii_alphanumeric() || "_+=/@:.~-".contains(c) }
    };
    value.chars().count() >= 8 && value.chars().all(allowed)
}

fn masking_refusal() -> Refusal {
    Refusal::new(400, json!({"value": ["is invalid and cannot be masked"]}))
}

/// Every namespace's variables.
#[derive(Debug, Default)]
pub struct Variables {
    by_namespace: HashMap<Namespace, Vec<Variable>>,
}

impl Variables {
    /// The variables of `namespace`, in creation order.
    pub fn list(&self, namespace: &Namespace) -> &[Variable] {
        self.by_namespace.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The one variable `key` (in `scope` when given): 404 when there is none, 409 when
    /// several environment scopes have it and no filter picks one.
    pub fn get(&self, namespace: &Namespace, key: &str, scope: Option<&str>) -> Result<&Variable, Refusal> {
        let index = self.find(namespace, key, scope)?;
        Ok(&self.by_namespace[namespace][index])
    }

    fn find(&self, namespace: &Namespace, key: &str, scope: Option<&str>) -> Result<usize, Refusal> {
        let matching: Vec<usize> = self
            .list(namespace)
            .iter()
            .enumerate()
            .filter(|(_, variable)| variable.key == key && scope.is_none_or(|s| variable.environment_scope == s))
            .map(|(index, _)| index)
            .collect();
        match matching.as_slice() {
            [] => Err(Refusal::new(404, "404 Variable Not Found")),
            [one] => Ok(*one),
            _ => Err(Refusal::new(
                409,
                "There are multiple variables with provided parameters. Please use 'filter[environment_scope]'",
            )),
        }
    }

    /// `POST …/variables`.
    pub fn create(&mut self, namespace: &Namespace, fields: &Fields) -> Result<Variable, Refusal> {
        let key = field(fields, "key").unwrap_or_default();
        if !valid_key(key) {
            return Err(Refusal::new(
                400,
                json!({"key": ["can contain only letters, digits and '_'.", "is too long (maximum is 255 characters)"]}),
            ));
        }
        let value = field(fields, "value").unwrap_or_default().to_owned();
        let environment_scope = field(fields, "environment_scope").unwrap_or("*").to_owned();
        let hidden = flag(fields, "masked_and_hidden").unwrap_or(false);
        let masked = hidden || flag(fields, "masked").unwrap_or(false);
        let raw = flag(fields, "raw").unwrap_or(false);
        if masked && !maskable(&value, raw) {
            return Err(masking_refusal());
        }
        if self.list(namespace).iter().any(|v| v.key == key && v.environment_scope == environment_scope) {
            return Err(Refusal::new(400, json!({"key": [format!("({key}) has already been taken")]})));
        }
        let variable = Variable {
            key: key.to_owned(),
            value,
            variable_type: field(fields, "variable_type").unwrap_or("env_var").to_owned(),
            protected: flag(fields, "protected").unwrap_or(false),
            masked,
            hidden,
            raw,
            environment_scope,
            description: field(fields, "description").map(str::to_owned),
        };
        self.by_namespace.entry(namespace.clone()).or_default().push(variable.clone());
        Ok(variable)
    }

    /// `PUT …/variables/:key`: masking and hiding cannot be changed on a hidden variable, and a
    /// masked variable's new value must still be maskable.
    pub fn update(&mut self, namespace: &Namespace, key: &str, fields: &Fields) -> Result<Variable, Refusal> {
        let index = self.find(namespace, key, field(fields, "filter[environment_scope]"))?;
        let current = self.by_namespace[namespace][index].clone();
        if field(fields, "masked_and_hidden").is_some() {
            return Err(Refusal::new(400, "masked_and_hidden can only be set when a variable is created"));
        }
        let masked = flag(fields, "masked").unwrap_or(current.masked);
        if current.hidden && masked != current.masked {
            return Err(Refusal::new(400, json!({"masked": ["cannot be changed for a hidden variable"]})));
        }
        let value = field(fields, "value").map_or(current.value.clone(), str::to_owned);
        let raw = flag(fields, "raw").unwrap_or(current.raw);
        if masked && !maskable(&value, raw) {
            return Err(masking_refusal());
        }
        let updated = Variable {
            value,
            masked,
            raw,
            protected: flag(fields, "protected").unwrap_or(current.protected),
            variable_type: field(fields, "variable_type").map_or(current.variable_type.clone(), str::to_owned),
            environment_scope: field(fields, "environment_scope")
                .map_or(current.environment_scope.clone(), str::to_owned),
            description: field(fields, "description").map(str::to_owned).or(current.description.clone()),
            ..current
        };
        self.by_namespace.get_mut(namespace).expect("found above")[index] = updated.clone();
        Ok(updated)
    }

    /// `DELETE …/variables/:key`.
    pub fn delete(&mut self, namespace: &Namespace, key: &str, scope: Option<&str>) -> Result<(), Refusal> {
        let index = self.find(namespace, key, scope)?;
        self.by_namespace.get_mut(namespace).expect("found above").remove(index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn masking_follows_gitlabs_rule_for_raw_and_expanded_values() {
        assert!(maskable("glpat-abcdefgh", false));
        assert!(!maskable("short", true), "at least 8 characters");
        assert!(!maskable("with space inside", true), "no whitespace even when raw");
        assert!(!maskable("two\nlines!", true), "one line");
        assert!(maskable("a$b%c^d&e*", true), "raw allows any non-whitespace");
        assert!(!maskable("a$b%c^d&e*", false), "expanded values only a small alphabet");
    }

    #[test]
    fn a_hidden_variable_keeps_its_masking_and_never_shows_its_value() {
        let mut variables = Variables::default();
        let project = Namespace::Project("7".into());
        let created = variables
            .create(
                &project,
                &fields(&[
                    ("key", "TOKEN"),
                    ("value", "secret-value-1"),
                    ("masked_and_hidden", "true"),
                    ("raw", "true"),
                ]),
            )
            .unwrap();
        assert!(created.masked && created.hidden && created.raw);
        assert_eq!(created.to_json()["value"], Value::Null);
        let refused = variables.update(&project, "TOKEN", &fields(&[("masked", "false")])).unwrap_err();
        assert_eq!(refused.status, 400);
        let updated = variables.update(&project, "TOKEN", &fields(&[("value", "secret-value-2")])).unwrap();
        assert_eq!((updated.value.as_str(), updated.masked), ("secret-value-2", true));
        assert_eq!(variables.update(&project, "TOKEN", &fields(&[("value", "short")])).unwrap_err().status, 400);
        assert_eq!(variables.get(&project, "TOKEN", None).unwrap().value, "secret-value-2");
    }

    #[test]
    fn one_key_in_two_scopes_needs_a_filter() {
        let mut variables = Variables::default();
        let group = Namespace::Group("g".into());
        for scope in ["production", "staging"] {
            variables.create(&group, &fields(&[("key", "K"), ("value", "v"), ("environment_scope", scope)])).unwrap();
        }
        assert_eq!(variables.get(&group, "K", None).unwrap_err().status, 409);
        assert_eq!(variables.get(&group, "K", Some("staging")).unwrap().environment_scope, "staging");
        let taken =
            variables.create(&group, &fields(&[("key", "K"), ("value", "v"), ("environment_scope", "staging")]));
        assert_eq!(taken.unwrap_err().status, 400);
        assert_eq!(variables.get(&group, "MISSING", None).unwrap_err().status, 404);
        assert_eq!(variables.create(&group, &fields(&[("key", "bad-key"), ("value", "v")])).unwrap_err().status, 400);
    }
}
