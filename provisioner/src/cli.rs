//! `hallmark-provision`'s command line (clap): shared station flags and the `device` and
//! `batch` subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Hallmark's factory-line station: registers devices and seals their factory secrets.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Station flags.
    #[command(flatten)]
    pub common: Common,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes (also from HALLMARK_* variables).
#[derive(Debug, Args)]
pub struct Common {
    /// The server's issuer URL, e.g. https://auth.example:8443.
    #[arg(long, global = true, env = "HALLMARK_SERVER")]
    pub server: Option<String>,
    /// PEM of the CA that signed the server's certificate (pinned; also written beside each
    /// device's config as ca.pem).
    #[arg(long, global = true, env = "HALLMARK_CA")]
    pub ca: Option<PathBuf>,
    /// Station credentials: JSON {"client_id","client_secret"}, mode 0600.
    #[arg(long, global = true, env = "HALLMARK_STATION")]
    pub station: Option<PathBuf>,
    /// Delete and redo registrations whose factory secret was lost and which this station
    /// cannot withdraw itself (another station's, or older than 15 minutes; needs
    /// devices:admin).
    #[arg(long, global = true)]
    pub reset_lost: bool,
    /// Register devices as DPoP-bound (RFC 9449 §5.2: the server gives them no bearer token,
    /// only tokens bound to their TPM key) and write `dpop = true` into their agent configs.
    #[arg(long, global = true)]
    pub dpop: bool,
}

/// What to provision.
#[derive(Debug, Subcommand)]
// Exhaustive on purpose: the binary handles every subcommand.
pub enum Command {
    /// Provision one device; prints its report line.
    Device(DeviceArgs),
    /// Provision a CSV manifest (serial,model,tcti,config_out); prints a summary line.
    Batch(BatchArgs),
}

/// `device` flags.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device's serial number.
    #[arg(long)]
    pub serial: String,
    /// The device's model.
    #[arg(long)]
    pub model: String,
    /// TCTI of the device's TPM, e.g. swtpm:host=127.0.0.1,port=2321.
    #[arg(long)]
    pub tcti: String,
    /// Where to write the device's agent config.
    #[arg(long)]
    pub config_out: PathBuf,
}

/// `batch` flags.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// CSV manifest: serial,model,tcti,config_out (TCTIs quoted).
    #[arg(long)]
    pub manifest: PathBuf,
    /// JSON-lines report, appended to.
    #[arg(long)]
    pub report: PathBuf,
    /// Devices provisioned at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}
