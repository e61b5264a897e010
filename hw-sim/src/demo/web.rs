//! The demo's HTTPS side: readiness, creating the station client through the admin API, and
//! approving a device on the verification page the way a browser does (session cookie, CSRF
//! token from each form, no JavaScript).

use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// Name of the verification page's session cookie.
const SESSION_COOKIE: &str = "__Host-hallmark-session";

/// An HTTPS client for the demo's server, trusting only its CA, following no redirects.
#[derive(Debug)]
pub(super) struct Web {
    issuer: String,
    http: ureq::Agent,
}

type Page = (u16, Option<String>, String);

impl Web {
    pub(super) fn new(issuer: &str, ca_cert: &Path) -> Result<Self, String> {
        let pem = std::fs::read(ca_cert).map_err(|e| e.to_string())?;
        let ca = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| e.to_string())?
            .to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let http = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Ok(Web {
            issuer: issuer.to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub(super) fn wait_ready(&self, limit: Duration, stop: &AtomicBool) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.http.get(&self.url("/readyz")).call() {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => {
                    if Instant::now() > deadline {
                        return Err(format!("/readyz still answers {}", r.status()));
                    }
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(format!("not ready after {} s: {e}", limit.as_secs()));
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Registers a station client (scope `devices:provision`); `{"client_id","client_secret"}`.
    pub(super) fn create_station(
        &self,
        admin_id: &str,
        admin_secret: &str,
    ) -> Result<Value, String> {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{admin_id}:{admin_secret}"));
        let mut r = self
            .http
            .post(&self.url("/oauth2/token"))
            .header("Authorization", &format!("Basic {basic}"))
            .send_form([
                ("grant_type", "client_credentials"),
                ("scope", "clients:admin"),
            ])
            .map_err(|e| e.to_string())?;
        let token: Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
        let token = token["access_token"].as_str().ok_or("no admin token")?;
        let mut r = self
            .http
            .post(&self.url("/admin/clients"))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({
                "client_name": "demo factory station",
                "grant_types": ["client_credentials"],
                "scope": "devices:provision",
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .map_err(|e| e.to_string())?;
        if r.status() != 201 {
            return Err(format!("POST /admin/clients answered {}", r.status()));
        }
        let body: Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
        Ok(
            serde_json::json!({"client_id": body["client_id"], "client_secret": body["client_secret"]}),
        )
    }

    /// `GET /admin/devices/{client_id}` with the admin client (scope `devices:admin`): what the
    /// server knows of the device, `attestation` included.
    pub(super) fn device_view(
        &self,
        admin_id: &str,
        admin_secret: &str,
        client_id: &str,
    ) -> Result<Value, String> {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{admin_id}:{admin_secret}"));
        let mut r = self
            .http
            .post(&self.url("/oauth2/token"))
            .header("Authorization", &format!("Basic {basic}"))
            .send_form([
                ("grant_type", "client_credentials"),
                ("scope", "devices:admin"),
            ])
            .map_err(|e| e.to_string())?;
        let token: Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
        let token = token["access_token"].as_str().ok_or("no admin token")?;
        let mut r = self
            .http
            .get(&self.url(&format!("/admin/devices/{client_id}")))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("GET /admin/devices answered {}", r.status()));
        }
        r.body_mut().read_json().map_err(|e| e.to_string())
    }

    /// Signs in on `/device`, opens the code, and approves it; the consent page's summary line.
    pub(super) fn approve(
        &self,
        user_code: &str,
        user: &str,
        password: &str,
    ) -> Result<String, String> {
        let start = format!("/device?user_code={user_code}");
        let (_, cookie, html) = self.get(&start, None)?;
        let cookie = cookie.ok_or("the page set no session cookie")?;
        let (status, signed_in, html) = self.post(
            "/device/sign-in",
            &cookie,
            &[
                ("csrf", &csrf(&html)?),
                ("user_code", user_code),
                ("username", user),
                ("password", password),
            ],
        )?;
        if !(300..400).contains(&status) {
            return Err(format!("sign-in answered {status}: {}", text_of(&html)));
        }
        let cookie = signed_in.unwrap_or(cookie);
        let (_, _, html) = self.get(&start, Some(&cookie))?;
        let token = csrf(&html)?;
        // Each form answers with a redirect (post/redirect/get): follow it as a browser would.
        let consent = self.submit(
            "/device",
            &cookie,
            &[("csrf", &token), ("user_code", user_code)],
        )?;
        if !consent.contains("id=\"approve\"") {
            return Err(format!("entering the code led to: {}", text_of(&consent)));
        }
        let decided = self.submit(
            "/device/decision",
            &cookie,
            &[
                ("csrf", &token),
                ("user_code", user_code),
                ("decision", "approve"),
            ],
        )?;
        if !decided.contains("id=\"result\"") {
            return Err(format!("approving led to: {}", text_of(&decided)));
        }
        let summary = text_of(&consent);
        Ok(summary.chars().take(200).collect())
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Result<Page, String> {
        let mut req = self.http.get(&self.url(path));
        if let Some(c) = cookie {
            req = req.header("Cookie", &format!("{SESSION_COOKIE}={c}"));
        }
        page(req.call())
    }

    /// POST a form and GET the page its 303 names; that page's body.
    fn submit(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Result<String, String> {
        let mut resp = self
            .http
            .post(&self.url(path))
            .header("Cookie", &format!("{SESSION_COOKIE}={cookie}"))
            .send_form(form.iter().copied())
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let to = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (status, to) {
            (303, Some(to)) => Ok(self.get(&to, Some(cookie))?.2),
            _ => {
                let body = resp
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| e.to_string())?;
                Err(format!("{path} answered {status}: {}", text_of(&body)))
            }
        }
    }

    fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Result<Page, String> {
        page(
            self.http
                .post(&self.url(path))
                .header("Cookie", &format!("{SESSION_COOKIE}={cookie}"))
                .send_form(form.iter().copied()),
        )
    }
}

/// (status, new session cookie value, body).
fn page(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Page, String> {
    let mut resp = resp.map_err(|e| e.to_string())?;
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            v.split(';')
                .next()?
                .trim()
                .strip_prefix(&format!("{SESSION_COOKIE}="))
                .map(str::to_owned)
        })
        .find(|v| !v.is_empty());
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((resp.status().as_u16(), cookie, body))
}

/// The CSRF token of the first form on the page.
fn csrf(html: &str) -> Result<String, String> {
    let at = html
        .find("name=\"csrf\"")
        .ok_or("no CSRF field on the page")?;
    let rest = &html[at..];
    let value = rest.find("value=\"").ok_or("no CSRF value")? + "value=\"".len();
    let end = rest[value..].find('"').ok_or("unterminated CSRF value")?;
    Ok(rest[value..value + end].to_owned())
}

/// The page's text, tags dropped and whitespace squeezed, for one-line messages.
fn text_of(html: &str) -> String {
    let body = html.find("<main").map_or(html, |i| &html[i..]);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `sub`, `scope` and lifetime of an access token, read from its payload (not verified: the
/// demo only shows what the server issued).
pub(super) fn describe_jwt(token: &str) -> String {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let Some(claims) = claims else {
        return "not a JWT".into();
    };
    let lifetime = claims["exp"]
        .as_u64()
        .zip(claims["iat"].as_u64())
        .map(|(e, i)| e.saturating_sub(i));
    format!(
        "sub={} scope={:?} valid {} s",
        claims["sub"].as_str().unwrap_or("?"),
        claims["scope"].as_str().unwrap_or(""),
        lifetime.map_or("?".into(), |l| l.to_string())
    )
}

/// A free loopback port (the OS picks; tiny race until the server binds it).
pub(super) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// 16 random bytes from the OS, base64url: the demo user's password.
pub(super) fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_csrf_token_and_page_text() {
        let html = r#"<html><main><h1>Sign in</h1><form><input type="hidden" name="csrf" value="abc-123"><p>Hi  there</p></form></main>"#;
        assert_eq!(csrf(html).unwrap(), "abc-123");
        assert_eq!(text_of(html), "Sign in Hi there");
        assert!(csrf("<p>no form</p>").is_err());
    }
}
