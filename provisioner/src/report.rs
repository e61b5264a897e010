//! What provisioning did to one device, as one JSON line of the report (never a secret), and
//! the append-only report file those lines go to.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How provisioning one device ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Outcome {
    /// Registered, secret sealed, config written and checked.
    Provisioned,
    /// The server knows this serial with this EK and the TPM holds its credential (the factory
    /// secret, or the device key after first boot): left alone.
    AlreadyProvisioned,
    /// Already provisioned, but registered before attestation without its EK public key: the
    /// station supplied it, so the server can now attest the device's keys.
    Reattested,
    /// The device's earlier registration had lost its secret (a kill or a lost answer between
    /// registering and sealing); the station withdrew it (its own, within the server's window)
    /// or deleted it (`--reset-lost`) and provisioned the device afresh.
    Reprovisioned,
    /// The serial is registered with a different EK: another TPM owns this identity. Refused.
    Conflict,
    /// The server knows this serial with this EK but the TPM holds no credential: the secret
    /// was lost between registration and sealing, and the station may not withdraw the
    /// registration itself (another station's, or older than the server's window). An operator
    /// must delete the registration.
    NeedsReset,
    /// The TPM already holds a Hallmark credential the server does not know under this serial.
    TpmOccupied,
    /// Anything else went wrong (TPM unreachable, server unreachable, I/O…).
    Failed,
}

impl Outcome {
    /// Whether the device is now provisioned as the manifest says.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Provisioned
                | Outcome::AlreadyProvisioned
                | Outcome::Reattested
                | Outcome::Reprovisioned
        )
    }

    /// The outcome's name as it appears in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Provisioned => "provisioned",
            Outcome::AlreadyProvisioned => "already-provisioned",
            Outcome::Reattested => "reattested",
            Outcome::Reprovisioned => "reprovisioned",
            Outcome::Conflict => "conflict",
            Outcome::NeedsReset => "needs-reset",
            Outcome::TpmOccupied => "tpm-occupied",
            Outcome::Failed => "failed",
        }
    }
}

/// What happened to the device's agent config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ConfigAction {
    /// Written for the first time.
    Written,
    /// It was missing or named another server, client, TPM or CA: replaced.
    Rewritten,
    /// Already right: left alone.
    Unchanged,
}

/// One device's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    /// The device's serial.
    pub serial: String,
    /// Its client_id on the server, once known.
    pub client_id: Option<String>,
    /// Hex SHA-256 of its EK's SubjectPublicKeyInfo, once read.
    pub ek_fingerprint: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// What happened to its agent config, if it was touched or checked.
    pub config: Option<ConfigAction>,
    /// Where its agent config is.
    pub config_out: PathBuf,
    /// Wall time spent on it.
    pub duration_ms: u64,
    /// One line saying what went wrong or what an operator must do.
    pub error: Option<String>,
    /// When it finished, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

impl DeviceReport {
    /// The report as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Strings, numbers and options only: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The JSON-lines report: opened for appending (a rerun adds to the record of earlier runs,
/// it never erases it), each line written and synced to disk before the next device counts as
/// done, so a crash loses at most the line being written.
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    file: File,
}

/// The report file cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the report {}", path.display())]
pub struct ReportError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

impl ReportFile {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<Self, ReportError> {
        let fail = |source| ReportError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one device's line and syncs it.
    pub fn append(&mut self, report: &DeviceReport) -> Result<(), ReportError> {
        let mut line = report.to_json_line();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| ReportError {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_match_serde() {
        for o in [
            Outcome::Provisioned,
            Outcome::AlreadyProvisioned,
            Outcome::Reprovisioned,
            Outcome::Conflict,
            Outcome::NeedsReset,
            Outcome::TpmOccupied,
            Outcome::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::String(o.as_str().into())
            );
        }
    }

    #[test]
    fn report_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r/report.jsonl");
        let line = DeviceReport {
            serial: "S".into(),
            client_id: None,
            ek_fingerprint: None,
            outcome: Outcome::Failed,
            config: None,
            config_out: "x".into(),
            duration_ms: 1,
            error: Some("boom".into()),
            finished_at_ms: 2,
        };
        for _ in 0..2 {
            ReportFile::open(&path).unwrap().append(&line).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["outcome"], "failed");
    }
}
