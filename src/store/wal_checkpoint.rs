//! Background WAL checkpoints for a SQLite store.
//!
//! A connection that commits past `wal_autocheckpoint` pages checkpoints the WAL itself, inside
//! that commit: it copies pages into the database file and syncs it, several milliseconds for
//! whichever transaction crossed the line — a provider's answer included (the restart-burst
//! bench saw 5–8 ms stalls of the answers' commits). So pooled connections checkpoint by
//! themselves only past [`SAFETY_NET_PAGES`] (see `connection::open_sqlite`), and a thread of
//! the store runs a passive checkpoint every [`PERIOD`] beside them instead: it never waits for
//! (or blocks) the writer or readers. The audit writer has a checkpointer of its own, driven by
//! its batches (`audit_batch`).

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::Duration;

use diesel::RunQueryDsl;

use super::connection::open_sqlite;

/// Pages of WAL past which a pooled connection checkpoints at its commit (about 40 MB): a
/// safety net for when the checkpoint thread cannot run.
pub const SAFETY_NET_PAGES: u32 = 10_000;
/// Time between two background checkpoints.
const PERIOD: Duration = Duration::from_secs(1);

/// The checkpoint thread of one store; it ends when this is dropped.
pub(super) struct PeriodicCheckpoint {
    _stop: Option<SyncSender<()>>,
}

impl PeriodicCheckpoint {
    /// Starts checkpointing the database at `path` every [`PERIOD`].
    pub(super) fn start(path: PathBuf) -> Self {
        let (stop, stopped) = mpsc::sync_channel::<()>(0);
        let spawned = std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
            let mut conn = None;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                let connection = match &mut conn {
                    Some(connection) => connection,
                    None => match open_sqlite(&path) {
                        Ok(opened) => conn.insert(opened),
                        Err(err) => {
                            tracing::debug!(error = %err, "cannot open a connection for the WAL checkpoint");
                            continue;
                        }
                    },
                };
                if let Err(err) = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").execute(connection) {
                    tracing::warn!(error = %err, "background WAL checkpoint failed");
                    conn = None;
                }
            }
        });
        match spawned {
            Ok(_) => Self { _stop: Some(stop) },
            Err(err) => {
                tracing::error!(error = %err, "cannot start the WAL checkpoint thread");
                Self { _stop: None }
            }
        }
    }
}
