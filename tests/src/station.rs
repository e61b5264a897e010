//! A factory station for the provisioning tests: a station client registered on a
//! [`TestServer`], its credentials file, simulated devices with their own EKs, manifests, and
//! `hallmark-provision` runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use hallmark_hwsim::Swtpm;
use serde_json::Value;

use crate::server::{basic_header, TestServer};

/// A station client and its credentials file (mode 0600) in its own temp dir.
#[derive(Debug)]
pub struct TestStation {
    pub dir: tempfile::TempDir,
    pub credentials: PathBuf,
    pub client_id: String,
    pub server_url: String,
    pub ca_cert: PathBuf,
}

impl TestStation {
    /// Registers a station client allowed `scope` (e.g. `devices:provision`).
    pub fn register(server: &TestServer, scope: &str) -> Self {
        let body = server.register(serde_json::json!({
            "client_name": "test station",
            "grant_types": ["client_credentials"],
            "scope": scope,
            "token_endpoint_auth_method": "client_secret_basic",
        }));
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("station.json");
        let client_id = body["client_id"].as_str().unwrap().to_owned();
        let json = serde_json::json!({
            "client_id": client_id,
            "client_secret": body["client_secret"].as_str().unwrap(),
        });
        write_private(&credentials, json.to_string().as_bytes());
        TestStation {
            dir,
            credentials,
            client_id,
            server_url: server.issuer.clone(),
            ca_cert: server.ca_cert.clone(),
        }
    }

    /// `hallmark-provision` with `--server`, `--ca` and `--station` set.
    pub fn command(&self) -> Command {
        let mut cmd = crate::server::clean_command(crate::bin("hallmark-provision"));
        cmd.arg("--server")
            .arg(&self.server_url)
            .arg("--ca")
            .arg(&self.ca_cert)
            .arg("--station")
            .arg(&self.credentials);
        cmd
    }

    /// `hallmark-provision device …` for one device; its output.
    pub fn provision_device(&self, device: &TestDevice, extra: &[&str]) -> Output {
        self.command()
            .args(extra)
            .args([
                "device",
                "--serial",
                &device.serial,
                "--model",
                "test-1",
                "--tcti",
            ])
            .arg(device.tcti())
            .arg("--config-out")
            .arg(&device.config_out)
            .output()
            .unwrap()
    }

    /// `hallmark-provision batch` over `manifest`, report to `report`.
    pub fn batch(&self, manifest: &Path, report: &Path, parallel: usize) -> Command {
        let mut cmd = self.command();
        cmd.args(["batch", "--no-progress", "--manifest"])
            .arg(manifest)
            .arg("--report")
            .arg(report)
            .args(["--parallel", &parallel.to_string()]);
        cmd
    }
}

/// A simulated device: a TPM with its own EK, and where its config goes.
#[derive(Debug)]
pub struct TestDevice {
    pub serial: String,
    pub tpm: Swtpm,
    pub dir: tempfile::TempDir,
    pub config_out: PathBuf,
}

impl TestDevice {
    pub fn new(serial: &str) -> Self {
        let tpm = Swtpm::temp_manufactured_unique().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config_out = dir.path().join(serial).join("agent.toml");
        TestDevice {
            serial: serial.to_owned(),
            tpm,
            dir,
            config_out,
        }
    }

    /// `count` devices `{prefix}-1…`, manufactured in parallel.
    pub fn many(prefix: &str, count: usize) -> Vec<TestDevice> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=count)
                .map(|i| s.spawn(move || TestDevice::new(&format!("{prefix}-{i}"))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    pub fn tcti(&self) -> String {
        self.tpm.tcti()
    }

    /// The factory secret sealed in the TPM, base64url as the server issued it (or None).
    pub fn unsealed_secret(&self) -> Option<String> {
        let mut tpm = hallmark_agent::tpm::Tpm::open(&self.tcti()).unwrap();
        tpm.unseal_factory_secret()
            .unwrap()
            .map(|raw| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw))
    }

    /// Erases the sealed secret, as if the station crashed between registering and sealing.
    pub fn erase_secret(&self) {
        hallmark_agent::tpm::Tpm::open(&self.tcti())
            .unwrap()
            .erase_factory_secret()
            .unwrap();
    }
}

/// A manifest with one row per device, plus extra raw rows; its path.
pub fn write_manifest(dir: &Path, devices: &[TestDevice], extra_rows: &[String]) -> PathBuf {
    let mut text = String::from("serial,model,tcti,config_out\n");
    for d in devices {
        text.push_str(&format!(
            "{},test-1,\"{}\",{}\n",
            d.serial,
            d.tcti(),
            d.config_out.display()
        ));
    }
    for row in extra_rows {
        text.push_str(row);
        text.push('\n');
    }
    let path = dir.join("manifest.csv");
    std::fs::write(&path, text).unwrap();
    path
}

/// The report's complete lines, parsed (a line being written is not complete yet).
pub fn report_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `GET /admin/devices?serial=S` with a devices:admin token: (status, body).
pub fn device_by_serial(server: &TestServer, serial: &str) -> (u16, Value) {
    let token = server.admin_token("devices:admin");
    let mut r = server
        .http
        .get(&server.url(&format!("/admin/devices?serial={serial}")))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

/// Whether the device's sealed secret authenticates as its client_id (client_credentials).
pub fn secret_authenticates(server: &TestServer, client_id: &str, secret: &str) -> bool {
    let mut r = server
        .http
        .post(&server.url("/oauth2/token"))
        .header("Authorization", &basic_header(client_id, secret))
        .send_form([("grant_type", "client_credentials")])
        .unwrap();
    let ok = r.status() == 200;
    let _ = r.body_mut().read_to_string();
    ok
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}
