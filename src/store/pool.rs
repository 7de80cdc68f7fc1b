//! The connection pool's manager, and connections that are closed rather than reused once they
//! are lost: a PostgreSQL server that restarted, failed over or dropped off the network leaves
//! every pooled connection dead, and Diesel only calls a connection broken when a transaction
//! was open on it. A read on a dead connection would otherwise fail again on every later use.

use std::ops::{Deref, DerefMut};

use diesel::r2d2::{self, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::StoreError;
use super::connection::{DbConnection, connect};
use crate::config::DatabaseUrl;

/// A connection held by the pool, with whether it must be closed instead of reused.
pub struct PooledConnection {
    conn: DbConnection,
    retired: bool,
}

impl PooledConnection {
    /// Retires this connection when `err` says it is lost (the server closed it, or libpq can no
    /// longer send on it) or points at a server that only reads (a standby after a failover): a
    /// new connection can reach the server again, or the new primary.
    pub fn retire_if_lost(&mut self, err: &StoreError) {
        if is_lost_connection(err) {
            self.retired = true;
        }
    }
}

/// True when `err` means the connection it happened on is of no further use.
fn is_lost_connection(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Query(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::ReadOnlyTransaction,
            _
        ))
    )
}

impl Deref for PooledConnection {
    type Target = DbConnection;

    fn deref(&self) -> &DbConnection {
        &self.conn
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.conn
    }
}

/// An r2d2 manager that opens connections with [`connect`] and closes retired ones.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl Manager {
    /// A manager for `url`.
    pub fn new(url: DatabaseUrl) -> Self {
        Self { url }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = PooledConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<PooledConnection, r2d2::Error> {
        let conn = connect(&self.url).map_err(r2d2::Error::ConnectionError)?;
        Ok(PooledConnection { conn, retired: false })
    }

    fn is_valid(&self, pooled: &mut PooledConnection) -> Result<(), r2d2::Error> {
        pooled.conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, pooled: &mut PooledConnection) -> bool {
        pooled.retired || pooled.conn.is_broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind) -> StoreError {
        StoreError::Query(DieselError::DatabaseError(kind, Box::new("server said so".to_owned())))
    }

    #[test]
    fn only_a_closed_connection_or_a_read_only_server_retires_a_connection() {
        assert!(is_lost_connection(&database_error(DatabaseErrorKind::ClosedConnection)));
        assert!(is_lost_connection(&database_error(DatabaseErrorKind::UnableToSendCommand)));
        assert!(is_lost_connection(&database_error(DatabaseErrorKind::ReadOnlyTransaction)));
        assert!(!is_lost_connection(&database_error(DatabaseErrorKind::UniqueViolation)));
        assert!(!is_lost_connection(&database_error(DatabaseErrorKind::SerializationFailure)));
        assert!(!is_lost_connection(&StoreError::NotFound { what: "token", name: "a".into() }));
    }
}
