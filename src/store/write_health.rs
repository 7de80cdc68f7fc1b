//! Whether the store accepts writes. Reads keep working on a full disk or a file system that
//! turned read-only, so a trivial query cannot tell; instead every store call that fails for
//! lack of space or permission is noted here, and while one is noted the readiness check makes
//! a small write of its own: not ready until it succeeds, ready again once it does.

use std::sync::{Arc, Mutex, PoisonError};

use super::StoreError;

/// What the error texts of SQLite and PostgreSQL say when the storage refuses a write.
const STORAGE_FAILURES: &[&str] = &[
    "database or disk is full",
    "attempt to write a readonly database",
    "disk I/O error",
    "No space left on device",
    "could not extend file",
    "read-only transaction",
];

/// The last storage failure seen, until a write succeeds again. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct WriteHealth(Arc<Mutex<Option<String>>>);

impl WriteHealth {
    /// Notes `result`'s error if it is a storage failure.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        if let Err(err) = result
            && is_storage_failure(err)
        {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(err.to_string());
        }
    }

    /// The storage failure noted since the last successful write probe, if any.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A write went through: the storage accepts writes again.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// True when `err` says the storage refused a write (full, read-only, failing), not that the
/// request was wrong or the database was busy.
pub fn is_storage_failure(err: &StoreError) -> bool {
    let text = err.to_string();
    STORAGE_FAILURES.iter().any(|marker| text.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_storage_failures_are_noted_and_a_clear_forgets_them() {
        let health = WriteHealth::default();
        health.observe::<()>(&Err(StoreError::Conflict("token 'a' is being rotated".into())));
        assert_eq!(health.problem(), None, "a refused request is not a storage failure");
        health.observe::<()>(&Err(StoreError::Unavailable(
            "cannot write the audit log: database or disk is full".into(),
        )));
        assert!(health.problem().is_some_and(|p| p.contains("disk is full")));
        health.observe::<()>(&Ok(()));
        assert!(health.problem().is_some(), "a success of any call does not prove writes work");
        health.clear();
        assert_eq!(health.problem(), None);
    }
}
