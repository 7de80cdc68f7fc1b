//! Group commit for audit rows written on hot paths (every secret read through the API): each
//! caller waits until its row is committed — so no secret is handed out without its audit row —
//! but concurrent callers share one write transaction instead of queueing for SQLite's single
//! writer one by one.
//!
//! The writer is a thread of its own with a connection of its own (not one of the pool's), so a
//! batch costs no hop through the blocking pool and no wait for a pooled connection. That
//! connection does not checkpoint the WAL after its commits: a checkpoint copies pages into the
//! database file and syncs it, which took 10 ms and more, and every reader waiting for its audit
//! row waited for it too. A second thread with its own connection runs a passive checkpoint
//! after every [`CHECKPOINT_EVERY_ROWS`] committed rows instead, beside the writer, which keeps
//! appending to the WAL meanwhile. Should that thread fall behind or fail, the writer still
//! checkpoints once the WAL reaches [`WRITER_AUTOCHECKPOINT_PAGES`].
//!
//! A passive checkpoint cannot start the WAL over while any reader still uses it, and under
//! steady API reads one nearly always does: the WAL would only grow. So once a passive
//! checkpoint finds the WAL longer than [`RESTART_ABOVE_FRAMES`], the writer itself, between
//! two batches, runs a restarting checkpoint: it copies only the frames appended since, waits at
//! most [`RESTART_WAIT_MS`] for readers of older snapshots (new readers already read the
//! database file), and its next commit starts the WAL from the beginning. That holds the next
//! batch back for a sync of the database file (milliseconds), so it is done rarely — measured
//! with restarts after every checkpoint instead, the p99 of secret reads went from 7.5 to 16 ms.
//!
//! PostgreSQL checkpoints by itself: there the writer only batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::models::AuditRow;
use super::schema::audit_log;
use super::{DbConnection, StoreError, connect};
use crate::config::DatabaseUrl;

/// Most rows committed in one transaction.
const MAX_BATCH: usize = 512;
/// Committed rows after which the checkpoint thread is asked for a passive checkpoint (each
/// row dirties about one or two pages, so this is near SQLite's default of 1,000 pages).
const CHECKPOINT_EVERY_ROWS: u64 = 1_000;
/// A WAL longer than this many frames (about 64 MB) after a passive checkpoint is started over.
const RESTART_ABOVE_FRAMES: i32 = 16_000;
/// The writer's own connection checkpoints only past this many WAL pages (SQLite's default is
/// 1,000): a safety net for when the checkpoint thread cannot keep up or the WAL cannot start
/// over.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 40_000;

/// A row waiting for its commit, and who to tell.
struct Pending {
    row: AuditRow,
    done: oneshot::Sender<Result<(), String>>,
}

/// The queue in front of the writer thread, started on first use.
#[derive(Clone)]
pub(super) struct AuditBatcher {
    sender: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
    checkpoints: Arc<AtomicU64>,
    restart_above_frames: i32,
}

impl Default for AuditBatcher {
    fn default() -> Self {
        Self { sender: Arc::default(), checkpoints: Arc::default(), restart_above_frames: RESTART_ABOVE_FRAMES }
    }
}

impl AuditBatcher {
    /// Queues `row` and waits until a batch containing it is committed.
    pub(super) async fn record(&self, url: &DatabaseUrl, row: AuditRow) -> Result<(), StoreError> {
        let sender =
            self.sender.get_or_init(|| start_writer(url.clone(), self.checkpoints.clone(), self.restart_above_frames));
        let (done, committed) = oneshot::channel();
        sender.send(Pending { row, done }).map_err(|_| StoreError::Unavailable("the audit writer stopped".into()))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Unavailable(format!("cannot write the audit log: {message}"))),
            Err(_) => Err(StoreError::Unavailable("the audit writer stopped".into())),
        }
    }

    /// How many background checkpoints have completed (for tests).
    #[cfg(test)]
    fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }
}

