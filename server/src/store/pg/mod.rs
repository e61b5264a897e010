//! PostgreSQL storage (`database_url`): the same narrow traits as sled, for N replicas on one
//! database. Every single-use check (assertion `jti`, refresh token, device code), revocation,
//! client, device and session is a row every replica sees; each write is its own transaction,
//! committed (and so durable, with PostgreSQL's default `synchronous_commit`) before the call
//! returns — except audit entries, which are chained in memory per replica and written by the
//! group committer, a batch per transaction. Records are the JSON documents sled keeps.
//!
//! What a replica caches it bounds: a client record is re-read after [`CLIENT_CACHE_TTL`], so a
//! device disabled at one replica is refused at every other within that time, whether or not
//! anything tells them (correctness never waits on a notification).

mod audit;
mod devices;
mod grants;
mod keys;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use super::{Client, ClientStore, Durability, Lineage, Recovery, StoreError, TokenStore};

pub use keys::PgKeys;

/// How long a replica trusts a client record it read: the bound on how late another replica's
/// change (disable, delete, rotation) is seen.
pub const CLIENT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Connections per replica.
const POOL_SIZE: usize = 16;
/// Advisory lock key of schema migrations ("hallmark" in ASCII).
const MIGRATION_LOCK: i64 = 0x6861_6c6c_6d61_726b;
/// The schema versions, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("schema_2.sql")),
    (3, include_str!("schema_3.sql")),
];

/// A replica's connection to the database.
pub struct PgStore {
    pool: Pool,
    /// The runtime the pool's connections run on, for the committer's blocking thread.
    runtime: tokio::runtime::Handle,
    audit: audit::PgAudit,
    /// Decoded clients and when each was read.
    client_cache: RwLock<HashMap<String, (Arc<Client>, Instant)>>,
    /// Bumped by every local invalidation (see the sled store's cache for why).
    cache_generation: std::sync::atomic::AtomicU64,
    /// Holds the replica's advisory lock on its chain for as long as the store lives.
    _chain_lock: tokio::sync::Mutex<deadpool_postgres::Object>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("chain", &self.audit.chain())
            .finish_non_exhaustive()
    }
}

/// A database URL, never printed: it may carry a password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wrap a `postgres://` URL or key=value connection string after checking it parses.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        url.parse::<tokio_postgres::Config>()
            .map_err(|_| StoreError::DatabaseUrl)?;
        Ok(DatabaseUrl(url.to_owned()))
    }

    /// The URL itself, for writing it where the operator asked (`init` into hallmark.toml).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        self.0
            .parse::<tokio_postgres::Config>()
            .map_err(|_| StoreError::DatabaseUrl)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl PgStore {
    /// Connect (TLS through rustls unless the URL says `sslmode=disable` or names a Unix
    /// socket), apply pending schema migrations under a lock (replicas starting together are
    /// safe), and claim the audit chain `chain` for this process: a second live process with
    /// the same chain (a data directory copied from a running replica) is refused.
    pub async fn connect(
        url: &DatabaseUrl,
        ca_pem: Option<&[u8]>,
        chain: &str,
    ) -> Result<Self, StoreError> {
        let pool = pool(url, ca_pem)?;
        migrate(&pool).await?;
        let lock = pool.get().await.map_err(pool_err)?;
        let claimed: bool = lock
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&format!("hallmark-chain:{chain}")],
            )
            .await
            .map_err(db("claim the audit chain"))?
            .get(0);
        if !claimed {
            return Err(StoreError::ChainInUse {
                chain: chain.to_owned(),
            });
        }
        let audit = audit::PgAudit::open(&pool, chain).await?;
        Ok(PgStore {
            pool,
            runtime: tokio::runtime::Handle::current(),
            audit,
            client_cache: RwLock::new(HashMap::new()),
            cache_generation: std::sync::atomic::AtomicU64::new(0),
            _chain_lock: tokio::sync::Mutex::new(lock),
        })
    }

    /// Apply pending migrations only (`init`).
    pub async fn migrate_only(url: &DatabaseUrl, ca_pem: Option<&[u8]>) -> Result<(), StoreError> {
        migrate(&pool(url, ca_pem)?).await
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conn()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(db("ping"))
            .map(|_| ())
    }

    fn forget_cached(&self, client_id: &str) {
        let mut cache = self.client_cache.write().unwrap_or_else(|p| p.into_inner());
        self.cache_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cache.remove(client_id);
    }
}

