//! The `hallmark-agent` command line: flags (clap) and one function per subcommand, each a thin
//! layer over [`hallmark_agent::Agent`] that formats its answer for a terminal or for JSON.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hallmark_agent::config::DEFAULT_CONFIG_PATH;
use hallmark_agent::socket::{self, Answer};
use hallmark_agent::{Agent, Clock, DeviceAuthorization, Event, RotationState};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// Hallmark device agent: TPM-held identity, OAuth 2.0 tokens for the device's software.
#[derive(Debug, Parser)]
#[command(name = "hallmark-agent", version)]
pub struct Cli {
    /// Agent config file.
    #[arg(long, env = "HALLMARK_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Finish first-boot rotation, then keep a token fresh and serve it on the Unix socket.
    Run,
    /// Print a fresh access token (from the running agent's socket when no scope is given).
    Token {
        /// Scope to request instead of the configured ones.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Print a DPoP proof (RFC 9449) for a request to METHOD URL, signed in the TPM by the key
    /// the running agent's token is bound to, with `ath` for that token (`dpop = true`). With
    /// --with-token, the access token follows on a second line.
    Proof {
        /// The request's method (`htm`).
        #[arg(long)]
        method: String,
        /// The request's URL (`htu`).
        #[arg(long)]
        url: String,
        /// A resource server's DPoP-Nonce.
        #[arg(long)]
        nonce: Option<String>,
        /// Also print the access token the proof covers.
        #[arg(long)]
        with_token: bool,
    },
    /// Show client_id, credential state, server and token expiry.
    Status {
        /// As JSON, with the active public JWK.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the factory credential to a TPM-resident key now.
    Enroll {
        /// Keep retrying while the server or TPM is unreachable for up to this many seconds.
        #[arg(long, default_value_t = 120)]
        retry_for: u64,
    },
    /// Replace the device's TPM key with a new one now (key-to-key rotation, after enroll).
    Rekey,
    /// Log in with the device authorization grant (RFC 8628).
    Login,
}

/// Runs `command`; `observer` sees every agent event (the fault hook lives there).
/// `clock_skew` moves the agent's local clock by that many seconds (the test-only clock
/// fault; 0 otherwise).
pub fn execute(
    cli: Cli,
    clock_skew: i64,
    observer: impl FnMut(&Event) + Send + 'static,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let config = hallmark_agent::AgentConfig::load(&cli.config)?;
    let socket_path = config.socket_path();
    // Clones share the learned offset; status reads the device time from the same clock.
    let clock = Clock::skewed(clock_skew);
    let mut agent = Agent::with_clock(config, clock.clone())?;
    agent.observe(observer);
    match cli.command {
        Command::Run => agent.run(stop)?,
        Command::Token { scope } => {
            if scope.is_none() {
                if let Ok(Answer::Token { access_token, .. }) = socket::fetch(&socket_path) {
                    println!("{access_token}");
                    return Ok(());
                }
            }
            let token = agent.token(scope.as_deref())?;
            println!("{}", token.token);
        }
        Command::Proof {
            method,
            url,
            nonce,
            with_token,
        } => {
            // From the running agent: it holds the token the proof must cover.
            match socket::fetch_proof(&socket_path, &method, &url, nonce.as_deref())
                .with_context(|| format!("no agent answers on {}", socket_path.display()))?
            {
                Answer::Proof {
                    proof,
                    access_token,
                    ..
                } => {
                    println!("{proof}");
                    if with_token {
                        println!("{access_token}");
                    }
                }
                Answer::Error {
                    error,
                    error_description,
                    ..
                } => anyhow::bail!("{error}: {error_description}"),
                other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            }
        }
        Command::Status { json } => status(&mut agent, json, &socket_path, &clock)?,
        Command::Enroll { retry_for } => {
            let credential = agent.enroll(Duration::from_secs(retry_for))?;
            println!("{}", serde_json::to_string(&credential)?);
        }
        Command::Rekey => {
            let credential = agent.rekey()?;
            println!("{}", serde_json::to_string(&credential)?);
        }
        Command::Login => {
            let login = agent.login(show_code)?;
            let expires = date(i64::try_from(login.access_token.expires_at).unwrap_or(i64::MAX));
            if login.refresh_token {
                println!(
                    "logged in: the server issued an access token (expires {expires}) and a \
                     refresh token, sealed by the TPM; `run` and `token` renew from it"
                );
            } else {
                println!(
                    "logged in: the server issued an access token (expires {expires}) but no \
                     refresh token. The access token is sealed by the TPM and served until it \
                     expires; the next one needs another `hallmark-agent login` (many servers \
                     issue a refresh token only when the scope includes offline_access)"
                );
            }
        }
    }
    Ok(())
}

fn status(
    agent: &mut Agent,
    json: bool,
    socket_path: &std::path::Path,
    clock: &Clock,
) -> anyhow::Result<()> {
    let status = agent.status()?;
    let expires_at = match socket::fetch(socket_path) {
        Ok(Answer::Token { expires_at, .. }) => Some(expires_at),
        _ => None,
    };
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["token_expires_at"] = expires_at.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let credential = match (status.credential, status.slot, &status.rotation) {
        ("key", Some(slot), _) => format!("key slot {slot}"),
        ("rotating", Some(slot), _) => format!("rotating (new key in slot {slot})"),
        (
            "rekeying",
            _,
            RotationState::Rekeying { from, to, .. }
            | RotationState::RekeyRegistered { from, to, .. },
        ) => {
            let step = match status.rotation {
                RotationState::RekeyRegistered { .. } => "registered, not yet proven",
                _ => "not yet registered",
            };
            format!("rekeying (key slot {from} in use; new key for slot {to} {step})")
        }
        (other, _, _) => other.to_owned(),
    };
    let kid = status.jwk.as_ref().and_then(|j| j["kid"].as_str());
    let mut out = std::io::stdout().lock();
    writeln!(out, "client_id:  {}", status.client_id)?;
    if let Some(serial) = &status.serial {
        writeln!(out, "serial:     {serial}")?;
    }
    writeln!(out, "server:     {}", status.server)?;
    writeln!(out, "credential: {credential}")?;
    if let Some(kid) = kid {
        writeln!(out, "kid:        {kid}")?;
        let attestation = match status.key_attestation {
            "attested" => {
                "attested (the server proved by credential activation that the key is in this TPM)"
            }
            "unattested" => {
                "unattested (the server accepted the key without proof that it is in this TPM)"
            }
            _ => "unknown (not recorded on this device)",
        };
        writeln!(out, "key:        {attestation}")?;
    }
    if let Some(at) = status.key_created_at {
        writeln!(out, "key made:   {}", date(at))?;
    }
    let now = clock.local_now();
    let rekey = match (status.next_rekey_at, &status.rotation) {
        (Some(_), RotationState::Rekeying { .. } | RotationState::RekeyRegistered { .. }) => {
            "due now (an interrupted rekey; the next start finishes it)".to_owned()
        }
        (Some(at), _) if at <= now => format!("due since {} (run rekeys it)", date(at)),
        (Some(at), _) => format!("due at {} (in {})", date(at), span(at - now)),
        (None, _) if agent.config().rekey_interval_days.is_never() => {
            "not scheduled (rekey_interval_days = 0)".to_owned()
        }
        (None, RotationState::Done { since: None, .. }) => {
            "scheduled from the agent's next start (key age not yet recorded)".to_owned()
        }
        (None, _) => "not scheduled (no device key in use)".to_owned(),
    };
    writeln!(out, "rekey:      {rekey}")?;
    let token = match expires_at {
        Some(at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            format!("expires at {at} (in {} s)", at.saturating_sub(now))
        }
        None => "none cached (no agent running on the socket)".to_owned(),
    };
    writeln!(out, "token:      {token}")?;
    Ok(())
}

/// `unix` (device clock) as an HTTP-date (RFC 9110 §5.6.7), the agent's one date format; a
/// time before 1970 or after 9999 (which httpdate cannot format) is shown as the raw number.
pub fn date(unix: i64) -> String {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    match u64::try_from(unix) {
        Ok(secs) if secs < YEAR_10000 => {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        }
        _ => format!("{unix} (Unix seconds)"),
    }
}

/// A positive span of seconds, roughly, for a person.
fn span(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} h", s / 3600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Shows the user code, the verification URI and a QR code of the complete URI (RFC 8628 §3.3).
fn show_code(auth: &DeviceAuthorization) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "verification_uri: {}", auth.verification_uri);
    let _ = writeln!(out, "user_code: {}", auth.user_code);
    if let Some(complete) = &auth.verification_uri_complete {
        let _ = writeln!(out, "verification_uri_complete: {complete}");
        if let Ok(qr) = QrCode::new(complete.as_bytes()) {
            let image = qr
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .build();
            let _ = writeln!(out, "{image}");
        }
    }
    let _ = writeln!(
        out,
        "Open the URI on a phone or computer, sign in and approve code {} (valid {} s).",
        auth.user_code, auth.expires_in
    );
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_http_dates_and_nonsense_as_numbers() {
        assert_eq!(date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(date(-5), "-5 (Unix seconds)");
        assert_eq!(date(i64::MAX), format!("{} (Unix seconds)", i64::MAX));
        assert_eq!(span(30), "30 s");
        assert_eq!(span(3 * 3600), "3 h");
        assert_eq!(span(3 * 86_400 + 5), "3 days");
    }
}
