//! `hallmark-hwsim fleet-load`: plays the token traffic of a fleet of N devices against one real
//! `hallmark-server` and reports what one server carries: sustained grants/s, latency
//! percentiles per request kind, the server's CPU and memory, and its data directory's size per
//! 10^5 devices.
//!
//! Each simulated device is a client registered with a software ES256 key (no swtpm needed for
//! 10^5 devices) that authenticates with `private_key_jwt` (RFC 7523), as a device does after
//! its first-boot rotation, so the server verifies an ES256 assertion, records its `jti`, signs a
//! token and audits it for every renewal. Tokens are renewed at ~80% of their life with jitter; a
//! share of renewals come with a device-flow login (RFC 8628 authorization request and one poll;
//! nobody approves); a resource server introspects each token (RFC 7662) at random times in its
//! life. The schedule is open-loop (see `traffic.rs`).
//!
//! Several fleet sizes run one after the other against the same server (devices are registered
//! once and reused), so the report answers "the largest fleet one server carries at p99 < X".

mod device;
mod server;
mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::rand::SystemRandom;

use self::device::Device;
use self::server::Server;
use self::traffic::{Fleet, Kind, Shape, KINDS};

/// Why a fleet load run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Starting or reading the server failed.
    #[error("server: {0}")]
    Server(String),
    /// An HTTP exchange failed outright.
    #[error("HTTP: {0}")]
    Http(String),
    /// Registering a device or the resource server failed.
    #[error("registration: {0}")]
    Register(String),
    /// Making or using a software key failed.
    #[error("software ES256 key failed")]
    Key,
    /// The options make no sense.
    #[error("{0}")]
    Usage(String),
}

/// What to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// `hallmark-server` to run (default: beside this binary).
    pub server_bin: Option<PathBuf>,
    /// Fleet sizes to play, in order.
    pub fleets: Vec<usize>,
    /// Access token lifetime, seconds.
    pub token_lifetime: u64,
    /// Renew at this fraction of a token's life.
    pub renew_at: f64,
    /// ± this fraction of its life, uniformly.
    pub jitter: f64,
    /// Share of renewals that come with a device-flow login.
    pub device_flow_share: f64,
    /// Introspections per token.
    pub introspections: f64,
    /// Unmeasured steady load before each measurement.
    pub warmup: Duration,
    /// Measured steady load per fleet size.
    pub duration: Duration,
    /// Worker threads (concurrent requests at most).
    pub workers: usize,
    /// Pin the server to this CPU (`taskset`).
    pub server_cpu: Option<usize>,
    /// The p99 the summary judges fleets by, milliseconds.
    pub p99_limit_ms: f64,
}

/// One fleet size's outcome.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Devices.
    pub devices: usize,
    /// Grants per second offered by the schedule.
    pub offered_grants: f64,
    /// Successful grants per second in the window.
    pub grants: f64,
    /// Every request kind together: p50 and p99 from when due, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Failed requests in the window.
    pub failures: u64,
    /// Server CPU in the window, % of one core.
    pub server_cpu: f64,
}

