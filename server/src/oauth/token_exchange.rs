//! The token exchange grant (RFC 8693): a confidential client trades a subject token (and
//! optionally an actor token) for a new access token that acts for the same subject, with scope
//! that may only narrow, an `act` claim naming the chain of actors, and a lifetime capped by the
//! subject token's. The new token's lineage (every token it was derived from) is recorded so
//! that it stays active only while they do. Also the `purpose` request parameter the token
//! endpoint shares with client_credentials.

use super::access_token::{AccessClaims, Actor, TokenRejection};
use super::client_auth::Presented;
use super::dpop::Proof;
use super::form::Form;
use super::token_endpoint::{bind, require_proof, token_type_of, TokenResponse};
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{Ancestor, Client, Lineage};

/// RFC 8693 §3: the token type URI of an OAuth 2.0 access token, the only type we accept and
/// issue.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Longest `purpose` value.
pub const MAX_PURPOSE_LEN: usize = 64;

/// The optional `purpose` parameter: 1–64 characters of `A-Z a-z 0-9 . _ : -`, or
/// `invalid_request`. The value lands in the token's `purpose` claim.
pub fn purpose(form: &Form) -> Result<Option<String>, OAuthError> {
    match form.get("purpose") {
        None => Ok(None),
        Some(p) if is_purpose(p) => Ok(Some(p.to_owned())),
        Some(_) => Err(OAuthError::InvalidRequest(
            "purpose must be 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
        )),
    }
}

