//! Failure counters per source address for the verification page: wrong user codes and failed
//! sign-ins (RFC 8628 §5.1: the user code's small space must be protected by rate limiting).
//! Held in memory, per process; the per-session counters live in the session record instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::store::users::FailureWindow;

/// Addresses tracked before expired windows are swept.
const SWEEP_AT: usize = 50_000;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A wrong, expired or used user code.
    Code,
    /// A wrong user name or password.
    SignIn,
}

/// Failure windows by source address.
#[derive(Debug, Default)]
pub struct SourceLimits {
    codes: Mutex<HashMap<IpAddr, FailureWindow>>,
    sign_ins: Mutex<HashMap<IpAddr, FailureWindow>>,
}

impl SourceLimits {
    /// Seconds until `source` may try again, if it is locked out of `kind`.
    pub fn locked_for(
        &self,
        kind: Failure,
        source: Option<IpAddr>,
        limit: u32,
        window: u64,
        now: u64,
    ) -> Option<u64> {
        let key = source.map(bucket)?;
        let map = self.map(kind).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).and_then(|w| w.locked_for(limit, window, now))
    }

    /// Count a failure from `source`; true if this one engaged the lock.
    pub fn record(
        &self,
        kind: Failure,
        source: Option<IpAddr>,
        limit: u32,
        window: u64,
        now: u64,
    ) -> bool {
        let Some(key) = source.map(bucket) else {
            return false;
        };
        // A poisoned map only means another request panicked mid-update of a counter.
        let mut map = self.map(kind).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, w| now < w.since.saturating_add(window));
        }
        let w = map.entry(key).or_default();
        w.record(window, now);
        w.count == limit
    }

    fn map(&self, kind: Failure) -> &Mutex<HashMap<IpAddr, FailureWindow>> {
        match kind {
            Failure::Code => &self.codes,
            Failure::SignIn => &self.sign_ins,
        }
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

    #[test]
    fn locks_after_the_limit_per_address_and_kind() {
        let limits = SourceLimits::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!limits.record(Failure::Code, Some(a), 2, 60, 100));
        assert_eq!(limits.locked_for(Failure::Code, Some(a), 2, 60, 101), None);
        assert!(limits.record(Failure::Code, Some(a), 2, 60, 101));
        assert_eq!(
            limits.locked_for(Failure::Code, Some(a), 2, 60, 101),
            Some(59)
        );
        assert_eq!(
            limits.locked_for(Failure::SignIn, Some(a), 2, 60, 101),
            None
        );
        assert_eq!(limits.locked_for(Failure::Code, Some(b), 2, 60, 101), None);
        assert_eq!(limits.locked_for(Failure::Code, Some(a), 2, 60, 160), None);
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let limits = SourceLimits::default();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        limits.record(Failure::SignIn, Some(one), 1, 60, 0);
        assert!(limits
            .locked_for(Failure::SignIn, Some(other), 1, 60, 1)
            .is_some());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(bucket(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
