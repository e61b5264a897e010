//! When `run` replaces the device key (`rekey_interval_days`): a pure decision from the
//! interval, the rotation state and the device clock, tested without a TPM or a day's wait;
//! and the agent's side of it (reading the state, recording a missing key age).
//!
//! A key is due `interval` plus a jitter after the `since` its `Done` state records. The
//! jitter (up to [`JITTER`] of the interval) is derived from the key's kid rather than drawn
//! anew at every look: a fresh draw per hourly check would make the earliest draw win, and
//! the due time `status` shows would not be the one `run` keeps. Kids are thumbprints of
//! random keys, so devices provisioned in the same minute still spread out.
//!
//! Times are the device clock's ([`crate::Clock::local_now`]), the one `since` was recorded
//! with. A clock set forward brings the rekey early and one set back delays it, by as much as
//! the clock is off; neither harms the device (the old key works until the new one is proven).
//! A `since` in the future is kept, not reset: a device without a real-time clock that boots
//! in 1970 would otherwise rekey once per boot as soon as its clock is set.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::rotation::RotationState;
use crate::store::ROTATION_FILE;
use crate::tpm::KeySlot;
use crate::{Agent, AgentError};

/// The largest share of the interval added to it as jitter.
pub(crate) const JITTER: f64 = 0.1;

/// What the schedule says about the device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RekeyDue {
    /// Nothing to schedule: no interval, or no finished rotation to age (factory secret,
    /// first boot under way).
    Never,
    /// An interrupted rekey is waiting to be finished: due at once.
    Unfinished,
    /// A finished rotation whose key's age was never recorded (a state file from before the
    /// schedule): the count starts when the agent records it.
    Unknown,
    /// The key in use was made at `since` and is due at `at` (device clock, Unix seconds).
    At {
        /// When the key was made.
        since: i64,
        /// When it is due.
        at: i64,
    },
}

impl RekeyDue {
    /// Whether a rekey should run at `now` (device clock, Unix seconds).
    pub(crate) fn is_due(self, now: i64) -> bool {
        match self {
            RekeyDue::Unfinished => true,
            RekeyDue::At { at, .. } => now >= at,
            RekeyDue::Never | RekeyDue::Unknown => false,
        }
    }
}

/// The schedule of the key `state` records, with `interval` from the config (`None`: never).
pub(crate) fn rekey_due(interval: Option<Duration>, state: &RotationState) -> RekeyDue {
    let Some(interval) = interval else {
        return RekeyDue::Never;
    };
    match state {
        _ if state.is_rekeying() => RekeyDue::Unfinished,
        RotationState::Done {
            kid,
            since: Some(since),
            ..
        } => RekeyDue::At {
            since: *since,
            at: since
                .saturating_add(secs(interval))
                .saturating_add(secs(jitter(kid, interval))),
        },
        RotationState::Done { since: None, .. } => RekeyDue::Unknown,
        _ => RekeyDue::Never,
    }
}

/// The jitter of the key `kid`: a fixed share of up to [`JITTER`] of `interval`.
pub(crate) fn jitter(kid: &str, interval: Duration) -> Duration {
    interval.mul_f64(JITTER * unit_from(kid))
}

