//! EK certificates at registration (`attest::ek_cert`: `EkCertificate::from_der`, `check_key`,
//! `EkRoots::verify`; X.509 DER from the device, RFC 5280). Properties: parsing, naming and
//! chain checks never panic on any bytes; a certificate the fuzz CA's chain check accepts names
//! that CA as its issuer and certifies the key in its own SubjectPublicKeyInfo.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hallmark_server::attest::{check_ek_certificate, EkCertificate, EkRoots};
use libfuzzer_sys::fuzz_target;

/// The CA that signed the seeds in `corpus/ek_cert/` (P-256, `CN=Fuzz EK CA`, valid to 2126).
const CA_PEM: &str = include_str!("ek_ca.pem");

fn roots() -> &'static EkRoots {
    static ROOTS: OnceLock<EkRoots> = OnceLock::new();
    ROOTS.get_or_init(|| EkRoots::from_pem(CA_PEM).expect("the fuzz CA parses"))
}

fuzz_target!(|data: &[u8]| {
    // 2030-01-01: inside the seeds' validity, so the chain check runs to the signature.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    let Ok(cert) = EkCertificate::from_der(data) else {
        assert!(check_ek_certificate(data, data, Some(roots()), now).is_err());
        return;
    };
    let issuer = cert.issuer();
    // Any bytes as the EK's public key: refused or matched, never a panic.
    let _ = cert.check_key(data);
    if roots().verify(&cert, now).is_ok() {
        assert_eq!(issuer, "CN=Fuzz EK CA", "accepted a chain to another issuer");
        let spki = cert.public_key_der().expect("an accepted certificate has a key");
        cert.check_key(&spki)
            .expect("an accepted certificate certifies its own key");
        assert_eq!(
            check_ek_certificate(data, &spki, Some(roots()), now).ok(),
            Some(issuer)
        );
    }
});
