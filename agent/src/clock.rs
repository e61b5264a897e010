//! The agent's idea of the server's time: the offset between the device clock and the
//! authorization server's, learned from the HTTP `Date` header (RFC 9110 §6.6.1) of every
//! response, so that client assertions (RFC 7523 §3) carry times the server accepts even when
//! the device booted with a wrong wall clock (no RTC battery: 1970, or hours off).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Offsets up to this many seconds are noise, not skew: `Date` has one-second resolution and
/// the response took some time to arrive.
pub const IGNORED_OFFSET_SECS: i64 = 2;

/// A refused assertion is signed again only if the offset moved by more than this since it
/// was signed: less than that would have been inside the server's allowed skew anyway (30 s
/// for Hallmark), so the refusal had another cause.
pub const RESIGN_THRESHOLD_SECS: i64 = 10;

/// Offsets beyond this are worth telling the operator about.
pub const REPORT_THRESHOLD_SECS: i64 = 60;

/// The device clock and the server's offset from it. Clones share the offset, so the HTTP
/// client that learns it and the code that signs assertions see the same value.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Added to the system clock; zero outside tests (see [`Clock::skewed`]).
    local_skew: i64,
    /// Server − local, in seconds; 0 until a response says otherwise.
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock, with no offset learned yet.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock moved by `seconds` (negative: behind). For tests and simulations of a
    /// device with a wrong wall clock; a real device uses [`Clock::system`].
    pub fn skewed(seconds: i64) -> Clock {
        Clock {
            local_skew: seconds,
            ..Clock::default()
        }
    }

    /// The device's time, Unix seconds (negative if the clock is before 1970).
    pub fn local_now(&self) -> i64 {
        system_secs().saturating_add(self.local_skew)
    }

    /// The server's time as best known: local time plus the learned offset, Unix seconds.
    pub fn server_now(&self) -> u64 {
        let now = self.local_now().saturating_add(self.offset());
        u64::try_from(now).unwrap_or(0)
    }

    /// The latest offset, server − local, in seconds (0 when within the noise).
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Learns the offset from a response's `Date` header value. A missing or unparseable
    /// date leaves the offset unchanged; one within [`IGNORED_OFFSET_SECS`] sets it to 0.
    pub fn observe_date(&self, date: Option<&str>) {
        if let Some(offset) = date.and_then(|d| offset_from_date(d, self.local_now())) {
            self.offset.store(offset, Ordering::Relaxed);
        }
    }

    /// Whether an assertion signed with offset `signed_with` and refused should be signed
    /// again: the server's `Date` has since shown the offset to be something else.
    pub fn outdated(&self, signed_with: i64) -> bool {
        self.offset().abs_diff(signed_with) > RESIGN_THRESHOLD_SECS.unsigned_abs()
    }
}

/// Seconds since the Unix epoch by the system clock, unskewed (0 if the clock is before it).
/// Token lifetimes are tracked with it: they are durations on the local clock, which a wrong
/// but steady wall clock does not disturb.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends a request authenticated by a credential `sign` makes, and signs and sends once more
/// if the server refused it (`refused`) while its `Date` showed that the time the credential
/// was signed with was off (see [`Clock::outdated`]). `sign` returns the credential and, for
/// an assertion, the offset it was signed with (`None` for a secret, which has no time).
/// Never more than two attempts: a second refusal is the answer.
pub(crate) fn send_resigning<A, T, E, F>(
    clock: &Clock,
    mut sign: impl FnMut() -> Result<(A, Option<i64>), F>,
    mut send: impl FnMut(&A) -> Result<T, E>,
    refused: impl Fn(&E) -> bool,
) -> Result<Result<T, E>, F> {
    let (auth, signed_with) = sign()?;
    match send(&auth) {
        Err(e) if refused(&e) && signed_with.is_some_and(|o| clock.outdated(o)) => {
            let (auth, _) = sign()?;
            Ok(send(&auth))
        }
        other => Ok(other),
    }
}

/// Server − local in seconds from an HTTP-date, or `None` if it does not parse; offsets
/// within [`IGNORED_OFFSET_SECS`] are 0.
fn offset_from_date(date: &str, local_now: i64) -> Option<i64> {
    let server = httpdate::parse_http_date(date.trim()).ok()?;
    let server = match server.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        // A server date before 1970 is nonsense, not a clock to follow.
        Err(_) => return None,
    };
    let offset = server.saturating_sub(local_now);
    Some(if offset.abs() <= IGNORED_OFFSET_SECS {
        0
    } else {
        offset
    })
}

