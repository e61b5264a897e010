//! Unit tests of the TPM public area parser: every acceptance rule, and robustness on junk.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::*;

/// A TPMT_PUBLIC under construction; `Area::default()` is a valid device key area as
/// Hallmark's agent creates it (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
/// noDA, sign; ECDSA/SHA-256; P-256).
#[derive(Clone)]
struct Area {
    kind: u16,
    name_alg: u16,
    attributes: u32,
    policy: Vec<u8>,
    symmetric: Vec<u8>,
    scheme: Vec<u8>,
    curve: u16,
    kdf: Vec<u8>,
    x: Vec<u8>,
    y: Vec<u8>,
    trailing: Vec<u8>,
}

const DEVICE_KEY_ATTRIBUTES: u32 = ObjectAttributes::FIXED_TPM
    | ObjectAttributes::FIXED_PARENT
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN
    | ObjectAttributes::USER_WITH_AUTH
    | ObjectAttributes::NO_DA
    | ObjectAttributes::SIGN;

impl Default for Area {
    fn default() -> Area {
        Area {
            kind: alg::ECC,
            name_alg: alg::SHA256,
            attributes: DEVICE_KEY_ATTRIBUTES,
            policy: Vec::new(),
            symmetric: alg::NULL.to_be_bytes().to_vec(),
            scheme: [alg::ECDSA.to_be_bytes(), alg::SHA256.to_be_bytes()].concat(),
            curve: TPM_ECC_NIST_P256,
            kdf: alg::NULL.to_be_bytes().to_vec(),
            x: (1..=32).collect(),
            y: (101..=132).collect(),
            trailing: Vec::new(),
        }
    }
}

impl Area {
    fn tpmt(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&self.name_alg.to_be_bytes());
        out.extend_from_slice(&self.attributes.to_be_bytes());
        sized(&mut out, &self.policy);
        out.extend_from_slice(&self.symmetric);
        out.extend_from_slice(&self.scheme);
        out.extend_from_slice(&self.curve.to_be_bytes());
        out.extend_from_slice(&self.kdf);
        sized(&mut out, &self.x);
        sized(&mut out, &self.y);
        out.extend_from_slice(&self.trailing);
        out
    }

    fn tpm2b(&self) -> Vec<u8> {
        let mut out = Vec::new();
        sized(&mut out, &self.tpmt());
        out
    }

    fn parse(&self) -> Result<TpmPublic, TpmPublicError> {
        parse(&self.tpm2b())
    }
}

fn sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[test]
fn accepts_a_device_key_and_exposes_point_attributes_and_name() {
    let area = Area::default();
    let parsed = area.parse().unwrap();
    let mut point = vec![4u8];
    point.extend(1..=32u8);
    point.extend(101..=132u8);
    assert_eq!(parsed.sec1_point().as_slice(), point.as_slice());
    assert_eq!(parsed.x(), &point[1..33]);
    assert_eq!(parsed.y(), &point[33..]);
    assert_eq!(parsed.attributes().bits(), DEVICE_KEY_ATTRIBUTES);
    assert!(parsed.attributes().fixed_tpm() && parsed.attributes().sign());
    assert!(!parsed.attributes().decrypt() && !parsed.attributes().restricted());
    assert_eq!(
        parsed.attributes().names(),
        vec![
            "fixedTPM",
            "fixedParent",
            "sensitiveDataOrigin",
            "userWithAuth",
            "noDA",
            "sign"
        ]
    );
    assert_eq!(parsed.scheme(), EccScheme::EcdsaSha256);
    assert!(parsed.auth_policy().is_empty());
    assert_eq!(parsed.tpmt_public(), area.tpmt().as_slice());
    // Part 1 §16: nameAlg (big-endian) || SHA-256(TPMT_PUBLIC).
    let mut name = vec![0x00, 0x0B];
    name.extend_from_slice(&Sha256::digest(area.tpmt()));
    assert_eq!(parsed.name().as_slice(), name.as_slice());
}

#[test]
fn accepts_null_scheme_any_policy_and_other_attributes() {
    let area = Area {
        scheme: alg::NULL.to_be_bytes().to_vec(),
        policy: vec![0xAB; 32],
        attributes: DEVICE_KEY_ATTRIBUTES
            | ObjectAttributes::ADMIN_WITH_POLICY
            | ObjectAttributes::ST_CLEAR,
        ..Area::default()
    };
    let parsed = area.parse().unwrap();
    assert_eq!(parsed.scheme(), EccScheme::Null);
    assert_eq!(parsed.auth_policy(), &[0xAB; 32]);
}

