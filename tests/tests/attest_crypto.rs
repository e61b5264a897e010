//! The cryptographic core of credential activation across the two sides: the server's software
//! TPM2_MakeCredential activates in a real swtpm (and fails there for another key, another
//! TPM or an altered challenge), matches tpm2-tools' `tpm2_makecredential --tcti none`
//! byte for byte on the same seed, and the server's public-area parser agrees with the TPM on
//! a device key's Name and point; the EK certificate swtpm's local CA issues verifies against
//! that CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;

use hallmark_agent::tpm::{KeySlot, Tpm, TpmError};
use hallmark_hwsim::Swtpm;
use hallmark_server::attest::credential::{make_credential_with_seed, IDENTITY_LABEL};
use hallmark_server::attest::{
    check_ek_certificate, make_credential, EkCertError, EkRoots, TpmPublic,
};

const SECRET: &[u8; 32] = b"a fresh 32-byte challenge secret";

/// Creates a device key in `slot`, checks what the server's parser makes of its public area
/// against what the TPM says, and returns the parsed area.
fn device_key_area(tpm: &mut Tpm, slot: KeySlot) -> TpmPublic {
    let key = tpm.create_device_key(slot).unwrap();
    let area = tpm.key_public_area(slot).unwrap();
    let parsed = TpmPublic::parse(&area).unwrap();
    // The Name the server computes is the one the TPM reports (TPM2_ReadPublic).
    assert_eq!(parsed.name().as_slice(), tpm.key_name(slot).unwrap());
    // The point is the JWK's.
    assert_eq!(parsed.x(), URL_SAFE_NO_PAD.decode(&key.jwk.x).unwrap());
    assert_eq!(parsed.y(), URL_SAFE_NO_PAD.decode(&key.jwk.y).unwrap());
    assert_eq!(
        parsed.sec1_point().as_slice(),
        key.public_key_sec1().unwrap()
    );
    let attributes = parsed.attributes();
    assert!(attributes.fixed_tpm() && attributes.fixed_parent());
    assert!(attributes.sensitive_data_origin() && attributes.sign());
    assert!(!attributes.decrypt() && !attributes.restricted());
    parsed
}

fn assert_rejected(result: Result<zeroize::Zeroizing<Vec<u8>>, TpmError>, slot: KeySlot) {
    match result {
        Err(TpmError::CredentialRejected { slot: s }) if s == slot => {}
        other => panic!("expected CredentialRejected for slot {slot}, got {other:?}"),
    }
}

