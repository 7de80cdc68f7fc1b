//! Group commit for providers' answers. Between a provider acting on a rotation and our
//! storing its answer, a killed process loses a credential the provider has already replaced,
//! so that window must stay short even when many answers arrive at once (a restart with many
//! tokens overdue).
//!
//! Two steps, each with a drainer of its own on the blocking pool. The **journal drainer**
//! writes the answers that arrived while it was busy to the
//! [`answer_journal`](super::answer_journal) together, in one short transaction of one row each:
//! from then on they survive a killed process. The **store drainer** commits journaled answers
//! in full to their tokens (each fenced by its own attempt id and in a savepoint of its own, see
//! [`rotation::commit_successes`]) in small chunks, and starts no chunk while answers wait to be
//! journaled: journaling goes first. On PostgreSQL a journal transaction runs beside a chunk in
//! progress; on SQLite (one writer) it waits for that chunk at most, which is why the chunks are
//! small there.
//!
//! A drainer starts when work arrives for it and none is running, and stops when its queue is
//! empty. Callers wait for their own answer's result only. (A thread of our own would let a
//! paused tokio clock run on while an answer waits; a blocking task holds it, as every other
//! store call does.)

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use chrono::Utc;
use diesel::r2d2::Pool;
use tokio::sync::oneshot;

use super::rotation::{self, Answer};
use super::{Manager, StoreError};

/// Most answers journaled in one transaction.
const MAX_JOURNAL_BATCH: usize = 256;
/// Most journaled answers committed in full in one transaction on SQLite, where a journal
/// transaction waits for the chunk in progress.
pub(super) const SQLITE_STORE_CHUNK: usize = 4;
/// The same on PostgreSQL, where journaling runs beside it (larger chunks, fewer commits).
pub(super) const POSTGRES_STORE_CHUNK: usize = 16;

/// A stored answer.
#[derive(Debug, Clone, Copy)]
pub struct StoredAnswer {
    /// The token's new version.
    pub version: i64,
    /// When the answer became durable (its journal transaction committed).
    pub durable_at: Instant,
}

type Reply = oneshot::Sender<Result<StoredAnswer, StoreError>>;

/// An answer waiting for its commit, and who to tell.
struct Pending {
    answer: Answer,
    done: Reply,
}

/// Answers waiting to be journaled, answers journaled and waiting for their full commit, and
/// which drainers are running.
#[derive(Default)]
struct Queue {
    arrived: Vec<Pending>,
    journaled: VecDeque<(Pending, Instant)>,
    /// The journal drainer is running.
    journaling: bool,
    /// It is writing a batch right now.
    journal_busy: bool,
    /// The store drainer is running.
    storing: bool,
}

/// The queue and the signal the store drainer waits on while answers are being journaled.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    journal_idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue in front of the answers' commits. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub(super) struct AnswerBatcher {
    shared: Arc<Shared>,
    store_chunk: usize,
}

impl AnswerBatcher {
    /// A batcher whose full commits take at most `store_chunk` answers each.
    pub(super) fn new(store_chunk: usize) -> Self {
        Self { shared: Arc::default(), store_chunk: store_chunk.max(1) }
    }

    /// Queues `answer` and waits until it is committed; returns the new version and when the
    /// answer became durable, or why it was not stored.
    pub(super) async fn commit(&self, pool: &Pool<Manager>, answer: Answer) -> Result<StoredAnswer, StoreError> {
        let (done, committed) = oneshot::channel();
        let start_journal = {
            let mut queue = self.shared.lock();
            queue.arrived.push(Pending { answer, done });
            !std::mem::replace(&mut queue.journaling, true)
        };
        if start_journal {
            let (batcher, pool) = (self.clone(), pool.clone());
            tokio::task::spawn_blocking(move || batcher.journal(&pool));
        }
        committed.await.map_err(|_| StoreError::TaskFailed("the answer's commit was abandoned".into()))?
    }

