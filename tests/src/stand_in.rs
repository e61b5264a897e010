//! A stand-in for another RFC 6749/8414 authorization server: metadata without Hallmark's
//! `device_credentials_endpoint` and a token endpoint that accepts one client's Basic
//! credentials and refuses everything else, for tests of the agent away from Hallmark's server;
//! and one with the device authorization grant that issues no refresh token.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hallmark_agent::config::{AgentConfig, Flow, Handles, RekeyInterval};

/// Serves RFC 8414 metadata and a token endpoint accepting one client's Basic credentials,
/// over plain HTTP on loopback, one request per connection; returns its issuer URL. It runs
/// until the test process ends.
pub fn stand_in_server(client_id: String, secret: String) -> String {
    let expected = basic(&client_id, &secret);
    serve(move |me, request_line, authorization, _body| {
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
        }
    })
}

/// Like [`stand_in_server`], with the device authorization grant (RFC 8628): a device code is
/// approved at once (interval 1 s), and a token response has an access token
/// (`device-token-N`, 300 s). With `refresh_token` `None` it has nothing else, as servers answer
/// a scope without `offline_access`, and a refresh_token grant is `invalid_grant`. With
/// `Some(rt)`, it carries `rt`, and refreshing with `rt` answers a new access token and `rt`
/// again: a server that does not rotate refresh tokens (RFC 6749 §6 allows it).
pub fn stand_in_device_server(
    client_id: String,
    secret: String,
    refresh_token: Option<&'static str>,
) -> String {
    let expected = basic(&client_id, &secret);
    let issued = std::sync::atomic::AtomicUsize::new(0);
    serve(move |me, request_line, authorization, body| {
        let body = String::from_utf8_lossy(body);
        if request_line.starts_with("GET /.well-known/oauth-authorization-server") {
            return (
                200,
                serde_json::json!({
                    "issuer": me,
                    "token_endpoint": format!("{me}/token"),
                    "device_authorization_endpoint": format!("{me}/device_authorization"),
                    "grant_types_supported": [
                        "urn:ietf:params:oauth:grant-type:device_code",
                        "refresh_token",
                    ],
                }),
            );
        }
        if authorization != expected {
            return (401, serde_json::json!({"error": "invalid_client"}));
        }
        if request_line.starts_with("POST /device_authorization") {
            (
                200,
                serde_json::json!({
                    "device_code": "device-code-1",
                    "user_code": "BCDF-GHJK",
                    "verification_uri": format!("{me}/device"),
                    "verification_uri_complete": format!("{me}/device?user_code=BCDF-GHJK"),
                    "expires_in": 600,
                    "interval": 1,
                }),
            )
        } else if request_line.starts_with("POST /token")
            && (body.contains("device_code")
                || refresh_token.is_some_and(|rt| body.contains(&format!("refresh_token={rt}"))))
        {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let mut answer = serde_json::json!({
                "access_token": format!("device-token-{n}"),
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "device",
            });
            if let Some(rt) = refresh_token {
                answer["refresh_token"] = rt.into();
            }
            (200, answer)
        } else {
            (400, serde_json::json!({"error": "invalid_grant"}))
        }
    })
}

fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")))
}

/// Serve one request per connection with `answer(issuer, request line, Authorization, body)`.
fn serve(
    answer: impl Fn(&str, &str, &str, &[u8]) -> (u16, serde_json::Value) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
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
            let (status, json) = answer(&me, &request_line, &authorization, &body);
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

/// Writes `dir/agent.toml` for a device of `issuer` (a stand-in on plain HTTP) using the TPM at
/// `tcti`, with a CA file the config must name even though plain HTTP on loopback uses none;
/// the config's path.
pub fn write_stand_in_config(
    dir: &Path,
    issuer: String,
    client_id: String,
    tcti: String,
) -> PathBuf {
    write_stand_in_config_for(dir, issuer, client_id, tcti, Flow::ClientCredentials)
}

/// [`write_stand_in_config`] with the given flow.
pub fn write_stand_in_config_for(
    dir: &Path,
    issuer: String,
    client_id: String,
    tcti: String,
    flow: Flow,
) -> PathBuf {
    let init = crate::server::init(&dir.join("srv"), "https://localhost:1");
    std::fs::copy(init["ca_cert"].as_str().unwrap(), dir.join("ca.pem")).unwrap();
    let config = AgentConfig {
        issuer,
        ca_cert: "ca.pem".into(),
        client_id,
        tcti,
        scopes: vec![],
        flow,
        state_dir: "state".into(),
        socket: None,
        socket_allowed_uids: Vec::new(),
        handles: Handles::default(),
        serial: None,
        rekey_interval_days: RekeyInterval::NEVER,
        dpop: false,
    };
    let path = dir.join("agent.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}
