//! Group commit for providers' answers. Between a provider acting on a rotation and our commit
//! of its answer, a killed process loses a credential the provider has already replaced, so
//! that window must stay short even when many answers arrive at once (a restart with many
//! tokens overdue). Committed one transaction each, the eighth answer of a burst waited for
//! seven commits; here the answers that arrive while a commit is in progress are committed
//! together in the next transaction, each fenced by its own attempt id and in a savepoint of
//! its own (see [`rotation::commit_successes`]).
//!
//! The first answer to find no commit under way starts a drainer on the blocking pool; it
//! commits whatever is queued, batch after batch, until the queue is empty. Callers wait for
//! their own answer's result only. (A thread of our own would let a paused tokio clock run on
//! while an answer waits; a blocking task holds it, as every other store call does.)

use std::sync::{Arc, Mutex, PoisonError};

use diesel::r2d2::Pool;
use tokio::sync::oneshot;

use super::rotation::{self, Answer};
use super::{Manager, StoreError};

/// Most answers committed in one transaction.
const MAX_BATCH: usize = 256;

/// An answer waiting for its commit, and who to tell.
struct Pending {
    answer: Answer,
    done: oneshot::Sender<Result<i64, StoreError>>,
}

/// Answers waiting for a commit, and whether a drainer is committing them.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    draining: bool,
}

/// The queue in front of the answers' commits. Cheap to clone; clones share the queue.
#[derive(Clone, Default)]
pub(super) struct AnswerBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl AnswerBatcher {
    /// Queues `answer` and waits until the batch containing it is committed; returns the new
    /// version, or why this answer was not stored.
    pub(super) async fn commit(&self, pool: &Pool<Manager>, answer: Answer) -> Result<i64, StoreError> {
        let (done, committed) = oneshot::channel();
        let start_drainer = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.push(Pending { answer, done });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_drainer {
            let (queue, pool) = (self.queue.clone(), pool.clone());
            tokio::task::spawn_blocking(move || drain(&queue, &pool));
        }
        committed.await.map_err(|_| StoreError::TaskFailed("the answer's commit was abandoned".into()))?
    }
}

/// Commits what is queued, batch after batch, until the queue is empty. A failed transaction
/// fails every answer in it with the database's words (so the caller's write-health check
/// still sees a full disk), and each caller tries again as after a failed commit of its own.
fn drain(queue: &Mutex<Queue>, pool: &Pool<Manager>) {
    let _guard = DrainGuard(queue);
    loop {
        let batch: Vec<Pending> = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.pending.is_empty() {
                queue.draining = false;
                return;
            }
            let size = queue.pending.len().min(MAX_BATCH);
            queue.pending.drain(..size).collect()
        };
        let (answers, waiters): (Vec<Answer>, Vec<_>) =
            batch.into_iter().map(|pending| (pending.answer, pending.done)).unzip();
        match commit(pool, &answers) {
            Ok(results) => {
                for (waiter, result) in waiters.into_iter().zip(results) {
                    let _ = waiter.send(result);
                }
            }
            Err(err) => {
                let message = err.to_string();
                for waiter in waiters {
                    let _ = waiter.send(Err(StoreError::Unavailable(format!("cannot store the answer: {message}"))));
                }
            }
        }
    }
}

/// Commits `answers` in one transaction on a pooled connection.
fn commit(pool: &Pool<Manager>, answers: &[Answer]) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
    let mut conn = pool.get().map_err(|err| StoreError::Unavailable(err.to_string()))?;
    let result = rotation::commit_successes(&mut conn, answers);
    if let Err(err) = &result {
        conn.retire_if_lost(err);
    }
    result
}

/// Should a drainer panic, the answers still queued are failed (their callers retry) and the
/// next answer starts a new drainer instead of waiting for this one forever.
struct DrainGuard<'a>(&'a Mutex<Queue>);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.clear();
            queue.draining = false;
        }
    }
}