fn pool(url: &DatabaseUrl, ca_pem: Option<&[u8]>) -> Result<Pool, StoreError> {
    let config = connection_config(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    } else {
        Manager::from_config(config, tls(ca_pem)?, manager_config)
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::DatabaseSetup {
            reason: e.to_string(),
        })
}

/// The URL's settings, with TLS required over TCP. libpq's default `sslmode=prefer` would fall
/// back to plain text when the server (or whoever sits between) declines TLS — a downgrade
/// that exposes the password and every token hash; so over TCP TLS is `require`d (with the
/// certificate verified by rustls) unless the URL says `sslmode=disable` on purpose. A Unix
/// socket needs none.
fn connection_config(url: &DatabaseUrl) -> Result<tokio_postgres::Config, StoreError> {
    use tokio_postgres::config::{Host, SslMode};
    let mut config = url.config()?;
    let over_unix_socket = config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)));
    if over_unix_socket {
        config.ssl_mode(SslMode::Disable);
    } else if config.get_ssl_mode() != SslMode::Disable {
        config.ssl_mode(SslMode::Require);
    }
    Ok(config)
}

/// rustls for the database connection: the given CA bundle, else the WebPKI roots.
fn tls(ca_pem: Option<&[u8]>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| StoreError::DatabaseSetup {
                    reason: format!("database CA bundle: {e}"),
                })?;
                roots.add(cert).map_err(|e| StoreError::DatabaseSetup {
                    reason: format!("database CA bundle: {e}"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::DatabaseSetup {
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Apply every migration not yet recorded, each in its own transaction, under a
/// transaction-level advisory lock so that replicas starting together apply each once.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    let tx = conn.transaction().await.map_err(db("start a migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("lock the schema"))?;
    // "already exists, skipping" notices are expected on every start after the first.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(db("prepare a migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at bigint NOT NULL
         )",
    )
    .await
    .map_err(db("create schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(db("read schema_migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(db("apply a schema migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &now_i64()],
        )
        .await
        .map_err(db("record a schema migration"))?;
    }
    tx.commit().await.map_err(db("commit the schema"))
}

fn now_i64() -> i64 {
    to_i64(crate::unix_now())
}

/// Unix seconds and counts as PostgreSQL `bigint`s (they fit: no date passes 2^63 s).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A database error while doing `what`: unreachable (retry later) or otherwise failed.
fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| {
        if source.is_closed() || source.as_db_error().is_none() && source.code().is_none() {
            StoreError::DatabaseUnavailable {
                what,
                reason: source.to_string(),
            }
        } else {
            StoreError::Database { what, source }
        }
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::DatabaseUnavailable {
        what: "connect",
        reason: e.to_string(),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A key from a request as a PostgreSQL `text` value: `text` cannot hold NUL, and a client id
/// or `jti` from a request may. Backslash and NUL are escaped (`\\`, `\0`), so keys stay
/// distinct, and the ids we make (base64url) are stored as they are.
fn key(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '\0']) {
        std::borrow::Cow::Owned(value.replace('\\', "\\\\").replace('\0', "\\0"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Records are structs of strings, numbers and options: they always serialise.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Decode { what, source })
}

#[async_trait::async_trait]
impl ClientStore for PgStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        if let Some((hit, at)) = self
            .client_cache
            .read()
            .ok()
            .and_then(|c| c.get(client_id).cloned())
        {
            if at.elapsed() < CLIENT_CACHE_TTL {
                return Ok(Some(hit));
            }
        }
        let generation = self
            .cache_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        let read_at = Instant::now();
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM clients WHERE client_id = $1",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a client"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let client = Arc::new(from_json::<Client>(row.get(0), "client")?);
        if let Ok(mut cache) = self.client_cache.write() {
            if self
                .cache_generation
                .load(std::sync::atomic::Ordering::SeqCst)
                == generation
            {
                if cache.len() > 100_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < CLIENT_CACHE_TTL);
                }
                cache.insert(client_id.to_owned(), (client.clone(), read_at));
            }
        }
        Ok(Some(client))
    }

    async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO clients (client_id, record) VALUES ($1, $2)
                 ON CONFLICT (client_id) DO UPDATE SET record = EXCLUDED.record",
                &[&key(&client.client_id), &to_json(client)],
            )
            .await
            .map_err(db("write a client"))?;
        self.forget_cached(&client.client_id);
        Ok(())
    }

    async fn insert_new_client(&self, client: &Client) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO clients (client_id, record) VALUES ($1, $2)
                 ON CONFLICT (client_id) DO NOTHING",
                &[&key(&client.client_id), &to_json(client)],
            )
            .await
            .map_err(db("write a client"))?;
        self.forget_cached(&client.client_id);
        Ok(n == 1)
    }

    async fn update_client(
        &self,
        client_id: &str,
        change: &mut (dyn for<'c> FnMut(&'c mut Client) -> bool + Send),
    ) -> Result<Option<Client>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("update a client"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM clients WHERE client_id = $1 FOR UPDATE",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a client"))?
        else {
            return Ok(None);
        };
        let mut client = from_json::<Client>(row.get(0), "client")?;
        if !change(&mut client) {
            return Ok(Some(client));
        }
        tx.execute(
            "UPDATE clients SET record = $2 WHERE client_id = $1",
            &[&key(client_id), &to_json(&client)],
        )
        .await
        .map_err(db("update a client"))?;
        tx.commit().await.map_err(db("update a client"))?;
        self.forget_cached(client_id);
        Ok(Some(client))
    }
}

