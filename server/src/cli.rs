//! Command-line interface of `hallmark-server` (clap). Flags and `HALLMARK_*` variables share
//! names with the config file's keys.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ConfigLayer;

/// Hallmark's OAuth 2.0 authorization server.
#[derive(Debug, Parser)]
#[command(name = "hallmark-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Create a data directory: database, signing key, TLS CA and certificate, admin client.
    /// Prints one JSON object with the admin client's secret (shown only this once).
    Init(InitArgs),
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// The audit log (offline: stop the server first).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Signing keys (offline: stop the server first).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// People who approve devices on the verification page (offline: stop the server first).
    #[command(subcommand)]
    User(UserCommand),
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum UserCommand {
    /// Create a user; the password is read from the first line of standard input (Argon2id).
    Add {
        /// User name: 1-64 of a-z 0-9 . _ @ - (stored lowercase).
        name: String,
        /// Data directory.
        #[arg(long, env = "HALLMARK_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum AuditCommand {
    /// Check the hash chain: prints `audit chain intact: N entries` and exits 0, or names the
    /// first broken entry and exits 1. With checkpoints, also checks the chain against each:
    /// it must reach the checkpoint's seq with the hash it recorded, else the checkpoint is
    /// named and the exit is 1.
    Verify {
        /// Data directory.
        #[arg(long, env = "HALLMARK_DATA_DIR")]
        data_dir: PathBuf,
        /// A signed checkpoint kept from `GET /admin/audit/checkpoint` or the server's log (the
        /// file may hold the JSON answer, the log line or the bare JWS); repeatable.
        #[arg(long = "checkpoint", value_name = "FILE", num_args = 1..)]
        checkpoints: Vec<PathBuf>,
        /// Also verify the exported segments in DIR end to end (every entry's hash and link,
        /// no missing segment, each closed segment's signed checkpoint) and against the
        /// database (its pruning anchor must be in the export).
        #[arg(long, value_name = "DIR")]
        export_dir: Option<PathBuf>,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum KeysCommand {
    /// Add a new signing key, published at once and signing after `--activate-in` seconds; drop
    /// keys no live token can carry. Prints the new kid.
    Rotate {
        /// Data directory.
        #[arg(long, env = "HALLMARK_DATA_DIR")]
        data_dir: PathBuf,
        /// Seconds until the new key signs: at least the validators' JWKS cache period.
        #[arg(long, default_value_t = crate::config::DEFAULT_KEY_PUBLISH_AHEAD)]
        activate_in: u64,
    },
}

/// `init` arguments.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory to create (must not exist or be empty).
    #[arg(long, env = "HALLMARK_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Issuer URL (https; http only for a loopback host).
    #[arg(long, env = "HALLMARK_ISSUER", default_value = crate::datadir::DEFAULT_ISSUER)]
    pub issuer: String,
    /// The PostgreSQL database (default: the embedded store).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Host names and IP addresses for the server certificate.
    #[arg(
        long,
        env = "HALLMARK_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub hosts: Vec<String>,
}

/// Where the server keeps its state, for `init` and `serve`.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string instead of the embedded store; replicas share it. At
    /// `init`, the schema is created or migrated there and the URL written to hallmark.toml
    /// (then 0600).
    #[arg(
        long = "database",
        env = "HALLMARK_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// PEM bundle of the CAs the database's TLS certificate must chain to.
    #[arg(long, env = "HALLMARK_DATABASE_CA", value_name = "PEM")]
    pub database_ca: Option<PathBuf>,
}

/// `serve` arguments; each overrides the config files.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory made by `init`.
    #[arg(long, env = "HALLMARK_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Extra TOML config file, layered over the data directory's hallmark.toml.
    #[arg(long, env = "HALLMARK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, IP:PORT.
    #[arg(long, env = "HALLMARK_LISTEN")]
    pub listen: Option<String>,
    /// The PostgreSQL database (default: the embedded store).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// PEM certificate chain (default: the one init made).
    #[arg(long, env = "HALLMARK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (default: the one init made).
    #[arg(long, env = "HALLMARK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP; accepted only on a loopback listen address.
    #[arg(long, env = "HALLMARK_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Access token lifetime in seconds (default 300).
    #[arg(long, env = "HALLMARK_ACCESS_TOKEN_TTL")]
    pub access_token_ttl: Option<u64>,
    /// Tolerated clock skew in seconds (default 30).
    #[arg(long, env = "HALLMARK_CLOCK_SKEW")]
    pub clock_skew: Option<u64>,
    /// Largest request body in bytes (default 65536).
    #[arg(long, env = "HALLMARK_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Seconds a client has to send a request's headers, also the longest wait for the next
    /// request on an idle HTTP/1 connection (default 10).
    #[arg(long, env = "HALLMARK_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a connection may move no bytes before it is closed (default 60).
    #[arg(long, env = "HALLMARK_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Most connections open at once; more are closed and logged (default 1024).
    #[arg(long, env = "HALLMARK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds between automatic signing-key rotations; 0 turns them off (default 30 days).
    #[arg(long, env = "HALLMARK_KEY_ROTATION_PERIOD")]
    pub key_rotation_period: Option<u64>,
    /// Seconds a new signing key is published before it signs (default 600).
    #[arg(long, env = "HALLMARK_KEY_PUBLISH_AHEAD")]
    pub key_publish_ahead: Option<u64>,
    /// Most nested `act` levels a token exchange may produce, 1 to 16 (default 3).
    #[arg(long, env = "HALLMARK_MAX_DELEGATION_DEPTH")]
    pub max_delegation_depth: Option<usize>,
    /// The furthest ahead a client assertion's exp may lie, 60 to 3600 seconds (default 300).
    #[arg(long, env = "HALLMARK_MAX_ASSERTION_LIFETIME")]
    pub max_assertion_lifetime: Option<u64>,
    /// Require a server nonce in every DPoP proof (RFC 9449 §8); default off.
    #[arg(long, env = "HALLMARK_DPOP_NONCE")]
    pub dpop_nonce: bool,
    /// How old a DPoP proof may be, 10 to 300 seconds beyond the clock skew (default 60).
    #[arg(long, env = "HALLMARK_DPOP_PROOF_MAX_AGE")]
    pub dpop_proof_max_age: Option<u64>,
    /// A reverse proxy whose X-Forwarded-For names the client: an IP address or CIDR block;
    /// repeat for more (the variable takes a comma-separated list). Replaces the config files'
    /// list. Default none: X-Forwarded-For is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "HALLMARK_TRUSTED_PROXIES",
        value_name = "ADDR_OR_CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// A scope any device may hold; repeat for more (the variable takes a comma-separated
    /// list). Replaces the config files' list. Never an admin scope. Default `device`.
    #[arg(
        long = "device-scope",
        env = "HALLMARK_DEVICE_SCOPES",
        value_name = "SCOPE",
        value_delimiter = ','
    )]
    pub device_scopes: Vec<String>,
    /// Whether a device's new key must prove it lives in the device's TPM: required or off
    /// (default required).
    #[arg(long, env = "HALLMARK_ATTESTATION", value_name = "required|off")]
    pub attestation: Option<String>,
    /// PEM bundle of TPM manufacturers' CA certificates EK certificates must chain to; when
    /// set, every device registration must carry an EK certificate.
    #[arg(long, env = "HALLMARK_EK_ROOTS", value_name = "PEM")]
    pub ek_roots: Option<PathBuf>,
    /// Seconds between attempts to recover failing storage, 1 to 60; also the Retry-After of
    /// the 503s writes get meanwhile (default 2).
    #[arg(long, env = "HALLMARK_STORAGE_RETRY_INTERVAL")]
    pub storage_retry_interval: Option<u64>,
    /// Seconds between the signed audit checkpoints the server logs, 10 to 86400; 0 = none
    /// (default 3600).
    #[arg(long, env = "HALLMARK_AUDIT_CHECKPOINT_INTERVAL")]
    pub audit_checkpoint_interval: Option<u64>,
    /// Directory the audit log is exported to, as JSON-lines segments gzipped when closed
    /// (default none: no export, nothing pruned).
    #[arg(long, env = "HALLMARK_AUDIT_EXPORT_DIR", value_name = "DIR")]
    pub audit_export_dir: Option<PathBuf>,
    /// Size in bytes at which an export segment is closed (default 64 MiB).
    #[arg(long, env = "HALLMARK_AUDIT_EXPORT_MAX_BYTES", value_name = "BYTES")]
    pub audit_export_max_bytes: Option<u64>,
    /// Age at which an export segment is closed: seconds or 90s, 15m, 1h, 1d (default 1h).
    #[arg(long, env = "HALLMARK_AUDIT_EXPORT_MAX_AGE", value_name = "DURATION")]
    pub audit_export_max_age: Option<String>,
    /// How long audit entries stay in the database once exported: seconds or 90s, 15m, 12h,
    /// 30d (default forever; never without an export directory).
    #[arg(long, env = "HALLMARK_AUDIT_RETENTION", value_name = "DURATION")]
    pub audit_retention: Option<String>,
    /// Device flow, refresh token and verification-page settings.
    #[command(flatten)]
    pub device_flow: Box<DeviceFlowArgs>,
}

