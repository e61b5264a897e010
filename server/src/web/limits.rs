//! Failure limits of the verification page: codes that match no request and failed sign-ins
//! (RFC 8628 §5.1: the user code's small space must be protected by rate limiting).
//!
//! An attempt is *reserved* — counted — before it is evaluated, atomically with the check that
//! it may run, and released only when it turns out not to be a failure. So concurrent requests
//! can never each see a count below a limit and all be evaluated. A reservation that is neither
//! released nor kept explicitly (a request cancelled mid-check) stays counted.
//!
//! Sign-ins are held to a limit per browser and one per source address. Code entry is held to
//! the person's *own* limits — per session and per account — and to *shared* ones: per source
//! address (a slow-down, then a pause) and for the whole server. The shared limits apply only
//! to an account that has itself entered [`SHARED_LIMITS_AFTER`] codes matching no request in the
//! window, so a person who was not guessing is never slowed down or refused because of others at
//! the same address (an office behind one NAT), while guessing stays bounded: per window at most
//! `per_account` guesses per account, and at most `global + SHARED_LIMITS_AFTER × accounts` in
//! all (see the README for the arithmetic).
//!
//! On the embedded store the counters are held in memory, per process (a restart clears them);
//! on PostgreSQL they are rows every replica shares, each attempt one transaction.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::store::grants::TokenHash;
use crate::store::{StoreError, Window, WindowKey, WindowStore};

/// Keys tracked before expired windows are swept.
const SWEEP_AT: usize = 50_000;
/// An account's own wrong codes in a window before the shared (address, server) limits apply
/// to it: two typos are human, a third starts to look like guessing.
pub const SHARED_LIMITS_AFTER: u32 = 3;
/// The longest slow-down, seconds.
pub const MAX_SLOWDOWN: u64 = 10;

/// What is being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attempt {
    /// Entering a user code.
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
    /// The signed-in account's own failures, all its sessions.
    Account,
    /// Failures from the source address (all its sessions and accounts).
    Source,
    /// Failures on the whole server.
    Global,
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
struct FailureWindow {
    /// Failures (and attempts still running) in the current window.
    count: u32,
    /// When the current window began.
    since: u64,
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
    fn locked_for(&self, limit: u32, window: u64, now: u64) -> Option<u64> {
        let ends = self.since.saturating_add(window);
        (self.current(window, now) >= limit).then(|| ends.saturating_sub(now).max(1))
    }

    /// Count one attempt at `now`, starting a new window if the last one ended.
    fn record(&mut self, window: u64, now: u64) {
        if now >= self.since.saturating_add(window) {
            *self = FailureWindow {
                count: 0,
                since: now,
            };
        }
        self.count = self.count.saturating_add(1);
    }
}

/// One counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A browser: a signed-in session (hash of its id) or a visitor (hash of its CSRF token).
    Session(Attempt, TokenHash),
    /// A signed-in account.
    Account(Attempt, String),
    /// A source address bucket (see [`bucket`]).
    Source(Attempt, IpAddr),
    /// The whole server.
    Global(Attempt),
}

/// A counter an attempt is held to: refused when `count >= limit`, if `enforced`.
#[derive(Debug, Clone)]
struct Check {
    key: Key,
    limit: u32,
    enforced: bool,
    by: LockedBy,
}

/// The counts of one reserved attempt, itself included (0 for a counter that does not apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// This session's.
    pub session: u32,
    /// This account's.
    pub account: u32,
    /// This source address's.
    pub source: u32,
    /// The server's.
    pub global: u32,
}

/// An attempt counted against its limits; give it back with [`Limits::release`] if it was not
/// a failure. Dropping it keeps it counted.
#[derive(Debug)]
#[must_use = "a reservation is released when the attempt was no failure, or kept as one"]
pub struct Reservation {
    /// Each key counted, with the window it was counted in.
    counted: Vec<(Key, u64)>,
    /// The counts with this attempt.
    pub counts: Counts,
    /// Seconds to wait before evaluating it (the slow-down of a busy address), 0 mostly.
    pub delay: u64,
}

