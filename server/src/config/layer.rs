//! One layer of `serve`'s settings as written in a TOML file (the data directory's
//! `hallmark.toml`, `--config FILE`), or as the environment and flags make it, and how a higher
//! layer overrides a lower one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::web::scopes::RawDescription;

/// One layer of settings, as written in a TOML file. Every field is optional; later layers win.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Issuer identifier (RFC 8414). Set by `init`.
    pub issuer: Option<String>,
    /// Address to listen on. Default `127.0.0.1:8443`.
    pub listen: Option<String>,
    /// PostgreSQL connection string (`postgres://…`); unset: the embedded store in the data
    /// directory. Replicas sharing one database are one server.
    pub database_url: Option<String>,
    /// PEM bundle of the CAs the database's TLS certificate must chain to. Default: the WebPKI
    /// roots. (Unix-socket and `sslmode=disable` connections use no TLS.)
    pub database_ca: Option<PathBuf>,
    /// PEM certificate chain. Default: the one `init` made, `DIR/tls/server.pem`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key. Default `DIR/tls/server-key.pem`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP; only on a loopback address. Default false.
    pub insecure_http: Option<bool>,
    /// Access token lifetime in seconds, 1 to 86400. Default 300.
    pub access_token_ttl: Option<u64>,
    /// Tolerated clock skew in seconds, at most 300. Default 30.
    pub clock_skew: Option<u64>,
    /// Largest request body in bytes, 1 KiB to 1 MiB. Default 65536.
    pub max_body_bytes: Option<usize>,
    /// Seconds a client has to send a request's headers (and, on an idle HTTP/1 keep-alive
    /// connection, to start the next request), 1 to 300. Default 10.
    pub header_read_timeout: Option<u64>,
    /// Seconds a connection may move no bytes either way before it is closed, 1 to 3600.
    /// Default 60.
    pub idle_timeout: Option<u64>,
    /// Most connections open at once; more are closed at once and logged. Default 1024.
    pub max_connections: Option<usize>,
    /// Seconds between automatic signing-key rotations; 0 = never. Default 2592000 (30 days).
    pub key_rotation_period: Option<u64>,
    /// Seconds a new signing key is published before it signs. Default 600.
    pub key_publish_ahead: Option<u64>,
    /// Most nested `act` levels a token exchange (RFC 8693) may produce, 1 to 16. Default 3.
    pub max_delegation_depth: Option<usize>,
    /// The furthest ahead a client assertion's `exp` may lie, 60 to 3600 s; its `jti` is kept
    /// that long. Default 300.
    pub max_assertion_lifetime: Option<u64>,
    /// Whether every DPoP proof must carry a server nonce (RFC 9449 §8): clients are sent one
    /// in `DPoP-Nonce` and retry. Default false.
    pub dpop_nonce: Option<bool>,
    /// How old (by `iat`) a DPoP proof may be, 10 to 300 s, on top of the clock skew; its
    /// `jti` is remembered that long. Default 60.
    pub dpop_proof_max_age: Option<u64>,
    /// Reverse proxies whose `X-Forwarded-For` names the client: IP addresses and CIDR blocks.
    /// Default none: the header is ignored and the TCP peer is the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Seconds between attempts to recover failing storage, 1 to 60; also the `Retry-After`
    /// of the 503s that writes get meanwhile. Default 2.
    pub storage_retry_interval: Option<u64>,
    /// Seconds between the signed audit checkpoints the server logs (one at start, then one
    /// per interval), 10 to 86400; 0 = none. Default 3600.
    pub audit_checkpoint_interval: Option<u64>,
    /// Directory the audit log is exported to as JSON-lines segments (gzipped when closed, each
    /// ending with a signed checkpoint). Default none: no export, and nothing is ever pruned.
    pub audit_export_dir: Option<PathBuf>,
    /// Size at which an export segment is closed, bytes (at least 1024). Default 67108864
    /// (64 MiB).
    pub audit_export_max_bytes: Option<u64>,
    /// Age at which an export segment is closed: seconds, or a number with `s`, `m`, `h` or
    /// `d`. Default 1 h.
    pub audit_export_max_age: Option<super::DurationText>,
    /// How long audit entries stay in the database once a closed export segment holds them:
    /// seconds, or a number with `s`, `m`, `h` or `d` (`30d`). Default: forever. Without
    /// `audit_export_dir`, nothing is pruned.
    pub audit_retention: Option<super::DurationText>,
    /// Whether a device's new key must prove it lives in the device's TPM (credential
    /// activation): `required` or `off`. Default `required`.
    pub attestation: Option<String>,
    /// A PEM bundle of the TPM manufacturers' CA certificates (root and intermediate) an EK
    /// certificate must chain to; when set, every registration must carry one. Default none:
    /// the station's word for a device's EK is trusted.
    pub ek_roots: Option<PathBuf>,
    /// The scopes any device may hold; a registration asking for others is refused, and a
    /// device registered with others is granted only these. Never an admin scope. Default
    /// `["device"]`.
    pub device_scopes: Option<Vec<String>>,
    /// Lifetime of a device code and its user code (RFC 8628 `expires_in`), 60 to 3600 s.
    /// Default 600.
    pub device_code_expires_in: Option<u64>,
    /// Polling interval handed to devices (RFC 8628 `interval`), 1 to 60 s. Default 5.
    pub device_poll_interval: Option<u64>,
    /// Lifetime of each refresh token in seconds, 60 to 31536000. Default 2592000 (30 days).
    pub refresh_token_ttl: Option<u64>,
    /// Seconds after its rotation during which a refresh token is still accepted once, answered
    /// with the same successor (for a response lost in transit), 0 to 300; 0 = never. Any
    /// other reuse revokes the family. Default 30.
    pub refresh_token_grace: Option<u64>,
    /// User codes matching no request that one verification-page session may enter per lockout
    /// window. Default 5.
    pub code_failures_per_session: Option<u32>,
    /// User codes matching no request that one account may enter per lockout window, all its
    /// sessions and addresses together. Default 10.
    pub code_failures_per_account: Option<u32>,
    /// User codes matching no request from one source address per lockout window after which an
    /// account there that has itself entered 3 such codes is paused. Default 50.
    pub code_failures_per_source: Option<u32>,
    /// User codes matching no request from one source address per lockout window after which
    /// each further code entry of such an account is slowed down (1 s more each, up to 10 s;
    /// capped at `code_failures_per_source`). Default 20.
    pub code_slowdown_per_source: Option<u32>,
    /// User codes matching no request on the whole server per lockout window after which every
    /// account that has itself entered 3 such codes is paused. Default 200.
    pub code_failures_global: Option<u32>,
    /// Failed sign-ins one verification-page session may make per lockout window. Default 5.
    pub sign_in_failures_per_session: Option<u32>,
    /// Failed sign-ins one source address may make per lockout window. Default 20.
    pub sign_in_failures_per_source: Option<u32>,
    /// The window the failure limits count in, and so the longest lockout, 1 to 86400 s.
    /// Default 900.
    pub lockout_window: Option<u64>,
    /// Plain words for scopes on the consent page: scope → text, or scope → { language →
    /// text } (`en`, `de`). Default none (the page shows the identifiers). A higher layer adds
    /// to a lower one's table and replaces the scopes it names.
    pub scope_descriptions: Option<BTreeMap<String, RawDescription>>,
}