/// Starts the writer thread (which starts the checkpoint thread) and returns its queue. The
/// threads end once every sender is gone. If a thread cannot be started, its receiver is
/// dropped with it, so callers are told the writer stopped instead of waiting.
fn start_writer(
    url: DatabaseUrl,
    checkpoints: Arc<AtomicU64>,
    restart_above_frames: i32,
) -> mpsc::UnboundedSender<Pending> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || write_batches(&url, receiver, checkpoints, restart_above_frames));
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the audit writer thread");
    }
    sender
}

/// Takes whatever is queued (up to [`MAX_BATCH`]), commits it in one transaction, answers
/// every caller, and repeats until the queue closes.
fn write_batches(
    url: &DatabaseUrl,
    mut receiver: mpsc::UnboundedReceiver<Pending>,
    checkpoints: Arc<AtomicU64>,
    restart_above_frames: i32,
) {
    let checkpointer = matches!(url, DatabaseUrl::Sqlite(_))
        .then(|| Checkpointer::start(url.clone(), checkpoints, restart_above_frames));
    let mut conn: Option<DbConnection> = None;
    let mut since_checkpoint = 0u64;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, url, &batch);
        if result.is_err() {
            // Open a fresh connection for the next batch rather than trust this one.
            conn = None;
        }
        let committed = if result.is_ok() { batch.len() as u64 } else { 0 };
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
        since_checkpoint += committed;
        let Some(checkpointer) = &checkpointer else { continue };
        if since_checkpoint >= CHECKPOINT_EVERY_ROWS {
            since_checkpoint = 0;
            checkpointer.request();
        }
        if checkpointer.restart_due.swap(false, Ordering::Relaxed)
            && let Some(conn) = &mut conn
            && let Err(err) = restart_wal(conn)
        {
            tracing::warn!(error = %err, "restarting the WAL after a checkpoint failed");
        }
    }
}

/// Longest the writer's restarting checkpoint waits for readers of older snapshots.
const RESTART_WAIT_MS: u32 = 5;

/// A restarting checkpoint on the writer's connection (see the module documentation), waiting
/// for locks only [`RESTART_WAIT_MS`]; if readers outlast that, the WAL starts over after a
/// later checkpoint instead.
fn restart_wal(conn: &mut DbConnection) -> diesel::QueryResult<()> {
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {RESTART_WAIT_MS};
         PRAGMA wal_checkpoint(RESTART);
         PRAGMA busy_timeout = {};",
        super::SQLITE_BUSY_TIMEOUT_MS
    ))
}

/// Commits `batch` in one write transaction on the writer's connection, opening it first if
/// needed.
fn commit(conn: &mut Option<DbConnection>, url: &DatabaseUrl, batch: &[Pending]) -> Result<(), String> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(open_writer_connection(url)?),
    };
    conn.write_transaction(|conn| {
        for pending in batch {
            diesel::insert_into(audit_log::table).values(&pending.row).execute(conn)?;
        }
        Ok::<(), diesel::result::Error>(())
    })
    .map_err(|err| err.to_string())
}

/// A connection like the pool's, whose commits leave checkpoints to the checkpoint thread.
fn open_writer_connection(url: &DatabaseUrl) -> Result<DbConnection, String> {
    let mut conn = connect(url).map_err(|err| err.to_string())?;
    if let DbConnection::Sqlite(inner) = &mut conn {
        inner
            .batch_execute(&format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};"))
            .map_err(|err| err.to_string())?;
    }
    Ok(conn)
}

