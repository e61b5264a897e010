//! The verification page attacked in process, through the router: concurrent wrong passwords
//! and wrong codes are held to their limits whatever the interleaving (each attempt is counted
//! before it is evaluated), password checks beyond the free slots are turned away with 503, and
//! anonymous visits store nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device_support;

use std::collections::BTreeMap;

use device_support::{Browser, InProcess};
use hallmark_server::config::ConfigLayer;

const PASSWORD: &str = "correct horse battery";

async fn count(s: &InProcess, event: &str) -> usize {
    s.audit()
        .await
        .iter()
        .filter(|e| e.body.event.event == event)
        .count()
}

/// POST `form` to `path` from `n` clones of `browser` at once; the statuses, counted.
async fn all_at_once(
    browser: &Browser,
    n: usize,
    path: &'static str,
    form: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> BTreeMap<u16, usize> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut b = browser.clone();
            let form = form(i);
            tokio::spawn(async move {
                let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                b.post(path, &pairs).await
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in tasks {
        let page = t.await.unwrap();
        if page.status == 503 {
            assert!(page.headers.contains_key("retry-after"), "{page:?}");
        }
        *statuses.entry(page.status).or_default() += 1;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_passwords_are_held_to_the_session_and_address_limits() {
    // Enough password-check slots that the slots never stand in for the limits: only the
    // reservation keeps the checks at the limit.
    let s = InProcess::start_with_slots(ConfigLayer::default(), Some(64)).await;
    s.add_user("ann", PASSWORD).await;
    // 100 at once with one visitor's cookie and CSRF token: at most 5 are checked.
    let mut one = s.browser("192.0.2.60");
    let csrf = one.get("/device").await.csrf();
    let statuses = all_at_once(&one, 100, "/device/sign-in", |i| {
        vec![
            ("csrf", csrf.clone()),
            ("username", "ann".into()),
            ("password", format!("guess {i}")),
        ]
    })
    .await;
    let evaluated_one = count(&s, "user.sign_in_failed").await;
    assert!(
        (1..=5).contains(&evaluated_one),
        "{evaluated_one} checked: {statuses:?}"
    );
    // Every answer is a redirect (post/redirect/get) or, with no free slot, 503.
    assert_eq!(
        statuses.get(&303).copied().unwrap_or(0) + statuses.get(&503).copied().unwrap_or(0),
        100,
        "{statuses:?}"
    );

    // 200 at once from 40 visitors at one address: at most 20 are checked.
    let mut visitors = Vec::new();
    for _ in 0..40 {
        let mut b = s.browser("192.0.2.61");
        let csrf = b.get("/device").await.csrf();
        visitors.push((b, csrf));
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (mut b, csrf) = visitors[i % 40].clone();
        tasks.push(tokio::spawn(async move {
            let password = format!("guess {i}");
            b.post(
                "/device/sign-in",
                &[
                    ("csrf", &csrf),
                    ("username", "ann"),
                    ("password", &password),
                ],
            )
            .await
            .status
        }));
    }
    let mut statuses = BTreeMap::<u16, usize>::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    let evaluated = count(&s, "user.sign_in_failed").await - evaluated_one;
    assert!(
        (1..=20).contains(&evaluated),
        "{evaluated} checked: {statuses:?}"
    );
    // Whatever the burst left (503s gave their slots back), the address reaches exactly 20, and
    // then even the right password is refused.
    loop {
        let before = count(&s, "user.sign_in_failed").await;
        let mut b = s.browser("192.0.2.61");
        let start = b.get("/device").await;
        if start.status == 429 {
            break;
        }
        let p = b
            .post(
                "/device/sign-in",
                &[
                    ("csrf", &start.csrf()),
                    ("username", "ann"),
                    ("password", "one more"),
                ],
            )
            .await;
        assert_eq!(p.status, 303, "{}", p.body);
        assert_eq!(count(&s, "user.sign_in_failed").await, before + 1);
    }
    assert_eq!(count(&s, "user.sign_in_failed").await - evaluated_one, 20);
    let mut late = s.browser("192.0.2.61");
    let p = late.get("/device").await;
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p.says("Signing in paused") && !p.says("name=\"password\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_checks_beyond_the_free_slots_are_turned_away() {
    let s = InProcess::start(ConfigLayer {
        sign_in_failures_per_session: Some(1000),
        sign_in_failures_per_source: Some(1000),
        ..ConfigLayer::default()
    })
    .await;
    s.add_user("ann", PASSWORD).await;
    let mut b = s.browser("192.0.2.62");
    let csrf = b.get("/device").await.csrf();
    let statuses = all_at_once(&b, 60, "/device/sign-in", |i| {
        vec![
            ("csrf", csrf.clone()),
            ("username", "ann".into()),
            ("password", format!("guess {i}")),
        ]
    })
    .await;
    let evaluated = count(&s, "user.sign_in_failed").await;
    let busy = statuses.get(&503).copied().unwrap_or(0);
    assert!(busy > 0, "60 Argon2 runs at once on {statuses:?}");
    assert_eq!(evaluated + busy, 60, "{statuses:?}");
    // A slot freed: the right password works, and the busy answers did not count as failures.
    let mut ann = s.browser("192.0.2.62");
    let p = ann.sign_in("ann", PASSWORD, "").await;
    assert!(p.says("action=\"/device/sign-out\""), "{}", p.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_codes_are_held_to_the_session_limit() {
    let s = InProcess::start(ConfigLayer::default()).await;
    s.add_user("ann", PASSWORD).await;
    let mut b = s.browser("192.0.2.63");
    let entry = b.sign_in("ann", PASSWORD, "").await;
    let csrf = entry.csrf();
    let statuses = all_at_once(&b, 60, "/device", |i| {
        vec![
            ("csrf", csrf.clone()),
            (
                "user_code",
                format!("BBBB-{}", ["BBBB", "CCCC", "DDDD"][i % 3]),
            ),
        ]
    })
    .await;
    let evaluated = count(&s, "device.code_rejected").await;
    assert!(
        (1..=5).contains(&evaluated),
        "{evaluated} wrong codes evaluated: {statuses:?}"
    );
}

#[tokio::test]
async fn anonymous_visits_store_nothing_and_their_cookie_cannot_be_forged() {
    let s = InProcess::start(ConfigLayer::default()).await;
    s.add_user("ann", PASSWORD).await;
    let sessions = || async { s.oauth.sessions.web_session_count().await.unwrap() };
    for _ in 0..300 {
        let page = s.browser("192.0.2.64").get("/device").await;
        assert_eq!(page.status, 200);
        assert!(page.headers.contains_key("set-cookie"));
    }
    assert_eq!(sessions().await, 0, "anonymous page views wrote sessions");

    // A visitor's cookie with a longer life than it was minted with is not one of ours.
    let mut mallory = s.browser("192.0.2.65");
    let csrf = mallory.get("/device").await.csrf();
    let cookie = mallory.cookie.clone().unwrap();
    let parts: Vec<&str> = cookie.split('.').collect();
    assert_eq!(parts.len(), 4, "{cookie}");
    mallory.cookie = Some(format!("{}.{}.9999999999.{}", parts[0], parts[1], parts[3]));
    let forged = mallory
        .post(
            "/device/sign-in",
            &[("csrf", &csrf), ("username", "ann"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, 403);

    // A session is written at sign-in, and gone at sign-out.
    let mut ann = s.browser("192.0.2.66");
    let entry = ann.sign_in("ann", PASSWORD, "").await;
    assert_eq!(entry.status, 200);
    assert_eq!(sessions().await, 1);
    let out = ann
        .post("/device/sign-out", &[("csrf", &entry.csrf())])
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(sessions().await, 0);
}
