//! The agent against another RFC 6749/8414 server — a minimal stand-in whose metadata has no
//! `device_credentials_endpoint`: it keeps the factory credential, says so once, and gets
//! tokens with `client_secret_basic` (RFC 6749 §2.3.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hallmark_agent::config::{AgentConfig, Flow, Handles};
use hallmark_agent::tpm::Tpm;
use hallmark_hwsim::Swtpm;

/// Serves RFC 8414 metadata and a token endpoint accepting one client's Basic credentials,
/// over plain HTTP on loopback, one request per connection.
fn stand_in_server(client_id: String, secret: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let expected = format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")));
    let me = issuer.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut length, mut authorization) = (0usize, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "authorization" => authorization = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (status, json) =
                if request_line.starts_with("GET /.well-known/oauth-authorization-server") {
                    (
                        200,
                        serde_json::json!({
                            "issuer": me,
                            "token_endpoint": format!("{me}/token"),
                            "grant_types_supported": ["client_credentials"],
                        }),
                    )
                } else if request_line.starts_with("POST /token") && authorization == expected {
                    (
                        200,
                        serde_json::json!({
                            "access_token": "token-from-another-server",
                            "token_type": "Bearer",
                            "expires_in": 300,
                        }),
                    )
                } else {
                    (401, serde_json::json!({"error": "invalid_client"}))
                };
            let body = json.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    issuer
}

#[test]
fn without_a_rotation_endpoint_the_factory_credential_stays_and_works() {
    let tpm = Swtpm::temp_manufactured().unwrap();
    let raw = [7u8; 32];
    Tpm::open(&tpm.tcti())
        .unwrap()
        .seal_factory_secret(&raw)
        .unwrap();
    let client_id = "device-elsewhere".to_owned();
    let issuer = stand_in_server(client_id.clone(), URL_SAFE_NO_PAD.encode(raw));

    let dir = tempfile::tempdir().unwrap();
    // Plain HTTP on loopback needs no CA, but the config always names one.
    let init = hallmark_e2e::server::init(&dir.path().join("srv"), "https://localhost:1");
    std::fs::copy(init["ca_cert"].as_str().unwrap(), dir.path().join("ca.pem")).unwrap();
    let config = AgentConfig {
        issuer,
        ca_cert: "ca.pem".into(),
        client_id,
        tcti: tpm.tcti(),
        scopes: vec![],
        flow: Flow::ClientCredentials,
        state_dir: "state".into(),
        socket: None,
        handles: Handles::default(),
        serial: None,
    };
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let agent = |args: &[&str]| {
        std::process::Command::new(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };

    let out = agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "token-from-another-server"
    );
    assert_eq!(
        stderr.matches("no device_credentials_endpoint").count(),
        1,
        "{stderr}"
    );

    // Nothing was rotated: the factory secret is still the only credential.
    let inventory = Tpm::open(&tpm.tcti()).unwrap().inventory().unwrap();
    assert!(inventory.factory_secret && !inventory.slot_a && !inventory.slot_b);
    let out = agent(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["credential"], "factory", "{status}");
}
