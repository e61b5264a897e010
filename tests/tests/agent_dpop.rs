//! DPoP (RFC 9449) end to end with swtpm: an agent with `dpop = true` gets a token bound to its
//! TPM key (`cnf.jkt` is that key's thumbprint); a proof from its socket (`hallmark-agent
//! proof`) passes a small resource server written here (token signature by the JWKS, the
//! proof's signature by its own jwk, `cnf.jkt` = the proof key's thumbprint, `htm`, `htu`,
//! `iat`, `ath`); the same token with a proof by a software key is refused there, and the
//! server itself refuses the token presented as a bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::socket::{fetch, Answer};
use hallmark_e2e::device::Device;
use hallmark_e2e::server::TestServer;
use ring::signature::{EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const RESOURCE: &str = "https://rs.example/v1/readings";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn part(jws: &str, n: usize) -> Value {
    let text = jws.split('.').nth(n).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
}

/// RFC 7638 thumbprint of an EC P-256 JWK, computed here.
fn thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// A resource server's check of `Authorization: DPoP <token>` with `DPoP: <proof>` for
/// `method` at `url` (RFC 9449 §7.1 and §4.3), independent of the server's and agent's code.
fn resource_server_accepts(
    jwks: &Value,
    issuer: &str,
    token: &str,
    proof: &str,
    method: &str,
    url: &str,
) -> Result<(), String> {
    // The access token: EdDSA by a key of the JWKS, ours, unexpired.
    let (header, claims) = (part(token, 0), part(token, 1));
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or("unknown kid")?;
    let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(&ring::signature::ED25519, &x)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .map_err(|_| "token signature")?;
    let now = hallmark_agent::clock::unix_now();
    if claims["iss"] != issuer || claims["exp"].as_u64().unwrap_or(0) <= now {
        return Err("token iss or exp".into());
    }
    let jkt = claims["cnf"]["jkt"].as_str().ok_or("token is not bound")?;
    // The proof: dpop+jwt, ES256 by its own public jwk.
    let (ph, pc) = (part(proof, 0), part(proof, 1));
    if ph["typ"] != "dpop+jwt" || ph["alg"] != "ES256" || ph["jwk"].get("d").is_some() {
        return Err("proof header".into());
    }
    let jwk = &ph["jwk"];
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let (input, sig) = proof.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .map_err(|_| "proof signature")?;
    if pc["htm"] != method || pc["htu"] != url {
        return Err("proof htm or htu".into());
    }
    if pc["iat"].as_u64().unwrap_or(0).abs_diff(now) > 60 {
        return Err("proof iat".into());
    }
    if pc["ath"] != b64(&Sha256::digest(token.as_bytes())) {
        return Err("proof ath".into());
    }
    if thumbprint(jwk) != jkt {
        return Err("the proof key is not the key the token is bound to".into());
    }
    Ok(())
}

#[test]
fn the_agent_binds_tokens_to_its_tpm_key_and_signs_proofs_for_local_software() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    device.edit_config(|c| c.dpop = true);
    let mut run = device.spawn_run();
    let token = device.wait_for_socket_token(Duration::from_secs(60), |_| true);

    // The socket says how to send it; the token is bound to the TPM key the agent uses.
    let Answer::Token { token_type, .. } = fetch(&device.socket_path()).unwrap() else {
        panic!("no token answer")
    };
    assert_eq!(token_type, "DPoP");
    let tpm_jwk = device.status_json()["jwk"].clone();
    assert_eq!(part(&token, 1)["cnf"]["jkt"], thumbprint(&tpm_jwk));
    let introspected = server.introspect(&token);
    assert_eq!(introspected["cnf"]["jkt"], thumbprint(&tpm_jwk));
    assert_eq!(introspected["token_type"], "DPoP");

    // A proof from the socket, through the CLI, passes the resource server.
    let (proof, covered) = proof_with_token(&device);
    let proof = proof.as_str();
    assert_eq!(covered, token);
    let jwks = server.jwks();
    resource_server_accepts(&jwks, &server.issuer, &token, proof, "GET", RESOURCE)
        .expect("the agent's proof");
    assert_eq!(thumbprint(&part(proof, 0)["jwk"]), thumbprint(&tpm_jwk));
    // The check is not vacuous: the same proof for another method or URL is refused.
    assert!(
        resource_server_accepts(&jwks, &server.issuer, &token, proof, "POST", RESOURCE).is_err()
    );

    // The token replayed with a proof by a software key (everything else right) is refused.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..])});
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let claims = json!({"jti": "thief-1", "htm": "GET", "htu": RESOURCE,
        "iat": hallmark_agent::clock::unix_now(), "ath": b64(&Sha256::digest(token.as_bytes()))});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    let forged = format!("{input}.{}", b64(sig.as_ref()));
    assert_eq!(
        resource_server_accepts(&jwks, &server.issuer, &token, &forged, "GET", RESOURCE),
        Err("the proof key is not the key the token is bound to".into())
    );

    // The server, as a resource, refuses the bound token presented as a bearer token
    // (RFC 9449 §7.2): 401 invalid_token, before any scope is looked at.
    let mut r = server
        .http
        .get(&server.url("/admin/audit/chains"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    let _ = run.kill();
    let _ = run.wait();
}

/// `hallmark-agent proof --method GET --url RESOURCE` with `extra` flags: its output.
fn proof_cli(device: &Device, extra: &[&str]) -> String {
    let mut args = vec!["proof", "--method", "GET", "--url", RESOURCE];
    args.extend_from_slice(extra);
    device.agent_ok(&args)
}

/// The socket's proof and the token it covers (`hallmark-agent proof --with-token`).
fn proof_with_token(device: &Device) -> (String, String) {
    let out = proof_cli(device, &["--with-token"]);
    let mut lines = out.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}

#[test]
fn a_rekey_moves_the_binding_to_the_new_tpm_key() {
    // Tokens live 10 s, so the running agent renews every ~8 s.
    let server = TestServer::start_with(&["--access-token-ttl", "10"]);
    let mut device = Device::provision(&server);
    device.edit_config(|c| c.dpop = true);
    let mut run = device.spawn_run();
    let old_token = device.wait_for_socket_token(Duration::from_secs(60), |_| true);
    let old_jwk = device.status_json()["jwk"].clone();
    assert_eq!(part(&old_token, 1)["cnf"]["jkt"], thumbprint(&old_jwk));

    let rekeyed: Value = serde_json::from_str(&device.agent_ok(&["rekey"])).unwrap();
    assert_eq!(rekeyed["slot"], "B", "{rekeyed}");
    let new_jwk = device.status_json()["jwk"].clone();
    assert_ne!(
        thumbprint(&new_jwk),
        thumbprint(&old_jwk),
        "the key did not change"
    );

    // The running agent's next token is bound to the new key (the old one is gone from the
    // TPM, so nothing can prove possession of it any more)…
    device.wait_for_socket_token(Duration::from_secs(60), |t| {
        part(t, 1)["cnf"]["jkt"] == thumbprint(&new_jwk)
    });
    // …and so is every proof from the socket, which passes the resource server's check with
    // the token it covers.
    let (proof, covered) = proof_with_token(&device);
    assert_eq!(part(&covered, 1)["cnf"]["jkt"], thumbprint(&new_jwk));
    assert_eq!(thumbprint(&part(&proof, 0)["jwk"]), thumbprint(&new_jwk));
    let jwks = server.jwks();
    resource_server_accepts(&jwks, &server.issuer, &covered, &proof, "GET", RESOURCE)
        .expect("a proof by the new key for the new token");
    let introspected = server.introspect(&covered);
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["cnf"]["jkt"], thumbprint(&new_jwk));

    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn a_device_provisioned_with_dpop_gets_no_bearer_token_only_tokens_bound_to_its_tpm_key() {
    use hallmark_e2e::station::{device_by_serial, secret_authenticates, TestDevice, TestStation};
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-DPOP-1");
    let out = station.provision_device(&device, &["--dpop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let client_id = report["client_id"].as_str().unwrap();
    let (_, registered) = device_by_serial(&server, "HM-DPOP-1");
    assert_eq!(registered["dpop_bound_access_tokens"], true, "{registered}");
    let config = hallmark_agent::config::AgentConfig::load(&device.config_out).unwrap();
    assert!(config.dpop, "the station wrote dpop = true");

    // The factory secret has no key to prove possession of: it gets no token at all.
    let secret = device.unsealed_secret().expect("a sealed secret");
    assert!(!secret_authenticates(&server, client_id, &secret));

    // The agent moves to its TPM key, and the token it then gets is bound to that key.
    let agent = |args: &[&str]| {
        let out = hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(&device.config_out)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hallmark-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    agent(&["enroll"]);
    let status: Value = serde_json::from_str(&agent(&["status", "--json"])).unwrap();
    let token = agent(&["token"]).trim().to_owned();
    assert_eq!(part(&token, 1)["cnf"]["jkt"], thumbprint(&status["jwk"]));
    assert_eq!(server.introspect(&token)["token_type"], "DPoP");
}

#[test]
fn the_agent_answers_a_servers_nonce_and_passes_a_resource_servers_nonce_into_its_proof() {
    // Every proof must carry a nonce this server issued (RFC 9449 §8): the agent's first proof
    // cannot, so a token means it took the nonce from the `use_dpop_nonce` answer and retried.
    let server = TestServer::start_with(&["--dpop-nonce"]);
    let mut device = Device::provision(&server);
    device.edit_config(|c| c.dpop = true);
    let mut run = device.spawn_run();
    let token = device.wait_for_socket_token(Duration::from_secs(60), |_| true);
    let jwk = device.status_json()["jwk"].clone();
    assert_eq!(part(&token, 1)["cnf"]["jkt"], thumbprint(&jwk));

    // A resource server's nonce, handed to the socket, is in the proof.
    let out = proof_cli(&device, &["--nonce", "rs-nonce-1"]);
    let proof = out.lines().next().unwrap();
    assert_eq!(part(proof, 1)["nonce"], "rs-nonce-1");
    assert_eq!(thumbprint(&part(proof, 0)["jwk"]), thumbprint(&jwk));

    let _ = run.kill();
    let _ = run.wait();
}
