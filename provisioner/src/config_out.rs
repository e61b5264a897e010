//! Writing a device's agent config on the factory line: `ca.pem` and the config file side by
//! side, each written atomically (temporary file, fsync, rename, fsync of the directory), then
//! read back with the agent's own loader and compared with what was meant.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use hallmark_agent::config::{AgentConfig, ConfigError, Flow, Handles, RekeyInterval};

use crate::report::ConfigAction;

/// Name of the pinned CA file written beside the config.
pub const CA_FILE: &str = "ca.pem";

/// The config the provisioner writes for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Issuer URL.
    pub issuer: String,
    /// The device's client_id.
    pub client_id: String,
    /// TCTI of its TPM.
    pub tcti: String,
    /// Its serial.
    pub serial: String,
    /// Registered DPoP-bound: the agent must send proofs (`dpop = true`).
    pub dpop: bool,
}

impl DeviceConfig {
    /// The agent config as stored: `ca.pem` and `state/` relative to the config file.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            issuer: self.issuer.clone(),
            ca_cert: PathBuf::from(CA_FILE),
            client_id: self.client_id.clone(),
            tcti: self.tcti.clone(),
            scopes: Vec::new(),
            flow: Flow::default(),
            state_dir: PathBuf::from("state"),
            socket: None,
            socket_allowed_uids: Vec::new(),
            handles: Handles::default(),
            serial: Some(self.serial.clone()),
            rekey_interval_days: RekeyInterval::NEVER,
            dpop: self.dpop,
        }
    }
}

/// Why a config could not be written or did not read back right.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigOutError {
    /// Writing a file failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The agent's loader refused what was written.
    #[error("the written config does not load")]
    ReadBack {
        /// The loader's error.
        source: ConfigError,
    },
    /// What was read back differs from what was meant.
    #[error("the config read back from {} differs from what was written ({field})", path.display())]
    Mismatch {
        /// The config file.
        path: PathBuf,
        /// The first field that differs.
        field: &'static str,
    },
}

/// Writes the config (and CA) for `device` to `path` unless an equivalent one is already there;
/// then checks it by loading it as the agent will.
///
/// "Equivalent" means it loads and names the same issuer, client_id, TPM, serial and CA; other
/// fields (flow, scopes, socket) are local choices and are kept. With `force`, it is written
/// regardless (a freshly provisioned device gets exactly the provisioner's config).
pub fn ensure(
    path: &Path,
    device: &DeviceConfig,
    ca_pem: &[u8],
    force: bool,
) -> Result<ConfigAction, ConfigOutError> {
    let existed = path.exists();
    if !force && existed && verify(path, device, ca_pem).is_ok() {
        return Ok(ConfigAction::Unchanged);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write_fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigOutError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_fail(dir))?;
    let ca_path = dir.join(CA_FILE);
    write_atomically(&ca_path, ca_pem).map_err(write_fail(&ca_path))?;
    write_atomically(path, device.agent_config().to_toml().as_bytes()).map_err(write_fail(path))?;
    verify(path, device, ca_pem)?;
    Ok(if existed {
        ConfigAction::Rewritten
    } else {
        ConfigAction::Written
    })
}

/// Loads `path` with the agent's loader and checks the fields the provisioner owns.
pub fn verify(path: &Path, device: &DeviceConfig, ca_pem: &[u8]) -> Result<(), ConfigOutError> {
    let loaded = AgentConfig::load(path).map_err(|source| ConfigOutError::ReadBack { source })?;
    let mismatch = |field| ConfigOutError::Mismatch {
        path: path.to_path_buf(),
        field,
    };
    if loaded.issuer != device.issuer {
        return Err(mismatch("issuer"));
    }
    if loaded.client_id != device.client_id {
        return Err(mismatch("client_id"));
    }
    if loaded.tcti != device.tcti {
        return Err(mismatch("tcti"));
    }
    if loaded.serial.as_deref() != Some(device.serial.as_str()) {
        return Err(mismatch("serial"));
    }
    if fs::read(&loaded.ca_cert).ok().as_deref() != Some(ca_pem) {
        return Err(mismatch("ca_cert"));
    }
    // A DPoP-bound device's agent without proofs would get no token; otherwise `dpop` is a
    // local choice and kept.
    if device.dpop && !loaded.dpop {
        return Err(mismatch("dpop"));
    }
    Ok(())
}

/// Temporary file in the same directory, fsync, rename over `path`, fsync the directory: a
/// crash leaves either the old file or the new one, never a torn one.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceConfig {
        DeviceConfig {
            issuer: "https://localhost:8443".into(),
            client_id: "abc".into(),
            tcti: "swtpm:host=127.0.0.1,port=2321".into(),
            serial: "HM-1".into(),
            dpop: false,
        }
    }

    #[test]
    fn writes_then_leaves_an_equivalent_config_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev/agent.toml");
        let d = device();
        assert_eq!(
            ensure(&path, &d, b"CA", false).unwrap(),
            ConfigAction::Written
        );
        assert_eq!(fs::read(dir.path().join("dev/ca.pem")).unwrap(), b"CA");
        // A local choice (the flow) survives a rerun.
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("client_credentials", "device_code");
        fs::write(&path, text).unwrap();
        assert_eq!(
            ensure(&path, &d, b"CA", false).unwrap(),
            ConfigAction::Unchanged
        );
        assert!(fs::read_to_string(&path).unwrap().contains("device_code"));
        // Another CA or client_id is replaced.
        assert_eq!(
            ensure(&path, &d, b"CA2", false).unwrap(),
            ConfigAction::Rewritten
        );
        let other = DeviceConfig {
            client_id: "def".into(),
            ..d
        };
        assert_eq!(
            ensure(&path, &other, b"CA2", false).unwrap(),
            ConfigAction::Rewritten
        );
        assert_eq!(AgentConfig::load(&path).unwrap().client_id, "def");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("dev"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn verify_names_the_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        ensure(&path, &device(), b"CA", false).unwrap();
        let other = DeviceConfig {
            tcti: "swtpm:host=127.0.0.1,port=1".into(),
            ..device()
        };
        let err = verify(&path, &other, b"CA").unwrap_err().to_string();
        assert!(err.contains("tcti"), "{err}");
    }

    #[test]
    fn a_dpop_bound_device_gets_dpop_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        // Written without DPoP first (a station run without --dpop)…
        ensure(&path, &device(), b"CA", false).unwrap();
        assert!(!AgentConfig::load(&path).unwrap().dpop);
        // …a --dpop run must turn it on: the server refuses that device bearer tokens.
        let bound = DeviceConfig {
            dpop: true,
            ..device()
        };
        let err = verify(&path, &bound, b"CA").unwrap_err().to_string();
        assert!(err.contains("dpop"), "{err}");
        assert_eq!(
            ensure(&path, &bound, b"CA", false).unwrap(),
            ConfigAction::Rewritten
        );
        assert!(AgentConfig::load(&path).unwrap().dpop);
        // A local `dpop = true` survives a run without --dpop.
        assert_eq!(
            ensure(&path, &device(), b"CA", false).unwrap(),
            ConfigAction::Unchanged
        );
        assert!(AgentConfig::load(&path).unwrap().dpop);
    }
}
