//! Who the verification page's code limits refuse and who they never refuse, with numbers
//! (issue 14, items 2 and 3), and the guessing bound the README states (RFC 8628 §5.1): per
//! window, at most `code_failures_per_account` guesses per account and at most
//! `code_failures_global + 3 × accounts` on the whole server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device_support;

use std::time::{Duration, Instant};

use device_support::{now, Browser, InProcess, Page};
use hallmark_server::config::ConfigLayer;
use hallmark_server::store::grants::{DeviceGrant, GrantState, TokenHash};

const PASSWORD: &str = "correct horse battery";
/// An account's own wrong codes before the shared limits apply to it (web::limits).
const SHARED_LIMITS_AFTER: usize = 3;

async fn server(layer: ConfigLayer, users: &[&str]) -> (InProcess, String) {
    let s = InProcess::start(layer).await;
    let client = s.device_client("Hall sensor", "api:read").await;
    for u in users {
        s.add_user(u, PASSWORD).await;
    }
    (s, client)
}

async fn signed_in(s: &InProcess, user: &str, address: &str) -> (Browser, Page) {
    let mut b = s.browser(address);
    let page = b.sign_in(user, PASSWORD, "").await;
    assert!(page.says("action=\"/device/sign-out\""), "{}", page.body);
    (b, page)
}

async fn rejected(s: &InProcess, user: &str) -> usize {
    s.audit()
        .await
        .iter()
        .filter(|e| {
            e.body.event.event == "device.code_rejected"
                && e.body.event.actor.as_deref() == Some(user)
                && e.body.event.reason.as_deref() == Some("unknown code")
        })
        .count()
}

fn is_paused(p: &Page) -> bool {
    p.status == 429 && p.says("Code entry paused")
}

/// Codes that match no request, entered from new sessions at `addresses` (one session per
/// address, five codes each at most) until every attempt is refused; how many were evaluated.
async fn guess_until_refused(s: &InProcess, user: &str, addresses: &[&str]) -> usize {
    let before = rejected(s, user).await;
    'sessions: for address in addresses {
        let (mut b, mut page) = signed_in(s, user, address).await;
        for n in 0..5 {
            if is_paused(&page) {
                continue 'sessions;
            }
            page = b
                .enter_code(&page, &format!("ZZZZ-ZZZ{}", ["B", "C", "D", "F", "G"][n]))
                .await;
        }
    }
    rejected(s, user).await - before
}

#[tokio::test]
async fn retrying_an_expired_or_used_code_is_never_counted_as_guessing() {
    let (s, client) = server(ConfigLayer::default(), &["ann"]).await;
    let t = now();
    let expired = DeviceGrant {
        user_code: "BCDFGHJK".into(),
        client_id: client.clone(),
        scope: vec!["api:read".into()],
        created_at: t - 700,
        expires_at: t - 100,
        interval: 5,
        last_poll: None,
        state: GrantState::Pending,
        decided_in: None,
        dpop_jkt: None,
    };
    assert!(s
        .oauth
        .device_grants
        .insert_device_grant(&TokenHash::of("expired"), &expired)
        .await
        .unwrap());
    let used = s.authorize(&client, None, t).await.unwrap();
    s.decide(&used.user_code, "bob", true, t).await;

    let (mut b, mut page) = signed_in(&s, "ann", "192.0.2.70").await;
    // Ten times each: a person who keeps retrying the code their device showed.
    for _ in 0..10 {
        page = b.enter_code(&page, "bcdf ghjk").await;
        assert!(page.says("That code has expired"), "{}", page.body);
        page = b.enter_code(&page, &used.user_code).await;
        assert!(
            page.says("already approved with another account"),
            "{}",
            page.body
        );
        page = b.get("/device").await;
    }
    assert_eq!(rejected(&s, "ann").await, 0);
    // Codes that match nothing do count: the fifth pauses the session, and the page says how
    // many tries were left before it.
    for left in [4, 3, 2, 1] {
        page = b.enter_code(&page, "ZZZZ-ZZZZ").await;
        let tries = if left == 1 {
            "You have 1 more try".to_owned()
        } else {
            format!("You have {left} more tries")
        };
        assert!(page.says(&tries), "{}", page.body);
    }
    page = b.enter_code(&page, "ZZZZ-ZZZZ").await;
    assert!(is_paused(&page), "{}", page.body);
    assert_eq!(rejected(&s, "ann").await, 5);
}

