//! Sinks: putting a token's current secret where a consumer reads it, after every rotation.
//!
//! A rotation's commit writes a delivery row per sink of its token (the outbox,
//! [`crate::store::sinks::enqueue`]); the [`dispatcher`] delivers the token's current version
//! to each sink with versions pending and records it. Kinds: [`file`] (atomic replace, formats,
//! an optional reload program).

pub mod dispatcher;
pub mod file;

/// The kinds of sink, as stored.
pub const FILE: &str = "file";
