//! The token endpoint (RFC 6749 §3.2), introspection (RFC 7662) and revocation (RFC 7009).

use serde::Serialize;

use super::access_token::AccessClaims;
use super::client_auth::Presented;
use super::dpop::{Confirmation, DpopError, Proof, ProofRequest};
use super::form::Form;
use super::{grant, scope, token_exchange, AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::Client;

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to a DPoP key (RFC 9449 §5).
    pub token_type: &'static str,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Granted scope (RFC 6749 §5.1: sent when it may differ from the request; we always send it).
    pub scope: String,
    /// A refresh token (RFC 6749 §5.1), for grants that act for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// RFC 8693 §2.2.1 `issued_token_type`, sent by the token exchange grant only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// An introspection response (RFC 7662 §2.2).
#[derive(Debug, Serialize, PartialEq)]
pub struct Introspection {
    /// Whether the token is active.
    pub active: bool,
    /// The claims, when active.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub claims: Option<super::access_token::AccessClaims>,
    /// `Bearer` or `DPoP`, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
}

impl AuthServer {
    /// Handle a token request without a DPoP proof whose credentials and form were read by the
    /// HTTP adapter.
    pub async fn token(
        &self,
        presented: Presented,
        form: Form,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let dpop = ProofRequest::none("POST", self.settings.token_endpoint.clone());
        self.token_with_dpop(presented, form, &dpop, ctx).await
    }

    /// Handle a token request with what it brought for DPoP (RFC 9449 §5): a valid proof binds
    /// the access token (and a public client's refresh token) to the proof's key.
    pub async fn token_with_dpop(
        &self,
        presented: Presented,
        form: Form,
        dpop: &ProofRequest,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let grant_type = form.require("grant_type")?;
        if ![
            grant::CLIENT_CREDENTIALS,
            grant::DEVICE_CODE,
            grant::REFRESH_TOKEN,
            grant::TOKEN_EXCHANGE,
        ]
        .contains(&grant_type)
        {
            return Err(OAuthError::UnsupportedGrantType(
                "unknown grant_type".into(),
            ));
        }
        // §5: the proof is checked before anything is issued. Its jti is recorded now and made
        // durable by the commit every grant makes before it answers.
        let proof = self.check_dpop_proof(dpop, None, ctx.now).await?;
        let proof = proof.as_ref();
        match grant_type {
            grant::CLIENT_CREDENTIALS => {
                self.client_credentials(presented, &form, proof, ctx).await
            }
            grant::DEVICE_CODE => self.device_code_grant(presented, &form, proof, ctx).await,
            grant::REFRESH_TOKEN => self.refresh_token_grant(presented, &form, proof, ctx).await,
            _ => self.token_exchange(presented, &form, proof, ctx).await,
        }
    }

    /// RFC 6749 §4.4: a confidential client gets a token for itself.
    async fn client_credentials(
        &self,
        presented: Presented,
        form: &Form,
        proof: Option<&Proof>,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate(presented, false, ctx).await?;
        require_proof(&client, proof)?;
        if !client.allows_grant(grant::CLIENT_CREDENTIALS) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for client_credentials".into(),
            ));
        }
        let allowed = self.allowed_scopes(&client).await?;
        let granted = scope::grant(form.get("scope"), &allowed)?.join(" ");
        let purpose = token_exchange::purpose(form)?;
        let mut claims =
            self.access_claims(&client.client_id, &client.client_id, &granted, ctx.now);
        claims.purpose = purpose;
        let token_type = bind(&mut claims, proof);
        let access_token = self.sign_access_token(&claims);
        self.record(ctx, issued_event(grant::CLIENT_CREDENTIALS, &claims))
            .await?;
        Ok(TokenResponse {
            access_token,
            token_type,
            expires_in: self.settings.access_token_ttl,
            scope: granted,
            refresh_token: None,
            issued_token_type: None,
        })
    }

    /// RFC 7662: any authenticated confidential client may ask whether a token is active.
    pub async fn introspect(
        &self,
        presented: Presented,
        form: Form,
        ctx: &RequestCtx,
    ) -> Result<Introspection, OAuthError> {
        let caller = self.authenticate(presented, false, ctx).await?;
        let token = form.require("token")?;
        Ok(match self.validate_access_token(token, ctx.now).await {
            Ok(claims) => {
                if claims.client_id != caller.client_id {
                    let event = AuditEvent::new("token.introspected", Outcome::Success)
                        .actor(&caller.client_id)
                        .subject(&claims.sub)
                        .client(&claims.client_id)
                        .reason(format!("jti={}", claims.jti));
                    self.record(ctx, event).await?;
                }
                // RFC 9449 §6.2: the binding is in the claims (`cnf`); the type says so too.
                let token_type = token_type_of(&claims);
                Introspection {
                    active: true,
                    claims: Some(claims),
                    token_type: Some(token_type),
                }
            }
            Err(super::access_token::TokenRejection::Storage(e)) => {
                return Err(OAuthError::Internal(e))
            }
            Err(super::access_token::TokenRejection::Unavailable(e)) => {
                return Err(OAuthError::TemporarilyUnavailable(e))
            }
            Err(why) => {
                tracing::debug!(caller = %caller.client_id, %why, "introspected token inactive");
                Introspection {
                    active: false,
                    claims: None,
                    token_type: None,
                }
            }
        })
    }

    /// RFC 7009: revoke one of the caller's own tokens. Invalid or unknown tokens are answered
    /// with success (§2.2); another client's token is refused (§2.1). A public client
    /// identifies itself by `client_id` alone (§2.1 authenticates confidential clients only), so
    /// a device-flow app can end its own session; it can only ever reach tokens issued to it.
    pub async fn revoke(
        &self,
        presented: Presented,
        form: Form,
        ctx: &RequestCtx,
    ) -> Result<(), OAuthError> {
        let caller = self.authenticate(presented, true, ctx).await?;
        let token = form.require("token")?;
        // RFC 7009 §2.2.1: the hint only speeds up the lookup; an unknown hint is ignored and
        // every type is searched, so a token is never left valid because of a hint.
        let claims = match self.validate_access_token(token, ctx.now).await {
            Ok(c) => c,
            Err(super::access_token::TokenRejection::Storage(e)) => {
                return Err(OAuthError::Internal(e))
            }
            Err(super::access_token::TokenRejection::Unavailable(e)) => {
                return Err(OAuthError::TemporarilyUnavailable(e))
            }
            Err(_) => {
                return match self
                    .revoke_refresh_token(token, &caller.client_id, ctx)
                    .await?
                {
                    Some(false) => Err(OAuthError::UnauthorizedClient(
                        "the token was not issued to this client".into(),
                    )),
                    Some(true) | None => Ok(()),
                };
            }
        };
        let event = AuditEvent::new("token.revoked", Outcome::Success)
            .actor(&caller.client_id)
            .subject(&claims.sub)
            .client(&claims.client_id)
            .reason(format!("jti={}", claims.jti));
        if claims.client_id != caller.client_id {
            let event = AuditEvent {
                outcome: Outcome::Failure,
                ..event
            }
            .reason("token belongs to another client");
            self.record(ctx, event).await?;
            return Err(OAuthError::UnauthorizedClient(
                "the token was not issued to this client".into(),
            ));
        }
        self.tokens
            .revoke_access_token(
                &claims.jti,
                claims.exp.saturating_add(self.settings.clock_skew) + 1,
            )
            .await
            .map_err(OAuthError::from)?;
        self.record(ctx, event).await
    }
}

