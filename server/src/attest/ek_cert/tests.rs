//! Unit tests of EK certificate checks, over certificates made with rcgen: a root, an
//! intermediate and an EK certificate shaped as the TCG EK Credential Profile says (empty
//! subject, critical subjectAltName directoryName, RSA-2048 key).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rand::rngs::OsRng;
use rcgen::{
    BasicConstraints as RcBasic, CertificateParams, CustomExtension, DistinguishedName, DnType,
    IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rsa::RsaPrivateKey;
use time::OffsetDateTime;
use x509_cert::der::asn1::BitString;
use x509_cert::der::Encode as _;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::Name;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::*;

/// An RSA public key for rcgen to certify without holding its private key, as a TPM
/// manufacturer certifies an EK.
struct RsaPublic {
    pkcs1: Vec<u8>,
    spki: Vec<u8>,
}

impl PublicKeyData for RsaPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs1
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

fn rsa_key(which: usize) -> &'static RsaPrivateKey {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..3)
            .map(|_| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
            .collect()
    })[which]
}

fn ek_public(which: usize) -> RsaPublic {
    let public = rsa_key(which).to_public_key();
    RsaPublic {
        pkcs1: public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        spki: public.to_public_key_der().unwrap().as_bytes().to_vec(),
    }
}

/// A key pair for a CA: P-256, P-384, or RSA-2048 (rcgen signs with ring, which cannot
/// generate RSA keys, so the RSA one comes from the `rsa` crate).
fn ca_key(kind: &str) -> KeyPair {
    match kind {
        "p256" => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        "p384" => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        "rsa" => {
            let pkcs8 = rsa_key(2).to_pkcs8_der().unwrap();
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_bytes().into(), &rcgen::PKCS_RSA_SHA256)
                .unwrap()
        }
        other => panic!("no key kind {other}"),
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Hallmark Test TPM Maker");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(RcBasic::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - days(10);
    params.not_after = OffsetDateTime::now_utc() + days(3650);
    params
}

fn root(name: &str, kind: &str) -> Ca {
    let key = ca_key(kind);
    let cert = ca_params(name).self_signed(&key).unwrap();
    Ca { cert, key }
}

fn intermediate(name: &str, parent: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = ca_key("p256");
    let mut params = ca_params(name);
    edit(&mut params);
    let cert = params.signed_by(&key, &parent.cert, &parent.key).unwrap();
    Ca { cert, key }
}

/// The TCG profile's subjectAltName: a directoryName, critical (the subject is empty).
fn tcg_san() -> CustomExtension {
    let name = Name::from_str("CN=id:53574D20+CN=swtpm+CN=id:20191023").unwrap();
    let san = SubjectAltName(vec![GeneralName::DirectoryName(name)]);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 17], san.to_der().unwrap());
    ext.set_criticality(true);
    ext
}

fn ek_cert_with(
    issuer: &Ca,
    key: &RsaPublic,
    edit: impl FnOnce(&mut CertificateParams),
) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    params.custom_extensions = vec![tcg_san()];
    params.not_before = OffsetDateTime::now_utc() - days(1);
    params.not_after = OffsetDateTime::now_utc() + days(20 * 365);
    edit(&mut params);
    params
        .signed_by(key, &issuer.cert, &issuer.key)
        .unwrap()
        .der()
        .to_vec()
}

fn ek_cert(issuer: &Ca, key: &RsaPublic) -> Vec<u8> {
    ek_cert_with(issuer, key, |_| {})
}

fn roots(cas: &[&Ca]) -> EkRoots {
    let pem: String = cas.iter().map(|ca| ca.pem()).collect();
    EkRoots::from_pem(&pem).unwrap()
}

fn verify(cert: &[u8], roots: &EkRoots) -> Result<(), EkCertError> {
    roots.verify(&EkCertificate::from_der(cert).unwrap(), SystemTime::now())
}

use std::str::FromStr as _;

#[test]
fn accepts_an_ek_certificate_through_an_intermediate() {
    let root = root("Test EK Root CA", "p256");
    let issuer = intermediate("Test EK Issuing CA", &root, |_| {});
    let key = ek_public(0);
    let cert = ek_cert(&issuer, &key);

    let issuer_name = check_ek_certificate(
        &cert,
        &key.spki,
        Some(&roots(&[&root, &issuer])),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        issuer_name,
        "CN=Test EK Issuing CA,O=Hallmark Test TPM Maker"
    );
    // The bundle's order does not matter.
    verify(&cert, &roots(&[&issuer, &root])).unwrap();
    // Every bundle certificate is trusted: the intermediate alone suffices…
    verify(&cert, &roots(&[&issuer])).unwrap();
    // …but the root alone does not, as the registration carries only the EK certificate.
    assert_eq!(
        verify(&cert, &roots(&[&root])),
        Err(EkCertError::NotSignedByRoots)
    );
    // Without roots only the key is checked.
    assert_eq!(
        check_ek_certificate(&cert, &key.spki, None, SystemTime::now()).unwrap(),
        issuer_name
    );
}

