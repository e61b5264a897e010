//! Drop guards for what the demo starts: child processes, the fleet, the work directory. They
//! run on every way out of the demo — success, error or Ctrl-C — so nothing is left behind.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use super::{step_error, DemoError};
use crate::fleet::{self, FleetDevice, FleetError};

/// The demo's temporary directory, removed on drop unless kept.
#[derive(Debug)]
pub(super) struct Workdir {
    temp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    pub(super) fn new(keep: bool) -> io::Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("hallmark-demo-")
            .tempdir()?;
        let path = temp.path().to_path_buf();
        Ok(if keep {
            Workdir {
                path: temp.keep(),
                temp: None,
            }
        } else {
            Workdir {
                temp: Some(temp),
                path,
            }
        })
    }

    pub(super) fn path(&self) -> &Path {
        self.temp.as_ref().map_or(&self.path, |t| t.path())
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub(super) struct Child {
    child: std::process::Child,
    name: &'static str,
}

impl Child {
    pub(super) fn spawn(cmd: &mut Command, name: &'static str) -> Result<Self, DemoError> {
        let child = cmd.spawn().map_err(|e| step_error(name)(e.to_string()))?;
        Ok(Child { child, name })
    }

    /// Its stdout as a channel of lines (once).
    pub(super) fn stdout_lines(&mut self) -> Option<mpsc::Receiver<String>> {
        self.child.stdout.take().map(super::line_channel)
    }

    /// How it ended, in words.
    pub(super) fn wait_status(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => format!("{} {status}", self.name),
            Err(e) => format!("{}: {e}", self.name),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so the server shuts down gracefully; SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            for _ in 0..50 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running fleet, brought down on drop.
#[derive(Debug)]
pub(super) struct FleetGuard {
    dir: PathBuf,
    devices: Vec<FleetDevice>,
}

impl FleetGuard {
    pub(super) fn up(dir: &Path, count: usize) -> Result<Self, FleetError> {
        let devices = fleet::up(dir, count)?;
        Ok(FleetGuard {
            dir: dir.to_path_buf(),
            devices,
        })
    }

    pub(super) fn devices(&self) -> &[FleetDevice] {
        &self.devices
    }
}

impl Drop for FleetGuard {
    fn drop(&mut self) {
        if let Err(e) = fleet::down(&self.dir) {
            eprintln!(
                "hallmark-hwsim: could not stop the demo fleet in {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Writes a file only its owner may read.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