/// The audit entry for an issued access token: who, for whom, which grant, scope and `jti`.
pub fn issued_event(grant_type: &str, claims: &super::access_token::AccessClaims) -> AuditEvent {
    AuditEvent::new("token.issued", Outcome::Success)
        .actor(&claims.client_id)
        .subject(&claims.sub)
        .client(&claims.client_id)
        .reason(format!(
            "grant={grant_type} scope={} jti={}",
            claims.scope, claims.jti
        ))
}

/// RFC 9449 §5.2: a client registered with `dpop_bound_access_tokens` gets no token without a
/// proof.
pub(super) fn require_proof(client: &Client, proof: Option<&Proof>) -> Result<(), OAuthError> {
    if client.dpop_bound_access_tokens && proof.is_none() {
        return Err(DpopError::Missing.into());
    }
    Ok(())
}

/// Bind `claims` to the proof's key, if there is a proof (RFC 9449 §6.1); the `token_type` of
/// the response (§5).
pub(super) fn bind(claims: &mut AccessClaims, proof: Option<&Proof>) -> &'static str {
    if let Some(p) = proof {
        claims.cnf = Some(Confirmation { jkt: p.jkt.clone() });
    }
    token_type_of(claims)
}

/// `DPoP` for a bound token, else `Bearer`.
pub fn token_type_of(claims: &AccessClaims) -> &'static str {
    if claims.cnf.is_some() {
        "DPoP"
    } else {
        "Bearer"
    }
}

/// A proof by the key `bound` names, when it names one (a bound refresh token or device code).
pub(super) fn proof_by(bound: Option<&str>, proof: Option<&Proof>) -> Result<(), OAuthError> {
    match (bound, proof) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(DpopError::Missing.into()),
        (Some(jkt), Some(p)) if p.jkt == jkt => Ok(()),
        (Some(_), Some(_)) => Err(DpopError::KeyMismatch.into()),
    }
}
