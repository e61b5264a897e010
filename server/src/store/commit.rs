//! Group commit: one writer task flushes once for every request queued while the previous flush
//! ran, then answers them all. Throughput grows with load instead of collapsing under fsync.
//!
//! The writer also owns recovery, for any backend: a failed flush marks storage failing
//! ([`StorageHealth`]); while it fails, commits are refused at once (the HTTP layer answers 503
//! with `Retry-After`) and the backend's [`Durability::recover`] is tried every retry interval
//! until writes reach stable storage again. A backend that cannot recover in this process says
//! so, and the server exits for its supervisor to restart it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::health::{Epoch, StorageHealth};
use super::{Durability, Recovery};
use crate::metrics::Metrics;

/// Why a commit did not make the request's writes durable. Every variant means "not saved":
/// the client is told to retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The flush of this request's batch failed.
    #[error("storage flush failed: {0}")]
    Flush(String),
    /// Storage is failing; nothing is flushed until it recovers.
    #[error("storage is failing: {0}")]
    Failing(String),
    /// Storage failed (or was reopened) while the request ran: writes it made before that may
    /// be lost, so it must not report success.
    #[error("storage failed while this request ran; its writes may be lost")]
    EpochMoved,
    /// The writer task is gone (the server is stopping).
    #[error("the storage writer task stopped")]
    Stopped,
}

/// One request waiting for its writes to be durable, and the epoch it started in.
struct Waiter {
    answer: oneshot::Sender<Result<(), CommitError>>,
    since: Option<Epoch>,
}

/// How many times the writer yields to let more requests join a batch before it flushes.
const MAX_GATHER_ROUNDS: usize = 8;
/// A readiness probe trusts a flush this recent instead of writing one of its own.
const PROBE_FRESHNESS: Duration = Duration::from_secs(1);
/// While storage keeps failing, how often the failure is logged again.
const STILL_FAILING_LOG_EVERY: Duration = Duration::from_secs(30);

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiter>,
    store: Arc<dyn Durability>,
    health: StorageHealth,
    metrics: Metrics,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Start the writer task on the current tokio runtime.
    pub fn start(store: Arc<dyn Durability>, metrics: Metrics, health: StorageHealth) -> Self {
        let (queue, rx) = mpsc::unbounded_channel::<Waiter>();
        let writer = Writer {
            store: store.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            last_logged: None,
        };
        tokio::spawn(writer.run(rx));
        GroupCommit {
            queue,
            store,
            health,
            metrics,
        }
    }

    /// The storage health this committer keeps.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Wait until every write this task made before the call is durable.
    pub async fn commit(&self) -> Result<(), CommitError> {
        self.commit_since(None).await
    }

    /// [`GroupCommit::commit`] for a request that started in `since`: refused if storage
    /// failed or was reopened after that, since writes the request made before then may be
    /// lost even though this flush succeeds.
    pub async fn commit_since(&self, since: Option<Epoch>) -> Result<(), CommitError> {
        let (answer, rx) = oneshot::channel();
        self.metrics.commit_queue_depth.inc();
        if self.queue.send(Waiter { answer, since }).is_err() {
            self.metrics.commit_queue_depth.dec();
            return Err(CommitError::Stopped);
        }
        rx.await.map_err(|_| CommitError::Stopped)?
    }

    /// Whether writes reach stable storage now: not while storage is failing; otherwise a
    /// flush within the last second, or a small write of our own and its flush.
    pub async fn probe(&self) -> Result<(), CommitError> {
        if let Some(error) = self.health.failure() {
            return Err(CommitError::Failing(error));
        }
        if self.health.recently_ok(PROBE_FRESHNESS) {
            return Ok(());
        }
        let since = self.health.epoch();
        let store = self.store.clone();
        let wrote = tokio::task::spawn_blocking(move || store.write_probe()).await;
        // Flush even when the write failed: the flush is what tells the writer.
        let flushed = self.commit_since(Some(since)).await;
        match wrote {
            Ok(Ok(())) => flushed,
            Ok(Err(e)) => Err(CommitError::Flush(e.to_string())),
            Err(e) => Err(CommitError::Flush(format!("probe task failed: {e}"))),
        }
    }
}

