//! Configuration of `serve`: defaults → the data directory's `hallmark.toml` → `--config FILE` →
//! `HALLMARK_*` environment → flags (clap merges the last two). Raw layers become one validated
//! [`ServeSettings`] here, at the edge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::datadir::{CONFIG_FILE, TLS_DIR};
use crate::http::forwarded::TrustedProxies;
use crate::oauth::device_flow::DeviceSettings;
use crate::oauth::Settings;
use crate::web::scopes::{RawDescription, ScopeDescriptions};
use crate::web::PageSettings;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default access token lifetime: 5 minutes.
pub const DEFAULT_ACCESS_TOKEN_TTL: u64 = 300;
/// Default tolerated clock skew: 30 seconds.
pub const DEFAULT_CLOCK_SKEW: u64 = 30;
/// Default largest request body: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default time to send a request's headers: 10 seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: u64 = 10;
/// Default time a connection may sit without traffic: 60 seconds.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 60;
/// Default most connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default automatic signing-key rotation period: 30 days.
pub const DEFAULT_KEY_ROTATION_PERIOD: u64 = 30 * 24 * 3600;
/// Default time a new key is published before it signs: 10 minutes, a validator's JWKS cache.
pub const DEFAULT_KEY_PUBLISH_AHEAD: u64 = 600;
/// Default most nested `act` levels a token exchange may produce (RFC 8693 §4.1): 3.
pub const DEFAULT_MAX_DELEGATION_DEPTH: usize = 3;
/// Default furthest-ahead `exp` of a client assertion: 5 minutes.
pub const DEFAULT_MAX_ASSERTION_LIFETIME: u64 = 300;
/// Default time between recovery attempts while storage fails (also the `Retry-After` of the
/// 503s meanwhile): 2 seconds.
pub const DEFAULT_STORAGE_RETRY_INTERVAL: u64 = 2;
/// Default time between the audit checkpoints the server logs: 1 hour.
pub const DEFAULT_AUDIT_CHECKPOINT_INTERVAL: u64 = 3600;
/// Largest `max_delegation_depth` accepted.
pub const MAX_DELEGATION_DEPTH_LIMIT: usize = 16;

/// One layer of settings, as written in a TOML file. Every field is optional; later layers win.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Issuer identifier (RFC 8414). Set by `init`.
    pub issuer: Option<String>,
    /// Address to listen on. Default `127.0.0.1:8443`.
    pub listen: Option<String>,
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
    /// Reverse proxies whose `X-Forwarded-For` names the client: IP addresses and CIDR blocks.
    /// Default none: the header is ignored and the TCP peer is the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Seconds between attempts to recover failing storage, 1 to 60; also the `Retry-After`
    /// of the 503s that writes get meanwhile. Default 2.
    pub storage_retry_interval: Option<u64>,
    /// Seconds between the signed audit checkpoints the server logs (one at start, then one
    /// per interval), 10 to 86400; 0 = none. Default 3600.
    pub audit_checkpoint_interval: Option<u64>,
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
            // A list is replaced whole, not merged: a higher layer says the complete set.
            trusted_proxies: top.trusted_proxies.or(self.trusted_proxies),
            storage_retry_interval: top.storage_retry_interval.or(self.storage_retry_interval),
            audit_checkpoint_interval: top
                .audit_checkpoint_interval
                .or(self.audit_checkpoint_interval),
            device_scopes: top.device_scopes.or(self.device_scopes),
            attestation: top.attestation.or(self.attestation),
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

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file is not valid TOML for these settings.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// How `serve` listens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Transport {
    /// HTTPS with these PEM files.
    Tls {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Plain HTTP, loopback only.
    InsecureHttp,
}

/// Validated settings for `serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS or plain loopback HTTP.
    pub transport: Transport,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: std::time::Duration,
    /// Time a connection may sit without traffic.
    pub idle_timeout: std::time::Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Automatic signing-key rotation period, seconds; 0 = never.
    pub key_rotation_period: u64,
    /// How long a new key is published before it signs, seconds.
    pub key_publish_ahead: u64,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Time between recovery attempts while storage fails; the 503s' `Retry-After`.
    pub storage_retry_interval: std::time::Duration,
    /// Time between logged audit checkpoints; `None`: none are logged.
    pub audit_checkpoint_interval: Option<std::time::Duration>,
    /// What the protocol logic needs.
    pub oauth: Settings,
    /// The verification page's own settings.
    pub page: PageSettings,
}

