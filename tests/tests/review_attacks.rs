//! The outside review's attacks (issue 10) that need the whole product: a station that tries to
//! make itself admin while the real provisioner runs a batch beside it, and a grant's access
//! tokens outliving the revocation of its refresh token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hallmark_e2e::server::{basic_header, TestServer};
use hallmark_e2e::station::{report_lines, write_manifest, TestDevice, TestStation};
use hallmark_e2e::verification::{create_user, Browser};
use serde_json::{json, Value};

const ADMIN_SCOPES: [&str; 5] = [
    "clients:admin",
    "devices:admin",
    "devices:provision",
    "audit:read",
    "users:admin",
];

#[test]
fn a_station_cannot_make_itself_admin_while_its_line_provisions() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(&station.credentials).unwrap()).unwrap();
    let (sid, ssecret) = (
        creds["client_id"].as_str().unwrap().to_owned(),
        creds["client_secret"].as_str().unwrap().to_owned(),
    );
    let devices = TestDevice::many("HM-ESC", 4);
    let manifest = write_manifest(station.dir.path(), &devices, &[]);
    let report = station.dir.path().join("report.jsonl");
    let batch = station.batch(&manifest, &report, 4).spawn().unwrap();

    // Meanwhile, someone holding the station's credentials asks for devices with admin scopes
    // from four threads at once.
    let attempts: Vec<_> = (0..4)
        .map(|t| {
            let http = server.http.clone();
            let url = server.url("/oauth2/token");
            let devices_url = server.url("/admin/devices");
            let (sid, ssecret) = (sid.clone(), ssecret.clone());
            std::thread::spawn(move || {
                let mut r = http
                    .post(&url)
                    .header("Authorization", &basic_header(&sid, &ssecret))
                    .send_form([("grant_type", "client_credentials")])
                    .unwrap();
                let token: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                let token = token["access_token"].as_str().unwrap().to_owned();
                let mut outcomes = Vec::new();
                for i in 0..5 {
                    let body = json!({"serial": format!("EVIL-{t}-{i}"), "model": "m",
                        "ek_fingerprint": format!("{:02x}", t * 10 + i).repeat(32),
                        "scopes": [ADMIN_SCOPES[i % ADMIN_SCOPES.len()], "device"]});
                    let mut r = http
                        .post(&devices_url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .header("Content-Type", "application/json")
                        .send(body.to_string())
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value =
                        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                    outcomes.push((status, body));
                }
                outcomes
            })
        })
        .collect();
    for handle in attempts {
        for (status, body) in handle.join().unwrap() {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["error"], "invalid_scope", "{body}");
            assert!(body.get("factory_secret").is_none());
        }
    }
    let out = batch.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The line's devices hold the device scope and nothing else: their secrets, read back
    // from their TPMs, cannot reach an admin scope.
    let lines = report_lines(&report);
    assert_eq!(lines.len(), devices.len());
    for device in &devices {
        let line = lines
            .iter()
            .find(|l| l["serial"] == device.serial.as_str())
            .unwrap();
        assert_eq!(line["outcome"], "provisioned", "{line}");
        let id = line["client_id"].as_str().unwrap();
        let secret = device.unsealed_secret().unwrap();
        let (status, _, token) = server.token_basic(id, &secret, None);
        assert_eq!(status, 200, "{token}");
        assert_eq!(token["scope"], "device");
        for admin in ADMIN_SCOPES {
            let (status, _, refused) = server.token_basic(id, &secret, Some(admin));
            assert_eq!(status, 400, "{admin}: {refused}");
        }
    }
    // No registration with an admin scope exists.
    let audit = server.audit_log();
    let registered = audit
        .iter()
        .filter(|e| e["event"] == "device.registered" && e["outcome"] == "success")
        .count();
    assert_eq!(registered, devices.len());
}

/// A public device client, a user, and one approved device grant: (client_id, access token,
/// refresh token).
fn approved_grant(server: &TestServer) -> (String, String, String) {
    let client = server.register(json!({
        "client_name": "kiosk",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "scope": "api:read",
        "token_endpoint_auth_method": "none",
    }));
    let id = client["client_id"].as_str().unwrap().to_owned();
    create_user(server, "ann", "correct horse battery");
    let (status, auth) =
        server.post_form("/oauth2/device_authorization", None, &[("client_id", &id)]);
    assert_eq!(status, 200, "{auth}");
    let page = Browser::new(server).decide(
        "ann",
        "correct horse battery",
        auth["user_code"].as_str().unwrap(),
        true,
    );
    assert_eq!(page.status, 200, "{}", page.html);
    // The grant's interval has passed by the time the page flow is done; poll until issued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = server.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &id),
                ("device_code", auth["device_code"].as_str().unwrap()),
            ],
        );
        if status == 200 {
            return (
                id,
                body["access_token"].as_str().unwrap().to_owned(),
                body["refresh_token"].as_str().unwrap().to_owned(),
            );
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn refresh(server: &TestServer, id: &str, token: &str) -> (u16, Value) {
    server.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", id),
            ("refresh_token", token),
        ],
    )
}

#[test]
fn revoking_a_refresh_token_ends_the_access_tokens_of_its_grant() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    let (id, first_access, rt1) = approved_grant(&server);
    let (status, second) = refresh(&server, &id, &rt1);
    assert_eq!(status, 200, "{second}");
    let second_access = second["access_token"].as_str().unwrap();
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_eq!(server.introspect(&first_access)["active"], true);
    assert_eq!(server.introspect(second_access)["active"], true);

    // RFC 7009 §2.1: the client revokes its refresh token...
    let (status, body) = server.post_form(
        "/oauth2/revoke",
        None,
        &[
            ("client_id", &id),
            ("token", rt2),
            ("token_type_hint", "refresh_token"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    // ...and every access token of that grant stops at the next introspection.
    assert_eq!(server.introspect(&first_access)["active"], false);
    assert_eq!(server.introspect(second_access)["active"], false);
    // A client_credentials token of another client is untouched.
    let (other, secret) = server.register_secret_client("api:read", "client_secret_basic");
    let (_, _, cc) = server.token_basic(&other, &secret, None);
    assert_eq!(
        server.introspect(cc["access_token"].as_str().unwrap())["active"],
        true
    );
}

#[test]
fn a_replayed_refresh_token_ends_the_access_tokens_of_its_grant() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    let (id, first_access, rt1) = approved_grant(&server);
    let (status, second) = refresh(&server, &id, &rt1);
    assert_eq!(status, 200, "{second}");
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    // The client goes on with rt2. (Had it not, rt1 within `refresh_token_grace` would be
    // taken for a lost answer once, and given rt2 again: `server/tests/device_flow.rs`.)
    let (status, third) = refresh(&server, &id, &rt2);
    assert_eq!(status, 200, "{third}");
    let third_access = third["access_token"].as_str().unwrap().to_owned();
    // The stolen, spent rt1 comes back: reuse detection revokes the family and its tokens.
    let (status, body) = refresh(&server, &id, &rt1);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    for token in [&first_access, &second_access, &third_access] {
        assert_eq!(server.introspect(token)["active"], false);
    }
}