#[test]
fn accepts_rsa_and_p384_issuers() {
    let key = ek_public(0);
    for kind in ["rsa", "p384"] {
        let ca = root(&format!("Test {kind} EK CA"), kind);
        let cert = ek_cert(&ca, &key);
        verify(&cert, &roots(&[&ca])).unwrap();
    }
    // An RSA root over an ECDSA intermediate.
    let rsa_root = root("Test RSA Root", "rsa");
    let issuer = intermediate("Test Issuing CA under RSA", &rsa_root, |_| {});
    verify(&ek_cert(&issuer, &key), &roots(&[&rsa_root, &issuer])).unwrap();
}

#[test]
fn refuses_a_certificate_from_another_ca() {
    let ca = root("Test EK CA", "p256");
    let key = ek_public(0);
    let cert = ek_cert(&ca, &key);
    // Another CA with another name.
    let other = root("Someone Else's CA", "p256");
    let err = verify(&cert, &roots(&[&other])).unwrap_err();
    assert_eq!(err, EkCertError::NotSignedByRoots);
    assert_eq!(
        err.to_string(),
        "EK certificate is not signed by any configured ek_roots CA"
    );
    // A CA with the same name but another key: the signature does not verify.
    let impostor = root("Test EK CA", "p256");
    let err = verify(&cert, &roots(&[&impostor])).unwrap_err();
    assert!(matches!(err, EkCertError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("CN=Test EK CA"), "{err}");
    // With both in the bundle, the right one is found.
    verify(&cert, &roots(&[&impostor, &ca])).unwrap();
    // A certificate altered after signing.
    let mut altered = cert.clone();
    let at = altered.len() / 2;
    altered[at] ^= 1;
    if let Ok(parsed) = EkCertificate::from_der(&altered) {
        assert!(roots(&[&ca]).verify(&parsed, SystemTime::now()).is_err());
    }
}

#[test]
fn refuses_a_certificate_whose_key_is_not_ek_public() {
    let ca = root("Test EK CA", "p256");
    let cert = EkCertificate::from_der(&ek_cert(&ca, &ek_public(0))).unwrap();
    let err = cert.check_key(&ek_public(1).spki).unwrap_err();
    assert_eq!(err, EkCertError::KeyMismatch);
    assert_eq!(err.to_string(), "EK certificate's key is not ek_public");
    // An EC key is not the RSA key either.
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert_eq!(
        cert.check_key(&ec.public_key_der()),
        Err(EkCertError::KeyMismatch)
    );
    // The same key encoded without the (mandatory) NULL parameters is still the same key.
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: None,
        },
        subject_public_key: BitString::from_bytes(&ek_public(0).pkcs1).unwrap(),
    };
    cert.check_key(&spki.to_der().unwrap()).unwrap();
    assert_eq!(cert.check_key(b"not der"), Err(EkCertError::EkPublicNotDer));
}

#[test]
fn checks_validity_of_every_certificate_on_the_path() {
    let key = ek_public(0);
    let root_ca = root("Test EK Root CA", "p256");
    let issuer = intermediate("Test EK Issuing CA", &root_ca, |_| {});

    let expired = ek_cert_with(&issuer, &key, |p| {
        p.not_before = OffsetDateTime::now_utc() - days(400);
        p.not_after = OffsetDateTime::now_utc() - days(1);
    });
    let err = verify(&expired, &roots(&[&root_ca, &issuer])).unwrap_err();
    assert_eq!(err, EkCertError::Expired);
    assert_eq!(err.to_string(), "EK certificate expired");

    let future = ek_cert_with(&issuer, &key, |p| {
        p.not_before = OffsetDateTime::now_utc() + days(1);
    });
    assert_eq!(
        verify(&future, &roots(&[&issuer])),
        Err(EkCertError::NotYetValid)
    );

    // The same certificate checked at another time.
    let cert = EkCertificate::from_der(&ek_cert(&issuer, &key)).unwrap();
    let later = SystemTime::now() + Duration::from_secs(30 * 365 * 86400);
    assert_eq!(
        roots(&[&issuer]).verify(&cert, later),
        Err(EkCertError::Expired)
    );

    // An expired intermediate.
    let old_issuer = intermediate("Old Issuing CA", &root_ca, |p| {
        p.not_before = OffsetDateTime::now_utc() - days(400);
        p.not_after = OffsetDateTime::now_utc() - days(1);
    });
    let cert = ek_cert(&old_issuer, &key);
    let err = verify(&cert, &roots(&[&root_ca, &old_issuer])).unwrap_err();
    assert!(matches!(err, EkCertError::IssuerNotValid { .. }), "{err}");

    // An expired root above a valid intermediate: the path is checked as far as the bundle
    // goes.
    let mut old_root_params = ca_params("Old Root CA");
    old_root_params.not_before = OffsetDateTime::now_utc() - days(400);
    old_root_params.not_after = OffsetDateTime::now_utc() - days(1);
    let old_root_key = ca_key("p256");
    let old_root = Ca {
        cert: old_root_params.self_signed(&old_root_key).unwrap(),
        key: old_root_key,
    };
    let issuer = intermediate("Issuing CA under old root", &old_root, |_| {});
    let cert = ek_cert(&issuer, &key);
    let err = verify(&cert, &roots(&[&old_root, &issuer])).unwrap_err();
    assert_eq!(
        err,
        EkCertError::IssuerNotValid {
            issuer: "CN=Old Root CA,O=Hallmark Test TPM Maker".to_owned()
        }
    );
    // Without the expired root in the bundle, the intermediate is the trust anchor.
    verify(&cert, &roots(&[&issuer])).unwrap();
}