#[test]
fn left_pads_short_coordinates_and_names_the_bytes_as_sent() {
    let area = Area {
        x: vec![7; 31],
        y: vec![9],
        ..Area::default()
    };
    let parsed = area.parse().unwrap();
    let mut x = [0u8; 32];
    x[1..].fill(7);
    let mut y = [0u8; 32];
    y[31] = 9;
    assert_eq!(parsed.x(), &x);
    assert_eq!(parsed.y(), &y);
    // The Name hashes the TPM's own (short) encoding, not a padded one.
    assert_eq!(&parsed.name()[2..], Sha256::digest(area.tpmt()).as_slice());
}

#[test]
fn names_every_missing_and_forbidden_attribute() {
    let required = [
        (ObjectAttributes::FIXED_TPM, "fixedTPM"),
        (ObjectAttributes::FIXED_PARENT, "fixedParent"),
        (
            ObjectAttributes::SENSITIVE_DATA_ORIGIN,
            "sensitiveDataOrigin",
        ),
        (ObjectAttributes::SIGN, "sign"),
    ];
    for (bit, name) in required {
        let area = Area {
            attributes: DEVICE_KEY_ATTRIBUTES & !bit,
            ..Area::default()
        };
        let err = area.parse().unwrap_err();
        assert_eq!(
            err,
            TpmPublicError::Attributes {
                missing: vec![name],
                forbidden: vec![]
            }
        );
        assert!(
            err.to_string().contains(&format!("{name} not set")),
            "{err}"
        );
    }
    for (bit, name) in [
        (ObjectAttributes::DECRYPT, "decrypt"),
        (ObjectAttributes::RESTRICTED, "restricted"),
    ] {
        let area = Area {
            attributes: DEVICE_KEY_ATTRIBUTES | bit,
            ..Area::default()
        };
        let err = area.parse().unwrap_err();
        assert_eq!(
            err,
            TpmPublicError::Attributes {
                missing: vec![],
                forbidden: vec![name]
            }
        );
        assert!(err.to_string().contains(&format!("{name} set")), "{err}");
    }
    // Several at once are all named: a duplicable decryption key.
    let area = Area {
        attributes: ObjectAttributes::USER_WITH_AUTH
            | ObjectAttributes::SIGN
            | ObjectAttributes::DECRYPT,
        ..Area::default()
    };
    let err = area.parse().unwrap_err();
    assert_eq!(
        err.to_string(),
        "tpm_public is not a non-exportable TPM signing key: fixedTPM, fixedParent, \
         sensitiveDataOrigin not set; decrypt set"
    );
    // Reserved bits.
    for bit in [0u32, 3, 8, 9, 12, 15, 20, 31] {
        let area = Area {
            attributes: DEVICE_KEY_ATTRIBUTES | 1 << bit,
            ..Area::default()
        };
        assert_eq!(
            area.parse().unwrap_err(),
            TpmPublicError::ReservedAttributes { bits: 1 << bit }
        );
    }
}

