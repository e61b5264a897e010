//! A provisioned simulated device, as the factory line leaves it: its own swtpm (own EK),
//! registered on a [`TestServer`] through `POST /admin/devices`, the factory secret sealed into
//! its TPM, and an `agent.toml` written with [`AgentConfig::to_toml`]; plus helpers to run the
//! real `hallmark-agent` binary against it and to look inside its TPM.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::config::{AgentConfig, Flow, Handles, RekeyInterval};
use hallmark_agent::oauth::assertion;
use hallmark_agent::socket::{fetch, Answer};
use hallmark_agent::tpm::{Inventory, KeySlot, Tpm};
use hallmark_hwsim::Swtpm;
use serde_json::Value;

use crate::server::TestServer;

/// A provisioned device. Dropping it kills its swtpm and removes its directory.
pub struct Device {
    /// The device's TPM. Declared first so it is killed before its directory goes.
    pub tpm: Swtpm,
    /// Directory holding `agent.toml`, `ca.pem` and `state/`.
    pub dir: tempfile::TempDir,
    /// The agent config file.
    pub config_path: PathBuf,
    /// The config as written.
    pub config: AgentConfig,
    /// The device's client_id.
    pub client_id: String,
    /// The serial it was registered with.
    pub serial: String,
    /// The factory secret as the server handed it out (base64url): tests use it to show that
    /// the server refuses it after rotation. A real station never keeps it.
    pub factory_secret: String,
}

/// Options for [`Device::provision_with`].
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Grant the agent uses.
    pub flow: Flow,
    /// Scopes in the config.
    pub scopes: Vec<String>,
    /// Issuer written into the config (default: the server's).
    pub issuer: Option<String>,
    /// Register the EK's public key and certificate (default), or only its fingerprint, as
    /// stations did before attestation existed.
    pub register_ek: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            flow: Flow::ClientCredentials,
            scopes: Vec::new(),
            issuer: None,
            register_ek: true,
        }
    }
}

impl Device {
    /// Registers and provisions a new device on `server` with default options.
    pub fn provision(server: &TestServer) -> Device {
        Self::provision_with(server, DeviceOptions::default())
    }

