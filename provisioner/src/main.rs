//! `hallmark-provision`: provision one device or a manifest of them; exit 1 if any device was
//! not provisioned, 2 if the command could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use hallmark_provision::batch::{self, Progress};
use hallmark_provision::{DeviceSpec, Station, StationClient, StationCredentials};

/// Hallmark's factory-line station: registers devices and seals their factory secrets.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// The server's issuer URL, e.g. https://auth.example:8443.
    #[arg(long, global = true, env = "HALLMARK_SERVER")]
    server: Option<String>,
    /// PEM of the CA that signed the server's certificate (pinned; also written beside each
    /// device's config as ca.pem).
    #[arg(long, global = true, env = "HALLMARK_CA")]
    ca: Option<PathBuf>,
    /// Station credentials: JSON {"client_id","client_secret"}, mode 0600.
    #[arg(long, global = true, env = "HALLMARK_STATION")]
    station: Option<PathBuf>,
    /// Delete and redo registrations whose factory secret was lost (needs devices:admin).
    #[arg(long, global = true)]
    reset_lost: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision one device; prints its report line.
    Device(DeviceArgs),
    /// Provision a CSV manifest (serial,model,tcti,config_out); prints a summary line.
    Batch(BatchArgs),
}

#[derive(Debug, Args)]
struct DeviceArgs {
    #[arg(long)]
    serial: String,
    #[arg(long)]
    model: String,
    /// TCTI of the device's TPM, e.g. swtpm:host=127.0.0.1,port=2321.
    #[arg(long)]
    tcti: String,
    /// Where to write the device's agent config.
    #[arg(long)]
    config_out: PathBuf,
}

#[derive(Debug, Args)]
struct BatchArgs {
    #[arg(long)]
    manifest: PathBuf,
    /// JSON-lines report, appended to.
    #[arg(long)]
    report: PathBuf,
    /// Devices provisioned at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// No progress bar even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!(
                "hallmark-provision: {}",
                format!("{err:#}").replace('\n', " ")
            );
            ExitCode::from(2)
        }
    }
}

/// Whether every device ended provisioned.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let Common {
        server,
        ca,
        station,
        reset_lost,
    } = cli.common;
    let server = server.context("--server is required")?;
    let ca = ca.context("--ca is required")?;
    let station = station.context("--station is required")?;
    let credentials = StationCredentials::load(&station)?;
    let ca_pem =
        std::fs::read(&ca).with_context(|| format!("cannot read the CA {}", ca.display()))?;
    let client = StationClient::new(&server, &ca, &ca_pem, credentials)?;
    let station = Station::new(client, ca_pem, reset_lost);
    match cli.command {
        Command::Device(d) => {
            let spec = DeviceSpec {
                serial: d.serial,
                model: d.model,
                tcti: d.tcti,
                config_out: d.config_out,
            };
            let report = station.provision(&spec);
            println!("{}", report.to_json_line());
            Ok(report.outcome.is_success())
        }
        Command::Batch(b) => {
            let specs = batch::read_manifest(&b.manifest)?;
            let progress = if b.no_progress {
                Progress::Hidden
            } else {
                Progress::Auto
            };
            let summary = batch::run(&station, &specs, &b.report, b.parallel, progress)?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(summary.all_succeeded())
        }
    }
}
