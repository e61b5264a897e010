//! The verification page attacked through the real `hallmark-server` binary over TLS, as an
//! outside review did it: hundreds of concurrent wrong passwords from one address (each an
//! Argon2id run of 19 MiB, once evaluated without limit and without a cap on memory), parallel
//! wrong user codes, a flood of anonymous page views, and a crash right after a sign-out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use hallmark_e2e::server::TestServer;
use hallmark_e2e::verification::{create_user, Browser};
use hallmark_server::store::{SessionStore as _, SledStore};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery";
/// The server's defaults: wrong codes per session, failed sign-ins per source address.
const CODE_LIMIT_PER_SESSION: usize = 5;
const SIGN_IN_LIMIT_PER_SOURCE: usize = 20;
/// What only a signed-in page has: the sign-out form.
const SIGNED_IN: &str = "action=\"/device/sign-out\"";
/// Peak resident memory allowed for the whole server process under the attack.
const MAX_PEAK_RSS_KIB: u64 = 400 * 1024;

fn count(audit: &[Value], event: &str) -> usize {
    audit.iter().filter(|e| e["event"] == event).count()
}

/// Run `each` on `n` threads released together; the statuses they report, counted.
fn all_at_once(
    n: usize,
    each: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> BTreeMap<u16, usize> {
    let each = Arc::new(each);
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (each, start) = (each.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                each(i)
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in threads {
        *statuses.entry(t.join().unwrap()).or_default() += 1;
    }
    statuses
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let (status, _, text) = server.get_full("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn concurrent_guessing_is_held_to_the_limits_and_memory_stays_bounded() {
    let server = TestServer::start();
    create_user(&server, "ann", PASSWORD);

    // 60 wrong user codes at once from one signed-in session.
    let mut ann = Browser::new(&server);
    let start = ann.get("/device");
    let entry = ann.post(
        "/device/sign-in",
        &[
            ("csrf", &start.csrf()),
            ("username", "ann"),
            ("password", PASSWORD),
        ],
    );
    assert!(entry.html.contains(SIGNED_IN), "{}", entry.html);
    let csrf = entry.csrf();
    let codes = all_at_once(60, move |i| {
        let wrong = format!("BBBB-{}", ["BBBB", "CCCC", "DDDD", "FFFF"][i % 4]);
        ann.clone()
            .post("/device", &[("csrf", &csrf), ("user_code", &wrong)])
            .status
    });
    let audit = server.audit_log();
    let evaluated = count(&audit, "device.code_rejected");
    assert!(
        (1..=CODE_LIMIT_PER_SESSION).contains(&evaluated),
        "{evaluated} wrong codes evaluated against a limit of {CODE_LIMIT_PER_SESSION}: {codes:?}"
    );

    // 200 wrong passwords at once from one address, spread over 40 anonymous visitors (the only
    // prerequisite is a cookie and CSRF token from GET /device).
    let visitors: Vec<(Browser, String)> = (0..40)
        .map(|_| {
            let mut b = Browser::new(&server);
            let csrf = b.get("/device").csrf();
            (b, csrf)
        })
        .collect();
    let visitors = Arc::new(visitors);
    let rss_before = server.proc_status_kib("VmRSS");
    let checks_before = metric(&server, "hallmark_password_checks_total");
    let v = visitors.clone();
    let sign_ins = all_at_once(200, move |i| {
        let (browser, csrf) = &v[i % v.len()];
        browser
            .clone()
            .post(
                "/device/sign-in",
                &[
                    ("csrf", csrf),
                    ("username", "ann"),
                    ("password", &format!("guess number {i}")),
                ],
            )
            .status
    });
    let peak = server.proc_status_kib("VmHWM");
    let audit = server.audit_log();
    let evaluated = count(&audit, "user.sign_in_failed");
    let checked = metric(&server, "hallmark_password_checks_total") - checks_before;
    eprintln!(
        "sign-in statuses {sign_ins:?}; {evaluated} evaluated; RSS before {} MiB, peak {} MiB",
        rss_before / 1024,
        peak / 1024
    );
    assert!(
        evaluated <= SIGN_IN_LIMIT_PER_SOURCE && checked as usize == evaluated,
        "{evaluated} wrong passwords evaluated ({checked} Argon2 runs) against a limit of \
         {SIGN_IN_LIMIT_PER_SOURCE}: {sign_ins:?}"
    );
    assert!(evaluated >= 1, "{sign_ins:?}");
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "peak RSS {} MiB (before the attack {} MiB)",
        peak / 1024,
        rss_before / 1024
    );
    // Whatever the burst left (a 503 gives its attempt back), the address gets exactly its 20
    // evaluated failures, and then even the right password is refused.
    loop {
        let mut b = Browser::new(&server);
        let start = b.get("/device");
        if start.status == 429 {
            break;
        }
        b.post(
            "/device/sign-in",
            &[
                ("csrf", &start.csrf()),
                ("username", "ann"),
                ("password", "one more guess"),
            ],
        );
    }
    let audit = server.audit_log();
    assert_eq!(
        count(&audit, "user.sign_in_failed"),
        SIGN_IN_LIMIT_PER_SOURCE
    );
    let mut late = Browser::new(&server);
    let start = late.get("/device");
    assert_eq!(start.status, 429, "{}", start.html);
    assert!(!start.html.contains("name=\"password\""));
}

#[test]
fn anonymous_visits_store_nothing_and_a_sign_out_survives_a_crash() {
    let mut server = TestServer::start();
    create_user(&server, "ann", PASSWORD);
    for _ in 0..1000 {
        let (status, headers, _) = server.get_full("/device");
        assert_eq!(status, 200);
        assert!(headers.contains_key("set-cookie"));
    }
    let mut ann = Browser::new(&server);
    let start = ann.get("/device");
    let entry = ann.post(
        "/device/sign-in",
        &[
            ("csrf", &start.csrf()),
            ("username", "ann"),
            ("password", PASSWORD),
        ],
    );
    assert!(entry.html.contains(SIGNED_IN), "{}", entry.html);
    let signed_in = ann.cookie().unwrap().to_owned();
    let out = ann.post("/device/sign-out", &[("csrf", &entry.csrf())]);
    assert!(out.html.contains("name=\"password\""), "{}", out.html);
    // Killed the moment the sign-out was answered: no graceful flush.
    server.kill();
    {
        let store = SledStore::open(&server.data_dir.join("db")).unwrap();
        assert_eq!(
            hallmark_server::store::block_on(store.web_session_count())
                .unwrap()
                .unwrap(),
            0,
            "1000 anonymous visits and a signed-out session left records behind"
        );
    }
    server.spawn();
    // The old cookie, replayed after the restart, is signed out.
    let mut replay = Browser::new(&server);
    replay.set_cookie(Some(signed_in));
    let page = replay.get("/device");
    assert!(
        page.html.contains("name=\"password\"") && !page.html.contains(SIGNED_IN),
        "the signed-out session came back: {}",
        page.html
    );
}
