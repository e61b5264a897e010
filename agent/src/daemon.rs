//! `run`: keep an access token fresh and serve it on the local socket, replace the device key
//! when `rekey_interval_days` says it is due; and the retry policy (exponential backoff with
//! jitter) shared with `enroll`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom as _, SystemRandom};

use crate::rotation::schedule::RekeyDue;
use crate::socket::{AllowedPeers, Refusals, SharedToken, TokenSocket};
use crate::{Agent, AgentError, Credential, Event};

/// First retry delay.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Renew at this fraction of the token's lifetime (before jitter).
const RENEW_AT: f64 = 0.8;
/// Granularity at which the loop notices a stop request.
const TICK: Duration = Duration::from_millis(100);
/// First wait after a failed scheduled rekey. Equal jitter keeps every wait at or above half
/// the step, so never under an hour: a server that cannot take a new key now is not asked
/// again by every device of a fleet within minutes.
const REKEY_RETRY_START: Duration = Duration::from_secs(2 * 3600);
/// Longest wait after failed scheduled rekeys (the shortest interval is a day).
const REKEY_RETRY_MAX: Duration = Duration::from_secs(24 * 3600);
/// The rekey schedule is read again at least this often, so that a `rekey` run from the CLI
/// meanwhile, or a wall clock set right, moves the due time without a restart.
const REKEY_RECHECK: Duration = Duration::from_secs(3600);

