//! One software TPM (swtpm) process: start, readiness poll, kill, restart, kill-and-reap on drop.
//!
//! Each [`Swtpm`] owns a simulation directory laid out as
//!
//! ```text
//! DIR/state/        the TPM's persistent state (tpm2-00.permall): seeds, NV, persistent handles
//! DIR/swtpm.stderr  the running swtpm's stderr, quoted in every start-up error
//! DIR/swtpm.pid     the running swtpm's process id
//! ```
//!
//! swtpm listens on loopback TCP, not on a Unix socket: tss-esapi 7.7's `TctiNameConf` only
//! carries `host=…,port=…` for the swtpm TCTI, so a `swtpm:path=…` string cannot reach
//! `libtss2-tcti-swtpm` through it. The data port is chosen by the kernel (bind to port 0) and
//! the control channel sits on the next port, which is where the swtpm TCTI expects it.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::manufacture::{self, LocalCa, ManufactureError};

/// How long a freshly spawned swtpm may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many port pairs to try before giving up (another process may grab a port between our
/// probe and swtpm's bind).
const START_ATTEMPTS: u32 = 8;
/// How long `restart` keeps retrying the TPM's previous port (its old listener may linger).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// A running swtpm (TPM 2.0) bound to loopback, killed and reaped when dropped.
#[derive(Debug)]
pub struct Swtpm {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Present when the simulation directory is a temporary one owned by this value; declared
    /// last so the process is killed (in `Drop`) before the directory is removed.
    owned_dir: Option<TempDir>,
}

/// What went wrong starting or manufacturing a simulated TPM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwtpmError {
    /// The simulation directory could not be prepared.
    #[error("cannot prepare the simulation directory {dir}")]
    PrepareDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The `swtpm` program could not be run at all.
    #[error("cannot run `swtpm` (is the Debian package `swtpm` installed?)")]
    Spawn {
        /// The I/O error.
        source: io::Error,
    },
    /// No free pair of loopback ports could be found.
    #[error("cannot find a free pair of loopback ports for swtpm")]
    FindPort {
        /// The I/O error.
        source: io::Error,
    },
    /// swtpm exited during start-up.
    #[error("swtpm exited during start-up ({status}); its stderr:\n{stderr}")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// swtpm did not accept connections in time.
    #[error("swtpm did not listen on 127.0.0.1:{port} within {timeout:?}; its stderr:\n{stderr}")]
    NotReady {
        /// The data port.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// Every start attempt failed; the last failure is the source.
    #[error("swtpm failed to start after {attempts} attempts")]
    Start {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure.
        source: Box<SwtpmError>,
    },
    /// Manufacturing (EK, EK certificate) failed.
    #[error("cannot manufacture the simulated TPM")]
    Manufacture {
        /// What went wrong.
        #[from]
        source: ManufactureError,
    },
    /// Waiting for a killed swtpm failed.
    #[error("cannot reap the swtpm process")]
    Reap {
        /// The I/O error.
        source: io::Error,
    },
}

impl Swtpm {
    /// Starts swtpm on the state in `dir` (created if absent; a blank TPM if it holds none).
    pub fn start(dir: &Path) -> Result<Swtpm, SwtpmError> {
        let dir = dir.to_path_buf();
        prepare_dir(&dir)?;
        let (child, port) = spawn_with_retries(&dir, None, false)?;
        Ok(Swtpm {
            dir,
            port,
            child: Some(child),
            owned_dir: None,
        })
    }

    /// Manufactures the TPM in `dir` (EK and EK certificate in NV, signed by a local CA kept in
    /// `dir/ca`) unless it already holds state, then starts it.
    pub fn manufacture(dir: &Path) -> Result<Swtpm, SwtpmError> {
        let ca = LocalCa::at(&dir.join("ca"))?;
        Self::manufacture_with(dir, &ca)
    }

