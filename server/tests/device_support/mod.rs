//! Fixtures of the device-flow tests: an in-process server (the protocol core and the router on a
//! temporary data directory, so tests choose the clock), and a cookie-keeping page client that
//! talks to that router from a chosen source address.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request};
use axum::Router;
use hallmark_server::config::{ConfigLayer, ServeSettings};
use hallmark_server::datadir::{self, InitOptions};
use hallmark_server::oauth::client_auth::Presented;
use hallmark_server::oauth::device_flow::{CodeLookup, DeviceAuthorization, UserCode};
use hallmark_server::oauth::form::Form;
use hallmark_server::oauth::registration::ClientMetadata;
use hallmark_server::oauth::token_endpoint::TokenResponse;
use hallmark_server::oauth::{AuthServer, OAuthError, RequestCtx};
use hallmark_server::store::audit::AuditEntry;
use serde_json::json;
use tower::ServiceExt as _;

/// The test's backend (see `common::test_database`): a fresh PostgreSQL database when the
/// suite runs on PostgreSQL, else the embedded store.
fn test_database() -> Option<hallmark_server::backend::Database> {
    if std::env::var("HALLMARK_TEST_BACKEND").as_deref() != Ok("postgres") {
        return None;
    }
    let dir = std::env::var("HALLMARK_TEST_PG").expect("HALLMARK_TEST_PG: a cluster's socket dir");
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    let name = format!(
        "t_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let out = std::process::Command::new("psql")
        .args(["-h", &dir, "-U", "postgres", "-qAt", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(hallmark_server::backend::Database {
        url: hallmark_server::store::DatabaseUrl::parse(&format!(
            "host={dir} user=postgres dbname={name}"
        ))
        .unwrap(),
        ca: None,
    })
}

/// The RFC 8628 grant type.
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    hallmark_server::unix_now()
}

/// A server in this process. Needs a tokio runtime (the group committer runs on it).
pub struct InProcess {
    _dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub oauth: AuthServer,
    pub app: Router,
}

impl InProcess {
    /// A fresh data directory served with `overrides` over the defaults.
    pub async fn start(overrides: ConfigLayer) -> Self {
        Self::start_with_slots(overrides, None).await
    }

    /// [`InProcess::start`] with this many password-check slots instead of one per core, so a
    /// test can let many Argon2 runs overlap.
    pub async fn start_with_slots(overrides: ConfigLayer, password_slots: Option<usize>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        datadir::init(&InitOptions {
            data_dir: data_dir.clone(),
            issuer: "https://localhost:8443".into(),
            hosts: vec!["localhost".into()],
            database: test_database(),
        })
        .await
        .unwrap();
        let settings = ServeSettings::resolve(&data_dir, None, overrides).unwrap();
        let mut built = hallmark_server::serve::build(&settings).await.unwrap();
        if let Some(n) = password_slots {
            built.oauth.password_checks = hallmark_server::accounts::PasswordChecks::new(n);
        }
        let app = hallmark_server::http::router(&built, &settings);
        let oauth = built.oauth.clone();
        InProcess {
            _dir: dir,
            data_dir,
            oauth,
            app,
        }
    }

    /// Register a public device client (`token_endpoint_auth_method=none`); its client_id.
    pub async fn device_client(&self, name: &str, scope: &str) -> String {
        let meta: ClientMetadata = serde_json::from_value(json!({
            "client_name": name,
            "grant_types": [DEVICE_CODE, "refresh_token"],
            "scope": scope,
            "token_endpoint_auth_method": "none",
        }))
        .unwrap();
        let info = self
            .oauth
            .register_client(meta, "test", &RequestCtx::at(now()))
            .await
            .unwrap();
        info.client_id
    }

    /// Create a user through the same path as `POST /admin/users`.
    pub async fn add_user(&self, name: &str, password: &str) {
        let new = serde_json::from_value(json!({"username": name, "password": password})).unwrap();
        self.oauth
            .create_user(new, "test", &RequestCtx::at(now()))
            .await
            .unwrap();
    }

    /// RFC 8628 §3.1 as a public client.
    pub async fn authorize(
        &self,
        client_id: &str,
        scope: Option<&str>,
        at: u64,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let mut pairs = vec![("client_id", client_id)];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        let (presented, form) = request(&pairs);
        self.oauth
            .device_authorization(presented, form, &RequestCtx::at(at))
            .await
    }

    /// One poll of the device code grant.
    pub async fn poll(
        &self,
        client_id: &str,
        device_code: &str,
        at: u64,
    ) -> Result<TokenResponse, OAuthError> {
        let (presented, form) = request(&[
            ("grant_type", DEVICE_CODE),
            ("client_id", client_id),
            ("device_code", device_code),
        ]);
        self.oauth.token(presented, form, &RequestCtx::at(at)).await
    }

    /// One refresh.
    pub async fn refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
        at: u64,
    ) -> Result<TokenResponse, OAuthError> {
        let (presented, form) = request(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token),
        ]);
        self.oauth.token(presented, form, &RequestCtx::at(at)).await
    }

    /// A signed-in `user` approves or denies the request with `user_code`.
    pub async fn decide(&self, user_code: &str, user: &str, approve: bool, at: u64) -> CodeLookup {
        let code = UserCode::parse(user_code).unwrap();
        self.oauth
            .decide_device_request(&code, user, None, approve, &RequestCtx::at(at))
            .await
            .unwrap()
    }

    /// Every audit entry so far.
    pub async fn audit(&self) -> Vec<AuditEntry> {
        self.oauth.audit.entries(None, 0, usize::MAX).await.unwrap()
    }

    /// A page client from `source`.
    pub fn browser(&self, source: &str) -> Browser {
        Browser {
            app: self.app.clone(),
            cookie: None,
            flash: None,
            source: format!("{source}:40000").parse().unwrap(),
            forwarded_for: None,
            accept_language: None,
        }
    }
}