impl Agent {
    /// Runs until `stop` is set (SIGTERM): finishes rotation, keeps a token fresh (renewing at
    /// ~80% of its lifetime with jitter, backing off with jitter while the server or TPM is
    /// unreachable, serving the cached token until it expires) and serves it on the socket
    /// (see [`crate::socket`]). With `rekey_interval_days` set, it also replaces the device key
    /// ([`Agent::rekey`]) once the key is older than that (plus a per-key jitter of up to 10%),
    /// between renewals and while the socket goes on serving the current token; a failed rekey
    /// leaves the current key in use and is tried again after at least an hour. Returns an error if the socket cannot be bound, or if the first
    /// token fails for a reason retrying cannot fix (unknown client, wrong CA, …).
    pub fn run(&mut self, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
        let path = self.config.socket_path();
        self.state
            .ensure()
            .map_err(|source| AgentError::State { source })?;
        let peers = AllowedPeers::new(&self.config.socket_allowed_uids);
        let allowed_uids = peers.uids();
        let socket = TokenSocket::bind(&path, peers)
            .map(|s| s.with_prover(self.prover()))
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    AgentError::AlreadyRunning {
                        path: path.display().to_string(),
                    }
                } else {
                    AgentError::Socket {
                        path: path.display().to_string(),
                        source,
                    }
                }
            })?;
        let shared: SharedToken = Arc::new(Mutex::new(None));
        let (refused, refusals) = mpsc::channel();
        let server = {
            let (token, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || socket.serve(token, stop, refused))
        };
        self.emit(Event::Serving {
            socket: path.display().to_string(),
            allowed_uids,
        });
        let result = self.keep_fresh(&shared, &stop, &refusals);
        stop.store(true, Ordering::Relaxed);
        // The socket thread only sleeps and writes; it cannot panic short of a bug.
        let _ = server.join();
        result
    }

    /// Signs the socket's DPoP proofs (RFC 9449 §4): opens the TPM for each, signs with the key
    /// the current token is bound to, and dates it by the server's clock as the agent knows it.
    fn prover(&self) -> crate::socket::SharedProver {
        let tcti = self.config.tcti.clone();
        let clock = self.http.clock().clone();
        std::sync::Arc::new(
            move |slot, request: &crate::socket::protocol::ProofRequest, token: &str| {
                let mut tpm = crate::tpm::Tpm::open(&tcti).map_err(|e| e.to_string())?;
                crate::tokens::sign_proof(
                    &mut tpm,
                    slot,
                    &request.method,
                    &request.url,
                    Some(token),
                    request.nonce.as_deref(),
                    clock.server_now(),
                )
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the key the token is bound to is gone (rekeyed?)".to_owned())
            },
        )
    }

    fn keep_fresh(
        &mut self,
        shared: &SharedToken,
        stop: &AtomicBool,
        refusals: &Receiver<Refusals>,
    ) -> Result<(), AgentError> {
        let mut backoff = Backoff::new();
        let mut next = Instant::now();
        let mut ever = false;
        // Whether the last renewal worked. A rekey is tried only then: it needs the same
        // server, and the token just served covers it while it runs.
        let mut healthy = false;
        let mut rekey = RekeyTimer::new(self.config.rekey_interval_days.duration().is_some());
        while !stop.load(Ordering::Relaxed) {
            while let Ok(Refusals { uid, count }) = refusals.try_recv() {
                self.emit(Event::SocketRefused { uid, count });
            }
            let now = Instant::now();
            if now < next {
                match rekey.next {
                    Some(at) if healthy && now >= at => {
                        if self.tend_rekey(&mut rekey) {
                            // The new key's proof brought a token: serve it at once.
                            next = Instant::now();
                        }
                    }
                    Some(at) if healthy => std::thread::sleep(TICK.min(at.min(next) - now)),
                    _ => std::thread::sleep(TICK.min(next - now)),
                }
                continue;
            }
            match self.fresh_token(None) {
                Ok(token) => {
                    let lifetime = token.expires_at.saturating_sub(token.issued_at) as f64;
                    // Jitter spreads a fleet's renewals: 72–80% of the lifetime.
                    let fraction = RENEW_AT * (0.9 + 0.1 * unit_random());
                    next = Instant::now() + Duration::from_secs_f64(lifetime * fraction);
                    *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
                    backoff.reset();
                    ever = true;
                    healthy = true;
                }
                Err(e) if !ever && !e.is_transient() => return Err(e),
                Err(e) => {
                    // A later permanent error (say, a revoked refresh token) is retried too:
                    // the cached token stays useful until it expires, and the operator sees
                    // the reason in the log.
                    let wait = backoff.next_delay();
                    self.emit(Event::Retrying {
                        error: e.to_string(),
                        after: wait,
                    });
                    // The server or TPM may come back with another view; ask afresh. The key
                    // may have been replaced meanwhile (`hallmark-agent rekey` erases the old
                    // one), so the next attempt reads the TPM and the rotation state again.
                    self.metadata = None;
                    if matches!(self.credential, Some(Credential::Key { .. })) {
                        self.credential = None;
                    }
                    next = Instant::now() + wait;
                    healthy = false;
                }
            }
        }
        Ok(())
    }

    /// Reads the rekey schedule and rekeys if it is due; sets when to look again. Returns
    /// whether the key was replaced (the new key's proof left a fresh token cached).
    fn tend_rekey(&mut self, timer: &mut RekeyTimer) -> bool {
        let now = self.local_now();
        let due = match self.rekey_schedule() {
            Ok(due) => due,
            Err(e) => {
                self.rekey_failed(timer, &e);
                return false;
            }
        };
        if due.is_due(now) {
            let key_created_at = match due {
                RekeyDue::At { since, .. } => Some(since),
                _ => None,
            };
            self.emit(Event::RekeyDue { key_created_at });
            // No retries here: the old key keeps working until the new one is proven, and
            // whatever the failure left is finished by the next attempt or the next start.
            return match self.rekey() {
                Ok(_) => {
                    timer.retry.reset();
                    timer.next = Some(Instant::now());
                    true
                }
                Err(e) => {
                    self.rekey_failed(timer, &e);
                    false
                }
            };
        }
        let wait = match due {
            RekeyDue::At { since, at } => {
                if timer.reported != Some(at) {
                    timer.reported = Some(at);
                    self.emit(Event::RekeyScheduled {
                        key_created_at: since,
                        due_at: at,
                    });
                }
                let left = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                Duration::from_secs(left).min(REKEY_RECHECK)
            }
            RekeyDue::Never | RekeyDue::Unknown | RekeyDue::Unfinished => REKEY_RECHECK,
        };
        timer.next = Some(Instant::now() + wait);
        false
    }

    fn rekey_failed(&mut self, timer: &mut RekeyTimer, error: &AgentError) {
        let after = timer.retry.next_delay();
        self.emit(Event::RekeyFailed {
            error: error.to_string(),
            after,
        });
        // The server may come back with another view (a rotation endpoint, say).
        self.metadata = None;
        timer.next = Some(Instant::now() + after);
    }
}

