//! Manufacturing a simulated TPM: EK and EK certificate (TCG EK Credential Profile) written by
//! swtpm_setup, signed by a local CA that lives in a directory we choose.
//!
//! swtpm_setup's defaults write the CA under /var/lib/swtpm-localca; every run here passes its
//! own `--config`, so a simulation never touches anything outside its own directories.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The state file swtpm keeps for a TPM 2.0.
const STATE_FILE: &str = "tpm2-00.permall";
/// Bumped whenever the cached template's recipe changes.
const CACHE_NAME: &str = "hallmark-hwsim-cache-v1";

/// Serialises the first manufacture of the cached template within this process, so parallel
/// tests do not all run swtpm_setup at once.
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// What went wrong manufacturing a simulated TPM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManufactureError {
    /// The local CA's configuration could not be written.
    #[error("cannot write the local CA configuration in {dir}")]
    WriteCaConfig {
        /// The CA directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// swtpm_setup could not be run at all.
    #[error("cannot run `swtpm_setup` (is the Debian package `swtpm-tools` installed?)")]
    SpawnSetup {
        /// The I/O error.
        source: io::Error,
    },
    /// swtpm_setup ran and failed.
    #[error("swtpm_setup failed ({status}) for {state_dir}; its output:\n{output}")]
    Setup {
        /// The TPM state directory.
        state_dir: PathBuf,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The cached manufactured template could not be created or copied.
    #[error("cannot prepare the manufactured TPM template in {dir}")]
    Template {
        /// The directory involved.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A local certificate authority for EK (and platform) certificates, kept in one directory:
/// swtpm_localca creates its root and intermediate keys there on first use.
#[derive(Debug, Clone)]
pub struct LocalCa {
    dir: PathBuf,
}

impl LocalCa {
    /// Prepares (or reuses) the CA in `dir`: writes the swtpm_setup and swtpm_localca
    /// configuration files pointing into it.
    pub fn at(dir: &Path) -> Result<LocalCa, ManufactureError> {
        let fail = |source| ManufactureError::WriteCaConfig {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(fail)?;
        let d = dir.display();
        write_if_changed(
            &dir.join("swtpm-localca.conf"),
            &format!(
                "statedir = {d}\nsigningkey = {d}/signkey.pem\n\
                 issuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n"
            ),
        )
        .map_err(fail)?;
        write_if_changed(
            &dir.join("swtpm-localca.options"),
            "--platform-manufacturer Hallmark\n--platform-version 2.1\n\
             --platform-model hallmark-sim-1\n",
        )
        .map_err(fail)?;
        write_if_changed(
            &dir.join("swtpm_setup.conf"),
            &format!(
                "create_certs_tool = /usr/bin/swtpm_localca\n\
                 create_certs_tool_config = {d}/swtpm-localca.conf\n\
                 create_certs_tool_options = {d}/swtpm-localca.options\n\
                 active_pcr_banks = sha256\n"
            ),
        )
        .map_err(fail)?;
        Ok(LocalCa {
            dir: dir.to_path_buf(),
        })
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate that signs EK certificates (PEM), once the first TPM is manufactured.
    pub fn issuer_certificate_pem(&self) -> PathBuf {
        self.dir.join("issuercert.pem")
    }

    /// The CA that signs the EK certificates of [`crate::Swtpm::temp_manufactured`] and
    /// [`crate::Swtpm::temp_manufactured_unique`] TPMs: the "TPM manufacturer" of tests.
    pub fn shared() -> Result<LocalCa, ManufactureError> {
        cached_ca()
    }

    /// The bundle an operator gives the server as `ek_roots` for TPMs of this CA: its root and
    /// issuing CA certificates (PEM), once the first TPM is manufactured.
    pub fn ek_roots_pem(&self) -> io::Result<String> {
        let root = fs::read_to_string(self.root_certificate_pem())?;
        let issuer = fs::read_to_string(self.issuer_certificate_pem())?;
        Ok(format!("{root}{issuer}"))
    }

    /// The CA's root certificate (PEM), once the first TPM is manufactured.
    pub fn root_certificate_pem(&self) -> PathBuf {
        self.dir.join("swtpm-localca-rootca-cert.pem")
    }

    fn setup_config(&self) -> PathBuf {
        self.dir.join("swtpm_setup.conf")
    }
}

/// Whether `state_dir` already holds a TPM's state.
pub fn is_manufactured(state_dir: &Path) -> bool {
    state_dir.join(STATE_FILE).exists()
}

/// Runs swtpm_setup on `state_dir` unless it already holds state: an RSA 2048 and an ECC EK
/// (persisted at 0x81010001 and 0x810100xx), their certificates in NV (0x01c00002, …) and a
/// platform certificate. A TPM is manufactured once; doing it again would change its EK.
pub(crate) fn run_swtpm_setup(state_dir: &Path, ca: &LocalCa) -> Result<(), ManufactureError> {
    if is_manufactured(state_dir) {
        return Ok(());
    }
    fs::create_dir_all(state_dir).map_err(|source| ManufactureError::Template {
        dir: state_dir.to_path_buf(),
        source,
    })?;
    let output = Command::new("swtpm_setup")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(state_dir)
        .arg("--create-ek-cert")
        .arg("--create-platform-cert")
        .arg("--config")
        .arg(ca.setup_config())
        .output()
        .map_err(|source| ManufactureError::SpawnSetup { source })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ManufactureError::Setup {
            state_dir: state_dir.to_path_buf(),
            status: output.status,
            output: text,
        });
    }
    Ok(())
}

/// The local CA cached under the system temp directory, shared by every test on the machine.
pub(crate) fn cached_ca() -> Result<LocalCa, ManufactureError> {
    LocalCa::at(&cache_root().join("ca"))
}

/// Copies the cached manufactured template's state into `state_dir`, manufacturing the
/// template first if this machine has none yet.
pub(crate) fn copy_template(state_dir: &Path) -> Result<(), ManufactureError> {
    let template = template_state()?;
    let fail = |source| ManufactureError::Template {
        dir: state_dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(state_dir).map_err(fail)?;
    fs::copy(template.join(STATE_FILE), state_dir.join(STATE_FILE)).map_err(fail)?;
    Ok(())
}

fn cache_root() -> PathBuf {
    std::env::temp_dir().join(CACHE_NAME)
}

/// The template's state directory, manufactured on first use. Creation is atomic across
/// processes: each manufactures into a private directory and renames it into place; a loser
/// of that race discards its own and uses the winner's.
fn template_state() -> Result<PathBuf, ManufactureError> {
    let root = cache_root();
    let template = root.join("template");
    if is_manufactured(&template) {
        return Ok(template);
    }
    // A poisoned lock only means another test panicked; the guarded data is `()`.
    let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if is_manufactured(&template) {
        return Ok(template);
    }
    let ca = cached_ca()?;
    let fail = |source| ManufactureError::Template {
        dir: root.clone(),
        source,
    };
    let scratch = tempfile::Builder::new()
        .prefix("template-")
        .tempdir_in(&root)
        .map_err(fail)?;
    let state = scratch.path().join("state");
    run_swtpm_setup(&state, &ca)?;
    match fs::rename(&state, &template) {
        Ok(()) => {}
        Err(_) if is_manufactured(&template) => {}
        Err(source) => return Err(fail(source)),
    }
    Ok(template)
}

/// Writes `contents` to `path` atomically unless it already holds exactly that.
fn write_if_changed(path: &Path, contents: &str) -> io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, contents.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_config_points_into_its_own_directory() {
        let temp = tempfile::tempdir().unwrap();
        let ca = LocalCa::at(temp.path()).unwrap();
        let conf = fs::read_to_string(ca.dir().join("swtpm-localca.conf")).unwrap();
        assert!(conf.contains(&format!("statedir = {}", temp.path().display())));
        assert!(!conf.contains("/var/lib"));
        // Idempotent.
        LocalCa::at(temp.path()).unwrap();
    }

    #[test]
    fn template_copy_gives_a_manufactured_state() {
        let temp = tempfile::tempdir().unwrap();
        copy_template(&temp.path().join("state")).unwrap();
        assert!(is_manufactured(&temp.path().join("state")));
    }
}