    /// Registers and provisions a new device on `server`.
    pub fn provision_with(server: &TestServer, options: DeviceOptions) -> Device {
        let tpm = Swtpm::temp_manufactured_unique().expect("start swtpm");
        let ek = Tpm::open(&tpm.tcti())
            .and_then(|mut t| t.endorsement_key())
            .expect("read EK");
        let serial = format!("HM-TEST-{}", &ek.fingerprint()[..12]);
        let token = server.admin_token("devices:provision");
        // As the provisioner registers: the EK's fingerprint, public key and certificate, so
        // the server can attest the device's keys.
        let mut registration = serde_json::json!({
            "serial": serial,
            "model": "test-gateway",
            "ek_fingerprint": ek.fingerprint(),
        });
        if options.register_ek {
            registration["ek_public"] = URL_SAFE_NO_PAD.encode(&ek.spki_der).into();
            if let Some(cert) = &ek.certificate {
                registration["ek_certificate"] = URL_SAFE_NO_PAD.encode(cert).into();
            }
        }
        let (status, body) = server.post_raw(
            "/admin/devices",
            "application/json",
            Some(&format!("Bearer {token}")),
            registration.to_string().as_bytes(),
        );
        assert_eq!(status, 201, "register device: {body}");
        let client_id = body["client_id"].as_str().unwrap().to_owned();
        let factory_secret = body["factory_secret"].as_str().unwrap().to_owned();
        // The provisioner's contract: the 32 raw bytes are sealed, not the base64 text.
        let raw = URL_SAFE_NO_PAD.decode(&factory_secret).unwrap();
        assert_eq!(raw.len(), 32);
        Tpm::open(&tpm.tcti())
            .unwrap()
            .seal_factory_secret(&raw)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&server.ca_cert, dir.path().join("ca.pem")).unwrap();
        let config = AgentConfig {
            issuer: options.issuer.unwrap_or_else(|| server.issuer.clone()),
            ca_cert: "ca.pem".into(),
            client_id: client_id.clone(),
            tcti: tpm.tcti(),
            scopes: options.scopes,
            flow: options.flow,
            state_dir: "state".into(),
            socket: None,
            socket_allowed_uids: Vec::new(),
            handles: Handles::default(),
            serial: Some(serial.clone()),
            rekey_interval_days: RekeyInterval::NEVER,
            dpop: false,
        };
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        Device {
            tpm,
            dir,
            config_path,
            config,
            client_id,
            serial,
            factory_secret,
        }
    }

    /// `hallmark-agent --config <this device's config>` with `args`, not yet run.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = crate::server::clean_command(crate::bin("hallmark-agent"));
        cmd.arg("--config").arg(&self.config_path).args(args);
        cmd.env_remove("HALLMARK_AGENT_FAULT");
        cmd
    }

    /// Runs `hallmark-agent <args>` to completion.
    pub fn run_agent(&self, args: &[&str]) -> Output {
        self.agent(args).output().unwrap()
    }

    /// Runs `hallmark-agent <args>`, asserting success; its stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.run_agent(args);
        assert!(
            out.status.success(),
            "hallmark-agent {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `hallmark-agent <args>` with the fault hook set to `step`; it must stop there
    /// with status 86, as if the power had been cut.
    pub fn run_crashing_at(&self, args: &[&str], step: &str) {
        let out = self
            .agent(args)
            .env("HALLMARK_AGENT_FAULT", format!("after:{step}"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(86),
            "hallmark-agent {args:?} should stop after {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client assertion (RFC 7523) for this device signed now by the key in `slot`, with
    /// `aud` = `server`'s token endpoint: signed ahead, it shows whether the server still
    /// accepts a key after the agent has erased it.
    pub fn assertion_by(&self, server: &TestServer, slot: KeySlot) -> String {
        let mut tpm = Tpm::open(&self.tpm.tcti()).unwrap();
        let key = tpm.device_key(slot).unwrap().expect("a key in the slot");
        let now = hallmark_agent::clock::unix_now();
        let audience = server.url("/oauth2/token");
        assertion::build(&self.client_id, &audience, &key.kid, now, |input| {
            tpm.sign_es256(slot, input)
        })
        .unwrap()
    }

    /// Polls the token socket until it answers with a token satisfying `accept`.
    pub fn wait_for_socket_token(&self, limit: Duration, accept: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            if let Ok(Answer::Token { access_token, .. }) = fetch(&self.socket_path()) {
                if accept(&access_token) {
                    return access_token;
                }
            }
            assert!(
                started.elapsed() < limit,
                "no suitable token on the socket after {limit:?}; log: {}",
                self.run_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `hallmark-agent run` in the background (stderr to `run.log` in the device dir).
    pub fn spawn_run(&self) -> Child {
        self.spawn_run_skewed(0)
    }

    /// [`Device::spawn_run`] with the agent's clock `seconds` off (the test-only clock fault
    /// `HALLMARK_AGENT_CLOCK_SKEW`; positive: ahead). Each start begins a new `run.log`.
    pub fn spawn_run_skewed(&self, seconds: i64) -> Child {
        let log = std::fs::File::create(self.dir.path().join("run.log")).unwrap();
        self.agent(&["run"])
            .env("HALLMARK_AGENT_CLOCK_SKEW", seconds.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Polls `run.log` until it contains `needle`; the log then.
    pub fn wait_for_run_log(&self, limit: Duration, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.run_log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                started.elapsed() < limit,
                "no {needle:?} in the run log after {limit:?}: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What `hallmark-agent run` logged so far.
    pub fn run_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }

    /// The token socket's path: `socket` from the config (relative to the device directory),
    /// else `agent.sock` in the state directory.
    pub fn socket_path(&self) -> PathBuf {
        match &self.config.socket {
            Some(socket) => self.dir.path().join(socket),
            None => self.dir.path().join("state").join("agent.sock"),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// What the TPM holds (opens and closes it).
    pub fn inventory(&self) -> Inventory {
        Tpm::open(&self.tpm.tcti()).unwrap().inventory().unwrap()
    }

    /// Rewrites the config file with `edit` applied.
    pub fn edit_config(&mut self, edit: impl FnOnce(&mut AgentConfig)) {
        edit(&mut self.config);
        std::fs::write(&self.config_path, self.config.to_toml()).unwrap();
    }

    /// `hallmark-agent status --json`, parsed.
    pub fn status_json(&self) -> Value {
        serde_json::from_str(&self.agent_ok(&["status", "--json"])).unwrap()
    }
}