    /// The journal drainer: journals what arrived, batch after batch, hands each batch to the
    /// store drainer (starting it if needed), and stops when nothing is left to journal.
    fn journal(&self, pool: &Pool<Manager>) {
        let _guard = DrainGuard(&self.shared);
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.shared.lock();
                if queue.arrived.is_empty() {
                    queue.journaling = false;
                    self.shared.journal_idle.notify_all();
                    return;
                }
                let size = queue.arrived.len().min(MAX_JOURNAL_BATCH);
                queue.journal_busy = true;
                queue.arrived.drain(..size).collect()
            };
            let answers: Vec<Answer> = batch.iter().map(|pending| pending.answer.clone()).collect();
            match with_connection(pool, |conn| super::answer_journal::write(conn, &answers, Utc::now())) {
                Ok(()) => {
                    let durable_at = Instant::now();
                    let start_store = {
                        let mut queue = self.shared.lock();
                        queue.journaled.extend(batch.into_iter().map(|pending| (pending, durable_at)));
                        queue.journal_busy = false;
                        self.shared.journal_idle.notify_all();
                        !std::mem::replace(&mut queue.storing, true)
                    };
                    if start_store {
                        let (batcher, pool) = (self.clone(), pool.clone());
                        tokio::task::spawn_blocking(move || batcher.store(&pool));
                    }
                }
                Err(err) => {
                    self.shared.lock().journal_busy = false;
                    self.shared.journal_idle.notify_all();
                    fail(batch.into_iter().map(|pending| pending.done), &err);
                }
            }
        }
    }

    /// The store drainer: commits journaled answers in full, chunk by chunk, waiting before each
    /// chunk while answers are being journaled; stops when nothing journaled is left.
    fn store(&self, pool: &Pool<Manager>) {
        let _guard = DrainGuard(&self.shared);
        loop {
            let chunk: Vec<(Pending, Instant)> = {
                let mut queue = self.shared.lock();
                while queue.journaling && (queue.journal_busy || !queue.arrived.is_empty()) {
                    queue = self.shared.journal_idle.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
                if queue.journaled.is_empty() {
                    queue.storing = false;
                    return;
                }
                let size = queue.journaled.len().min(self.store_chunk);
                queue.journaled.drain(..size).collect()
            };
            let answers: Vec<Answer> = chunk.iter().map(|(pending, _)| pending.answer.clone()).collect();
            match with_connection(pool, |conn| rotation::commit_successes(conn, &answers)) {
                Ok(results) => {
                    for ((pending, durable_at), result) in chunk.into_iter().zip(results) {
                        let _ = pending.done.send(result.map(|version| StoredAnswer { version, durable_at }));
                    }
                }
                Err(err) => fail(chunk.into_iter().map(|(pending, _)| pending.done), &err),
            }
        }
    }
}

/// Fails every answer of a transaction that failed, with the database's words (so the caller's
/// write-health check still sees a full disk); each caller tries again as after a failed commit
/// of its own (an answer journaled already is journaled again, replacing its row).
fn fail(waiters: impl Iterator<Item = Reply>, err: &StoreError) {
    let message = err.to_string();
    for waiter in waiters {
        let _ = waiter.send(Err(StoreError::Unavailable(format!("cannot store the answer: {message}"))));
    }
}

/// Runs `write` on a pooled connection; a connection that lost its server is retired.
fn with_connection<T>(
    pool: &Pool<Manager>,
    write: impl FnOnce(&mut super::DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut conn = pool.get().map_err(|err| StoreError::Unavailable(err.to_string()))?;
    let result = write(&mut conn);
    if let Err(err) = &result {
        conn.retire_if_lost(err);
    }
    result
}

/// Should a drainer panic, the answers still queued are failed (their callers retry) and the
/// next answer starts new drainers instead of waiting for these forever.
struct DrainGuard<'a>(&'a Shared);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock();
            queue.arrived.clear();
            queue.journaled.clear();
            queue.journaling = false;
            queue.journal_busy = false;
            queue.storing = false;
            self.0.journal_idle.notify_all();
        }
    }
}
