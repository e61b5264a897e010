//! Refresh tokens (RFC 6749 §6): 256 random bits, stored as their SHA-256, rotated on every use;
//! a spent token presented again revokes its whole family (RFC 9700 §4.14.2) — except once,
//! within `refresh_token_grace` of its rotation while its successor is unused, when it is
//! answered with that same successor: a client whose refresh response was lost in transit
//! retries with the token it still holds, and must not be logged out for it (as Auth0 and Okta
//! allow). The successor is kept for that sealed under a key only the spent token derives.

use super::client_auth::Presented;
use super::dpop::Proof;
use super::form::Form;
use super::token_endpoint::{bind, issued_event, proof_by, require_proof, TokenResponse};
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::secret::{random_id, Secret};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::grants::{RefreshGrace, RefreshToken, Rotation, TokenHash};
use crate::store::{AuthMethod, Client};

/// The key a public client's new refresh token is bound to: the proof's, if it sent one
/// (RFC 9449 §5). A confidential client's refresh tokens are bound to its authentication
/// instead, and stay unbound to a DPoP key.
pub(super) fn public_binding(client: &Client, proof: Option<&Proof>) -> Option<String> {
    (client.auth_method == AuthMethod::None)
        .then(|| proof.map(|p| p.jkt.clone()))
        .flatten()
}

impl AuthServer {
    /// Issue the first refresh token of a new family, for a fresh grant. The write is durable at
    /// the caller's next commit.
    /// Returns the token and its family, the `sid` of the grant's access tokens.
    pub(super) async fn start_refresh_family(
        &self,
        client_id: &str,
        sub: &str,
        scope: &str,
        dpop_jkt: Option<String>,
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
            grace: None,
            dpop_jkt,
        };
        self.refresh_tokens
            .insert_refresh_token(&TokenHash::of(token.expose()), &record)
            .await
            .map_err(OAuthError::from)?;
        Ok((token.expose().to_owned(), family))
    }

    /// RFC 6749 §6: exchange a refresh token for a new access token and a new refresh token.
    /// Public device clients present their `client_id` alone, as at the device endpoint.
    pub(super) async fn refresh_token_grant(
        &self,
        presented: Presented,
        form: &Form,
        proof: Option<&Proof>,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate(presented, true, ctx).await?;
        require_proof(&client, proof)?;
        // Refresh tokens come from the device code grant; a client registered for either may
        // use them.
        if !client.allows_grant(grant::REFRESH_TOKEN) && !client.allows_grant(grant::DEVICE_CODE) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for the refresh_token grant".into(),
            ));
        }
        let presented = form.require("refresh_token")?;
        let presented_hash = TokenHash::of(presented);
        let invalid = |why: &'static str| OAuthError::InvalidGrant(why.into());
        let Some((current, family_revoked)) = self
            .refresh_tokens
            .refresh_token(&presented_hash)
            .await
            .map_err(OAuthError::from)?
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
        // RFC 9449 §5: a bound refresh token is redeemed only with a proof by its key; refused
        // without spending it, so whoever stole it cannot even end the family.
        proof_by(current.dpop_jkt.as_deref(), proof)?;
        if current.spent_at.is_none() && ctx.now >= current.expires_at {
            return Err(invalid("refresh token expired"));
        }
        let user = self
            .users
            .user(&current.sub)
            .await
            .map_err(OAuthError::from)?;
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
            grace: None,
            // A binding carries over; a public client's unbound family becomes bound at its
            // first refresh with a proof (§5: refresh tokens issued to public clients with a
            // proof are bound).
            dpop_jkt: current
                .dpop_jkt
                .clone()
                .or_else(|| public_binding(&client, proof)),
            ..current.clone()
        };
        let grace_secs = self.settings.device.refresh_token_grace;
        let grace = (grace_secs > 0)
            .then(|| {
                Ok::<_, OAuthError>(RefreshGrace {
                    until: ctx.now + grace_secs,
                    successor: hex::encode(TokenHash::of(next.expose()).0),
                    sealed: grace::seal(presented, &current.family, next.expose())?,
                })
            })
            .transpose()?;
        let rotation = self
            .refresh_tokens
            .rotate_refresh_token(
                &presented_hash,
                &TokenHash::of(next.expose()),
                &next_record,
                ctx.now,
                grace.as_ref(),
            )
            .await
            .map_err(OAuthError::from)?;
        let mut successor = next.expose().to_owned();
        let mut event_name = "token.issued";
        match rotation {
            Rotation::Rotated => {}
            Rotation::Retried { sealed } => {
                successor = grace::open(presented, &current.family, &sealed)?;
                event_name = "token.refresh_retried";
            }
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
        let token_type = bind(&mut claims, proof);
        let access_token = self.sign_access_token(&claims);
        let event = issued_event(grant::REFRESH_TOKEN, &claims);
        let event = AuditEvent {
            event: event_name.to_owned(),
            reason: event.reason.map(|r| match event_name {
                "token.issued" => format!("{r} family={}", current.family),
                _ => format!(
                    "{r} family={}; the spent refresh token was presented again within its \
                     grace: same successor returned, once",
                    current.family
                ),
            }),
            ..event
        };
        // Durable before the response: the old token is spent once the new one is out.
        self.record(ctx, event).await?;
        Ok(TokenResponse {
            access_token,
            token_type,
            expires_in: self.settings.access_token_ttl,
            scope: granted,
            refresh_token: Some(successor),
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
            .map_err(OAuthError::from)?
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
                .map_err(OAuthError::from)?;
        }
        self.record(ctx, event).await?;
        Ok(Some(own))
    }
}

/// Sealing a successor under its predecessor: AES-256-GCM with a key derived from the spent
/// refresh token (SHA-256 with a label of its own, so it is not the hash the token is stored
/// under), the family as associated data. Each key seals exactly one plaintext — a token has
/// one successor — so a fixed nonce is safe.
mod grace {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    use sha2::{Digest, Sha256};

    use crate::oauth::OAuthError;

    const LABEL: &[u8] = b"hallmark refresh-token grace v1\0";

    fn key(spent: &str) -> Result<LessSafeKey, OAuthError> {
        let digest = Sha256::new()
            .chain_update(LABEL)
            .chain_update(spent.as_bytes())
            .finalize();
        UnboundKey::new(&AES_256_GCM, &digest)
            .map(LessSafeKey::new)
            .map_err(|_| OAuthError::Internal("cannot make the grace key".into()))
    }

    pub(super) fn seal(spent: &str, family: &str, successor: &str) -> Result<String, OAuthError> {
        let mut bytes = successor.as_bytes().to_vec();
        key(spent)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(family.as_bytes()),
                &mut bytes,
            )
            .map_err(|_| OAuthError::Internal("cannot seal the successor".into()))?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn open(spent: &str, family: &str, sealed: &str) -> Result<String, OAuthError> {
        let corrupt = || OAuthError::Internal("the sealed successor does not open".into());
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| corrupt())?;
        let plain = key(spent)?
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(family.as_bytes()),
                &mut bytes,
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_the_spent_token_opens_its_successor() {
            let sealed = seal("old-token", "fam", "new-token").unwrap();
            assert!(!sealed.contains("new-token"));
            assert_eq!(open("old-token", "fam", &sealed).unwrap(), "new-token");
            assert!(open("other-token", "fam", &sealed).is_err());
            assert!(open("old-token", "other-family", &sealed).is_err());
        }
    }
}