/// Whether `value` is a well-formed `purpose`.
pub fn is_purpose(value: &str) -> bool {
    (1..=MAX_PURPOSE_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The `act` claim of an exchanged token (RFC 8693 §4.1): the current actor outermost, the
/// subject token's chain (its prior actors) nested inside.
pub fn delegate(actor: &str, subject_act: Option<&Actor>) -> Actor {
    Actor::new(actor, subject_act.cloned())
}

/// The validated tokens an exchange consumed, for its audit entry, and the new token's lineage.
struct Exchanged {
    subject: AccessClaims,
    actor: Option<AccessClaims>,
    lineage: Lineage,
}

/// Why an exchange was refused, for the audit entry: the code and the description the client
/// gets, which never carry a token.
fn refusal_reason(e: &OAuthError) -> String {
    match e.description() {
        Some(d) => format!("{}: {d}", e.code()),
        None => e.code().to_owned(),
    }
}

/// Why a presented token is not usable, in fixed words (never the token, nor anything copied
/// out of it such as a header's `alg`).
fn rejection_words(why: &TokenRejection) -> &'static str {
    match why {
        TokenRejection::Jws(_) => "malformed or not signed by this server",
        TokenRejection::Type => "not an access token (typ)",
        TokenRejection::UnknownKey => "signed by an unknown key",
        TokenRejection::Claims => "claims are not an access token's",
        TokenRejection::Issuer => "wrong issuer",
        TokenRejection::Audience => "wrong audience",
        TokenRejection::Expired => "expired",
        TokenRejection::NotYetValid => "not yet valid",
        TokenRejection::Revoked => "revoked",
        TokenRejection::ClientGone => "its client is disabled or deleted",
        TokenRejection::LineageUnknown => "exchanged, but not from tokens this server recorded",
        TokenRejection::SourceRevoked => "a token it was exchanged from is revoked",
        TokenRejection::SourceClientGone => {
            "the client of a token it was exchanged from is disabled or deleted"
        }
        _ => "not active",
    }
}

impl AuthServer {
    /// RFC 8693 §2.1: exchange a subject token (and an optional actor token) for a new access
    /// token. Only confidential clients registered for the grant may ask. Every refusal after
    /// client authentication is audited (`token.exchange_refused`); authentication failures are
    /// audited by [`AuthServer::authenticate`].
    pub(super) async fn token_exchange(
        &self,
        presented: Presented,
        form: &Form,
        proof: Option<&Proof>,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate(presented, false, ctx).await?;
        require_proof(&client, proof)?;
        match self.exchange(&client, form, proof, ctx.now).await {
            Ok((
                access_token,
                claims,
                Exchanged {
                    subject,
                    actor,
                    lineage,
                },
            )) => {
                // Durable with the audit entry below (one group commit), so no token leaves
                // without the record that ties it to its sources; kept until the token's exp
                // and the skew, as a revocation is.
                self.tokens
                    .record_lineage(
                        &claims.jti,
                        &lineage,
                        claims
                            .exp
                            .saturating_add(self.settings.clock_skew)
                            .saturating_add(1),
                    )
                    .await
                    .map_err(OAuthError::from)?;
                let depth = claims.delegation_depth();
                let actor = actor.map_or_else(
                    || "actor=client".to_owned(),
                    |a| format!("actor_sub={} actor_jti={}", a.sub, a.jti),
                );
                let event = AuditEvent::new("token.exchanged", Outcome::Success)
                    .actor(&client.client_id)
                    .subject(&claims.sub)
                    .client(&client.client_id)
                    .reason(format!(
                        "grant={} subject_jti={} subject_client={} {actor} jti={} depth={depth} \
                         scope={}",
                        grant::TOKEN_EXCHANGE,
                        subject.jti,
                        subject.client_id,
                        claims.jti,
                        claims.scope
                    ));
                self.record(ctx, event).await?;
                Ok(TokenResponse {
                    access_token,
                    token_type: token_type_of(&claims),
                    expires_in: claims.exp.saturating_sub(ctx.now),
                    scope: claims.scope,
                    refresh_token: None,
                    issued_token_type: Some(ACCESS_TOKEN_TYPE),
                })
            }
            Err(e @ (OAuthError::Internal(_) | OAuthError::TemporarilyUnavailable(_))) => Err(e),
            Err(e) => {
                let event = AuditEvent::new("token.exchange_refused", Outcome::Failure)
                    .actor(&client.client_id)
                    .client(&client.client_id)
                    .reason(refusal_reason(&e));
                self.record(ctx, event).await?;
                Err(e)
            }
        }
    }

    /// Every check of the exchange and the new token: (token, its claims, the tokens it came
    /// from). Writes nothing.
    async fn exchange(
        &self,
        client: &Client,
        form: &Form,
        proof: Option<&Proof>,
        now: u64,
    ) -> Result<(String, AccessClaims, Exchanged), OAuthError> {
        let invalid = |why: String| OAuthError::InvalidRequest(why.into());
        if !client.allows_grant(grant::TOKEN_EXCHANGE) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for the token-exchange grant".into(),
            ));
        }
        // §2.1: we issue access tokens only.
        if form
            .get("requested_token_type")
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
        {
            return Err(invalid(format!(
                "requested_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        let subject_token = form.require("subject_token")?;
        let subject_type = form.require("subject_token_type")?;
        if subject_type != ACCESS_TOKEN_TYPE {
            return Err(invalid(format!(
                "subject_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        // §2.1: actor_token_type is REQUIRED when actor_token is present and MUST NOT be
        // included otherwise.
        let actor_token = match (form.get("actor_token"), form.get("actor_token_type")) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid("missing parameter: actor_token_type".into())),
            (None, Some(_)) => {
                return Err(invalid(
                    "actor_token_type was sent without actor_token".into(),
                ))
            }
            (Some(_), Some(t)) if t != ACCESS_TOKEN_TYPE => {
                return Err(invalid(format!(
                    "actor_token_type must be {ACCESS_TOKEN_TYPE}"
                )))
            }
            (Some(token), Some(_)) => Some(token),
        };
        // §2.1: audience and resource name where the token will be used; we mint for one.
        for name in ["audience", "resource"] {
            if form.get(name).is_some_and(|v| v != self.settings.audience) {
                return Err(OAuthError::InvalidTarget(
                    format!("{name} is not one this server issues tokens for").into(),
                ));
            }
        }
        let purpose_param = purpose(form)?;

        // §2.2.2: an invalid subject or actor token is invalid_request.
        let (subject, subject_lineage) = self
            .usable_token("subject_token", subject_token, now)
            .await?;
        let actor_claims = match actor_token {
            None => None,
            Some(token) => {
                let (claims, _) = self.usable_token("actor_token", token, now).await?;
                // An actor token stands for the requesting client's own identity (its own
                // client_credentials token, or a person's token it got through a grant that
                // person approved); another client's token would let it borrow someone else's.
                if claims.client_id != client.client_id {
                    return Err(invalid("actor_token was not issued to this client".into()));
                }
                // An exchanged token carries its subject's `sub` under this client's id: as an
                // actor it would name that subject as acting and drop this client from the
                // chain. Actors are first-hand.
                if claims.act.is_some() {
                    return Err(invalid(
                        "actor_token is itself an exchanged token; present a first-hand one".into(),
                    ));
                }
                Some(claims)
            }
        };
        let actor = actor_claims
            .as_ref()
            .map_or_else(|| client.client_id.clone(), |a| a.sub.clone());

        // §4.1: the current actor outermost, the subject token's actors nested as prior ones.
        let act = delegate(&actor, subject.act.as_ref());
        if act.depth() > self.settings.max_delegation_depth {
            return Err(invalid("delegation chain too deep".into()));
        }

        let allowed = self.allowed_scopes(client).await?;
        let granted = narrowed_scope(form.get("scope"), &subject, &allowed)?;

        // A purpose narrows what a token is for; an exchange may keep it, never change it.
        if let (Some(held), Some(asked)) = (&subject.purpose, &purpose_param) {
            if held != asked {
                return Err(invalid(
                    "purpose differs from the subject token's purpose".into(),
                ));
            }
        }

        // An exchanged token never outlives its subject token, nor its actor token.
        let exp = (now + self.settings.access_token_ttl)
            .min(subject.exp)
            .min(actor_claims.as_ref().map_or(u64::MAX, |a| a.exp));
        if exp <= now {
            return Err(invalid("subject_token or actor_token has expired".into()));
        }
        let mut claims = self.access_claims(&subject.sub, &client.client_id, &granted, now);
        claims.exp = exp;
        claims.act = Some(act);
        claims.purpose = purpose_param.or_else(|| subject.purpose.clone());
        // RFC 9449 leaves exchange to the server: the new token keeps the subject token's
        // binding (whoever uses it must hold that key, as for the subject token), unless the
        // requesting client binds it to its own key with a proof.
        claims.cnf = subject.cnf.clone();
        bind(&mut claims, proof);
        let lineage = lineage(&subject, subject_lineage, actor_claims.as_ref());
        Ok((
            self.sign_access_token(&claims),
            claims,
            Exchanged {
                subject,
                actor: actor_claims,
                lineage,
            },
        ))
    }

    /// `token` validated as one of our access tokens, with its lineage if it was exchanged, or
    /// `invalid_request` naming `param`.
    async fn usable_token(
        &self,
        param: &'static str,
        token: &str,
        now: u64,
    ) -> Result<(AccessClaims, Option<Lineage>), OAuthError> {
        match self.validate_with_lineage(token, now).await {
            Ok(found) => Ok(found),
            Err(TokenRejection::Storage(e)) => Err(OAuthError::Internal(e)),
            Err(TokenRejection::Unavailable(e)) => Err(OAuthError::TemporarilyUnavailable(e)),
            Err(why) => Err(OAuthError::InvalidRequest(
                format!(
                    "{param} is not an active access token: {}",
                    rejection_words(&why)
                )
                .into(),
            )),
        }
    }
}

/// The lineage of a token exchanged from `subject` (and `actor`): both, then everything the
/// subject token was itself exchanged from, so one flat record names every ancestor and a
/// revoked grand-parent ends the grand-child. Actor tokens are first-hand: they add only
/// themselves.
fn lineage(
    subject: &AccessClaims,
    prior: Option<Lineage>,
    actor: Option<&AccessClaims>,
) -> Lineage {
    let prior = prior.map(|l| l.ancestors).unwrap_or_default();
    let mut ancestors = Vec::with_capacity(prior.len() + 2);
    ancestors.push(Ancestor {
        jti: subject.jti.clone(),
        client_id: subject.client_id.clone(),
        sid: subject.sid.clone(),
    });
    if let Some(actor) = actor {
        ancestors.push(Ancestor {
            jti: actor.jti.clone(),
            client_id: actor.client_id.clone(),
            sid: actor.sid.clone(),
        });
    }
    ancestors.extend(prior);
    Lineage { ancestors }
}

/// The scope of an exchanged token: the request's, which must lie within both the subject
/// token's scope and the client's registration; or, when the request names none, everything the
/// two share. Nothing at all is `invalid_scope`. Scope only ever narrows (RFC 8693 §5).
fn narrowed_scope(
    requested: Option<&str>,
    subject: &AccessClaims,
    registered: &[String],
) -> Result<String, OAuthError> {
    let allowed: Vec<String> = subject
        .scope
        .split(' ')
        .filter(|s| !s.is_empty() && registered.iter().any(|r| r == s))
        .map(str::to_owned)
        .collect();
    if let Some(requested) = requested {
        let wanted = scope::parse(requested)?;
        if let Some(extra) = wanted.iter().find(|s| !allowed.contains(s)) {
            return Err(OAuthError::InvalidScope(
                format!("scope not held by both the subject token and this client: {extra}").into(),
            ));
        }
        return Ok(wanted.join(" "));
    }
    if allowed.is_empty() {
        return Err(OAuthError::InvalidScope(
            "the subject token and this client share no scope".into(),
        ));
    }
    Ok(allowed.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(scope: &str, act: Option<Actor>) -> AccessClaims {
        AccessClaims {
            iss: "https://as.example".into(),
            sub: "ann".into(),
            aud: "https://as.example".into(),
            exp: 200,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            client_id: "c".into(),
            scope: scope.into(),
            act,
            purpose: None,
            sid: None,
            cnf: None,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn delegation_nests_the_current_actor_outermost() {
        let first = delegate("b", None);
        assert_eq!(first.depth(), 1);
        let second = delegate("c", Some(&first));
        assert_eq!(second.depth(), 2);
        assert_eq!(second.sub, "c");
        assert_eq!(second.act.as_deref().map(|a| a.sub.as_str()), Some("b"));
        assert_eq!(
            serde_json::to_value(&second).unwrap(),
            serde_json::json!({"sub": "c", "act": {"sub": "b"}})
        );
        assert_eq!(claims("a", None).delegation_depth(), 0);
        assert_eq!(claims("a", Some(second)).delegation_depth(), 2);
    }

    #[test]
    fn lineage_names_subject_actor_and_the_subjects_own_ancestors() {
        let ancestor = |jti: &str, client_id: &str| Ancestor {
            jti: jti.into(),
            client_id: client_id.into(),
            sid: None,
        };
        let mut subject = claims("a", None);
        subject.jti = "s".into();
        subject.client_id = "cs".into();
        assert_eq!(
            lineage(&subject, None, None).ancestors,
            vec![ancestor("s", "cs")]
        );
        let mut actor = claims("a", None);
        actor.jti = "x".into();
        actor.client_id = "cx".into();
        let prior = Lineage {
            ancestors: vec![ancestor("p", "cp"), ancestor("q", "cq")],
        };
        assert_eq!(
            lineage(&subject, Some(prior), Some(&actor)).ancestors,
            vec![
                ancestor("s", "cs"),
                ancestor("x", "cx"),
                ancestor("p", "cp"),
                ancestor("q", "cq")
            ]
        );
    }

    #[test]
    fn depth_counts_a_deep_chain_without_recursion() {
        let mut chain = Actor::new("0", None);
        for i in 1..10_000 {
            chain = Actor::new(&i.to_string(), Some(chain));
        }
        assert_eq!(chain.depth(), 10_000);
        // Dropping a Box chain recurses; unwind it by hand so the test itself stays shallow.
        let mut next = chain.act.take();
        while let Some(mut a) = next {
            next = a.act.take();
        }
    }

    #[test]
    fn claims_without_act_or_purpose_serialise_as_before() {
        let json = serde_json::to_value(claims("a b", None)).unwrap();
        assert!(json.get("act").is_none() && json.get("purpose").is_none());
        let back: AccessClaims = serde_json::from_value(json).unwrap();
        assert_eq!(back, claims("a b", None));
    }

    #[test]
    fn absurdly_nested_act_does_not_parse() {
        // serde_json refuses nesting beyond its recursion limit instead of exhausting the stack.
        let mut act = String::from("{\"sub\":\"x\"}");
        for _ in 0..1000 {
            act = format!("{{\"sub\":\"x\",\"act\":{act}}}");
        }
        let json = format!(
            "{{\"iss\":\"i\",\"sub\":\"s\",\"aud\":\"a\",\"exp\":1,\"iat\":1,\"nbf\":1,\"jti\":\"j\",\"client_id\":\"c\",\"scope\":\"\",\"act\":{act}}}"
        );
        assert!(serde_json::from_str::<AccessClaims>(&json).is_err());
    }

    #[test]
    fn purpose_accepts_only_short_plain_values() {
        for good in ["telemetry", "a", "fw:update-1.2_x", &"p".repeat(64)] {
            assert!(is_purpose(good), "{good}");
            assert_eq!(
                purpose(&form(&[("purpose", good)])).unwrap().as_deref(),
                Some(good)
            );
        }
        for bad in [
            "",
            "two words",
            "slash/no",
            "é",
            "a\"b",
            "tab\t",
            &"p".repeat(65),
        ] {
            assert!(!is_purpose(bad), "{bad:?}");
        }
        assert!(matches!(
            purpose(&form(&[("purpose", "no way")])),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert_eq!(purpose(&form(&[])).unwrap(), None);
    }

    #[test]
    fn scope_only_narrows() {
        let registered: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let subject = claims("a b d", None);
        assert_eq!(narrowed_scope(None, &subject, &registered).unwrap(), "a b");
        assert_eq!(
            narrowed_scope(Some("b"), &subject, &registered).unwrap(),
            "b"
        );
        for escalation in ["c", "d", "a c"] {
            assert!(
                matches!(
                    narrowed_scope(Some(escalation), &subject, &registered),
                    Err(OAuthError::InvalidScope(_))
                ),
                "{escalation}"
            );
        }
        assert!(matches!(
            narrowed_scope(None, &claims("x", None), &registered),
            Err(OAuthError::InvalidScope(_))
        ));
        assert!(matches!(
            narrowed_scope(None, &claims("", None), &registered),
            Err(OAuthError::InvalidScope(_))
        ));
    }

    #[test]
    fn refusal_reasons_carry_the_code_and_description() {
        let e = OAuthError::InvalidRequest("delegation chain too deep".into());
        assert_eq!(
            refusal_reason(&e),
            "invalid_request: delegation chain too deep"
        );
    }

    proptest::proptest! {
        /// Invariant (RFC 8693 §5): an exchange only narrows. Whatever is requested, the
        /// exchanged scope lies within both the subject token's scope and the client's
        /// registration.
        #[test]
        fn an_exchange_never_widens(
            requested in proptest::option::of(proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "c", "d", "x"]), 0..5)),
            subject in proptest::sample::subsequence(vec!["a", "b", "d", "x"], 0..=4),
            registered in proptest::sample::subsequence(vec!["a", "b", "c"], 0..=3),
        ) {
            let registered: Vec<String> = registered.into_iter().map(str::to_owned).collect();
            let requested = requested.map(|r| r.join(" "));
            let subject = claims(&subject.join(" "), None);
            if let Ok(scope) = narrowed_scope(requested.as_deref(), &subject, &registered) {
                for granted in scope.split(' ') {
                    proptest::prop_assert!(registered.iter().any(|r| r == granted));
                    proptest::prop_assert!(subject.scope.split(' ').any(|s| s == granted));
                }
            }
        }
    }
}
