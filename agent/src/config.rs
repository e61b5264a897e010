//! The agent's configuration file (TOML, default `/etc/hallmark/agent.toml`). The provisioner
//! writes it on the factory line with this same type; the agent reads it at every start.
//!
//! Relative paths (`ca_cert`, `state_dir`, `socket`) are resolved against the directory of the
//! config file, so a provisioned device directory can be moved as a whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hallmark/agent.toml";

/// How the agent gets its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Flow {
    /// RFC 6749 §4.4 with `private_key_jwt` (RFC 7523) assertions signed by the TPM. Default.
    #[default]
    ClientCredentials,
    /// RFC 8628: a person approves the device in a browser; refresh tokens kept sealed.
    DeviceCode,
}

/// TPM persistent handles the provisioner used; the agent refuses to start if they differ from
/// the ones it was built with, rather than touching objects it does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handles {
    /// Storage root key.
    pub srk: u32,
    /// Sealed factory secret.
    pub factory_secret: u32,
    /// Device key slot A.
    pub key_a: u32,
    /// Device key slot B.
    pub key_b: u32,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            srk: 0x8100_0001,
            factory_secret: 0x8100_0010,
            key_a: 0x8100_0011,
            key_b: 0x8100_0012,
        }
    }
}

/// The agent's configuration as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Issuer URL of the authorization server; endpoints come from its RFC 8414 metadata at
    /// `{issuer}/.well-known/oauth-authorization-server`.
    pub issuer: String,
    /// PEM file of the CA that signed the server's certificate; the only CA the agent trusts.
    pub ca_cert: PathBuf,
    /// The device's client_id.
    pub client_id: String,
    /// TCTI of the TPM: `device:/dev/tpmrm0` on hardware, `swtpm:path=…` in simulation.
    pub tcti: String,
    /// Scopes to request; empty means the client's registered default.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which grant gets tokens. Default `client_credentials`.
    #[serde(default)]
    pub flow: Flow,
    /// Directory for the agent's state (rotation state, sealed refresh token). Default `state`
    /// beside the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Unix socket on which `run` serves tokens. Default `agent.sock` in `state_dir`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Uids, besides the agent's own and root, that may ask the socket for a token (checked
    /// with `SO_PEERCRED`; the socket is then mode 0666 and this list is the gate). Default
    /// empty: the agent's uid and root only, mode 0600. A socket inside `state_dir` (mode
    /// 0700) cannot be reached by other uids, so naming any requires `socket` elsewhere. Left
    /// out of the file when empty, so configs read by agents older than the field still load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_allowed_uids: Vec<u32>,
    /// TPM handles the provisioner used.
    #[serde(default)]
    pub handles: Handles,
    /// The device's serial, for status output (optional).
    #[serde(default)]
    pub serial: Option<String>,
    /// Replace the device key with a new one (`rekey`) from `run` once it is this many days
    /// old, plus up to 10% so a fleet provisioned together spreads out. Default 0: never (an
    /// operator or the device's software runs `rekey`). At most [`RekeyInterval::MAX_DAYS`].
    /// Left out of the file when 0, so configs read by agents older than the field still load.
    #[serde(default, skip_serializing_if = "RekeyInterval::is_never")]
    pub rekey_interval_days: RekeyInterval,
    /// Sender-constrained tokens (RFC 9449 DPoP): every token request carries a proof signed
    /// by the device key in the TPM, and the socket signs proofs for the device's software.
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop: bool,
}

/// How often `run` replaces the device key: whole days, 0 for never. Checked when the config
/// is read, so a value that exists is a usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct RekeyInterval(u32);

impl RekeyInterval {
    /// No scheduled rekey (the default).
    pub const NEVER: RekeyInterval = RekeyInterval(0);
    /// The longest interval accepted: ten years. Anything longer is a typo (hours? seconds?),
    /// not a policy, and would silently mean never.
    pub const MAX_DAYS: u32 = 3650;

    /// An interval of `days` (0: never).
    pub fn days(days: u32) -> Result<RekeyInterval, ConfigError> {
        if days > Self::MAX_DAYS {
            return Err(ConfigError::RekeyInterval { days });
        }
        Ok(RekeyInterval(days))
    }

    /// The interval, or `None` for never.
    pub fn duration(self) -> Option<Duration> {
        (self.0 > 0).then(|| Duration::from_secs(u64::from(self.0) * 86_400))
    }

