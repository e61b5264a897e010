//! Parsing and vetting a device key's TPM public area (TPM2B_PUBLIC, TPM 2.0 Part 2 §12.2.5):
//! the server accepts only a non-exportable ECDSA P-256 signing key born in a TPM, and computes
//! the key's Name (Part 1 §16) for credential activation.
//!
//! The structure is fixed and small, so a bounds-checked reader walks it by hand (no TSS
//! library on the server); [`parse`] never panics, whatever the input.
//!
//! What the attributes prove is only what the TPM that holds the key says about it: credential
//! activation ([`super::credential`]) is what ties this Name to a key resident in the TPM whose
//! EK the server registered — the TPM refuses TPM2_ActivateCredential unless an object with
//! exactly this Name is loaded (Part 1 §24.6), and it loads no object whose public area has
//! inconsistent attributes or an invalid point.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The largest input looked at: no TPM2B_PUBLIC is longer (an RSA-4096 public area is about
/// 600 bytes); an ECC P-256 one is at most 122.
pub const MAX_TPM2B_PUBLIC: usize = 1024;

/// Length of an object Name with nameAlg SHA-256: the algorithm id (2) and the digest (32).
pub const NAME_LEN: usize = 34;

/// Algorithm identifiers (TPM 2.0 Part 2 §6.3, TPM_ALG_ID).
mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAPSS: u16 = 0x0016;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001A;
    pub const SM2: u16 = 0x001B;
    pub const ECSCHNORR: u16 = 0x001C;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const AES: u16 = 0x0006;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const MGF1: u16 = 0x0007;
}

/// NIST P-256's TPM_ECC_CURVE (Part 2 §6.4).
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// Parses a TPM2B_PUBLIC and checks that it describes a non-exportable ECDSA P-256 signing
/// key; see [`TpmPublic::parse`].
pub fn parse(bytes: &[u8]) -> Result<TpmPublic, TpmPublicError> {
    TpmPublic::parse(bytes)
}

/// A vetted public area of a TPM-resident ECC P-256 signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// The TPMT_PUBLIC exactly as received: the Name is computed over these bytes.
    tpmt_public: Vec<u8>,
    attributes: ObjectAttributes,
    auth_policy: Vec<u8>,
    scheme: EccScheme,
    point: [u8; 65],
    name: [u8; NAME_LEN],
}

impl fmt::Debug for TpmPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmPublic")
            .field("attributes", &self.attributes)
            .field("scheme", &self.scheme)
            .field("name", &hex::encode(self.name))
            .finish_non_exhaustive()
    }
}

/// The signing scheme fixed in the key's public area (Part 2 §11.2.5.6, TPMT_ECC_SCHEME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EccScheme {
    /// ECDSA with SHA-256: the key signs only that way.
    EcdsaSha256,
    /// TPM_ALG_NULL: the scheme is chosen per signature.
    Null,
}

