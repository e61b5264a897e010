//! The verification page in real headless Chromium (driven over WebDriver by fantoccini) against
//! the real server binary: approve and see the polling device receive its token, enter a wrong
//! code and see the error, deny and see the device get `access_denied`. Screenshots of every page
//! go to `target/screenshots/device-*.png` for a reviewer.
//!
//! TLS: the server runs exactly as in production (HTTPS, `__Host-` cookie with `Secure`), and only
//! this test's throwaway Chromium skips certificate checks (`--ignore-certificate-errors`,
//! `acceptInsecureCerts`). Teaching Chromium the test CA would need NSS tools in the profile; plain
//! HTTP would leave the production transport untested.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 800);

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Self {
        let port = common::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/install-deps installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromium(driver: &Driver, profile: &Path) -> Client {
    let args = vec![
        "--headless".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--ignore-certificate-errors".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", PHONE.0, PHONE.1),
    ];
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp; the screenshots go beside it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("device-{name}.png")), png).unwrap();
}

async fn shoot_both(c: &Client, name: &str) {
    shoot(c, &format!("{name}-phone")).await;
    c.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    shoot(c, &format!("{name}-desktop")).await;
    c.set_window_size(PHONE.0, PHONE.1).await.unwrap();
}

async fn text_of(c: &Client, id: &str) -> String {
    c.wait()
        .for_element(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A device polling the token endpoint as RFC 8628 §3.5 says, on its own thread: the final
/// answer (tokens, or the error that ended it).
fn poll_in_background(
    server: &TestServer,
    client_id: &str,
    device_code: &str,
    interval: u64,
) -> std::thread::JoinHandle<(u16, Value)> {
    let (http, url) = (server.http.clone(), server.url("/oauth2/token"));
    let (client_id, device_code) = (client_id.to_owned(), device_code.to_owned());
    std::thread::spawn(move || {
        let mut interval = interval;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            std::thread::sleep(Duration::from_secs(interval));
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", client_id.as_str()),
                ("device_code", device_code.as_str()),
            ];
            let mut r = http.post(&url).send_form(form).unwrap();
            let status = r.status().as_u16();
            let body: Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            match body["error"].as_str() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += 5,
                _ => return (status, body),
            }
            assert!(Instant::now() < deadline, "the device never got an answer");
        }
    })
}

fn authorize(server: &TestServer, client_id: &str) -> Value {
    let (status, body) = server.post_form(
        "/oauth2/device_authorization",
        None,
        &[("client_id", client_id), ("scope", "api:read")],
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn a_person_approves_mistypes_and_denies_in_chromium() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    let device = server.register(json!({
        "client_name": "Hallway Thermostat",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "scope": "api:read api:write",
        "token_endpoint_auth_method": "none",
    }));
    let client_id = device["client_id"].as_str().unwrap();
    let admin = server.admin_token("users:admin");
    let (status, body) = server.post_raw(
        "/admin/users",
        "application/json",
        Some(&format!("Bearer {admin}")),
        json!({"username": "ann", "password": "correct horse battery"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{body}");

    let work = tempfile::tempdir().unwrap();
    let driver = Driver::start(&work.path().join("chromedriver.log"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(chromium(&driver, &work.path().join("profile")));
    // Headless Chromium keeps a minimum width at start; set the phone size explicitly.
    rt.block_on(c.set_window_size(PHONE.0, PHONE.1)).unwrap();
    // Catch a failure so that the browser is always closed (chromedriver then ends Chromium).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(run(&server, &c, client_id))
    }));
    let _ = rt.block_on(c.close());
    if let Err(panic) = outcome {
        eprintln!("server log:\n{}", server.log());
        std::panic::resume_unwind(panic);
    }
}

async fn run(server: &TestServer, c: &Client, client_id: &str) {
    // 1. Approve, from the link a QR code would carry.
    let codes = authorize(server, client_id);
    let user_code = codes["user_code"].as_str().unwrap().to_owned();
    let poller = poll_in_background(server, client_id, codes["device_code"].as_str().unwrap(), 1);
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("username")).await.unwrap();
    shoot_both(c, "1-sign-in").await;
    c.find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys("ann")
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("correct horse battery")
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let field = c
        .wait()
        .for_element(Locator::Id("user_code"))
        .await
        .unwrap();
    assert_eq!(
        field.prop("value").await.unwrap().as_deref(),
        Some(user_code.as_str()),
        "pre-filled"
    );
    shoot_both(c, "2-code").await;
    c.find(Locator::Id("continue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(c, "shown-code").await, user_code);
    assert_eq!(text_of(c, "client-name").await, "Hallway Thermostat");
    assert_eq!(text_of(c, "scopes").await, "api:read");
    shoot_both(c, "3-consent").await;
    c.find(Locator::Id("approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(c, "result").await.contains("is now connected"));
    shoot_both(c, "4-approved").await;
    let (status, tokens) = tokio::task::spawn_blocking(move || poller.join().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string());
    let (_, claims) = common::jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["sub"].as_str(), claims["client_id"].as_str()),
        (Some("ann"), Some(client_id))
    );

    // 2. A wrong code.
    c.goto(&server.url("/device")).await.unwrap();
    let field = c
        .wait()
        .for_element(Locator::Id("user_code"))
        .await
        .unwrap();
    field.send_keys("BCDF-BCDF").await.unwrap();
    c.find(Locator::Id("continue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(c, "notice")
        .await
        .contains("That code is not valid"));
    shoot_both(c, "5-wrong-code").await;

    // 3. Deny: the device hears access_denied.
    let codes = authorize(server, client_id);
    let poller = poll_in_background(server, client_id, codes["device_code"].as_str().unwrap(), 1);
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Id("continue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Id("deny"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(c, "result").await.contains("was not given access"));
    shoot_both(c, "6-denied").await;
    let (status, answer) = tokio::task::spawn_blocking(move || poller.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("access_denied")),
        "{answer}"
    );
}
