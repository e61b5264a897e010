//! `run`: keep an access token fresh and serve it on the local socket; and the retry policy
//! (exponential backoff with jitter) shared with `enroll`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom as _, SystemRandom};

use crate::socket::{SharedToken, TokenSocket};
use crate::{Agent, AgentError, Credential, Event};

/// First retry delay.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Renew at this fraction of the token's lifetime (before jitter).
const RENEW_AT: f64 = 0.8;
/// Granularity at which the loop notices a stop request.
const TICK: Duration = Duration::from_millis(100);

impl Agent {
    /// Runs until `stop` is set (SIGTERM): finishes rotation, keeps a token fresh (renewing at
    /// ~80% of its lifetime with jitter, backing off with jitter while the server or TPM is
    /// unreachable, serving the cached token until it expires) and serves it on the socket
    /// (see [`crate::socket`]). Returns an error if the socket cannot be bound, or if the first
    /// token fails for a reason retrying cannot fix (unknown client, wrong CA, …).
    pub fn run(&mut self, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
        let path = self.config.socket_path();
        self.state
            .ensure()
            .map_err(|source| AgentError::State { source })?;
        let socket = TokenSocket::bind(&path).map_err(|source| {
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
        let server = {
            let (token, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || socket.serve(token, stop))
        };
        self.emit(Event::Serving {
            socket: path.display().to_string(),
        });
        let result = self.keep_fresh(&shared, &stop);
        stop.store(true, Ordering::Relaxed);
        // The socket thread only sleeps and writes; it cannot panic short of a bug.
        let _ = server.join();
        result
    }

    fn keep_fresh(&mut self, shared: &SharedToken, stop: &AtomicBool) -> Result<(), AgentError> {
        let mut backoff = Backoff::new();
        let mut next = Instant::now();
        let mut ever = false;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(TICK.min(next - Instant::now()));
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
                }
            }
        }
        Ok(())
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
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            step: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_START;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.step.mul_f64(0.5 + 0.5 * unit_random());
        self.step = (self.step * 2).min(BACKOFF_MAX);
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
}