#[test]
fn server_made_credential_activates_only_for_its_key_in_its_tpm() {
    let sim = Swtpm::temp_manufactured_unique().unwrap();
    let other_sim = Swtpm::temp_manufactured_unique().unwrap();
    let other_ek = {
        let mut other = Tpm::open(&other_sim.tcti()).unwrap();
        other.endorsement_key().unwrap().spki_der
    };
    let mut tpm = Tpm::open(&sim.tcti()).unwrap();
    let ek = tpm.endorsement_key().unwrap().spki_der;
    assert_ne!(ek, other_ek);
    let a = device_key_area(&mut tpm, KeySlot::A);
    let b = device_key_area(&mut tpm, KeySlot::B);

    // The right key in the right TPM recovers the secret.
    let challenge = make_credential(&ek, a.name(), SECRET).unwrap();
    let recovered = tpm
        .activate_credential(
            KeySlot::A,
            &challenge.credential_blob,
            &challenge.encrypted_secret,
        )
        .unwrap();
    assert_eq!(recovered.as_slice(), SECRET);

    // Every failure below must leave no object or session behind (swtpm has three slots of
    // each), so they run a few times over and a good activation follows them.
    for round in 0..3 {
        // The same challenge presented for another key.
        assert_rejected(
            tpm.activate_credential(
                KeySlot::B,
                &challenge.credential_blob,
                &challenge.encrypted_secret,
            ),
            KeySlot::B,
        );
        // A challenge made for key B's Name, activated with key A.
        let for_b = make_credential(&ek, b.name(), SECRET).unwrap();
        assert_rejected(
            tpm.activate_credential(KeySlot::A, &for_b.credential_blob, &for_b.encrypted_secret),
            KeySlot::A,
        );
        // Made against another TPM's EK.
        let elsewhere = make_credential(&other_ek, a.name(), SECRET).unwrap();
        assert_rejected(
            tpm.activate_credential(
                KeySlot::A,
                &elsewhere.credential_blob,
                &elsewhere.encrypted_secret,
            ),
            KeySlot::A,
        );
        // Altered blobs: the outer HMAC, the encrypted credential, its size field.
        for at in [5, challenge.credential_blob.len() - 1, 34] {
            let mut blob = challenge.credential_blob.clone();
            blob[at] ^= 0x01 << round;
            assert_rejected(
                tpm.activate_credential(KeySlot::A, &blob, &challenge.encrypted_secret),
                KeySlot::A,
            );
        }
        // An altered encrypted seed.
        let mut secret = challenge.encrypted_secret.clone();
        secret[100] ^= 0x80;
        assert_rejected(
            tpm.activate_credential(KeySlot::A, &challenge.credential_blob, &secret),
            KeySlot::A,
        );
        // Truncated and oversized input never reaches a panic.
        assert_rejected(
            tpm.activate_credential(KeySlot::A, &challenge.credential_blob[..10], &secret),
            KeySlot::A,
        );
        assert_rejected(
            tpm.activate_credential(KeySlot::A, &[0u8; 4096], &secret),
            KeySlot::A,
        );
    }
    let again = make_credential(&ek, b.name(), &[7u8; 16]).unwrap();
    let recovered = tpm
        .activate_credential(KeySlot::B, &again.credential_blob, &again.encrypted_secret)
        .unwrap();
    assert_eq!(recovered.as_slice(), &[7u8; 16]);

    // An empty slot is said to be empty.
    tpm.erase_device_key(KeySlot::B).unwrap();
    let empty = tpm
        .activate_credential(KeySlot::B, &again.credential_blob, &again.encrypted_secret)
        .unwrap_err();
    assert!(
        matches!(empty, TpmError::SlotEmpty { slot: KeySlot::B }),
        "{empty}"
    );
}

#[test]
fn activation_works_with_an_ek_recreated_from_its_template() {
    // A blank TPM has no EK at 0x81010001: the agent recreates it transiently each time.
    let sim = Swtpm::temp().unwrap();
    let mut tpm = Tpm::open(&sim.tcti()).unwrap();
    let ek = tpm.endorsement_key().unwrap().spki_der;
    let a = device_key_area(&mut tpm, KeySlot::A);
    for _ in 0..4 {
        let challenge = make_credential(&ek, a.name(), SECRET).unwrap();
        let recovered = tpm
            .activate_credential(
                KeySlot::A,
                &challenge.credential_blob,
                &challenge.encrypted_secret,
            )
            .unwrap();
        assert_eq!(recovered.as_slice(), SECRET);
        let mut blob = challenge.credential_blob.clone();
        blob[3] ^= 1;
        assert_rejected(
            tpm.activate_credential(KeySlot::A, &blob, &challenge.encrypted_secret),
            KeySlot::A,
        );
    }
    // The EK is the same key every time.
    assert_eq!(tpm.endorsement_key().unwrap().spki_der, ek);
}

/// `tpm2_makecredential --tcti none`'s output file (tpm2-tools 5.x `tpm2_makecredential.c`,
/// `write_cred_and_secret`): magic 0xBADCC0DE and version 1 (big-endian u32 each), then the
/// TPM2B_ID_OBJECT and the TPM2B_ENCRYPTED_SECRET, each a big-endian u16 size and its bytes.
fn parse_tpm2_tools_credential(out: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(out.len() > 12, "output of {} bytes", out.len());
    assert_eq!(&out[..4], &[0xBA, 0xDC, 0xC0, 0xDE], "magic");
    assert_eq!(&out[4..8], &[0, 0, 0, 1], "version");
    let mut rest = &out[8..];
    let mut sized = || {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        body
    };
    let id_object = sized();
    let secret = sized();
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    (id_object, secret)
}

