//! `hallmark-hwsim`: start one simulated TPM, or a fleet of them, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use hallmark_hwsim::{demo, fleet, Swtpm};

/// Simulated hardware for Hallmark: software TPMs on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// One TPM.
    #[command(subcommand)]
    Tpm(TpmCommand),
    /// Many manufactured TPMs running in the background.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The whole story with 3 devices: server, station, provisioning, first boot, tokens and
    /// the device flow; cleans up after itself.
    Demo {
        /// Approve the device flow through the verification page with an HTTP client.
        #[arg(long)]
        non_interactive: bool,
        /// Keep the demo's directory.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TpmCommand {
    /// Manufacture (unless --blank or already done) and run a TPM in DIR until interrupted;
    /// prints its TCTI string.
    Start {
        /// Simulation directory (state, logs, local CA).
        #[arg(long)]
        dir: PathBuf,
        /// Skip manufacturing: no EK certificate.
        #[arg(long)]
        blank: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Start COUNT manufactured TPMs under DIR and write DIR/manifest.csv.
    Up {
        /// How many devices.
        #[arg(long)]
        count: usize,
        /// Fleet directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every TPM that `fleet up` started under DIR.
    Down {
        /// Fleet directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hallmark-hwsim: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Top::Tpm(TpmCommand::Start { dir, blank }) => {
            let mut tpm = if blank {
                Swtpm::start(&dir)
            } else {
                Swtpm::manufacture(&dir)
            }
            .with_context(|| format!("starting a TPM in {}", dir.display()))?;
            println!("{}", tpm.tcti());
            // Runs until swtpm exits or Ctrl-C stops both (they share the process group).
            while tpm.is_running() {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            anyhow::bail!("swtpm exited; see {}", dir.join("swtpm.stderr").display())
        }
        Top::Fleet(FleetCommand::Up { count, dir }) => {
            let devices = fleet::up(&dir, count)
                .with_context(|| format!("bringing up a fleet in {}", dir.display()))?;
            for d in &devices {
                println!("{} {} pid {}", d.serial, d.tcti, d.pid);
            }
            println!("manifest: {}", dir.join("manifest.csv").display());
            Ok(())
        }
        Top::Demo {
            non_interactive,
            keep,
        } => Ok(demo::run(demo::Options {
            non_interactive,
            keep,
        })?),
        Top::Fleet(FleetCommand::Down { dir }) => {
            let stopped = fleet::down(&dir)
                .with_context(|| format!("stopping the fleet in {}", dir.display()))?;
            println!("stopped {stopped} TPMs");
            Ok(())
        }
    }
}
