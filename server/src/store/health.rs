//! Storage health, whatever the backend: whether writes reach stable storage. The group
//! committer sets it (a failed flush makes storage *failing* until a recovery succeeds); the
//! HTTP layer reads it (`/readyz`, `503` with `Retry-After` for writes while it fails); `serve`
//! watches it for a failure the server cannot recover from by itself.
//!
//! The *epoch* counts the moments at which writes not yet flushed may have been lost: it moves
//! when storage starts failing and whenever a backend reopens its store. A request remembers
//! the epoch it started in, and its commit is refused if the epoch moved meanwhile, so no
//! response ever reports a write that a failure swallowed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, so that tests on a paused runtime control it; outside a runtime it is std's.
use tokio::time::Instant;

/// Shared storage health. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct StorageHealth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    failing: AtomicBool,
    epoch: AtomicU64,
    /// How often a failing store is retried; also the `Retry-After` handed to clients.
    retry_interval: Duration,
    state: Mutex<Failure>,
    /// Sends the reason once storage cannot recover without a restart.
    fatal: tokio::sync::watch::Sender<Option<String>>,
}

#[derive(Debug, Default)]
struct Failure {
    /// When the current failure began.
    since: Option<Instant>,
    /// What the store said, with the OS error.
    error: Option<String>,
    /// When writes were last known to reach stable storage.
    last_ok: Option<Instant>,
}

/// A storage epoch (see the module documentation).
pub type Epoch = u64;

impl StorageHealth {
    /// Healthy storage, retried every `retry_interval` once it fails.
    pub fn new(retry_interval: Duration) -> Self {
        let (fatal, _) = tokio::sync::watch::channel(None);
        StorageHealth {
            inner: Arc::new(Inner {
                failing: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                retry_interval,
                state: Mutex::new(Failure::default()),
                fatal,
            }),
        }
    }

    /// Whether the last flush (or recovery attempt) failed.
    pub fn is_failing(&self) -> bool {
        self.inner.failing.load(Ordering::Acquire)
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// How long clients are asked to wait (`Retry-After`), in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.inner.retry_interval.as_secs().max(1)
    }

    /// How often a failing store is retried.
    pub fn retry_interval(&self) -> Duration {
        self.inner.retry_interval
    }

    /// What the store said when the current failure began, if storage is failing.
    pub fn failure(&self) -> Option<String> {
        self.lock().error.clone().filter(|_| self.is_failing())
    }

    /// Whether a flush succeeded within `within`.
    pub fn recently_ok(&self, within: Duration) -> bool {
        !self.is_failing() && self.lock().last_ok.is_some_and(|t| t.elapsed() < within)
    }

    /// A future that resolves with the reason once storage is beyond in-process recovery.
    pub fn fatal(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.inner.fatal.subscribe();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    // The health state is gone, so is the server: never resolve.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// A flush or probe succeeded.
    pub(crate) fn ok(&self) {
        self.lock().last_ok = Some(Instant::now());
    }

    /// A flush failed with `error`. Returns true if storage was healthy until now (the caller
    /// logs the onset once; the epoch moves).
    pub(crate) fn fail(&self, error: &str) -> bool {
        let mut state = self.lock();
        let onset = !self.inner.failing.swap(true, Ordering::AcqRel);
        if onset {
            self.inner.epoch.fetch_add(1, Ordering::AcqRel);
            state.since = Some(Instant::now());
            state.error = Some(error.to_owned());
        }
        onset
    }

    /// The store was reopened: writes made before it that were not flushed are gone.
    pub(crate) fn reopened(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Writes reach stable storage again; how long they did not.
    pub(crate) fn recovered(&self) -> Duration {
        let mut state = self.lock();
        self.inner.failing.store(false, Ordering::Release);
        state.last_ok = Some(Instant::now());
        state.error = None;
        state.since.take().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Storage cannot recover in this process.
    pub(crate) fn give_up(&self, reason: String) {
        self.inner.failing.store(true, Ordering::Release);
        self.inner.fatal.send_replace(Some(reason));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failure> {
        // Every update is a whole assignment; a panicking holder leaves nothing half-done.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_moves_the_epoch_once_and_recovery_clears_it() {
        let h = StorageHealth::new(Duration::from_millis(1500));
        assert_eq!(h.retry_after_secs(), 1);
        assert!(!h.is_failing() && h.failure().is_none());
        let e0 = h.epoch();
        assert!(h.fail("No space left on device (os error 28)"));
        assert!(!h.fail("again"), "only the onset counts");
        assert_eq!(h.epoch(), e0 + 1);
        assert!(h.is_failing() && !h.recently_ok(Duration::from_secs(60)));
        assert_eq!(
            h.failure().as_deref(),
            Some("No space left on device (os error 28)")
        );
        h.reopened();
        assert_eq!(h.epoch(), e0 + 2);
        h.recovered();
        assert!(!h.is_failing() && h.failure().is_none());
        assert!(h.recently_ok(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn giving_up_resolves_the_fatal_future() {
        let h = StorageHealth::new(Duration::from_secs(2));
        let fatal = h.fatal();
        h.give_up("database corrupt".into());
        assert_eq!(fatal.await, "database corrupt");
        // A watcher that subscribes later still sees it.
        assert_eq!(h.fatal().await, "database corrupt");
        assert!(h.is_failing());
    }
}