/// A number in [0, 1) fixed by `text`, evenly spread however alike the texts are (the first
/// 8 bytes of its SHA-256: spread, not secrecy, is what is asked).
fn unit_from(text: &str) -> f64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The top 53 bits fit an f64 exactly, so the result stays below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Agent {
    /// When the key in `slot` was made, as the TPM recorded it beside the key; for a key made
    /// by an agent that did not record it, now: its age counts from first sight.
    pub(crate) fn key_made_or_now(&self, slot: KeySlot) -> i64 {
        self.key_made(slot).unwrap_or_else(|| self.local_now())
    }

    /// When the key in `slot` was made, as the TPM recorded it, if it did (and answers).
    pub(crate) fn key_made(&self, slot: KeySlot) -> Option<i64> {
        self.tpm().ok()?.key_made(slot).ok().flatten()
    }

    /// Record in the TPM that the key about to be made in `slot` is made now. Best effort:
    /// the record only keeps the key's age if the state directory is lost, and the key itself
    /// matters more than its age.
    pub(crate) fn record_key_made(&self, slot: KeySlot) {
        let now = self.local_now();
        if let Ok(mut tpm) = self.tpm() {
            let _ = tpm.record_key_made(slot, now);
        }
    }

    /// The device's time by its own clock, Unix seconds: what `since` records.
    pub(crate) fn local_now(&self) -> i64 {
        self.http.clock().local_now()
    }

    /// The schedule of the key in use, as the state directory records it. A finished rotation
    /// without a recorded key age starts its count now, and records it (see `settle_keys`).
    pub(crate) fn rekey_schedule(&mut self) -> Result<RekeyDue, AgentError> {
        let interval = self.config.rekey_interval_days.duration();
        let state = self.rotation_state()?;
        let due = rekey_due(interval, &state);
        let RotationState::Done { slot, kid, .. } = state else {
            return Ok(due);
        };
        if due != RekeyDue::Unknown {
            return Ok(due);
        }
        let done = RotationState::Done {
            slot,
            kid,
            since: Some(self.key_made_or_now(slot)),
        };
        self.state
            .write_json(ROTATION_FILE, &done)
            .map_err(|source| AgentError::State { source })?;
        Ok(rekey_due(interval, &done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::KeySlot;

    const DAY: i64 = 86_400;

    fn done(kid: &str, since: Option<i64>) -> RotationState {
        RotationState::Done {
            slot: KeySlot::A,
            kid: kid.into(),
            since,
        }
    }

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * 86_400))
    }

    #[test]
    fn a_key_is_due_after_the_interval_plus_its_jitter_and_not_before() {
        let since = 1_700_000_000;
        let due = rekey_due(days(30), &done("kid-1", Some(since)));
        let RekeyDue::At { since: s, at } = due else {
            panic!("{due:?}");
        };
        assert_eq!(s, since);
        assert!(at >= since + 30 * DAY && at < since + 33 * DAY, "{at}");
        assert!(!due.is_due(since));
        assert!(!due.is_due(since + 30 * DAY - 1));
        assert!(!due.is_due(at - 1));
        assert!(due.is_due(at));
        assert!(due.is_due(since + 33 * DAY));
        // The same key gets the same due time at every look.
        assert_eq!(rekey_due(days(30), &done("kid-1", Some(since))), due);
    }

    #[test]
    fn jitter_stays_within_a_tenth_of_the_interval_and_spreads_keys() {
        let interval = Duration::from_secs(86_400);
        let jitters: Vec<Duration> = (0..1000)
            .map(|i| jitter(&format!("kid-{i}"), interval))
            .collect();
        for j in &jitters {
            assert!(*j < interval / 10, "{j:?}");
        }
        // Spread over the window, not bunched: both ends of it are used.
        assert!(jitters.iter().any(|j| *j < interval / 100));
        assert!(jitters.iter().any(|j| *j > interval / 10 - interval / 100));
        let mut minutes: Vec<u64> = jitters.iter().map(|j| j.as_secs() / 60).collect();
        minutes.sort_unstable();
        minutes.dedup();
        assert!(minutes.len() > 100, "{} distinct minutes", minutes.len());
        // The longest interval: no overflow, same bound.
        let max = Duration::from_secs(3650 * 86_400);
        assert!(jitter("k", max) < max / 10);
        for text in ["", "a", "\u{ff}"] {
            assert!((0.0..1.0).contains(&unit_from(text)));
        }
    }

    #[test]
    fn interval_zero_schedules_nothing() {
        for state in [
            done("k", Some(0)),
            done("k", None),
            RotationState::Factory,
            RotationState::Rekeying {
                from: KeySlot::A,
                from_kid: "k".into(),
                to: KeySlot::B,
            },
        ] {
            let due = rekey_due(None, &state);
            assert_eq!(due, RekeyDue::Never, "{state:?}");
            assert!(!due.is_due(i64::MAX));
        }
    }

    #[test]
    fn a_key_of_unknown_age_is_not_due_and_nothing_but_a_key_is_scheduled() {
        // A state file from before the schedule: the count starts at first sight, not now.
        let due = rekey_due(days(1), &done("k", None));
        assert_eq!(due, RekeyDue::Unknown);
        assert!(!due.is_due(i64::MAX));
        for state in [
            RotationState::Factory,
            RotationState::KeyCreated { slot: KeySlot::A },
            RotationState::Registered {
                slot: KeySlot::A,
                kid: "k".into(),
            },
            RotationState::Proven {
                slot: KeySlot::A,
                kid: "k".into(),
            },
        ] {
            assert_eq!(rekey_due(days(1), &state), RekeyDue::Never, "{state:?}");
        }
    }

    #[test]
    fn an_interrupted_rekey_is_due_at_once() {
        let registered = RotationState::RekeyRegistered {
            from: KeySlot::B,
            from_kid: "old".into(),
            to: KeySlot::A,
            kid: "new".into(),
        };
        let due = rekey_due(days(3650), &registered);
        assert_eq!(due, RekeyDue::Unfinished);
        assert!(due.is_due(i64::MIN));
    }

    #[test]
    fn wrong_clocks_shift_the_schedule_without_overflowing() {
        // Made by a clock in the future: waits for it rather than restarting the count.
        let due = rekey_due(days(1), &done("k", Some(4_000_000_000)));
        assert!(!due.is_due(1_700_000_000));
        // Made by a clock in 1970, now set right: due.
        let due = rekey_due(days(1), &done("k", Some(-100)));
        assert!(due.is_due(1_700_000_000));
        // Nonsense in the file does not panic.
        let due = rekey_due(days(3650), &done("k", Some(i64::MAX)));
        assert_eq!(
            due,
            RekeyDue::At {
                since: i64::MAX,
                at: i64::MAX
            }
        );
        assert!(!due.is_due(1_700_000_000));
    }
}
