//! Client authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic` and `client_secret_post` (RFC 6749 §2.3.1), `private_key_jwt`
//! (RFC 7523 §2.2 and §3), and public clients identified by `client_id` alone.

use std::sync::Arc;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::form::Form;
use super::jws::Unverified;
use super::{AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{AuthMethod, Client, KeyAlg};
use crate::untrusted::fingerprint;

/// RFC 7523 §2.2 `client_assertion_type`.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the request presented to identify its client. Secrets are zeroed on drop and never
/// printed.
#[non_exhaustive]
pub enum Presented {
    /// `Authorization: Basic`.
    Basic {
        /// client_id.
        client_id: String,
        /// The secret.
        secret: Zeroizing<String>,
    },
    /// `client_id` and `client_secret` in the body.
    Post {
        /// client_id.
        client_id: String,
        /// The secret.
        secret: Zeroizing<String>,
    },
    /// A signed JWT assertion.
    Assertion {
        /// `client_id` from the body, if sent.
        client_id: Option<String>,
        /// The compact JWS.
        assertion: String,
    },
    /// `client_id` alone: a public client.
    Public {
        /// client_id.
        client_id: String,
    },
    /// Nothing at all.
    Nothing,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Basic { client_id, .. } => write!(f, "Basic({client_id})"),
            Presented::Post { client_id, .. } => write!(f, "Post({client_id})"),
            Presented::Assertion { client_id, .. } => write!(f, "Assertion({client_id:?})"),
            Presented::Public { client_id } => write!(f, "Public({client_id})"),
            Presented::Nothing => f.write_str("Nothing"),
        }
    }
}

impl Presented {
    /// The client_id the request claims, before any check.
    pub fn claimed_client_id(&self) -> Option<&str> {
        match self {
            Presented::Basic { client_id, .. }
            | Presented::Post { client_id, .. }
            | Presented::Public { client_id } => Some(client_id),
            Presented::Assertion { client_id, .. } => client_id.as_deref(),
            Presented::Nothing => None,
        }
    }

    /// Read the client's credentials from the `Authorization` header and the form, removing
    /// them from the form. More than one method at once is `invalid_request` (RFC 6749 §2.3).
    pub fn from_request(authorization: Option<&str>, form: &mut Form) -> Result<Self, OAuthError> {
        let body_id = form.take("client_id");
        let body_secret = form.take("client_secret").map(Zeroizing::new);
        let assertion_type = form.take("client_assertion_type");
        let assertion = form.take("client_assertion");
        let methods = usize::from(authorization.is_some())
            + usize::from(body_secret.is_some())
            + usize::from(assertion.is_some() || assertion_type.is_some());
        if methods > 1 {
            return Err(OAuthError::InvalidRequest(
                "more than one client authentication method".into(),
            ));
        }
        if let Some(header) = authorization {
            let (client_id, secret) = parse_basic(header)?;
            if body_id.as_deref().is_some_and(|id| id != client_id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body differs from the Authorization header".into(),
                ));
            }
            return Ok(Presented::Basic { client_id, secret });
        }
        if let Some(secret) = body_secret {
            let client_id = body_id.ok_or_else(|| {
                OAuthError::InvalidRequest("client_secret without client_id".into())
            })?;
            return Ok(Presented::Post { client_id, secret });
        }
        if assertion.is_some() || assertion_type.is_some() {
            if assertion_type.as_deref() != Some(JWT_BEARER_ASSERTION) {
                return Err(OAuthError::InvalidRequest(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
            }
            let assertion = assertion.ok_or_else(|| {
                OAuthError::InvalidRequest("missing parameter: client_assertion".into())
            })?;
            return Ok(Presented::Assertion {
                client_id: body_id,
                assertion,
            });
        }
        Ok(match body_id {
            Some(client_id) => Presented::Public { client_id },
            None => Presented::Nothing,
        })
    }
}

