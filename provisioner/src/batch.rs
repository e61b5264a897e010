//! A batch: a CSV manifest of devices provisioned N at a time, one report line per device as
//! it finishes, a progress bar on a terminal and a summary at the end.
//!
//! Manifest: a header `serial,model,tcti,config_out` then one row per device; fields with a
//! comma (every `swtpm:host=…,port=…` TCTI) are quoted as RFC 4180 says. A relative
//! `config_out` is taken relative to the manifest's directory.
//!
//! Resuming is rerunning: each device's outcome follows from what the server and its TPM
//! hold (see [`crate::device`]), so devices finished before a crash come out
//! `already-provisioned` and the rest are provisioned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::device::{DeviceSpec, Station};
use crate::report::{DeviceReport, Outcome, ReportError, ReportFile};

/// How the batch shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// A bar on stderr when it is a terminal; nothing otherwise.
    Auto,
    /// Nothing.
    Hidden,
}

/// Why a batch could not run at all (per-device failures are reported, not returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The manifest cannot be read or parsed.
    #[error("cannot read the manifest {}", path.display())]
    ReadManifest {
        /// The manifest.
        path: PathBuf,
        /// The CSV error (it names the line).
        source: csv::Error,
    },
    /// Two rows name the same serial or the same TPM.
    #[error("manifest {}: {field} {value} appears on two rows; one identity per device", path.display())]
    Duplicate {
        /// The manifest.
        path: PathBuf,
        /// `serial` or `tcti`.
        field: &'static str,
        /// The repeated value.
        value: String,
    },
    /// The report cannot be written.
    #[error("cannot keep the report")]
    Report {
        /// The report error.
        source: ReportError,
    },
    /// `--parallel 0`.
    #[error("parallel must be at least 1")]
    Parallel,
}

/// Counts per outcome and timing of a finished batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Devices in the manifest.
    pub total: usize,
    /// Newly provisioned.
    pub provisioned: usize,
    /// Already provisioned, left alone.
    pub already_provisioned: usize,
    /// Already provisioned; the EK public key its registration lacked was supplied.
    pub reattested: usize,
    /// Reset and provisioned again.
    pub reprovisioned: usize,
    /// Refused: serial belongs to another TPM.
    pub conflict: usize,
    /// Secret lost; registration must be deleted.
    pub needs_reset: usize,
    /// Refused: TPM holds another registration's credential.
    pub tpm_occupied: usize,
    /// Failed otherwise.
    pub failed: usize,
    /// Wall time of the batch.
    pub elapsed_ms: u64,
    /// Devices handled per minute of wall time.
    pub devices_per_minute: f64,
    /// Access tokens the station asked for.
    pub token_requests: usize,
}

impl Summary {
    /// Whether every device ended provisioned.
    pub fn all_succeeded(&self) -> bool {
        self.provisioned + self.already_provisioned + self.reattested + self.reprovisioned
            == self.total
    }

    fn count(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Provisioned => &mut self.provisioned,
            Outcome::AlreadyProvisioned => &mut self.already_provisioned,
            Outcome::Reattested => &mut self.reattested,
            Outcome::Reprovisioned => &mut self.reprovisioned,
            Outcome::Conflict => &mut self.conflict,
            Outcome::NeedsReset => &mut self.needs_reset,
            Outcome::TpmOccupied => &mut self.tpm_occupied,
            Outcome::Failed => &mut self.failed,
        };
        *slot += 1;
    }
}