/// The scheduled rekey's part of the `run` loop.
#[derive(Debug)]
struct RekeyTimer {
    /// When to read the schedule next; `None` when no interval is configured.
    next: Option<Instant>,
    /// Waits after failed attempts.
    retry: Backoff,
    /// The due time last reported as [`Event::RekeyScheduled`].
    reported: Option<i64>,
}

impl RekeyTimer {
    /// A timer that looks at the schedule right after the first token, if `scheduled`.
    fn new(scheduled: bool) -> RekeyTimer {
        RekeyTimer {
            next: scheduled.then(Instant::now),
            retry: Backoff::between(REKEY_RETRY_START, REKEY_RETRY_MAX),
            reported: None,
        }
    }
}

/// Calls `f` until it succeeds, fails permanently, or `patience` would be exceeded, waiting
/// with exponential backoff and jitter between attempts.
pub(crate) fn retry<T>(
    agent: &mut Agent,
    patience: Duration,
    mut f: impl FnMut(&mut Agent) -> Result<T, AgentError>,
) -> Result<T, AgentError> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        match f(agent) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                let wait = backoff.next_delay();
                if started.elapsed() + wait > patience {
                    return Err(e);
                }
                agent.emit(Event::Retrying {
                    error: e.to_string(),
                    after: wait,
                });
                agent.metadata = None;
                std::thread::sleep(wait);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exponential backoff with "equal jitter": each delay is half the current step plus a random
/// part of the other half, so a fleet that lost its server does not return in lockstep.
#[derive(Debug)]
struct Backoff {
    step: Duration,
    start: Duration,
    max: Duration,
}

impl Backoff {
    /// The backoff of token renewals and `enroll`: 0.5 s doubling up to a minute.
    fn new() -> Backoff {
        Backoff::between(BACKOFF_START, BACKOFF_MAX)
    }

    /// Steps from `start` doubling up to `max`; each delay is between half a step and a step.
    fn between(start: Duration, max: Duration) -> Backoff {
        Backoff {
            step: start,
            start,
            max,
        }
    }

    fn reset(&mut self) {
        self.step = self.start;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.step.mul_f64(0.5 + 0.5 * unit_random());
        self.step = (self.step * 2).min(self.max);
        delay
    }
}

/// A random number in [0, 1) for jitter (0.5 if the system RNG fails: jitter is not security).
fn unit_random() -> f64 {
    let mut bytes = [0u8; 4];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BACKOFF_START / 2 && first <= BACKOFF_START);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX);
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
        let r = unit_random();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn a_failed_scheduled_rekey_is_retried_hourly_at_most() {
        let mut timer = RekeyTimer::new(true);
        assert!(timer.next.is_some_and(|at| at <= Instant::now()));
        let hour = Duration::from_secs(3600);
        let delays: Vec<Duration> = (0..10).map(|_| timer.retry.next_delay()).collect();
        assert!(delays[0] >= hour && delays[0] <= 2 * hour, "{delays:?}");
        for d in &delays {
            assert!(*d >= hour && *d <= REKEY_RETRY_MAX, "{d:?}");
        }
        assert!(delays[9] >= REKEY_RETRY_MAX / 2);
        timer.retry.reset();
        assert!(timer.retry.next_delay() <= 2 * hour);
        assert!(RekeyTimer::new(false).next.is_none());
    }
}
