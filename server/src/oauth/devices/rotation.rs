//! A device's new key at `POST /oauth2/device-credentials` (first-boot rotation and rekey): the
//! device, authenticated by its current credential, presents the key; with `attestation =
//! "required"` the server answers with a credential-activation challenge made in software
//! against the EK registered for the device (TPM 2.0 Part 1 §24: TPM2_MakeCredential), and the
//! key becomes *pending* only once the device returns the secret its TPM recovered with
//! TPM2_ActivateCredential — which only the TPM holding that EK can do, and only for a loaded
//! object whose Name is the presented public area's, a non-exportable signing key. The key's
//! first `private_key_jwt` use then promotes it (see [`AuthServer::promote_pending_key`]).
//!
//! Every step is idempotent for the device: presenting the key again draws a fresh challenge
//! (a challenge lost to a power cut is simply asked again), and presenting an already pending
//! key answers `pending`.

use std::sync::Arc;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::super::client_auth::Presented;
use super::super::registration::parse_jwk;
use super::super::{AuthServer, OAuthError, RequestCtx};
use crate::attest::{make_credential, TpmPublic};
use crate::oauth::Attestation;
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{AuthMethod, Client, ClientKey, Device, KeyAlg, KeyChallenge};

/// How long a challenge may be answered: 5 minutes.
pub const CHALLENGE_LIFETIME: u64 = 300;
/// Bytes of the credential a challenge protects (a SHA-256 digest's worth).
const CREDENTIAL_LEN: usize = 32;

/// What a device presents for its new key.
#[derive(Debug)]
pub struct KeyPresentation {
    /// The key's public JWK (EC P-256).
    pub jwk: serde_json::Value,
    /// Its TPM2B_PUBLIC as the TPM reports it, to be challenged.
    pub tpm_public: Option<Vec<u8>>,
    /// The secret recovered by TPM2_ActivateCredential, answering a challenge.
    pub activated_secret: Option<Vec<u8>>,
}

/// The answer to a presented key.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyAnswer {
    /// The key is pending: its first `private_key_jwt` use makes it the credential.
    Pending {
        /// Its kid.
        kid: String,
        /// Whether it was attested by credential activation.
        attested: bool,
    },
    /// Prove the key is in the device's TPM: activate this credential with it and present the
    /// key again with the recovered secret.
    Challenge {
        /// Its kid.
        kid: String,
        /// The contents of the TPM2B_ID_OBJECT.
        credential_blob: Vec<u8>,
        /// The contents of the TPM2B_ENCRYPTED_SECRET.
        encrypted_secret: Vec<u8>,
        /// Seconds it may be answered.
        expires_in: u64,
    },
}

impl AuthServer {
    /// `POST /oauth2/device-credentials`: see the module documentation.
    pub async fn present_device_key(
        &self,
        presented: Presented,
        presentation: KeyPresentation,
        ctx: &RequestCtx,
    ) -> Result<KeyAnswer, OAuthError> {
        let client = self.authenticate(presented, false, ctx).await?;
        let Some(device) = self
            .devices
            .device(&client.client_id)
            .await
            .map_err(OAuthError::from)?
        else {
            return Err(OAuthError::UnauthorizedClient(
                "only registered devices rotate credentials".into(),
            ));
        };
        let key = device_key(&presentation.jwk)?;
        let kid = key.kid.clone().unwrap_or_default();
        if client.keys.iter().any(|k| k.public == key.public) {
            return Err(OAuthError::InvalidRequest(
                "this key is already the device's credential".into(),
            ));
        }
        // A retry after a lost answer: the key is pending already.
        if let Some(pending) = client
            .pending_key
            .as_ref()
            .filter(|p| p.public == key.public)
        {
            return Ok(KeyAnswer::Pending {
                kid,
                attested: pending.attested,
            });
        }
        match (&presentation.activated_secret, self.settings.attestation) {
            (Some(secret), _) => self.answer_challenge(&client, key, secret, ctx).await,
            (None, Attestation::Off) => self.make_pending(&client, key, ctx).await,
            (None, Attestation::Required) => {
                let tpm_public = presentation.tpm_public.as_deref();
                self.challenge(&client, &device, key, tpm_public, ctx).await
            }
        }
    }

