//! The sled store the server holds: the open [`SledDb`], and recovery from an I/O error by
//! opening the database again in this process.
//!
//! sled *poisons* itself on an I/O error: once a write to its log has failed (disk full, EIO,
//! a read-only remount), it refuses every later write with the same error for as long as the
//! database is open, while reads go on working. The only way back is to open the database again,
//! which runs the same recovery as a restart after a crash: the log is read up to its last
//! intact record and everything flushed is there. So recovery here is, in order: a test write
//! to the filesystem (the database stays open for reads until the disk takes writes again);
//! a write probe through the open database (a failure that did not poison it needs nothing
//! more); and only then closing and reopening it. Trait methods go to whichever database is
//! open; for the moment of a reopen there is none, and they answer [`StoreError::Reopening`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::SledDb;
use crate::store::audit::{Anchor, AuditEntry, AuditEvent, ChainBreak, ChainHead, Head};
use crate::store::grants::{
    DeviceGrant, DeviceGrantStore, RefreshGrace, RefreshToken, RefreshTokenStore, Rotation,
    TokenHash,
};
use crate::store::users::{SessionStore, User, UserStore, WebSession};
use crate::store::{
    AuditLog, Client, ClientStore, Deletion, DeletionCheck, Device, DeviceStore, Durability,
    Lineage, Recovery, StoreError, TokenStore,
};

/// File written and removed by the filesystem probe, in the database directory.
const FS_PROBE_FILE: &str = "write-probe.tmp";

/// The embedded store: one sled database in the data directory, reopened after an I/O error.
pub struct SledStore {
    path: PathBuf,
    live: RwLock<Option<Arc<SledDb>>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Open (or create) the database at `path` (see [`SledDb::open`] for a held lock).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = SledDb::open(path)?;
        Ok(SledStore {
            path: path.to_owned(),
            live: RwLock::new(Some(Arc::new(db))),
        })
    }

    /// The open database.
    fn db(&self) -> Result<Arc<SledDb>, StoreError> {
        // The slot is only ever replaced whole, so a poisoned lock still holds a valid value.
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Close the database and open it again. Requests still holding the old one finish on it
    /// (its writes fail, its reads work); opening waits for them to let go of its file lock.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.live.write().unwrap_or_else(|p| p.into_inner()).take();
        // The audit log goes on: its files are not sled's, and entries appended to the old
        // database by requests still running must reach them.
        let audit = old.as_ref().map(|db| db.audit.clone());
        drop(old);
        let db = SledDb::open_with_audit(&self.path, audit)?;
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        Ok(())
    }

    /// Write, sync and remove a small file beside the database: whether the filesystem takes
    /// writes at all, without touching sled.
    fn probe_filesystem(&self) -> Result<(), StoreError> {
        let path = self.path.join(FS_PROBE_FILE);
        let probe_err = |source| StoreError::Probe {
            path: path.display().to_string(),
            source,
        };
        let written = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        });
        let removed = std::fs::remove_file(&path);
        written.map_err(probe_err)?;
        removed.map_err(probe_err)
    }

    /// [`SledDb::put_client_now`]: for offline commands, which have no runtime.
    pub fn put_client_now(&self, client: &Client) -> Result<(), StoreError> {
        self.db()?.put_client_now(client)
    }

    /// Overwrite one stored audit entry's bytes, bypassing the chain. Exists so that tests can
    /// prove `audit verify` catches exactly this; nothing in the server calls it.
    #[doc(hidden)]
    pub fn overwrite_audit_entry_for_test(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.db()?.overwrite_audit_entry_for_test(seq, bytes)
    }

    /// Remove every audit entry after `keep`, bypassing the chain, as an intruder would. Exists
    /// so that tests can prove a checkpoint catches exactly this; nothing in the server calls it.
    #[doc(hidden)]
    pub fn truncate_audit_for_test(&self, keep: u64) -> Result<(), StoreError> {
        self.db()?.truncate_audit_for_test(keep)
    }
}

impl Durability for SledStore {
    fn flush(&self) -> Result<(), StoreError> {
        self.db()?.flush()
    }

