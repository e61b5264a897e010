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
    pub fn start(overrides: ConfigLayer) -> Self {
        Self::start_with_slots(overrides, None)
    }

    /// [`InProcess::start`] with this many password-check slots instead of one per core, so a
    /// test can let many Argon2 runs overlap.
    pub fn start_with_slots(overrides: ConfigLayer, password_slots: Option<usize>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        datadir::init(&InitOptions {
            data_dir: data_dir.clone(),
            issuer: "https://localhost:8443".into(),
            hosts: vec!["localhost".into()],
        })
        .unwrap();
        let settings = ServeSettings::resolve(&data_dir, None, overrides).unwrap();
        let mut built = hallmark_server::serve::build(&settings).unwrap();
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
            .decide_device_request(&code, user, approve, &RequestCtx::at(at))
            .await
            .unwrap()
    }

    /// Every audit entry so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.oauth.audit.entries(0, usize::MAX).unwrap()
    }

    /// A page client from `source`.
    pub fn browser(&self, source: &str) -> Browser {
        Browser {
            app: self.app.clone(),
            cookie: None,
            source: format!("{source}:40000").parse().unwrap(),
            forwarded_for: None,
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

/// A browser without JavaScript: keeps the session cookie, follows no redirect unless asked.
#[derive(Clone)]
pub struct Browser {
    app: Router,
    pub cookie: Option<String>,
    pub source: SocketAddr,
    /// `X-Forwarded-For` sent with every request, as a proxy (or a liar) would.
    pub forwarded_for: Option<String>,
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

    /// Open the page (with a code in the URL, if given) and sign in; the page after the redirect.
    pub async fn sign_in(&mut self, user: &str, password: &str, user_code: &str) -> Page {
        let path = if user_code.is_empty() {
            "/device".to_owned()
        } else {
            format!("/device?user_code={user_code}")
        };
        let start = self.get(&path).await;
        let csrf = start.csrf();
        let after = self
            .post(
                "/device/sign-in",
                &[
                    ("csrf", &csrf),
                    ("username", user),
                    ("password", password),
                    ("user_code", user_code),
                ],
            )
            .await;
        if after.status != 303 {
            return after;
        }
        let to = after.headers[header::LOCATION].to_str().unwrap().to_owned();
        self.get(&to).await
    }

    /// Enter `code` on a code-entry page `from`.
    pub async fn enter_code(&mut self, from: &Page, code: &str) -> Page {
        let csrf = from.csrf();
        self.post("/device", &[("csrf", &csrf), ("user_code", code)])
            .await
    }

    /// Press Approve or Deny on a consent page.
    pub async fn decide(&mut self, consent: &Page, code: &str, approve: bool) -> Page {
        let csrf = consent.csrf();
        let decision = if approve { "approve" } else { "deny" };
        self.post(
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
        if let Some(c) = &self.cookie {
            req.headers_mut().insert(header::COOKIE, c.parse().unwrap());
        }
        let resp = self.app.clone().oneshot(req).await.unwrap();
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (_, value) = pair.split_once('=').unwrap();
            self.cookie = (!value.is_empty()).then(|| pair.to_owned());
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
        }
    }
}
