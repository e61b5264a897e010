//! Unit tests of software MakeCredential: known answers computed independently, the inverse
//! operation as the TPM performs it, and refusals.

use std::sync::OnceLock;

use rsa::pkcs8::EncodePublicKey as _;
use rsa::RsaPrivateKey;
use subtle::ConstantTimeEq as _;

use super::*;

/// One RSA-2048 "EK" for the whole module (key generation is the slow part).
fn ek() -> &'static (RsaPrivateKey, Vec<u8>) {
    static EK: OnceLock<(RsaPrivateKey, Vec<u8>)> = OnceLock::new();
    EK.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        (key, spki.as_bytes().to_vec())
    })
}

fn name() -> Vec<u8> {
    let mut name = vec![0x00, 0x0B];
    name.extend(100..132u8);
    name
}

fn seed() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

const CREDENTIAL: &[u8; 32] = b"hallmark credential activation!!";

/// What TPM2_ActivateCredential does with the blob once it has the seed (Part 3 §12.5):
/// check the outer HMAC over encIdentity || name, then decrypt and unwrap the TPM2B_DIGEST.
fn activate(seed: &[u8], name: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    let (size, rest) = blob.split_at_checked(2)?;
    let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
    let (outer_hmac, enc_identity) = rest.split_at_checked(size)?;
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256).unwrap();
    let mut mac = hmac_sha256(&hmac_key).unwrap();
    mac.update(enc_identity);
    mac.update(name);
    let expected = mac.finalize().into_bytes();
    if !bool::from(expected.as_slice().ct_eq(outer_hmac)) {
        return None;
    }
    let sym_key = kdfa_sha256(seed, "STORAGE", name, &[], 128).unwrap();
    let mut plain = enc_identity.to_vec();
    cfb_mode::Decryptor::<Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .unwrap()
        .decrypt(&mut plain);
    let len = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
    (plain.len() == 2 + len).then(|| plain[2..].to_vec())
}

#[test]
fn kdfa_matches_an_independent_implementation() {
    // Expected values from Python `cryptography` 48's KBKDFHMAC (SHA-256, counter mode,
    // rlen = llen = 4, counter before the fixed data, label || 0x00 || context || [L]₃₂),
    // which is KDFa; a plain hmac/hashlib implementation of Part 1 §11.4.10.2 agrees.
    let storage = kdfa_sha256(&seed(), "STORAGE", &name(), &[], 128).unwrap();
    assert_eq!(hex::encode(&*storage), "d98939313878365f823837e2ce0286ca");
    let integrity = kdfa_sha256(&seed(), "INTEGRITY", &[], &[], 256).unwrap();
    assert_eq!(
        hex::encode(&*integrity),
        "bacf689f634ece301e1f1b15b072d9c87db6a69585db42b1a0cb8f73ebe2692e"
    );
    // Several blocks, contextU and contextV both present (they are simply concatenated).
    let long = kdfa_sha256(&[1; 16], "LONGER", b"abc", b"def", 520).unwrap();
    assert_eq!(
        hex::encode(&*long),
        "4b03069af430acdb9eec02796d1fa016a4032c367fc2b9cf925018c7b7aa0c7bbc98aff8b5e4a96282\
         54a7d901ed86e67a1f60138fa4dde6a2ed3fbd94ac8071bc"
    );
    // A label that already carries its NUL is not given a second one.
    let explicit = kdfa_sha256(&seed(), "STORAGE\0", &name(), &[], 128).unwrap();
    assert_eq!(explicit, storage);
    // Bits that are not a multiple of 8 clear the leading bits.
    let odd = kdfa_sha256(&seed(), "X", &[], &[], 12).unwrap();
    assert_eq!(odd.len(), 2);
    assert_eq!(odd[0] & 0xF0, 0);
}

#[test]
fn credential_blob_matches_an_independent_implementation() {
    // The same construction in Python `cryptography` (KBKDFHMAC, AES-CFB with a zero IV,
    // HMAC-SHA-256) for this seed, name and credential.
    let challenge = make_credential_with_seed(&ek().1, &name(), CREDENTIAL, &seed()).unwrap();
    assert_eq!(
        hex::encode(&challenge.credential_blob),
        "0020b7def0bdd41fe075d19a6b70b6383cd1a4b8174f4c0292327daf5c866220185e1b0ff0a098dccc\
         85e9297e5ddc0de637ae2e4027c01064607a6669f0d078bc9169c6"
    );
}