    /// Like [`Swtpm::manufacture`], with the EK certificate signed by a shared local CA (one
    /// CA for a whole fleet, as one factory has one).
    pub fn manufacture_with(dir: &Path, ca: &LocalCa) -> Result<Swtpm, SwtpmError> {
        prepare_dir(dir)?;
        manufacture::run_swtpm_setup(&state_dir(dir), ca)?;
        Self::start(dir)
    }

    /// A blank TPM (no EK certificate, fresh random seeds) in its own temporary directory.
    pub fn temp() -> Result<Swtpm, SwtpmError> {
        let temp = temp_dir()?;
        let mut tpm = Self::start(temp.path())?;
        tpm.owned_dir = Some(temp);
        Ok(tpm)
    }

    /// A manufactured TPM (EK + EK certificate) in its own temporary directory and process.
    ///
    /// Fast (a few milliseconds): the state is copied from a template manufactured once per
    /// machine and cached under the system temp directory, so every TPM made this way shares
    /// the template's seeds — and therefore its EK (and SRK). Use
    /// [`Swtpm::temp_manufactured_unique`] where distinct devices must have distinct EKs.
    pub fn temp_manufactured() -> Result<Swtpm, SwtpmError> {
        let temp = temp_dir()?;
        prepare_dir(temp.path())?;
        manufacture::copy_template(&state_dir(temp.path()))?;
        let mut tpm = Self::start(temp.path())?;
        tpm.owned_dir = Some(temp);
        Ok(tpm)
    }

    /// A manufactured TPM with its own seeds and EK, in its own temporary directory.
    ///
    /// Runs swtpm_setup (about 0.9 s on the reference machine); the EK certificate is signed by
    /// a local CA cached under the system temp directory.
    pub fn temp_manufactured_unique() -> Result<Swtpm, SwtpmError> {
        let temp = temp_dir()?;
        let ca = manufacture::cached_ca()?;
        let mut tpm = Self::manufacture_with(temp.path(), &ca)?;
        tpm.owned_dir = Some(temp);
        Ok(tpm)
    }

    /// The TCTI string for this TPM, e.g. `swtpm:host=127.0.0.1,port=40123`.
    pub fn tcti(&self) -> String {
        tcti_for_port(self.port)
    }

    /// The loopback TCP port of the TPM's data channel (the control channel is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The simulation directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running swtpm's process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the swtpm process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills swtpm with SIGKILL — a power cut: whatever the TPM had not written to its state
    /// file is lost, exactly as on hardware — and reaps it. Idempotent.
    pub fn kill(&mut self) -> Result<(), SwtpmError> {
        if let Some(mut child) = self.child.take() {
            // An error here means the process already exited; `wait` below reaps it either way.
            let _ = child.kill();
            child.wait().map_err(|source| SwtpmError::Reap { source })?;
            let _ = fs::remove_file(self.dir.join("swtpm.pid"));
        }
        Ok(())
    }

    /// Kills swtpm (if running) and starts it again on the same state and the same port, so
    /// the TCTI string stays valid.
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        self.kill()?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match spawn_once(&self.dir, self.port, false) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(err) => return Err(err),
            }
        }
    }

    /// Leaves swtpm running after this value is dropped (for fleets that outlive the command
    /// that started them) and returns its process id. swtpm runs in its own process group, so
    /// a terminal's Ctrl-C aimed at the starting command does not reach it.
    pub(crate) fn detach(mut self) -> Option<u32> {
        // Dropping a `Child` neither kills nor waits for it.
        self.child.take().map(|child| child.id())
    }

    /// Starts swtpm in its own process group (see [`Swtpm::detach`]).
    pub(crate) fn start_detachable(dir: &Path) -> Result<Swtpm, SwtpmError> {
        let dir = dir.to_path_buf();
        prepare_dir(&dir)?;
        let (child, port) = spawn_with_retries(&dir, None, true)?;
        Ok(Swtpm {
            dir,
            port,
            child: Some(child),
            owned_dir: None,
        })
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // Nothing useful can be done with a reaping error while dropping.
        let _ = self.kill();
    }
}