/// Runs `tpm2_makecredential --tcti none` against the PEM public key in `dir`.
fn tpm2_makecredential(dir: &Path, name: &[u8], secret: &[u8]) -> Vec<u8> {
    let secret_path = dir.join("secret.bin");
    let out_path = dir.join("out.bin");
    std::fs::write(&secret_path, secret).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let output = Command::new("tpm2_makecredential")
        .args(["--tcti", "none", "-G", "rsa", "-u"])
        .arg(dir.join("ek.pem"))
        .arg("-s")
        .arg(&secret_path)
        .args(["-n", &hex::encode(name), "-o"])
        .arg(&out_path)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run tpm2_makecredential ({err}): install tpm2-tools with \
                 scripts/install-deps"
            )
        });
    assert!(
        output.status.success(),
        "tpm2_makecredential failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&out_path).unwrap()
}

#[test]
fn server_make_credential_matches_tpm2_makecredential() {
    let dir = tempfile::tempdir().unwrap();
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let public = key.to_public_key();
    let spki = public.to_public_key_der().unwrap().as_bytes().to_vec();
    std::fs::write(
        dir.path().join("ek.pem"),
        public.to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    let oaep = || Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL);

    // Two names: a synthetic one, and a real device key's from a swtpm (checked against the
    // Name the TPM itself reports).
    let mut synthetic = vec![0x00, 0x0B];
    synthetic.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    let sim = Swtpm::temp_manufactured().unwrap();
    let real = {
        let mut tpm = Tpm::open(&sim.tcti()).unwrap();
        device_key_area(&mut tpm, KeySlot::A).name().to_vec()
    };
    for (name, secret) in [
        (synthetic.as_slice(), &SECRET[..]),
        (real.as_slice(), &SECRET[..]),
        (real.as_slice(), &b"short"[..]),
    ] {
        let out = tpm2_makecredential(dir.path(), name, secret);
        let (id_object, encrypted_secret) = parse_tpm2_tools_credential(&out);
        assert_eq!(encrypted_secret.len(), 256);
        // tpm2-tools' seed, recovered with the "EK" private key.
        let seed: [u8; 32] = key
            .decrypt(oaep(), &encrypted_secret)
            .unwrap()
            .try_into()
            .unwrap();
        let ours = make_credential_with_seed(&spki, name, secret, &seed).unwrap();
        assert_eq!(
            hex::encode(&ours.credential_blob),
            hex::encode(&id_object),
            "credential blob differs from tpm2_makecredential's for name {}",
            hex::encode(name)
        );
        assert_eq!(key.decrypt(oaep(), &ours.encrypted_secret).unwrap(), seed);
    }
}

#[test]
fn swtpm_ek_certificate_chains_to_its_local_ca() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Swtpm::manufacture(dir.path()).unwrap();
    let ca = hallmark_hwsim::LocalCa::at(&dir.path().join("ca")).unwrap();
    let ek = Tpm::open(&sim.tcti()).unwrap().endorsement_key().unwrap();
    let certificate = ek
        .certificate
        .clone()
        .expect("swtpm_setup wrote an EK certificate");
    let root = std::fs::read_to_string(ca.root_certificate_pem()).unwrap();
    let issuer = std::fs::read_to_string(ca.issuer_certificate_pem()).unwrap();
    let now = SystemTime::now();

    // The bundle an operator configures: the manufacturer's root and issuing CA.
    let roots = EkRoots::from_pem(&format!("{root}{issuer}")).unwrap();
    let issuer_name = check_ek_certificate(&certificate, &ek.spki_der, Some(&roots), now).unwrap();
    assert!(!issuer_name.is_empty());
    // The issuing CA alone is trusted too; the root alone is not enough (the registration
    // carries only the EK certificate).
    let issuing_only = EkRoots::from_pem(&issuer).unwrap();
    check_ek_certificate(&certificate, &ek.spki_der, Some(&issuing_only), now).unwrap();
    let root_only = EkRoots::from_pem(&root).unwrap();
    assert_eq!(
        check_ek_certificate(&certificate, &ek.spki_der, Some(&root_only), now),
        Err(EkCertError::NotSignedByRoots)
    );
    // Another TPM's EK is not the key in this certificate.
    let other = Swtpm::temp_manufactured_unique().unwrap();
    let other_ek = Tpm::open(&other.tcti()).unwrap().endorsement_key().unwrap();
    assert_eq!(
        check_ek_certificate(&certificate, &other_ek.spki_der, Some(&roots), now),
        Err(EkCertError::KeyMismatch)
    );
}
