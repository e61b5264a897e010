//! Values from requests on their way into log lines and audit entries: control characters
//! escaped (a `%0A` in a `client_id` must not forge a log line, nor an ANSI escape recolour a
//! terminal) and length bounded (a 60 KB `client_id` must not cost 60 KB per audit entry).

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

/// Longest identifier kept whole, in characters: client ids, serials, user names.
pub const MAX_ID_CHARS: usize = 128;
/// Longest free-text reason kept whole, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// `value` fit for a log line or an audit entry: at most [`MAX_ID_CHARS`] characters, control
/// and bidirectional-override characters escaped as `\u{..}`, and anything longer cut with a
/// note of how much was dropped and a hash of the whole, so two long values stay distinguishable.
pub fn clip(value: &str) -> Cow<'_, str> {
    clip_to(value, MAX_ID_CHARS)
}

/// [`clip`] with another length bound.
pub fn clip_to(value: &str, max_chars: usize) -> Cow<'_, str> {
    let clean = value.chars().all(|c| !needs_escape(c));
    // Byte length bounds the character count, so a short clean value is returned as it is.
    if clean && value.len() <= max_chars {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(max_chars.min(value.len()) + 48);
    let mut cut_at = None;
    for (kept, (at, c)) in value.char_indices().enumerate() {
        if kept == max_chars {
            cut_at = Some(at);
            break;
        }
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    if let Some(at) = cut_at {
        let digest = Sha256::digest(value.as_bytes());
        let _ = write!(
            out,
            "…[+{} bytes, sha256:{}]",
            value.len() - at,
            hex::encode(&digest[..6])
        );
    }
    Cow::Owned(out)
}

/// A stand-in for a value that must not be recorded as it is — a client id that names no
/// client, which may be a secret typed into the wrong field — yet lets an operator tell
/// repeated attempts with the same value apart: `unknown#` and 12 hex digits of its SHA-256.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    format!("unknown#{}", hex::encode(&digest[..6]))
}

/// C0 and C1 controls, DEL, and the Unicode bidirectional controls that reorder what a
/// terminal or log viewer shows (U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_short_values_pass_unchanged() {
        assert!(matches!(clip("device-42"), Cow::Borrowed("device-42")));
        assert_eq!(clip("gateway ü"), "gateway ü");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clip("a\nb"), "a\\u{a}b");
        assert_eq!(clip("x\u{1b}[31mred"), "x\\u{1b}[31mred");
        assert_eq!(clip("nul\0"), "nul\\u{0}");
        assert_eq!(clip("\u{202e}txt"), "\\u{202e}txt");
        assert!(!clip("a\r\nb\u{85}c\u{7f}").chars().any(char::is_control));
    }

    #[test]
    fn long_values_are_cut_with_a_hash_of_the_whole() {
        let long = "a".repeat(60_000);
        let clipped = clip(&long);
        assert!(clipped.len() < 200, "{}", clipped.len());
        assert!(clipped.starts_with(&"a".repeat(MAX_ID_CHARS)));
        assert!(clipped.contains("+59872 bytes"));
        let other = format!("{}b", "a".repeat(59_999));
        assert_ne!(clip(&other), clipped);
        // Exactly at the bound: kept whole.
        let edge = "é".repeat(MAX_ID_CHARS);
        assert_eq!(clip(&edge), edge);
        assert!(clip(&format!("{edge}é")).contains("+2 bytes"));
    }

    #[test]
    fn fingerprints_hide_the_value() {
        let f = fingerprint("s3cr3t-typed-as-a-user-name");
        assert!(f.starts_with("unknown#") && !f.contains("s3cr3t"));
        assert_eq!(f, fingerprint("s3cr3t-typed-as-a-user-name"));
    }
}