/// Runs every fleet size and prints the report; returns one line per size.
pub fn run(options: &Options) -> Result<Vec<StepReport>, LoadError> {
    if options.fleets.is_empty() || options.fleets.contains(&0) {
        return Err(LoadError::Usage("--devices needs sizes above 0".into()));
    }
    if !(0.1..=0.95).contains(&options.renew_at) || options.jitter >= options.renew_at {
        return Err(LoadError::Usage(
            "--renew-at must be 0.1..0.95 and above --jitter".into(),
        ));
    }
    let bin = match &options.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("hallmark-server")))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                LoadError::Usage("no hallmark-server beside this binary; pass --server".into())
            })?,
    };
    let work = tempfile::Builder::new()
        .prefix("hallmark-fleet-load")
        .tempdir()
        .map_err(|e| LoadError::Server(format!("temp dir: {e}")))?;
    let server = Server::start(
        &bin,
        work.path(),
        options.token_lifetime,
        options.server_cpu,
    )?;
    let shape = Shape {
        lifetime: options.token_lifetime as f64,
        renew_at: options.renew_at,
        jitter: options.jitter,
        device_flow_share: options.device_flow_share,
        introspections: options.introspections,
    };
    println!(
        "fleet-load: {} on {} (data in {}), tokens of {} s renewed at {:.0}% ± {:.0}% of their life, \
         device flow with {:.1}% of renewals, {} introspections per token, {} workers",
        bin.display(),
        server.base,
        work.path().display(),
        options.token_lifetime,
        options.renew_at * 100.0,
        options.jitter * 100.0,
        options.device_flow_share * 100.0,
        options.introspections,
        options.workers,
    );
    let empty_disk = server.disk_bytes();
    let resource_server = register_resource_server(&server)?;
    let mut devices: Vec<Device> = Vec::new();
    let mut reports = Vec::new();
    for &size in &options.fleets {
        if devices.len() < size {
            let started = Instant::now();
            let more = register_devices(&server, size - devices.len(), options.workers)?;
            devices.extend(more);
            println!(
                "\n== {size} devices: registered {} more in {:.1} s ({:.0}/s); data directory {:.1} MB \
                 ({:.1} MB per 10^5 devices)",
                size.saturating_sub(reports.last().map_or(0, |r: &StepReport| r.devices)),
                started.elapsed().as_secs_f64(),
                (size as f64 - reports.last().map_or(0.0, |r: &StepReport| r.devices as f64))
                    / started.elapsed().as_secs_f64(),
                mb(server.disk_bytes()),
                mb(server.disk_bytes().saturating_sub(empty_disk)) * 1e5 / size as f64,
            );
        } else {
            println!("\n== {size} devices");
        }
        let fleet = Fleet {
            base: &server.base,
            devices: &devices[..size],
            tokens: (0..size).map(|_| Mutex::new(None)).collect(),
            resource_server: &resource_server,
            shape,
        };
        let rate = traffic::bootstrap(&fleet, options.workers);
        println!("   bootstrap: every device got a token, {rate:.0} grants/s closed-loop");
        let disk_before = server.disk_bytes();
        let cpu_before = server.cpu_seconds();
        let flushes_before = server.flushes();
        let own_before = server::cpu_seconds("/proc/self/stat");
        let started = Instant::now();
        let stats = traffic::run(&fleet, options.workers, options.warmup, options.duration);
        let wall = options.duration.as_secs_f64();
        // CPU is averaged over warmup and measurement together: the load is the same.
        let span = started.elapsed().as_secs_f64();
        let server_cpu = match (cpu_before, server.cpu_seconds()) {
            (Some(a), Some(b)) => (b - a) / span * 100.0,
            _ => f64::NAN,
        };
        let own_cpu = match (own_before, server::cpu_seconds("/proc/self/stat")) {
            (Some(a), Some(b)) => (b - a) / span * 100.0,
            _ => f64::NAN,
        };
        let offered = size as f64 / (shape.lifetime * shape.renew_at);
        println!(
            "   offered {offered:.0} grants/s; measured {:.0} s after {:.0} s warmup",
            wall,
            options.warmup.as_secs_f64()
        );
        println!(
            "   {:<38} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "request", "count", "per s", "p50 ms", "p99 ms", "p99.9", "failed"
        );
        let mut all = Vec::new();
        let mut failures = 0;
        for (kind, samples) in KINDS.iter().zip(&stats) {
            let mut lat = samples.latencies_us.clone();
            lat.sort_unstable();
            println!(
                "   {:<38} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8}",
                kind.name(),
                lat.len(),
                lat.len() as f64 / wall,
                pct(&lat, 0.50),
                pct(&lat, 0.99),
                pct(&lat, 0.999),
                samples.failures,
            );
            if let Some(first) = &samples.first_failure {
                println!("     first failure: {first}");
            }
            failures += samples.failures;
            all.extend_from_slice(&lat);
        }
        all.sort_unstable();
        let grants = stats[KINDS.iter().position(|k| *k == Kind::Grant).unwrap_or(0)]
            .latencies_us
            .len() as f64
            / wall;
        let (rss, peak) = server.memory_mib().unwrap_or((f64::NAN, f64::NAN));
        let grew = server.disk_bytes().saturating_sub(disk_before);
        println!(
            "   {:<38} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            "all",
            all.len(),
            all.len() as f64 / wall,
            pct(&all, 0.50),
            pct(&all, 0.99),
            pct(&all, 0.999),
            failures
        );
        println!(
            "   server: {server_cpu:.0}% of one core, RSS {rss:.0} MiB (peak {peak:.0}); data directory \
             {:.1} MB, grew {:.1} MB in the run (~{:.0} bytes per grant with its introspections); load generator {own_cpu:.0}% CPU",
            mb(server.disk_bytes()),
            mb(grew),
            grew as f64 / (grants * span).max(1.0),
        );
        if let (Some(a), Some(b)) = (flushes_before, server.flushes()) {
            println!("   group commit: {}", b.since(&a));
        }
        reports.push(StepReport {
            devices: size,
            offered_grants: offered,
            grants,
            p50_ms: pct(&all, 0.50),
            p99_ms: pct(&all, 0.99),
            failures,
            server_cpu,
        });
    }
    summary(&reports, options.p99_limit_ms);
    Ok(reports)
}

