//! A fleet of manufactured swtpm devices that outlives the command that started it, with a
//! provisioning manifest, and a `down` that stops exactly the processes it started.
//!
//! Layout of a fleet directory `D`:
//!
//! ```text
//! D/ca/                  the fleet's local CA (one factory, one CA), signs every EK certificate
//! D/HM-SIM-0001/state/   device 1's TPM state; swtpm.pid, swtpm.stderr beside it
//! D/HM-SIM-0001/agent.toml   where the provisioner writes the device's config (config_out)
//! D/manifest.csv         serial,model,tcti,config_out — the provisioner's batch format
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::manufacture::{self, LocalCa, ManufactureError};
use crate::swtpm::{self, Swtpm, SwtpmError};

/// The model string of every simulated device.
pub const MODEL: &str = "hallmark-sim-1";
/// How many devices are manufactured at once (swtpm_setup mostly waits, so this beats the
/// core count).
const PARALLEL_MANUFACTURE: usize = 4;
/// How long `down` waits for a TPM to exit after SIGTERM before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One device of a running fleet, as written to the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDevice {
    /// Serial number, `HM-SIM-0001` onwards.
    pub serial: String,
    /// Model, always [`MODEL`].
    pub model: String,
    /// TCTI string to reach the device's TPM.
    pub tcti: String,
    /// Where the provisioner writes this device's agent config.
    pub config_out: PathBuf,
    /// The swtpm process id.
    pub pid: u32,
}

/// What went wrong bringing a fleet up or down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The fleet directory already runs TPMs.
    #[error("a fleet is already up in {dir} ({running} TPMs running); run `fleet down` first")]
    AlreadyUp {
        /// The fleet directory.
        dir: PathBuf,
        /// How many of its TPMs run.
        running: usize,
    },
    /// A device could not be manufactured or started; devices started by this run were stopped.
    #[error("cannot bring up device {serial}")]
    StartDevice {
        /// The device's serial.
        serial: String,
        /// What went wrong.
        source: SwtpmError,
    },
    /// The fleet's local CA could not be prepared.
    #[error("cannot prepare the fleet's local CA")]
    PrepareCa {
        /// What went wrong.
        source: ManufactureError,
    },
    /// The fleet directory could not be read or written.
    #[error("cannot use the fleet directory {dir}")]
    Io {
        /// The path involved.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory holds a fleet (its TPMs' pid files) but none of its TPMs runs.
    #[error(
        "{dir} holds a fleet ({pid_files} TPM pid files) but none of its TPMs is running: \
         nothing was stopped{}",
        if *stale == *pid_files {
            "; they had all exited already (their stale pid files were removed)".to_owned()
        } else {
            format!("; {} pid files name a live process that does not serve this fleet's \
                     state directories", pid_files - stale)
        }
    )]
    NothingRunning {
        /// The fleet directory.
        dir: PathBuf,
        /// Pid files found.
        pid_files: usize,
        /// Of those, how many named no live process (removed).
        stale: usize,
    },
    /// A TPM would not stop.
    #[error("cannot stop swtpm process {pid} of {dir}")]
    Stop {
        /// The device directory.
        dir: PathBuf,
        /// The process id.
        pid: u32,
        /// The I/O error.
        source: io::Error,
    },
}

/// The serial number of the `index`-th device (1-based).
pub fn serial(index: usize) -> String {
    format!("HM-SIM-{index:04}")
}

/// Manufactures (unless already manufactured) and starts `count` TPMs under `dir`, leaves them
/// running in the background, and writes `dir/manifest.csv`.
pub fn up(dir: &Path, count: usize) -> Result<Vec<FleetDevice>, FleetError> {
    // Absolute from here on: the TPMs, the manifest and a later `down` (maybe from another
    // directory, maybe given another spelling of the path) must all name the same place.
    fs::create_dir_all(dir).map_err(|source| FleetError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let dir = &canonical(dir)?;
    let running = running_pids(dir)?.len();
    if running > 0 {
        return Err(FleetError::AlreadyUp {
            dir: dir.to_path_buf(),
            running,
        });
    }
    let ca = LocalCa::at(&dir.join("ca")).map_err(|source| FleetError::PrepareCa { source })?;

    // The first device creates the CA's keys; the rest then share them in parallel.
    let serials: Vec<String> = (1..=count).map(serial).collect();
    let mut devices = Vec::with_capacity(count);
    let mut first_error = None;
    if let Some((first, rest)) = serials.split_first() {
        match bring_up(dir, first, &ca) {
            Ok(device) => devices.push(device),
            Err(err) => first_error = Some(err),
        }
        if first_error.is_none() {
            for chunk in rest.chunks(PARALLEL_MANUFACTURE) {
                let results: Vec<_> = thread::scope(|scope| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .map(|serial| scope.spawn(|| bring_up(dir, serial, &ca)))
                        .collect();
                    handles.into_iter().map(|h| h.join()).collect()
                });
                for (serial, result) in chunk.iter().zip(results) {
                    match result {
                        Ok(Ok(device)) => devices.push(device),
                        Ok(Err(err)) => {
                            first_error.get_or_insert(err);
                        }
                        Err(_panic) => {
                            first_error.get_or_insert(FleetError::StartDevice {
                                serial: serial.clone(),
                                source: SwtpmError::Spawn {
                                    source: io::Error::other("device start-up thread panicked"),
                                },
                            });
                        }
                    }
                }
                if first_error.is_some() {
                    break;
                }
            }
        }
    }
    if let Some(err) = first_error {
        // Leave nothing behind that a later `down` would have to find.
        let _ = down(dir);
        return Err(err);
    }
    write_manifest(dir, &devices)?;
    Ok(devices)
}