impl ServeSettings {
    /// Resolve the layers: the data directory's file under `config_file` under `overrides`
    /// (environment and flags).
    pub fn resolve(
        data_dir: &Path,
        config_file: Option<&Path>,
        overrides: ConfigLayer,
    ) -> Result<Self, ConfigError> {
        let base_path = data_dir.join(CONFIG_FILE);
        if !base_path.exists() {
            return Err(ConfigError::Invalid(format!(
                "{} is not a Hallmark data directory (no {CONFIG_FILE}); run `hallmark-server init` first",
                data_dir.display()
            )));
        }
        let mut layer = ConfigLayer::load(&base_path)?;
        if let Some(path) = config_file {
            layer = layer.under(ConfigLayer::load(path)?);
        }
        let layer = layer.under(overrides);
        Self::from_layer(data_dir, layer)
    }

    fn from_layer(data_dir: &Path, layer: ConfigLayer) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let device_flow = DeviceFlowLayer::of(&layer);
        let issuer = layer
            .issuer
            .ok_or_else(|| invalid("no issuer configured".into()))?;
        let issuer = crate::datadir::validate_issuer(&issuer).map_err(invalid)?;
        let listen_text = layer.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid(format!("listen address {listen_text} is not IP:PORT")))?;
        let transport = if layer.insecure_http.unwrap_or(false) {
            if !listen.ip().is_loopback() {
                return Err(invalid(format!(
                    "--insecure-http is accepted only with a loopback listen address, not {listen}"
                )));
            }
            Transport::InsecureHttp
        } else {
            match (layer.tls_cert, layer.tls_key) {
                (Some(cert), Some(key)) => Transport::Tls { cert, key },
                (None, None) => Transport::Tls {
                    cert: data_dir.join(TLS_DIR).join("server.pem"),
                    key: data_dir.join(TLS_DIR).join("server-key.pem"),
                },
                _ => return Err(invalid("--tls-cert and --tls-key go together".into())),
            }
        };
        let ttl = layer.access_token_ttl.unwrap_or(DEFAULT_ACCESS_TOKEN_TTL);
        if !(1..=86_400).contains(&ttl) {
            return Err(invalid(format!(
                "access token lifetime {ttl} s is outside 1..=86400"
            )));
        }
        let skew = layer.clock_skew.unwrap_or(DEFAULT_CLOCK_SKEW);
        if skew > 300 {
            return Err(invalid(format!("clock skew {skew} s is more than 300")));
        }
        let max_body_bytes = layer.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=1024 * 1024).contains(&max_body_bytes) {
            return Err(invalid(format!(
                "max body {max_body_bytes} bytes is outside 1 KiB..1 MiB"
            )));
        }
        let header_read_timeout = layer
            .header_read_timeout
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
        if !(1..=300).contains(&header_read_timeout) {
            return Err(invalid(format!(
                "header read timeout {header_read_timeout} s is outside 1..=300"
            )));
        }
        let idle_timeout = layer.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        if !(1..=3600).contains(&idle_timeout) {
            return Err(invalid(format!(
                "idle timeout {idle_timeout} s is outside 1..=3600"
            )));
        }
        let max_connections = layer.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid(format!(
                "max connections {max_connections} is outside 1..=1000000"
            )));
        }
        let key_rotation_period = layer
            .key_rotation_period
            .unwrap_or(DEFAULT_KEY_ROTATION_PERIOD);
        let key_publish_ahead = layer.key_publish_ahead.unwrap_or(DEFAULT_KEY_PUBLISH_AHEAD);
        if key_rotation_period != 0 && key_rotation_period <= key_publish_ahead {
            return Err(invalid(format!(
                "key rotation period {key_rotation_period} s must be longer than the publish-ahead time {key_publish_ahead} s"
            )));
        }
        let max_delegation_depth = layer
            .max_delegation_depth
            .unwrap_or(DEFAULT_MAX_DELEGATION_DEPTH);
        if !(1..=MAX_DELEGATION_DEPTH_LIMIT).contains(&max_delegation_depth) {
            return Err(invalid(format!(
                "max delegation depth {max_delegation_depth} is outside 1..={MAX_DELEGATION_DEPTH_LIMIT}"
            )));
        }
        let storage_retry_interval = layer
            .storage_retry_interval
            .unwrap_or(DEFAULT_STORAGE_RETRY_INTERVAL);
        if !(1..=60).contains(&storage_retry_interval) {
            return Err(invalid(format!(
                "storage retry interval {storage_retry_interval} s is outside 1..=60"
            )));
        }
        let audit_checkpoint_interval = layer
            .audit_checkpoint_interval
            .unwrap_or(DEFAULT_AUDIT_CHECKPOINT_INTERVAL);
        if audit_checkpoint_interval != 0 && !(10..=86_400).contains(&audit_checkpoint_interval) {
            return Err(invalid(format!(
                "audit checkpoint interval {audit_checkpoint_interval} s is outside 10..=86400 (0 = off)"
            )));
        }
        let trusted_proxies = TrustedProxies::parse(layer.trusted_proxies.unwrap_or_default())
            .map_err(|e| invalid(format!("trusted_proxies: {e}")))?;
        let scope_descriptions =
            ScopeDescriptions::parse(&layer.scope_descriptions.unwrap_or_default())
                .map_err(|e| invalid(format!("scope_descriptions: {e}")))?;
        let mut oauth = Settings::for_issuer(&issuer);
        if let Some(scopes) = layer.device_scopes {
            oauth.device_scopes = device_scopes(scopes)?;
        }
        if let Some(mode) = &layer.attestation {
            oauth.attestation = mode.parse().map_err(invalid)?;
        }
        if let Some(path) = &layer.ek_roots {
            let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let roots = crate::attest::EkRoots::from_pem(&pem)
                .map_err(|e| invalid(format!("ek_roots {}: {e}", path.display())))?;
            oauth.ek_roots = Some(std::sync::Arc::new(roots));
        }
        oauth.access_token_ttl = ttl;
        oauth.clock_skew = skew;
        oauth.max_delegation_depth = max_delegation_depth;
        let max_assertion_lifetime = layer
            .max_assertion_lifetime
            .unwrap_or(DEFAULT_MAX_ASSERTION_LIFETIME);
        if !(60..=3600).contains(&max_assertion_lifetime) {
            return Err(invalid(format!(
                "max assertion lifetime {max_assertion_lifetime} s is outside 60..=3600"
            )));
        }
        oauth.max_assertion_lifetime = max_assertion_lifetime;
        device_flow.apply(&mut oauth.device)?;
        Ok(ServeSettings {
            data_dir: data_dir.to_owned(),
            listen,
            transport,
            max_body_bytes,
            header_read_timeout: std::time::Duration::from_secs(header_read_timeout),
            idle_timeout: std::time::Duration::from_secs(idle_timeout),
            max_connections,
            key_rotation_period,
            key_publish_ahead,
            trusted_proxies,
            storage_retry_interval: std::time::Duration::from_secs(storage_retry_interval),
            audit_checkpoint_interval: (audit_checkpoint_interval > 0)
                .then(|| std::time::Duration::from_secs(audit_checkpoint_interval)),
            oauth,
            page: PageSettings { scope_descriptions },
        })
    }
}