impl ServeArgs {
    /// The top configuration layer these flags and variables make.
    pub fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            issuer: None,
            listen: self.listen.clone(),
            database_url: self.database.database_url.clone(),
            database_ca: self.database.database_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            insecure_http: self.insecure_http.then_some(true),
            access_token_ttl: self.access_token_ttl,
            clock_skew: self.clock_skew,
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            key_rotation_period: self.key_rotation_period,
            key_publish_ahead: self.key_publish_ahead,
            max_delegation_depth: self.max_delegation_depth,
            max_assertion_lifetime: self.max_assertion_lifetime,
            dpop_nonce: self.dpop_nonce.then_some(true),
            dpop_proof_max_age: self.dpop_proof_max_age,
            trusted_proxies: (!self.trusted_proxies.is_empty())
                .then(|| self.trusted_proxies.clone()),
            device_scopes: (!self.device_scopes.is_empty()).then(|| self.device_scopes.clone()),
            storage_retry_interval: self.storage_retry_interval,
            audit_checkpoint_interval: self.audit_checkpoint_interval,
            audit_export_dir: self.audit_export_dir.clone(),
            audit_export_max_bytes: self.audit_export_max_bytes,
            audit_export_max_age: self
                .audit_export_max_age
                .clone()
                .map(crate::config::DurationText::Text),
            audit_retention: self
                .audit_retention
                .clone()
                .map(crate::config::DurationText::Text),
            attestation: self.attestation.clone(),
            ek_roots: self.ek_roots.clone(),
            device_code_expires_in: self.device_flow.device_code_expires_in,
            device_poll_interval: self.device_flow.device_poll_interval,
            refresh_token_ttl: self.device_flow.refresh_token_ttl,
            refresh_token_grace: self.device_flow.refresh_token_grace,
            code_failures_per_session: self.device_flow.code_failures_per_session,
            code_failures_per_account: self.device_flow.code_failures_per_account,
            code_failures_per_source: self.device_flow.code_failures_per_source,
            code_slowdown_per_source: self.device_flow.code_slowdown_per_source,
            code_failures_global: self.device_flow.code_failures_global,
            sign_in_failures_per_session: self.device_flow.sign_in_failures_per_session,
            sign_in_failures_per_source: self.device_flow.sign_in_failures_per_source,
            lockout_window: self.device_flow.lockout_window,
            scope_descriptions: (!self.device_flow.scope_descriptions.is_empty()).then(|| {
                self.device_flow
                    .scope_descriptions
                    .iter()
                    .cloned()
                    .collect()
            }),
        }
    }
}