#[async_trait::async_trait]
impl TokenStore for PgStore {
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)
                 ON CONFLICT (jti) DO NOTHING",
                &[&key(jti), &to_i64(exp)],
            )
            .await
            .map_err(db("revoke a token"))?;
        Ok(())
    }

    async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .await?
            .query_opt("SELECT 1 FROM revoked_tokens WHERE jti = $1", &[&key(jti)])
            .await
            .map_err(db("read a revocation"))?
            .is_some())
    }

    async fn record_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        exp: u64,
    ) -> Result<bool, StoreError> {
        // One row per (client, jti): a replay at any replica finds it.
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (client_id, jti) DO NOTHING",
                &[&key(client_id), &key(jti), &to_i64(exp)],
            )
            .await
            .map_err(db("record an assertion jti"))?;
        Ok(n == 1)
    }

    async fn record_lineage(
        &self,
        jti: &str,
        lineage: &Lineage,
        until: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO token_lineage (jti, record, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (jti) DO UPDATE SET record = EXCLUDED.record,
                                                 expires_at = EXCLUDED.expires_at",
                &[&key(jti), &to_json(lineage), &to_i64(until)],
            )
            .await
            .map_err(db("record a lineage"))?;
        Ok(())
    }

    async fn lineage(&self, jti: &str) -> Result<Option<Lineage>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM token_lineage WHERE jti = $1",
                &[&key(jti)],
            )
            .await
            .map_err(db("read a lineage"))?;
        row.map(|r| from_json(r.get(0), "lineage")).transpose()
    }

    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        let now = to_i64(now);
        let conn = self.conn().await?;
        let mut purged = 0;
        for table in ["revoked_tokens", "assertion_jtis", "token_lineage"] {
            purged += conn
                .execute(
                    &format!("DELETE FROM {table} WHERE expires_at < $1"),
                    &[&now],
                )
                .await
                .map_err(db("purge expired records"))?;
        }
        // No failure window is longer than a day.
        purged += conn
            .execute(
                "DELETE FROM failure_windows WHERE since < $1",
                &[&(now - 86_400)],
            )
            .await
            .map_err(db("purge failure counters"))?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }
}

