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

/// Most scope-tokens one scope parameter may name. Real requests name a handful; the bound keeps
/// the work per request small whatever a client sends.
pub const MAX_SCOPE_TOKENS: usize = 64;
/// Longest scope-token accepted, in bytes.
pub const MAX_SCOPE_TOKEN_LEN: usize = 128;

/// Parse a scope parameter into its tokens, in order, without repeats. At most
/// [`MAX_SCOPE_TOKENS`] tokens of at most [`MAX_SCOPE_TOKEN_LEN`] bytes each; linear in the
/// input's length.
pub fn parse(scope: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, token) in scope.split(' ').enumerate() {
        if n >= MAX_SCOPE_TOKENS {
            return Err(OAuthError::InvalidScope(
                format!("more than {MAX_SCOPE_TOKENS} scopes").into(),
            ));
        }
        if token.len() > MAX_SCOPE_TOKEN_LEN {
            return Err(OAuthError::InvalidScope(
                format!("a scope is longer than {MAX_SCOPE_TOKEN_LEN} characters").into(),
            ));
        }
        if !is_scope_token(token) {
            return Err(OAuthError::InvalidScope("malformed scope".into()));
        }
        if seen.insert(token) {
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
    fn huge_scopes_are_refused_quickly() {
        // 10,500 distinct tokens (62 KB): quadratic dedup took seconds per request.
        let many: Vec<String> = (0..10_500).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            parse(&many.join(" ")),
            Err(OAuthError::InvalidScope(_))
        ));
        let at_limit: Vec<String> = (0..MAX_SCOPE_TOKENS).map(|i| format!("s{i}")).collect();
        assert_eq!(parse(&at_limit.join(" ")).unwrap().len(), MAX_SCOPE_TOKENS);
        assert!(parse(&"a".repeat(MAX_SCOPE_TOKEN_LEN)).is_ok());
        assert!(parse(&"a".repeat(MAX_SCOPE_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in ["a  b", " a", "a\"", "a\\b", "é"] {
            assert!(grant(Some(bad), &allowed()).is_err(), "{bad}");
        }
    }

    /// A scope parameter built from a small vocabulary, so that requests hit allowed scopes,
    /// disallowed ones, repeats and malformed separators often.
    fn scope_param() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        proptest::collection::vec(
            proptest::sample::select(vec!["a", "b", "c", "d", "admin", "", "a\"", "é"]),
            0..8,
        )
        .prop_map(|tokens| tokens.join(" "))
    }

    proptest::proptest! {
        /// Invariant: a grant never widens. Whatever is requested, every granted scope is one
        /// the client registered, none is granted twice, and granting again from the result
        /// (a refresh or an exchange narrowing it) gives a subset of it.
        #[test]
        fn a_grant_never_widens(
            requested in proptest::option::of(scope_param()),
            narrower in proptest::option::of(scope_param()),
            allowed in proptest::sample::subsequence(vec!["a", "b", "c"], 0..=3),
        ) {
            let allowed: Vec<String> = allowed.into_iter().map(str::to_owned).collect();
            if let Ok(granted) = grant(requested.as_deref(), &allowed) {
                proptest::prop_assert!(granted.iter().all(|s| allowed.contains(s)));
                let unique: std::collections::HashSet<&String> = granted.iter().collect();
                proptest::prop_assert_eq!(unique.len(), granted.len());
                if let Ok(again) = grant(narrower.as_deref(), &granted) {
                    proptest::prop_assert!(again.iter().all(|s| granted.contains(s)));
                }
            }
        }

        /// What `parse` accepts serialises (joined by spaces) to a parameter that parses to
        /// the same tokens.
        #[test]
        fn parsed_scopes_round_trip(param in scope_param()) {
            if let Ok(tokens) = parse(&param) {
                proptest::prop_assert_eq!(parse(&tokens.join(" ")).ok(), Some(tokens));
            }
        }
    }
}
