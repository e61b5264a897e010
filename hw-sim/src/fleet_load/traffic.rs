//! The fleet's traffic, open-loop: a schedule of due requests shared by a pool of worker
//! threads. Latency runs from when a request was due, not from when a worker got to it, so a
//! server (or a load generator) that falls behind shows in the percentiles instead of quietly
//! lowering the offered rate (no coordinated omission).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use ring::rand::SystemRandom;

use super::device::{Device, DEVICE_CODE_GRANT};

/// What the fleet does, per device.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Access token lifetime, seconds.
    pub(super) lifetime: f64,
    /// A token is renewed at this fraction of its life…
    pub(super) renew_at: f64,
    /// …plus or minus this fraction of its life, uniformly.
    pub(super) jitter: f64,
    /// Share of renewals that come with a device-flow login (authorization request + a poll).
    pub(super) device_flow_share: f64,
    /// Introspections by a resource server per token, at random times in its life.
    pub(super) introspections: f64,
}

impl Shape {
    /// Seconds from one renewal to the next.
    fn renewal_gap(&self) -> f64 {
        let jitter = rand::thread_rng().gen_range(-self.jitter..=self.jitter);
        self.lifetime * (self.renew_at + jitter).max(0.05)
    }

    /// How many introspections a new token gets: the integer part, plus one with the
    /// fractional part's probability.
    fn introspection_count(&self) -> usize {
        let whole = self.introspections.floor();
        let extra = rand::thread_rng().gen_bool((self.introspections - whole).clamp(0.0, 1.0));
        whole as usize + usize::from(extra)
    }
}

/// Kinds of request, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// client_credentials with a client assertion.
    Grant,
    /// A resource server's introspection.
    Introspect,
    /// Device authorization request.
    DeviceAuthorization,
    /// Device code poll (answered `authorization_pending`: nobody approves).
    DevicePoll,
}

pub(super) const KINDS: [Kind; 4] = [
    Kind::Grant,
    Kind::Introspect,
    Kind::DeviceAuthorization,
    Kind::DevicePoll,
];

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Grant => "client_credentials (private_key_jwt)",
            Kind::Introspect => "introspection",
            Kind::DeviceAuthorization => "device_authorization",
            Kind::DevicePoll => "device_code poll",
        }
    }
}

/// Latencies (µs, from when due) and failures of one kind inside the measured window.
#[derive(Debug, Default, Clone)]
pub(super) struct Samples {
    pub(super) latencies_us: Vec<u64>,
    pub(super) failures: u64,
    pub(super) first_failure: Option<String>,
}

/// What the workers saw, per kind (indexed like [`KINDS`]).
pub(super) type Stats = [Samples; 4];

enum Job {
    Renew(usize),
    /// Introspect the device's current token.
    Introspect(usize),
}

struct Due {
    at_us: u64,
    seq: u64,
    job: Job,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// The schedule: due jobs in time order.
struct Schedule {
    start: Instant,
    heap: Mutex<BinaryHeap<Reverse<Due>>>,
    ready: Condvar,
    seq: AtomicU64,
    stop: AtomicBool,
}

impl Schedule {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, at_us: u64, job: Job) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut heap) = self.heap.lock() {
            heap.push(Reverse(Due { at_us, seq, job }));
        }
        self.ready.notify_one();
    }

    /// The next job once it is due, with its due time; `None` once stopped.
    fn next(&self) -> Option<(u64, Job)> {
        let mut heap = self.heap.lock().ok()?;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let now = self.now_us();
            let wait = match heap.peek() {
                Some(Reverse(due)) if due.at_us <= now => {
                    let Reverse(due) = heap.pop()?;
                    return Some((due.at_us, due.job));
                }
                Some(Reverse(due)) => Duration::from_micros((due.at_us - now).min(50_000)),
                None => Duration::from_millis(50),
            };
            heap = self.ready.wait_timeout(heap, wait).ok()?.0;
        }
    }
}

/// A device's current access token and when it was issued.
pub(super) type TokenSlot = Mutex<Option<(Arc<str>, Instant)>>;

/// Everything a worker needs.
pub(super) struct Fleet<'a> {
    pub(super) base: &'a str,
    pub(super) devices: &'a [Device],
    /// Each device's current token, indexed like `devices`.
    pub(super) tokens: Vec<TokenSlot>,
    /// `Authorization: Basic …` of the resource server that introspects.
    pub(super) resource_server: &'a str,
    pub(super) shape: Shape,
}

