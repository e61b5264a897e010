//! Failure limits of the verification page: wrong user codes and failed sign-ins, counted per
//! session and per source address (RFC 8628 §5.1: the user code's small space must be protected
//! by rate limiting).
//!
//! An attempt is *reserved* — counted — before it is evaluated, atomically with the check that
//! it is allowed, and released only when it succeeds. So concurrent requests can never each see
//! a count below the limit and all be evaluated: whatever the interleaving, at most `limit`
//! attempts that failed (or are still running) exist per window. A reservation that is neither
//! released nor kept explicitly (a request cancelled mid-check) stays counted.
//!
//! Held in memory, per process: a restart clears the counters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::store::grants::TokenHash;

/// Keys tracked before expired windows are swept.
const SWEEP_AT: usize = 50_000;

/// What is being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attempt {
    /// Entering (or deciding on) a user code.
    Code,
    /// Signing in with a user name and password.
    SignIn,
}

/// Whose limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockedBy {
    /// This browser session's own failures.
    Session,
    /// Failures from the source address (all its sessions).
    Source,
}

/// An attempt that may not run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Which limit.
    pub by: LockedBy,
    /// Seconds until it lifts.
    pub wait: u64,
}

/// Failures counted in a fixed window: `limit` failures lock until the window that began with
/// the first of them ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureWindow {
    /// Failures (and reserved attempts) in the current window.
    pub count: u32,
    /// When the current window began.
    pub since: u64,
}

impl FailureWindow {
    /// The count at `now`: zero once the window has ended.
    fn current(&self, window: u64, now: u64) -> u32 {
        if now >= self.since.saturating_add(window) {
            0
        } else {
            self.count
        }
    }

    /// Seconds until the lock lifts, if `limit` failures happened in the window still running.
    pub fn locked_for(&self, limit: u32, window: u64, now: u64) -> Option<u64> {
        let ends = self.since.saturating_add(window);
        (self.current(window, now) >= limit).then(|| ends.saturating_sub(now).max(1))
    }

    /// Count one attempt at `now`, starting a new window if the last one ended.
    pub fn record(&mut self, window: u64, now: u64) {
        if now >= self.since.saturating_add(window) {
            *self = FailureWindow {
                count: 0,
                since: now,
            };
        }
        self.count = self.count.saturating_add(1);
    }
}

/// One counter an attempt is checked against and counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A browser: a signed-in session (hash of its id) or a visitor (hash of its CSRF token).
    Session(Attempt, TokenHash),
    /// A source address bucket (see [`bucket`]).
    Source(Attempt, IpAddr),
}

/// An attempt counted against its limits; give it back with [`Limits::release`] if it
/// succeeded. Dropping it keeps it counted.
#[derive(Debug)]
#[must_use = "a reservation is released on success, or kept as a failure"]
pub struct Reservation {
    /// Each key counted, with the window it was counted in.
    counted: Vec<(Key, u64)>,
    /// The session's failures in this window, this attempt included.
    pub session_count: u32,
    /// The source address's failures in this window, this attempt included (0 if unknown).
    pub source_count: u32,
}

/// Failure windows of the page, by key.
#[derive(Debug, Default)]
pub struct Limits {
    windows: Mutex<HashMap<Key, FailureWindow>>,
}

/// The limits one attempt is held to.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures per session per window.
    pub per_session: u32,
    /// Failures per source address per window.
    pub per_source: u32,
    /// The window, seconds.
    pub window: u64,
}

impl Limits {
    /// Reserve one `kind` attempt by `session` from `source`: refused if either limit is
    /// reached (counting attempts still running), otherwise counted against both at once.
    pub fn reserve(
        &self,
        kind: Attempt,
        session: &TokenHash,
        source: Option<IpAddr>,
        policy: Policy,
        now: u64,
    ) -> Result<Reservation, Lockout> {
        let mut checks = vec![(
            Key::Session(kind, *session),
            policy.per_session,
            LockedBy::Session,
        )];
        if let Some(ip) = source {
            checks.push((
                Key::Source(kind, bucket(ip)),
                policy.per_source,
                LockedBy::Source,
            ));
        }
        // A poisoned map only means another request panicked mid-update of a counter.
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, w| now < w.since.saturating_add(policy.window));
        }
        for (key, limit, by) in &checks {
            if let Some(wait) = map
                .get(key)
                .and_then(|w| w.locked_for(*limit, policy.window, now))
            {
                return Err(Lockout { by: *by, wait });
            }
        }
        let mut counted = Vec::with_capacity(checks.len());
        let (mut session_count, mut source_count) = (0, 0);
        for (key, _, by) in checks {
            let w = map.entry(key.clone()).or_default();
            w.record(policy.window, now);
            match by {
                LockedBy::Session => session_count = w.count,
                LockedBy::Source => source_count = w.count,
            }
            counted.push((key, w.since));
        }
        Ok(Reservation {
            counted,
            session_count,
            source_count,
        })
    }

    /// Give back a reservation whose attempt succeeded (or was never evaluated).
    pub fn release(&self, reservation: Reservation) {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for (key, since) in reservation.counted {
            if let Some(w) = map.get_mut(&key) {
                // Only the window it was counted in: a new window starts from zero anyway.
                if w.since == since {
                    w.count = w.count.saturating_sub(1);
                }
            }
        }
    }

    /// Seconds until `session` (or `source`) may try `kind` again, if it is locked out now.
    pub fn locked(
        &self,
        kind: Attempt,
        session: &TokenHash,
        source: Option<IpAddr>,
        policy: Policy,
        now: u64,
    ) -> Option<Lockout> {
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let by_session = map
            .get(&Key::Session(kind, *session))
            .and_then(|w| w.locked_for(policy.per_session, policy.window, now))
            .map(|wait| Lockout {
                by: LockedBy::Session,
                wait,
            });
        by_session.or_else(|| {
            let ip = bucket(source?);
            map.get(&Key::Source(kind, ip))
                .and_then(|w| w.locked_for(policy.per_source, policy.window, now))
                .map(|wait| Lockout {
                    by: LockedBy::Source,
                    wait,
                })
        })
    }
}