#[test]
fn refuses_an_issuer_that_is_not_a_ca() {
    let key = ek_public(0);
    let root_ca = root("Test EK Root CA", "p256");
    // basicConstraints cA false.
    let leaf = intermediate("Not A CA", &root_ca, |p| {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    });
    let err = verify(&ek_cert(&leaf, &key), &roots(&[&leaf])).unwrap_err();
    assert!(matches!(err, EkCertError::IssuerNotCa { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "ek_roots certificate \"CN=Not A CA,O=Hallmark Test TPM Maker\" is not a CA certificate"
    );
    // cA true but keyUsage without keyCertSign.
    let no_cert_sign = intermediate("CA Without keyCertSign", &root_ca, |p| {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    });
    let err = verify(&ek_cert(&no_cert_sign, &key), &roots(&[&no_cert_sign])).unwrap_err();
    assert!(matches!(err, EkCertError::IssuerNotCa { .. }), "{err}");
    // An intermediate with neither extension (a v1-style CA) is accepted.
    let bare = intermediate("Bare CA", &root_ca, |p| {
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![];
    });
    verify(&ek_cert(&bare, &key), &roots(&[&bare, &root_ca])).unwrap();
    // A non-CA in the middle of the path is refused too.
    let leaf_issued = intermediate("Issued By A Leaf", &leaf, |_| {});
    let err = verify(&ek_cert(&leaf_issued, &key), &roots(&[&leaf_issued, &leaf])).unwrap_err();
    assert!(matches!(err, EkCertError::IssuerNotCa { .. }), "{err}");
}

#[test]
fn parses_bundles_as_a_ca_file() {
    let a = root("CA A", "p256");
    let b = root("CA B", "p384");
    let bundle = format!(
        "# TPM manufacturer CAs\nSubject: CN=CA A\n{}\n# next\n{}",
        a.pem(),
        b.pem()
    );
    assert_eq!(EkRoots::from_pem(&bundle).unwrap().len(), 2);
    assert_eq!(EkRoots::from_pem("").err(), Some(EkCertError::RootsEmpty));
    assert_eq!(
        EkRoots::from_pem("just some text\n").err(),
        Some(EkCertError::RootsEmpty)
    );
    let key_only = ca_key("p256").serialize_pem();
    assert_eq!(
        EkRoots::from_pem(&key_only).err(),
        Some(EkCertError::RootsEmpty)
    );
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        EkRoots::from_pem(bad_base64),
        Err(EkCertError::RootsPem { .. })
    ));
    let not_x509 = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    assert_eq!(
        EkRoots::from_pem(&format!("{}{not_x509}", a.pem())).err(),
        Some(EkCertError::RootsCertificate { index: 2 })
    );
}

#[test]
fn refuses_junk_and_oversized_certificates() {
    assert_eq!(
        EkCertificate::from_der(b"not a certificate").unwrap_err(),
        EkCertError::NotDer
    );
    assert_eq!(
        EkCertificate::from_der(&[]).unwrap_err(),
        EkCertError::NotDer
    );
    let huge = vec![0x30; MAX_EK_CERTIFICATE + 1];
    let err = EkCertificate::from_der(&huge).unwrap_err();
    assert_eq!(
        err,
        EkCertError::TooLong {
            len: MAX_EK_CERTIFICATE + 1
        }
    );
    assert!(!err.to_string().contains("0x30"));
    // Every truncation of a good certificate is refused, without a panic.
    let ca = root("Test EK CA", "p256");
    let cert = ek_cert(&ca, &ek_public(0));
    for len in 0..cert.len() {
        assert!(EkCertificate::from_der(&cert[..len]).is_err());
    }
}

#[test]
fn long_ca_names_are_shortened_in_messages() {
    let long = "x".repeat(500);
    let ca = root(&long, "p256");
    let impostor = root(&long, "p256");
    let err = verify(&ek_cert(&ca, &ek_public(0)), &roots(&[&impostor])).unwrap_err();
    let message = err.to_string();
    assert!(message.len() < 300, "{message}");
    assert!(message.contains('…'));
}
