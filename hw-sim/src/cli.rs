//! `hallmark-hwsim`'s command line (clap): one TPM, fleets, and the demo.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Simulated hardware for Hallmark: software TPMs on loopback.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    /// The subcommand.
    pub command: Top,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
// Exhaustive on purpose: the binary handles every subcommand.
pub enum Top {
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

/// `tpm` subcommands.
#[derive(Debug, Subcommand)]
// Exhaustive on purpose: the binary handles every subcommand.
pub enum TpmCommand {
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

/// `fleet` subcommands.
#[derive(Debug, Subcommand)]
// Exhaustive on purpose: the binary handles every subcommand.
pub enum FleetCommand {
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
