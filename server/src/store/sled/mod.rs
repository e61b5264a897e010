//! The embedded backend: one sled database in the data directory, one tree per concern.
//! [`SledDb`] is one open database; [`SledStore`] (in `live.rs`) holds the open one and opens it
//! again after an I/O error, since sled refuses every write once one has failed.

mod audit;
mod audit_files;
mod device_grants;
mod devices;
mod live;
mod refresh;
mod users;

pub use self::live::SledStore;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{Client, ClientStore, Lineage, StoreError, TokenStore};

/// A stored record: JSON. Records are structs of strings, numbers, lists and options, which always
/// serialise.
fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decode a stored record of kind `what`.
fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// Read and decode the record under `key`, if any.
fn get_json<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: impl AsRef<[u8]>,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    tree.get(key)
        .map_err(|source| StoreError::Read { what, source })?
        .map(|bytes| from_json(&bytes, what))
        .transpose()
}

/// How long [`SledDb::open`] waits for another holder of the database lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// sled reports a held file lock only as an `Other` I/O error whose text says so.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Page cache size: 64 MiB.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One open sled database, implementing every store trait.
pub(crate) struct SledDb {
    db: sled::Db,
    clients: sled::Tree,
    revoked: sled::Tree,
    assertion_jtis: sled::Tree,
    /// Exchanged tokens' lineage by `jti`: the big-endian purge time, then the JSON record.
    lineage: sled::Tree,
    /// Shared with the databases opened after this one (see [`SledStore`]).
    audit: Arc<audit::SledAudit>,
    devices: sled::Tree,
    device_serials: sled::Tree,
    device_eks: sled::Tree,
    device_grants: sled::Tree,
    refresh_tokens: sled::Tree,
    users: sled::Tree,
    web_sessions: sled::Tree,
    /// Decoded clients, so the hot path neither reads nor parses a record per request.
    client_cache: RwLock<HashMap<String, Arc<Client>>>,
    /// Bumped, under the cache's write lock, by every invalidation. A lookup that missed the
    /// cache fills it only if no invalidation happened since before it read the record: a
    /// record read just before an update must not be cached after the update cleared it.
    cache_generation: AtomicU64,
    /// Test hook run between a cache miss's read and its fill, to force that interleaving.
    #[cfg(test)]
    fill_hook: std::sync::Mutex<Option<FillHook>>,
}

/// See [`SledDb::fill_hook`].
#[cfg(test)]
type FillHook = Box<dyn FnMut(&SledDb) + Send>;

impl std::fmt::Debug for SledDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledDb").finish_non_exhaustive()
    }
}

