//! The little DER (ITU-T X.690) the TPM module needs: SubjectPublicKeyInfo encoding for the
//! EK (RFC 5280 §4.1.2.7, RFC 3279 §2.3) and reading an X.509 certificate's SPKI back.

/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 3279 §2.3.1).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0;

/// SPKI of an RSA public key with modulus `n` and exponent `e` (both big-endian).
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let rsa_public_key = tlv(TAG_SEQUENCE, &[integer(n), integer(e)].concat());
    let algorithm = tlv(
        TAG_SEQUENCE,
        &[tlv(TAG_OID, OID_RSA_ENCRYPTION), tlv(TAG_NULL, &[])].concat(),
    );
    tlv(
        TAG_SEQUENCE,
        &[algorithm, bit_string(&rsa_public_key)].concat(),
    )
}

/// SPKI of an EC public key on the named curve `curve_oid` (content bytes of the OID).
pub(crate) fn ec_spki(curve_oid: &[u8], x: &[u8], y: &[u8]) -> Vec<u8> {
    let point = [&[0x04], x, y].concat();
    let algorithm = tlv(
        TAG_SEQUENCE,
        &[tlv(TAG_OID, OID_EC_PUBLIC_KEY), tlv(TAG_OID, curve_oid)].concat(),
    );
    tlv(TAG_SEQUENCE, &[algorithm, bit_string(&point)].concat())
}

/// The complete first element of `input` (tag, length and contents), and the rest.
pub(crate) fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The whole DER encoding of the first element of `input` (trims NV padding after a
/// certificate).
pub(crate) fn first_element(input: &[u8]) -> Option<&[u8]> {
    let (_, _, rest) = element(input)?;
    input.get(..input.len() - rest.len())
}

/// The subjectPublicKey BIT STRING contents of an X.509 certificate (RFC 5280 §4.1).
pub(crate) fn certificate_public_key(cert: &[u8]) -> Option<&[u8]> {
    let (TAG_SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (TAG_SEQUENCE, mut tbs, _) = element(certificate)? else {
        return None;
    };
    // version [0] EXPLICIT is optional.
    if tbs.first() == Some(&TAG_VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        tbs = element(tbs)?.2;
    }
    spki_public_key(first_element(tbs)?)
}

/// The subjectPublicKey BIT STRING contents of a SubjectPublicKeyInfo.
pub(crate) fn spki_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (TAG_SEQUENCE, contents, _) = element(spki)? else {
        return None;
    };
    let (_, _, rest) = element(contents)?;
    let (TAG_BIT_STRING, bits, _) = element(rest)? else {
        return None;
    };
    bits.strip_prefix(&[0])
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// A non-negative INTEGER: minimal, with a leading zero when the high bit is set.
fn integer(value: &[u8]) -> Vec<u8> {
    let skip = value.iter().take_while(|b| **b == 0).count();
    let trimmed = &value[skip.min(value.len().saturating_sub(1))..];
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        tlv(TAG_INTEGER, &[&[0], trimmed].concat())
    } else {
        tlv(TAG_INTEGER, trimmed)
    }
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_BIT_STRING, &[&[0], bytes].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(integer(&[0x01, 0x00, 0x01]), vec![2, 3, 1, 0, 1]);
        assert_eq!(integer(&[0]), vec![2, 1, 0]);
    }

    #[test]
    fn long_lengths() {
        let long = tlv(TAG_SEQUENCE, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x2c]);
        let (tag, contents, rest) = element(&long).unwrap();
        assert_eq!((tag, contents.len(), rest.len()), (TAG_SEQUENCE, 300, 0));
    }

    #[test]
    fn spki_public_key_reads_back_what_was_written() {
        let spki = rsa_spki(&[0xc0; 256], &[1, 0, 1]);
        let key = spki_public_key(&spki).unwrap();
        let (tag, _, rest) = element(key).unwrap();
        assert_eq!(tag, TAG_SEQUENCE);
        assert!(rest.is_empty());
        let padded = [spki.as_slice(), &[0xff; 10]].concat();
        assert_eq!(first_element(&padded).unwrap(), spki.as_slice());
    }
}