/// Decode `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(header: &str) -> Result<(String, Zeroizing<String>), OAuthError> {
    let bad = || OAuthError::invalid_client("malformed Basic authorization header");
    let (scheme, value) = header.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "Authorization scheme is not Basic",
        ));
    }
    let decoded = Zeroizing::new(STANDARD.decode(value.trim()).map_err(|_| bad())?);
    let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| bad())?
        .into_owned();
    let secret = Zeroizing::new(
        percent_encoding::percent_decode_str(secret)
            .decode_utf8()
            .map_err(|_| bad())?
            .into_owned(),
    );
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// The claims of a client assertion we check (RFC 7523 §3).
#[derive(Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn any(&self, wanted: impl Fn(&str) -> bool) -> bool {
        match self {
            Audience::One(a) => wanted(a),
            Audience::Many(all) => all.iter().any(|a| wanted(a)),
        }
    }
}

/// The `sub` an assertion claims, unverified, for the audit record of a failed authentication.
fn claimed_assertion_sub(assertion: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Sub {
        sub: Option<String>,
    }
    let jws = Unverified::parse(assertion).ok()?;
    let sub = serde_json::from_slice::<Sub>(jws.untrusted_payload())
        .ok()?
        .sub?;
    // Real client ids are short; anything longer is not worth keeping forever.
    (sub.len() <= MAX_JTI_LEN).then_some(sub)
}

/// Longest `jti` we store.
const MAX_JTI_LEN: usize = 256;

impl AuthServer {
    /// Authenticate the client. `allow_public` admits a public client identified by
    /// `client_id` alone (device authorization); otherwise such a request is `invalid_client`.
    /// Failures are audited (`client.auth_failed`) before they are returned.
    pub async fn authenticate(
        &self,
        presented: Presented,
        allow_public: bool,
        ctx: &RequestCtx,
    ) -> Result<Arc<Client>, OAuthError> {
        let claimed = presented.claimed_client_id().map(str::to_owned);
        // Without a body client_id, an assertion names its client only in its (unverified) sub.
        let unnamed_assertion = match (&claimed, &presented) {
            (None, Presented::Assertion { assertion, .. }) => Some(assertion.clone()),
            _ => None,
        };
        let result = self.check_credentials(presented, allow_public, ctx).await;
        if let Err(OAuthError::InvalidClient { reason }) = &result {
            let mut event =
                AuditEvent::new("client.auth_failed", Outcome::Failure).reason(reason.to_string());
            let claimed =
                claimed.or_else(|| unnamed_assertion.as_deref().and_then(claimed_assertion_sub));
            if let Some(id) = claimed {
                // A name that is no client may be a secret typed into the wrong field: keep
                // only its fingerprint.
                let known = self
                    .clients
                    .client(&id)
                    .await
                    .map_err(OAuthError::from)?
                    .is_some();
                event = event.client(if known { id } else { fingerprint(&id) });
            }
            self.record(ctx, event).await?;
        }
        result
    }

    async fn check_credentials(
        &self,
        presented: Presented,
        allow_public: bool,
        ctx: &RequestCtx,
    ) -> Result<Arc<Client>, OAuthError> {
        let by_header = matches!(presented, Presented::Basic { .. });
        match presented {
            Presented::Basic { client_id, secret } | Presented::Post { client_id, secret } => {
                let client = self.active_client(&client_id).await?;
                // RFC 7591 §2: the client registered one method; the other is refused, so a
                // secret meant for a header is never accepted from a body (or the reverse).
                // A device on its factory secret is `client_secret_basic`.
                let used = if by_header {
                    AuthMethod::ClientSecretBasic
                } else {
                    AuthMethod::ClientSecretPost
                };
                if client.secret_hash.is_some() && client.auth_method != used {
                    return Err(OAuthError::invalid_client(format!(
                        "client {client_id} is registered for {} but used {}",
                        client.auth_method.as_str(),
                        used.as_str()
                    )));
                }
                match &client.secret_hash {
                    Some(hash) if hash.matches(&secret) => Ok(client),
                    Some(_) => Err(OAuthError::invalid_client(format!(
                        "wrong secret for client {client_id}"
                    ))),
                    None => Err(OAuthError::invalid_client(format!(
                        "client {client_id} has no secret"
                    ))),
                }
            }
            Presented::Assertion {
                client_id,
                assertion,
            } => {
                self.authenticate_assertion(client_id.as_deref(), &assertion, ctx)
                    .await
            }
            Presented::Public { client_id } => {
                let client = self.active_client(&client_id).await?;
                if allow_public && client.auth_method == AuthMethod::None {
                    Ok(client)
                } else {
                    Err(OAuthError::invalid_client(format!(
                        "client {client_id} sent no credentials"
                    )))
                }
            }
            Presented::Nothing => Err(OAuthError::invalid_client("no client authentication")),
        }
    }

