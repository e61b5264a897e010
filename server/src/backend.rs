//! Which store a data directory uses — the embedded sled database, or PostgreSQL when
//! `database_url` is set — opened for `serve` (a replica) or for the offline commands, and the
//! files a replica keeps beside it: its replica id (the name of its audit chain) and the
//! key-encryption key (KEK) under which the signing keys in the database are sealed.
//!
//! A replica's data directory is a copy of the first one's (`cp -a DIR DIR2`): the KEK, the
//! TLS material and the page's cookie key are shared; the replica id is made at a replica's
//! first start, so copy a directory before its first `serve` — a copy of a running replica's
//! id is refused while the original runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::datadir::{write_private_atomic, CONFIG_FILE, DB_DIR};
use crate::keys::{KeyError, KeyFile};
use crate::store::pg::PgKeys;
use crate::store::{DatabaseUrl, PgStore, SledStore, Store, StoreError};

/// The replica's id, the name of its audit chain.
pub const REPLICA_ID_FILE: &str = "replica-id";
/// The key-encryption key of the signing keys in the database (32 bytes, 0600).
pub const KEK_FILE: &str = "kek";
/// The audit chain of offline commands (`user add`, `keys rotate`) on PostgreSQL.
pub const COMMAND_CHAIN: &str = "command";

/// A PostgreSQL database to use instead of the embedded store.
#[derive(Debug, Clone)]
pub struct Database {
    /// Where.
    pub url: DatabaseUrl,
    /// A PEM bundle of the CAs the database's TLS certificate must chain to (default: the
    /// WebPKI roots).
    pub ca: Option<PathBuf>,
}

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// `serve`: on PostgreSQL, appends to its own audit chain (its replica id).
    Replica,
    /// An offline command: on PostgreSQL, appends to the shared command chain.
    Command,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signing keys failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A file of the data directory could not be read or written.
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No KEK although the data directory uses a database.
    #[error("{path} is missing or is not 32 bytes: a replica's data directory is a copy of the first one's, KEK included")]
    Kek {
        /// Where it was looked for.
        path: String,
    },
    /// The data directory's config cannot be read.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `init --database` on a database that already holds a server.
    #[error("the database already holds a Hallmark server; for another replica, copy the first replica's data directory instead of running init")]
    DatabaseInitialised,
}

/// Where the signing keys live: the data directory's key file, or the database.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeySource {
    /// `DIR/signing-keys.json`.
    File(PathBuf),
    /// The `signing_keys` table, sealed under the KEK.
    Database(PgKeys),
}

impl KeySource {
    /// Every key.
    pub async fn load(&self) -> Result<KeyFile, KeyError> {
        match self {
            KeySource::File(dir) => KeyFile::load(dir),
            KeySource::Database(keys) => keys.load().await,
        }
    }

    /// Change the keys: `change` sees them as stored now and says whether to write them (on
    /// the database under a lock, so replicas rotating at once do not both add a key).
    pub async fn update(
        &self,
        change: &mut (dyn FnMut(&mut KeyFile) -> bool + Send),
    ) -> Result<(), KeyError> {
        match self {
            KeySource::File(dir) => {
                let mut file = KeyFile::load(dir)?;
                if change(&mut file) {
                    file.save(dir)?;
                }
                Ok(())
            }
            KeySource::Database(keys) => keys.update(change).await,
        }
    }
}

/// An opened store and its signing keys.
#[derive(Debug)]
pub struct Backend {
    /// Everything the server stores.
    pub store: Arc<dyn Store>,
    /// The signing keys.
    pub keys: KeySource,
    /// The database, when there is one (for `/readyz`).
    pub database: Option<Arc<PgStore>>,
}

/// Open the data directory's store for `role`.
pub async fn open(
    data_dir: &Path,
    database: Option<&Database>,
    role: Role,
) -> Result<Backend, BackendError> {
    let Some(db) = database else {
        return Ok(Backend {
            store: Arc::new(SledStore::open(&data_dir.join(DB_DIR))?),
            keys: KeySource::File(data_dir.to_path_buf()),
            database: None,
        });
    };
    let kek = read_kek(data_dir)?;
    let chain = match role {
        Role::Replica => replica_id(data_dir)?,
        Role::Command => COMMAND_CHAIN.to_owned(),
    };
    let ca = read_ca(db)?;
    let store = Arc::new(PgStore::connect(&db.url, ca.as_deref(), &chain).await?);
    Ok(Backend {
        keys: KeySource::Database(store.signing_keys(kek)),
        store: store.clone(),
        database: Some(store),
    })
}

/// `init --database`: apply the schema, make the KEK, and store the admin client and the
/// first signing key in the database. Refuses a database that already has signing keys.
pub async fn init_database(
    data_dir: &Path,
    db: &Database,
    admin: &crate::store::Client,
    now: u64,
) -> Result<(), BackendError> {
    let ca = read_ca(db)?;
    PgStore::migrate_only(&db.url, ca.as_deref()).await?;
    let mut kek = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, kek.as_mut());
    let path = data_dir.join(KEK_FILE);
    write_private_atomic(&path, kek.as_ref()).map_err(|source| BackendError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let backend = open(data_dir, Some(db), Role::Command).await?;
    if !backend.keys.load().await?.keys.is_empty() {
        return Err(BackendError::DatabaseInitialised);
    }
    backend.store.put_client(admin).await?;
    backend
        .keys
        .update(&mut |file| {
            file.add_new(now, now);
            true
        })
        .await?;
    Ok(())
}

/// The database the data directory's `hallmark.toml` (or `HALLMARK_DATABASE_URL`) names, for
/// the offline commands, which take no config flags.
pub fn database_of(data_dir: &Path) -> Result<Option<Database>, BackendError> {
    let path = data_dir.join(CONFIG_FILE);
    let bad = |reason: String| BackendError::Config {
        path: path.display().to_string(),
        reason,
    };
    let layer = crate::config::ConfigLayer::load(&path).map_err(|e| bad(e.to_string()))?;
    let url = std::env::var("HALLMARK_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or(layer.database_url);
    let ca = std::env::var_os("HALLMARK_DATABASE_CA")
        .map(PathBuf::from)
        .or(layer.database_ca);
    url.map(|u| {
        Ok(Database {
            url: DatabaseUrl::parse(&u)?,
            ca,
        })
    })
    .transpose()
}

fn read_kek(data_dir: &Path) -> Result<Zeroizing<[u8; 32]>, BackendError> {
    let path = data_dir.join(KEK_FILE);
    let missing = || BackendError::Kek {
        path: path.display().to_string(),
    };
    let bytes = Zeroizing::new(std::fs::read(&path).map_err(|_| missing())?);
    let kek = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| missing())?;
    Ok(Zeroizing::new(kek))
}

fn read_ca(db: &Database) -> Result<Option<Vec<u8>>, BackendError> {
    db.ca
        .as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|source| BackendError::Io {
                path: p.display().to_string(),
                source,
            })
        })
        .transpose()
}

/// This replica's id: read, or made and kept at its first start.
fn replica_id(data_dir: &Path) -> Result<String, BackendError> {
    let path = data_dir.join(REPLICA_ID_FILE);
    let io = |source| BackendError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = format!("r-{}", crate::secret::random_id(9));
    crate::datadir::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644).map_err(io)?;
    Ok(id)
}