    fn write_probe(&self) -> Result<(), StoreError> {
        self.db()?.write_probe()
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        self.probe_filesystem()?;
        let resumed = self
            .db()
            .and_then(|db| db.write_probe().and_then(|()| db.flush()));
        if resumed.is_ok() {
            return Ok(Recovery::Resumed);
        }
        self.reopen()?;
        let db = self.db()?;
        db.write_probe()?;
        db.flush()?;
        Ok(Recovery::Reopened)
    }
}

#[async_trait::async_trait]
impl ClientStore for SledStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        self.db()?.client(client_id).await
    }
    async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        self.db()?.put_client(client).await
    }
    async fn insert_new_client(&self, client: &Client) -> Result<bool, StoreError> {
        self.db()?.insert_new_client(client).await
    }
    async fn update_client(
        &self,
        client_id: &str,
        change: &mut (dyn for<'c> FnMut(&'c mut Client) -> bool + Send),
    ) -> Result<Option<Client>, StoreError> {
        self.db()?.update_client(client_id, change).await
    }
}

#[async_trait::async_trait]
impl TokenStore for SledStore {
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> Result<(), StoreError> {
        self.db()?.revoke_access_token(jti, exp).await
    }
    async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.db()?.is_access_token_revoked(jti).await
    }
    async fn record_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        exp: u64,
    ) -> Result<bool, StoreError> {
        self.db()?.record_assertion_jti(client_id, jti, exp).await
    }
    async fn record_lineage(
        &self,
        jti: &str,
        lineage: &Lineage,
        until: u64,
    ) -> Result<(), StoreError> {
        self.db()?.record_lineage(jti, lineage, until).await
    }
    async fn lineage(&self, jti: &str) -> Result<Option<Lineage>, StoreError> {
        self.db()?.lineage(jti).await
    }
    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        self.db()?.purge_expired(now).await
    }
}

#[async_trait::async_trait]
impl AuditLog for SledStore {
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError> {
        self.db()?.append(event, time_ms)
    }
    async fn entries(
        &self,
        chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.db()?.entries(chain, after, limit).await
    }
    async fn chains(&self) -> Result<Vec<ChainHead>, StoreError> {
        self.db()?.chains().await
    }
    async fn verify(&self) -> Result<Result<u64, Vec<ChainBreak>>, StoreError> {
        self.db()?.verify().await
    }
    fn durable_head(&self) -> Result<Head, StoreError> {
        self.db()?.durable_head()
    }
    async fn anchor(&self, chain: Option<&str>) -> Result<Option<Anchor>, StoreError> {
        self.db()?.anchor(chain).await
    }
    async fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError> {
        self.db()?.prune(upto, before_ms, sign).await
    }
}

#[async_trait::async_trait]
impl DeviceStore for SledStore {
    async fn device(&self, client_id: &str) -> Result<Option<Device>, StoreError> {
        self.db()?.device(client_id).await
    }
    async fn device_by_serial(&self, serial: &str) -> Result<Option<Device>, StoreError> {
        self.db()?.device_by_serial(serial).await
    }
    async fn register_device(
        &self,
        device: &Device,
        client: &Client,
    ) -> Result<Result<(), Device>, StoreError> {
        self.db()?.register_device(device, client).await
    }
    async fn delete_device_if(
        &self,
        client_id: &str,
        allow: &DeletionCheck<'_>,
    ) -> Result<Deletion, StoreError> {
        self.db()?.delete_device_if(client_id, allow).await
    }
    async fn update_device(
        &self,
        client_id: &str,
        change: &mut (dyn for<'d> FnMut(&'d mut Device) -> bool + Send),
    ) -> Result<Option<Device>, StoreError> {
        self.db()?.update_device(client_id, change).await
    }
    async fn devices(&self, after: &str, limit: usize) -> Result<Vec<Device>, StoreError> {
        self.db()?.devices(after, limit).await
    }
}

#[async_trait::async_trait]
impl DeviceGrantStore for SledStore {
    async fn insert_device_grant(
        &self,
        device_code: &TokenHash,
        grant: &DeviceGrant,
    ) -> Result<bool, StoreError> {
        self.db()?.insert_device_grant(device_code, grant).await
    }
    async fn device_grant_by_user_code(
        &self,
        user_code: &str,
    ) -> Result<Option<(TokenHash, DeviceGrant)>, StoreError> {
        self.db()?.device_grant_by_user_code(user_code).await
    }
    async fn update_device_grant(
        &self,
        device_code: &TokenHash,
        change: &mut (dyn for<'g> FnMut(&'g DeviceGrant) -> Option<DeviceGrant> + Send),
    ) -> Result<Option<DeviceGrant>, StoreError> {
        self.db()?.update_device_grant(device_code, change).await
    }
    async fn purge_device_grants(&self, now: u64) -> Result<usize, StoreError> {
        self.db()?.purge_device_grants(now).await
    }
}

