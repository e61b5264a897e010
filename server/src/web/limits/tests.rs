//! Tests of the page's failure limits.

use super::*;

const SIGN_IN: SignInPolicy = SignInPolicy {
    per_session: 2,
    per_source: 3,
    window: 60,
};

const CODES: CodePolicy = CodePolicy {
    per_session: 5,
    per_account: 8,
    slowdown_per_source: 4,
    per_source: 6,
    global: 10,
    window: 60,
};

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn caller<'a>(session: &'a TokenHash, account: &'a str, source: &str) -> CodeCaller<'a> {
    CodeCaller {
        session,
        account,
        source: ip(source),
    }
}

#[tokio::test]
async fn reservations_count_before_the_outcome_is_known() {
    let limits = Limits::default();
    let s = TokenHash::of("session");
    // Two attempts in flight reach the session's limit of two: a third is refused at once,
    // before either of the first two finished.
    let a = limits
        .reserve_sign_in(&s, ip("192.0.2.1"), SIGN_IN, 100)
        .await
        .unwrap()
        .unwrap();
    let b = limits
        .reserve_sign_in(&s, ip("192.0.2.1"), SIGN_IN, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.counts.session, 2);
    let refused = limits
        .reserve_sign_in(&s, ip("192.0.2.1"), SIGN_IN, 101)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused,
        Lockout {
            by: LockedBy::Session,
            wait: 59
        }
    );
    // One succeeded: its slot comes back.
    limits.release(a).await.unwrap();
    let _c = limits
        .reserve_sign_in(&s, ip("192.0.2.1"), SIGN_IN, 102)
        .await
        .unwrap()
        .unwrap();
    drop(b);
    // Code entry is counted apart from sign-ins.
    assert!(limits
        .reserve_code(caller(&s, "ann", "192.0.2.1"), CODES, 102)
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn the_sign_in_source_limit_spans_sessions_and_the_window_ends() {
    let limits = Limits::default();
    for n in 0..3 {
        let s = TokenHash::of(&format!("s{n}"));
        let _kept = limits
            .reserve_sign_in(&s, ip("192.0.2.9"), SIGN_IN, 100)
            .await
            .unwrap()
            .unwrap();
    }
    let fresh = TokenHash::of("fresh");
    let refused = limits
        .reserve_sign_in(&fresh, ip("192.0.2.9"), SIGN_IN, 110)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.by, LockedBy::Source);
    assert_eq!(
        limits
            .sign_in_lockout(&fresh, ip("192.0.2.9"), SIGN_IN, 110)
            .await
            .unwrap(),
        Some(refused)
    );
    assert!(limits
        .reserve_sign_in(&fresh, ip("192.0.2.10"), SIGN_IN, 110)
        .await
        .unwrap()
        .is_ok());
    assert!(limits
        .reserve_sign_in(&fresh, ip("192.0.2.9"), SIGN_IN, 160)
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn a_release_after_the_window_turned_over_changes_nothing() {
    let limits = Limits::default();
    let s = TokenHash::of("s");
    let old = limits
        .reserve_sign_in(&s, None, SIGN_IN, 100)
        .await
        .unwrap()
        .unwrap();
    let _new = limits
        .reserve_sign_in(&s, None, SIGN_IN, 170)
        .await
        .unwrap()
        .unwrap();
    limits.release(old).await.unwrap();
    let _again = limits
        .reserve_sign_in(&s, None, SIGN_IN, 171)
        .await
        .unwrap()
        .unwrap();
    assert!(limits
        .reserve_sign_in(&s, None, SIGN_IN, 172)
        .await
        .unwrap()
        .is_err());
}

#[tokio::test]
async fn own_limits_hold_per_session_and_per_account() {
    let limits = Limits::default();
    let (s1, s2) = (TokenHash::of("s1"), TokenHash::of("s2"));
    for _ in 0..5 {
        let _ = limits
            .reserve_code(caller(&s1, "ann", "192.0.2.1"), CODES, 0)
            .await
            .unwrap();
    }
    let l = limits
        .reserve_code(caller(&s1, "ann", "192.0.2.1"), CODES, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(l.by, LockedBy::Session);
    // A new session of the same account, from elsewhere: three more, then the account's
    // limit of eight holds.
    for _ in 0..3 {
        let r = limits
            .reserve_code(caller(&s2, "ann", "198.51.100.1"), CODES, 2)
            .await
            .unwrap()
            .unwrap();
        assert!(r.counts.account <= 8);
    }
    let l = limits
        .reserve_code(caller(&s2, "ann", "198.51.100.1"), CODES, 3)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(l.by, LockedBy::Account);
}

#[tokio::test]
async fn shared_limits_never_touch_an_account_that_was_not_guessing() {
    let limits = Limits::default();
    // Guessers behind one address fill its limits and the server's.
    for n in 0..4 {
        let s = TokenHash::of(&format!("g{n}"));
        let name = format!("guesser{n}");
        while limits
            .reserve_code(caller(&s, &name, "10.0.0.1"), CODES, 0)
            .await
            .unwrap()
            .is_ok()
        {}
    }
    let innocent = TokenHash::of("innocent");
    // Two typos and the right code, at once and without delay, from the same address.
    for _ in 0..SHARED_LIMITS_AFTER {
        let r = limits
            .reserve_code(caller(&innocent, "ann", "10.0.0.1"), CODES, 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.delay, 0);
    }
    // Now ann has failed three times herself: the shared limits apply to her too.
    let l = limits
        .reserve_code(caller(&innocent, "ann", "10.0.0.1"), CODES, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(l.by, LockedBy::Source);
    // Elsewhere she is held to the server's limit.
    let l = limits
        .reserve_code(caller(&innocent, "ann", "192.0.2.7"), CODES, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(l.by, LockedBy::Global);
}

#[tokio::test]
async fn a_busy_address_slows_suspects_before_it_pauses_them() {
    let limits = Limits::default();
    let policy = CodePolicy {
        per_session: 100,
        per_account: 100,
        global: 100,
        ..CODES
    };
    let s = TokenHash::of("s");
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(
            limits
                .reserve_code(caller(&s, "mallory", "10.0.0.2"), policy, 0)
                .await
                .unwrap()
                .unwrap()
                .delay,
        );
    }
    // Not a suspect for her first three; the address passes 4 failures at her fifth.
    assert_eq!(delays, [0, 0, 0, 0, 1, 2]);
    let l = limits
        .reserve_code(caller(&s, "mallory", "10.0.0.2"), policy, 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((l.by, l.wait), (LockedBy::Source, 60));
    assert_eq!(
        limits
            .code_lockout(caller(&s, "mallory", "10.0.0.2"), policy, 1)
            .await
            .unwrap(),
        Some(Lockout {
            by: LockedBy::Source,
            wait: 59
        })
    );
    // A clean account at that address is neither slowed nor paused.
    let other = TokenHash::of("other");
    assert_eq!(
        limits
            .code_lockout(caller(&other, "ann", "10.0.0.2"), policy, 1)
            .await
            .unwrap(),
        None
    );
    let r = limits
        .reserve_code(caller(&other, "ann", "10.0.0.2"), policy, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.delay, 0);
}

#[tokio::test]
async fn ipv6_addresses_share_their_64() {
    let limits = Limits::default();
    let policy = SignInPolicy {
        per_source: 1,
        ..SIGN_IN
    };
    let s = TokenHash::of("s");
    let _kept = limits
        .reserve_sign_in(&s, ip("2001:db8:1:2::1"), policy, 0)
        .await
        .unwrap()
        .unwrap();
    let other = TokenHash::of("other");
    assert!(limits
        .reserve_sign_in(&other, ip("2001:db8:1:2:ffff::9"), policy, 1)
        .await
        .unwrap()
        .is_err());
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(bucket(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
}
