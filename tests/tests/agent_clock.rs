//! A device with a wrong wall clock (`HALLMARK_AGENT_CLOCK_SKEW`, the test-only clock fault):
//! it learns the server's time from HTTP `Date` headers (RFC 9110 §6.6.1) and signs its
//! RFC 7523 assertions with it, so first-boot rotation and tokens work two hours behind or
//! three hours ahead, where uncorrected assertions are refused; and a refused assertion is
//! signed again once, and only once, when the refusal's `Date` shows the time was off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::oauth::assertion;
use hallmark_agent::tpm::{KeySlot, Tpm};
use hallmark_e2e::device::Device;
use hallmark_e2e::server::{now, TestServer};
use hallmark_e2e::stand_in::write_stand_in_config;
use hallmark_hwsim::Swtpm;
use serde_json::Value;

const TWO_HOURS_BEHIND: i64 = -2 * 3600;
const THREE_HOURS_AHEAD: i64 = 3 * 3600;

#[test]
fn a_device_two_hours_behind_rotates_and_gets_tokens() {
    skewed_device_rotates_and_gets_tokens(TWO_HOURS_BEHIND);
}

#[test]
fn a_device_three_hours_ahead_rotates_and_gets_tokens() {
    skewed_device_rotates_and_gets_tokens(THREE_HOURS_AHEAD);
}

/// `enroll` then `token` on a device whose clock is `skew` seconds off; the token is live, the
/// server never refused the agent, and an assertion signed with the device's own time is
/// refused (the fault is real).
fn skewed_device_rotates_and_gets_tokens(skew: i64) {
    let server = TestServer::start();
    let device = Device::provision(&server);

    let out = skewed_agent(&device, skew, &["enroll"]);
    let stderr = success(&out);
    let enrolled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(enrolled["kind"], "key", "{enrolled}");
    assert!(!device.inventory().factory_secret);
    assert_reported_offset(&stderr, -skew);

    let out = skewed_agent(&device, skew, &["token"]);
    let stderr = success(&out);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_reported_offset(&stderr, -skew);
    let (code, introspected) = server.post_form(
        "/oauth2/introspect",
        Some((&server.admin_id, &server.admin_secret)),
        &[("token", &token)],
    );
    assert_eq!(code, 200, "{introspected}");
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["client_id"], device.client_id.as_str());

    // The agent fetched the metadata (and with it the server's Date) before its first
    // assertion, so the server never had to refuse one.
    assert_eq!(
        auth_failures(&server, &device.client_id),
        Vec::<String>::new()
    );

    // The fault is real: the same TPM key signing with the device's own clock is refused.
    let metadata = server.get("/.well-known/oauth-authorization-server").1;
    let token_endpoint = metadata["token_endpoint"].as_str().unwrap();
    let device_now = now().checked_add_signed(skew).unwrap();
    let mut tpm = Tpm::open(&device.tpm.tcti()).unwrap();
    let uncorrected = assertion::build(
        &device.client_id,
        token_endpoint,
        enrolled["kid"].as_str().unwrap(),
        device_now,
        |input| tpm.sign_es256(KeySlot::A, input),
    )
    .unwrap();
    drop(tpm);
    let (code, body) = server.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &device.client_id),
            ("client_assertion_type", assertion::ASSERTION_TYPE),
            ("client_assertion", &uncorrected),
        ],
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    let failures = auth_failures(&server, &device.client_id);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let why = if skew < 0 { "expired" } else { "too far ahead" };
    assert!(failures[0].contains(why), "{failures:?}");
}

#[test]
fn a_refused_assertion_is_signed_again_once_with_the_server_time() {
    // A server that tells its time only when it refuses an assertion: the agent's first
    // assertion carries the device's time, is refused, and the second carries the server's.
    let server = StandIn::start(DateMode::Honest);
    let device = StandInDevice::new(&server);
    let out = device.agent(TWO_HOURS_BEHIND, &["token"]);
    let stderr = success(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stand-in-token"
    );
    assert_eq!(server.token_requests(), 2, "{stderr}");
    assert_eq!(server.refused(), 1, "{stderr}");
    assert_reported_offset(&stderr, -TWO_HOURS_BEHIND);

    // A device with a right clock is accepted at once.
    let server = StandIn::start(DateMode::Honest);
    let device = StandInDevice::new(&server);
    success(&device.agent(0, &["token"]));
    assert_eq!((server.token_requests(), server.refused()), (1, 0));
}