/// The writer task's state.
struct Writer {
    store: Arc<dyn Durability>,
    health: StorageHealth,
    metrics: Metrics,
    /// When the ongoing failure was last logged.
    last_logged: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Waiter>) {
        let mut retry = tokio::time::interval(self.health.retry_interval());
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let first = if self.health.is_failing() {
                tokio::select! {
                    waiter = rx.recv() => waiter,
                    _ = retry.tick() => {
                        self.recover().await;
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(first) = first else { return };
            batch.push(first);
            // Gather: let every request task that is ready run up to its own commit before
            // flushing, so one flush serves all of them. Under light load nothing else is
            // ready and this costs one yield; under load the batch grows with the load.
            for _ in 0..MAX_GATHER_ROUNDS {
                let before = batch.len();
                tokio::task::yield_now().await;
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if batch.len() == before {
                    break;
                }
            }
            self.metrics.commit_queue_depth.dec_by(batch.len() as i64);
            if let Some(error) = self.health.failure() {
                // Nothing is flushed while storage fails: the retry loop finds out when it
                // works again. The answer is immediate, so clients retry instead of hanging.
                answer(&mut batch, Err(CommitError::Failing(error)), &self.health);
                continue;
            }
            let result = self.flush(batch.len()).await;
            if let Err(CommitError::Flush(error)) = &result {
                if self.health.fail(error) {
                    self.metrics.storage_failures.inc();
                    self.metrics.storage_failing.set(1);
                    tracing::error!(
                        %error,
                        retry_every_s = self.health.retry_interval().as_secs_f64(),
                        "storage failing: writes are refused (503) until a flush succeeds again"
                    );
                    self.last_logged = Some(Instant::now());
                    retry.reset();
                }
            }
            answer(&mut batch, result, &self.health);
        }
    }

    /// Flush every write made so far.
    async fn flush(&self, batch: usize) -> Result<(), CommitError> {
        let store = self.store.clone();
        let started = Instant::now();
        // Every write acknowledged by a waiter in the batch happened before it queued, so
        // before this flush starts.
        let result = match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {
                self.health.ok();
                Ok(())
            }
            Ok(Err(e)) => Err(CommitError::Flush(e.describe())),
            Err(e) => Err(CommitError::Flush(format!("flush task failed: {e}"))),
        };
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.flush_batch.observe(batch as f64);
        result
    }

    /// One recovery attempt while storage fails.
    async fn recover(&mut self) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.recover()).await {
            Ok(Ok(how)) => {
                if how == Recovery::Reopened {
                    self.health.reopened();
                }
                let down = self.health.recovered();
                self.metrics.storage_recoveries.inc();
                self.metrics.storage_failing.set(0);
                self.last_logged = None;
                tracing::warn!(
                    down_s = down.as_secs_f64(),
                    how = how.as_str(),
                    "storage recovered: writes are accepted again"
                );
            }
            Ok(Err(e)) if e.is_outage() => {
                let due = self
                    .last_logged
                    .is_none_or(|t| t.elapsed() >= STILL_FAILING_LOG_EVERY);
                if due {
                    let error = e.describe();
                    tracing::warn!(%error, "storage still failing; retrying");
                    self.last_logged = Some(Instant::now());
                }
            }
            Ok(Err(e)) => {
                let reason = e.describe();
                tracing::error!(
                    error = %reason,
                    "storage cannot recover in this process; stopping so that the supervisor restarts the server"
                );
                self.health.give_up(reason);
            }
            Err(e) => tracing::error!(error = %e, "storage recovery task failed"),
        }
    }
}

/// Answer every waiter of a batch: a successful flush is success only for requests that
/// started in the current epoch.
fn answer(batch: &mut Vec<Waiter>, result: Result<(), CommitError>, health: &StorageHealth) {
    let epoch = health.epoch();
    for waiter in batch.drain(..) {
        let result = match &result {
            Ok(()) if waiter.since.is_some_and(|since| since != epoch) => {
                Err(CommitError::EpochMoved)
            }
            other => other.clone(),
        };
        // A waiter that gave up (client disconnected) is no concern of ours.
        let _ = waiter.answer.send(result);
    }
}

#[cfg(test)]
mod tests;
