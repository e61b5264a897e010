//! Three `hallmark-server` replicas on one PostgreSQL database behave as one server: what one
//! issues, revokes, spends or counts, the others see; killing a replica loses nothing it
//! acknowledged, and every replica's audit chain stays intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hallmark_e2e::pg::PgCluster;
use hallmark_e2e::server::{ClientKey, TestServer};
use hallmark_e2e::verification::{create_user, hidden_value, Browser};
use serde_json::{json, Value};

fn introspect(at: &TestServer, token: &str) -> bool {
    at.introspect(token)["active"] == true
}

#[test]
fn tokens_revocations_and_one_time_values_are_shared_by_every_replica() {
    let pg = PgCluster::get();
    let url = pg.database();
    let r = TestServer::start_replicas(3, &url, &["--device-poll-interval", "1"]);
    let (a, b, c) = (&r[0], &r[1], &r[2]);

    // A token from A is active at B; revoked at C, it is inactive at A at once.
    let (id, secret) = a.register_secret_client("api:read", "client_secret_basic");
    let (status, _, token) = a.token_basic(&id, &secret, None);
    assert_eq!(status, 200, "{token}");
    let token = token["access_token"].as_str().unwrap().to_owned();
    assert!(introspect(b, &token));
    let (status, _) = c.post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", &token)]);
    assert_eq!(status, 200);
    assert!(!introspect(a, &token) && !introspect(b, &token));

    // A client assertion accepted at A is a replay at B.
    let key = ClientKey::es256();
    let kid = b.register_jwt_client("api:read", &[(&key, Some("k1"))]);
    let assertion = key.assertion(Some("k1"), &a.assertion_claims(&kid));
    assert_eq!(a.token_assertion(&assertion, &[]).0, 200);
    let (status, _, body) = b.token_assertion(&assertion, &[]);
    assert_eq!(status, 401, "a replayed assertion: {body}");

    // A device flow started at A, approved at B's page, polled at C; its refresh token
    // rotated at A, then replayed at B: the family dies everywhere.
    let device = a.register(json!({
        "client_name": "kiosk",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "scope": "api:read",
        "token_endpoint_auth_method": "none",
    }));
    let device = device["client_id"].as_str().unwrap().to_owned();
    create_user(a, "ann", "correct horse battery");
    let (_, auth) = a.post_form(
        "/oauth2/device_authorization",
        None,
        &[("client_id", &device)],
    );
    let page = Browser::new(b).decide(
        "ann",
        "correct horse battery",
        auth["user_code"].as_str().unwrap(),
        true,
    );
    assert_eq!(page.status, 200, "{}", page.html);
    let poll = || {
        c.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &device),
                ("device_code", auth["device_code"].as_str().unwrap()),
            ],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let tokens = loop {
        let (status, body) = poll();
        if status == 200 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    // The device code is spent for every replica.
    let (status, body) = a.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", &device),
            ("device_code", auth["device_code"].as_str().unwrap()),
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let rt1 = tokens["refresh_token"].as_str().unwrap();
    let refresh = |at: &TestServer, rt: &str| {
        at.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &device),
                ("refresh_token", rt),
            ],
        )
    };
    let (status, second) = refresh(a, rt1);
    assert_eq!(status, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap();
    // Presented again at B within the refresh grace (an answer lost in transit): the same
    // successor, once — the grace is shared state too.
    let (status, retried) = refresh(b, rt1);
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["refresh_token"], rt2);
    // A third time, at C: a replay, and the family dies everywhere.
    let (status, _) = refresh(c, rt1);
    assert_eq!(status, 400, "reuse past the grace is a replay");
    assert_eq!(refresh(a, rt2).0, 400, "the family is revoked everywhere");
    assert!(!introspect(b, second["access_token"].as_str().unwrap()));
}