    /// Whether no rekey is scheduled.
    pub fn is_never(&self) -> bool {
        self.0 == 0
    }
}

impl TryFrom<u32> for RekeyInterval {
    type Error = ConfigError;

    fn try_from(days: u32) -> Result<Self, Self::Error> {
        RekeyInterval::days(days)
    }
}

impl From<RekeyInterval> for u32 {
    fn from(interval: RekeyInterval) -> u32 {
        interval.0
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

/// Why a config file cannot be used. One line each, for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid agent config.
    #[error("agent config {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `rekey_interval_days` is beyond [`RekeyInterval::MAX_DAYS`].
    #[error(
        "rekey_interval_days = {days} is more than {max} (ten years); use 0 for never",
        max = RekeyInterval::MAX_DAYS
    )]
    RekeyInterval {
        /// The value given.
        days: u32,
    },
}

impl AgentConfig {
    /// Read and check a config file; relative paths are made absolute against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let mut config: AgentConfig =
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        config.validate().map_err(invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.ca_cert = base.join(&config.ca_cert);
        config.state_dir = base.join(&config.state_dir);
        config.socket = Some(match config.socket.take() {
            Some(s) => base.join(s),
            None => config.state_dir.join("agent.sock"),
        });
        config.check_socket_reach().map_err(invalid)?;
        Ok(config)
    }