    /// Check the key's TPM public area and answer with a challenge made against the device's
    /// registered EK; the challenge is remembered (durably) until answered or replaced.
    async fn challenge(
        &self,
        client: &Client,
        device: &Device,
        key: ClientKey,
        tpm_public: Option<&[u8]>,
        ctx: &RequestCtx,
    ) -> Result<KeyAnswer, OAuthError> {
        let kid = key.kid.clone().unwrap_or_default();
        let Some(tpm_public) = tpm_public else {
            return self
                .refuse(client, &kid, "tpm_public is required: this server attests device keys by credential activation", ctx)
                .await;
        };
        let Some(ek_public) = device.ek_public.as_deref() else {
            return self
                .refuse(client, &kid, "the device has no registered EK public key; re-attest it with the provisioner before it rotates", ctx)
                .await;
        };
        let area = match TpmPublic::parse(tpm_public) {
            Ok(area) => area,
            Err(e) => return self.refuse(client, &kid, &e.to_string(), ctx).await,
        };
        if area.sec1_point()[..] != key.public[..] {
            return self
                .refuse(
                    client,
                    &kid,
                    "tpm_public does not describe the key in jwk",
                    ctx,
                )
                .await;
        }
        let mut credential = zeroize::Zeroizing::new([0u8; CREDENTIAL_LEN]);
        rand::rngs::OsRng.fill_bytes(credential.as_mut());
        let made = match make_credential(ek_public, area.name(), credential.as_ref()) {
            Ok(made) => made,
            Err(e) => return self.refuse(client, &kid, &e.to_string(), ctx).await,
        };
        let challenge = KeyChallenge {
            key: ClientKey {
                attested: true,
                ..key
            },
            answer_hash: Sha256::digest(credential.as_ref()).to_vec(),
            expires_at: ctx.now + CHALLENGE_LIFETIME,
        };
        let written = self
            .clients
            .update_client(&client.client_id, &mut |c| {
                c.key_challenge = Some(challenge.clone());
                true
            })
            .await
            .map_err(OAuthError::from)?;
        if written.is_none() {
            return Err(OAuthError::invalid_client("device deleted"));
        }
        let event = AuditEvent::new("device.attestation_challenged", Outcome::Success)
            .actor(&client.client_id)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(format!("kid={kid} ek={}", device.ek_fingerprint));
        // Durable before the device sees it: a challenge answered after a crash still counts.
        self.record(ctx, event).await?;
        Ok(KeyAnswer::Challenge {
            kid,
            credential_blob: made.credential_blob,
            encrypted_secret: made.encrypted_secret,
            expires_in: CHALLENGE_LIFETIME,
        })
    }

    /// The device's answer: the key becomes pending, attested, if its TPM recovered the
    /// challenge's credential. A wrong answer closes the challenge.
    async fn answer_challenge(
        &self,
        client: &Client,
        key: ClientKey,
        secret: &[u8],
        ctx: &RequestCtx,
    ) -> Result<KeyAnswer, OAuthError> {
        let kid = key.kid.clone().unwrap_or_default();
        let Some(open) = client
            .key_challenge
            .as_ref()
            .filter(|c| c.key.public == key.public)
        else {
            return self
                .refuse(client, &kid, "no open challenge for this key; present it again without activated_secret for a new one", ctx)
                .await;
        };
        if ctx.now >= open.expires_at {
            self.close_challenge(client, open).await?;
            return self
                .refuse(
                    client,
                    &kid,
                    "the challenge expired; present the key again for a new one",
                    ctx,
                )
                .await;
        }
        let right: bool = Sha256::digest(secret).ct_eq(&open.answer_hash[..]).into();
        if !right {
            self.close_challenge(client, open).await?;
            return self
                .refuse(client, &kid, "credential activation failed: the key is not in the TPM registered for this device", ctx)
                .await;
        }
        let attested = open.key.clone();
        let mut replaced = None;
        let written = self
            .clients
            .update_client(&client.client_id, &mut |c| {
                if c.key_challenge.as_ref() != Some(open) {
                    return false;
                }
                replaced = c.pending_key.as_ref().and_then(|p| p.kid.clone());
                c.pending_key = Some(attested.clone());
                c.key_challenge = None;
                true
            })
            .await
            .map_err(OAuthError::from)?;
        let Some(now) = written else {
            return Err(OAuthError::invalid_client("device deleted"));
        };
        if now.pending_key.as_ref().map(|p| &p.public) != Some(&attested.public) {
            // Another request replaced the challenge in between; this answer is for the old one.
            return self
                .refuse(
                    client,
                    &kid,
                    "the challenge was replaced; present the key again",
                    ctx,
                )
                .await;
        }
        let reason = match replaced {
            Some(old) => {
                format!("pending kid={kid} attested by credential activation (replaces {old})")
            }
            None => format!("pending kid={kid} attested by credential activation"),
        };
        let event = AuditEvent::new("device.rotation_requested", Outcome::Success)
            .actor(&client.client_id)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(reason);
        self.record(ctx, event).await?;
        Ok(KeyAnswer::Pending {
            kid,
            attested: true,
        })
    }

