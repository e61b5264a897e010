//! The headless Chromium harness of the browser tests: chromedriver on a free port (killed on
//! drop), a throwaway Chromium profile, screenshots at phone and desktop size under
//! `target/screenshots/`, and an accessibility check (axe-core, vendored in `fixtures/`,
//! injected over WebDriver) that every page state must pass with no violation.
//!
//! TLS: the server runs exactly as in production (HTTPS, `__Host-` cookie with `Secure`), and only
//! this throwaway Chromium skips certificate checks (`--ignore-certificate-errors`,
//! `acceptInsecureCerts`). Teaching Chromium the test CA would need NSS tools in the profile; plain
//! HTTP would leave the production transport untested.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const PHONE: (u32, u32) = (390, 844);
pub const DESKTOP: (u32, u32) = (1280, 800);
/// axe-core, test-only (see fixtures/README.md).
const AXE: &str = include_str!("../fixtures/axe.min.js");

/// chromedriver on a free port, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    pub fn start(log: &Path) -> Self {
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

/// A Chromium session with its own profile at phone size, asking for `language`.
pub async fn chromium(driver: &Driver, profile: &Path, language: &str) -> Client {
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
        format!("--lang={language}"),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", PHONE.0, PHONE.1),
    ];
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": args,
            "prefs": {"intl.accept_languages": language},
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session");
    // Headless Chromium keeps a minimum width at start; set the phone size explicitly.
    set_viewport(&c, PHONE).await;
    c
}

/// Size the window so that the page's viewport is exactly `(width, height)` CSS pixels (the
/// window also holds the browser's own bars, even headless).
pub async fn set_viewport(c: &Client, (width, height): (u32, u32)) {
    c.set_window_size(width, height).await.unwrap();
    let inner = c
        .execute("return [window.innerWidth, window.innerHeight];", vec![])
        .await
        .unwrap();
    let dim = |i: usize| u32::try_from(inner[i].as_u64().unwrap()).unwrap();
    let (w, h) = (dim(0), dim(1));
    if (w, h) != (width, height) {
        c.set_window_size(
            width + width.saturating_sub(w),
            height + height.saturating_sub(h),
        )
        .await
        .unwrap();
    }
}

/// A Chromium session with its driver and runtime; closed on drop.
pub struct Chromium {
    pub client: Client,
    rt: tokio::runtime::Runtime,
    _driver: Driver,
    _work: tempfile::TempDir,
}

impl Chromium {
    /// A fresh Chromium (own profile, phone size) asking for `language`.
    pub fn start(language: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let driver = Driver::start(&work.path().join("chromedriver.log"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(chromium(&driver, &work.path().join("profile"), language));
        Chromium {
            client,
            rt,
            _driver: driver,
            _work: work,
        }
    }

    /// Drive a scenario to its end; on failure print the server's log, close the browser and
    /// fail.
    pub fn run(
        &self,
        server: &common::TestServer,
        scenario: impl std::future::Future<Output = ()>,
    ) {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.rt.block_on(scenario)));
        if let Err(panic) = outcome {
            eprintln!("server log:\n{}", server.log());
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Closing the session makes chromedriver end Chromium.
        let _ = self.rt.block_on(self.client.clone().close());
    }
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

/// Screenshots of the current page at phone and desktop size (and, for a page taller than the
/// phone's screen, all of it at phone width), and the accessibility check at both:
/// `target/screenshots/device-{name}-{phone,phone-full,desktop}.png`.
pub async fn state(c: &Client, name: &str) {
    assert_accessible(c, &format!("{name} (phone)")).await;
    shoot(c, &format!("{name}-phone")).await;
    let tall = c
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .unwrap()
        .as_u64()
        .map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX));
    if tall > PHONE.1 {
        set_viewport(c, (PHONE.0, tall)).await;
        shoot(c, &format!("{name}-phone-full")).await;
    }
    set_viewport(c, DESKTOP).await;
    assert_accessible(c, &format!("{name} (desktop)")).await;
    shoot(c, &format!("{name}-desktop")).await;
    set_viewport(c, PHONE).await;
}

/// Run axe-core on the current page; panics listing every violation.
pub async fn assert_accessible(c: &Client, what: &str) {
    let violations = accessibility_violations(c).await;
    assert!(
        violations.is_empty(),
        "accessibility violations on {what}: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// What axe-core finds wrong with the current page (injected on first use per page).
pub async fn accessibility_violations(c: &Client) -> Vec<Value> {
    let loaded = c
        .execute("return typeof window.axe !== 'undefined';", vec![])
        .await
        .unwrap();
    if loaded != Value::Bool(true) {
        c.execute(AXE, vec![]).await.unwrap();
    }
    let violations = c
        .execute_async(
            r#"
            const done = arguments[arguments.length - 1];
            axe.run(document, {resultTypes: ['violations']})
              .then(r => done(r.violations.map(v => ({
                  id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)}))))
              .catch(e => done([{id: 'axe-error', help: String(e)}]));
            "#,
            vec![],
        )
        .await
        .unwrap();
    violations.as_array().cloned().unwrap_or_default()
}

/// The text of the element with this id, once it is there.
pub async fn text_of(c: &Client, id: &str) -> String {
    c.wait()
        .for_element(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The id of the element that has focus.
pub async fn focused(c: &Client) -> String {
    c.active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Click the button (or link) with this id and wait until the page it leads to has loaded.
pub async fn click(c: &Client, id: &str) {
    // A mark on the current document: gone once the next one has replaced it.
    c.execute("window.__hallmarkOld = true;", vec![])
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = c
            .execute(
                "return window.__hallmarkOld === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await
            .ok();
        if fresh == Some(Value::Bool(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "clicking {id} led nowhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Type into the element with this id.
pub async fn type_into(c: &Client, id: &str, text: &str) {
    let e = c.wait().for_element(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// The path and query of the page shown.
pub async fn location(c: &Client) -> String {
    let u = c.current_url().await.unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

/// Sign in on the page shown (the sign-in form).
pub async fn sign_in(c: &Client, user: &str, password: &str) {
    type_into(c, "username", user).await;
    type_into(c, "password", password).await;
    click(c, "sign-in").await;
}