/// Stops every TPM that [`up`] started under `dir` and nothing else: a pid is signalled only
/// while `/proc/PID/cmdline` is a swtpm serving that device's state directory (paths compared
/// canonically, so `fleet`, `./fleet` and `/abs/fleet` are one fleet). Returns how many were
/// stopped: 0 for a directory with no fleet up; a directory whose fleet left pid files but
/// none of whose TPMs runs is an error ([`FleetError::NothingRunning`]).
pub fn down(dir: &Path) -> Result<usize, FleetError> {
    let dir = match canonical(dir) {
        Ok(dir) => dir,
        Err(FleetError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let mut stopped = 0;
    for (device_dir, pid) in running_pids(&dir)? {
        stop(&device_dir, pid)?;
        let _ = fs::remove_file(device_dir.join("swtpm.pid"));
        stopped += 1;
    }
    if stopped == 0 {
        let pid_files = pid_files(&dir)?;
        if !pid_files.is_empty() {
            let mut stale = 0;
            for (file, pid) in &pid_files {
                if !alive(*pid) {
                    let _ = fs::remove_file(file);
                    stale += 1;
                }
            }
            return Err(FleetError::NothingRunning {
                dir,
                pid_files: pid_files.len(),
                stale,
            });
        }
    }
    Ok(stopped)
}

/// Whether `pid` names a process that has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(!matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}

fn canonical(dir: &Path) -> Result<PathBuf, FleetError> {
    fs::canonicalize(dir).map_err(|source| FleetError::Io {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Every device's `swtpm.pid` under `dir` and the pid it names.
fn pid_files(dir: &Path) -> Result<Vec<(PathBuf, u32)>, FleetError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| FleetError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let file = entry.path().join("swtpm.pid");
        if let Some(pid) = fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            found.push((file, pid));
        }
    }
    Ok(found)
}

fn bring_up(dir: &Path, serial: &str, ca: &LocalCa) -> Result<FleetDevice, FleetError> {
    let device_dir = dir.join(serial);
    let fail = |source| FleetError::StartDevice {
        serial: serial.to_owned(),
        source,
    };
    fs::create_dir_all(&device_dir).map_err(|source| {
        fail(SwtpmError::PrepareDir {
            dir: device_dir.clone(),
            source,
        })
    })?;
    manufacture::run_swtpm_setup(&swtpm::state_dir(&device_dir), ca)
        .map_err(|source| fail(SwtpmError::Manufacture { source }))?;
    let tpm = Swtpm::start_detachable(&device_dir).map_err(fail)?;
    let tcti = tpm.tcti();
    let pid = tpm.detach().ok_or_else(|| {
        fail(SwtpmError::Spawn {
            source: io::Error::other("swtpm was not running after start"),
        })
    })?;
    Ok(FleetDevice {
        serial: serial.to_owned(),
        model: MODEL.to_owned(),
        tcti,
        config_out: device_dir.join("agent.toml"),
        pid,
    })
}

/// Writes the manifest in the provisioner's batch format (RFC 4180 CSV: the TCTI contains a
/// comma, so fields are quoted where needed).
fn write_manifest(dir: &Path, devices: &[FleetDevice]) -> Result<(), FleetError> {
    let mut csv = String::from("serial,model,tcti,config_out\n");
    for d in devices {
        let config_out = d.config_out.display().to_string();
        let fields = [
            d.serial.as_str(),
            d.model.as_str(),
            d.tcti.as_str(),
            config_out.as_str(),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let path = dir.join("manifest.csv");
    fs::write(&path, csv).map_err(|source| FleetError::Io { dir: path, source })
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Device directories under `dir` whose recorded swtpm still runs on their state.
fn running_pids(dir: &Path) -> Result<Vec<(PathBuf, u32)>, FleetError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FleetError::Io {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FleetError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        let device_dir = entry.path();
        let Ok(text) = fs::read_to_string(device_dir.join("swtpm.pid")) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<u32>() else {
            continue;
        };
        if serves(pid, &device_dir) {
            found.push((device_dir, pid));
        }
    }
    found.sort();
    Ok(found)
}

/// Whether process `pid` is a swtpm serving the state directory of `device_dir` (guards
/// against a recycled pid). The paths are compared canonically: the process may have been
/// given a relative one, which counts from its own working directory.
fn serves(pid: u32, device_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.first().is_some_and(|a| a.ends_with("swtpm")) {
        return false;
    }
    let Ok(want) = fs::canonicalize(swtpm::state_dir(device_dir)) else {
        return false;
    };
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    args.iter()
        .filter_map(|a| a.strip_prefix("dir="))
        .map(|d| cwd.join(d.split(',').next().unwrap_or(d)))
        .any(|d| fs::canonicalize(d).is_ok_and(|d| d == want))
}

fn stop(device_dir: &Path, pid: u32) -> Result<(), FleetError> {
    let fail = |source| FleetError::Stop {
        dir: device_dir.to_path_buf(),
        pid,
        source,
    };
    // SIGTERM lets swtpm write its state and exit cleanly.
    signal(pid, "TERM").map_err(fail)?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while serves(pid, device_dir) {
        if Instant::now() >= deadline {
            signal(pid, "KILL").map_err(fail)?;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends a signal with kill(1): the workspace forbids `unsafe`, and a process we did not spawn
/// in this run has no `Child` to kill.
fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -{name} {pid} failed ({status})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_the_tcti() {
        assert_eq!(csv_field("HM-SIM-0001"), "HM-SIM-0001");
        assert_eq!(
            csv_field("swtpm:host=127.0.0.1,port=2321"),
            "\"swtpm:host=127.0.0.1,port=2321\""
        );
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
    }

    /// Brings the fleet down even when an assertion fails, so no swtpm outlives the test.
    struct Down<'a>(&'a Path);

    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = down(self.0);
        }
    }

    #[test]
    fn fleet_up_and_down_stop_exactly_their_tpms() {
        let temp = tempfile::tempdir().unwrap();
        let _down = Down(temp.path());
        // A TPM that is not the fleet's must survive `down`.
        let bystander = Swtpm::temp().unwrap();

        let devices = up(temp.path(), 2).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].serial, "HM-SIM-0001");
        let manifest = fs::read_to_string(temp.path().join("manifest.csv")).unwrap();
        let lines: Vec<&str> = manifest.lines().collect();
        assert_eq!(lines[0], "serial,model,tcti,config_out");
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("HM-SIM-0001,hallmark-sim-1,\"swtpm:host=127.0.0.1,port="));
        assert!(lines[2].ends_with("HM-SIM-0002/agent.toml"));
        for d in &devices {
            assert!(Path::new(&format!("/proc/{}", d.pid)).exists());
        }
        assert!(matches!(
            up(temp.path(), 2),
            Err(FleetError::AlreadyUp { running: 2, .. })
        ));

        assert_eq!(down(temp.path()).unwrap(), 2);
        for d in &devices {
            assert!(!serves(d.pid, &temp.path().join(&d.serial)));
        }
        assert_eq!(down(temp.path()).unwrap(), 0);
        let pid = bystander.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn down_finds_a_fleet_by_any_spelling_of_its_path_and_says_when_nothing_runs() {
        let temp = tempfile::tempdir().unwrap();
        let fleet = temp.path().join("fleet");
        let _down = Down(&fleet);
        let devices = up(&fleet, 1).unwrap();
        // Another spelling: through `..` and a symlink.
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(temp.path(), &link).unwrap();
        let other = link.join("fleet").join("..").join("fleet");
        assert_eq!(down(&other).unwrap(), 1);
        assert!(!serves(devices[0].pid, &fleet.join(&devices[0].serial)));

        // A pid file left behind by a TPM that died on its own: an error, and cleaned up. The
        // pid is a reaped child's (the TPM just stopped may still be exiting, so still alive).
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let pid_file = fleet.join(&devices[0].serial).join("swtpm.pid");
        fs::write(&pid_file, format!("{}\n", gone.id())).unwrap();
        let err = down(&fleet).unwrap_err().to_string();
        assert!(err.contains("none of its TPMs is running"), "{err}");
        assert!(!pid_file.exists());
        assert_eq!(down(&fleet).unwrap(), 0, "nothing left: no fleet up");
    }
}