/// `device_scopes`: well-formed, at least one, and no admin scope — a device's factory secret
/// leaves the server, so anything a device may hold a station can hand to itself.
fn device_scopes(list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    use crate::oauth::registration::ADMIN_SCOPES;
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if list.is_empty() {
        return invalid("device_scopes must name at least one scope".into());
    }
    if let Some(bad) = list
        .iter()
        .find(|s| !crate::oauth::scope::is_scope_token(s))
    {
        return invalid(format!("device_scopes holds a malformed scope {bad:?}"));
    }
    let parsed = crate::oauth::scope::parse(&list.join(" "))
        .map_err(|e| ConfigError::Invalid(format!("device_scopes: {e}")))?;
    if let Some(admin) = parsed.iter().find(|s| ADMIN_SCOPES.contains(&s.as_str())) {
        return invalid(format!(
            "device_scopes must not hold the admin scope {admin}: a station could grant it to itself"
        ));
    }
    Ok(parsed)
}

/// The device-flow keys of a layer, validated onto [`DeviceSettings`].
struct DeviceFlowLayer {
    expires_in: Option<u64>,
    interval: Option<u64>,
    refresh_token_ttl: Option<u64>,
    refresh_token_grace: Option<u64>,
    limits: [Option<u32>; 7],
    lockout_window: Option<u64>,
}

impl DeviceFlowLayer {
    fn of(layer: &ConfigLayer) -> Self {
        DeviceFlowLayer {
            expires_in: layer.device_code_expires_in,
            interval: layer.device_poll_interval,
            refresh_token_ttl: layer.refresh_token_ttl,
            refresh_token_grace: layer.refresh_token_grace,
            limits: [
                layer.code_failures_per_session,
                layer.code_failures_per_account,
                layer.code_failures_per_source,
                layer.code_slowdown_per_source,
                layer.code_failures_global,
                layer.sign_in_failures_per_session,
                layer.sign_in_failures_per_source,
            ],
            lockout_window: layer.lockout_window,
        }
    }