#[test]
fn refuses_other_types_algorithms_curves_and_schemes() {
    let cases: Vec<(Area, TpmPublicError)> = vec![
        (
            Area {
                kind: alg::RSA,
                ..Area::default()
            },
            TpmPublicError::NotEcc { alg: alg::RSA },
        ),
        (
            Area {
                name_alg: alg::SHA1,
                ..Area::default()
            },
            TpmPublicError::NameAlg { alg: alg::SHA1 },
        ),
        (
            Area {
                name_alg: alg::SHA384,
                ..Area::default()
            },
            TpmPublicError::NameAlg { alg: alg::SHA384 },
        ),
        (
            Area {
                policy: vec![0; 20],
                ..Area::default()
            },
            TpmPublicError::AuthPolicySize { len: 20 },
        ),
        (
            Area {
                symmetric: [alg::AES, 128, 0x0043]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                ..Area::default()
            },
            TpmPublicError::Symmetric { alg: alg::AES },
        ),
        (
            Area {
                scheme: [alg::ECDSA, alg::SHA384]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                ..Area::default()
            },
            TpmPublicError::Scheme {
                scheme: alg::ECDSA,
                hash: Some(alg::SHA384),
            },
        ),
        (
            Area {
                scheme: [alg::ECDH, alg::SHA256]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                ..Area::default()
            },
            TpmPublicError::Scheme {
                scheme: alg::ECDH,
                hash: None,
            },
        ),
        (
            Area {
                curve: 0x0004,
                ..Area::default()
            },
            TpmPublicError::Curve { curve: 0x0004 },
        ),
        (
            Area {
                curve: 0x0010,
                ..Area::default()
            },
            TpmPublicError::Curve { curve: 0x0010 },
        ),
        (
            Area {
                kdf: [alg::KDF1_SP800_56A, alg::SHA256]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                ..Area::default()
            },
            TpmPublicError::Kdf {
                alg: alg::KDF1_SP800_56A,
            },
        ),
        (
            Area {
                x: vec![1; 33],
                ..Area::default()
            },
            TpmPublicError::Coordinate {
                which: "x",
                len: 33,
            },
        ),
        (
            Area {
                y: vec![],
                ..Area::default()
            },
            TpmPublicError::Coordinate { which: "y", len: 0 },
        ),
        (
            Area {
                y: vec![1; 48],
                ..Area::default()
            },
            TpmPublicError::Coordinate {
                which: "y",
                len: 48,
            },
        ),
        (
            Area {
                trailing: vec![0; 3],
                ..Area::default()
            },
            TpmPublicError::TrailingBytes { count: 3 },
        ),
    ];
    for (area, expected) in cases {
        assert_eq!(area.parse().unwrap_err(), expected);
    }
}

#[test]
fn messages_are_one_line_and_name_the_algorithm() {
    let rsa = Area {
        kind: alg::RSA,
        ..Area::default()
    };
    assert_eq!(
        rsa.parse().unwrap_err().to_string(),
        "tpm_public is not an ECC key (type TPM_ALG_RSA)"
    );
    let p384 = Area {
        curve: 0x0004,
        ..Area::default()
    };
    assert_eq!(
        p384.parse().unwrap_err().to_string(),
        "tpm_public's curve is TPM_ECC_NIST_P384, not NIST P-256"
    );
    let odd = Area {
        kind: 0x7777,
        ..Area::default()
    };
    assert_eq!(
        odd.parse().unwrap_err().to_string(),
        "tpm_public is not an ECC key (type 0x7777)"
    );
}

#[test]
fn refuses_truncated_mis_sized_and_oversized_input() {
    let good = Area::default().tpm2b();
    assert_eq!(
        parse(&[]).unwrap_err(),
        TpmPublicError::Truncated { field: "size" }
    );
    // Every strict prefix fails (the outer size no longer matches), as does every prefix
    // whose size field is fixed up to match (the structure is then cut inside a field).
    for len in 0..good.len() {
        assert!(parse(&good[..len]).is_err(), "prefix of {len} bytes");
        if len >= 2 {
            let mut cut = good[..len].to_vec();
            let inner = (len - 2) as u16;
            cut[..2].copy_from_slice(&inner.to_be_bytes());
            let err = parse(&cut).unwrap_err();
            assert!(
                matches!(err, TpmPublicError::Truncated { .. }),
                "{len}: {err:?}"
            );
        }
    }
    // Bytes after the TPM2B.
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(
        parse(&longer).unwrap_err(),
        TpmPublicError::SizeMismatch {
            declared: good.len() - 2,
            actual: good.len() - 1
        }
    );
    // A policy size field larger than any digest is refused before reading it.
    let mut area = Area::default().tpmt();
    area[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes());
    let mut tpm2b = Vec::new();
    sized(&mut tpm2b, &area);
    assert_eq!(
        parse(&tpm2b).unwrap_err(),
        TpmPublicError::FieldTooLong {
            field: "authPolicy",
            len: 0xFFFF,
            max: 64
        }
    );
    // Far too long input is refused unread.
    let huge = vec![0u8; MAX_TPM2B_PUBLIC + 1];
    assert_eq!(
        parse(&huge).unwrap_err(),
        TpmPublicError::TooLong {
            len: MAX_TPM2B_PUBLIC + 1
        }
    );
}

#[test]
fn never_panics_on_mutated_or_random_input() {
    let good = Area::default().tpm2b();
    let mut rng = StdRng::seed_from_u64(0x7e57);
    for _ in 0..20_000 {
        let mut bytes = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        if rng.gen_bool(0.2) {
            bytes.truncate(rng.gen_range(0..bytes.len()));
        }
        let _ = parse(&bytes);
        let random: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
        let _ = parse(&random);
    }
}
