//! `hallmark-hwsim demo`: the whole life of three simulated devices in one command, driving the
//! real binaries found next to this one — server up, station client, fleet up, batch
//! provisioning, first-boot rotation, a token from each device, then the device authorization
//! grant on one of them, approved in a browser (or, with `--non-interactive`, through the same
//! page by an HTTP client). Everything it starts is stopped and its directory removed on the
//! way out, failure and Ctrl-C included.

mod guard;
mod web;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use guard::{Child, FleetGuard, Workdir};
use web::Web;

/// How many devices the demo brings up.
const DEVICES: usize = 3;
/// How long the demo waits for a person to approve the device in a browser.
const APPROVAL_WAIT: Duration = Duration::from_secs(600);

/// Demo options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Approve the device flow with an HTTP client instead of waiting for a person.
    pub non_interactive: bool,
    /// Keep the working directory (and print where it is) instead of removing it.
    pub keep: bool,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A binary the demo drives is missing.
    #[error("{} not found next to hallmark-hwsim; run: cargo build --workspace --bins", path.display())]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A step failed.
    #[error("{step}: {reason}")]
    Step {
        /// The step.
        step: &'static str,
        /// What went wrong, one line.
        reason: String,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

fn step_error(step: &'static str) -> impl Fn(String) -> DemoError {
    move |reason| DemoError::Step { step, reason }
}

/// Runs the demo; output goes to stdout as it happens.
pub fn run(options: Options) -> Result<(), DemoError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| step_error("install a signal handler")(e.to_string()))?;
    }
    let bins = Binaries::beside_this_one()?;
    let work =
        Workdir::new(options.keep).map_err(|e| step_error("create a work dir")(e.to_string()))?;
    let dir = work.path().to_path_buf();

    heading(&format!(
        "{DEVICES} simulated devices (their manufacturer's CA signs each EK certificate)"
    ));
    let fleet_dir = dir.join("fleet");
    let fleet =
        FleetGuard::up(&fleet_dir, DEVICES).map_err(|e| step_error("fleet up")(one_line(&e)))?;
    for d in fleet.devices() {
        println!("  {} {} (swtpm pid {})", d.serial, d.tcti, d.pid);
    }
    check(&stop)?;

    // The server trusts the fleet's "TPM manufacturer": every registration must carry an EK
    // certificate that chains to it (the strongest mode).
    let ek_roots = dir.join("ek-roots.pem");
    let bundle = fleet_ek_roots(&fleet_dir)?;
    std::fs::write(&ek_roots, bundle)
        .map_err(|e| step_error("write ek-roots.pem")(e.to_string()))?;
    println!(
        "  TPM manufacturer CA for the server: {}",
        ek_roots.display()
    );

    heading("Authorization server");
    let port = web::free_port().map_err(step_error("find a free port"))?;
    let issuer = format!("https://localhost:{port}");
    let data = dir.join("server");
    let init = output(
        Command::new(&bins.server)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--issuer", &issuer]),
        "hallmark-server init",
    )?;
    let init: serde_json::Value = serde_json::from_slice(&init)
        .map_err(|e| step_error("hallmark-server init")(e.to_string()))?;
    let field = |name: &str| {
        init[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| step_error("hallmark-server init")(format!("no {name} in its output")))
    };
    let ca_cert = PathBuf::from(field("ca_cert")?);
    let (admin_id, admin_secret) = (field("admin_client_id")?, field("admin_client_secret")?);
    let password = web::random_token().map_err(step_error("make a password"))?;
    let mut add_user = Command::new(&bins.server);
    add_user
        .args(["user", "add", "demo", "--data-dir"])
        .arg(&data);
    run_with_stdin(
        &mut add_user,
        &format!("{password}\n"),
        "hallmark-server user add",
    )?;
    let log = std::fs::File::create(dir.join("server.log"))
        .map_err(|e| step_error("create server.log")(e.to_string()))?;
    let _server = Child::spawn(
        Command::new(&bins.server)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--ek-roots")
            .arg(&ek_roots)
            .stdout(Stdio::null())
            .stderr(log),
        "hallmark-server serve",
    )?;
    let web = Web::new(&issuer, &ca_cert).map_err(step_error("trust the server's CA"))?;
    web.wait_ready(Duration::from_secs(30), &stop)
        .map_err(step_error("start the server"))?;
    println!("  serving {issuer} (TLS, CA {})", ca_cert.display());
    println!("  attestation required; EK certificates checked against the TPM manufacturer CA");

    heading("Factory station");
    let station = web
        .create_station(&admin_id, &admin_secret)
        .map_err(step_error("register the station client"))?;
    let station_file = dir.join("station.json");
    guard::write_private(&station_file, station.to_string().as_bytes())
        .map_err(|e| step_error("write station.json")(e.to_string()))?;
    println!(
        "  station client {} (credentials in {}, mode 0600)",
        station["client_id"].as_str().unwrap_or("?"),
        station_file.display()
    );

    heading("Provisioning (hallmark-provision batch)");
    let report = dir.join("report.jsonl");
    let summary = output(
        Command::new(&bins.provision)
            .arg("--server")
            .arg(&issuer)
            .arg("--ca")
            .arg(&ca_cert)
            .arg("--station")
            .arg(&station_file)
            .arg("batch")
            .arg("--manifest")
            .arg(fleet_dir.join("manifest.csv"))
            .arg("--report")
            .arg(&report)
            .args(["--parallel", &DEVICES.to_string()])
            .stderr(Stdio::inherit()),
        "hallmark-provision batch",
    )?;
    for line in std::fs::read_to_string(&report).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        println!(
            "  {} {} client_id={} ({} ms)",
            v["serial"].as_str().unwrap_or("?"),
            v["outcome"].as_str().unwrap_or("?"),
            v["client_id"].as_str().unwrap_or("-"),
            v["duration_ms"]
        );
    }
    println!("  summary: {}", String::from_utf8_lossy(&summary).trim());
    check(&stop)?;

    heading("First boot: each agent rotates its factory secret to a TPM-resident key");
    for d in fleet.devices() {
        let config = d.config_out.to_string_lossy().into_owned();
        let enrolled = output(
            Command::new(&bins.agent).args(["--config", &config, "enroll"]),
            "hallmark-agent enroll",
        )?;
        println!(
            "  {} enrolled: {}",
            d.serial,
            String::from_utf8_lossy(&enrolled).trim()
        );
        let view = report_client(&report, &d.serial)
            .ok_or_else(|| step_error("read the report")(format!("no line for {}", d.serial)))
            .and_then(|id| {
                web.device_view(&admin_id, &admin_secret, &id)
                    .map_err(step_error("look the device up"))
            })?;
        let a = &view["attestation"];
        println!(
            "  {} attestation: EK certificate {} (issuer {}), key {} by credential activation",
            d.serial,
            a["ek_certificate"].as_str().unwrap_or("?"),
            a["ek_issuer"].as_str().unwrap_or("-"),
            a["key"].as_str().unwrap_or("?")
        );
        let token = output(
            Command::new(&bins.agent).args(["--config", &config, "token"]),
            "hallmark-agent token",
        )?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        println!(
            "  {} token: {}…{} ({} chars; {})",
            d.serial,
            token.chars().take(16).collect::<String>(),
            token
                .chars()
                .skip(token.len().saturating_sub(8))
                .collect::<String>(),
            token.len(),
            web::describe_jwt(&token)
        );
        check(&stop)?;
    }

    heading("Device authorization grant (RFC 8628) on one device");
    let first = fleet
        .devices()
        .first()
        .ok_or_else(|| step_error("fleet up")("no devices".into()))?;
    let config = first.config_out.to_string_lossy().into_owned();
    let mut login = Child::spawn(
        Command::new(&bins.agent)
            .args(["--config", &config, "login"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        "hallmark-agent login",
    )?;
    let lines = login
        .stdout_lines()
        .ok_or_else(|| step_error("hallmark-agent login")("no stdout".into()))?;
    let Shown { user_code, uri, qr } = read_code(&lines, &stop)?;
    let complete = format!("{uri}?user_code={user_code}");
    println!(
        "  device {} asks to be connected to an account",
        first.serial
    );
    println!("  open:      {complete}");
    println!("  user code: {user_code}");
    if options.non_interactive {
        println!("  --non-interactive: signing in as `demo` and approving through {uri}");
        let consent = web
            .approve(&user_code, "demo", &password)
            .map_err(step_error("approve on the verification page"))?;
        println!("  the page showed: {consent}");
    } else {
        for line in &qr {
            println!("  {line}");
        }
        println!(
            "  sign in as `demo`, password {password} (demo only), check the device and approve."
        );
        println!(
            "  (the certificate is signed by the demo's own CA, {}: accept the browser's warning)",
            ca_cert.display()
        );
    }
    let deadline = Instant::now() + APPROVAL_WAIT;
    let done = loop {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("logged in") => break line,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(step_error("hallmark-agent login")(format!(
                    "exited: {}",
                    login.wait_status()
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        check(&stop)?;
        if Instant::now() > deadline {
            return Err(step_error("device flow")("nobody approved in time".into()));
        }
    };
    println!("  {} {}", first.serial, done);
    let status = output(
        Command::new(&bins.agent).args(["--config", &config, "status"]),
        "hallmark-agent status",
    )?;
    for line in String::from_utf8_lossy(&status).lines() {
        println!("  | {line}");
    }

    heading("Done");
    if options.keep {
        println!("  kept {}", dir.display());
    } else {
        println!(
            "  stopping the server and the fleet, removing {}",
            dir.display()
        );
    }
    drop(login);
    drop(fleet);
    Ok(())
}

/// The binaries the demo drives.
struct Binaries {
    server: PathBuf,
    provision: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    fn beside_this_one() -> Result<Self, DemoError> {
        let exe = std::env::current_exe()
            .map_err(|e| step_error("find hallmark-hwsim")(e.to_string()))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(DemoError::MissingBinary { path })
            }
        };
        Ok(Binaries {
            server: find("hallmark-server")?,
            provision: find("hallmark-provision")?,
            agent: find("hallmark-agent")?,
        })
    }
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn check(stop: &AtomicBool) -> Result<(), DemoError> {
    if stop.load(Ordering::Relaxed) {
        return Err(DemoError::Interrupted);
    }
    Ok(())
}

/// Runs a command to completion; its stdout, or its stderr's last line as the error.
fn output(cmd: &mut Command, step: &'static str) -> Result<Vec<u8>, DemoError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| step_error(step)(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(step_error(step)(format!("{} ({})", last, out.status)));
    }
    Ok(out.stdout)
}

fn run_with_stdin(cmd: &mut Command, input: &str, step: &'static str) -> Result<(), DemoError> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| step_error(step)(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| step_error(step)(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| step_error(step)(e.to_string()))?;
    if !out.status.success() {
        return Err(step_error(step)(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        ));
    }
    Ok(())
}

/// The client_id the provisioning report gives `serial`.
fn report_client(report: &Path, serial: &str) -> Option<String> {
    std::fs::read_to_string(report)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["serial"] == serial)
        .and_then(|v| v["client_id"].as_str().map(str::to_owned))
}

/// The fleet CA's root and issuing certificates: the `ek_roots` bundle for its TPMs.
fn fleet_ek_roots(fleet_dir: &Path) -> Result<String, DemoError> {
    let fail = |e: String| step_error("read the fleet's CA")(e);
    let ca = crate::LocalCa::at(&fleet_dir.join("ca")).map_err(|e| fail(e.to_string()))?;
    ca.ek_roots_pem().map_err(|e| fail(e.to_string()))
}

/// What `hallmark-agent login` shows a person: the user code, the verification URI and the QR
/// code of the complete URI (if it printed one).
struct Shown {
    user_code: String,
    uri: String,
    qr: Vec<String>,
}

/// Reads `hallmark-agent login`'s output up to its closing "Open the URI…" line.
fn read_code(lines: &mpsc::Receiver<String>, stop: &AtomicBool) -> Result<Shown, DemoError> {
    let (mut code, mut uri, mut qr, mut in_qr) = (None, None, Vec::new(), false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut settled: Option<Instant> = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(v) = line.strip_prefix("user_code:") {
                    code = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("verification_uri:") {
                    uri = Some(v.trim().to_owned());
                } else if line.starts_with("verification_uri_complete:") {
                    in_qr = true;
                } else if line.starts_with("Open the URI") {
                    break;
                } else if in_qr {
                    qr.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(step_error("hallmark-agent login")(
                    "exited before showing a code".into(),
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        check(stop)?;
        if code.is_some() && uri.is_some() {
            // Without the closing line (another agent version), settle after a moment.
            if settled.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2) {
                break;
            }
        } else if Instant::now() > deadline {
            return Err(step_error("hallmark-agent login")(
                "no user code after 60 s".into(),
            ));
        }
    }
    match (code, uri) {
        (Some(user_code), Some(uri)) => Ok(Shown { user_code, uri, qr }),
        _ => Err(step_error("hallmark-agent login")(
            "no user code shown".into(),
        )),
    }
}

/// Lines of a child's stdout, read on a thread.
pub(crate) fn line_channel(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line.replace('\n', " ")
}
