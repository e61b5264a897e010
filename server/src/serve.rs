//! Running the server: open the data directory, build the state, listen (HTTPS, or plain HTTP on
//! loopback when asked), shut down gracefully on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::backend::{BackendError, KeySource, Role};
use crate::config::{ServeSettings, Transport};
use crate::conn::Limiter;
use crate::keys::{KeyError, KeyRing, Keys};
use crate::oauth::{AuthServer, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{GroupCommit, StorageHealth, Store, StoreError};
use crate::tls::TlsError;
use crate::web::visitor::{CookieKey, CookieKeyError};

/// How often expired revocation and replay records are dropped.
const PURGE_INTERVAL: Duration = Duration::from_secs(300);
/// How often the key file is re-read and the rotation schedule checked.
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(crate::config::KEY_CHECK_INTERVAL_SECS);
/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long they get when the server stops because storage is lost.
const STORAGE_LOST_GRACE: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Storage could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory's store could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Signing keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The verification page's cookie key could not be loaded or made.
    #[error(transparent)]
    PageKey(#[from] CookieKeyError),
    /// The audit export directory cannot be used.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// Storage failed in a way this process cannot recover from (the reason is logged); a
    /// supervisor restarting the server is the way back.
    #[error("storage cannot recover in this process: {0}")]
    StorageLost(String),
    /// The listen address could not be bound or the server failed.
    #[error("cannot serve on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Everything a running server holds, built from settings; tests use this to run in-process.
#[derive(Debug)]
pub struct Built {
    /// The protocol core.
    pub oauth: AuthServer,
    /// The MAC key of the verification page's cookies.
    pub page_key: Arc<CookieKey>,
    store: Arc<dyn Store>,
    keys: Arc<KeySource>,
}

/// Open storage and keys, and start the group committer (needs a tokio runtime).
pub async fn build(settings: &ServeSettings) -> Result<Built, ServeError> {
    let backend = crate::backend::open(
        &settings.data_dir,
        settings.database.as_ref(),
        Role::Replica,
    )
    .await?;
    let store = backend.store;
    let keys = Arc::new(backend.keys);
    let ring = KeyRing::build(&keys.load().await?, crate::unix_now())?;
    // Data directories from before the key existed get one now.
    let page_key = Arc::new(CookieKey::load_or_create(&settings.data_dir)?);
    let metrics = crate::metrics::Metrics::default();
    let health = StorageHealth::new(settings.storage_retry_interval);
    let oauth = AuthServer {
        settings: Arc::new(settings.oauth.clone()),
        clients: store.clone(),
        tokens: store.clone(),
        audit: store.clone(),
        devices: store.clone(),
        keys: Arc::new(Keys::new(ring)),
        commit: GroupCommit::start(store.clone(), metrics.clone(), health),
        metrics,
        device_grants: store.clone(),
        refresh_tokens: store.clone(),
        users: store.clone(),
        sessions: store.clone(),
        password_checks: crate::accounts::PasswordChecks::per_core(),
        verified: Arc::default(),
        database: backend.database,
    };
    Ok(Built {
        oauth,
        page_key,
        store,
        keys,
    })
}

/// Serve until SIGTERM or SIGINT.
pub async fn serve(settings: ServeSettings) -> Result<(), ServeError> {
    let built = build(&settings).await?;
    let app = crate::http::router(&built, &settings)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let purge_store = built.store.clone();
    let purge = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tick.tick().await;
            let store = purge_store.clone();
            let now = crate::unix_now();
            // A scan over whole tables: on a blocking thread, not a request worker.
            let handle = tokio::runtime::Handle::current();
            let purge = move || {
                handle.block_on(async {
                    Ok::<_, StoreError>(
                        store.purge_expired(now).await?
                            + crate::store::grants::purge_expired(&*store, now).await?,
                    )
                })
            };
            match tokio::task::spawn_blocking(purge).await {
                Ok(Ok(n)) if n > 0 => tracing::debug!(purged = n, "expired records dropped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "purge failed"),
                _ => {}
            }
        }
    });
    let key_task = spawn_key_maintenance(&settings, built.oauth.clone(), built.keys.clone());
    let export = start_export(&settings, &built).await?;
    let checkpoints = settings
        .audit_checkpoint_interval
        .map(|every| spawn_checkpoint_log(every, built.oauth.clone()));
    let addr = settings.listen;
    let listen_err = |source| ServeError::Listen { addr, source };
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    let fatal = built.oauth.commit.health().fatal();
    let lost = tokio::spawn(async move {
        let lost = tokio::select! {
            () = shutdown_signal() => None,
            reason = fatal => Some(reason),
        };
        // Without storage, in-flight requests can only be refused: no reason to linger.
        let grace = if lost.is_some() {
            STORAGE_LOST_GRACE
        } else {
            SHUTDOWN_GRACE
        };
        shutdown.graceful_shutdown(Some(grace));
        lost
    });
    // Slow and silent clients (slowloris): the TLS handshake, the request headers and any
    // silence are each bounded, and so is the number of connections.
    let limiter = Limiter::new(settings.max_connections, settings.idle_timeout);
    let mut server = axum_server::bind(addr).handle(handle);
    server
        .http_builder()
        .http1()
        .header_read_timeout(settings.header_read_timeout);
    let server = server.first_request_timeout(settings.header_read_timeout);
    match &settings.transport {
        Transport::Tls { cert, key } => {
            let config = crate::tls::server_config(cert, key)?;
            let tls = RustlsAcceptor::new(RustlsConfig::from_config(config))
                .handshake_timeout(settings.header_read_timeout)
                .acceptor(limiter);
            tracing::info!(%addr, issuer = %settings.oauth.issuer, "serving HTTPS");
            server.acceptor(tls).serve(app).await.map_err(listen_err)?;
        }
        Transport::InsecureHttp => {
            tracing::warn!(%addr, issuer = %settings.oauth.issuer, "serving plain HTTP on loopback (--insecure-http)");
            server
                .acceptor(limiter)
                .serve(app)
                .await
                .map_err(listen_err)?;
        }
    }
    purge.abort();
    key_task.abort();
    if let Some(task) = checkpoints {
        task.abort();
    }
    if let Ok(Some(reason)) = lost.await {
        return Err(ServeError::StorageLost(reason));
    }
    // The last audit entries, on a blocking thread like every flush.
    let store = built.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| StoreError::DatabaseSetup {
            reason: format!("final flush: {e}"),
        })??;
    if let Some(task) = export {
        // The last entries, now durable, go to the files before the process ends.
        let _ = tokio::task::spawn_blocking(move || task.stop()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Start the audit exporter, if configured; say at start what retention will do.
async fn start_export(
    settings: &ServeSettings,
    built: &Built,
) -> Result<Option<crate::export::ExportTask>, ServeError> {
    let Some(export) = settings.audit_export.clone() else {
        match settings.audit_retention {
            Some(r) => tracing::warn!(
                retention_s = r.as_secs(),
                "audit_retention is set but audit_export_dir is not: nothing is pruned (entries leave the database only once a file holds them)"
            ),
            None => tracing::info!(
                "no audit_export_dir: audit entries stay in the database and are never pruned"
            ),
        }
        return Ok(None);
    };
    let oauth = built.oauth.clone();
    let sign: crate::export::Signer = Arc::new(move |seq, hash: &str| {
        crate::checkpoint::Checkpoint {
            issuer: oauth.settings.issuer.clone(),
            seq,
            head_hash: hash.to_owned(),
            time: crate::unix_now(),
            chain: oauth.audit.own_chain(),
        }
        .sign(&oauth.keys.current())
    });
    let exporter = crate::export::Exporter::open(export.clone(), built.store.clone(), sign).await?;
    tracing::info!(
        dir = %export.dir.display(),
        resume_after = exporter.last().0,
        max_bytes = export.max_bytes,
        max_age_s = export.max_age.as_secs(),
        retention_s = export.retention.map(|r| r.as_secs()),
        "exporting the audit log"
    );
    let task = crate::export::ExportTask::start(exporter, tokio::runtime::Handle::current())?;
    Ok(Some(task))
}

/// Keep the key ring current: rotate on schedule, pick up keys rotated offline, and switch the
/// signer when a published-ahead key's time comes.
fn spawn_key_maintenance(
    settings: &ServeSettings,
    oauth: AuthServer,
    source: Arc<KeySource>,
) -> tokio::task::JoinHandle<()> {
    let period = settings.key_rotation_period;
    let ahead = settings.key_publish_ahead;
    // A retired key stays published while any token it signed may be presented.
    let keep = settings.oauth.access_token_ttl + settings.oauth.clock_skew;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEY_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let now = crate::unix_now();
            let step = async {
                // Due is decided again under the store's lock: replicas rotating at once add
                // one key.
                let mut rotated = None;
                source
                    .update(&mut |file| {
                        let due = period > 0
                            && file.newest_created_at().is_none_or(|t| t + period <= now);
                        if due {
                            rotated = Some(file.rotate(now, ahead, keep));
                        }
                        due
                    })
                    .await?;
                let file = source.load().await?;
                Ok::<_, KeyError>((KeyRing::build(&file, now)?, rotated))
            }
            .await;
            match step {
                Ok((ring, rotated)) => {
                    if let Some(kid) = rotated {
                        tracing::info!(%kid, "signing key rotated on schedule");
                        let event = AuditEvent::new("keys.rotated", Outcome::Success)
                            .actor("scheduler")
                            .subject(kid)
                            .reason(format!("signs in {ahead} s"));
                        if let Err(e) = oauth.record(&RequestCtx::at(now), event).await {
                            tracing::error!(error = %e, "could not audit key rotation");
                        }
                    }
                    let current = oauth.keys.current();
                    if current.active.kid != ring.active.kid || current.jwks_json != ring.jwks_json
                    {
                        tracing::info!(kid = %ring.active.kid, "signing key ring updated");
                        oauth.keys.replace(ring);
                    }
                }
                Err(e) => tracing::error!(error = %e, "signing key maintenance failed"),
            }
        }
    })
}

/// Log a signed audit checkpoint at start and then every `every`, so that the log (shipped
/// off the machine) holds checkpoints that `audit verify --checkpoint` can check the chain
/// against.
fn spawn_checkpoint_log(every: Duration, oauth: AuthServer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match crate::checkpoint::make(&oauth, crate::unix_now()) {
                Ok((cp, jws)) => tracing::info!(
                    seq = cp.seq,
                    head_hash = %cp.head_hash,
                    checkpoint = %jws,
                    "audit checkpoint"
                ),
                Err(e) => tracing::warn!(error = %e, "no audit checkpoint"),
            }
        }
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