    async fn active_client(&self, client_id: &str) -> Result<Arc<Client>, OAuthError> {
        match self
            .clients
            .client(client_id)
            .await
            .map_err(OAuthError::from)?
        {
            Some(c) if !c.disabled => Ok(c),
            Some(_) => Err(OAuthError::invalid_client(format!(
                "client {client_id} is disabled"
            ))),
            None => Err(OAuthError::invalid_client(format!(
                "unknown client {}",
                fingerprint(client_id)
            ))),
        }
    }

    /// RFC 7523 §3: the assertion's signature by one of the client's keys (algorithm fixed by
    /// the key), `iss` = `sub` = client_id, `aud` naming us, `exp` present and near, `nbf`/`iat`
    /// not in the future, `jti` used once.
    async fn authenticate_assertion(
        &self,
        body_id: Option<&str>,
        assertion: &str,
        ctx: &RequestCtx,
    ) -> Result<Arc<Client>, OAuthError> {
        let (mut client, by_pending_key) = self
            .verify_assertion(body_id, assertion, ctx.endpoint.as_deref(), ctx.now)
            .await?;
        if by_pending_key {
            client = self.promote_pending_key(&client, ctx).await?;
        }
        // The jti must be on disk before we act on the assertion, or a crash could let a replay in.
        self.commit_for(ctx).await?;
        Ok(client)
    }

    /// The synchronous part of assertion authentication (every check, the jti recorded but not
    /// flushed, no pending-key promotion), for the benchmarks. Not an API: requests go through
    /// [`AuthServer::authenticate`].
    #[doc(hidden)]
    pub async fn verify_assertion_uncommitted(
        &self,
        body_id: Option<&str>,
        assertion: &str,
        now: u64,
    ) -> Result<Arc<Client>, OAuthError> {
        self.verify_assertion(body_id, assertion, None, now)
            .await
            .map(|(client, _)| client)
    }

