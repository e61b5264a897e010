//! The data directory: what `init` puts in it (database, signing keys, TLS material, base
//! configuration, the page's cookie key) and the atomic, private file writes everything secret
//! goes through.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::keys::{KeyError, KeyFile};
use crate::oauth::registration::{client_from_metadata, ClientMetadata, ADMIN_SCOPES};
use crate::secret::Secret;
use crate::store::{Durability, SledStore, StoreError};
use crate::tls::TlsError;

/// Base configuration written by `init`; its presence marks a data directory as initialised.
pub const CONFIG_FILE: &str = "hallmark.toml";
/// The sled database.
pub const DB_DIR: &str = "db";
/// TLS material.
pub const TLS_DIR: &str = "tls";
/// Issuer used when `init` is given none.
pub const DEFAULT_ISSUER: &str = "https://localhost:8443";

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory to create.
    pub data_dir: PathBuf,
    /// The issuer identifier.
    pub issuer: String,
    /// Names and addresses for the server certificate.
    pub hosts: Vec<String>,
    /// Keep everything in this PostgreSQL database instead of the embedded store.
    pub database: Option<crate::backend::Database>,
}

/// What `init` hands the operator, once.
#[derive(Debug)]
pub struct Initialised {
    /// The issuer.
    pub issuer: String,
    /// Path of the CA certificate clients pin.
    pub ca_cert: PathBuf,
    /// The admin client's id.
    pub admin_client_id: String,
    /// The admin client's secret: printed once, stored only as a hash.
    pub admin_client_secret: Secret,
}

/// Why `init` refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory already holds a server.
    #[error("{0} already holds a Hallmark server; refusing to overwrite it")]
    AlreadyInitialised(String),
    /// The directory holds something else.
    #[error("{0} is not empty; give init a new or empty directory")]
    NotEmpty(String),
    /// The issuer is not an acceptable URL.
    #[error("invalid issuer: {0}")]
    Issuer(String),
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// What was being written.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS material could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Signing keys could not be written.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The database could not be created.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database could not be prepared.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The verification page's cookie key could not be made.
    #[error(transparent)]
    PageKey(#[from] crate::web::visitor::CookieKeyError),
}

/// Validate an issuer (RFC 8414 §2: https, no query or fragment). Plain http is accepted only
/// for a loopback host, for local development and benchmarks.
pub fn validate_issuer(issuer: &str) -> Result<String, String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("{issuer}: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{issuer}: an issuer has no query or fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("{issuer}: no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{issuer}: plain http is allowed only on a loopback host"
            ))
        }
        other => return Err(format!("{issuer}: scheme {other} is not https")),
    }
    Ok(issuer.trim_end_matches('/').to_owned())
}

/// Create a new data directory (and, with a database, its schema and first records). Never
/// overwrites: a directory that holds anything is refused.
pub async fn init(opts: &InitOptions) -> Result<Initialised, InitError> {
    let dir = &opts.data_dir;
    let shown = dir.display().to_string();
    let issuer = validate_issuer(&opts.issuer).map_err(InitError::Issuer)?;
    if dir.join(CONFIG_FILE).exists() || dir.join(DB_DIR).exists() {
        return Err(InitError::AlreadyInitialised(shown));
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(InitError::NotEmpty(shown));
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| InitError::Io {
                    path: shown.clone(),
                    source,
                },
            )?;
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| InitError::Io {
                path: shown.clone(),
                source,
            })?,
    }

    let now = crate::unix_now();
    if opts.database.is_none() {
        let mut keys = KeyFile::default();
        keys.add_new(now, now);
        keys.save(dir)?;
    }
    crate::web::visitor::CookieKey::load_or_create(dir)?;

    let mut hosts = opts.hosts.clone();
    if let Some(host) = url::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let tls = crate::tls::generate(&hosts)?;
    let tls_dir = dir.join(TLS_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tls_dir)
        .map_err(|source| InitError::Io {
            path: tls_dir.display().to_string(),
            source,
        })?;
    for (name, text, private) in [
        ("ca.pem", &tls.ca_cert_pem, false),
        ("ca-key.pem", &tls.ca_key_pem, true),
        ("server.pem", &tls.server_cert_pem, false),
        ("server-key.pem", &tls.server_key_pem, true),
    ] {
        let path = tls_dir.join(name);
        let mode = if private { 0o600 } else { 0o644 };
        write_atomic(&path, text.as_bytes(), mode).map_err(|source| InitError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }

    let (admin, secret) = client_from_metadata(
        ClientMetadata {
            client_name: Some("Hallmark administrator".into()),
            scope: Some(ADMIN_SCOPES.join(" ")),
            ..ClientMetadata::default()
        },
        now,
    )
    .map_err(|e| InitError::Issuer(e.to_string()))?;
    let secret = secret.ok_or_else(|| InitError::Issuer("admin client got no secret".into()))?;
    let mut database_lines = String::new();
    match &opts.database {
        None => {
            let store = SledStore::open(&dir.join(DB_DIR))?;
            store.put_client_now(&admin)?;
            store.flush()?;
        }
        Some(db) => {
            crate::backend::init_database(dir, db, &admin, now).await?;
            // The URL may carry a password: the file is then readable by its owner only.
            database_lines = format!(
                "database_url = {}\n",
                toml::Value::String(db.url.expose().to_owned())
            );
            if let Some(ca) = &db.ca {
                database_lines.push_str(&format!(
                    "database_ca = {}\n",
                    toml::Value::String(ca.display().to_string())
                ));
            }
        }
    }

    let listen_port = url::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(8443);
    let config = format!(
        "# Written by `hallmark-server init`. This is the base layer of serve's settings:\n\
         # --config FILE, HALLMARK_* environment variables and flags override it.\n\
         issuer = \"{issuer}\"\n\
         listen = \"127.0.0.1:{listen_port}\"\n{database_lines}"
    );
    // Written last: its presence means init finished.
    let config_path = dir.join(CONFIG_FILE);
    let mode = if opts.database.is_some() {
        0o600
    } else {
        0o644
    };
    write_atomic(&config_path, config.as_bytes(), mode).map_err(|source| InitError::Io {
        path: config_path.display().to_string(),
        source,
    })?;

    Ok(Initialised {
        issuer,
        ca_cert: tls_dir.join("ca.pem"),
        admin_client_id: admin.client_id,
        admin_client_secret: secret,
    })
}

