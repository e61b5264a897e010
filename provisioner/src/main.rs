//! `hallmark-provision`: provision one device or a manifest of them; exit 1 if any device was
//! not provisioned, 2 if the command could not run, 86 when the test-only fault hook fired.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;

use hallmark_provision::batch::{self, Progress};
use hallmark_provision::cli::{Cli, Command, Common};
use hallmark_provision::{DeviceSpec, Station, StationClient, StationCredentials, Step};

/// Exit status of a process stopped by the test-only fault hook.
const FAULT_EXIT: i32 = 86;

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
        dpop,
    } = cli.common;
    let server = server.context("--server is required")?;
    let ca = ca.context("--ca is required")?;
    let station = station.context("--station is required")?;
    let credentials = StationCredentials::load(&station)?;
    let ca_pem =
        std::fs::read(&ca).with_context(|| format!("cannot read the CA {}", ca.display()))?;
    let client = StationClient::new(&server, &ca, &ca_pem, credentials)?;
    let mut station = Station::new(client, ca_pem, reset_lost).with_dpop(dpop);
    // Test-only fault hook: `HALLMARK_PROVISION_FAULT=after:<step>` exits the process abruptly
    // right after the first device passes that step, as a power cut or a kill would (no
    // destructors, no report line, nothing flushed). Read here only; the library never looks.
    if let Ok(value) = std::env::var("HALLMARK_PROVISION_FAULT") {
        let step = value
            .strip_prefix("after:")
            .and_then(Step::from_name)
            .with_context(|| format!("HALLMARK_PROVISION_FAULT={value} names no step"))?;
        station = station.with_observer(Arc::new(move |serial: &str, passed: Step| {
            if passed == step {
                eprintln!(
                    "hallmark-provision: fault injected after {} of {serial}",
                    step.name()
                );
                std::process::exit(FAULT_EXIT);
            }
        }));
    }
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