/// Asks the checkpoint thread for a passive checkpoint; requests made while one is pending
/// are merged into it.
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// Set after each passive checkpoint: the writer should restart the WAL between batches.
    restart_due: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    /// Starts the checkpoint thread; it ends when this is dropped.
    fn start(url: DatabaseUrl, checkpoints: Arc<AtomicU64>, restart_above_frames: i32) -> Self {
        let (wake, requests) = std::sync::mpsc::sync_channel::<()>(1);
        let restart_due = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restart_wanted = restart_due.clone();
        let spawned = std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
            let mut conn: Option<DbConnection> = None;
            while requests.recv().is_ok() {
                match checkpoint(&mut conn, &url) {
                    Ok(frames) => {
                        checkpoints.fetch_add(1, Ordering::Relaxed);
                        if frames > restart_above_frames {
                            restart_wanted.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(message) => {
                        conn = None;
                        tracing::warn!(error = %message, "background WAL checkpoint failed");
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Self { wake: Some(wake), restart_due },
            Err(err) => {
                tracing::error!(error = %err, "cannot start the WAL checkpoint thread");
                Self { wake: None, restart_due }
            }
        }
    }

    /// Requests a checkpoint without waiting for it.
    fn request(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

/// What `PRAGMA wal_checkpoint` answers: the frames in the WAL.
#[derive(QueryableByName)]
struct WalCheckpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
}

/// One passive checkpoint: copies what it can from the WAL into the database file without
/// waiting for (or blocking) readers and the writer. Returns how many frames the WAL holds.
fn checkpoint(conn: &mut Option<DbConnection>, url: &DatabaseUrl) -> Result<i32, String> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(connect(url).map_err(|err| err.to_string())?),
    };
    diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
        .get_result::<WalCheckpoint>(conn)
        .map(|answer| answer.log)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use chrono::Utc;

    use super::*;
    use crate::store::audit::{self, AuditTarget};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_are_committed_before_record_returns_and_the_wal_is_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("store.db"));
        let store = crate::store::Store::open(&url).unwrap();
        let rows = CHECKPOINT_EVERY_ROWS + 1;
        let mut waiting = Vec::new();
        for i in 0..rows {
            let store = store.clone();
            let name = format!("t{i}");
            waiting.push(tokio::spawn(async move {
                let target = AuditTarget { kind: "token", name: &name };
                store.record_audit(audit::row(Utc::now(), "ci", "token.secret_read", target, None)).await
            }));
        }
        for task in waiting {
            task.await.unwrap().unwrap();
        }
        // Each call returned after its commit: every row is there, read on another connection.
        let stored = store.run(|conn| audit::list(conn, None)).await.unwrap();
        assert_eq!(stored.len() as u64, rows);
        // The writer asked for a checkpoint, and the checkpoint thread ran it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.audit.checkpoints() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.audit.checkpoints(), 1, "one checkpoint after {CHECKPOINT_EVERY_ROWS} rows");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_after_checkpoints_though_reads_and_writes_never_stop() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("store.db"));
        crate::store::Store::open(&url).unwrap(); // creates the schema
        // Restart past a few hundred frames, so that a few seconds of writing show the bound.
        let batcher = AuditBatcher { restart_above_frames: 300, ..AuditBatcher::default() };
        // Like the API under load: readers that never all pause, and audit rows committed
        // without a break, so the WAL is never found unused by chance.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut conn = connect(&url).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        conn.batch_execute("BEGIN; SELECT COUNT(*) FROM audit_log;").unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                        conn.batch_execute("COMMIT;").unwrap();
                    }
                })
            })
            .collect();
        let total = 10 * CHECKPOINT_EVERY_ROWS;
        let next = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let (batcher, url, next) = (batcher.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return;
                        }
                        let name = format!("t{i}");
                        let target = AuditTarget { kind: "token", name: &name };
                        batcher
                            .record(&url, audit::row(Utc::now(), "ci", "token.secret_read", target, None))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
        // The WAL file keeps the size it grew to. One that starts over after each checkpoint stays
        // at what one or two checkpoint intervals write (about the database's size here); one
        // that never does holds all ten intervals (about ten times it).
        let wal = std::fs::metadata(dir.path().join("store.db-wal")).unwrap().len();
        let database = std::fs::metadata(dir.path().join("store.db")).unwrap().len();
        assert!(
            wal < 4 * database,
            "the WAL grew to {wal} bytes (database {database} bytes, {} checkpoints): it did not start over",
            batcher.checkpoints()
        );
    }
}