/// `audit verify`: check the audit chain of a stopped server's data directory, then each
/// checkpoint against it (see [`crate::checkpoint`]). The entries, and the checkpoints that
/// matched; an error names the first broken entry or the first checkpoint that failed.
pub fn verify_audit(
    data_dir: &Path,
    checkpoints: &[PathBuf],
    export_dir: Option<&Path>,
) -> Result<AuditReport, crate::checkpoint::CheckpointError> {
    use crate::backend::{database_of, open, Role};
    let database = database_of(data_dir)?;
    // The issuer `init` wrote; checkpoints must be this server's.
    let issuer = crate::config::ConfigLayer::load(&data_dir.join(CONFIG_FILE))
        .ok()
        .and_then(|layer| layer.issuer)
        .unwrap_or_default();
    crate::store::block_on(async {
        let backend = open(data_dir, database.as_ref(), Role::Command).await?;
        let key_file = backend.keys.load().await?;
        let verifier = crate::checkpoint::Verifier::new(&*backend.store, &key_file, issuer)?;
        let (entries, matched) = verifier.verify(checkpoints).await?;
        let export = match export_dir {
            Some(dir) => verifier.verify_export(dir).await?,
            None => Vec::new(),
        };
        let mut anchors = Vec::new();
        for head in backend.store.chains().await? {
            if let Some(a) = backend.store.anchor(head.chain.as_deref()).await? {
                anchors.push((head.chain, a.seq));
            }
        }
        Ok(AuditReport {
            entries,
            matched,
            export,
            anchors,
        })
    })?
}

/// What `audit verify` found intact.
#[derive(Debug)]
pub struct AuditReport {
    /// Entries in the database's chains.
    pub entries: u64,
    /// Checkpoints that matched.
    pub matched: Vec<crate::checkpoint::Matched>,
    /// Exported chains verified.
    pub export: Vec<crate::export::verify::ChainReport>,
    /// Chains whose prefix was pruned, and up to which entry.
    pub anchors: Vec<(Option<String>, u64)>,
}

/// `keys rotate`: add a key signing in `activate_in` seconds, prune dead ones; the new kid.
pub fn rotate_keys(
    data_dir: &Path,
    activate_in: u64,
) -> Result<String, crate::backend::BackendError> {
    use crate::backend::{database_of, open, Role};
    // Keep retired keys for the longest lifetime serve accepts plus the largest skew.
    let keep = 86_400 + 300;
    let database = database_of(data_dir)?;
    crate::store::block_on(async {
        let backend = open(data_dir, database.as_ref(), Role::Command).await?;
        let mut kid = String::new();
        backend
            .keys
            .update(&mut |file| {
                kid = file.rotate(crate::unix_now(), activate_in, keep);
                true
            })
            .await?;
        Ok(kid)
    })?
}

/// Write a secret file: temp file with mode 0600, fsync, rename, fsync the directory.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Write `bytes` to `path` so that a crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_rules() {
        assert_eq!(
            validate_issuer("https://as.example.com/").unwrap(),
            "https://as.example.com"
        );
        assert!(validate_issuer("http://127.0.0.1:9000").is_ok());
        assert!(validate_issuer("http://localhost:9000").is_ok());
        for bad in [
            "http://as.example.com",
            "https://a.example?x=1",
            "https://a.example#f",
            "ftp://a",
            "nope",
        ] {
            assert!(validate_issuer(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn init_refuses_to_run_twice_or_into_a_full_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            data_dir: tmp.path().join("srv"),
            issuer: DEFAULT_ISSUER.into(),
            hosts: vec!["localhost".into()],
            database: None,
        };
        let out = init(&opts).await.unwrap();
        assert!(out.ca_cert.exists());
        let mode = std::fs::metadata(opts.data_dir.join(crate::keys::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(opts.data_dir.join(crate::web::visitor::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            init(&opts).await,
            Err(InitError::AlreadyInitialised(_))
        ));
        std::fs::write(tmp.path().join("other"), b"x").unwrap();
        let opts2 = InitOptions {
            data_dir: tmp.path().to_owned(),
            ..opts
        };
        assert!(matches!(init(&opts2).await, Err(InitError::NotEmpty(_))));
    }
}
