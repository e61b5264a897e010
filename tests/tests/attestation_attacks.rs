//! Issue 11's attacks on a device's identity, performed with tpm2-tools against the real
//! server and a real (simulated) TPM: each tries to move the identity out of the TPM the
//! factory registered, and each must be refused — by cryptography, not by trust — and audited.
//! Also the EK checks at registration, and the re-attestation of devices registered before
//! attestation existed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::tpm::{KeySlot, Tpm};
use hallmark_e2e::device::{Device, DeviceOptions};
use hallmark_e2e::server::{basic_header, clean_command, TestServer, JWT_BEARER};
use hallmark_hwsim::{LocalCa, Swtpm};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// A tpm2-tools command against `tcti`; transient objects are flushed after it, since swtpm has
/// no resource manager and only three object slots.
fn tpm2(tcti: &str, tool: &str, args: &[&str], dir: &Path) -> Output {
    let out = clean_command(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .env("TSS2_LOG", "all+none")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (run scripts/install-deps for tpm2-tools)"));
    let _ = clean_command("tpm2_flushcontext")
        .arg("-t")
        .env("TPM2TOOLS_TCTI", tcti)
        .env("TSS2_LOG", "all+none")
        .output();
    out
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A P-256 key in software: what an attacker would like to be the device.
struct SoftKey(EcdsaKeyPair);

impl SoftKey {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        SoftKey(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    fn point(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    fn jwk(&self) -> Value {
        jwk_of(self.point())
    }

    /// A TPM2B_PUBLIC claiming this key is a non-exportable TPM signing key (TPM 2.0 Part 2
    /// §12.2.4): what a forger sends so that the server issues a challenge at all.
    fn forged_public(&self) -> Vec<u8> {
        let p = self.point();
        let mut area = Vec::new();
        area.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
        area.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
                                                          // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign
        area.extend_from_slice(&0x0004_0472u32.to_be_bytes());
        area.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
        area.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
        area.extend_from_slice(&0x0018u16.to_be_bytes()); // scheme: ECDSA
        area.extend_from_slice(&0x000Bu16.to_be_bytes()); //   with SHA-256
        area.extend_from_slice(&0x0003u16.to_be_bytes()); // curve: NIST P-256
        area.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf: NULL
        for coordinate in [&p[1..33], &p[33..65]] {
            area.extend_from_slice(&32u16.to_be_bytes());
            area.extend_from_slice(coordinate);
        }
        let mut public = (area.len() as u16).to_be_bytes().to_vec();
        public.extend_from_slice(&area);
        public
    }
}

fn jwk_of(point: &[u8]) -> Value {
    json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
           "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
}

/// `POST /oauth2/device-credentials` with `body` (JSON) and optional Basic credentials.
fn present(server: &TestServer, basic: Option<(&str, &str)>, body: &Value) -> (u16, Value) {
    server.post_raw(
        "/oauth2/device-credentials",
        "application/json",
        basic.map(|(id, s)| basic_header(id, s)).as_deref(),
        body.to_string().as_bytes(),
    )
}

fn description(body: &Value) -> String {
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Audited refusals of this device's keys.
fn refusals(server: &TestServer, client_id: &str) -> Vec<String> {
    server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "device.attestation_refused" && e["client"] == client_id)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn device_view(server: &TestServer, client_id: &str) -> Value {
    let token = server.admin_token("devices:admin");
    let mut r = server
        .http
        .get(&server.url(&format!("/admin/devices/{client_id}")))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// A challenge's parts, and the file tpm2_activatecredential reads (tpm2-tools' format: magic
/// 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET).
fn challenge_file(body: &Value, path: &Path) {
    let part = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(body[name].as_str().unwrap())
            .unwrap()
    };
    let mut file = vec![0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];
    for p in [part("credential_blob"), part("encrypted_secret")] {
        file.extend_from_slice(&(p.len() as u16).to_be_bytes());
        file.extend_from_slice(&p);
    }
    std::fs::write(path, file).unwrap();
}

#[test]
fn a_factory_secret_unsealed_from_the_tpm_cannot_enrol_a_software_key() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let work = tempfile::tempdir().unwrap();
    let tcti = device.tpm.tcti();
    // The attack: anyone who reaches the TPM reads the factory secret (empty auth, no policy).
    let raw = ok(
        tpm2(&tcti, "tpm2_unseal", &["-c", "0x81000010"], work.path()),
        "tpm2_unseal",
    );
    let secret = URL_SAFE_NO_PAD.encode(raw);
    assert_eq!(
        secret, device.factory_secret,
        "the unsealed secret is the device's"
    );
    let basic = Some((device.client_id.as_str(), secret.as_str()));
    let soft = SoftKey::new();

    // A software key on its own is not even challenged.
    let (status, body) = present(&server, basic, &json!({"jwk": soft.jwk()}));
    assert_eq!(status, 400, "{body}");
    assert!(
        description(&body).contains("tpm_public is required"),
        "{body}"
    );

    // With a forged public area it is challenged, but nothing can answer the challenge.
    let (status, challenge) = present(
        &server,
        basic,
        &json!({"jwk": soft.jwk(), "tpm_public": URL_SAFE_NO_PAD.encode(soft.forged_public())}),
    );
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["status"], "challenge");
    // Loading the forged area into the device's TPM without a private part does not help: the
    // TPM will not authorise a public-only object (TPM_RC_AUTH_UNAVAILABLE).
    std::fs::write(work.path().join("forged.pub"), soft.forged_public()).unwrap();
    challenge_file(&challenge, &work.path().join("cred.in"));
    let load = tpm2(
        &tcti,
        "tpm2_loadexternal",
        &["-C", "n", "-u", "forged.pub", "-c", "forged.ctx"],
        work.path(),
    );
    ok(load, "tpm2_loadexternal of the public area");
    let script = "tpm2_loadexternal -C n -u forged.pub -c forged.ctx >/dev/null && \
         tpm2_startauthsession --policy-session -S s.ctx && \
         tpm2_policysecret -S s.ctx -c e >/dev/null && \
         tpm2_activatecredential -c 0x80000000 -C 0x81010001 -i cred.in -o out.bin -P session:s.ctx; \
         rc=$?; tpm2_flushcontext -t; tpm2_flushcontext -s; exit $rc";
    let activation = clean_command("sh")
        .args(["-c", script])
        .env("TPM2TOOLS_TCTI", &tcti)
        .env("TSS2_LOG", "all+none")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        !activation.status.success() && !work.path().join("out.bin").exists(),
        "a public-only object answered the challenge: {}",
        String::from_utf8_lossy(&activation.stdout)
    );
    // A guess is refused, and closes the challenge.
    let guess = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let (status, body) = present(
        &server,
        basic,
        &json!({"jwk": soft.jwk(), "activated_secret": guess}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(description(&body).contains("not in the TPM"), "{body}");
    let (status, body) = present(
        &server,
        basic,
        &json!({"jwk": soft.jwk(), "activated_secret": guess}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(description(&body).contains("no open challenge"), "{body}");

    let refused = refusals(&server, &device.client_id);
    assert_eq!(refused.len(), 3, "{refused:?}");
    // The device itself is unharmed: its first boot rotates to an attested TPM key.
    device.agent_ok(&["enroll"]);
    let view = device_view(&server, &device.client_id);
    assert_eq!(view["credential"], "key", "{view}");
    assert_eq!(view["attestation"]["key"], "attested", "{view}");
    assert_eq!(device.status_json()["key_attestation"], "attested");
    // And the attacker's secret is worthless now.
    let (status, _) = present(&server, basic, &json!({"jwk": soft.jwk()}));
    assert_eq!(status, 401);
}

/// A JWS signed by the device key at `handle` with `tpm2_sign` (DER converted to r||s).
fn tpm_signed_assertion(
    tcti: &str,
    handle: &str,
    server: &TestServer,
    client_id: &str,
    dir: &Path,
) -> String {
    let now = hallmark_e2e::server::now();
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
    let claims = json!({"iss": client_id, "sub": client_id, "aud": server.url("/oauth2/token"),
        "iat": now, "exp": now + 60, "jti": hallmark_e2e::server::random_jti()});
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    std::fs::write(dir.join("input"), &input).unwrap();
    ok(
        tpm2(
            tcti,
            "tpm2_sign",
            &[
                "-c", handle, "-g", "sha256", "-s", "ecdsa", "-f", "plain", "-o", "sig.der",
                "input",
            ],
            dir,
        ),
        "tpm2_sign",
    );
    let der = std::fs::read(dir.join("sig.der")).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(der_to_raw(&der)))
}

/// An ECDSA-Sig-Value (RFC 3279 §2.2.3) as the 64-byte r||s of JWS (RFC 7518 §3.4).
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02);
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

#[test]
fn a_signature_by_the_current_key_cannot_rekey_to_a_software_key() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    device.agent_ok(&["enroll"]);
    let slot = device.status_json()["slot"].as_str().unwrap().to_owned();
    let handle = if slot == "A" {
        "0x81000011"
    } else {
        "0x81000012"
    };
    let work = tempfile::tempdir().unwrap();
    let tcti = device.tpm.tcti();
    let soft = SoftKey::new();
    let with = |extra: Value| {
        let assertion =
            tpm_signed_assertion(&tcti, handle, &server, &device.client_id, work.path());
        let mut body = json!({"jwk": soft.jwk(), "client_id": device.client_id,
            "client_assertion_type": JWT_BEARER, "client_assertion": assertion});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        present(&server, None, &body)
    };
    // Authenticated by one TPM signature, a software key is still no TPM key.
    let (status, body) = with(json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(
        description(&body).contains("tpm_public is required"),
        "{body}"
    );
    let (status, body) = with(json!({"tpm_public": URL_SAFE_NO_PAD.encode(soft.forged_public())}));
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("challenge")),
        "{body}"
    );
    let (status, body) = with(json!({"activated_secret": URL_SAFE_NO_PAD.encode([1u8; 32])}));
    assert_eq!(status, 400, "{body}");
    assert!(description(&body).contains("not in the TPM"), "{body}");
    assert_eq!(refusals(&server, &device.client_id).len(), 2);
    // The device's own key is still its only credential.
    let view = device_view(&server, &device.client_id);
    assert!(view.get("pending_kid").is_none(), "{view}");
    device.agent_ok(&["token"]);
}

#[test]
fn a_key_made_in_another_tpm_cannot_stand_for_the_device() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let other = Swtpm::temp_manufactured_unique().unwrap();
    let mut other_tpm = Tpm::open(&other.tcti()).unwrap();
    let key = other_tpm.create_device_key(KeySlot::A).unwrap();
    let public = other_tpm.key_public_area(KeySlot::A).unwrap();
    let basic = Some((device.client_id.as_str(), device.factory_secret.as_str()));
    let (status, challenge) = present(
        &server,
        basic,
        &json!({"jwk": key.jwk_json(), "tpm_public": URL_SAFE_NO_PAD.encode(&public)}),
    );
    assert_eq!(
        (status, challenge["status"].as_str()),
        (200, Some("challenge")),
        "{challenge}"
    );
    // The other TPM holds the key but not the device's EK: it cannot recover the secret.
    let blob = URL_SAFE_NO_PAD
        .decode(challenge["credential_blob"].as_str().unwrap())
        .unwrap();
    let secret = URL_SAFE_NO_PAD
        .decode(challenge["encrypted_secret"].as_str().unwrap())
        .unwrap();
    let activated = other_tpm.activate_credential(KeySlot::A, &blob, &secret);
    assert!(
        matches!(
            activated,
            Err(hallmark_agent::tpm::TpmError::CredentialRejected { .. })
        ),
        "{activated:?}"
    );
    let (status, body) = present(
        &server,
        basic,
        &json!({"jwk": key.jwk_json(), "activated_secret": URL_SAFE_NO_PAD.encode([0u8; 32])}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(refusals(&server, &device.client_id).len(), 1);
}

#[test]
fn a_duplicable_key_in_the_right_tpm_is_refused() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let work = tempfile::tempdir().unwrap();
    // fixedTPM and fixedParent clear: the key could be duplicated out of the TPM.
    ok(
        tpm2(
            &device.tpm.tcti(),
            "tpm2_create",
            &[
                "-C",
                "0x81000001",
                "-G",
                "ecc256:ecdsa-sha256",
                "-a",
                "sensitivedataorigin|userwithauth|sign|noda",
                "-u",
                "dup.pub",
                "-r",
                "dup.priv",
            ],
            work.path(),
        ),
        "tpm2_create",
    );
    let public = std::fs::read(work.path().join("dup.pub")).unwrap();
    // The point is the last two TPM2B_ECC_PARAMETERs of the area.
    let n = public.len();
    let mut point = vec![4u8];
    point.extend_from_slice(&public[n - 66..n - 34]);
    point.extend_from_slice(&public[n - 32..]);
    let basic = Some((device.client_id.as_str(), device.factory_secret.as_str()));
    let (status, body) = present(
        &server,
        basic,
        &json!({"jwk": jwk_of(&point), "tpm_public": URL_SAFE_NO_PAD.encode(&public)}),
    );
    assert_eq!(status, 400, "{body}");
    let why = description(&body);
    assert!(
        why.contains("fixedTPM") && why.contains("fixedParent"),
        "{why}"
    );
    assert_eq!(refusals(&server, &device.client_id).len(), 1);
}

#[test]
fn a_public_area_that_is_not_the_jwk_is_refused() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let mut tpm = Tpm::open(&device.tpm.tcti()).unwrap();
    tpm.create_device_key(KeySlot::B).unwrap();
    let public = tpm.key_public_area(KeySlot::B).unwrap();
    drop(tpm);
    let basic = Some((device.client_id.as_str(), device.factory_secret.as_str()));
    let (status, body) = present(
        &server,
        basic,
        &json!({"jwk": SoftKey::new().jwk(), "tpm_public": URL_SAFE_NO_PAD.encode(&public)}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        description(&body).contains("does not describe the key in jwk"),
        "{body}"
    );
    assert_eq!(refusals(&server, &device.client_id).len(), 1);
}

/// `POST /admin/devices` as a station; (status, body).
fn register(server: &TestServer, body: Value) -> (u16, Value) {
    let token = server.admin_token("devices:provision");
    server.post_raw(
        "/admin/devices",
        "application/json",
        Some(&format!("Bearer {token}")),
        body.to_string().as_bytes(),
    )
}

fn registration(serial: &str, ek: &hallmark_agent::tpm::EndorsementKey) -> Value {
    json!({"serial": serial, "model": "gw", "ek_fingerprint": ek.fingerprint(),
           "ek_public": URL_SAFE_NO_PAD.encode(&ek.spki_der),
           "ek_certificate": URL_SAFE_NO_PAD.encode(ek.certificate.as_ref().unwrap())})
}

#[test]
fn ek_certificates_must_chain_to_ek_roots_and_certify_the_registered_key() {
    let tpm = Swtpm::temp_manufactured_unique().unwrap();
    let ek = Tpm::open(&tpm.tcti()).unwrap().endorsement_key().unwrap();
    let roots_dir = tempfile::tempdir().unwrap();
    let roots = roots_dir.path().join("ek-roots.pem");
    std::fs::write(&roots, LocalCa::shared().unwrap().ek_roots_pem().unwrap()).unwrap();
    let server = TestServer::start_with(&["--ek-roots", roots.to_str().unwrap()]);

    let (status, body) = register(&server, registration("CERT-OK", &ek));
    assert_eq!(status, 201, "{body}");
    let view = device_view(&server, body["client_id"].as_str().unwrap());
    assert_eq!(view["attestation"]["ek_certificate"], "verified", "{view}");
    assert!(
        view["attestation"]["ek_issuer"]
            .as_str()
            .unwrap()
            .contains("CN="),
        "{view}"
    );

    // Another CA (swtpm's local CAs all call themselves the same: it is the signature that
    // tells them apart).
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign_ca = LocalCa::at(&elsewhere.path().join("ca")).unwrap();
    let foreign = Swtpm::manufacture_with(&elsewhere.path().join("tpm"), &foreign_ca).unwrap();
    let foreign_ek = Tpm::open(&foreign.tcti())
        .unwrap()
        .endorsement_key()
        .unwrap();
    let (status, body) = register(&server, registration("CERT-FOREIGN", &foreign_ek));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_ek_certificate")),
        "{body}"
    );
    let why = description(&body);
    assert!(
        why.contains("not signed by any configured ek_roots CA")
            || why.contains("signature does not verify with the ek_roots CA"),
        "{body}"
    );

    // A genuine certificate, but for another TPM's key.
    let other = Swtpm::temp_manufactured_unique().unwrap();
    let other_ek = Tpm::open(&other.tcti()).unwrap().endorsement_key().unwrap();
    let mut mixed = registration("CERT-MIXED", &other_ek);
    mixed["ek_certificate"] = URL_SAFE_NO_PAD
        .encode(ek.certificate.as_ref().unwrap())
        .into();
    let (status, body) = register(&server, mixed);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_ek_certificate")),
        "{body}"
    );
    assert!(
        description(&body).contains("key is not ek_public"),
        "{body}"
    );

    // A fingerprint that is not the presented key's.
    let mut wrong = registration("CERT-FP", &other_ek);
    wrong["ek_fingerprint"] = ek.fingerprint().into();
    let (status, body) = register(&server, wrong);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        description(&body).contains("ek_fingerprint is not the SHA-256"),
        "{body}"
    );

    // With ek_roots set, a registration without a certificate is refused.
    let mut bare = registration("CERT-NONE", &other_ek);
    bare.as_object_mut().unwrap().remove("ek_certificate");
    let (status, body) = register(&server, bare);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_ek_certificate")),
        "{body}"
    );
    let failures = server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "device.registered" && e["outcome"] == "failure")
        .count();
    assert_eq!(failures, 4);
}

