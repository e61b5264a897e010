//! Signed audit checkpoints against the real server and `audit verify`: the checkpoint the
//! admin API serves and the one the server logs are JWSs by its signing key over the durable
//! head; kept, they catch what the hash chain alone cannot — the end of the chain cut off and
//! the head rewritten to match (the chain still "intact"), or the tail rewritten with fresh
//! hashes — naming the checkpoint, while an untouched chain passes every one.
//!
//! The tampering is done as an attacker would: with sled directly, on a copy of the stopped
//! server's database, using only the published hashing rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{jwt_parts, TestServer};
use hallmark_server::store::audit::{AuditEvent, Outcome};
use hallmark_server::store::AuditLog as _;
use serde_json::Value;

#[test]
fn checkpoints_catch_a_cut_and_a_rewritten_tail_and_pass_an_intact_chain() {
    // The tampering below edits sled's files; the PostgreSQL chains' verification against
    // checkpoints (named chains) is covered by the checkpoint module's tests; `audit verify` over every
    // replica's chain by tests/tests/pg_replicas.rs.
    if common::on_postgres() {
        return;
    }
    let mut server = TestServer::start_with(&["--audit-checkpoint-interval", "3600"]);
    let work = tempfile::tempdir().unwrap();
    traffic(&server, 5);

    // As served: JSON with the JWS, signed by a key of the JWKS, with its own typ.
    let served = checkpoint(&server);
    let jws = served["checkpoint"].as_str().unwrap();
    let (header, payload) = jwt_parts(jws);
    assert_eq!(header["typ"], "audit-checkpoint+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let jwks = server.jwks();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == header["kid"]));
    assert_eq!(payload["issuer"], server.issuer.as_str());
    assert_eq!(payload["seq"], served["seq"]);
    assert_eq!(payload["head_hash"], served["head_hash"]);
    assert!(payload.get("chain").is_none(), "one chain: no chain member");
    assert!(payload["seq"].as_u64().unwrap() >= 5);
    let early = write(work.path(), "early.json", &served.to_string());

    // A checkpoint is not an access token.
    assert_eq!(server.introspect(jws)["active"], false);
    // audit:read only.
    let other = server.admin_token("clients:admin");
    let mut r = server
        .http
        .get(&server.url("/admin/audit/checkpoint"))
        .header("Authorization", &format!("Bearer {other}"))
        .call()
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    traffic(&server, 5);
    let late_cp = checkpoint(&server);
    let late_seq = late_cp["seq"].as_u64().unwrap();
    let late = write(
        work.path(),
        "late.jws",
        late_cp["checkpoint"].as_str().unwrap(),
    );
    // The line the server logged at start holds a checkpoint too.
    let logged_line = server
        .log()
        .lines()
        .find(|l| l.contains("audit checkpoint"))
        .expect("a checkpoint line at start")
        .to_owned();
    let logged = write(work.path(), "logged.log", &logged_line);
    assert!(server.terminate().success());
    let data = &server.data_dir;

    let out = verify(data, &[&early, &late, &logged]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    eprintln!("intact, audit verify --checkpoint: {said}");
    assert_eq!(said.matches(" matches ").count(), 3, "{said}");
    assert!(said.contains("audit chain intact"), "{said}");

    // Cut: the last 4 entries dropped and the head rewritten. The chain alone still passes.
    let cut = copy_data_dir(data, work.path(), "cut");
    truncate(&cut, late_seq - 4);
    let alone = verify(&cut, &[]);
    assert!(
        alone.status.success(),
        "the chain alone cannot tell: {}",
        text(&alone)
    );
    assert!(text(&alone).contains(&format!("{} entries", late_seq - 4)));
    let out = verify(&cut, &[&early, &late]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    eprintln!("cut tail, audit verify --checkpoint: {said}");
    assert!(said.contains("late.jws"), "names the checkpoint: {said}");
    assert!(
        said.contains(&format!(
            "entries {}..={late_seq} were removed",
            late_seq - 3
        )),
        "{said}"
    );
    // An earlier checkpoint alone still matches the shorter chain.
    assert!(verify(&cut, &[&early]).status.success());

    // Rewritten tail: cut back 4 and 4 forged entries chained on, as long as before.
    let forged = copy_data_dir(data, work.path(), "forged");
    truncate(&forged, late_seq - 4);
    append_forged(&forged, 4);
    let alone = verify(&forged, &[]);
    assert!(alone.status.success(), "{}", text(&alone));
    assert!(text(&alone).contains(&format!("{late_seq} entries")));
    let out = verify(&forged, &[&early, &late]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    eprintln!("rewritten tail, audit verify --checkpoint: {said}");
    assert!(
        said.contains("late.jws") && said.contains("rewritten"),
        "{said}"
    );
    assert!(
        said.contains(&format!("entry {late_seq} has hash")),
        "{said}"
    );
}

/// Tokens and failed authentications: audit entries.
fn traffic(server: &TestServer, n: usize) {
    let (id, secret) = server.register_secret_client("api", "client_secret_basic");
    for _ in 0..n {
        assert_eq!(server.token_basic(&id, &secret, None).0, 200);
    }
    assert_eq!(server.token_basic(&id, "wrong", None).0, 401);
}

fn checkpoint(server: &TestServer) -> Value {
    let token = server.admin_token("audit:read");
    let mut r = server
        .http
        .get(&server.url("/admin/audit/checkpoint"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn verify(data_dir: &Path, checkpoints: &[&Path]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["audit".as_ref(), "verify".as_ref()];
    args.push("--data-dir".as_ref());
    args.push(data_dir.as_os_str());
    for c in checkpoints {
        args.push("--checkpoint".as_ref());
        args.push(c.as_os_str());
    }
    common::run_cli(&args, &[])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_data_dir(data: &Path, work: &Path, name: &str) -> PathBuf {
    let to = work.join(name);
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(data)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

/// The audit log as an attacker with the data directory can change it: through the store,
/// which writes well-formed, correctly chained files.
fn audit_store(data: &Path) -> hallmark_server::store::SledStore {
    hallmark_server::store::SledStore::open(&data.join("db")).unwrap()
}

/// Keep entries 1..=keep and drop the rest.
fn truncate(data: &Path, keep: u64) {
    let store = audit_store(data);
    store.truncate_audit_for_test(keep).unwrap();
    drop(store);
    let store = audit_store(data);
    let heads = hallmark_server::store::block_on(store.chains())
        .unwrap()
        .unwrap();
    assert_eq!(heads[0].seq, keep);
}

/// Append `n` forged entries, correctly chained.
fn append_forged(data: &Path, n: u64) {
    let store = audit_store(data);
    for _ in 0..n {
        let event = AuditEvent::new("token.issued", Outcome::Success).client("nobody");
        store.append(event, 1).unwrap();
    }
    hallmark_server::store::Durability::flush(&store).unwrap();
}