/// The TCTI string for a swtpm listening on loopback `port`.
pub fn tcti_for_port(port: u16) -> String {
    format!("swtpm:host=127.0.0.1,port={port}")
}

/// Where a simulation directory keeps the TPM's own state.
pub(crate) fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

fn temp_dir() -> Result<TempDir, SwtpmError> {
    tempfile::Builder::new()
        .prefix("hallmark-swtpm-")
        .tempdir()
        .map_err(|source| SwtpmError::PrepareDir {
            dir: std::env::temp_dir(),
            source,
        })
}

fn prepare_dir(dir: &Path) -> Result<(), SwtpmError> {
    fs::create_dir_all(state_dir(dir)).map_err(|source| SwtpmError::PrepareDir {
        dir: dir.to_path_buf(),
        source,
    })
}

fn spawn_with_retries(
    dir: &Path,
    port: Option<u16>,
    own_group: bool,
) -> Result<(Child, u16), SwtpmError> {
    let mut last = None;
    for _ in 0..START_ATTEMPTS {
        let port = match port {
            Some(port) => port,
            None => free_port_pair().map_err(|source| SwtpmError::FindPort { source })?,
        };
        match spawn_once(dir, port, own_group) {
            Ok(child) => return Ok((child, port)),
            // A missing binary will not appear on retry.
            Err(err @ SwtpmError::Spawn { .. }) => return Err(err),
            Err(err) => last = Some(err),
        }
    }
    Err(SwtpmError::Start {
        attempts: START_ATTEMPTS,
        source: Box::new(last.unwrap_or(SwtpmError::FindPort {
            source: io::Error::other("no attempt was made"),
        })),
    })
}

/// Spawns swtpm on `port` (data) and `port + 1` (control) and waits until it accepts
/// connections on both.
/// `bash -c` script: close descriptors 3 and up, then exec `$0 "$@"`.
pub const CLOSE_FDS_AND_EXEC: &str = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$0" "$@""#;

fn spawn_once(dir: &Path, port: u16, own_group: bool) -> Result<Child, SwtpmError> {
    let stderr_path = dir.join("swtpm.stderr");
    let stderr = fs::File::create(&stderr_path).map_err(|source| SwtpmError::PrepareDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let ctrl_port = port.wrapping_add(1);
    // Through bash, which closes every descriptor above stderr before it becomes swtpm: a
    // process that talks to other TPMs (tpm2-tss's swtpm TCTI opens a socket per command,
    // without close-on-exec) must not hand one of those connections to this swtpm, which would
    // hold it forever and block that TPM — swtpm serves one connection at a time.
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(CLOSE_FDS_AND_EXEC)
        .arg("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state_dir(dir).display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1"))
        // Both flags are needed: without them the TPM waits for TPM_Init and TPM2_Startup.
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .map_err(|source| SwtpmError::Spawn { source })?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SwtpmError::Exited {
                status,
                stderr: read_stderr(&stderr_path),
            });
        }
        if listening(port) && listening(ctrl_port) {
            // A listener on our ports could still be another process if swtpm's bind failed
            // and it has not exited yet; give a failing swtpm a moment to show it.
            thread::sleep(Duration::from_millis(2));
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SwtpmError::Exited {
                    status,
                    stderr: read_stderr(&stderr_path),
                });
            }
            // Written by us, not by swtpm's `--pid`, which writes it only when daemonising.
            if let Err(source) = fs::write(dir.join("swtpm.pid"), format!("{}\n", child.id())) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SwtpmError::PrepareDir {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SwtpmError::NotReady {
                port,
                timeout: READY_TIMEOUT,
                stderr: read_stderr(&stderr_path),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A port `p` such that `p` and `p + 1` were both free a moment ago.
///
/// Ports are drawn at random from below the kernel's ephemeral range: outgoing connections
/// (every TCTI connection included) take their local ports from that range and leave them in
/// TIME_WAIT for a minute, so after a few thousand connections — a benchmark's worth — pairs
/// inside it are often blocked, while ports below it are only ever taken by listeners.
fn free_port_pair() -> io::Result<u16> {
    let (ephemeral_low, _) = ephemeral_range();
    if ephemeral_low > PORT_FLOOR + 2 {
        let span = u64::from(ephemeral_low - PORT_FLOOR - 1);
        for _ in 0..256 {
            // `random_u64() % span` < span <= u16::MAX, so the conversion cannot fail.
            let offset = u16::try_from(random_u64() % span).unwrap_or(0);
            let port = PORT_FLOOR + offset;
            if pair_is_free(port) {
                return Ok(port);
            }
        }
    }
    // Fallback: let the kernel pick inside the ephemeral range.
    for _ in 0..64 {
        let data = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = data.local_addr()?.port();
        drop(data);
        if port.checked_add(1).is_some() && pair_is_free(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free pair of consecutive loopback ports",
    ))
}

/// Lowest port handed to swtpm: clear of the well-known and most registered service ports.
const PORT_FLOOR: u16 = 10_000;

fn pair_is_free(port: u16) -> bool {
    let Some(ctrl) = port.checked_add(1) else {
        return false;
    };
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)).is_ok()
}

