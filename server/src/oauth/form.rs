//! `application/x-www-form-urlencoded` request bodies (RFC 6749 §3.2): parsed by
//! serde_urlencoded, with repeated parameters refused as the RFC requires.

use std::collections::HashMap;

use super::OAuthError;

/// A parsed form: each parameter at most once, empty values treated as absent (RFC 6749 §3.1).
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    /// Parse a body; `content_type` must be the form media type.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, OAuthError> {
        let is_form = content_type
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|ct| {
                ct.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(OAuthError::InvalidRequest(
                "Content-Type must be application/x-www-form-urlencoded".into(),
            ));
        }
        // serde_urlencoded decodes invalid UTF-8 lossily (to U+FFFD), which would let two
        // different bodies mean the same thing; refuse it instead.
        let utf8 = body
            .split(|b| *b == b'&' || *b == b'=')
            .all(|part| percent_encoding::percent_decode(part).decode_utf8().is_ok());
        if !utf8 {
            return Err(OAuthError::InvalidRequest("body is not UTF-8".into()));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| OAuthError::InvalidRequest("body is not a valid form".into()))?;
        Self::from_pairs(pairs)
    }

    /// A form from name/value pairs, with the same rules as [`Form::parse`].
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            if map.insert(k, v).is_some() {
                return Err(OAuthError::InvalidRequest(
                    "a parameter appears more than once".into(),
                ));
            }
        }
        Ok(Form(map))
    }

    /// A parameter, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Remove and return a parameter.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// A required parameter, or `invalid_request` naming it.
    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter: {name}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn parses_and_refuses_repeats() {
        let f = Form::parse(CT, b"a=1&b=x%20y&c=").unwrap();
        assert_eq!(f.get("b"), Some("x y"));
        assert_eq!(f.get("c"), None);
        assert!(Form::parse(CT, b"a=1&a=2").is_err());
    }

    #[test]
    fn refuses_other_content_types() {
        assert!(Form::parse(Some("application/json"), b"{}").is_err());
        assert!(Form::parse(None, b"a=1").is_err());
        assert!(Form::parse(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"a=1"
        )
        .is_ok());
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert!(Form::parse(CT, b"a=%ff%fe").is_err());
    }
}