impl TpmPublic {
    /// Parses a TPM2B_PUBLIC (a big-endian u16 size, then a TPMT_PUBLIC of that size, and
    /// nothing after it) and accepts it only if it is:
    ///
    /// - type TPM_ALG_ECC with nameAlg SHA-256;
    /// - fixedTPM, fixedParent, sensitiveDataOrigin and sign set, decrypt and restricted
    ///   clear, no reserved bit set (Part 2 §8.3); other attributes (userWithAuth, noDA, …)
    ///   are the device's business;
    /// - any authPolicy (empty or a SHA-256 digest, the only sizes a TPM accepts);
    /// - symmetric TPM_ALG_NULL, scheme ECDSA/SHA-256 or TPM_ALG_NULL, curve NIST P-256,
    ///   kdf TPM_ALG_NULL;
    /// - unique: a point whose coordinates are at most 32 bytes each (shorter ones are
    ///   left-padded: a TPM may strip leading zeros).
    pub fn parse(bytes: &[u8]) -> Result<TpmPublic, TpmPublicError> {
        if bytes.len() > MAX_TPM2B_PUBLIC {
            return Err(TpmPublicError::TooLong { len: bytes.len() });
        }
        let mut outer = Reader::new(bytes);
        let declared = usize::from(outer.u16("size")?);
        let tpmt_public = outer.rest();
        if declared != tpmt_public.len() {
            return Err(TpmPublicError::SizeMismatch {
                declared,
                actual: tpmt_public.len(),
            });
        }

        // TPMT_PUBLIC (Part 2 §12.2.4).
        let mut r = Reader::new(tpmt_public);
        let kind = r.u16("type")?;
        if kind != alg::ECC {
            return Err(TpmPublicError::NotEcc { alg: kind });
        }
        let name_alg = r.u16("nameAlg")?;
        if name_alg != alg::SHA256 {
            return Err(TpmPublicError::NameAlg { alg: name_alg });
        }
        let attributes = ObjectAttributes(r.u32("objectAttributes")?);
        attributes.check_signing_key()?;
        // A TPM accepts only an empty policy or one of nameAlg's digest size (Part 3 §12.1,
        // TPM_RC_SIZE); the value itself is the device's business.
        let auth_policy = r.sized("authPolicy", 64)?;
        if !(auth_policy.is_empty() || auth_policy.len() == 32) {
            return Err(TpmPublicError::AuthPolicySize {
                len: auth_policy.len(),
            });
        }

        // TPMS_ECC_PARMS (Part 2 §12.2.3.6).
        let symmetric = r.u16("parameters.symmetric")?;
        if symmetric != alg::NULL {
            return Err(TpmPublicError::Symmetric { alg: symmetric });
        }
        let scheme = match r.u16("parameters.scheme")? {
            alg::NULL => EccScheme::Null,
            alg::ECDSA => match r.u16("parameters.scheme.hashAlg")? {
                alg::SHA256 => EccScheme::EcdsaSha256,
                hash => {
                    return Err(TpmPublicError::Scheme {
                        scheme: alg::ECDSA,
                        hash: Some(hash),
                    })
                }
            },
            other => {
                return Err(TpmPublicError::Scheme {
                    scheme: other,
                    hash: None,
                })
            }
        };
        let curve = r.u16("parameters.curveID")?;
        if curve != TPM_ECC_NIST_P256 {
            return Err(TpmPublicError::Curve { curve });
        }
        let kdf = r.u16("parameters.kdf")?;
        if kdf != alg::NULL {
            return Err(TpmPublicError::Kdf { alg: kdf });
        }

        // TPMS_ECC_POINT (Part 2 §11.2.5.2): two TPM2B_ECC_PARAMETERs.
        let mut point = [0u8; 65];
        point[0] = 0x04;
        let x = r.sized("unique.x", 32).map_err(coordinate_error("x"))?;
        left_pad(x, "x", &mut point[1..33])?;
        let y = r.sized("unique.y", 32).map_err(coordinate_error("y"))?;
        left_pad(y, "y", &mut point[33..65])?;
        if !r.rest().is_empty() {
            return Err(TpmPublicError::TrailingBytes {
                count: r.rest().len(),
            });
        }

        // Name = nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1 §16).
        let mut name = [0u8; NAME_LEN];
        name[..2].copy_from_slice(&alg::SHA256.to_be_bytes());
        name[2..].copy_from_slice(&Sha256::digest(tpmt_public));
        Ok(TpmPublic {
            tpmt_public: tpmt_public.to_vec(),
            attributes,
            auth_policy: auth_policy.to_vec(),
            scheme,
            point,
            name,
        })
    }

    /// The key's public point, SEC 1 uncompressed (0x04 || x || y, coordinates left-padded to
    /// 32 bytes), for comparison with the JWK's `x` and `y`.
    pub fn sec1_point(&self) -> &[u8; 65] {
        &self.point
    }

    /// The x coordinate, 32 bytes big-endian.
    pub fn x(&self) -> &[u8] {
        &self.point[1..33]
    }

    /// The y coordinate, 32 bytes big-endian.
    pub fn y(&self) -> &[u8] {
        &self.point[33..65]
    }

    /// The key's object attributes (all of them, not only those checked).
    pub fn attributes(&self) -> ObjectAttributes {
        self.attributes
    }

    /// The key's authPolicy (empty, or a SHA-256 policy digest).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// The key's signing scheme.
    pub fn scheme(&self) -> EccScheme {
        self.scheme
    }