fn summary(reports: &[StepReport], limit_ms: f64) {
    println!("\n== summary (latency from when each request was due)");
    println!(
        "   {:>10} {:>14} {:>10} {:>8} {:>8} {:>8} {:>11}",
        "devices", "offered/s", "grants/s", "p50 ms", "p99 ms", "failed", "server CPU"
    );
    for r in reports {
        println!(
            "   {:>10} {:>14.0} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>10.0}%",
            r.devices, r.offered_grants, r.grants, r.p50_ms, r.p99_ms, r.failures, r.server_cpu
        );
    }
    let carried = reports
        .iter()
        .filter(|r| r.p99_ms < limit_ms && r.failures == 0 && r.grants >= 0.95 * r.offered_grants)
        .map(|r| r.devices)
        .max();
    match carried {
        Some(n) => println!(
            "   largest fleet carried at p99 < {limit_ms} ms without failures: {n} devices"
        ),
        None => println!("   no fleet size was carried at p99 < {limit_ms} ms without failures"),
    }
}

fn register_resource_server(server: &Server) -> Result<String, LoadError> {
    let http = plain_agent();
    let token = admin_token(&http, server)?;
    let mut resp = http
        .post(&format!("{}/admin/clients", server.base))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({
            "client_name": "fleet-load resource server",
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
        }))
        .map_err(|e| LoadError::Http(e.to_string()))?;
    let body: serde_json::Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| LoadError::Register(e.to_string()))?;
    let (Some(id), Some(secret)) = (body["client_id"].as_str(), body["client_secret"].as_str())
    else {
        return Err(LoadError::Register(format!("resource server: {body}")));
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    Ok(format!("Basic {basic}"))
}

/// Registers `count` devices with `workers` threads, each with its own admin token.
fn register_devices(
    server: &Server,
    count: usize,
    workers: usize,
) -> Result<Vec<Device>, LoadError> {
    let next = AtomicUsize::new(0);
    let made = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(count).max(1))
            .map(|_| {
                s.spawn(|| -> Result<Vec<Device>, LoadError> {
                    let http = plain_agent();
                    let rng = SystemRandom::new();
                    let mut token = admin_token(&http, server)?;
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        loop {
                            match Device::register(&http, &server.base, &token, &rng)? {
                                Some(device) => {
                                    mine.push(device);
                                    break;
                                }
                                None => token = admin_token(&http, server)?,
                            }
                        }
                    }
                    Ok(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LoadError::Register("a worker panicked".into())))
            })
            .collect::<Vec<_>>()
    });
    let mut devices = Vec::with_capacity(count);
    for part in made {
        devices.extend(part?);
    }
    Ok(devices)
}

fn admin_token(http: &ureq::Agent, server: &Server) -> Result<String, LoadError> {
    let (id, secret) = &server.admin;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let mut resp = http
        .post(&format!("{}/oauth2/token", server.base))
        .header("Authorization", &format!("Basic {basic}"))
        .send_form([
            ("grant_type", "client_credentials"),
            ("scope", "clients:admin"),
        ])
        .map_err(|e| LoadError::Http(e.to_string()))?;
    let body: serde_json::Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| LoadError::Http(e.to_string()))?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| LoadError::Server(format!("no admin token: {body}")))
}

fn plain_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// The `q` quantile of sorted microseconds, in milliseconds (NaN when empty).
fn pct(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[i] as f64 / 1000.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank_at_or_above() {
        let lat: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(pct(&lat, 0.50), 50.0);
        assert_eq!(pct(&lat, 0.99), 99.0);
        assert_eq!(pct(&lat, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
