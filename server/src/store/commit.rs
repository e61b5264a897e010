//! Group commit: one writer task flushes once for every request queued while the previous flush
//! ran, then answers them all. Throughput grows with load instead of collapsing under fsync.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Durability;
use crate::metrics::Metrics;

/// A flush that failed; every waiter of that batch gets it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage flush failed: {0}")]
pub struct CommitError(String);

type Waiter = oneshot::Sender<Result<(), CommitError>>;

/// How many times the writer yields to let more requests join a batch before it flushes.
const MAX_GATHER_ROUNDS: usize = 8;

/// Handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiter>,
    metrics: Metrics,
}

impl GroupCommit {
    /// Start the writer task on the current tokio runtime.
    pub fn start(store: Arc<dyn Durability>, metrics: Metrics) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
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
                let store = store.clone();
                let started = std::time::Instant::now();
                // Every write acknowledged by a waiter in `batch` happened before it queued, so
                // before this flush starts.
                let result = match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(CommitError(e.to_string())),
                    Err(e) => Err(CommitError(format!("flush task failed: {e}"))),
                };
                if let Err(e) = &result {
                    tracing::error!(error = %e, "group commit failed");
                }
                m.flush_seconds.observe(started.elapsed().as_secs_f64());
                m.flush_batch.observe(batch.len() as f64);
                m.commit_queue_depth.dec_by(batch.len() as i64);
                for waiter in batch.drain(..) {
                    // A waiter that gave up (client disconnected) is no concern of ours.
                    let _ = waiter.send(result.clone());
                }
            }
        });
        GroupCommit { queue, metrics }
    }

    /// Wait until every write this task made before the call is durable.
    pub async fn commit(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.metrics.commit_queue_depth.inc();
        self.queue
            .send(tx)
            .map_err(|_| CommitError("writer task stopped".into()))?;
        rx.await
            .map_err(|_| CommitError("writer task stopped".into()))?
    }
}