#[test]
fn a_server_whose_date_keeps_moving_gets_two_attempts_not_a_loop() {
    let server = StandIn::start(DateMode::JumpingAnHourPerAnswer);
    let device = StandInDevice::new(&server);
    let out = device.agent(0, &["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert_eq!(server.token_requests(), 2, "{stderr}");
}

/// `hallmark-agent <args>` on `device` with its clock moved by `skew` seconds.
fn skewed_agent(device: &Device, skew: i64, args: &[&str]) -> Output {
    device
        .agent(args)
        .env("HALLMARK_AGENT_CLOCK_SKEW", skew.to_string())
        .output()
        .unwrap()
}

/// Asserts the run succeeded; its stderr.
fn success(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "agent failed ({}): {stderr}",
        out.status
    );
    stderr
}

/// Asserts the agent logged, once, an offset (server − device) within a second or two of
/// `expected` (the `Date` header has one-second resolution).
fn assert_reported_offset(stderr: &str, expected: i64) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("correcting assertion times"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    let at = words.iter().position(|w| *w == "is").unwrap();
    let seconds: i64 = words[at + 1].parse().unwrap();
    let direction = if expected > 0 { "behind" } else { "ahead" };
    assert_eq!(words[at + 3], direction, "{stderr}");
    assert!(
        (seconds - expected.abs()).abs() <= 2,
        "reported {seconds} s, expected {expected}: {stderr}"
    );
}

/// Reasons of the server's `client.auth_failed` audit entries for `client_id`.
fn auth_failures(server: &TestServer, client_id: &str) -> Vec<String> {
    server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "client.auth_failed" && e["client"] == client_id)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What the stand-in's token endpoint puts in `Date`.
#[derive(Debug, Clone, Copy)]
enum DateMode {
    /// Its own (correct) time.
    Honest,
    /// Its time plus an hour more with every token response: no offset ever satisfies it.
    JumpingAnHourPerAnswer,
}

/// A minimal authorization server over plain HTTP on loopback with Hallmark's rotation
/// endpoint. Only its token endpoint sends `Date`, so the agent's first assertion carries the
/// device's uncorrected time. It accepts an assertion whose `iat` is within 30 s of its `Date`
/// (it checks times only; signatures are the real server's business, tested elsewhere).
struct StandIn {
    issuer: String,
    token_requests: Arc<AtomicU32>,
    refused: Arc<AtomicU32>,
}

impl StandIn {
    fn start(mode: DateMode) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let token_requests = Arc::new(AtomicU32::new(0));
        let refused = Arc::new(AtomicU32::new(0));
        let (me, requests, refusals) = (issuer.clone(), token_requests.clone(), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let (request_line, body) = read_request(&mut stream);
                let mut date = None;
                let (status, json) = if request_line.starts_with("GET /.well-known/") {
                    let metadata = serde_json::json!({
                        "issuer": me,
                        "token_endpoint": format!("{me}/token"),
                        "device_credentials_endpoint": format!("{me}/credentials"),
                    });
                    (200, metadata)
                } else if request_line.starts_with("POST /credentials") {
                    (200, serde_json::json!({"kid": "pending"}))
                } else if request_line.starts_with("POST /token") {
                    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                    let server_now = match mode {
                        DateMode::Honest => now(),
                        DateMode::JumpingAnHourPerAnswer => now() + 3600 * u64::from(n),
                    };
                    date = Some(server_now);
                    if assertion_iat(&body).is_some_and(|iat| iat.abs_diff(server_now) <= 30) {
                        let token = serde_json::json!({
                            "access_token": "stand-in-token",
                            "token_type": "Bearer",
                            "expires_in": 300,
                        });
                        (200, token)
                    } else {
                        refusals.fetch_add(1, Ordering::SeqCst);
                        (401, serde_json::json!({"error": "invalid_client"}))
                    }
                } else {
                    (404, serde_json::json!({"error": "not_found"}))
                };
                let date = date
                    .map(|at| {
                        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
                        format!("Date: {}\r\n", httpdate::fmt_http_date(at))
                    })
                    .unwrap_or_default();
                let body = json.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{date}Content-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn {
            issuer,
            token_requests,
            refused,
        }
    }

    fn token_requests(&self) -> u32 {
        self.token_requests.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u32 {
        self.refused.load(Ordering::SeqCst)
    }
}

/// The request line and body of one HTTP/1.1 request.
fn read_request(stream: &mut std::net::TcpStream) -> (String, String) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (request_line, String::from_utf8(body).unwrap())
}

/// The `iat` of the form's `client_assertion` (base64url JWTs need no form-decoding).
fn assertion_iat(form: &str) -> Option<u64> {
    let jwt = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("client_assertion="))?;
    let payload = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<Value>(&payload).ok()?["iat"].as_u64()
}

/// A device with its own swtpm and a factory secret, configured for a [`StandIn`].
struct StandInDevice {
    _tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl StandInDevice {
    fn new(server: &StandIn) -> StandInDevice {
        let tpm = Swtpm::temp_manufactured_unique().unwrap();
        Tpm::open(&tpm.tcti())
            .unwrap()
            .seal_factory_secret(&[7u8; 32])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_stand_in_config(
            dir.path(),
            server.issuer.clone(),
            "device-elsewhere".into(),
            tpm.tcti(),
        );
        StandInDevice { _tpm: tpm, dir }
    }

    fn agent(&self, skew: i64, args: &[&str]) -> Output {
        hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"))
            .args(args)
            .env("HALLMARK_AGENT_CLOCK_SKEW", skew.to_string())
            .env_remove("HALLMARK_AGENT_FAULT")
            .output()
            .unwrap()
    }
}
