//! The audit trail the real server writes, read in-process from its store once it has stopped:
//! issuance, failed authentication, revocation and registration are recorded, durable before the
//! response that reports them, hash-chained, and free of secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{jwt_parts, TestServer};
use hallmark_server::store::audit::{AuditEntry, Outcome};

fn find<'a>(entries: &'a [AuditEntry], event: &str, client: &str) -> Vec<&'a AuditEntry> {
    entries
        .iter()
        .filter(|e| e.body.event.event == event && e.body.event.client.as_deref() == Some(client))
        .collect()
}

#[test]
fn issuance_failures_revocation_and_registration_are_audited_without_secrets() {
    let mut server = TestServer::start();
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_basic");
    let (_, _, body) = server.token_basic(&id, &secret, None);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let jti = jwt_parts(&token).1["jti"].as_str().unwrap().to_owned();
    let wrong = "a-wrong-secret-that-must-not-be-recorded";
    assert_eq!(server.token_basic(&id, wrong, None).0, 401);
    assert_eq!(server.token_basic("ghost-client", wrong, None).0, 401);
    assert_eq!(
        server
            .post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", &token)])
            .0,
        200
    );
    let admin_id = server.admin_id.clone();
    let admin_secret = server.admin_secret.clone();

    let entries = server.audit_entries();

    let registered = find(&entries, "client.registered", &id);
    assert_eq!(registered.len(), 1, "{entries:#?}");
    assert_eq!(
        registered[0].body.event.actor.as_deref(),
        Some(admin_id.as_str())
    );
    assert_eq!(registered[0].body.event.outcome, Outcome::Success);

    let issued = find(&entries, "token.issued", &id);
    assert_eq!(issued.len(), 1, "{entries:#?}");
    let reason = issued[0].body.event.reason.as_deref().unwrap();
    assert!(
        reason.contains(&jti) && reason.contains("telemetry"),
        "{reason}"
    );
    // Every admin token the fixture fetched is audited too.
    assert!(!find(&entries, "token.issued", &admin_id).is_empty());

    let failed = find(&entries, "client.auth_failed", &id);
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert_eq!(failed[0].body.event.outcome, Outcome::Failure);
    assert!(failed[0]
        .body
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains("secret"));
    // A name that is no client is kept only as its fingerprint (it may be a mistyped secret).
    assert_eq!(
        find(
            &entries,
            "client.auth_failed",
            &hallmark_server::untrusted::fingerprint("ghost-client")
        )
        .len(),
        1
    );
    assert!(find(&entries, "client.auth_failed", "ghost-client").is_empty());

    let revoked = find(&entries, "token.revoked", &id);
    assert_eq!(revoked.len(), 1, "{entries:#?}");
    assert_eq!(revoked[0].body.event.actor.as_deref(), Some(id.as_str()));
    assert!(revoked[0]
        .body
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains(&jti));

    // Order and context: issued before revoked, every entry from a request on loopback.
    assert!(issued[0].body.seq < revoked[0].body.seq);
    for e in &entries {
        assert!(e.body.event.request_id.is_some(), "{e:?}");
        assert_eq!(e.body.event.source.as_deref(), Some("127.0.0.1"), "{e:?}");
    }
    let seqs: Vec<u64> = entries.iter().map(|e| e.body.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>());

    let text = serde_json::to_string(&entries).unwrap();
    for needle in [secret.as_str(), admin_secret.as_str(), wrong, &token] {
        assert!(!text.contains(needle), "the audit log holds {needle}");
    }
}

#[test]
fn an_acknowledged_action_is_in_the_audit_log_even_after_kill_9() {
    let mut server = TestServer::start();
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_basic");
    assert_eq!(server.token_basic(&id, &secret, None).0, 200);
    assert_eq!(server.token_basic(&id, "wrong", None).0, 401);
    // No graceful shutdown: whatever the responses reported must already be on disk.
    server.kill();
    let entries = server.audit_entries();
    assert_eq!(find(&entries, "client.registered", &id).len(), 1);
    assert_eq!(find(&entries, "token.issued", &id).len(), 1);
    assert_eq!(find(&entries, "client.auth_failed", &id).len(), 1);
}