fn system_secs() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    fn http_date(unix: i64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix as u64))
    }

    #[test]
    fn date_header_gives_the_offset() {
        // RFC 9110 §5.6.7's example IMF-fixdate and its obsolete forms.
        let at = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            offset_from_date("Sun, 06 Nov 1994 08:49:37 GMT", at - 7200),
            Some(7200)
        );
        assert_eq!(
            offset_from_date("Sunday, 06-Nov-94 08:49:37 GMT", at + 3600),
            Some(-3600)
        );
        assert_eq!(
            offset_from_date("Sun Nov  6 08:49:37 1994", at - 61),
            Some(61)
        );
        assert_eq!(offset_from_date("yesterday", at), None);
        assert_eq!(offset_from_date("", at), None);
    }

    #[test]
    fn small_offsets_are_noise() {
        let now = 1_700_000_000;
        for delta in -2..=2 {
            assert_eq!(offset_from_date(&http_date(now + delta), now), Some(0));
        }
        assert_eq!(offset_from_date(&http_date(now + 3), now), Some(3));
        assert_eq!(offset_from_date(&http_date(now - 3), now), Some(-3));
    }

    #[test]
    fn the_clock_follows_the_latest_date_and_keeps_it_when_there_is_none() {
        let clock = Clock::skewed(-7200);
        let shared = clock.clone();
        assert_eq!(clock.offset(), 0);
        let server_now = unix_now() as i64;
        clock.observe_date(Some(&http_date(server_now)));
        // The clone sees what the original learned (±1 s for a second boundary).
        assert!(
            (7199..=7201).contains(&shared.offset()),
            "{}",
            shared.offset()
        );
        assert!(shared.server_now().abs_diff(server_now as u64) <= 1);
        clock.observe_date(None);
        clock.observe_date(Some("not a date"));
        assert!((7199..=7201).contains(&shared.offset()));
        clock.observe_date(Some(&http_date(clock.local_now())));
        assert_eq!(shared.offset(), 0);
        assert!(!clock.outdated(10));
        assert!(clock.outdated(11));
        assert!(clock.outdated(-11));
    }

    /// A fake server that refuses assertions more than 30 s off its clock and answers with
    /// its `Date`, as Hallmark's server does.
    fn server<'a>(
        clock: &'a Clock,
        server_now: i64,
        requests: &'a Cell<u32>,
    ) -> impl Fn(&i64) -> Result<(), &'static str> + 'a {
        move |signed_iat: &i64| {
            requests.set(requests.get() + 1);
            clock.observe_date(Some(&http_date(server_now)));
            if signed_iat.abs_diff(server_now) > 30 {
                Err("invalid_client")
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn a_refused_assertion_is_signed_again_once_with_the_server_time() {
        let clock = Clock::skewed(-7200);
        let server_now = unix_now() as i64;
        let (signed, requests) = (Cell::new(0), Cell::new(0));
        let sign = || -> Result<(i64, Option<i64>), ()> {
            signed.set(signed.get() + 1);
            Ok((clock.server_now() as i64, Some(clock.offset())))
        };
        let result = send_resigning(&clock, sign, server(&clock, server_now, &requests), |e| {
            *e == "invalid_client"
        });
        assert_eq!(result, Ok(Ok(())));
        assert_eq!((signed.get(), requests.get()), (2, 2));
    }

    #[test]
    fn no_second_attempt_without_a_new_offset_or_for_a_secret() {
        // The offset was already right: the refusal has another cause.
        let clock = Clock::system();
        let requests = Cell::new(0);
        let result = send_resigning(
            &clock,
            || Ok::<_, ()>((0i64, Some(0))),
            |_: &i64| {
                requests.set(requests.get() + 1);
                clock.observe_date(Some(&http_date(clock.local_now())));
                Err::<(), _>("invalid_client")
            },
            |e| *e == "invalid_client",
        );
        assert_eq!(result, Ok(Err("invalid_client")));
        assert_eq!(requests.get(), 1);
        // A secret carries no time: a new offset does not make it worth sending again.
        let clock = Clock::skewed(-7200);
        requests.set(0);
        let result = send_resigning(
            &clock,
            || Ok::<_, ()>((0i64, None)),
            server(&clock, unix_now() as i64, &requests),
            |e| *e == "invalid_client",
        );
        assert_eq!(result, Ok(Err("invalid_client")));
        assert_eq!(requests.get(), 1);
    }

    #[test]
    fn never_more_than_two_attempts() {
        // A server whose Date jumps an hour with every answer is never satisfied.
        let clock = Clock::system();
        let requests = Cell::new(0i64);
        let result = send_resigning(
            &clock,
            || Ok::<_, ()>((clock.server_now() as i64, Some(clock.offset()))),
            |_: &i64| {
                requests.set(requests.get() + 1);
                clock.observe_date(Some(&http_date(clock.local_now() + 3600 * requests.get())));
                Err::<(), _>("invalid_client")
            },
            |e| *e == "invalid_client",
        );
        assert_eq!(result, Ok(Err("invalid_client")));
        assert_eq!(requests.get(), 2);
    }
}