#[test]
fn a_device_registered_before_attestation_is_listed_and_reattested_by_the_provisioner() {
    let server = TestServer::start();
    let device = Device::provision_with(
        &server,
        DeviceOptions {
            register_ek: false,
            ..DeviceOptions::default()
        },
    );
    let token = server.admin_token("devices:admin");
    let unattested = |server: &TestServer| -> Vec<String> {
        let mut r = server
            .http
            .get(&server.url("/admin/devices?attested=false"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(unattested(&server), vec![device.client_id.clone()]);
    // Without its EK on record, the server cannot attest a key: rotation waits.
    let out = device.run_agent(&["enroll"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-attest it with the provisioner"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The station reruns the provisioner on the device: it supplies the EK.
    let station = hallmark_e2e::station::TestStation::register(&server, "devices:provision");
    let out = station
        .command()
        .args([
            "device",
            "--serial",
            &device.serial,
            "--model",
            "test-gateway",
            "--tcti",
        ])
        .arg(device.tpm.tcti())
        .arg("--config-out")
        .arg(&device.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["outcome"], "reattested", "{line}");
    assert!(unattested(&server).is_empty());
    device.agent_ok(&["enroll"]);
    assert_eq!(
        device_view(&server, &device.client_id)["attestation"]["key"],
        "attested"
    );
}
