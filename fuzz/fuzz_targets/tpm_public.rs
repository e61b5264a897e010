//! TPM2B_PUBLIC at attestation (`attest::tpm_public::parse`, TPM 2.0 Part 2 §12.2.5).
//! Properties: an accepted area is a fixed-TPM signing key whose SEC1 point is its x and y, and
//! whose Name is the SHA-256 Name (Part 1 §16) of the TPMT_PUBLIC it came from.
#![no_main]

use hallmark_server::attest::tpm_public::{parse, MAX_TPM2B_PUBLIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_TPM2B_PUBLIC);
    let point = key.sec1_point();
    assert_eq!(point[0], 0x04);
    assert_eq!(&point[1..33], key.x());
    assert_eq!(&point[33..], key.y());
    assert!(key.attributes().sign() && key.attributes().fixed_tpm());
    assert_eq!(
        &data[2..],
        key.tpmt_public(),
        "TPMT_PUBLIC is the whole rest of the input"
    );
    assert_eq!(&key.name()[..2], &[0x00, 0x0B], "Name is nameAlg SHA-256");
});