/// The sign-in limits.
#[derive(Debug, Clone, Copy)]
pub struct SignInPolicy {
    /// Failures per browser per window.
    pub per_session: u32,
    /// Failures per source address per window.
    pub per_source: u32,
    /// The window, seconds.
    pub window: u64,
}

/// The code-entry limits.
#[derive(Debug, Clone, Copy)]
pub struct CodePolicy {
    /// Wrong codes per session per window.
    pub per_session: u32,
    /// Wrong codes per account per window, all sessions and addresses.
    pub per_account: u32,
    /// Wrong codes from one address per window after which suspect accounts there are slowed.
    pub slowdown_per_source: u32,
    /// Wrong codes from one address per window after which suspect accounts there are paused.
    pub per_source: u32,
    /// Wrong codes on the server per window after which suspect accounts are paused.
    pub global: u32,
    /// The window, seconds.
    pub window: u64,
}

/// Who enters a code.
#[derive(Debug, Clone, Copy)]
pub struct CodeCaller<'a> {
    /// The session's limit key.
    pub session: &'a TokenHash,
    /// The signed-in account.
    pub account: &'a str,
    /// The client address, when known.
    pub source: Option<IpAddr>,
}

/// Failure windows of the page: in this process's memory, or shared through the database so
/// that the limits hold across replicas.
#[derive(Debug, Clone)]
pub struct Limits {
    store: Arc<dyn WindowStore>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            store: Arc::new(MemoryWindows::default()),
        }
    }
}

type Map = HashMap<Key, FailureWindow>;

impl Limits {
    /// Limits kept in `store`, which every replica shares.
    pub fn shared(store: Arc<dyn WindowStore>) -> Self {
        Limits { store }
    }

    /// Reserve one sign-in by `session` from `source`: refused if either limit is reached
    /// (attempts still running included), otherwise counted against both at once.
    pub async fn reserve_sign_in(
        &self,
        session: &TokenHash,
        source: Option<IpAddr>,
        p: SignInPolicy,
        now: u64,
    ) -> Result<Result<Reservation, Lockout>, StoreError> {
        let checks = sign_in_checks(session, source, p);
        let keys: Vec<Key> = checks.iter().map(|c| c.key.clone()).collect();
        self.with_map(&keys, p.window, now, move |map| {
            if let Some(l) = first_lockout(map, &checks, p.window, now) {
                return Err(l);
            }
            Ok(count(map, checks.clone(), p.window, now, 0))
        })
        .await
    }

    /// Whether `session` at `source` is locked out of signing in now.
    pub async fn sign_in_lockout(
        &self,
        session: &TokenHash,
        source: Option<IpAddr>,
        p: SignInPolicy,
        now: u64,
    ) -> Result<Option<Lockout>, StoreError> {
        let checks = sign_in_checks(session, source, p);
        let keys: Vec<Key> = checks.iter().map(|c| c.key.clone()).collect();
        self.with_map(&keys, p.window, now, move |map| {
            first_lockout(map, &checks, p.window, now)
        })
        .await
    }

    /// Reserve one code entry: refused by the caller's own limits, or — for an account that
    /// has itself failed [`SHARED_LIMITS_AFTER`] times — by the shared ones; otherwise counted
    /// against all at once, with the slow-down to apply.
    pub async fn reserve_code(
        &self,
        who: CodeCaller<'_>,
        p: CodePolicy,
        now: u64,
    ) -> Result<Result<Reservation, Lockout>, StoreError> {
        let keys = code_keys(who);
        let (session, account, source) = (*who.session, who.account.to_owned(), who.source);
        self.with_map(&keys, p.window, now, move |map| {
            let who = CodeCaller {
                session: &session,
                account: &account,
                source,
            };
            let (checks, delay) = code_checks(map, who, p, now);
            if let Some(l) = first_lockout(map, &checks, p.window, now) {
                return Err(l);
            }
            Ok(count(map, checks, p.window, now, delay))
        })
        .await
    }