    /// `attestation = "off"`: the key is pending on the device's word.
    async fn make_pending(
        &self,
        client: &Client,
        key: ClientKey,
        ctx: &RequestCtx,
    ) -> Result<KeyAnswer, OAuthError> {
        let kid = key.kid.clone().unwrap_or_default();
        let mut replaced = None;
        let written = self
            .clients
            .update_client(&client.client_id, &mut |c| {
                if c.pending_key
                    .as_ref()
                    .is_some_and(|p| p.public == key.public)
                {
                    return false;
                }
                replaced = c.pending_key.as_ref().and_then(|p| p.kid.clone());
                c.pending_key = Some(key.clone());
                true
            })
            .await
            .map_err(OAuthError::from)?;
        if written.is_none() {
            return Err(OAuthError::invalid_client("device deleted"));
        }
        let reason = match replaced {
            Some(old) => format!("pending kid={kid} unattested (replaces {old})"),
            None => format!("pending kid={kid} unattested"),
        };
        let event = AuditEvent::new("device.rotation_requested", Outcome::Success)
            .actor(&client.client_id)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(reason);
        self.record(ctx, event).await?;
        Ok(KeyAnswer::Pending {
            kid,
            attested: false,
        })
    }

    /// Drop `open` if it is still the client's challenge (one answer per challenge).
    async fn close_challenge(
        &self,
        client: &Client,
        open: &KeyChallenge,
    ) -> Result<(), OAuthError> {
        self.clients
            .update_client(&client.client_id, &mut |c| {
                if c.key_challenge.as_ref() != Some(open) {
                    return false;
                }
                c.key_challenge = None;
                true
            })
            .await
            .map_err(OAuthError::from)?;
        Ok(())
    }

    /// Refuse the key with 400 and `why`, audited as `device.attestation_refused`.
    async fn refuse(
        &self,
        client: &Client,
        kid: &str,
        why: &str,
        ctx: &RequestCtx,
    ) -> Result<KeyAnswer, OAuthError> {
        let event = AuditEvent::new("device.attestation_refused", Outcome::Failure)
            .actor(&client.client_id)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(format!("kid={kid}: {why}"));
        self.record(ctx, event).await?;
        Err(OAuthError::InvalidRequest(why.to_owned().into()))
    }

    /// The pending key just authenticated: make it the only credential, erasing the factory
    /// secret and any older key. Durable when the caller's next commit returns.
    pub(crate) async fn promote_pending_key(
        &self,
        client: &Client,
        ctx: &RequestCtx,
    ) -> Result<Arc<Client>, OAuthError> {
        let Some(pending) = client.pending_key.clone() else {
            return Err(OAuthError::Internal(
                "promotion without a pending key".into(),
            ));
        };
        let updated = self
            .clients
            .update_client(&client.client_id, &mut |c| {
                if c.pending_key.as_ref().map(|p| &p.public) != Some(&pending.public) {
                    return false;
                }
                c.keys = vec![pending.clone()];
                c.pending_key = None;
                c.key_challenge = None;
                c.secret_hash = None;
                c.auth_method = AuthMethod::PrivateKeyJwt;
                true
            })
            .await
            .map_err(OAuthError::from)?
            .ok_or_else(|| OAuthError::invalid_client("device deleted during rotation"))?;
        let kid = pending.kid.unwrap_or_default();
        let attested = if pending.attested {
            "attested"
        } else {
            "unattested"
        };
        self.append_audit(
            ctx,
            AuditEvent::new("device.credential_promoted", Outcome::Success)
                .actor(&client.client_id)
                .subject(&client.client_id)
                .client(&client.client_id)
                .reason(format!(
                    "kid={kid} ({attested}); factory secret and older keys erased"
                )),
        )?;
        Ok(Arc::new(updated))
    }
}

/// The presented JWK as an ES256 device key with a kid (its RFC 7638 thumbprint if it had
/// none).
fn device_key(jwk: &serde_json::Value) -> Result<ClientKey, OAuthError> {
    let mut key = parse_jwk(jwk).map_err(|e| {
        OAuthError::InvalidRequest(e.description().unwrap_or("bad jwk").to_owned().into())
    })?;
    if key.alg != KeyAlg::ES256 {
        return Err(OAuthError::InvalidRequest(
            "device keys are ES256 (EC P-256)".into(),
        ));
    }
    let kid = key
        .kid
        .clone()
        .unwrap_or_else(|| ec_thumbprint(&key.public));
    key.kid = Some(kid.clone());
    key.jwk["kid"] = kid.into();
    Ok(key)
}

/// RFC 7638 thumbprint of a P-256 key given as a SEC1 uncompressed point.
fn ec_thumbprint(point: &[u8]) -> String {
    let (x, y) = point
        .get(1..33)
        .zip(point.get(33..65))
        .unwrap_or((&[], &[]));
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        super::super::jws::b64(x),
        super::super::jws::b64(y)
    );
    super::super::jws::b64(&Sha256::digest(canonical.as_bytes()))
}
