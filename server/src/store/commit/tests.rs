//! The group committer against a backend whose failures the test controls: a failed flush
//! makes storage failing and refuses commits at once, recovery brings it back, a reopen moves
//! the epoch so that requests begun before it are refused, a store that cannot recover stops
//! the server. Time is tokio's paused clock, so the retry interval costs nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::store::StoreError;

#[derive(Default)]
struct Flaky {
    flush_fails: AtomicBool,
    flushes: AtomicUsize,
    probes: AtomicUsize,
    recoveries: Mutex<VecDeque<Result<Recovery, StoreError>>>,
}

fn disk_full() -> StoreError {
    StoreError::Flush {
        source: sled::Error::Io(std::io::Error::from_raw_os_error(28)),
    }
}

impl Durability for Flaky {
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.flush_fails.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        Ok(())
    }

    fn write_probe(&self) -> Result<(), StoreError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        let next = self.recoveries.lock().unwrap().pop_front();
        next.unwrap_or(Err(disk_full()))
    }
}

fn start(store: &Arc<Flaky>) -> GroupCommit {
    GroupCommit::start(
        store.clone(),
        Metrics::default(),
        StorageHealth::new(Duration::from_secs(2)),
    )
}

async fn until(what: impl Fn() -> bool) {
    while !what() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_refuses_commits_until_recovery() {
    let store = Arc::new(Flaky::default());
    let commit = start(&store);
    commit.commit().await.unwrap();
    assert!(commit.probe().await.is_ok());

    store.flush_fails.store(true, Ordering::SeqCst);
    let err = commit.commit().await.unwrap_err();
    assert!(
        matches!(&err, CommitError::Flush(e) if e.contains("os error 28")),
        "{err}"
    );
    assert!(commit.health().is_failing());
    // While failing: refused at once, without a flush, and not ready.
    let flushes = store.flushes.load(Ordering::SeqCst);
    assert!(matches!(
        commit.commit().await,
        Err(CommitError::Failing(_))
    ));
    assert!(matches!(commit.probe().await, Err(CommitError::Failing(_))));
    assert_eq!(store.flushes.load(Ordering::SeqCst), flushes);

    // Two attempts fail (the disk is still full), the third works.
    store.recoveries.lock().unwrap().extend([
        Err(disk_full()),
        Err(disk_full()),
        Ok(Recovery::Resumed),
    ]);
    store.flush_fails.store(false, Ordering::SeqCst);
    until(|| !commit.health().is_failing()).await;
    assert!(store.recoveries.lock().unwrap().is_empty());
    commit.commit().await.unwrap();
    assert!(commit.probe().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_request_begun_before_a_failure_is_refused_after_the_recovery() {
    let store = Arc::new(Flaky::default());
    let commit = start(&store);
    let before = commit.health().epoch();

    store.flush_fails.store(true, Ordering::SeqCst);
    assert!(commit.commit().await.is_err());
    store.flush_fails.store(false, Ordering::SeqCst);
    store
        .recoveries
        .lock()
        .unwrap()
        .push_back(Ok(Recovery::Reopened));
    until(|| !commit.health().is_failing()).await;

    // Its writes went to the store that was reopened: this flush does not cover them.
    assert_eq!(
        commit.commit_since(Some(before)).await,
        Err(CommitError::EpochMoved)
    );
    // A request begun now is fine.
    let now = commit.health().epoch();
    assert_eq!(now, before + 2, "the failure and the reopen each moved it");
    commit.commit_since(Some(now)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn readiness_writes_a_probe_only_when_no_flush_is_recent() {
    let store = Arc::new(Flaky::default());
    let commit = start(&store);
    commit.commit().await.unwrap();
    commit.probe().await.unwrap();
    assert_eq!(
        store.probes.load(Ordering::SeqCst),
        0,
        "a flush just happened"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    commit.probe().await.unwrap();
    assert_eq!(store.probes.load(Ordering::SeqCst), 1);
    store.flush_fails.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(commit.probe().await.is_err(), "the probe's flush fails");
    assert!(commit.health().is_failing());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_recover_stops_the_server() {
    let store = Arc::new(Flaky::default());
    let commit = start(&store);
    let fatal = commit.health().fatal();
    store.flush_fails.store(true, Ordering::SeqCst);
    assert!(commit.commit().await.is_err());
    store
        .recoveries
        .lock()
        .unwrap()
        .push_back(Err(StoreError::Decode {
            what: "audit head",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        }));
    let reason = fatal.await;
    assert!(reason.contains("audit head"), "{reason}");
}