/// Reads and checks a manifest.
pub fn read_manifest(path: &Path) -> Result<Vec<DeviceSpec>, BatchError> {
    let read_failed = |source| BatchError::ReadManifest {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(read_failed)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    for row in reader.deserialize::<DeviceSpec>() {
        let mut spec = row.map_err(read_failed)?;
        if spec.config_out.is_relative() {
            spec.config_out = base.join(&spec.config_out);
        }
        specs.push(spec);
    }
    let duplicate = |field, value: &str| BatchError::Duplicate {
        path: path.to_path_buf(),
        field,
        value: value.to_owned(),
    };
    let (mut serials, mut tctis) = (HashSet::new(), HashSet::new());
    for spec in &specs {
        if !serials.insert(spec.serial.as_str()) {
            return Err(duplicate("serial", &spec.serial));
        }
        if !tctis.insert(spec.tcti.as_str()) {
            return Err(duplicate("tcti", &spec.tcti));
        }
    }
    Ok(specs)
}

/// Provisions every device of `specs`, `parallel` at a time, appending a line per device to
/// `report` as each finishes. One device's failure never stops the others.
pub fn run(
    station: &Station,
    specs: &[DeviceSpec],
    report: &Path,
    parallel: usize,
    progress: Progress,
) -> Result<Summary, BatchError> {
    if parallel == 0 {
        return Err(BatchError::Parallel);
    }
    let mut report = ReportFile::open(report).map_err(|source| BatchError::Report { source })?;
    let bar = progress_bar(specs.len(), progress);
    let started = Instant::now();
    let tokens_before = station.client().token_requests();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<DeviceReport>();
    let mut summary = Summary {
        total: specs.len(),
        ..Summary::default()
    };
    let written = std::thread::scope(|scope| {
        for _ in 0..parallel.min(specs.len()) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                while let Some(spec) = specs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if tx.send(station.provision(spec)).is_err() {
                        return; // the writer gave up (report unwritable): stop taking devices
                    }
                }
            });
        }
        drop(tx);
        // The report is written here, on one thread, in completion order.
        for line in rx {
            report
                .append(&line)
                .map_err(|source| BatchError::Report { source })?;
            station.observe(&line.serial, crate::device::Step::Reported);
            summary.count(line.outcome);
            bar.set_message(format!("{} {}", line.serial, line.outcome.as_str()));
            if !line.outcome.is_success() {
                bar.suspend(|| {
                    eprintln!(
                        "{}: {}: {}",
                        line.serial,
                        line.outcome.as_str(),
                        line.error.as_deref().unwrap_or("")
                    )
                });
            }
            bar.inc(1);
        }
        Ok(())
    });
    bar.finish_and_clear();
    written?;
    let elapsed = started.elapsed();
    summary.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    summary.devices_per_minute = per_minute(summary.total, elapsed);
    summary.token_requests = station.client().token_requests() - tokens_before;
    Ok(summary)
}

fn per_minute(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    // Two decimals are plenty for a rate.
    (count as f64 * 60.0 / secs * 100.0).round() / 100.0
}

fn progress_bar(len: usize, progress: Progress) -> ProgressBar {
    let target = match progress {
        // indicatif draws nothing when stderr is not a terminal.
        Progress::Auto => ProgressDrawTarget::stderr(),
        Progress::Hidden => ProgressDrawTarget::hidden(),
    };
    let bar = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_quoted_manifest_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        std::fs::write(
            &path,
            "serial,model,tcti,config_out\n\
             HM-1,sim,\"swtpm:host=127.0.0.1,port=2321\",/abs/agent.toml\n\
             HM-2,sim,\"swtpm:host=127.0.0.1,port=2323\",HM-2/agent.toml\n",
        )
        .unwrap();
        let specs = read_manifest(&path).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].tcti, "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(specs[0].config_out, PathBuf::from("/abs/agent.toml"));
        assert_eq!(specs[1].config_out, dir.path().join("HM-2/agent.toml"));
    }

    #[test]
    fn refuses_duplicates_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        std::fs::write(
            &path,
            "serial,model,tcti,config_out\nA,m,\"t,1\",a\nB,m,\"t,1\",b\n",
        )
        .unwrap();
        let err = read_manifest(&path).unwrap_err().to_string();
        assert!(err.contains("tcti t,1 appears on two rows"), "{err}");
        std::fs::write(&path, "serial,model,tcti,config_out\nA,m,t\n").unwrap();
        assert!(read_manifest(&path).is_err());
    }

    #[test]
    fn rate_is_per_minute() {
        assert_eq!(per_minute(10, Duration::from_secs(30)), 20.0);
    }
}
