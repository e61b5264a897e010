//! `hallmark-agent`: parse flags, install the signal and event hooks, run the subcommand, map
//! the outcome to an exit code (0 ok, 1 error with one line on stderr, 86 injected fault).

mod cli;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser as _;
use hallmark_agent::{Event, RotationStep};

/// Exit status of a process stopped by the test-only fault hook.
const FAULT_EXIT: i32 = 86;
/// The fault hook's name for "a refresh answer arrived, not yet sealed".
const REFRESH_ANSWERED: &str = "refresh_answered";

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The TSS libraries log every failed connection attempt to stderr; the agent reports TPM
    // errors itself, in one line. An operator debugging the TSS sets TSS2_LOG explicitly.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    // Test-only fault hook: `HALLMARK_AGENT_FAULT=after:<step>` exits the process abruptly
    // right after that rotation step, as a power cut would (no destructors, no cleanup);
    // `after:refresh_answered` right after a refresh answer arrived, before its new refresh
    // token is sealed (as if the answer had been lost in transit).
    let fault_name = std::env::var("HALLMARK_AGENT_FAULT")
        .ok()
        .and_then(|v| v.strip_prefix("after:").map(str::to_owned));
    let fault = fault_name.as_deref().and_then(RotationStep::from_name);
    let fault_on_refresh = fault_name.as_deref() == Some(REFRESH_ANSWERED);
    // Test-only clock fault: `HALLMARK_AGENT_CLOCK_SKEW=<signed seconds>` moves the agent's
    // local clock, as on a device with no RTC battery (-7200: two hours behind). Read here
    // only and handed down as a value; the library never looks at the environment.
    let clock_skew = match std::env::var("HALLMARK_AGENT_CLOCK_SKEW") {
        Err(_) => 0,
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(seconds) => seconds,
            Err(_) => {
                eprintln!("hallmark-agent: error: HALLMARK_AGENT_CLOCK_SKEW={v} is not seconds");
                return ExitCode::FAILURE;
            }
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("hallmark-agent: error: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let observer = move |event: &Event| {
        match event {
            Event::Rotation(step) if Some(*step) == fault => {
                eprintln!("hallmark-agent: fault injected after {}", step.name());
                std::process::exit(FAULT_EXIT);
            }
            Event::RefreshAnswered if fault_on_refresh => {
                eprintln!("hallmark-agent: fault injected after {REFRESH_ANSWERED}");
                std::process::exit(FAULT_EXIT);
            }
            _ => {}
        }
        log(event);
    };
    match cli::execute(cli, clock_skew, observer, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: every error message already names its cause.
            let text = format!("{e}").replace('\n', " ");
            eprintln!("hallmark-agent: error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// Operator-facing log lines on stderr; events never carry secrets.
fn log(event: &Event) {
    match event {
        Event::Rotation(step) => eprintln!("hallmark-agent: rotation: {}", step.name()),
        Event::RotationUnsupported => eprintln!(
            "hallmark-agent: the server offers no device_credentials_endpoint; keeping the \
             factory credential"
        ),
        Event::RekeyAbandoned { reason } => eprintln!(
            "hallmark-agent: key rotation abandoned, keeping the old key: the server refused the \
             new one ({reason})"
        ),
        Event::TokenRenewed { expires_at } => {
            eprintln!("hallmark-agent: new access token, expires at {expires_at}")
        }
        Event::RefreshTokenRotated => eprintln!("hallmark-agent: refresh token rotated and sealed"),
        Event::RefreshTokenKept => {
            eprintln!("hallmark-agent: the server kept the refresh token (not rotated)")
        }
        Event::Retrying { error, after } => eprintln!(
            "hallmark-agent: {error}; retrying in {:.1} s",
            after.as_secs_f64()
        ),
        Event::Serving {
            socket,
            allowed_uids,
        } => {
            let uids: Vec<String> = allowed_uids.iter().map(u32::to_string).collect();
            eprintln!(
                "hallmark-agent: serving tokens on {socket} to uids {}",
                uids.join(", ")
            )
        }
        Event::SocketRefused { uid, count: 1 } => {
            eprintln!("hallmark-agent: socket: refused a process of uid {uid} (not allowed)")
        }
        Event::SocketRefused { uid, count } => eprintln!(
            "hallmark-agent: socket: refused {count} connections since the last report, the \
             latest from uid {uid} (not allowed)"
        ),
        Event::ClockOffset { offset_s } => eprintln!(
            "hallmark-agent: device clock is {} s {} the server; correcting assertion times",
            offset_s.unsigned_abs(),
            if *offset_s > 0 { "behind" } else { "ahead of" }
        ),
        Event::RekeyScheduled {
            key_created_at,
            due_at,
        } => eprintln!(
            "hallmark-agent: device key made {}; next key rotation due at {} (device clock)",
            cli::date(*key_created_at),
            cli::date(*due_at)
        ),
        Event::RekeyDue {
            key_created_at: Some(at),
        } => eprintln!(
            "hallmark-agent: the device key (made {}) is due for rotation; rotating it",
            cli::date(*at)
        ),
        Event::RekeyDue { .. } => {
            eprintln!("hallmark-agent: finishing an interrupted key rotation")
        }
        Event::RekeyFailed { error, after } => eprintln!(
            "hallmark-agent: scheduled key rotation failed, keeping the current key: {error}; \
             retrying in {:.1} h",
            after.as_secs_f64() / 3600.0
        ),
        _ => {}
    }
}
