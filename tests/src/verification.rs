//! A scripted browser for the server's verification page (`/device`, RFC 8628 §3.3): it keeps
//! the session cookie, echoes each form's CSRF token, signs in, enters the user code and
//! approves or denies — the same requests a person's browser sends, without JavaScript.

use std::sync::Arc;
use std::time::Duration;

use crate::server::TestServer;

/// Creates a person who may approve devices (`POST /admin/users`, scope `users:admin`).
pub fn create_user(server: &TestServer, username: &str, password: &str) {
    let token = server.admin_token("users:admin");
    let (status, body) = server.post_raw(
        "/admin/users",
        "application/json",
        Some(&format!("Bearer {token}")),
        serde_json::json!({"username": username, "password": password})
            .to_string()
            .as_bytes(),
    );
    assert!(
        status == 201 || status == 200,
        "create user: {status} {body}"
    );
}

/// A browser session on the verification page.
#[derive(Clone)]
pub struct Browser {
    http: ureq::Agent,
    base: String,
    /// The session cookie, `name=value`.
    cookie: Option<String>,
    /// The flash cookie a POST leaves for the page it redirects to, `name=value`.
    flash: Option<String>,
}

/// A page as the browser saw it.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub html: String,
}

impl Page {
    /// The value of the hidden `csrf` input.
    pub fn csrf(&self) -> String {
        hidden_value(&self.html, "csrf").unwrap_or_else(|| panic!("no csrf field in {}", self.html))
    }
}

impl Browser {
    /// The session cookie (`name=value`) the browser holds, if any.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Hold this cookie (`name=value`) from now on, as a stolen or restored one would be.
    pub fn set_cookie(&mut self, cookie: Option<String>) {
        self.cookie = cookie;
    }

    /// A browser that trusts only `server`'s CA and follows no redirects by itself (it needs
    /// the `Set-Cookie` of each response).
    pub fn new(server: &TestServer) -> Browser {
        let ca = std::fs::read(&server.ca_cert).unwrap();
        let ca = ureq::tls::Certificate::from_pem(&ca).unwrap().to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let http = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .new_agent();
        Browser {
            http,
            base: server.issuer.clone(),
            cookie: None,
            flash: None,
        }
    }

    /// GET a path (following redirects by hand).
    pub fn get(&mut self, path: &str) -> Page {
        let mut req = self.http.get(&format!("{}{path}", self.base));
        if let Some(c) = self.cookie_header() {
            req = req.header("Cookie", &c);
        }
        let page = self.read(req.call());
        self.follow(page)
    }

    /// POST a form to a path (following redirects by hand).
    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self.http.post(&format!("{}{path}", self.base));
        if let Some(c) = self.cookie_header() {
            req = req.header("Cookie", &c);
        }
        let page = self.read(req.send_form(form.iter().copied()));
        self.follow(page)
    }

    /// Signs in as `username` on the way to `user_code`, enters the code, and approves
    /// (`approve`) or denies the request; the final page.
    pub fn decide(
        &mut self,
        username: &str,
        password: &str,
        user_code: &str,
        approve: bool,
    ) -> Page {
        let start = self.get(&format!("/device?user_code={user_code}"));
        assert_eq!(start.status, 200, "{}", start.html);
        let csrf = start.csrf();
        let code_page = self.post(
            "/device/sign-in",
            &[
                ("csrf", &csrf),
                ("user_code", user_code),
                ("username", username),
                ("password", password),
            ],
        );
        assert_eq!(code_page.status, 200, "sign-in: {}", code_page.html);
        assert!(
            code_page.html.contains("name=\"user_code\""),
            "no code form after sign-in: {}",
            code_page.html
        );
        let csrf = code_page.csrf();
        let consent = self.post("/device", &[("csrf", &csrf), ("user_code", user_code)]);
        assert_eq!(consent.status, 200, "code entry: {}", consent.html);
        assert!(consent.html.contains("id=\"approve\""), "{}", consent.html);
        let csrf = consent.csrf();
        let decision = if approve { "approve" } else { "deny" };
        self.post(
            "/device/decision",
            &[
                ("csrf", &csrf),
                ("user_code", user_code),
                ("decision", decision),
            ],
        )
    }

    fn read(&mut self, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Page {
        let mut resp = resp.unwrap();
        for value in resp.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_owned();
            // An expiring cookie (sign-out, a flash read) is removed.
            let kept = (!pair.ends_with('=')).then_some(pair.clone());
            if pair.starts_with("__Host-hallmark-flash=") {
                self.flash = kept;
            } else {
                self.cookie = kept;
            }
        }
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        Page {
            status: resp.status().as_u16(),
            location,
            html: resp.body_mut().read_to_string().unwrap(),
        }
    }

    fn cookie_header(&self) -> Option<String> {
        let all: Vec<&str> = self
            .cookie
            .iter()
            .chain(&self.flash)
            .map(String::as_str)
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    fn follow(&mut self, page: Page) -> Page {
        match (page.status, &page.location) {
            (301..=303 | 307 | 308, Some(to)) => {
                let to = to.strip_prefix(&self.base).unwrap_or(to).to_owned();
                self.get(&to)
            }
            _ => page,
        }
    }
}

/// The `value` of the input named `name`.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = tag[v..].find('"')?;
    Some(tag[v..v + end].to_owned())
}
