//! A real `hallmark-server` process on a free loopback port over TLS, with its own
//! temporary data directory, killed on drop; and a small HTTPS client that trusts only its CA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// The server binary.
pub fn server_bin() -> PathBuf {
    crate::bin("hallmark-server")
}

/// A running server.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub port: u16,
    pub issuer: String,
    pub ca_cert: PathBuf,
    pub admin_id: String,
    pub admin_secret: String,
    child: Option<Child>,
    pub http: ureq::Agent,
    extra_args: Vec<String>,
}

/// A free loopback port (the OS picks; tiny race until the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Run `hallmark-server init` into `data_dir` with this issuer; the parsed JSON it printed.
pub fn init(data_dir: &Path, issuer: &str) -> Value {
    let out = Command::new(server_bin())
        .args(["init", "--data-dir"])
        .arg(data_dir)
        .args(["--issuer", issuer])
        .output()
        .unwrap();
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("init prints one JSON object")
}

/// An HTTPS client that trusts only `ca_pem` and never turns statuses into errors.
pub fn client_for(ca_pem: &[u8]) -> ureq::Agent {
    let ca = ureq::tls::Certificate::from_pem(ca_pem).unwrap().to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

impl TestServer {
    /// Init and serve over TLS with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Init and serve over TLS with extra `serve` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let port = free_port();
        let issuer = format!("https://localhost:{port}");
        let out = init(&data_dir, &issuer);
        let ca_cert = PathBuf::from(out["ca_cert"].as_str().unwrap());
        let http = client_for(&std::fs::read(&ca_cert).unwrap());
        let mut server = TestServer {
            dir,
            data_dir,
            port,
            issuer,
            ca_cert,
            admin_id: out["admin_client_id"].as_str().unwrap().to_owned(),
            admin_secret: out["admin_client_secret"].as_str().unwrap().to_owned(),
            child: None,
            http,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    /// Start the process (again) on the same data directory and port.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(server_bin())
            .args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(&self.url("/readyz")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited at start ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "server not ready after 20 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the process (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop with SIGTERM and wait for a graceful exit; the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        c.wait().unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// GET; (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.http.get(&self.url(path)).call().unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    }

    /// POST a form, optionally with Basic credentials; (status, headers' WWW-Authenticate, body).
    pub fn post_form(&self, path: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
        let (status, _, body) = self.post_form_full(path, basic, form);
        (status, body)
    }

    /// Like [`post_form`] but also returns the response headers.
    pub fn post_form_full(&self, path: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, ureq::http::HeaderMap, Value) {
        let mut req = self.http.post(&self.url(path));
        if let Some((id, secret)) = basic {
            req = req.header("Authorization", &basic_header(id, secret));
        }
        let mut r = req.send_form(form.iter().copied()).unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.body_mut().read_to_string().unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POST raw bytes with a content type and optional Authorization header.
    pub fn post_raw(&self, path: &str, content_type: &str, authorization: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut req = self.http.post(&self.url(path)).header("Content-Type", content_type);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    }

    /// A client_credentials access token for the admin client with `scope`.
    pub fn admin_token(&self, scope: &str) -> String {
        let (status, body) = self.post_form(
            "/oauth2/token",
            Some((&self.admin_id, &self.admin_secret)),
            &[("grant_type", "client_credentials"), ("scope", scope)],
        );
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Register a client through `POST /admin/clients`; the RFC 7591 response.
    pub fn register(&self, metadata: Value) -> Value {
        let token = self.admin_token("clients:admin");
        let (status, body) = self.post_raw(
            "/admin/clients",
            "application/json",
            Some(&format!("Bearer {token}")),
            metadata.to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencode(s);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