/// The kernel's ephemeral port range (Linux default 32768–60999).
fn ephemeral_range() -> (u16, u16) {
    let parsed = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        });
    parsed.unwrap_or((32768, 60999))
}

/// A random number without a dependency: std seeds every `RandomState` from the OS.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn read_stderr(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => "(empty)".to_owned(),
        Ok(text) => text,
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_listens_and_is_reaped_on_drop() {
        let tpm = Swtpm::temp().unwrap();
        assert!(listening(tpm.port()));
        assert!(tpm.tcti().starts_with("swtpm:host=127.0.0.1,port="));
        let pid = tpm.pid().unwrap();
        drop(tpm);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn restart_keeps_port_and_state() {
        let mut tpm = Swtpm::temp().unwrap();
        let port = tpm.port();
        // swtpm writes its state file a moment after it starts listening (later still on a
        // loaded machine): wait for it, so that there is state to keep.
        let permall = state_dir(tpm.dir()).join("tpm2-00.permall");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !permall.exists() {
            assert!(Instant::now() < deadline, "swtpm wrote no state");
            thread::sleep(Duration::from_millis(10));
        }
        tpm.kill().unwrap();
        assert!(!tpm.is_running());
        tpm.restart().unwrap();
        assert!(tpm.is_running());
        assert_eq!(tpm.port(), port);
        assert!(state_dir(tpm.dir()).join("tpm2-00.permall").exists());
    }

    #[test]
    fn start_error_quotes_swtpm_stderr() {
        let temp = tempfile::tempdir().unwrap();
        // A file where the state directory should be makes swtpm fail at start-up.
        fs::create_dir_all(temp.path()).unwrap();
        fs::write(state_dir(temp.path()), b"not a directory").unwrap();
        let err = spawn_once(temp.path(), free_port_pair().unwrap(), false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("stderr"), "{text}");
    }

    #[test]
    fn unique_manufacture_gives_a_manufactured_tpm_of_its_own() {
        let tpm = Swtpm::temp_manufactured_unique().unwrap();
        assert!(manufacture::is_manufactured(&state_dir(tpm.dir())));
        assert!(listening(tpm.port()));
        assert!(manufacture::cached_ca()
            .unwrap()
            .issuer_certificate_pem()
            .exists());
    }

    #[test]
    fn free_port_pairs_are_consecutive_and_free() {
        let port = free_port_pair().unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).unwrap();
    }
}