#[test]
fn a_device_disabled_at_one_replica_is_refused_at_the_others_within_a_second() {
    let pg = PgCluster::get();
    let r = TestServer::start_replicas(2, &pg.database(), &[]);
    let (a, b) = (&r[0], &r[1]);
    let provision = a.admin_token("devices:provision");
    let (status, dev) = a.post_raw(
        "/admin/devices",
        "application/json",
        Some(&format!("Bearer {provision}")),
        json!({"serial": "REP-1", "model": "m", "ek_fingerprint": "ab".repeat(32)})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{dev}");
    let (id, secret) = (
        dev["client_id"].as_str().unwrap(),
        dev["factory_secret"].as_str().unwrap(),
    );
    // B has it cached now.
    assert_eq!(b.token_basic(id, secret, None).0, 200);
    let admin = a.admin_token("devices:admin");
    let (status, _) = a.post_raw(
        &format!("/admin/devices/{id}/disable"),
        "application/json",
        Some(&format!("Bearer {admin}")),
        b"",
    );
    assert_eq!(status, 200);
    // The stated bound: a replica trusts a cached client for at most 1 s.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(b.token_basic(id, secret, None).0, 401);
}

#[test]
fn sign_in_failures_from_one_address_are_counted_across_replicas() {
    let pg = PgCluster::get();
    let r = TestServer::start_replicas(3, &pg.database(), &["--sign-in-failures-per-source", "3"]);
    create_user(&r[0], "ann", "correct horse battery");
    // Three wrong passwords, one at each replica, from the same address (loopback): the
    // third, at C, reaches the limit the first two set at A and B.
    for (i, server) in r.iter().enumerate() {
        let mut browser = Browser::new(server);
        let start = browser.get("/device");
        let page = browser.post(
            "/device/sign-in",
            &[
                ("csrf", &start.csrf()),
                ("username", "ann"),
                ("password", "wrong password"),
            ],
        );
        let paused = page.html.contains("Signing in paused");
        assert_eq!(paused, i == 2, "failure {}: {}", i + 1, page.html);
    }
    // The limit is reached for every replica: the right password is not even checked.
    let mut browser = Browser::new(&r[1]);
    let start = browser.get("/device");
    assert!(start.html.contains("Signing in paused"), "{}", start.html);
    let page = browser.post(
        "/device/sign-in",
        &[
            (
                "csrf",
                &hidden_value(&start.html, "csrf").unwrap_or_default(),
            ),
            ("username", "ann"),
            ("password", "correct horse battery"),
        ],
    );
    assert!(
        !page.html.contains("action=\"/device/sign-out\""),
        "{}",
        page.html
    );
}

#[test]
fn killing_a_replica_under_load_loses_nothing_acknowledged_and_every_chain_stays_intact() {
    let pg = PgCluster::get();
    let url = pg.database();
    let mut r = TestServer::start_replicas(3, &url, &[]);
    let (id, secret) = r[0].register_secret_client("api:read", "client_secret_basic");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = r
        .iter()
        .map(|server| {
            let (http, endpoint) = (server.http.clone(), server.url("/oauth2/token"));
            let (id, secret, stop) = (id.clone(), secret.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = http
                        .post(&endpoint)
                        .header(
                            "Authorization",
                            &hallmark_e2e::server::basic_header(&id, &secret),
                        )
                        .send_form([("grant_type", "client_credentials")]);
                    let Ok(mut resp) = sent else { continue };
                    if resp.status() != 200 {
                        continue;
                    }
                    let body: Value =
                        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
                    let token = body["access_token"].as_str().unwrap().to_owned();
                    acknowledged.push(hallmark_e2e::server::jwt_parts(&token).1["jti"].clone());
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    r[1].kill();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let acknowledged: Vec<Value> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acknowledged.len() > 20, "{} tokens", acknowledged.len());
    for server in r.iter_mut() {
        if server.is_running() {
            assert!(server.terminate().success(), "{}", server.log());
        }
    }
    // Every acknowledged issuance is in some replica's chain.
    assert_audited(&pg, &url, acknowledged.iter());
    // Three chains (and no other), each intact — the killed replica's included.
    let chains = pg.sql(
        &url,
        "SELECT count(*) FROM audit_heads WHERE chain <> 'command'",
    );
    assert_eq!(chains.trim(), "3");
    assert_every_chain_intact(&r[0]);
}

/// The database goes away under load and comes back: while it is down every replica answers
/// 503 with `Retry-After` (never a 2xx for a write it could not save) and `/readyz` says 503;
/// once it is back every replica serves again by itself, without a restart, and everything a
/// replica acknowledged — issued tokens in the audit chains, revocations — is there.
#[test]
fn a_database_restart_under_load_acknowledges_nothing_unsaved_and_replicas_resume_alone() {
    let pg = PgCluster::own();
    let url = pg.database();
    let r = TestServer::start_replicas(3, &url, &[]);
    let (id, secret) = r[0].register_secret_client("api:read", "client_secret_basic");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = r
        .iter()
        .map(|server| {
            let (http, base) = (server.http.clone(), server.url(""));
            let (id, secret, stop) = (id.clone(), secret.clone(), stop.clone());
            std::thread::spawn(move || {
                let auth = hallmark_e2e::server::basic_header(&id, &secret);
                let mut load = Load::default();
                while !stop.load(Ordering::Relaxed) {
                    let (status, retry, body) = post(
                        &http,
                        &format!("{base}/oauth2/token"),
                        &auth,
                        &[("grant_type", "client_credentials")],
                    );
                    let Some(token) = load.check(status, retry, &body) else {
                        continue;
                    };
                    let token = token.as_str().unwrap().to_owned();
                    load.issued
                        .push(hallmark_e2e::server::jwt_parts(&token).1["jti"].clone());
                    // Every other token is revoked at once: a 200 there is a promise too.
                    if load.issued.len() % 2 == 0 {
                        let (status, retry, body) = post(
                            &http,
                            &format!("{base}/oauth2/revoke"),
                            &auth,
                            &[("token", &token)],
                        );
                        load.check(status, retry, &body);
                        if status == 200 {
                            load.revoked.push(token);
                        }
                    }
                }
                load
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    pg.stop();
    // Down: every replica reports it and refuses writes with 503 (what the workers check).
    for server in &r {
        let ready = wait_for(Duration::from_secs(10), || server.get("/readyz").0 == 503);
        assert!(
            ready,
            "/readyz at a replica kept saying ready with the database down"
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    pg.start_again();
    // Back: each replica serves again on its own, its process never restarted.
    for server in &r {
        let back = wait_for(Duration::from_secs(20), || {
            server.get("/readyz").0 == 200 && server.token_basic(&id, &secret, None).0 == 200
        });
        assert!(back, "a replica did not resume: {}", server.log());
        assert!(server.is_running());
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let loads: Vec<Load> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let refused: usize = loads.iter().map(|l| l.refused).sum();
    let issued: Vec<&Value> = loads.iter().flat_map(|l| &l.issued).collect();
    assert!(
        refused > 0,
        "no request was refused while the database was down"
    );
    assert!(issued.len() > 20, "{} tokens", issued.len());
    for (load, server) in loads.iter().zip(&r) {
        assert!(
            load.wrong.is_empty(),
            "answers besides 200 and 503: {:?}\n{}",
            load.wrong,
            server.log()
        );
    }

    // Every acknowledged issuance is in the audit log; every acknowledged revocation holds.
    assert_audited(&pg, &url, issued.iter().copied());
    for token in loads.iter().flat_map(|l| &l.revoked) {
        assert!(
            !introspect(&r[1], token),
            "an acknowledged revocation was lost"
        );
    }
    assert_every_chain_intact(&r[0]);
}

/// What one load worker saw.
#[derive(Default)]
struct Load {
    issued: Vec<Value>,
    revoked: Vec<String>,
    refused: usize,
    /// Answers that are neither success nor a 503 with `Retry-After`.
    wrong: Vec<(u16, String)>,
}

impl Load {
    /// Sort one answer; the access token of a successful token response.
    fn check(&mut self, status: u16, retry_after: bool, body: &str) -> Option<Value> {
        match status {
            200 => serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("access_token").cloned()),
            503 if retry_after => {
                self.refused += 1;
                None
            }
            _ => {
                self.wrong.push((status, body.to_owned()));
                None
            }
        }
    }
}

/// POST a form with Basic credentials; (status, whether `Retry-After` was set, body). A
/// connection error counts as status 0.
fn post(http: &ureq::Agent, url: &str, auth: &str, form: &[(&str, &str)]) -> (u16, bool, String) {
    match http
        .post(url)
        .header("Authorization", auth)
        .send_form(form.iter().copied())
    {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.headers().contains_key("retry-after"),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, false, e.to_string()),
    }
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every one of these token ids is in some replica's audit chain.
fn assert_audited<'a>(pg: &PgCluster, url: &str, jtis: impl Iterator<Item = &'a Value>) {
    // Compact records (bytea) hold their strings as UTF-8, readable through `escape`.
    let audited = pg.sql(
        url,
        "SELECT coalesce(entry, encode(record, 'escape')) FROM audit_entries",
    );
    for jti in jtis {
        assert!(
            audited.contains(&format!("jti={}", jti.as_str().unwrap())),
            "token {jti} was acknowledged but is not in the audit log"
        );
    }
}

/// `audit verify` (from any replica's data directory) finds every chain intact.
fn assert_every_chain_intact(replica: &TestServer) {
    let out = hallmark_e2e::server::clean_command(hallmark_e2e::server::server_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&replica.data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("intact"),
        "{stdout}"
    );
}
