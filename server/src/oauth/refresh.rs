//! Refresh tokens (RFC 6749 §6): 256 random bits, stored as their SHA-256, rotated on every use;
//! a spent token presented again revokes its whole family (RFC 9700 §4.14.2).

use super::client_auth::Presented;
use super::form::Form;
use super::token_endpoint::{issued_event, TokenResponse};
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::secret::{random_id, Secret};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::grants::{RefreshToken, Rotation, TokenHash};

impl AuthServer {
    /// Issue the first refresh token of a new family, for a fresh grant. The write is durable at
    /// the caller's next commit.
    /// Returns the token and its family, the `sid` of the grant's access tokens.
    pub(super) async fn start_refresh_family(
        &self,
        client_id: &str,
        sub: &str,
        scope: &str,
        now: u64,
    ) -> Result<(String, String), OAuthError> {
        let token = Secret::generate();
        let family = random_id(16);
        let record = RefreshToken {
            family: family.clone(),
            client_id: client_id.to_owned(),
            sub: sub.to_owned(),
            scope: scope.to_owned(),
            issued_at: now,
            expires_at: now + self.settings.device.refresh_token_ttl,
            spent_at: None,
        };
        self.refresh_tokens
            .insert_refresh_token(&TokenHash::of(token.expose()), &record)
            .await
            .map_err(OAuthError::internal)?;
        Ok((token.expose().to_owned(), family))
    }

    /// RFC 6749 §6: exchange a refresh token for a new access token and a new refresh token.
    /// Public device clients present their `client_id` alone, as at the device endpoint.
    pub(super) async fn refresh_token_grant(
        &self,
        presented: Presented,
        form: &Form,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate(presented, true, ctx).await?;
        // Refresh tokens come from the device code grant; a client registered for either may
        // use them.
        if !client.allows_grant(grant::REFRESH_TOKEN) && !client.allows_grant(grant::DEVICE_CODE) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for the refresh_token grant".into(),
            ));
        }
        let presented_hash = TokenHash::of(form.require("refresh_token")?);
        let invalid = |why: &'static str| OAuthError::InvalidGrant(why.into());
        let Some((current, family_revoked)) = self
            .refresh_tokens
            .refresh_token(&presented_hash)
            .await
            .map_err(OAuthError::internal)?
        else {
            return Err(invalid("unknown refresh token"));
        };
        // §6: the token must have been issued to this client. Someone else's token is refused
        // without spending it, or any client could revoke any family.
        if current.client_id != client.client_id {
            let event = AuditEvent::new("token.refresh_refused", Outcome::Failure)
                .actor(&client.client_id)
                .subject(&current.sub)
                .client(&current.client_id)
                .reason(format!(
                    "presented by another client; family={}",
                    current.family
                ));
            self.record(ctx, event).await?;
            return Err(invalid("refresh token was issued to another client"));
        }
        if family_revoked {
            return Err(invalid("refresh token was revoked"));
        }
        if current.spent_at.is_none() && ctx.now >= current.expires_at {
            return Err(invalid("refresh token expired"));
        }
        let user = self
            .users
            .user(&current.sub)
            .await
            .map_err(OAuthError::internal)?;
        if user.is_none_or(|u| u.disabled) {
            return Err(invalid(
                "the user of this refresh token is gone or disabled",
            ));
        }
        // What the client may hold now bounds the family too: a device whose scopes shrank
        // since the grant refreshes only what is left.
        let allowed = self.allowed_scopes(&client).await?;
        let original: Vec<String> = current
            .scope
            .split(' ')
            .filter(|s| !s.is_empty() && allowed.iter().any(|a| a == s))
            .map(str::to_owned)
            .collect();
        // §6: the new scope may narrow the original, never widen it.
        let granted = scope::grant(form.get("scope"), &original)?.join(" ");
        let next = Secret::generate();
        let next_record = RefreshToken {
            issued_at: ctx.now,
            expires_at: ctx.now + self.settings.device.refresh_token_ttl,
            spent_at: None,
            ..current.clone()
        };
        let rotation = self
            .refresh_tokens
            .rotate_refresh_token(
                &presented_hash,
                &TokenHash::of(next.expose()),
                &next_record,
                ctx.now,
            )
            .await
            .map_err(OAuthError::internal)?;
        match rotation {
            Rotation::Rotated => {}
            Rotation::Replayed => {
                let event = AuditEvent::new("token.refresh_replayed", Outcome::Failure)
                    .actor(&client.client_id)
                    .subject(&current.sub)
                    .client(&client.client_id)
                    .reason(format!(
                        "spent refresh token presented again; family={} revoked",
                        current.family
                    ));
                self.record(ctx, event).await?;
                return Err(invalid(
                    "refresh token was already used; its family is revoked",
                ));
            }
            Rotation::FamilyRevoked => return Err(invalid("refresh token was revoked")),
            _ => return Err(invalid("unknown refresh token")),
        }
        let mut claims = self.access_claims(&current.sub, &client.client_id, &granted, ctx.now);
        claims.sid = Some(current.family.clone());
        let access_token = self.sign_access_token(&claims);
        let event = issued_event(grant::REFRESH_TOKEN, &claims);
        let event = AuditEvent {
            reason: event
                .reason
                .map(|r| format!("{r} family={}", current.family)),
            ..event
        };
        // Durable before the response: the old token is spent once the new one is out.
        self.record(ctx, event).await?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.settings.access_token_ttl,
            scope: granted,
            refresh_token: Some(next.expose().to_owned()),
            issued_token_type: None,
        })
    }

    /// RFC 7009 §2.1 for refresh tokens: revoking one revokes its family. `Ok(None)` when the
    /// token is not a refresh token we know; `Ok(Some(false))` when it belongs to another client.
    pub(super) async fn revoke_refresh_token(
        &self,
        token: &str,
        caller: &str,
        ctx: &RequestCtx,
    ) -> Result<Option<bool>, OAuthError> {
        let Some((record, _)) = self
            .refresh_tokens
            .refresh_token(&TokenHash::of(token))
            .await
            .map_err(OAuthError::internal)?
        else {
            return Ok(None);
        };
        let own = record.client_id == caller;
        let event = AuditEvent::new(
            "token.revoked",
            if own {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        )
        .actor(caller)
        .subject(&record.sub)
        .client(&record.client_id)
        .reason(if own {
            format!("refresh token family={}", record.family)
        } else {
            "refresh token belongs to another client".to_owned()
        });
        if own {
            self.refresh_tokens
                .revoke_refresh_family(&record.family, ctx.now)
                .await
                .map_err(OAuthError::internal)?;
        }
        self.record(ctx, event).await?;
        Ok(Some(own))
    }
}