/// `serve` flags of the device authorization grant (RFC 8628), refresh tokens and the
/// verification page.
#[derive(Debug, Args)]
pub struct DeviceFlowArgs {
    /// Device code lifetime in seconds (default 600).
    #[arg(long, env = "HALLMARK_DEVICE_CODE_EXPIRES_IN")]
    pub device_code_expires_in: Option<u64>,
    /// Polling interval handed to devices, seconds (default 5).
    #[arg(long, env = "HALLMARK_DEVICE_POLL_INTERVAL")]
    pub device_poll_interval: Option<u64>,
    /// Refresh token lifetime in seconds (default 30 days).
    #[arg(long, env = "HALLMARK_REFRESH_TOKEN_TTL")]
    pub refresh_token_ttl: Option<u64>,
    /// Seconds after its rotation during which a refresh token is accepted once more and
    /// answered with the same successor (a lost response), 0 to 300; 0 = never (default 30).
    #[arg(long, env = "HALLMARK_REFRESH_TOKEN_GRACE")]
    pub refresh_token_grace: Option<u64>,
    /// User codes matching no request per verification-page session per lockout window
    /// (default 5).
    #[arg(long, env = "HALLMARK_CODE_FAILURES_PER_SESSION")]
    pub code_failures_per_session: Option<u32>,
    /// User codes matching no request per account per lockout window (default 10).
    #[arg(long, env = "HALLMARK_CODE_FAILURES_PER_ACCOUNT")]
    pub code_failures_per_account: Option<u32>,
    /// User codes matching no request per source address per lockout window before accounts
    /// there that guessed themselves are paused (default 50).
    #[arg(long, env = "HALLMARK_CODE_FAILURES_PER_SOURCE")]
    pub code_failures_per_source: Option<u32>,
    /// User codes matching no request per source address per lockout window before such
    /// accounts are slowed down (default 20).
    #[arg(long, env = "HALLMARK_CODE_SLOWDOWN_PER_SOURCE")]
    pub code_slowdown_per_source: Option<u32>,
    /// User codes matching no request on the whole server per lockout window before accounts
    /// that guessed themselves are paused (default 200).
    #[arg(long, env = "HALLMARK_CODE_FAILURES_GLOBAL")]
    pub code_failures_global: Option<u32>,
    /// Failed sign-ins per verification-page session per lockout window (default 5).
    #[arg(long, env = "HALLMARK_SIGN_IN_FAILURES_PER_SESSION")]
    pub sign_in_failures_per_session: Option<u32>,
    /// Failed sign-ins per source address per lockout window (default 20).
    #[arg(long, env = "HALLMARK_SIGN_IN_FAILURES_PER_SOURCE")]
    pub sign_in_failures_per_source: Option<u32>,
    /// Lockout window in seconds (default 900).
    #[arg(long, env = "HALLMARK_LOCKOUT_WINDOW")]
    pub lockout_window: Option<u64>,
    /// Plain words for a scope on the consent page, SCOPE=TEXT (all languages); repeat for
    /// more (the variable takes one per line). Adds to the config files' table.
    #[arg(
        long = "scope-description",
        env = "HALLMARK_SCOPE_DESCRIPTIONS",
        value_name = "SCOPE=TEXT",
        value_delimiter = '\n',
        value_parser = crate::web::scopes::parse_flag
    )]
    pub scope_descriptions: Vec<(String, crate::web::scopes::RawDescription)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_layer(args: &[&str]) -> ConfigLayer {
        let argv = ["hallmark-server", "serve", "--data-dir", "/d"]
            .iter()
            .chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a.layer(),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn trusted_proxy_repeats_and_takes_lists() {
        let l = serve_layer(&[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "::1,192.0.2.7",
        ]);
        assert_eq!(
            l.trusted_proxies.as_deref(),
            Some(&["10.0.0.0/8".to_owned(), "::1".into(), "192.0.2.7".into()][..])
        );
    }

    #[test]
    fn scope_descriptions_come_as_scope_equals_text() {
        let l = serve_layer(&[
            "--scope-description",
            "api:read=Read your data, all of it",
            "--scope-description",
            "api:write=Change it",
        ]);
        let d = l.scope_descriptions.unwrap();
        assert_eq!(
            d["api:read"],
            crate::web::scopes::RawDescription::Text("Read your data, all of it".into())
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn no_trusted_proxy_flag_leaves_the_lower_layers_list() {
        // (Unless HALLMARK_TRUSTED_PROXIES is set around the test run.)
        if std::env::var_os("HALLMARK_TRUSTED_PROXIES").is_none() {
            assert!(serve_layer(&[]).trusted_proxies.is_none());
        }
    }
}
