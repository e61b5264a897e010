//! Configuration of `serve`: defaults → the data directory's `hallmark.toml` → `--config FILE` →
//! `HALLMARK_*` environment → flags (clap merges the last two). Raw layers become one validated
//! [`ServeSettings`] here, at the edge.

mod layer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::datadir::{CONFIG_FILE, TLS_DIR};
use crate::http::forwarded::TrustedProxies;
use crate::oauth::device_flow::DeviceSettings;
use crate::oauth::Settings;
use crate::web::scopes::ScopeDescriptions;
use crate::web::PageSettings;

pub use self::layer::ConfigLayer;

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
/// How often a running server reloads its key ring (keys rotated by another replica or
/// offline). With a shared database a new key must be published for at least two such periods
/// before it signs, so that every replica can verify what any replica signs.
pub const KEY_CHECK_INTERVAL_SECS: u64 = 10;
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
    /// The PostgreSQL database, if the server uses one instead of the embedded store.
    pub database: Option<crate::backend::Database>,
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
    /// Audit export (and retention behind it); `None`: no export.
    pub audit_export: Option<crate::export::ExportSettings>,
    /// `audit_retention` as configured, even without an export (then only warned about).
    pub audit_retention: Option<std::time::Duration>,
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
        let (audit_export, audit_retention) = audit_export(&layer)?;
        let issuer = layer
            .issuer
            .ok_or_else(|| invalid("no issuer configured".into()))?;
        let issuer = crate::datadir::validate_issuer(&issuer).map_err(invalid)?;
        let database = match layer.database_url.filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => Some(crate::backend::Database {
                url: crate::store::DatabaseUrl::parse(&url).map_err(|e| invalid(e.to_string()))?,
                ca: layer.database_ca,
            }),
        };
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
        if database.is_some() && key_publish_ahead < 2 * KEY_CHECK_INTERVAL_SECS {
            return Err(invalid(format!(
                "with a database, the publish-ahead time {key_publish_ahead} s must be at least {} s, so that every replica loads a new key before any signs with it",
                2 * KEY_CHECK_INTERVAL_SECS
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
        let proof_max_age = layer
            .dpop_proof_max_age
            .unwrap_or(crate::oauth::dpop::DEFAULT_PROOF_MAX_AGE);
        if !(10..=300).contains(&proof_max_age) {
            return Err(invalid(format!(
                "DPoP proof max age {proof_max_age} s is outside 10..=300"
            )));
        }
        oauth.dpop = crate::oauth::dpop::DpopSettings {
            require_nonce: layer.dpop_nonce.unwrap_or(false),
            proof_max_age,
        };
        device_flow.apply(&mut oauth.device)?;
        Ok(ServeSettings {
            data_dir: data_dir.to_owned(),
            database,
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
            audit_export,
            audit_retention,
            oauth,
            page: PageSettings { scope_descriptions },
        })
    }
}

/// A duration in the config file: a number of seconds, or text (`600`, `90s`, `15m`, `12h`,
/// `30d`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    /// Seconds.
    Seconds(u64),
    /// A number of seconds, optionally with a unit: `s`, `m`, `h`, `d`.
    Text(String),
}

impl DurationText {
    /// The duration, or why the text is not one.
    pub fn duration(&self) -> Result<std::time::Duration, String> {
        let secs = match self {
            DurationText::Seconds(n) => *n,
            DurationText::Text(text) => {
                let t = text.trim();
                let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
                    Some((i, _)) => t.split_at(i),
                    None => (t, ""),
                };
                let n: u64 = digits.parse().map_err(|_| {
                    format!("{text:?} is not a duration (e.g. 600, 90s, 15m, 12h, 30d)")
                })?;
                let scale = match unit {
                    "" | "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    _ => {
                        return Err(format!(
                            "{text:?} is not a duration (e.g. 600, 90s, 15m, 12h, 30d)"
                        ))
                    }
                };
                n.checked_mul(scale)
                    .ok_or_else(|| format!("{text:?} is too long a duration"))?
            }
        };
        Ok(std::time::Duration::from_secs(secs))
    }
}

/// `audit_export_dir` and the settings that go with it, and `audit_retention`.
#[allow(clippy::type_complexity)]
fn audit_export(
    layer: &ConfigLayer,
) -> Result<
    (
        Option<crate::export::ExportSettings>,
        Option<std::time::Duration>,
    ),
    ConfigError,
> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let retention = layer
        .audit_retention
        .as_ref()
        .map(|d| {
            d.duration()
                .map_err(|e| invalid(format!("audit_retention: {e}")))
        })
        .transpose()?;
    if retention.is_some_and(|r| r.is_zero()) {
        return Err(invalid("audit_retention must be at least 1 s".into()));
    }
    let max_bytes = layer
        .audit_export_max_bytes
        .unwrap_or(crate::export::DEFAULT_MAX_BYTES);
    if max_bytes < 1024 {
        return Err(invalid(format!(
            "audit_export_max_bytes {max_bytes} is below 1024"
        )));
    }
    let max_age = match &layer.audit_export_max_age {
        None => crate::export::DEFAULT_MAX_AGE,
        Some(d) => d
            .duration()
            .map_err(|e| invalid(format!("audit_export_max_age: {e}")))?,
    };
    if max_age.is_zero() {
        return Err(invalid("audit_export_max_age must be at least 1 s".into()));
    }
    let export = layer
        .audit_export_dir
        .as_ref()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|dir| crate::export::ExportSettings {
            dir: dir.clone(),
            max_bytes,
            max_age,
            retention,
        });
    Ok((export, retention))
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
mod tests;
