//! Scope strings (RFC 6749 §3.3): space-delimited tokens, granted only within what the client
//! registered.

use super::OAuthError;

/// Whether `token` is a valid scope-token: `1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Parse a scope parameter into its tokens, in order, without repeats.
pub fn parse(scope: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for token in scope.split(' ') {
        if !is_scope_token(token) {
            return Err(OAuthError::InvalidScope("malformed scope".into()));
        }
        if !out.iter().any(|t| t == token) {
            out.push(token.to_owned());
        }
    }
    Ok(out)
}

/// The scopes to grant: the request's, which must all be allowed, or all allowed ones when the
/// request names none.
pub fn grant(requested: Option<&str>, allowed: &[String]) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(allowed.to_vec());
    };
    let wanted = parse(requested)?;
    if let Some(extra) = wanted.iter().find(|s| !allowed.contains(s)) {
        // Naming the scope helps the developer and reveals nothing they did not send.
        return Err(OAuthError::InvalidScope(
            format!("scope not allowed for this client: {extra}").into(),
        ));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn absent_means_all_allowed() {
        assert_eq!(grant(None, &allowed()).unwrap(), allowed());
    }

    #[test]
    fn subset_is_granted_and_escalation_refused() {
        assert_eq!(grant(Some("b"), &allowed()).unwrap(), vec!["b".to_string()]);
        assert_eq!(grant(Some("b b a"), &allowed()).unwrap().len(), 2);
        assert!(matches!(
            grant(Some("a c"), &allowed()),
            Err(OAuthError::InvalidScope(_))
        ));
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in ["a  b", " a", "a\"", "a\\b", "é"] {
            assert!(grant(Some(bad), &allowed()).is_err(), "{bad}");
        }
    }
}
