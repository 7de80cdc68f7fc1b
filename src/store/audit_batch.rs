//! Group commit for audit rows written on hot paths (every secret read through the API): each
//! caller waits until its row is committed — so no secret is handed out without its audit row —
//! but concurrent callers share one write transaction instead of queueing for SQLite's single
//! writer one by one.

use std::sync::{Arc, OnceLock};

use diesel::prelude::*;
use diesel::r2d2::Pool;
use tokio::sync::{mpsc, oneshot};

use super::models::AuditRow;
use super::schema::audit_log;
use super::{Manager, StoreError};

/// Most rows committed in one transaction.
const MAX_BATCH: usize = 512;

/// A row waiting for its commit, and who to tell.
struct Pending {
    row: AuditRow,
    done: oneshot::Sender<Result<(), String>>,
}

/// The queue in front of the writer task, started on first use.
#[derive(Clone, Default)]
pub(super) struct AuditBatcher {
    sender: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
}

impl AuditBatcher {
    /// Queues `row` and waits until a batch containing it is committed.
    pub(super) async fn record(&self, pool: &Pool<Manager>, row: AuditRow) -> Result<(), StoreError> {
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(pool.clone(), receiver));
            sender
        });
        let (done, committed) = oneshot::channel();
        sender.send(Pending { row, done }).map_err(|_| StoreError::Unavailable("the audit writer stopped".into()))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Unavailable(format!("cannot write the audit log: {message}"))),
            Err(_) => Err(StoreError::Unavailable("the audit writer stopped".into())),
        }
    }
}

/// Takes whatever is queued (up to [`MAX_BATCH`]), commits it in one transaction, answers
/// every caller, and repeats until the queue closes.
async fn write_batches(pool: Pool<Manager>, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let rows: Vec<AuditRow> = batch.iter().map(|pending| pending.row.clone()).collect();
        let pool = pool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|err| err.to_string())?;
            conn.write_transaction(|conn| {
                for row in &rows {
                    diesel::insert_into(audit_log::table).values(row).execute(conn)?;
                }
                Ok::<(), diesel::result::Error>(())
            })
            .map_err(|err| err.to_string())
        })
        .await
        .unwrap_or_else(|err| Err(err.to_string()));
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}
