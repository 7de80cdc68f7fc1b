//! Sinks: putting a token's current secret where a consumer reads it, after every rotation.
//!
//! A rotation's commit writes a delivery row per sink of its token (the outbox,
//! [`crate::store::sinks::enqueue`]); the [`dispatcher`] delivers the token's current version
//! to each sink with versions pending and records it. Kinds: [`file`] (atomic replace, formats,
//! an optional reload program) and [`gitlab_variable`] (a project's or group's CI/CD variable,
//! masked and hidden, written with a managing credential).

pub mod dispatcher;
pub mod file;
pub mod gitlab_variable;

/// The file sink's kind, as stored.
pub const FILE: &str = "file";
/// The GitLab CI/CD variable sink's kind, as stored.
pub const GITLAB_CI_VARIABLE: &str = "gitlab-ci-variable";