    /// Every check of [`AuthServer::authenticate_assertion`] but the durable commit of the jti.
    /// Returns the client and whether its *pending* key signed (which promotes that key).
    async fn verify_assertion(
        &self,
        body_id: Option<&str>,
        assertion: &str,
        endpoint: Option<&str>,
        now: u64,
    ) -> Result<(Arc<Client>, bool), OAuthError> {
        let jws = Unverified::parse(assertion)
            .map_err(|e| OAuthError::invalid_client(format!("client assertion: {e}")))?;
        let untrusted: AssertionClaims =
            serde_json::from_slice(jws.untrusted_payload()).map_err(|_| {
                OAuthError::invalid_client("client assertion claims are not a JSON object")
            })?;
        let client_id = untrusted
            .sub
            .clone()
            .ok_or_else(|| OAuthError::invalid_client("client assertion has no sub"))?;
        let client_id = client_id.as_str();
        if body_id.is_some_and(|id| id != client_id) {
            return Err(OAuthError::invalid_client(
                "client_id differs from the assertion's sub",
            ));
        }
        let client = self.active_client(client_id).await?;
        let kid = jws.header.kid.as_deref();
        // Registered keys first, then a pending rotation key (DESIGN: first boot).
        let candidates: Vec<(&crate::store::ClientKey, bool)> = client
            .keys
            .iter()
            .map(|k| (k, false))
            .chain(client.pending_key.iter().map(|k| (k, true)))
            .filter(|(k, _)| kid.is_none() || k.kid.as_deref() == kid)
            // A weak Ed25519 key registered before registration refused them proves nothing.
            .filter(|(k, _)| {
                k.alg != KeyAlg::EdDSA || !super::registration::weak_ed25519(&k.public)
            })
            .collect();
        if candidates.is_empty() {
            return Err(OAuthError::invalid_client(format!(
                "client {client_id} has no key matching the assertion"
            )));
        }
        let mut last_err = None;
        let mut verified = None;
        for (key, pending) in candidates {
            match jws.verify(key.alg, &key.public) {
                Ok(_) => {
                    verified = Some(pending);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(by_pending_key) = verified else {
            let why = last_err.map(|e| e.to_string()).unwrap_or_default();
            return Err(OAuthError::invalid_client(format!(
                "client assertion for {client_id}: {why}"
            )));
        };
        // The payload is now trusted.
        let claims = untrusted;
        let s = &self.settings;
        if claims.iss.as_deref() != Some(client_id) {
            return Err(OAuthError::invalid_client(
                "client assertion iss is not the client_id",
            ));
        }
        // RFC 7523 §3: the token endpoint's URL identifies us; so do the issuer (RFC 8414) and
        // the URL of the endpoint being called, which stock libraries send (Authlib does).
        let names_us = |aud: &str| {
            aud == s.token_endpoint
                || aud == s.issuer
                || endpoint.is_some_and(|path| aud.strip_prefix(s.issuer.as_str()) == Some(path))
        };
        if !claims.aud.as_ref().is_some_and(|a| a.any(names_us)) {
            return Err(OAuthError::invalid_client(
                "client assertion aud does not name this server",
            ));
        }
        let skew = s.clock_skew as f64;
        let now_f = now as f64;
        let exp = claims
            .exp
            .ok_or_else(|| OAuthError::invalid_client("client assertion has no exp"))?;
        if !exp.is_finite() || exp + skew <= now_f {
            return Err(OAuthError::invalid_client("client assertion expired"));
        }
        if exp > now_f + s.max_assertion_lifetime as f64 + skew {
            return Err(OAuthError::invalid_client(
                "client assertion exp is too far ahead",
            ));
        }
        for (name, value) in [("nbf", claims.nbf), ("iat", claims.iat)] {
            if value.is_some_and(|v| !v.is_finite() || v > now_f + skew) {
                return Err(OAuthError::invalid_client(format!(
                    "client assertion {name} is in the future"
                )));
            }
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| OAuthError::invalid_client("client assertion has no usable jti"))?;
        // Keep the jti until the assertion could no longer be accepted anyway.
        let keep_until = exp as u64 + s.clock_skew + 1;
        let first_use = self
            .tokens
            .record_assertion_jti(client_id, &jti, keep_until)
            .await
            .map_err(OAuthError::from)?;
        if !first_use {
            return Err(OAuthError::invalid_client(format!(
                "client assertion jti replayed by {client_id}"
            )));
        }
        Ok((client, by_pending_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Form {
        Form::parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap()
    }

    #[test]
    fn basic_header_is_url_decoded() {
        // RFC 6749 §2.3.1 form-encodes both parts before base64.
        let header = format!("Basic {}", STANDARD.encode("a%20b:s%3At%25"));
        let mut f = form("grant_type=x");
        match Presented::from_request(Some(&header), &mut f).unwrap() {
            Presented::Basic { client_id, secret } => {
                assert_eq!(client_id, "a b");
                assert_eq!(secret.as_str(), "s:t%");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let header = format!("Basic {}", STANDARD.encode("a:b"));
        let mut f = form("client_id=a&client_secret=b");
        assert!(matches!(
            Presented::from_request(Some(&header), &mut f),
            Err(OAuthError::InvalidRequest(_))
        ));
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        for h in [
            "Basic",
            "Basic !!!",
            "Bearer abc",
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            let mut f = form("a=1");
            assert!(
                matches!(
                    Presented::from_request(Some(h), &mut f),
                    Err(OAuthError::InvalidClient { .. })
                ),
                "{h}"
            );
        }
    }

    #[test]
    fn wrong_assertion_type_is_invalid_request() {
        let mut f = form("client_assertion_type=urn:x&client_assertion=a.b.c");
        assert!(matches!(
            Presented::from_request(None, &mut f),
            Err(OAuthError::InvalidRequest(_))
        ));
    }

    #[test]
    fn debug_hides_secrets() {
        let p = Presented::Post {
            client_id: "c".into(),
            secret: Zeroizing::new("topsecret".into()),
        };
        assert!(!format!("{p:?}").contains("topsecret"));
    }
}
