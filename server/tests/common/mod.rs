//! Test fixture, shared by the server's integration tests and the end-to-end crate (which
//! includes this file as `hallmark_e2e::server`): a real `hallmark-server` process on a free
//! loopback port over TLS, with its own temporary data directory, killed on drop; and a small
//! HTTPS client that trusts only its CA.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// The server binary: Cargo's own build of it in the server's tests, the workspace build in the
/// end-to-end crate (which has no `CARGO_BIN_EXE_hallmark-server`).
pub fn server_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_hallmark-server") {
        Some(path) => PathBuf::from(path),
        None => workspace_bin("hallmark-server"),
    }
}

/// Path of one of the workspace's binaries (`hallmark-server`, `hallmark-agent`,
/// `hallmark-provision`, `hallmark-hwsim`) in this test's target directory. `cargo test` builds
/// only the libraries other packages' tests need, so the first call in a test process runs
/// `cargo build --workspace --bins` (a no-op when everything is fresh).
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // The variables cargo sets for a test process (CARGO_PKG_NAME, CARGO_MANIFEST_DIR…)
        // are ones build scripts (ring's) declare they depend on: inherited, they would make
        // this build and the outer `cargo test` rebuild those crates for each other, minutes
        // per test binary. Only cargo's own settings go through.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let setting = [
                "CARGO_HOME",
                "CARGO_TARGET_DIR",
                "CARGO_BUILD_",
                "CARGO_TERM_",
            ]
            .iter()
            .any(|keep| name.starts_with(keep));
            if name.starts_with("CARGO_") && !setting {
                cargo.env_remove(&name);
            }
        }
        let status = cargo
            .args(["build", "--workspace", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    // target/debug/deps/<test> → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `program` run through bash, which first closes every descriptor above stderr: a test process
/// that talks to simulated TPMs (tpm2-tss's swtpm TCTI opens a socket per command, without
/// close-on-exec) must not hand such a connection to a child, which would hold it and block that
/// TPM for good (swtpm serves one connection at a time).
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    const CLOSE_FDS_AND_EXEC: &str = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$0" "$@""#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(CLOSE_FDS_AND_EXEC).arg(program);
    cmd
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
    envs: Vec<(String, String)>,
}

/// A loopback port that was free a moment ago, drawn at random from below the kernel's ephemeral
/// range: outgoing connections (thousands in a test run) take their local ports from that range,
/// so a port picked there could be taken before the server binds it, or while it restarts.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    for _ in 0..256 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = FLOOR + (h.finish() % u64::from(low.saturating_sub(FLOOR).max(1))) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this run's servers use PostgreSQL (`HALLMARK_TEST_BACKEND=postgres`): for the few
/// tests whose subject is the embedded store's own files.
pub fn on_postgres() -> bool {
    std::env::var("HALLMARK_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// The database the test's server should use: with `HALLMARK_TEST_BACKEND=postgres` (and
/// `HALLMARK_TEST_PG`, the socket directory of a running cluster — `scripts/test` sets both),
/// a fresh database there; otherwise `None`, the embedded store. One test body, two backends.
pub fn test_database() -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let dir = std::env::var("HALLMARK_TEST_PG").expect(
        "HALLMARK_TEST_BACKEND=postgres needs HALLMARK_TEST_PG: the socket directory of a cluster \
         (scripts/pg-cluster start DIR; scripts/test does it)",
    );
    Some(fresh_database(&dir))
}

/// A new, empty database in the cluster listening in `socket_dir`; its connection string.
pub fn fresh_database(socket_dir: &str) -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    let name = format!(
        "t_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let out = Command::new("psql")
        .args(["-h", socket_dir, "-U", "postgres", "-qAt", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql (scripts/install-deps installs postgresql)");
    assert!(
        out.status.success(),
        "create database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("host={socket_dir} user=postgres dbname={name}")
}

/// Run `hallmark-server init` into `data_dir` with this issuer (on the test's backend); the
/// parsed JSON it printed.
pub fn init(data_dir: &Path, issuer: &str) -> Value {
    let mut cmd = clean_command(server_bin());
    cmd.args(["init", "--data-dir"])
        .arg(data_dir)
        .args(["--issuer", issuer]);
    if let Some(url) = test_database() {
        cmd.args(["--database", &url]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        Self::start_with_env(extra, &[])
    }

    /// Init and serve over TLS with extra `serve` flags and environment variables.
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_at(None, extra, envs)
    }

    /// [`TestServer::start_with_env`] with the data directory at `data_dir` (which must not
    /// exist yet; e.g. on a small file system of the test's own) instead of in the temp dir.
    pub fn start_at(data_dir: Option<PathBuf>, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = data_dir.unwrap_or_else(|| dir.path().join("data"));
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
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn();
        server
    }

    /// `n` replicas of one server on the PostgreSQL database `database_url`: `init` once, the
    /// data directory copied before any replica's first start (as an operator does with
    /// `cp -a`), each replica on its own port, all with the first one's issuer.
    pub fn start_replicas(n: usize, database_url: &str, extra: &[&str]) -> Vec<TestServer> {
        let first_dir = tempfile::tempdir().unwrap();
        let first_data = first_dir.path().join("data");
        let first_port = free_port();
        let issuer = format!("https://localhost:{first_port}");
        let out = clean_command(server_bin())
            .args(["init", "--data-dir"])
            .arg(&first_data)
            .args(["--issuer", &issuer, "--database", database_url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut dirs = vec![(first_dir, first_data, first_port)];
        for _ in 1..n {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let status = Command::new("cp")
                .args(["-a"])
                .arg(&dirs[0].1)
                .arg(&data)
                .status()
                .unwrap();
            assert!(status.success());
            dirs.push((dir, data, free_port()));
        }
        dirs.into_iter()
            .map(|(dir, data_dir, port)| {
                let ca_cert = data_dir.join("tls/ca.pem");
                let http = client_for(&std::fs::read(&ca_cert).unwrap());
                let mut server = TestServer {
                    dir,
                    data_dir,
                    port,
                    issuer: issuer.clone(),
                    ca_cert,
                    admin_id: out["admin_client_id"].as_str().unwrap().to_owned(),
                    admin_secret: out["admin_client_secret"].as_str().unwrap().to_owned(),
                    child: None,
                    http,
                    extra_args: extra.iter().map(|s| s.to_string()).collect(),
                    envs: Vec::new(),
                };
                server.spawn();
                server
            })
            .collect()
    }

    /// Start the process (again) on the same data directory and port.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = clean_command(server_bin())
            .args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // With --insecure-http the probe must be plain HTTP; the issuer stays what init wrote.
        let (probe, url) = if self.extra_args.iter().any(|a| a == "--insecure-http") {
            let plain = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .new_agent();
            (plain, format!("http://127.0.0.1:{}/readyz", self.port))
        } else {
            (self.http.clone(), self.url("/readyz"))
        };
        loop {
            if let Ok(r) = probe.get(&url).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replace the extra `serve` flags used by the next [`TestServer::spawn`].
    pub fn set_extra_args(&mut self, extra: &[&str]) {
        self.extra_args = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Send `signal` (as `kill` spells it, e.g. `-INT`) and wait for the exit; the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args([signal, &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }

    /// Wait up to `limit` for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
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
        self.signal_and_wait("-TERM")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// GET; (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.http.get(&self.url(path)).call().unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
        )
    }

    /// POST a form, optionally with Basic credentials; (status, headers' WWW-Authenticate, body).
    pub fn post_form(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, body) = self.post_form_full(path, basic, form);
        (status, body)
    }

    /// Like [`post_form`] but also returns the response headers.
    pub fn post_form_full(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, ureq::http::HeaderMap, Value) {
        let mut req = self.http.post(&self.url(path));
        if let Some((id, secret)) = basic {
            req = req.header("Authorization", &basic_header(id, secret));
        }
        let mut r = req.send_form(form.iter().copied()).unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// POST raw bytes with a content type and optional Authorization header.
    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(&self.url(path))
            .header("Content-Type", content_type);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
        )
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

    /// Introspect `token` as the admin client (RFC 7662); the answer's JSON.
    pub fn introspect(&self, token: &str) -> Value {
        let (status, body) = self.post_form(
            "/oauth2/introspect",
            Some((&self.admin_id, &self.admin_secret)),
            &[("token", token)],
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The audit log through `GET /admin/audit` (the server keeps running), oldest first.
    pub fn audit_log(&self) -> Vec<Value> {
        let token = self.admin_token("audit:read");
        let mut r = self
            .http
            .get(&self.url("/admin/audit?limit=1000"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        body["entries"].as_array().unwrap().clone()
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

impl TestServer {
    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A line of the server process's `/proc/PID/status` in KiB (e.g. `VmHWM`, its peak
    /// resident memory).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid().unwrap())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// GET; (status, headers, body text).
    pub fn get_full(&self, path: &str) -> (u16, ureq::http::HeaderMap, String) {
        let mut r = self.http.get(&self.url(path)).call().unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.body_mut().read_to_string().unwrap())
    }

    /// POST `body` with any headers (values as raw bytes, so they may be non-ASCII); (status,
    /// headers, body text).
    pub fn post_bytes(
        &self,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> (u16, ureq::http::HeaderMap, String) {
        let mut req = self.http.post(&self.url(path));
        for (name, value) in headers {
            req = req.header(*name, ureq::http::HeaderValue::from_bytes(value).unwrap());
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.body_mut().read_to_string().unwrap())
    }

    /// Send `request` (a whole HTTP/1.1 request, as bytes, which may break any rule) over TLS
    /// and read the answer until the server closes; (status, raw response text). Status 0 if
    /// the server closed without answering.
    pub fn raw_https(&self, request: &[u8]) -> (u16, String) {
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.ca_cert).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request).unwrap();
        tls.flush().unwrap();
        let mut response = Vec::new();
        // A close without close_notify is how some servers end; what was read is what counts.
        let _ = tls.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// A form POST over [`TestServer::raw_https`] with arbitrary header bytes.
    pub fn raw_form_post(&self, path: &str, extra_headers: &[&[u8]], body: &[u8]) -> (u16, String) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        )
        .into_bytes();
        for h in extra_headers {
            req.extend_from_slice(h);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.raw_https(&req)
    }

    /// client_credentials with `client_secret_basic`; (status, headers, body).
    pub fn token_basic(
        &self,
        id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> (u16, ureq::http::HeaderMap, Value) {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.post_form_full("/oauth2/token", Some((id, secret)), &form)
    }

    /// client_credentials with a `private_key_jwt` assertion and extra form fields.
    pub fn token_assertion(
        &self,
        assertion: &str,
        extra: &[(&str, &str)],
    ) -> (u16, ureq::http::HeaderMap, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ];
        form.extend_from_slice(extra);
        self.post_form_full("/oauth2/token", None, &form)
    }

    /// Register a secret client with `scope` and auth `method`; (client_id, client_secret).
    pub fn register_secret_client(&self, scope: &str, method: &str) -> (String, String) {
        let info = self.register(serde_json::json!({
            "client_name": "test client",
            "scope": scope,
            "token_endpoint_auth_method": method,
        }));
        (
            info["client_id"].as_str().unwrap().to_owned(),
            info["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Register a `private_key_jwt` client holding `keys` (with their kids); its client_id.
    pub fn register_jwt_client(&self, scope: &str, keys: &[(&ClientKey, Option<&str>)]) -> String {
        let jwks: Vec<Value> = keys.iter().map(|(k, kid)| k.public_jwk(*kid)).collect();
        let info = self.register(serde_json::json!({
            "client_name": "device",
            "scope": scope,
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": jwks},
        }));
        assert!(
            info.get("client_secret").is_none(),
            "a key client gets no secret: {info}"
        );
        info["client_id"].as_str().unwrap().to_owned()
    }

    /// Claims of a good client assertion for `client_id`, audience the token endpoint.
    pub fn assertion_claims(&self, client_id: &str) -> Value {
        let now = now();
        serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": self.url("/oauth2/token"),
            "iat": now,
            "exp": now + 60,
            "jti": random_jti(),
        })
    }

    /// The published JWK Set.
    pub fn jwks(&self) -> Value {
        let (status, jwks) = self.get("/jwks.json");
        assert_eq!(status, 200);
        jwks
    }

    /// The signing keys, seeds included, wherever the server keeps them (its key file, or the
    /// database), as the key file's JSON: for tests that forge tokens with the real key.
    pub fn signing_keys(&self) -> Value {
        let data_dir = self.data_dir.clone();
        let file = hallmark_server::store::block_on(async move {
            use hallmark_server::backend::{database_of, open, Role};
            // The embedded store is locked while the server runs; its keys are in a file.
            let Some(database) = database_of(&data_dir).unwrap() else {
                return hallmark_server::keys::KeyFile::load(&data_dir).unwrap();
            };
            let backend = open(&data_dir, Some(&database), Role::Command)
                .await
                .unwrap();
            backend.keys.load().await.unwrap()
        })
        .unwrap();
        serde_json::to_value(&file).unwrap()
    }

    /// Stop the server (SIGTERM, graceful) if it runs, and read its whole audit log in-process.
    pub fn audit_entries(&mut self) -> Vec<hallmark_server::store::audit::AuditEntry> {
        if self.child.is_some() {
            assert!(self.terminate().success(), "{}", self.log());
        }
        let data_dir = self.data_dir.clone();
        hallmark_server::store::block_on(async move {
            use hallmark_server::backend::{database_of, open, Role};
            let database = database_of(&data_dir).unwrap();
            let store = open(&data_dir, database.as_ref(), Role::Command)
                .await
                .unwrap()
                .store;
            assert!(store.verify().await.unwrap().is_ok(), "audit chain intact");
            let mut all = Vec::new();
            for head in store.chains().await.unwrap() {
                all.extend(
                    store
                        .entries(head.chain.as_deref(), 0, usize::MAX)
                        .await
                        .unwrap(),
                );
            }
            all.sort_by_key(|e| e.body.time_ms);
            all
        })
        .unwrap()
    }
}

/// RFC 7523 §2.2 `client_assertion_type`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding.
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// A fresh random `jti`.
pub fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    b64(&bytes)
}

/// The decoded JSON header and payload of a compact JWS (no verification).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS: {token}");
    (
        serde_json::from_slice(&unb64(parts[0])).unwrap(),
        serde_json::from_slice(&unb64(parts[1])).unwrap(),
    )
}

/// A client's signing key, made in the test with libraries other than the server's verifier path.
pub enum ClientKey {
    /// ECDSA P-256 (ring), JWS ES256.
    Es256 {
        pair: ring::signature::EcdsaKeyPair,
        pkcs8: Vec<u8>,
    },
    /// Ed25519 (ed25519-dalek), JWS EdDSA.
    Ed25519(ed25519_dalek::SigningKey),
}

impl ClientKey {
    pub fn es256() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        ClientKey::Es256 {
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }

    pub fn ed25519() -> Self {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).unwrap();
        ClientKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The JOSE algorithm of this key.
    pub fn alg(&self) -> &'static str {
        match self {
            ClientKey::Es256 { .. } => "ES256",
            ClientKey::Ed25519(_) => "EdDSA",
        }
    }

    /// Raw public key bytes: the 65-byte uncompressed point, or the 32-byte Ed25519 key.
    pub fn public_bytes(&self) -> Vec<u8> {
        match self {
            ClientKey::Es256 { pair, .. } => {
                ring::signature::KeyPair::public_key(pair).as_ref().to_vec()
            }
            ClientKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    /// The public JWK (RFC 7518 §6.2.1, RFC 8037 §2).
    pub fn public_jwk(&self, kid: Option<&str>) -> Value {
        let public = self.public_bytes();
        let mut jwk = match self {
            ClientKey::Es256 { .. } => {
                assert_eq!((public.len(), public[0]), (65, 0x04));
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..])})
            }
            ClientKey::Ed25519(_) => {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&public)})
            }
        };
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        jwk
    }

    /// Sign `input` the way JWS wants: r||s for ES256 (RFC 7518 §3.4), the plain signature for EdDSA.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            ClientKey::Es256 { pair, .. } => pair
                .sign(&ring::rand::SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec(),
            ClientKey::Ed25519(k) => ed25519_dalek::Signer::sign(k, input).to_bytes().to_vec(),
        }
    }

    /// An ES256 signature in ASN.1 DER instead of JWS's fixed r||s form.
    pub fn sign_der(&self, input: &[u8]) -> Vec<u8> {
        let ClientKey::Es256 { pkcs8, .. } = self else {
            panic!("ES256 only")
        };
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng).unwrap();
        pair.sign(&rng, input).unwrap().as_ref().to_vec()
    }

    /// A compact JWS with exactly this header and these claims, signed by this key.
    pub fn jwt(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// A compact JWS with the key's own `alg` and this `kid`.
    pub fn assertion(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = serde_json::json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        self.jwt(&header, claims)
    }
}

/// Run the binary with `args` and `envs`; its output. HALLMARK_* variables of the test process
/// are removed so that only what the test says reaches the binary.
pub fn run_cli(args: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = clean_command(server_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("HALLMARK_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
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
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