impl SledDb {
    /// Open (or create) the database at `path`.
    ///
    /// sled locks its file for the life of the database, and its I/O threads can hold the file a
    /// moment after the last handle is dropped; so a lock conflict is retried for
    /// [`LOCK_WAIT`] before it is reported as [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_audit(path, None)
    }

    /// [`Self::open`], going on with `audit` (the audit log of the database this one replaces)
    /// if given, instead of opening the audit files again.
    pub(crate) fn open_with_audit(
        path: &Path,
        audit: Option<Arc<audit::SledAudit>>,
    ) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match Self::config(path).open() {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let audit = match audit {
            Some(audit) => audit,
            None => Arc::new(audit::SledAudit::open(path, &tree("audit")?)?),
        };
        Ok(SledDb {
            clients: tree("clients")?,
            revoked: tree("revoked_access_tokens")?,
            assertion_jtis: tree("assertion_jtis")?,
            lineage: tree("access_token_lineage")?,
            audit,
            devices: tree("devices")?,
            device_serials: tree("device_serials")?,
            device_eks: tree("device_eks")?,
            device_grants: tree("device_grants")?,
            refresh_tokens: tree("refresh_tokens")?,
            users: tree("users")?,
            web_sessions: tree("web_sessions")?,
            db,
            client_cache: RwLock::new(HashMap::new()),
            cache_generation: AtomicU64::new(0),
            #[cfg(test)]
            fill_hook: std::sync::Mutex::new(None),
        })
    }

    fn config(path: &Path) -> sled::Config {
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // The group committer flushes before every response that needs it; sled's own
            // periodic flusher would only add a competing thread.
            .flush_every_ms(None)
            // sled's default page cache is 1 GiB; the hot data (clients, revocations, pending
            // grants) is small, so bound the server's memory instead.
            .cache_capacity(CACHE_BYTES)
    }

    fn forget_cached(&self, client_id: &str) {
        // A poisoned lock only means a reader panicked; the map itself is intact.
        let mut cache = self.client_cache.write().unwrap_or_else(|p| p.into_inner());
        self.cache_generation.fetch_add(1, Ordering::SeqCst);
        cache.remove(client_id);
    }

    /// [`ClientStore::put_client`], synchronously: for `init`, which runs before any runtime.
    pub fn put_client_now(&self, client: &Client) -> Result<(), StoreError> {
        self.clients
            .insert(client.client_id.as_bytes(), to_json(client))
            .map_err(|source| StoreError::Write {
                what: "client",
                source,
            })?;
        self.forget_cached(&client.client_id);
        Ok(())
    }

    /// [`ClientStore::update_client`], synchronously (sled does not wait on anything).
    fn update_client_now(
        &self,
        client_id: &str,
        change: &mut (dyn for<'c> FnMut(&'c mut Client) -> bool + Send),
    ) -> Result<Option<Client>, StoreError> {
        let write_err = |source| StoreError::Write {
            what: "client",
            source,
        };
        loop {
            let Some(current) = self
                .clients
                .get(client_id)
                .map_err(|source| StoreError::Read {
                    what: "client",
                    source,
                })?
            else {
                return Ok(None);
            };
            let mut client = from_json::<Client>(&current, "client")?;
            if !change(&mut client) {
                return Ok(Some(client));
            }
            let swapped = self
                .clients
                .compare_and_swap(client_id.as_bytes(), Some(&current), Some(to_json(&client)))
                .map_err(write_err)?;
            if swapped.is_ok() {
                self.forget_cached(client_id);
                return Ok(Some(client));
            }
            // Someone else changed it in between: start again from their version.
        }
    }
}

#[async_trait::async_trait]
impl ClientStore for SledDb {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        if let Some(hit) = self
            .client_cache
            .read()
            .ok()
            .and_then(|c| c.get(client_id).cloned())
        {
            return Ok(Some(hit));
        }
        let generation = self.cache_generation.load(Ordering::SeqCst);
        let Some(bytes) = self
            .clients
            .get(client_id)
            .map_err(|source| StoreError::Read {
                what: "client",
                source,
            })?
        else {
            return Ok(None);
        };
        let client = Arc::new(from_json::<Client>(&bytes, "client")?);
        #[cfg(test)]
        {
            let hook = self
                .fill_hook
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(mut hook) = hook {
                hook(self);
            }
        }
        if let Ok(mut cache) = self.client_cache.write() {
            // Checked under the lock every invalidation takes: no update can slip in between.
            if self.cache_generation.load(Ordering::SeqCst) == generation {
                cache.insert(client_id.to_owned(), client.clone());
            }
        }
        Ok(Some(client))
    }

    async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        self.put_client_now(client)
    }

    async fn update_client(
        &self,
        client_id: &str,
        change: &mut (dyn for<'c> FnMut(&'c mut Client) -> bool + Send),
    ) -> Result<Option<Client>, StoreError> {
        self.update_client_now(client_id, change)
    }

    async fn insert_new_client(&self, client: &Client) -> Result<bool, StoreError> {
        let swapped = self
            .clients
            .compare_and_swap(
                client.client_id.as_bytes(),
                None::<&[u8]>,
                Some(to_json(client)),
            )
            .map_err(|source| StoreError::Write {
                what: "client",
                source,
            })?;
        self.forget_cached(&client.client_id);
        Ok(swapped.is_ok())
    }
}