/// Gets every device a token as fast as `workers` threads can (closed loop, not measured), so
/// the steady schedule can start with a fleet that already holds tokens. Returns the rate.
pub(super) fn bootstrap(fleet: &Fleet<'_>, workers: usize) -> f64 {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let client = Client::new(fleet.base);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(device) = fleet.devices.get(i) else {
                        break;
                    };
                    if let Ok(token) = client.grant(device) {
                        if let Ok(mut slot) = fleet.tokens[i].lock() {
                            *slot = Some((token, Instant::now()));
                        }
                    }
                }
            });
        }
    });
    fleet.devices.len() as f64 / started.elapsed().as_secs_f64()
}

/// Plays the steady state for `warmup + measure` and returns what happened inside `measure`.
/// Each device's next renewal falls uniformly in one renewal period from the start (the fleet
/// is mid-life, as a real one is), but no later than its token's renewal age; its current
/// token gets its introspections in that period too.
pub(super) fn run(fleet: &Fleet<'_>, workers: usize, warmup: Duration, measure: Duration) -> Stats {
    let schedule = Schedule {
        start: Instant::now(),
        heap: Mutex::new(BinaryHeap::with_capacity(fleet.devices.len() * 3)),
        ready: Condvar::new(),
        seq: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let period_us = (fleet.shape.lifetime * fleet.shape.renew_at * 1e6) as u64;
    let mut rng = rand::thread_rng();
    for (i, slot) in fleet.tokens.iter().enumerate() {
        let age_us = slot
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|(_, at)| at.elapsed().as_micros() as u64))
            .unwrap_or(period_us);
        let renew = rng
            .gen_range(0..period_us.max(1))
            .min(period_us.saturating_sub(age_us));
        schedule.push(renew, Job::Renew(i));
        for _ in 0..fleet.shape.introspection_count() {
            schedule.push(rng.gen_range(0..period_us.max(1)), Job::Introspect(i));
        }
    }
    let window = (
        warmup.as_micros() as u64,
        (warmup + measure).as_micros() as u64,
    );
    let stats = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| worker(fleet, &schedule, window)))
            .collect();
        std::thread::sleep(warmup + measure);
        schedule.stop.store(true, Ordering::Relaxed);
        schedule.ready.notify_all();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .collect::<Vec<Stats>>()
    });
    let mut total = Stats::default();
    for part in stats {
        for (sum, one) in total.iter_mut().zip(part) {
            sum.latencies_us.extend(one.latencies_us);
            sum.failures += one.failures;
            if sum.first_failure.is_none() {
                sum.first_failure = one.first_failure;
            }
        }
    }
    total
}

fn worker(fleet: &Fleet<'_>, schedule: &Schedule, window: (u64, u64)) -> Stats {
    let client = Client::new(fleet.base);
    let mut stats = Stats::default();
    // A request's latency is the time its job waited past its due time plus its own round
    // trip: a job's second request (the poll after the device authorization, the renewal after
    // a login) is not charged for the first one's.
    let record = |kind: Kind,
                  due: u64,
                  queued_us: u64,
                  sent_us: u64,
                  result: Result<(), String>,
                  stats: &mut Stats| {
        if due < window.0 || due >= window.1 {
            return;
        }
        let samples = &mut stats[KINDS.iter().position(|k| *k == kind).unwrap_or(0)];
        match result {
            Ok(()) => samples
                .latencies_us
                .push(queued_us + schedule.now_us().saturating_sub(sent_us)),
            Err(e) => {
                samples.failures += 1;
                samples.first_failure.get_or_insert(e);
            }
        }
    };
    while let Some((due, job)) = schedule.next() {
        let started = schedule.now_us();
        let queued = started.saturating_sub(due);
        match job {
            Job::Renew(i) => {
                let device = &fleet.devices[i];
                if rand::thread_rng().gen_bool(fleet.shape.device_flow_share.clamp(0.0, 1.0)) {
                    let (authorized, poll_sent, polled) = client.device_login(device, schedule);
                    let failed = authorized.is_err();
                    record(
                        Kind::DeviceAuthorization,
                        due,
                        queued,
                        started,
                        authorized,
                        &mut stats,
                    );
                    if !failed {
                        record(Kind::DevicePoll, due, queued, poll_sent, polled, &mut stats);
                    }
                }
                let now = schedule.now_us();
                match client.grant(device) {
                    Ok(token) => {
                        record(Kind::Grant, due, queued, now, Ok(()), &mut stats);
                        if let Ok(mut slot) = fleet.tokens[i].lock() {
                            *slot = Some((token, Instant::now()));
                        }
                        let life_us = (fleet.shape.lifetime * fleet.shape.renew_at * 1e6) as u64;
                        for _ in 0..fleet.shape.introspection_count() {
                            let at = now + rand::thread_rng().gen_range(0..life_us.max(1));
                            schedule.push(at, Job::Introspect(i));
                        }
                        let gap = (fleet.shape.renewal_gap() * 1e6) as u64;
                        schedule.push(now + gap, Job::Renew(i));
                    }
                    Err(e) => {
                        record(Kind::Grant, due, queued, now, Err(e), &mut stats);
                        // A device retries a failed renewal after a few seconds.
                        schedule.push(now + 5_000_000, Job::Renew(i));
                    }
                }
            }
            Job::Introspect(i) => {
                let token = fleet.tokens[i]
                    .lock()
                    .ok()
                    .and_then(|t| t.as_ref().map(|(t, _)| t.clone()));
                let result = match token {
                    Some(token) => client.introspect(fleet.resource_server, &token),
                    None => Err("the device holds no token".into()),
                };
                record(Kind::Introspect, due, queued, started, result, &mut stats);
            }
        }
    }
    stats
}