/// The unit one party controls: an IPv4 address, or an IPv6 /64 (one subscriber's usual share,
/// so rotating through a prefix buys an attacker nothing).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        per_session: 2,
        per_source: 3,
        window: 60,
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reservations_count_before_the_outcome_is_known() {
        let limits = Limits::default();
        let s = TokenHash::of("session");
        // Two attempts in flight reach the session's limit of two: a third is refused at once,
        // before either of the first two finished.
        let a = limits
            .reserve(Attempt::Code, &s, ip("192.0.2.1"), POLICY, 100)
            .unwrap();
        let b = limits
            .reserve(Attempt::Code, &s, ip("192.0.2.1"), POLICY, 100)
            .unwrap();
        assert_eq!(b.session_count, 2);
        let refused = limits
            .reserve(Attempt::Code, &s, ip("192.0.2.1"), POLICY, 101)
            .unwrap_err();
        assert_eq!(
            refused,
            Lockout {
                by: LockedBy::Session,
                wait: 59
            }
        );
        // One succeeded: its slot comes back.
        limits.release(a);
        let c = limits
            .reserve(Attempt::Code, &s, ip("192.0.2.1"), POLICY, 102)
            .unwrap();
        drop((b, c));
        // Sign-ins are counted apart from codes.
        assert!(limits
            .reserve(Attempt::SignIn, &s, ip("192.0.2.1"), POLICY, 102)
            .is_ok());
    }

    #[test]
    fn the_source_limit_spans_sessions_and_the_window_ends() {
        let limits = Limits::default();
        for n in 0..3 {
            let s = TokenHash::of(&format!("s{n}"));
            let _kept = limits
                .reserve(Attempt::SignIn, &s, ip("192.0.2.9"), POLICY, 100)
                .unwrap();
        }
        let fresh = TokenHash::of("fresh");
        let refused = limits
            .reserve(Attempt::SignIn, &fresh, ip("192.0.2.9"), POLICY, 110)
            .unwrap_err();
        assert_eq!(refused.by, LockedBy::Source);
        assert_eq!(
            limits.locked(Attempt::SignIn, &fresh, ip("192.0.2.9"), POLICY, 110),
            Some(refused)
        );
        assert!(limits
            .reserve(Attempt::SignIn, &fresh, ip("192.0.2.10"), POLICY, 110)
            .is_ok());
        assert!(limits
            .reserve(Attempt::SignIn, &fresh, ip("192.0.2.9"), POLICY, 160)
            .is_ok());
    }

    #[test]
    fn a_release_after_the_window_turned_over_changes_nothing() {
        let limits = Limits::default();
        let s = TokenHash::of("s");
        let old = limits
            .reserve(Attempt::Code, &s, None, POLICY, 100)
            .unwrap();
        let _new = limits
            .reserve(Attempt::Code, &s, None, POLICY, 170)
            .unwrap();
        limits.release(old);
        let _again = limits
            .reserve(Attempt::Code, &s, None, POLICY, 171)
            .unwrap();
        assert!(limits
            .reserve(Attempt::Code, &s, None, POLICY, 172)
            .is_err());
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let limits = Limits::default();
        let policy = Policy {
            per_source: 1,
            ..POLICY
        };
        let s = TokenHash::of("s");
        let _kept = limits
            .reserve(Attempt::SignIn, &s, ip("2001:db8:1:2::1"), policy, 0)
            .unwrap();
        let other = TokenHash::of("other");
        assert!(limits
            .reserve(
                Attempt::SignIn,
                &other,
                ip("2001:db8:1:2:ffff::9"),
                policy,
                1
            )
            .is_err());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(bucket(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
