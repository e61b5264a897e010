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
    /// Play N devices' token traffic against one real server and report what it carries:
    /// grants/s, latency, server CPU and memory, database size (software ES256 keys, no TPM).
    FleetLoad(FleetLoadArgs),
    /// Print COUNT pre-signed DPoP proofs (one software ES256 key, `iat` now, each its own
    /// `jti`) for METHOD and URL, one per line: input for load generators such as wrk.
    DpopProofs {
        /// The `htu`: the URL the proofs are for.
        #[arg(long)]
        url: String,
        /// The `htm`.
        #[arg(long, default_value = "POST")]
        method: String,
        /// How many proofs.
        #[arg(long)]
        count: u64,
    },
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

/// `fleet-load` options. Run it pinned: `taskset -c 0 hallmark-hwsim fleet-load --server-cpu 1`.
#[derive(Debug, clap::Args)]
pub struct FleetLoadArgs {
    /// Fleet sizes to play one after the other, e.g. `100000,200000,400000`.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub devices: Vec<usize>,
    /// Access token lifetime, seconds.
    #[arg(long, default_value_t = 300)]
    pub token_lifetime: u64,
    /// Renew a token at this fraction of its life.
    #[arg(long, default_value_t = 0.8)]
    pub renew_at: f64,
    /// ± this fraction of its life, uniformly.
    #[arg(long, default_value_t = 0.1)]
    pub jitter: f64,
    /// Share of renewals that come with a device-flow login (authorization request + a poll).
    #[arg(long, default_value_t = 0.01)]
    pub device_flow_share: f64,
    /// Introspections by a resource server per token.
    #[arg(long, default_value_t = 1.0)]
    pub introspections: f64,
    /// Unmeasured steady load before each measurement, seconds.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Measured steady load per fleet size, seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Worker threads: the most requests in flight.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Pin the server to this CPU with taskset.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// The p99 the summary judges fleet sizes by, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// The hallmark-server binary (default: beside this one).
    #[arg(long)]
    pub server: Option<PathBuf>,
}