    /// Whether `who` is locked out of code entry now.
    pub async fn code_lockout(
        &self,
        who: CodeCaller<'_>,
        p: CodePolicy,
        now: u64,
    ) -> Result<Option<Lockout>, StoreError> {
        let keys = code_keys(who);
        let (session, account, source) = (*who.session, who.account.to_owned(), who.source);
        self.with_map(&keys, p.window, now, move |map| {
            let who = CodeCaller {
                session: &session,
                account: &account,
                source,
            };
            let (checks, _) = code_checks(map, who, p, now);
            first_lockout(map, &checks, p.window, now)
        })
        .await
    }

    /// Give back a reservation whose attempt was no failure (or was never evaluated).
    pub async fn release(&self, reservation: Reservation) -> Result<(), StoreError> {
        let keys: Vec<Key> = reservation.counted.iter().map(|(k, _)| k.clone()).collect();
        self.with_map(&keys, u64::MAX, 0, move |map| {
            for (key, since) in &reservation.counted {
                if let Some(w) = map.get_mut(key) {
                    // Only the window it was counted in: a new window starts from zero anyway.
                    if w.since == *since {
                        w.count = w.count.saturating_sub(1);
                    }
                }
            }
        })
        .await
    }

    /// Run `logic` on the windows of `keys`, atomically, and store what it changed.
    async fn with_map<T: Send>(
        &self,
        keys: &[Key],
        _window: u64,
        _now: u64,
        mut logic: impl FnMut(&mut Map) -> T + Send,
    ) -> Result<T, StoreError> {
        let encoded: Vec<(Key, WindowKey)> = keys.iter().map(|k| (k.clone(), k.encode())).collect();
        let wanted: Vec<WindowKey> = encoded.iter().map(|(_, w)| w.clone()).collect();
        let mut out = None;
        self.store
            .update_windows(&wanted, &mut |stored| {
                let mut map: Map = encoded
                    .iter()
                    .map(|(k, w)| {
                        let found = stored.get(w).copied().unwrap_or_default();
                        (
                            k.clone(),
                            FailureWindow {
                                count: found.count,
                                since: found.since,
                            },
                        )
                    })
                    .collect();
                out = Some(logic(&mut map));
                for (k, w) in &encoded {
                    if let Some(f) = map.get(k) {
                        stored.insert(
                            w.clone(),
                            Window {
                                count: f.count,
                                since: f.since,
                            },
                        );
                    }
                }
            })
            .await?;
        out.ok_or_else(|| StoreError::DatabaseSetup {
            reason: "failure counters were not updated".into(),
        })
    }
}

/// Every key a code entry may be held to.
fn code_keys(who: CodeCaller<'_>) -> Vec<Key> {
    let mut keys = vec![
        Key::Session(Attempt::Code, *who.session),
        Key::Account(Attempt::Code, who.account.to_owned()),
        Key::Global(Attempt::Code),
    ];
    if let Some(ip) = who.source {
        keys.push(Key::Source(Attempt::Code, bucket(ip)));
    }
    keys
}

impl Key {
    /// The store's (kind, subject) for this counter.
    fn encode(&self) -> WindowKey {
        let kind = |attempt: &Attempt, of: &str| {
            let a = match attempt {
                Attempt::Code => "code",
                Attempt::SignIn => "sign-in",
            };
            format!("{a}-{of}")
        };
        match self {
            Key::Session(a, hash) => (kind(a, "session"), hex::encode(hash.0)),
            Key::Account(a, name) => (kind(a, "account"), name.clone()),
            Key::Source(a, ip) => (kind(a, "source"), ip.to_string()),
            Key::Global(a) => (kind(a, "global"), String::new()),
        }
    }
}