#[test]
fn the_ek_private_key_recovers_seed_and_credential() {
    let (private, spki) = ek();
    for credential in [&CREDENTIAL[..], &[7u8][..], &[0xEE; 20][..]] {
        let challenge = make_credential(spki, &name(), credential).unwrap();
        // Layout: TPM2B_DIGEST(outerHMAC) || encIdentity, encIdentity = 2 + credential.
        assert_eq!(&challenge.credential_blob[..2], &[0x00, 0x20]);
        assert_eq!(
            challenge.credential_blob.len(),
            2 + 32 + 2 + credential.len()
        );
        assert_eq!(challenge.encrypted_secret.len(), 256);
        let seed = private
            .decrypt(
                Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
                &challenge.encrypted_secret,
            )
            .unwrap();
        assert_eq!(seed.len(), 32);
        assert_eq!(
            activate(&seed, &name(), &challenge.credential_blob).as_deref(),
            Some(credential)
        );
        // The label is part of the secret sharing: without the NUL it does not decrypt.
        assert!(private
            .decrypt(
                Oaep::new_with_label::<Sha256, _>("IDENTITY"),
                &challenge.encrypted_secret
            )
            .is_err());
    }
}

#[test]
fn a_blob_for_another_name_or_altered_fails_the_integrity_check() {
    let challenge = make_credential_with_seed(&ek().1, &name(), CREDENTIAL, &seed()).unwrap();
    let mut other = name();
    other[33] ^= 1;
    assert!(activate(&seed(), &other, &challenge.credential_blob).is_none());
    for i in 0..challenge.credential_blob.len() {
        let mut tampered = challenge.credential_blob.clone();
        tampered[i] ^= 0x40;
        assert!(activate(&seed(), &name(), &tampered).is_none(), "byte {i}");
    }
    // A different seed gives a different blob.
    let again = make_credential_with_seed(&ek().1, &name(), CREDENTIAL, &[9; 32]).unwrap();
    assert_ne!(again.credential_blob, challenge.credential_blob);
}

#[test]
fn refuses_ek_that_is_not_rsa_2048() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let err = make_credential(&ec.public_key_der(), &name(), CREDENTIAL).unwrap_err();
    assert!(matches!(err, CredentialError::EkNotRsa { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the registered EK is not an RSA key (algorithm 1.2.840.10045.2.1); only RSA-2048 EKs \
         are supported"
    );

    let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
    let spki = small.to_public_key().to_public_key_der().unwrap();
    let err = make_credential(spki.as_bytes(), &name(), CREDENTIAL).unwrap_err();
    assert!(
        matches!(err, CredentialError::EkKeySize { bits: 1024 }),
        "{err}"
    );

    for junk in [&[][..], &[0x30, 0x03, 0x02, 0x01, 0x01][..], &ek().1[..100]] {
        let err = make_credential(junk, &name(), CREDENTIAL).unwrap_err();
        assert!(matches!(err, CredentialError::EkNotDer), "{err}");
    }
}

#[test]
fn refuses_bad_names_and_credential_sizes() {
    let spki = &ek().1;
    let mut sha1_name = vec![0x00, 0x04];
    sha1_name.extend([0; 20]);
    let mut wrong_alg = name();
    wrong_alg[1] = 0x0C;
    for bad in [
        vec![],
        name()[..33].to_vec(),
        sha1_name,
        wrong_alg,
        [name(), vec![0]].concat(),
    ] {
        let err = make_credential(spki, &bad, CREDENTIAL).unwrap_err();
        assert!(matches!(err, CredentialError::ObjectName { .. }), "{err}");
    }
    for len in [0, 33, 64] {
        let err = make_credential(spki, &name(), &vec![1; len]).unwrap_err();
        assert!(
            matches!(err, CredentialError::CredentialSize { len: l } if l == len),
            "{err}"
        );
    }
}
