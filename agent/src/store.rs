//! The agent's state directory: small files replaced atomically (write a temporary file, fsync
//! it, rename it over the old one, fsync the directory), so a power cut leaves either the old or
//! the new version and never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// File holding the rotation state (JSON).
pub const ROTATION_FILE: &str = "rotation.json";
/// File holding what the server said of the current key's attestation (JSON).
pub const ATTESTATION_FILE: &str = "attestation.json";
/// File holding the refresh token sealed by the TPM (a `SealedBlob`).
pub const REFRESH_FILE: &str = "refresh_token.sealed";
/// File holding the access token of a login that brought no refresh token, sealed by the TPM
/// (a `SealedBlob` of JSON): served while it lives.
pub const LOGIN_TOKEN_FILE: &str = "login_token.sealed";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Creating the directory failed.
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not what the agent wrote.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The state directory (mode 0700).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The directory at `path`; nothing is created until the first write.
    pub fn new(path: &Path) -> StateDir {
        StateDir {
            path: path.to_owned(),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (0700) if it is missing.
    pub fn ensure(&self) -> Result<(), StoreError> {
        if self.path.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| StoreError::CreateDir {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Reads `name` as JSON, or `None` if it does not exist.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.file(name).display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Atomically replaces `name` with `value` as JSON.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        // Serialising plain data structures to a Vec cannot fail.
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        self.write(name, &bytes)
    }

    /// Reads `name`, or `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.file(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Atomically replaces `name` with `bytes` (mode 0600).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.ensure()?;
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        let failed = |source| StoreError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(failed)?;
        file.write_all(bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(failed)?;
        // The rename is durable only once the directory entry is.
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(failed)
    }

    /// Removes `name`; a missing file is fine.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Restricts an existing file to its owner (0600).
    pub fn restrict(path: &Path) -> std::io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("s"));
        assert_eq!(state.read_json::<u32>("x").unwrap(), None);
        state.write_json("x", &7u32).unwrap();
        state.write_json("x", &8u32).unwrap();
        assert_eq!(state.read_json::<u32>("x").unwrap(), Some(8));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.path()), 0o700);
        assert_eq!(mode(&state.path().join("x")), 0o600);
        assert!(!state.path().join(".x.tmp").exists());
        fs::write(state.path().join("x"), "{").unwrap();
        assert!(matches!(
            state.read_json::<u32>("x"),
            Err(StoreError::Corrupt { .. })
        ));
        state.remove("x").unwrap();
        state.remove("x").unwrap();
    }
}