#[async_trait::async_trait]
impl TokenStore for SledDb {
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> Result<(), StoreError> {
        self.revoked
            .insert(jti.as_bytes(), &exp.to_be_bytes())
            .map_err(|source| StoreError::Write {
                what: "revocation",
                source,
            })?;
        Ok(())
    }

    async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.revoked
            .contains_key(jti.as_bytes())
            .map_err(|source| StoreError::Read {
                what: "revocation",
                source,
            })
    }

    async fn record_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        exp: u64,
    ) -> Result<bool, StoreError> {
        // client_id cannot contain NUL (it is printable), so the key is unambiguous.
        let mut key = Vec::with_capacity(client_id.len() + jti.len() + 1);
        key.extend_from_slice(client_id.as_bytes());
        key.push(0);
        key.extend_from_slice(jti.as_bytes());
        let swapped = self
            .assertion_jtis
            .compare_and_swap(key, None::<&[u8]>, Some(&exp.to_be_bytes()[..]))
            .map_err(|source| StoreError::Write {
                what: "assertion jti",
                source,
            })?;
        Ok(swapped.is_ok())
    }

    async fn record_lineage(
        &self,
        jti: &str,
        lineage: &Lineage,
        until: u64,
    ) -> Result<(), StoreError> {
        // The purge time first, so the purge reads it as it does a revocation's, without
        // decoding the record.
        let mut value = until.to_be_bytes().to_vec();
        value.extend_from_slice(&to_json(lineage));
        self.lineage
            .insert(jti.as_bytes(), value)
            .map_err(|source| StoreError::Write {
                what: "lineage",
                source,
            })?;
        Ok(())
    }

    async fn lineage(&self, jti: &str) -> Result<Option<Lineage>, StoreError> {
        self.lineage
            .get(jti.as_bytes())
            .map_err(|source| StoreError::Read {
                what: "lineage",
                source,
            })?
            .map(|value| from_json(value.get(8..).unwrap_or_default(), "lineage"))
            .transpose()
    }

    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        // Every value in these trees starts with the big-endian time after which it can go.
        for tree in [&self.revoked, &self.assertion_jtis, &self.lineage] {
            for entry in tree.iter() {
                let (key, value) = entry.map_err(|source| StoreError::Read {
                    what: "expiry scan",
                    source,
                })?;
                let exp = value
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if exp < now {
                    tree.remove(key).map_err(|source| StoreError::Write {
                        what: "expiry purge",
                        source,
                    })?;
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }
}

/// Key of the write probe's record in the default tree.
const PROBE_KEY: &[u8] = b"write-probe";

impl SledDb {
    /// Write every pending audit entry and flush the database to disk.
    fn flush(&self) -> Result<(), StoreError> {
        self.audit.write_pending()?;
        self.db
            .flush()
            .map_err(|source| StoreError::Flush { source })?;
        self.audit.flushed();
        Ok(())
    }

    /// Overwrite the probe record (durable at the next flush). Fails at once on a database
    /// that an earlier I/O error poisoned.
    fn write_probe(&self) -> Result<(), StoreError> {
        self.db
            .insert(PROBE_KEY, &crate::unix_now().to_be_bytes())
            .map(|_| ())
            .map_err(|source| StoreError::Write {
                what: "write probe",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuthMethod;

    #[test]
    fn a_held_database_is_reported_in_use_and_reopens_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledDb::open(dir.path()).unwrap();
        let started = Instant::now();
        let err = SledDb::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(first);
        // Reopening right after the drop (as `init` then `serve` in one process do) succeeds
        // even while sled's I/O threads let go of the file.
        for _ in 0..20 {
            let again = SledDb::open(dir.path()).unwrap();
            drop(again);
        }
    }

    fn client(id: &str) -> Client {
        Client {
            client_id: id.into(),
            client_name: None,
            auth_method: AuthMethod::ClientSecretBasic,
            secret_hash: None,
            keys: vec![],
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["a".into()],
            created_at: 1,
            disabled: false,
            pending_key: None,
            key_challenge: None,
            dpop_bound_access_tokens: false,
        }
    }

    #[tokio::test]
    async fn clients_survive_reopen_and_cache_sees_updates() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledDb::open(dir.path()).unwrap();
            assert!(store.insert_new_client(&client("c1")).await.unwrap());
            assert!(!store.insert_new_client(&client("c1")).await.unwrap());
            assert!(!store.client("c1").await.unwrap().unwrap().disabled);
            let mut c = client("c1");
            c.disabled = true;
            store.put_client(&c).await.unwrap();
            assert!(store.client("c1").await.unwrap().unwrap().disabled);
            store.flush().unwrap();
        }
        let store = SledDb::open(dir.path()).unwrap();
        assert!(store.client("c1").await.unwrap().unwrap().disabled);
        assert!(store.client("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_lookup_racing_an_update_never_caches_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        assert!(store.insert_new_client(&client("dev")).await.unwrap());
        // The lookup misses the cache and reads the live record; before it fills the cache,
        // an operator disables the client.
        *store.fill_hook.lock().unwrap() = Some(Box::new(|s: &SledDb| {
            s.update_client_now("dev", &mut |c| {
                c.disabled = true;
                true
            })
            .unwrap();
        }));
        let raced = store.client("dev").await.unwrap().unwrap();
        assert!(
            !raced.disabled,
            "the racing lookup read the record before the update"
        );
        // Every later lookup sees the update: the stale record was not cached.
        assert!(store.client("dev").await.unwrap().unwrap().disabled);
        assert!(store.client("dev").await.unwrap().unwrap().disabled);
    }

    #[tokio::test]
    async fn assertion_jti_is_accepted_once_per_client() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        assert!(store.record_assertion_jti("c1", "j", 100).await.unwrap());
        assert!(!store.record_assertion_jti("c1", "j", 100).await.unwrap());
        assert!(store.record_assertion_jti("c2", "j", 100).await.unwrap());
    }

    #[tokio::test]
    async fn purge_drops_only_expired_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        store.revoke_access_token("old", 10).await.unwrap();
        store.revoke_access_token("new", 1000).await.unwrap();
        store.record_assertion_jti("c", "old", 10).await.unwrap();
        assert_eq!(store.purge_expired(500).await.unwrap(), 2);
        assert!(!store.is_access_token_revoked("old").await.unwrap());
        assert!(store.is_access_token_revoked("new").await.unwrap());
    }

    fn lineage(jtis: &[(&str, &str)]) -> Lineage {
        Lineage {
            ancestors: jtis
                .iter()
                .map(|(jti, client_id)| crate::store::Ancestor {
                    jti: (*jti).into(),
                    client_id: (*client_id).into(),
                    sid: None,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn lineage_survives_reopen_and_is_purged_after_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let kept = lineage(&[("parent", "b"), ("root", "a"), ("actor", "b")]);
        {
            let store = SledDb::open(dir.path()).unwrap();
            assert_eq!(store.lineage("child").await.unwrap(), None);
            store.record_lineage("child", &kept, 1000).await.unwrap();
            store
                .record_lineage("short", &lineage(&[("root", "a")]), 10)
                .await
                .unwrap();
            store.flush().unwrap();
        }
        let store = SledDb::open(dir.path()).unwrap();
        assert_eq!(store.lineage("child").await.unwrap(), Some(kept.clone()));
        assert!(store.lineage("short").await.unwrap().is_some());
        store.revoke_access_token("old", 10).await.unwrap();
        assert_eq!(store.purge_expired(500).await.unwrap(), 2);
        assert_eq!(store.lineage("short").await.unwrap(), None);
        assert_eq!(store.lineage("child").await.unwrap(), Some(kept));
        assert_eq!(store.purge_expired(1001).await.unwrap(), 1);
        assert_eq!(store.lineage("child").await.unwrap(), None);
    }
}