#[async_trait::async_trait]
impl RefreshTokenStore for SledStore {
    async fn refresh_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<(RefreshToken, bool)>, StoreError> {
        self.db()?.refresh_token(token).await
    }
    async fn insert_refresh_token(
        &self,
        token: &TokenHash,
        record: &RefreshToken,
    ) -> Result<(), StoreError> {
        self.db()?.insert_refresh_token(token, record).await
    }
    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        next_record: &RefreshToken,
        now: u64,
        grace: Option<&RefreshGrace>,
    ) -> Result<Rotation, StoreError> {
        self.db()?
            .rotate_refresh_token(presented, next, next_record, now, grace)
            .await
    }
    async fn refresh_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        self.db()?.refresh_family_revoked(family).await
    }
    async fn revoke_refresh_family(&self, family: &str, now: u64) -> Result<bool, StoreError> {
        self.db()?.revoke_refresh_family(family, now).await
    }
    async fn purge_refresh_tokens(&self, now: u64) -> Result<usize, StoreError> {
        self.db()?.purge_refresh_tokens(now).await
    }
}

#[async_trait::async_trait]
impl UserStore for SledStore {
    async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.db()?.user(username).await
    }
    async fn insert_new_user(&self, user: &User) -> Result<bool, StoreError> {
        self.db()?.insert_new_user(user).await
    }
}

#[async_trait::async_trait]
impl SessionStore for SledStore {
    async fn web_session(&self, id: &TokenHash) -> Result<Option<WebSession>, StoreError> {
        self.db()?.web_session(id).await
    }
    async fn put_web_session(
        &self,
        id: &TokenHash,
        session: &WebSession,
    ) -> Result<(), StoreError> {
        self.db()?.put_web_session(id, session).await
    }
    async fn delete_web_session(&self, id: &TokenHash) -> Result<(), StoreError> {
        self.db()?.delete_web_session(id).await
    }
    async fn purge_web_sessions(&self, now: u64) -> Result<usize, StoreError> {
        self.db()?.purge_web_sessions(now).await
    }
    async fn web_session_count(&self) -> Result<usize, StoreError> {
        self.db()?.web_session_count().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::Outcome;

    #[tokio::test]
    async fn reopening_keeps_what_was_flushed_and_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .append(AuditEvent::new("kept", Outcome::Success), 1)
            .unwrap();
        store.flush().unwrap();
        // Appended, not yet flushed, by a request still running on the old database: the
        // audit log is not sled's, so it goes on through the reopen and the entry is kept.
        store
            .append(AuditEvent::new("in flight", Outcome::Success), 2)
            .unwrap();
        store.reopen().unwrap();
        assert_eq!(store.verify().await.unwrap(), Ok(1));
        assert_eq!(
            store
                .append(AuditEvent::new("after", Outcome::Success), 3)
                .unwrap(),
            3
        );
        store.flush().unwrap();
        assert_eq!(store.verify().await.unwrap(), Ok(3));
        let events: Vec<_> = store
            .entries(None, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body.event.event)
            .collect();
        assert_eq!(events, ["kept", "in flight", "after"]);
        // A healthy store recovers without a reopen.
        assert_eq!(store.recover().unwrap(), Recovery::Resumed);
    }

    #[tokio::test]
    async fn a_held_old_database_delays_the_reopen_but_not_forever() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let held = store.db().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reopener = {
            let store = store.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                store.reopen()
            })
        };
        rx.recv().unwrap();
        // While the old database is held, the store answers "reopening", never a stale db.
        while store.db().is_ok() {
            std::thread::yield_now();
        }
        assert!(matches!(
            store.client("x").await,
            Err(StoreError::Reopening)
        ));
        drop(held);
        reopener.join().unwrap().unwrap();
        assert!(store.client("x").await.unwrap().is_none());
    }
}