    /// The TOML text of this config, as the provisioner writes it.
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, list or table: serialisation cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The socket path (after [`AgentConfig::load`], always set).
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("agent.sock"))
    }

    /// Other uids allowed on a socket they cannot reach would fail on the device with a bare
    /// "permission denied"; say so at start instead.
    fn check_socket_reach(&self) -> Result<(), String> {
        let own = rustix::process::geteuid().as_raw();
        let others = self
            .socket_allowed_uids
            .iter()
            .any(|&uid| uid != 0 && uid != own);
        let socket = self.socket_path();
        if others && socket.starts_with(&self.state_dir) {
            return Err(format!(
                "socket_allowed_uids names other users, but the socket {} is inside state_dir \
                 (mode 0700), where they cannot reach it: set socket to a path in a directory \
                 they can enter, e.g. /run/hallmark-agent/agent.sock",
                socket.display()
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        check_issuer(&self.issuer)?;
        if self.client_id.is_empty() {
            return Err("client_id is empty".into());
        }
        if self.tcti.is_empty() {
            return Err("tcti is empty".into());
        }
        if self.handles != Handles::default() {
            return Err(format!(
                "TPM handles {:?} differ from the ones this agent uses ({:?})",
                self.handles,
                Handles::default()
            ));
        }
        Ok(())
    }
}

/// The issuer must be https, or plain http on a loopback host — the host parsed as a URL
/// host, as the server checks it, so `http://localhost.attacker.example` or
/// `http://localhost@attacker.example` are not loopback.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let bad = || format!("issuer {issuer} must be an https URL (http only on a loopback host)");
    let uri = ureq::http::Uri::try_from(issuer).map_err(|_| bad())?;
    let host = uri.host().ok_or_else(bad)?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            issuer: "https://localhost:8443".into(),
            ca_cert: "ca.pem".into(),
            client_id: "abc".into(),
            tcti: "swtpm:path=/tmp/x/sock".into(),
            scopes: vec!["device".into()],
            flow: Flow::ClientCredentials,
            state_dir: "state".into(),
            socket: None,
            socket_allowed_uids: Vec::new(),
            handles: Handles::default(),
            serial: Some("HM-1".into()),
            rekey_interval_days: RekeyInterval::NEVER,
            dpop: false,
        }
    }

    #[test]
    fn round_trips_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, sample().to_toml()).unwrap();
        let loaded = AgentConfig::load(&path).unwrap();
        assert_eq!(loaded.ca_cert, dir.path().join("ca.pem"));
        assert_eq!(
            loaded.socket_path(),
            dir.path().join("state").join("agent.sock")
        );
        assert_eq!(loaded.client_id, "abc");
    }

    #[test]
    fn plain_http_only_for_a_host_that_is_loopback() {
        for good in [
            "https://hallmark.example",
            "http://localhost:8443",
            "http://127.0.0.1:1",
            "http://127.8.0.1",
            "http://[::1]:8443",
            "HTTP://LOCALHOST",
        ] {
            assert_eq!(check_issuer(good), Ok(()), "{good}");
        }
        for bad in [
            "http://localhost.attacker.invalid",
            "http://127.0.0.1.attacker.invalid",
            "http://localhost@attacker.invalid",
            "http://evil.example",
            "http://[::2]",
            "ftp://localhost",
            "localhost:8443",
            "",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        for bad in [
            format!("{}\nsurprise = 1\n", sample().to_toml()),
            sample()
                .to_toml()
                .replace("https://localhost:8443", "http://evil.example"),
            sample()
                .to_toml()
                .replace("client_id = \"abc\"", "client_id = \"\""),
            "not toml at all [".to_string(),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(AgentConfig::load(&dir.path().join("missing.toml")).is_err());
    }

    #[test]
    fn rekey_interval_is_optional_and_never_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        // A config written before the field existed: it loads, and nothing is scheduled.
        let old = sample().to_toml();
        assert!(!old.contains("rekey_interval_days"), "{old}");
        std::fs::write(&path, &old).unwrap();
        let loaded = AgentConfig::load(&path).unwrap();
        assert_eq!(loaded.rekey_interval_days, RekeyInterval::NEVER);
        assert_eq!(loaded.rekey_interval_days.duration(), None);
        // 0 says the same explicitly.
        std::fs::write(&path, format!("rekey_interval_days = 0\n{old}")).unwrap();
        assert_eq!(
            AgentConfig::load(&path)
                .unwrap()
                .rekey_interval_days
                .duration(),
            None
        );
        for (days, secs) in [(1, 86_400), (90, 90 * 86_400), (3650, 3650 * 86_400)] {
            std::fs::write(&path, format!("rekey_interval_days = {days}\n{old}")).unwrap();
            let loaded = AgentConfig::load(&path).unwrap();
            assert_eq!(
                loaded.rekey_interval_days.duration(),
                Some(Duration::from_secs(secs))
            );
            // And it round-trips through the provisioner's writer.
            std::fs::write(&path, loaded.to_toml()).unwrap();
            assert_eq!(
                AgentConfig::load(&path).unwrap().rekey_interval_days,
                RekeyInterval::days(days).unwrap()
            );
        }
    }

    #[test]
    fn socket_allowed_uids_are_optional_and_need_a_reachable_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let old = sample().to_toml();
        assert!(!old.contains("socket_allowed_uids"), "{old}");
        std::fs::write(&path, &old).unwrap();
        assert!(AgentConfig::load(&path)
            .unwrap()
            .socket_allowed_uids
            .is_empty());
        // Other users cannot enter the 0700 state directory, so a socket there is refused…
        std::fs::write(&path, format!("socket_allowed_uids = [4242]\n{old}")).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("/run/hallmark-agent/agent.sock"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // …unless only root is named, who can enter anything.
        std::fs::write(&path, format!("socket_allowed_uids = [0]\n{old}")).unwrap();
        assert!(AgentConfig::load(&path).is_ok());
        // Elsewhere it loads, and round-trips through the provisioner's writer.
        let mut config = sample();
        config.socket = Some("/run/hallmark-agent/agent.sock".into());
        config.socket_allowed_uids = vec![4242, 4243];
        std::fs::write(&path, config.to_toml()).unwrap();
        let loaded = AgentConfig::load(&path).unwrap();
        assert_eq!(loaded.socket_allowed_uids, vec![4242, 4243]);
        assert_eq!(
            loaded.socket_path(),
            PathBuf::from("/run/hallmark-agent/agent.sock")
        );
        for bad in ["-1", "\"www-data\"", "[\"1000\"]", "1000"] {
            std::fs::write(&path, format!("socket_allowed_uids = {bad}\n{old}")).unwrap();
            assert!(AgentConfig::load(&path).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_rekey_intervals_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let old = sample().to_toml();
        for (bad, says) in [
            ("3651", "rekey_interval_days = 3651 is more than 3650"),
            ("4294967295", "more than 3650"),
            ("-1", "u32"),
            ("1.5", "u32"),
            ("\"30d\"", "u32"),
        ] {
            std::fs::write(&path, format!("rekey_interval_days = {bad}\n{old}")).unwrap();
            let err = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(RekeyInterval::days(3651).is_err());
    }
}
