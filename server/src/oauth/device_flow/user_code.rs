//! User codes (RFC 8628 §6.1): 8 letters from a 20-consonant alphabet, shown `XXXX-XXXX`, read
//! back case-insensitively with or without the dash.

use rand::RngCore;

/// User code alphabet (RFC 8628 §6.1): consonants only, so no word can be spelled and no two
/// letters look alike.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// User code length: 20^8 ≈ 2^34.6 codes, against a guesser held to a few tries per window.
pub const USER_CODE_LEN: usize = 8;

/// A user code in its normal form: 8 letters of [`USER_CODE_ALPHABET`], no dash.
#[derive(Clone, PartialEq, Eq)]
pub struct UserCode(String);

impl UserCode {
    /// Draw a uniformly random code.
    pub fn generate() -> Self {
        let mut code = String::with_capacity(USER_CODE_LEN);
        // One draw from the OS covers a code almost always (each byte is kept with p = 15/16).
        let mut pool = [0u8; 16];
        while code.len() < USER_CODE_LEN {
            rand::rngs::OsRng.fill_bytes(&mut pool);
            // 240 = 12 × 20: rejecting the top 16 values keeps every letter equally likely.
            for &byte in pool
                .iter()
                .filter(|&&b| b < 240)
                .take(USER_CODE_LEN - code.len())
            {
                code.push(char::from(USER_CODE_ALPHABET[usize::from(byte % 20)]));
            }
        }
        UserCode(code)
    }

    /// Read what a person typed: case-insensitive, dashes and spaces ignored (RFC 8628 §6.1).
    pub fn parse(input: &str) -> Option<Self> {
        let code: String = input
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\u{2010}'..='\u{2015}'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let valid =
            code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
        valid.then_some(UserCode(code))
    }

    /// The normal form, as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form shown to people: `XXXX-XXXX`.
    pub fn display(&self) -> String {
        format!("{}-{}", &self.0[..4], &self.0[4..])
    }
}

impl std::fmt::Debug for UserCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A live user code lets whoever holds it bind the device to their account.
        f.write_str("UserCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_use_the_alphabet_and_parse_leniently() {
        for _ in 0..200 {
            let c = UserCode::generate();
            assert_eq!(c.as_str().len(), 8);
            assert!(c.as_str().bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
            assert_eq!(UserCode::parse(&c.display()), Some(c.clone()));
            assert_eq!(UserCode::parse(&c.as_str().to_lowercase()), Some(c));
        }
        assert_eq!(UserCode::parse("bcdf-ghjk").unwrap().display(), "BCDF-GHJK");
        assert_eq!(UserCode::parse(" bcdf ghjk ").unwrap().as_str(), "BCDFGHJK");
        for bad in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-EFGH",
            "BCDF-GHJ1",
            "BCDF_GHJK",
            "ＢCDF-GHJK",
        ] {
            assert!(UserCode::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_user_code() {
        assert!(!format!("{:?}", UserCode::parse("BCDFGHJK").unwrap()).contains("BCDF"));
    }

    proptest::proptest! {
        /// Invariant: normalisation is idempotent and lossless for what it accepts: the normal
        /// form and the displayed form both read back as the same code, whatever a person
        /// typed (case, dashes, spaces, Unicode dashes, junk).
        #[test]
        fn normalisation_is_idempotent(
            typed in "[BCDFGHJKLMNPQRSTVWXZbcdfghjklmnpqrstvwxz \\-\u{2010}-\u{2015}A1é]{0,14}"
        ) {
            if let Some(code) = UserCode::parse(&typed) {
                proptest::prop_assert_eq!(UserCode::parse(code.as_str()), Some(code.clone()));
                proptest::prop_assert_eq!(UserCode::parse(&code.display()), Some(code.clone()));
                proptest::prop_assert_eq!(code.as_str().len(), USER_CODE_LEN);
            }
        }
    }
}