/// The counters in this process's memory (the embedded store's server is one process).
#[derive(Debug, Default)]
pub struct MemoryWindows {
    windows: Mutex<HashMap<WindowKey, Window>>,
}

#[async_trait::async_trait]
impl WindowStore for MemoryWindows {
    async fn update_windows(
        &self,
        _keys: &[WindowKey],
        change: &mut (dyn for<'m> FnMut(&'m mut HashMap<WindowKey, Window>) + Send),
    ) -> Result<(), StoreError> {
        // A poisoned map only means another request panicked mid-update of a counter.
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            // No window is longer than a day (the longest `lockout_window`).
            let now = crate::unix_now();
            map.retain(|_, w| now < w.since.saturating_add(86_400));
        }
        change(&mut map);
        Ok(())
    }
}

fn sign_in_checks(session: &TokenHash, source: Option<IpAddr>, p: SignInPolicy) -> Vec<Check> {
    let mut checks = vec![Check {
        key: Key::Session(Attempt::SignIn, *session),
        limit: p.per_session,
        enforced: true,
        by: LockedBy::Session,
    }];
    if let Some(ip) = source {
        checks.push(Check {
            key: Key::Source(Attempt::SignIn, bucket(ip)),
            limit: p.per_source,
            enforced: true,
            by: LockedBy::Source,
        });
    }
    checks
}

/// The checks of a code entry, and its slow-down in seconds.
fn code_checks(map: &Map, who: CodeCaller<'_>, p: CodePolicy, now: u64) -> (Vec<Check>, u64) {
    let current = |key: &Key| map.get(key).map_or(0, |w| w.current(p.window, now));
    let account = Key::Account(Attempt::Code, who.account.to_owned());
    let suspect = current(&account) >= SHARED_LIMITS_AFTER;
    let mut checks = vec![
        Check {
            key: Key::Session(Attempt::Code, *who.session),
            limit: p.per_session,
            enforced: true,
            by: LockedBy::Session,
        },
        Check {
            key: account,
            limit: p.per_account,
            enforced: true,
            by: LockedBy::Account,
        },
    ];
    let mut delay = 0;
    if let Some(ip) = who.source {
        let key = Key::Source(Attempt::Code, bucket(ip));
        let from_source = current(&key);
        if suspect && from_source >= p.slowdown_per_source {
            let over = u64::from(from_source - p.slowdown_per_source) + 1;
            delay = over.min(MAX_SLOWDOWN);
        }
        checks.push(Check {
            key,
            limit: p.per_source,
            enforced: suspect,
            by: LockedBy::Source,
        });
    }
    checks.push(Check {
        key: Key::Global(Attempt::Code),
        limit: p.global,
        enforced: suspect,
        by: LockedBy::Global,
    });
    (checks, delay)
}

/// The first enforced check whose limit is reached.
fn first_lockout(map: &Map, checks: &[Check], window: u64, now: u64) -> Option<Lockout> {
    checks.iter().filter(|c| c.enforced).find_map(|c| {
        let wait = map.get(&c.key)?.locked_for(c.limit, window, now)?;
        Some(Lockout { by: c.by, wait })
    })
}

/// Count one attempt against every check.
fn count(map: &mut Map, checks: Vec<Check>, window: u64, now: u64, delay: u64) -> Reservation {
    let mut counted = Vec::with_capacity(checks.len());
    let mut counts = Counts::default();
    for c in checks {
        let w = map.entry(c.key.clone()).or_default();
        w.record(window, now);
        match c.by {
            LockedBy::Session => counts.session = w.count,
            LockedBy::Account => counts.account = w.count,
            LockedBy::Source => counts.source = w.count,
            LockedBy::Global => counts.global = w.count,
        }
        counted.push((c.key, w.since));
    }
    Reservation {
        counted,
        counts,
        delay,
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
mod tests;