impl ConfigLayer {
    /// Read a TOML layer.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.message().to_owned(),
        })
    }

    /// `self` with every field `top` sets replaced.
    pub fn under(self, top: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            issuer: top.issuer.or(self.issuer),
            listen: top.listen.or(self.listen),
            database_url: top.database_url.or(self.database_url),
            database_ca: top.database_ca.or(self.database_ca),
            tls_cert: top.tls_cert.or(self.tls_cert),
            tls_key: top.tls_key.or(self.tls_key),
            insecure_http: top.insecure_http.or(self.insecure_http),
            access_token_ttl: top.access_token_ttl.or(self.access_token_ttl),
            clock_skew: top.clock_skew.or(self.clock_skew),
            max_body_bytes: top.max_body_bytes.or(self.max_body_bytes),
            header_read_timeout: top.header_read_timeout.or(self.header_read_timeout),
            idle_timeout: top.idle_timeout.or(self.idle_timeout),
            max_connections: top.max_connections.or(self.max_connections),
            key_rotation_period: top.key_rotation_period.or(self.key_rotation_period),
            key_publish_ahead: top.key_publish_ahead.or(self.key_publish_ahead),
            max_delegation_depth: top.max_delegation_depth.or(self.max_delegation_depth),
            max_assertion_lifetime: top.max_assertion_lifetime.or(self.max_assertion_lifetime),
            dpop_nonce: top.dpop_nonce.or(self.dpop_nonce),
            dpop_proof_max_age: top.dpop_proof_max_age.or(self.dpop_proof_max_age),
            // A list is replaced whole, not merged: a higher layer says the complete set.
            trusted_proxies: top.trusted_proxies.or(self.trusted_proxies),
            storage_retry_interval: top.storage_retry_interval.or(self.storage_retry_interval),
            audit_checkpoint_interval: top
                .audit_checkpoint_interval
                .or(self.audit_checkpoint_interval),
            device_scopes: top.device_scopes.or(self.device_scopes),
            attestation: top.attestation.or(self.attestation),
            audit_export_dir: top.audit_export_dir.or(self.audit_export_dir),
            audit_export_max_bytes: top.audit_export_max_bytes.or(self.audit_export_max_bytes),
            audit_export_max_age: top.audit_export_max_age.or(self.audit_export_max_age),
            audit_retention: top.audit_retention.or(self.audit_retention),
            ek_roots: top.ek_roots.or(self.ek_roots),
            device_code_expires_in: top.device_code_expires_in.or(self.device_code_expires_in),
            device_poll_interval: top.device_poll_interval.or(self.device_poll_interval),
            refresh_token_ttl: top.refresh_token_ttl.or(self.refresh_token_ttl),
            refresh_token_grace: top.refresh_token_grace.or(self.refresh_token_grace),
            code_failures_per_session: top
                .code_failures_per_session
                .or(self.code_failures_per_session),
            code_failures_per_account: top
                .code_failures_per_account
                .or(self.code_failures_per_account),
            code_failures_per_source: top
                .code_failures_per_source
                .or(self.code_failures_per_source),
            code_slowdown_per_source: top
                .code_slowdown_per_source
                .or(self.code_slowdown_per_source),
            code_failures_global: top.code_failures_global.or(self.code_failures_global),
            sign_in_failures_per_session: top
                .sign_in_failures_per_session
                .or(self.sign_in_failures_per_session),
            sign_in_failures_per_source: top
                .sign_in_failures_per_source
                .or(self.sign_in_failures_per_source),
            lockout_window: top.lockout_window.or(self.lockout_window),
            // A table: each scope is its own setting, so the layers' tables are merged.
            scope_descriptions: match (self.scope_descriptions, top.scope_descriptions) {
                (Some(mut below), Some(above)) => {
                    below.extend(above);
                    Some(below)
                }
                (below, above) => above.or(below),
            },
        }
    }
}