    fn apply(self, d: &mut DeviceSettings) -> Result<(), ConfigError> {
        let in_range = |name: &str,
                        value: Option<u64>,
                        range: std::ops::RangeInclusive<u64>,
                        slot: &mut u64| {
            if let Some(v) = value {
                if !range.contains(&v) {
                    return Err(ConfigError::Invalid(format!(
                        "{name} {v} is outside {}..={}",
                        range.start(),
                        range.end()
                    )));
                }
                *slot = v;
            }
            Ok(())
        };
        in_range(
            "device_code_expires_in",
            self.expires_in,
            60..=3600,
            &mut d.expires_in,
        )?;
        in_range(
            "device_poll_interval",
            self.interval,
            1..=60,
            &mut d.interval,
        )?;
        in_range(
            "refresh_token_ttl",
            self.refresh_token_ttl,
            60..=31_536_000,
            &mut d.refresh_token_ttl,
        )?;
        in_range(
            "refresh_token_grace",
            self.refresh_token_grace,
            0..=300,
            &mut d.refresh_token_grace,
        )?;
        in_range(
            "lockout_window",
            self.lockout_window,
            1..=86_400,
            &mut d.lockout_window,
        )?;
        let slots = [
            (
                "code_failures_per_session",
                &mut d.code_failures_per_session,
            ),
            (
                "code_failures_per_account",
                &mut d.code_failures_per_account,
            ),
            ("code_failures_per_source", &mut d.code_failures_per_source),
            ("code_slowdown_per_source", &mut d.code_slowdown_per_source),
            ("code_failures_global", &mut d.code_failures_global),
            (
                "sign_in_failures_per_session",
                &mut d.sign_in_failures_per_session,
            ),
            (
                "sign_in_failures_per_source",
                &mut d.sign_in_failures_per_source,
            ),
        ];
        for ((name, slot), value) in slots.into_iter().zip(self.limits) {
            match value {
                Some(0) => return Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
                Some(v) => *slot = v,
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(toml: &str) -> ConfigLayer {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn later_layers_win() {
        let l = layer("issuer = \"https://a.example\"\nclock_skew = 10")
            .under(layer("clock_skew = 20"));
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert_eq!(s.oauth.clock_skew, 20);
        assert_eq!(s.oauth.token_endpoint, "https://a.example/oauth2/token");
        assert!(matches!(s.transport, Transport::Tls { .. }));
    }

    #[test]
    fn max_delegation_depth_has_a_default_and_layers() {
        let base = layer("issuer = \"https://a.example\"");
        let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
        assert_eq!(s.oauth.max_delegation_depth, DEFAULT_MAX_DELEGATION_DEPTH);
        let l = base
            .under(layer("max_delegation_depth = 2"))
            .under(layer("max_delegation_depth = 5"));
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert_eq!(s.oauth.max_delegation_depth, 5);
    }

    #[test]
    fn insecure_http_only_on_loopback() {
        let ok = layer(
            "issuer = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:1\"\ninsecure_http = true",
        );
        assert!(ServeSettings::from_layer(Path::new("/d"), ok).is_ok());
        let bad =
            layer("issuer = \"https://a.example\"\nlisten = \"0.0.0.0:1\"\ninsecure_http = true");
        assert!(ServeSettings::from_layer(Path::new("/d"), bad).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<ConfigLayer>("issuer = \"x\"\nsurprise = 1").is_err());
        for bad in [
            "clock_skew = 301",
            "access_token_ttl = 0",
            "max_body_bytes = 10",
            "listen = \"nowhere\"",
            "tls_cert = \"/c\"",
            "max_delegation_depth = 0",
            "max_delegation_depth = 17",
            "max_assertion_lifetime = 59",
            "header_read_timeout = 0",
            "idle_timeout = 3601",
            "max_connections = 0",
            "max_assertion_lifetime = 3601",
        ] {
            let l = layer(&format!("issuer = \"https://a.example\"\n{bad}"));
            assert!(
                ServeSettings::from_layer(Path::new("/d"), l).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn trusted_proxies_default_to_none_and_layers_replace_the_list() {
        let base = layer("issuer = \"https://a.example\"");
        let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
        assert!(s.trusted_proxies.is_empty());
        let l = base
            .clone()
            .under(layer("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]"));
        let s = ServeSettings::from_layer(Path::new("/d"), l.clone()).unwrap();
        assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(s.trusted_proxies.contains("::1".parse().unwrap()));
        assert!(!s.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
        // A higher layer replaces the list; it does not add to it.
        let l = l.under(layer("trusted_proxies = [\"192.0.2.1\"]"));
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert!(s.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
        assert!(!s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        // A layer that does not mention it keeps the lower one's.
        let l = base
            .under(layer("trusted_proxies = [\"10.0.0.0/8\"]"))
            .under(layer("clock_skew = 5"));
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn device_scopes_default_layer_and_never_hold_an_admin_scope() {
        let base = layer("issuer = \"https://a.example\"");
        let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
        assert_eq!(s.oauth.device_scopes, vec!["device".to_owned()]);
        let l = base
            .clone()
            .under(layer("device_scopes = [\"device\", \"telemetry:write\"]"));
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert_eq!(s.oauth.device_scopes, vec!["device", "telemetry:write"]);
        for admin in crate::oauth::registration::ADMIN_SCOPES {
            let l = base
                .clone()
                .under(layer(&format!("device_scopes = [\"device\", \"{admin}\"]")));
            let e = ServeSettings::from_layer(Path::new("/d"), l).unwrap_err();
            assert!(e.to_string().contains(admin), "{e}");
        }
        for bad in ["[]", "[\"a b\"]", "[\"\"]"] {
            let l = base.clone().under(layer(&format!("device_scopes = {bad}")));
            assert!(
                ServeSettings::from_layer(Path::new("/d"), l).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn scope_descriptions_merge_per_scope_and_are_checked() {
        let base = layer(
            "issuer = \"https://a.example\"\n[scope_descriptions]\n\"a:read\" = \"Read a\"\n\"b\" = { en = \"B\", de = \"B auf Deutsch\" }",
        );
        let top = layer("[scope_descriptions]\n\"a:read\" = \"Read all of a\"\n\"c\" = \"C\"");
        let s = ServeSettings::from_layer(Path::new("/d"), base.under(top)).unwrap();
        let d = &s.page.scope_descriptions;
        use crate::web::i18n::Lang;
        assert_eq!(d.describe("a:read", Lang::En), Some("Read all of a"));
        assert_eq!(d.describe("b", Lang::De), Some("B auf Deutsch"));
        assert_eq!(d.describe("c", Lang::De), Some("C"));
        assert_eq!(d.len(), 3);
        let bad =
            layer("issuer = \"https://a.example\"\n[scope_descriptions]\n\"a\" = { fr = \"x\" }");
        let e = ServeSettings::from_layer(Path::new("/d"), bad).unwrap_err();
        assert!(e.to_string().starts_with("scope_descriptions: a:"), "{e}");
        assert!(toml::from_str::<ConfigLayer>("scope_descriptions = 3").is_err());
    }

    #[test]
    fn a_bad_trusted_proxy_is_named() {
        for (bad, named) in [
            ("[\"10.0.0.0/8\", \"proxy.example\"]", "proxy.example"),
            ("[\"10.0.0.0/40\"]", "10.0.0.0/40"),
            ("[\"0.0.0.0/0\"]", "0.0.0.0/0"),
        ] {
            let l = layer(&format!(
                "issuer = \"https://a.example\"\ntrusted_proxies = {bad}"
            ));
            let e = ServeSettings::from_layer(Path::new("/d"), l).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(named) && !msg.contains('\n'), "{msg}");
        }
        assert!(toml::from_str::<ConfigLayer>("trusted_proxies = \"10.0.0.0/8\"").is_err());
    }

    #[test]
    fn device_flow_settings_have_defaults_and_ranges() {
        let s = ServeSettings::from_layer(Path::new("/d"), layer("issuer = \"https://a.example\""))
            .unwrap();
        assert_eq!(
            (s.oauth.device.expires_in, s.oauth.device.interval),
            (600, 5)
        );
        assert_eq!(s.oauth.device.verification_uri, "https://a.example/device");
        let l = layer("issuer = \"https://a.example\"\ndevice_poll_interval = 1\ncode_failures_per_session = 2");
        let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
        assert_eq!(
            (
                s.oauth.device.interval,
                s.oauth.device.code_failures_per_session
            ),
            (1, 2)
        );
        for bad in [
            "device_poll_interval = 0",
            "device_code_expires_in = 5",
            "code_failures_per_source = 0",
            "code_failures_per_account = 0",
            "code_failures_global = 0",
            "lockout_window = 0",
        ] {
            let l = layer(&format!("issuer = \"https://a.example\"\n{bad}"));
            assert!(
                ServeSettings::from_layer(Path::new("/d"), l).is_err(),
                "{bad}"
            );
        }
    }
}