#[async_trait::async_trait]
impl super::WindowStore for PgStore {
    async fn update_windows(
        &self,
        keys: &[super::WindowKey],
        change: &mut (dyn for<'m> FnMut(&'m mut HashMap<super::WindowKey, super::Window>) + Send),
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("count a failure"))?;
        // Rows are created, then locked in one order, so concurrent updates cannot deadlock.
        let mut sorted: Vec<&super::WindowKey> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut windows = HashMap::new();
        for (kind, subject) in sorted {
            tx.execute(
                "INSERT INTO failure_windows (kind, subject, since, count) VALUES ($1, $2, 0, 0)
                 ON CONFLICT (kind, subject) DO NOTHING",
                &[kind, &key(subject)],
            )
            .await
            .map_err(db("count a failure"))?;
            let row = tx
                .query_one(
                    "SELECT since, count FROM failure_windows
                     WHERE kind = $1 AND subject = $2 FOR UPDATE",
                    &[kind, &key(subject)],
                )
                .await
                .map_err(db("count a failure"))?;
            windows.insert(
                (kind.clone(), subject.clone()),
                super::Window {
                    since: from_i64(row.get(0)),
                    count: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                },
            );
        }
        let before = windows.clone();
        change(&mut windows);
        for ((kind, subject), w) in &windows {
            if before.get(&(kind.clone(), subject.clone())) == Some(w) {
                continue;
            }
            tx.execute(
                "UPDATE failure_windows SET since = $3, count = $4 WHERE kind = $1 AND subject = $2",
                &[
                    kind,
                    &key(subject),
                    &to_i64(w.since),
                    &i32::try_from(w.count).unwrap_or(i32::MAX),
                ],
            )
            .await
            .map_err(db("count a failure"))?;
        }
        tx.commit().await.map_err(db("count a failure"))
    }
}

impl Durability for PgStore {
    /// Every other write committed when it was made; what is left is the audit entries
    /// appended since the last flush, written here in one transaction.
    /// With nothing pending the database is still asked (`SELECT 1`), so that a flush that
    /// succeeds means the database answers now, as readiness and recovery take it to mean.
    fn flush(&self) -> Result<(), StoreError> {
        self.runtime.block_on(async {
            if self.audit.write_pending(&self.pool).await? {
                return Ok(());
            }
            self.conn()
                .await?
                .simple_query("SELECT 1")
                .await
                .map_err(db("reach the database"))?;
            Ok(())
        })
    }

    fn write_probe(&self) -> Result<(), StoreError> {
        self.runtime.block_on(async {
            self.conn()
                .await?
                .execute(
                    "INSERT INTO write_probes (replica, at) VALUES ($1, $2)
                     ON CONFLICT (replica) DO UPDATE SET at = EXCLUDED.at",
                    &[&self.audit.chain(), &now_i64()],
                )
                .await
                .map_err(db("write the readiness probe"))?;
            Ok(())
        })
    }

    /// A database that answers again has lost nothing it acknowledged: every write committed
    /// when it was made, and audit entries not yet written are still pending here.
    fn recover(&self) -> Result<Recovery, StoreError> {
        self.write_probe()?;
        self.flush()?;
        Ok(Recovery::Resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_nul_or_backslash_are_escaped_distinctly() {
        assert_eq!(key("abc-_"), "abc-_");
        assert_eq!(key("a\0b"), "a\\0b");
        assert_ne!(key("a\0b"), key("a\\0b"));
        assert!(!key("\0\0").contains('\0'));
    }

    #[test]
    fn urls_are_checked_and_never_printed() {
        let url = DatabaseUrl::parse("postgres://hallmark:s3cret@db.example/hallmark").unwrap();
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(DatabaseUrl::parse("postgres://a:b@h/d?sslmode=bogus").is_err());
    }

    #[test]
    fn tls_is_required_over_tcp_unless_disabled_on_purpose() {
        use tokio_postgres::config::SslMode;
        let mode = |url: &str| {
            connection_config(&DatabaseUrl::parse(url).unwrap())
                .unwrap()
                .get_ssl_mode()
        };
        // libpq's default, `prefer`, would accept a plain-text downgrade.
        assert_eq!(mode("postgres://h/d"), SslMode::Require);
        assert_eq!(mode("postgres://h/d?sslmode=prefer"), SslMode::Require);
        assert_eq!(mode("postgres://h/d?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("host=/run/postgresql dbname=d"), SslMode::Disable);
    }
}