/// One worker's HTTP client and signing RNG.
struct Client {
    http: ureq::Agent,
    rng: SystemRandom,
    token_endpoint: String,
    base: String,
}

/// Distinct `jti`s across every worker and device of the run.
static JTI: AtomicU64 = AtomicU64::new(0);

impl Client {
    fn new(base: &str) -> Client {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Client {
            http,
            rng: SystemRandom::new(),
            token_endpoint: format!("{base}/oauth2/token"),
            base: base.to_owned(),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn auth(&self, device: &Device) -> Result<[(&'static str, String); 2], String> {
        let jti = JTI.fetch_add(1, Ordering::Relaxed);
        device
            .auth_fields(&self.token_endpoint, Self::now(), jti, &self.rng)
            .map_err(|e| e.to_string())
    }

    fn post(&self, path: &str, fields: &[(&str, String)]) -> Result<(u16, String), String> {
        let mut resp = self
            .http
            .post(&format!("{}{path}", self.base))
            .send_form(fields.iter().map(|(k, v)| (*k, v.as_str())))
            .map_err(|e| e.to_string())?;
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((resp.status().as_u16(), body))
    }

    /// client_credentials with an assertion: the access token.
    fn grant(&self, device: &Device) -> Result<Arc<str>, String> {
        let [a, b] = self.auth(device)?;
        let fields = [
            ("grant_type", "client_credentials".to_owned()),
            ("scope", "device".to_owned()),
            a,
            b,
        ];
        let (status, body) = self.post("/oauth2/token", &fields)?;
        if status != 200 {
            return Err(format!("token: HTTP {status} {}", clip(&body)));
        }
        let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        body["access_token"]
            .as_str()
            .map(Arc::from)
            .ok_or_else(|| "token: no access_token".to_owned())
    }

    /// A device authorization request, then one poll (nobody approves, so the answer must be
    /// `authorization_pending`). Returns the request's outcome, when the poll was sent and the
    /// poll's outcome.
    fn device_login(
        &self,
        device: &Device,
        schedule: &Schedule,
    ) -> (Result<(), String>, u64, Result<(), String>) {
        let authorized = (|| {
            let [a, b] = self.auth(device)?;
            let (status, body) = self.post(
                "/oauth2/device_authorization",
                &[("scope", "device".to_owned()), a, b],
            )?;
            if status != 200 {
                return Err(format!(
                    "device_authorization: HTTP {status} {}",
                    clip(&body)
                ));
            }
            let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            body["device_code"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "device_authorization: no device_code".to_owned())
        })();
        let poll_sent = schedule.now_us();
        let code = match authorized {
            Ok(code) => code,
            Err(e) => return (Err(e), poll_sent, Err("not polled".into())),
        };
        let polled = (|| {
            let [a, b] = self.auth(device)?;
            let fields = [
                ("grant_type", DEVICE_CODE_GRANT.to_owned()),
                ("device_code", code),
                a,
                b,
            ];
            let (status, body) = self.post("/oauth2/token", &fields)?;
            if status == 400 && body.contains("authorization_pending") {
                Ok(())
            } else {
                Err(format!("device poll: HTTP {status} {}", clip(&body)))
            }
        })();
        (Ok(()), poll_sent, polled)
    }

    /// A resource server introspects `token`; it must be active.
    fn introspect(&self, basic: &str, token: &str) -> Result<(), String> {
        let mut resp = self
            .http
            .post(&format!("{}/oauth2/introspect", self.base))
            .header("Authorization", basic)
            .send_form([("token", token)])
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if status == 200 && body.contains("\"active\":true") {
            Ok(())
        } else {
            Err(format!("introspect: HTTP {status} {}", clip(&body)))
        }
    }
}

fn clip(body: &str) -> &str {
    let end = body.char_indices().nth(120).map_or(body.len(), |(i, _)| i);
    &body[..end]
}
