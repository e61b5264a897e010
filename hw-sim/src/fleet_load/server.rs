//! The server under load: a throwaway data directory, `hallmark-server init` and `serve` on a
//! free loopback port (plain HTTP, optionally pinned to one CPU with `taskset`), and what the
//! report reads of it: CPU time and memory from `/proc`, disk use of the data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LoadError;

/// A running `hallmark-server serve`, stopped on drop.
pub(super) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, also the issuer.
    pub(super) base: String,
    data: PathBuf,
    /// The bootstrap admin client from `init`: (client_id, client_secret).
    pub(super) admin: (String, String),
}

impl Server {
    /// Initialises a data directory under `dir` and serves it; waits for `/readyz`.
    pub(super) fn start(
        bin: &Path,
        dir: &Path,
        token_lifetime: u64,
        cpu: Option<usize>,
    ) -> Result<Server, LoadError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| LoadError::Server(format!("no free port: {e}")))?;
        let base = format!("http://127.0.0.1:{port}");
        let data = dir.join("server");
        let init = Command::new(bin)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--issuer", &base])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| LoadError::Server(format!("{}: {e}", bin.display())))?;
        if !init.status.success() {
            return Err(LoadError::Server(format!("init exited {}", init.status)));
        }
        let init: serde_json::Value = serde_json::from_slice(&init.stdout)
            .map_err(|e| LoadError::Server(format!("init printed no JSON: {e}")))?;
        let field = |name: &str| {
            init[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| LoadError::Server(format!("init printed no {name}")))
        };
        let admin = (field("admin_client_id")?, field("admin_client_secret")?);

        let log = std::fs::File::create(dir.join("server.log"))
            .map_err(|e| LoadError::Server(format!("server.log: {e}")))?;
        let mut cmd = match cpu {
            Some(cpu) if which("taskset") => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(bin);
                c
            }
            _ => Command::new(bin),
        };
        cmd.args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--insecure-http")
            .args(["--access-token-ttl", &token_lifetime.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| LoadError::Server(format!("serve: {e}")))?;
        let server = Server {
            child,
            base,
            data,
            admin,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<(), LoadError> {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .new_agent();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(&format!("{}/readyz", self.base)).call() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LoadError::Server(
            "not ready after 30 s (see server.log)".into(),
        ))
    }

    /// CPU time the server has used so far (user + system), seconds.
    pub(super) fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// (resident now, peak resident) in MiB.
    pub(super) fn memory_mib(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = |key: &str| -> Option<f64> {
            status
                .lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
    }

    /// The group commit's storage flushes so far, from `/metrics`: (count, total seconds,
    /// requests made durable, flushes slower than 16 ms).
    pub(super) fn flushes(&self) -> Option<Flushes> {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let mut resp = http.get(&format!("{}/metrics", self.base)).call().ok()?;
        let text = resp.body_mut().read_to_string().ok()?;
        let value = |prefix: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(prefix))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        };
        let count = value("hallmark_storage_flush_seconds_count")?;
        // Buckets are cumulative: what is not in the 12.8 ms bucket took longer.
        let fast = value("hallmark_storage_flush_seconds_bucket{le=\"0.0128\"}").unwrap_or(count);
        Some(Flushes {
            count,
            seconds: value("hallmark_storage_flush_seconds_sum")?,
            durable: value("hallmark_storage_flush_batch_sum").unwrap_or(f64::NAN),
            slow: count - fast,
        })
    }

    /// Bytes the data directory holds on disk.
    pub(super) fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.data)
    }

    /// The server's pid (under `taskset`, which execs it, the same process).
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Group-commit flush counters (see [`Server::flushes`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Flushes {
    pub(super) count: f64,
    pub(super) seconds: f64,
    pub(super) durable: f64,
    pub(super) slow: f64,
}

impl Flushes {
    /// "N flushes, mean X ms, Y writes each, Z over 12.8 ms" for the window since `before`.
    pub(super) fn since(&self, before: &Flushes) -> String {
        let n = self.count - before.count;
        if n <= 0.0 {
            return "no storage flushes".into();
        }
        format!(
            "{n:.0} storage flushes, mean {:.2} ms, {:.1} writes each, {:.0} over 12.8 ms",
            (self.seconds - before.seconds) / n * 1000.0,
            (self.durable - before.durable) / n,
            self.slow - before.slow
        )
    }
}

/// User + system CPU seconds from a `/proc/…/stat` file.
pub(super) fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the line (proc(5)), in clock ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            // Allocated blocks, not the length: sparse files count as what they occupy.
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