    /// The key's Name (Part 1 §16): TPM_ALG_SHA256 as a big-endian u16 (0x000B), then
    /// SHA-256 of the TPMT_PUBLIC — what TPM2_MakeCredential binds the credential to.
    pub fn name(&self) -> &[u8; NAME_LEN] {
        &self.name
    }

    /// The TPMT_PUBLIC (the TPM2B_PUBLIC without its size), as received.
    pub fn tpmt_public(&self) -> &[u8] {
        &self.tpmt_public
    }
}

/// TPMA_OBJECT (TPM 2.0 Part 2 §8.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ObjectAttributes(u32);

impl ObjectAttributes {
    /// The object cannot be duplicated (bit 1).
    pub const FIXED_TPM: u32 = 1 << 1;
    /// Saved contexts of the object cannot be loaded after a TPM Reset (bit 2).
    pub const ST_CLEAR: u32 = 1 << 2;
    /// The object's parent cannot change (bit 4).
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the sensitive part itself (bit 5).
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// The auth value authorizes user actions (bit 6).
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// Admin actions need a policy session (bit 7).
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Not subject to dictionary-attack protection (bit 10).
    pub const NO_DA: u32 = 1 << 10;
    /// Duplication needs an inner wrapper (bit 11).
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// Use is restricted to TPM-generated data (bit 16).
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption key (bit 17).
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key (bit 18).
    pub const SIGN: u32 = 1 << 18;
    /// May sign X.509 certificates with TPM2_CertifyX509 (bit 19).
    pub const X509_SIGN: u32 = 1 << 19;
    /// Bits TPM 2.0 Part 2 §8.3.2 reserves (0, 3, 8, 9, 12–15, 20–31).
    pub const RESERVED: u32 = 0xFFF0_F309;

