//! `hallmark-hwsim`: start one simulated TPM, or a fleet of them, from the command line.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use hallmark_hwsim::cli::{Cli, FleetCommand, FleetLoadArgs, Top, TpmCommand};
use hallmark_hwsim::{demo, dpop_proofs, fleet, fleet_load, Swtpm};

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
        Top::FleetLoad(args) => {
            fleet_load::run(&load_options(args))?;
            Ok(())
        }
        Top::DpopProofs { url, method, count } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            Ok(dpop_proofs::write(&mut out, &method, &url, count, now)?)
        }
        Top::Fleet(FleetCommand::Down { dir }) => {
            let stopped = fleet::down(&dir)
                .with_context(|| format!("stopping the fleet in {}", dir.display()))?;
            println!("stopped {stopped} TPMs");
            Ok(())
        }
    }
}

fn load_options(args: FleetLoadArgs) -> fleet_load::Options {
    fleet_load::Options {
        server_bin: args.server,
        fleets: args.devices,
        token_lifetime: args.token_lifetime,
        renew_at: args.renew_at,
        jitter: args.jitter,
        device_flow_share: args.device_flow_share,
        introspections: args.introspections,
        warmup: std::time::Duration::from_secs(args.warmup),
        duration: std::time::Duration::from_secs(args.duration),
        workers: args.workers,
        server_cpu: args.server_cpu,
        p99_limit_ms: args.p99_limit_ms,
    }
}