/// Credentials and form of a token-endpoint-style request, as the HTTP adapter reads them.
pub fn request(pairs: &[(&str, &str)]) -> (Presented, Form) {
    let body = serde_urlencoded::to_string(pairs).unwrap();
    let mut form = Form::parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap();
    let presented = Presented::from_request(None, &mut form).unwrap();
    (presented, form)
}

/// A response of the page.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// For a page reached by following a POST's redirect: that POST's status and `Location`.
    pub via: Option<(u16, String)>,
}

impl Page {
    /// The page's CSRF token (the first hidden `csrf` field).
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))
            + marker.len();
        let len = self.body[start..].find('"').unwrap();
        self.body[start..start + len].to_owned()
    }

    /// Whether the page says `text`.
    pub fn says(&self, text: &str) -> bool {
        self.body.contains(text)
    }
}

/// A browser without JavaScript: keeps its cookies, follows no redirect unless asked
/// ([`Browser::submit`]).
#[derive(Clone)]
pub struct Browser {
    app: Router,
    /// The session cookie, `name=value`.
    pub cookie: Option<String>,
    /// The flash cookie a POST left for the next page, `name=value`.
    pub flash: Option<String>,
    pub source: SocketAddr,
    /// `X-Forwarded-For` sent with every request, as a proxy (or a liar) would.
    pub forwarded_for: Option<String>,
    /// `Accept-Language` sent with every request.
    pub accept_language: Option<String>,
}

impl Browser {
    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Page {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// POST a form to `path`.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
            .unwrap();
        self.send(req).await
    }

    /// GET `path` and follow its redirects (at most a few).
    pub async fn get_following(&mut self, path: &str) -> Page {
        let mut page = self.get(path).await;
        for _ in 0..4 {
            if page.status != 303 {
                break;
            }
            let to = page.headers[header::LOCATION].to_str().unwrap().to_owned();
            page = self.get(&to).await;
        }
        page
    }

    /// POST a form and follow its redirect, as a browser does (post/redirect/get); the page it
    /// lands on, with the POST's status in `via`.
    pub async fn submit(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let after = self.post(path, form).await;
        if after.status != 303 {
            return after;
        }
        let to = after.headers[header::LOCATION].to_str().unwrap().to_owned();
        let mut page = self.get(&to).await;
        page.via = Some((after.status, to));
        page
    }

    /// Open the page (with a code in the URL, if given) and sign in; the page after the redirect.
    pub async fn sign_in(&mut self, user: &str, password: &str, user_code: &str) -> Page {
        let path = if user_code.is_empty() {
            "/device".to_owned()
        } else {
            format!("/device?user_code={user_code}")
        };
        let start = self.get(&path).await;
        let csrf = start.csrf();
        self.submit(
            "/device/sign-in",
            &[
                ("csrf", &csrf),
                ("username", user),
                ("password", password),
                ("user_code", user_code),
            ],
        )
        .await
    }

    /// Enter `code` on a code-entry page `from`; the page the redirect lands on.
    pub async fn enter_code(&mut self, from: &Page, code: &str) -> Page {
        let csrf = from.csrf();
        self.submit("/device", &[("csrf", &csrf), ("user_code", code)])
            .await
    }

    /// Press Approve or Deny on a consent page; the page the redirect lands on.
    pub async fn decide(&mut self, consent: &Page, code: &str, approve: bool) -> Page {
        let csrf = consent.csrf();
        let decision = if approve { "approve" } else { "deny" };
        self.submit(
            "/device/decision",
            &[("csrf", &csrf), ("user_code", code), ("decision", decision)],
        )
        .await
    }

    async fn send(&mut self, mut req: Request<Body>) -> Page {
        req.extensions_mut().insert(ConnectInfo(self.source));
        if let Some(xff) = &self.forwarded_for {
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
        }
        if let Some(lang) = &self.accept_language {
            req.headers_mut()
                .insert(header::ACCEPT_LANGUAGE, lang.parse().unwrap());
        }
        let mut cookies: Vec<String> = self.cookie.iter().cloned().collect();
        cookies.extend(self.flash.clone());
        if !cookies.is_empty() {
            req.headers_mut()
                .insert(header::COOKIE, cookies.join("; ").parse().unwrap());
        }
        let resp = self.app.clone().oneshot(req).await.unwrap();
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let kept = (!value.is_empty()).then(|| pair.to_owned());
            if name == "__Host-hallmark-flash" {
                self.flash = kept;
            } else {
                self.cookie = kept;
            }
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
            via: None,
        }
    }
}