    /// Every named bit, in order, with the spec's name.
    const NAMES: [(u32, &'static str); 12] = [
        (Self::FIXED_TPM, "fixedTPM"),
        (Self::ST_CLEAR, "stClear"),
        (Self::FIXED_PARENT, "fixedParent"),
        (Self::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (Self::USER_WITH_AUTH, "userWithAuth"),
        (Self::ADMIN_WITH_POLICY, "adminWithPolicy"),
        (Self::NO_DA, "noDA"),
        (Self::ENCRYPTED_DUPLICATION, "encryptedDuplication"),
        (Self::RESTRICTED, "restricted"),
        (Self::DECRYPT, "decrypt"),
        (Self::SIGN, "sign"),
        (Self::X509_SIGN, "x509sign"),
    ];
    /// What a non-exportable device signing key must have set (Part 1 §23.2: fixedTPM and
    /// fixedParent make an object non-duplicable; sensitiveDataOrigin says the TPM made it).
    const REQUIRED: [(u32, &'static str); 4] = [
        (Self::FIXED_TPM, "fixedTPM"),
        (Self::FIXED_PARENT, "fixedParent"),
        (Self::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (Self::SIGN, "sign"),
    ];
    /// What it must have clear: a signing key only, and unrestricted (it signs JWTs, which
    /// a restricted key refuses to sign).
    const FORBIDDEN: [(u32, &'static str); 2] =
        [(Self::DECRYPT, "decrypt"), (Self::RESTRICTED, "restricted")];

    /// The raw TPMA_OBJECT bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `mask` is set.
    pub fn contains(self, mask: u32) -> bool {
        self.0 & mask == mask
    }

    /// fixedTPM is set.
    pub fn fixed_tpm(self) -> bool {
        self.contains(Self::FIXED_TPM)
    }

    /// fixedParent is set.
    pub fn fixed_parent(self) -> bool {
        self.contains(Self::FIXED_PARENT)
    }

    /// sensitiveDataOrigin is set.
    pub fn sensitive_data_origin(self) -> bool {
        self.contains(Self::SENSITIVE_DATA_ORIGIN)
    }

    /// sign is set.
    pub fn sign(self) -> bool {
        self.contains(Self::SIGN)
    }

    /// decrypt is set.
    pub fn decrypt(self) -> bool {
        self.contains(Self::DECRYPT)
    }

    /// restricted is set.
    pub fn restricted(self) -> bool {
        self.contains(Self::RESTRICTED)
    }

    /// The spec names of the set bits, e.g. `["fixedTPM", "fixedParent", …]`.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, name)| *name)
            .collect()
    }

    fn check_signing_key(self) -> Result<(), TpmPublicError> {
        let missing: Vec<&'static str> = Self::REQUIRED
            .iter()
            .filter(|(bit, _)| !self.contains(*bit))
            .map(|(_, name)| *name)
            .collect();
        let forbidden: Vec<&'static str> = Self::FORBIDDEN
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() || !forbidden.is_empty() {
            return Err(TpmPublicError::Attributes { missing, forbidden });
        }
        let reserved = self.0 & Self::RESERVED;
        if reserved != 0 {
            return Err(TpmPublicError::ReservedAttributes { bits: reserved });
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x} [{}]", self.0, self.names().join(", "))
    }
}

/// Why a public area is refused. The Display form is one line naming the first rule broken,
/// fit for an OAuth `error_description`; it never quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmPublicError {
    /// The input is longer than any TPM2B_PUBLIC.
    #[error("tpm_public is {len} bytes, longer than any TPM2B_PUBLIC")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The input ends inside a field.
    #[error("tpm_public is truncated at {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The TPM2B size does not match the bytes that follow it.
    #[error("tpm_public's size field says {declared} bytes but {actual} follow")]
    SizeMismatch {
        /// The size field's value.
        declared: usize,
        /// How many bytes follow it.
        actual: usize,
    },
    /// A sized field is longer than the structure allows.
    #[error("tpm_public's {field} is {len} bytes, more than {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its size field's value.
        len: usize,
        /// The most it may hold.
        max: usize,
    },
    /// The TPMT_PUBLIC ends before the size field says.
    #[error("tpm_public has {count} bytes after the public area")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The key is not an ECC key.
    #[error("tpm_public is not an ECC key (type {})", alg_name(*.alg))]
    NotEcc {
        /// The TPMI_ALG_PUBLIC found.
        alg: u16,
    },
    /// The key's name algorithm is not SHA-256.
    #[error("tpm_public's nameAlg is {}, not SHA-256", alg_name(*.alg))]
    NameAlg {
        /// The TPMI_ALG_HASH found.
        alg: u16,
    },
    /// The key's attributes are not those of a non-exportable signing key.
    #[error("tpm_public is not a non-exportable TPM signing key: {}", attribute_problems(.missing, .forbidden))]
    Attributes {
        /// Required attributes that are clear.
        missing: Vec<&'static str>,
        /// Attributes that are set and must not be.
        forbidden: Vec<&'static str>,
    },
    /// Reserved attribute bits are set (no TPM creates such an object).
    #[error("tpm_public sets reserved objectAttributes bits {bits:#010x}")]
    ReservedAttributes {
        /// The reserved bits that are set.
        bits: u32,
    },
    /// The authPolicy is neither empty nor a SHA-256 digest.
    #[error("tpm_public's authPolicy is {len} bytes, neither empty nor a SHA-256 digest")]
    AuthPolicySize {
        /// Its length.
        len: usize,
    },
    /// A signing key with a symmetric algorithm (only storage keys have one).
    #[error("tpm_public's symmetric algorithm is {}, not TPM_ALG_NULL", alg_name(*.alg))]
    Symmetric {
        /// The algorithm found.
        alg: u16,
    },
    /// A signing scheme other than ECDSA/SHA-256 or NULL.
    #[error("tpm_public's scheme is {}, not ECDSA with SHA-256 or TPM_ALG_NULL", scheme_name(*.scheme, *.hash))]
    Scheme {
        /// The scheme found.
        scheme: u16,
        /// Its hash algorithm, when it is ECDSA.
        hash: Option<u16>,
    },
    /// A curve other than NIST P-256.
    #[error("tpm_public's curve is {}, not NIST P-256", curve_name(*.curve))]
    Curve {
        /// The TPM_ECC_CURVE found.
        curve: u16,
    },
    /// A key derivation scheme other than NULL.
    #[error("tpm_public's kdf is {}, not TPM_ALG_NULL", alg_name(*.alg))]
    Kdf {
        /// The scheme found.
        alg: u16,
    },
    /// A point coordinate is empty or longer than 32 bytes.
    #[error("tpm_public's {which} coordinate is {len} bytes, not 1 to 32")]
    Coordinate {
        /// `x` or `y`.
        which: &'static str,
        /// Its length.
        len: usize,
    },
}

/// A bounds-checked big-endian reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TpmPublicError> {
        if self.bytes.len() < n {
            return Err(TpmPublicError::Truncated { field });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, TpmPublicError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, TpmPublicError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A TPM2B: a u16 size, then that many bytes; a size over `max` is refused before
    /// anything is read.
    fn sized(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], TpmPublicError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(TpmPublicError::FieldTooLong { field, len, max });
        }
        self.take(len, field)
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Maps an oversized coordinate's size error to [`TpmPublicError::Coordinate`].
fn coordinate_error(which: &'static str) -> impl Fn(TpmPublicError) -> TpmPublicError {
    move |err| match err {
        TpmPublicError::FieldTooLong { len, .. } => TpmPublicError::Coordinate { which, len },
        other => other,
    }
}

/// Copies a big-endian coordinate of 1 to 32 bytes right-aligned into `out` (32 bytes).
fn left_pad(value: &[u8], which: &'static str, out: &mut [u8]) -> Result<(), TpmPublicError> {
    if value.is_empty() || value.len() > out.len() {
        return Err(TpmPublicError::Coordinate {
            which,
            len: value.len(),
        });
    }
    let offset = out.len() - value.len();
    out[offset..].copy_from_slice(value);
    Ok(())
}

fn attribute_problems(missing: &[&str], forbidden: &[&str]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} not set", missing.join(", ")));
    }
    if !forbidden.is_empty() {
        parts.push(format!("{} set", forbidden.join(", ")));
    }
    parts.join("; ")
}

/// The spec's name of an algorithm id, or its hex value.
fn alg_name(id: u16) -> String {
    let name = match id {
        alg::RSA => "TPM_ALG_RSA",
        alg::SHA1 => "TPM_ALG_SHA1",
        alg::AES => "TPM_ALG_AES",
        alg::MGF1 => "TPM_ALG_MGF1",
        alg::KEYEDHASH => "TPM_ALG_KEYEDHASH",
        alg::SHA256 => "TPM_ALG_SHA256",
        alg::SHA384 => "TPM_ALG_SHA384",
        alg::SHA512 => "TPM_ALG_SHA512",
        alg::NULL => "TPM_ALG_NULL",
        alg::RSASSA => "TPM_ALG_RSASSA",
        alg::RSAPSS => "TPM_ALG_RSAPSS",
        alg::ECDSA => "TPM_ALG_ECDSA",
        alg::ECDH => "TPM_ALG_ECDH",
        alg::ECDAA => "TPM_ALG_ECDAA",
        alg::SM2 => "TPM_ALG_SM2",
        alg::ECSCHNORR => "TPM_ALG_ECSCHNORR",
        alg::KDF1_SP800_56A => "TPM_ALG_KDF1_SP800_56A",
        alg::KDF2 => "TPM_ALG_KDF2",
        alg::KDF1_SP800_108 => "TPM_ALG_KDF1_SP800_108",
        alg::ECC => "TPM_ALG_ECC",
        alg::SYMCIPHER => "TPM_ALG_SYMCIPHER",
        _ => return format!("{id:#06x}"),
    };
    name.to_owned()
}

fn scheme_name(scheme: u16, hash: Option<u16>) -> String {
    match hash {
        Some(hash) => format!("{} with {}", alg_name(scheme), alg_name(hash)),
        None => alg_name(scheme),
    }
}

/// The spec's name of a curve (Part 2 §6.4), or its hex value.
fn curve_name(curve: u16) -> String {
    let name = match curve {
        0x0001 => "TPM_ECC_NIST_P192",
        0x0002 => "TPM_ECC_NIST_P224",
        0x0003 => "TPM_ECC_NIST_P256",
        0x0004 => "TPM_ECC_NIST_P384",
        0x0005 => "TPM_ECC_NIST_P521",
        0x0010 => "TPM_ECC_BN_P256",
        0x0011 => "TPM_ECC_BN_P638",
        0x0020 => "TPM_ECC_SM2_P256",
        _ => return format!("{curve:#06x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests;