#[tokio::test]
async fn guessers_behind_a_shared_address_never_lock_out_the_innocent() {
    // An office behind one NAT (10.0.0.1): two guessing accounts and two people who are not.
    let layer = ConfigLayer {
        code_failures_per_source: Some(8),
        code_slowdown_per_source: Some(8),
        ..ConfigLayer::default()
    };
    let (s, client) = server(layer, &["mallory", "trent", "ann", "bea"]).await;
    let nat = "10.0.0.1";

    // Mallory guesses from several sessions: the first pauses after its 5 (the session limit),
    // the second after 3 more, when the address reaches 8 and she is a guesser herself.
    let mallory = guess_until_refused(&s, "mallory", &[nat, nat, nat]).await;
    assert_eq!(mallory, 8);
    // Trent, fresh, gets the 3 an account may enter before the shared limits apply to it.
    let trent = guess_until_refused(&s, "trent", &[nat, nat]).await;
    assert_eq!(trent, SHARED_LIMITS_AFTER);

    // Ann, behind the same NAT, after 11 failures there: her first code is accepted at once.
    let a = s.authorize(&client, None, now()).await.unwrap();
    let (mut ann, page) = signed_in(&s, "ann", nat).await;
    assert_eq!(page.status, 200, "not paused: {}", page.body);
    let started = Instant::now();
    let consent = ann.enter_code(&page, &a.user_code).await;
    assert!(consent.says("A device asks for access"), "{}", consent.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not slowed down"
    );
    // Bea mistypes twice, then types the right code: two honest typos are not guessing.
    let b2 = s.authorize(&client, None, now()).await.unwrap();
    let (mut bea, mut page) = signed_in(&s, "bea", nat).await;
    for left in [4, 3] {
        page = bea.enter_code(&page, "ZZZZ-ZZZB").await;
        assert!(
            page.says(&format!("You have {left} more tries")),
            "{}",
            page.body
        );
    }
    let consent = bea.enter_code(&page, &b2.user_code).await;
    assert!(consent.says("A device asks for access"), "{}", consent.body);
    assert_eq!(rejected(&s, "bea").await, 2);

    // The guessers stay paused, and are told why.
    let (_, page) = signed_in(&s, "mallory", nat).await;
    assert!(is_paused(&page), "{}", page.body);
    assert!(page.says("entered from your network"), "{}", page.body);
    // From elsewhere, Mallory is held to her account's own limit (10): two more, then paused.
    let more = guess_until_refused(&s, "mallory", &["198.51.100.1"]).await;
    assert_eq!(more, 2);
    let (_, page) = signed_in(&s, "mallory", "198.51.100.2").await;
    assert!(page.says("entered with your account"), "{}", page.body);
}

#[tokio::test]
async fn a_busy_address_slows_a_guesser_down_but_not_a_bystander() {
    let layer = ConfigLayer {
        code_slowdown_per_source: Some(3),
        code_failures_per_source: Some(20),
        ..ConfigLayer::default()
    };
    let (s, client) = server(layer, &["mallory", "ann"]).await;
    let nat = "10.0.0.2";
    let (mut m, mut page) = signed_in(&s, "mallory", nat).await;
    for _ in 0..SHARED_LIMITS_AFTER {
        page = m.enter_code(&page, "ZZZZ-ZZZZ").await;
    }
    // The address has 3 failures and Mallory is a guesser: her next code waits 1 s.
    let started = Instant::now();
    page = m.enter_code(&page, "ZZZZ-ZZZZ").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(page.says("That code is not valid"));
    // Ann at the same address is not slowed.
    let a = s.authorize(&client, None, now()).await.unwrap();
    let (mut ann, page) = signed_in(&s, "ann", nat).await;
    let started = Instant::now();
    let consent = ann.enter_code(&page, &a.user_code).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(consent.says("A device asks for access"));
}

#[tokio::test]
async fn guessing_is_bounded_per_account_and_on_the_whole_server() {
    // Small numbers so the test is quick: per window, 6 per account, 8 on the server.
    const PER_ACCOUNT: usize = 6;
    const GLOBAL: usize = 8;
    let accounts = ["g1", "g2", "g3", "g4"];
    let layer = ConfigLayer {
        code_failures_per_account: Some(PER_ACCOUNT as u32),
        code_failures_global: Some(GLOBAL as u32),
        ..ConfigLayer::default()
    };
    let mut users = accounts.to_vec();
    users.push("ann");
    let (s, client) = server(layer, &users).await;
    // Every guesser uses a fresh address for each session, so no address limit ever applies:
    // only the account and server limits bound them.
    let mut total = 0;
    for (i, user) in accounts.iter().enumerate() {
        let addresses: Vec<String> = (0..4).map(|n| format!("198.51.{i}.{n}")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let n = guess_until_refused(&s, user, &addresses).await;
        assert!(n <= PER_ACCOUNT, "{user}: {n}");
        total += n;
    }
    let bound = (PER_ACCOUNT * accounts.len()).min(GLOBAL + SHARED_LIMITS_AFTER * accounts.len());
    assert!(total <= bound, "{total} guesses evaluated, bound {bound}");
    // The first guesser had the server to itself (6, its account's limit); each later one got
    // only the 3 every account has before the shared limits apply to it, the server's limit of
    // 8 being passed by then.
    assert_eq!(total, PER_ACCOUNT + SHARED_LIMITS_AFTER * 3);
    // Someone who was not guessing still gets in.
    let a = s.authorize(&client, None, now()).await.unwrap();
    let (mut ann, page) = signed_in(&s, "ann", "192.0.2.99").await;
    let consent = ann.enter_code(&page, &a.user_code).await;
    assert!(consent.says("A device asks for access"), "{}", consent.body);
    // A guesser is paused by the server's limit, and told so.
    let (_, page) = signed_in(&s, "g2", "203.0.113.50").await;
    assert!(page.says("entered on this server"), "{}", page.body);
}
