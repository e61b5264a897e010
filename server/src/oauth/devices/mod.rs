//! The device registry (DESIGN "Life of a device"): a station registers a device with its TPM's
//! endorsement key (public key, and certificate where the TPM has one, checked against the
//! operator's `ek_roots`) and receives its one-time factory secret; operators look devices up,
//! disable and delete them. The device's own key rotation is in [`rotation`].

pub mod rotation;

use serde::{Deserialize, Serialize};

use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::attest::check_ek_certificate;
use crate::secret::{random_id, Secret};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{AuthMethod, Client, Deletion, Device, EkCertificateCheck};

pub use rotation::{KeyAnswer, KeyPresentation, CHALLENGE_LIFETIME};

/// The default `device_scopes`: the scopes any device may hold.
pub const DEFAULT_DEVICE_SCOPES: [&str; 1] = ["device"];

/// `POST /admin/devices` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    /// Manufacturer serial: 1–64 of `A-Z a-z 0-9 . _ -`.
    pub serial: String,
    /// Model name: 1–64 printable characters.
    pub model: String,
    /// Lowercase hex SHA-256 of the EK's SubjectPublicKeyInfo DER.
    pub ek_fingerprint: String,
    /// The EK's SubjectPublicKeyInfo DER, base64url: what rotation challenges are made
    /// against. Its SHA-256 must be `ek_fingerprint`.
    #[serde(default)]
    pub ek_public: Option<String>,
    /// The EK certificate (DER, base64url), where the TPM has one; it must certify
    /// `ek_public`, and with `ek_roots` set it is required and must chain to them.
    #[serde(default)]
    pub ek_certificate: Option<String>,
    /// Scopes the device may be granted, all within the server's `device_scopes`; default: all
    /// of `device_scopes`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// RFC 9449 §5.2 for the device's client: no token without a DPoP proof. The factory
    /// secret has no key to prove, so such a device gets its first token only once its key
    /// lives in its TPM (enrollment). Default false.
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
}

/// What registration did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Registered {
    /// A new device, with the secret to seal into its TPM (shown this once).
    Created {
        /// The device's client_id.
        client_id: String,
        /// The factory secret.
        factory_secret: Secret,
    },
    /// The serial was already registered; nothing changed.
    Exists(Device),
    /// The EK belongs to a device registered under another serial: one TPM, one identity.
    EkInUse(Device),
}

/// A device as the admin API shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DeviceView {
    /// client_id.
    pub client_id: String,
    /// Serial.
    pub serial: String,
    /// Model.
    pub model: String,
    /// EK fingerprint.
    pub ek_fingerprint: String,
    /// The station that registered it.
    pub registered_by: String,
    /// When.
    pub registered_at: u64,
    /// `active` or `disabled`.
    pub status: &'static str,
    /// `factory` (only the factory secret), `rotating` (a pending key too) or `key`.
    pub credential: &'static str,
    /// kid of the device's key, once rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_kid: Option<String>,
    /// kid of the pending key, during rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_kid: Option<String>,
    /// Scopes it may be granted.
    pub scopes: Vec<String>,
    /// Whether its tokens must be DPoP-bound (RFC 9449 §5.2).
    pub dpop_bound_access_tokens: bool,
    /// What is proven of its hardware.
    pub attestation: AttestationView,
}

/// The `attestation` member of a device view.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AttestationView {
    /// Whether the EK's public key is registered (challenges can be made against it).
    pub ek_public: bool,
    /// `verified` (chains to `ek_roots`), `not-checked` (certifies the EK; no `ek_roots`
    /// configured) or `absent`.
    pub ek_certificate: &'static str,
    /// The EK certificate's issuer, when one was presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ek_issuer: Option<String>,
    /// `attested` when the device's key (or, during rotation, its pending key) was proven by
    /// credential activation to live in the registered TPM; `unattested` otherwise.
    pub key: &'static str,
}

impl DeviceView {
    /// Whether the device is fully attested: its EK is registered and its key (if it has
    /// one yet) was proven to live in that TPM. `GET /admin/devices?attested=false` lists the
    /// others.
    pub fn attested(&self) -> bool {
        self.attestation.ek_public
            && (self.credential == "factory" || self.attestation.key == "attested")
    }
}

/// How long after registering a device its station may withdraw it: 15 minutes.
pub const WITHDRAW_WINDOW: u64 = 15 * 60;

/// What [`AuthServer::withdraw_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Withdrawal {
    /// The registration is gone.
    Withdrawn,
    /// No such device registered by this station.
    NotFound,
    /// Registered by this station, but no longer withdrawable; why.
    Refused(&'static str),
}

fn valid_serial(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_model(s: &str) -> bool {
    (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

fn valid_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A registration's endorsement key, checked.
struct CheckedEk {
    public: Option<Vec<u8>>,
    certificate: EkCertificateCheck,
    issuer: Option<String>,
}

impl AuthServer {
    /// The EK a registration (or re-attestation) presents, checked: `ek_public` hashes to the
    /// fingerprint and is a key credential activation can use; the certificate, if any,
    /// certifies it and, with `ek_roots`, chains to them (then it is required).
    fn checked_ek(
        &self,
        fingerprint: &str,
        ek_public: Option<&str>,
        ek_certificate: Option<&str>,
        ctx: &RequestCtx,
    ) -> Result<CheckedEk, OAuthError> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bad_cert = |why: String| OAuthError::InvalidEkCertificate(why.into());
        let roots = self.settings.ek_roots.as_deref();
        let Some(public) = ek_public else {
            if ek_certificate.is_some() {
                return Err(OAuthError::InvalidRequest(
                    "ek_certificate needs ek_public".into(),
                ));
            }
            if roots.is_some() {
                return Err(bad_cert(
                    "an EK certificate is required: this server checks EKs against ek_roots".into(),
                ));
            }
            return Ok(CheckedEk {
                public: None,
                certificate: EkCertificateCheck::Absent,
                issuer: None,
            });
        };
        let public = b64
            .decode(public.trim_end_matches('='))
            .map_err(|_| OAuthError::InvalidRequest("ek_public is not base64url".into()))?;
        if hex::encode(sha2::Sha256::digest(&public)) != fingerprint {
            return Err(OAuthError::InvalidRequest(
                "ek_fingerprint is not the SHA-256 of ek_public".into(),
            ));
        }
        crate::attest::credential::check_ek_public(&public)
            .map_err(|e| OAuthError::InvalidRequest(e.to_string().into()))?;
        let (certificate, issuer) = match ek_certificate {
            None if roots.is_some() => {
                return Err(bad_cert(
                    "an EK certificate is required: this server checks EKs against ek_roots".into(),
                ))
            }
            None => (EkCertificateCheck::Absent, None),
            Some(cert) => {
                let der = b64
                    .decode(cert.trim_end_matches('='))
                    .map_err(|_| bad_cert("ek_certificate is not base64url".into()))?;
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ctx.now);
                let issuer = check_ek_certificate(&der, &public, roots, at)
                    .map_err(|e| bad_cert(e.to_string()))?;
                let check = if roots.is_some() {
                    EkCertificateCheck::Verified
                } else {
                    EkCertificateCheck::NotChecked
                };
                (check, Some(issuer))
            }
        };
        Ok(CheckedEk {
            public: Some(public),
            certificate,
            issuer,
        })
    }

    /// Register a device for `station`; durable and audited before it returns.
    pub async fn register_device(
        &self,
        req: DeviceRegistration,
        station: &str,
        ctx: &RequestCtx,
    ) -> Result<Registered, OAuthError> {
        let bad = |m: &'static str| OAuthError::InvalidRequest(m.into());
        if !valid_serial(&req.serial) {
            return Err(bad("serial must be 1-64 characters of A-Z a-z 0-9 . _ -"));
        }
        if !valid_model(&req.model) {
            return Err(bad("model must be 1-64 printable characters"));
        }
        let ek_fingerprint = req.ek_fingerprint.to_ascii_lowercase();
        if !valid_fingerprint(&ek_fingerprint) {
            return Err(bad("ek_fingerprint must be 64 hex digits (SHA-256)"));
        }
        let ek = match self.checked_ek(
            &ek_fingerprint,
            req.ek_public.as_deref(),
            req.ek_certificate.as_deref(),
            ctx,
        ) {
            Ok(ek) => ek,
            Err(e) => {
                let event = AuditEvent::new("device.registered", Outcome::Failure)
                    .actor(station)
                    .subject(&req.serial)
                    .reason(format!(
                        "ek={ek_fingerprint}: {}",
                        e.description().unwrap_or("refused")
                    ));
                self.record(ctx, event).await?;
                return Err(e);
            }
        };
        let allowed = &self.settings.device_scopes;
        let scopes = match req.scopes {
            None => allowed.clone(),
            Some(list) => {
                let list = scope::parse(&list.join(" "))?;
                // A station must not mint a device that holds more than a device may: the
                // factory secret it receives would otherwise get those scopes (an admin scope
                // asked for here made a station an administrator).
                if let Some(extra) = list.iter().find(|s| !allowed.contains(s)) {
                    return Err(OAuthError::InvalidScope(
                        format!(
                            "scope {} is not one of the server's device_scopes",
                            crate::untrusted::clip(extra)
                        )
                        .into(),
                    ));
                }
                list
            }
        };
        let client_id = random_id(16);
        let secret = Secret::generate();
        let client = Client {
            client_id: client_id.clone(),
            client_name: Some(format!("{} {}", req.model, req.serial)),
            auth_method: AuthMethod::ClientSecretBasic,
            secret_hash: Some(secret.hash()),
            keys: Vec::new(),
            grant_types: vec![
                grant::CLIENT_CREDENTIALS.into(),
                grant::DEVICE_CODE.into(),
                grant::REFRESH_TOKEN.into(),
            ],
            scopes,
            created_at: ctx.now,
            disabled: false,
            pending_key: None,
            key_challenge: None,
            dpop_bound_access_tokens: req.dpop_bound_access_tokens,
        };
        let device = Device {
            client_id: client_id.clone(),
            serial: req.serial,
            model: req.model,
            ek_fingerprint,
            registered_by: station.to_owned(),
            registered_at: ctx.now,
            ek_public: ek.public,
            ek_certificate: ek.certificate,
            ek_issuer: ek.issuer,
        };
        let event = AuditEvent::new("device.registered", Outcome::Success)
            .actor(station)
            .subject(&device.serial)
            .client(&client_id)
            .reason(format!(
                "model={} ek={} ek_public={} ek_certificate={}{}",
                device.model,
                device.ek_fingerprint,
                if device.ek_public.is_some() {
                    "yes"
                } else {
                    "no"
                },
                device.ek_certificate.as_str(),
                if client.dpop_bound_access_tokens {
                    " dpop_bound"
                } else {
                    ""
                }
            ));
        match self
            .devices
            .register_device(&device, &client)
            .await
            .map_err(OAuthError::from)?
        {
            Ok(()) => {
                self.record(ctx, event).await?;
                Ok(Registered::Created {
                    client_id,
                    factory_secret: secret,
                })
            }
            Err(existing) => {
                let same_serial = existing.serial == device.serial;
                let why = if same_serial {
                    "serial already registered"
                } else {
                    "EK already registered under another serial"
                };
                let event = AuditEvent {
                    outcome: Outcome::Failure,
                    ..event
                }
                .client(&existing.client_id)
                .reason(why);
                self.record(ctx, event).await?;
                Ok(if same_serial {
                    Registered::Exists(existing)
                } else {
                    Registered::EkInUse(existing)
                })
            }
        }
    }

    /// The scopes `client` may be granted now: its registration's, and for a device only those
    /// also in the server's `device_scopes`, so a device registered with more (before the set
    /// was enforced, or before it shrank) loses the rest at its next token request. The device
    /// registry is consulted only when the client holds a scope outside the set.
    pub async fn allowed_scopes<'c>(
        &self,
        client: &'c Client,
    ) -> Result<std::borrow::Cow<'c, [String]>, OAuthError> {
        let set = &self.settings.device_scopes;
        if client.scopes.iter().all(|s| set.contains(s))
            || self
                .devices
                .device(&client.client_id)
                .await
                .map_err(OAuthError::from)?
                .is_none()
        {
            return Ok(std::borrow::Cow::Borrowed(&client.scopes));
        }
        Ok(std::borrow::Cow::Owned(
            client
                .scopes
                .iter()
                .filter(|s| set.contains(s))
                .cloned()
                .collect(),
        ))
    }

    /// A device by client_id, as shown to operators.
    pub async fn device_view(&self, client_id: &str) -> Result<Option<DeviceView>, OAuthError> {
        match self
            .devices
            .device(client_id)
            .await
            .map_err(OAuthError::from)?
        {
            Some(d) => self.view(d).await,
            None => Ok(None),
        }
    }

    /// A device by serial, as shown to operators.
    pub async fn device_view_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<DeviceView>, OAuthError> {
        match self
            .devices
            .device_by_serial(serial)
            .await
            .map_err(OAuthError::from)?
        {
            Some(d) => self.view(d).await,
            None => Ok(None),
        }
    }

    async fn view(&self, d: Device) -> Result<Option<DeviceView>, OAuthError> {
        let Some(client) = self
            .clients
            .client(&d.client_id)
            .await
            .map_err(OAuthError::from)?
        else {
            return Ok(None);
        };
        let credential = match (&client.secret_hash, &client.pending_key) {
            (_, Some(_)) => "rotating",
            (Some(_), None) => "factory",
            (None, None) => "key",
        };
        Ok(Some(DeviceView {
            client_id: d.client_id,
            serial: d.serial,
            model: d.model,
            ek_fingerprint: d.ek_fingerprint,
            registered_by: d.registered_by,
            registered_at: d.registered_at,
            status: if client.disabled {
                "disabled"
            } else {
                "active"
            },
            credential,
            key_kid: client.keys.first().and_then(|k| k.kid.clone()),
            pending_kid: client.pending_key.as_ref().and_then(|k| k.kid.clone()),
            scopes: client.scopes.clone(),
            dpop_bound_access_tokens: client.dpop_bound_access_tokens,
            attestation: AttestationView {
                ek_public: d.ek_public.is_some(),
                ek_certificate: d.ek_certificate.as_str(),
                ek_issuer: d.ek_issuer,
                key: if client
                    .keys
                    .first()
                    .or(client.pending_key.as_ref())
                    .is_some_and(|k| k.attested)
                {
                    "attested"
                } else {
                    "unattested"
                },
            },
        }))
    }

    /// Devices whose client_id sorts after `after`, at most `limit`, optionally only those
    /// (not) fully attested; and the client_id to continue after, if the scan stopped early.
    pub async fn device_views(
        &self,
        after: &str,
        limit: usize,
        attested: Option<bool>,
    ) -> Result<(Vec<DeviceView>, Option<String>), OAuthError> {
        // Scan in pages so a filter that matches little still returns within a bound of work.
        const SCAN: usize = 10_000;
        let batch = self
            .devices
            .devices(after, SCAN)
            .await
            .map_err(OAuthError::from)?;
        let scanned_all = batch.len() < SCAN;
        let mut views = Vec::new();
        let mut last = None;
        for device in batch {
            last = Some(device.client_id.clone());
            if let Some(view) = self.view(device).await? {
                if attested.is_none_or(|want| view.attested() == want) {
                    views.push(view);
                    if views.len() == limit {
                        break;
                    }
                }
            }
        }
        let next = if views.len() == limit || !scanned_all {
            last
        } else {
            None
        };
        Ok((views, next))
    }

    /// `POST /admin/devices/{client_id}/ek`: a station supplies the EK public key (and
    /// certificate) of a device registered before attestation existed, so that it can rotate
    /// under `attestation = "required"`. The key must hash to the fingerprint registered at
    /// the factory, so this adds no trust the registration did not already carry; a device
    /// that has an EK public key keeps it.
    pub async fn attest_device_ek(
        &self,
        client_id: &str,
        ek_public: &str,
        ek_certificate: Option<&str>,
        station: &str,
        ctx: &RequestCtx,
    ) -> Result<Option<DeviceView>, OAuthError> {
        let Some(device) = self
            .devices
            .device(client_id)
            .await
            .map_err(OAuthError::from)?
        else {
            return Ok(None);
        };
        let event = AuditEvent::new("device.ek_attested", Outcome::Success)
            .actor(station)
            .subject(&device.serial)
            .client(client_id);
        let ek = match self.checked_ek(&device.ek_fingerprint, Some(ek_public), ek_certificate, ctx)
        {
            Ok(ek) => ek,
            Err(e) => {
                let event = AuditEvent {
                    outcome: Outcome::Failure,
                    ..event
                }
                .reason(e.description().unwrap_or("refused").to_owned());
                self.record(ctx, event).await?;
                return Err(e);
            }
        };
        let mut kept = false;
        let updated = self
            .devices
            .update_device(client_id, &mut |d| {
                if d.ek_public.is_some() {
                    kept = true;
                    return false;
                }
                d.ek_public = ek.public.clone();
                d.ek_certificate = ek.certificate;
                d.ek_issuer = ek.issuer.clone();
                true
            })
            .await
            .map_err(OAuthError::from)?;
        let Some(updated) = updated else {
            return Ok(None);
        };
        if !kept {
            let event = event.reason(format!(
                "ek={} ek_certificate={}",
                updated.ek_fingerprint,
                updated.ek_certificate.as_str()
            ));
            self.record(ctx, event).await?;
        }
        self.view(updated).await
    }

    /// Disable a device: it authenticates nowhere and its tokens introspect as inactive.
    pub async fn disable_device(
        &self,
        client_id: &str,
        actor: &str,
        ctx: &RequestCtx,
    ) -> Result<bool, OAuthError> {
        if self
            .devices
            .device(client_id)
            .await
            .map_err(OAuthError::from)?
            .is_none()
        {
            return Ok(false);
        }
        let updated = self
            .clients
            .update_client(client_id, &mut |c| {
                !std::mem::replace(&mut c.disabled, true)
            })
            .await
            .map_err(OAuthError::from)?;
        if updated.is_none() {
            return Ok(false);
        }
        let event = AuditEvent::new("device.disabled", Outcome::Success)
            .actor(actor)
            .subject(client_id)
            .client(client_id);
        self.record(ctx, event).await?;
        Ok(true)
    }

    /// Delete a device and its client.
    pub async fn delete_device(
        &self,
        client_id: &str,
        actor: &str,
        ctx: &RequestCtx,
    ) -> Result<bool, OAuthError> {
        if !self
            .devices
            .delete_device(client_id)
            .await
            .map_err(OAuthError::from)?
        {
            return Ok(false);
        }
        let event = AuditEvent::new("device.deleted", Outcome::Success)
            .actor(actor)
            .subject(client_id)
            .client(client_id);
        self.record(ctx, event).await?;
        Ok(true)
    }

    /// `POST /admin/devices/{client_id}/withdraw` (scope `devices:provision`): a station takes
    /// back a registration it made itself, within [`WITHDRAW_WINDOW`] seconds, while the device
    /// still holds only its factory secret — the station's way out when the secret cannot be
    /// sealed (the TPM already holds another registration's credential), so that nothing unused
    /// is left registered under the serial. Anything else is for an operator with
    /// `devices:admin` (delete).
    pub async fn withdraw_device(
        &self,
        client_id: &str,
        station: &str,
        ctx: &RequestCtx,
    ) -> Result<Withdrawal, OAuthError> {
        // Checked inside the delete's transaction: a rotation landing between a check and the
        // delete would otherwise lose the device its new key.
        const NOT_THIS_STATIONS: &str = "registered by another station";
        let now = ctx.now;
        let allow = |device: &Device, client: Option<&Client>| {
            if device.registered_by != station {
                return Err(NOT_THIS_STATIONS);
            }
            match client {
                Some(c) if !c.keys.is_empty() || c.pending_key.is_some() => {
                    Err("the device has rotated its credential")
                }
                _ if now > device.registered_at.saturating_add(WITHDRAW_WINDOW) => {
                    Err("the registration is older than the withdrawal window")
                }
                _ => Ok(()),
            }
        };
        let event = AuditEvent::new("device.withdrawn", Outcome::Success)
            .actor(station)
            .subject(client_id)
            .client(client_id);
        match self
            .devices
            .delete_device_if(client_id, &allow)
            .await
            .map_err(OAuthError::from)?
        {
            // Another station's device is as good as absent to this one.
            Deletion::Missing | Deletion::Refused(NOT_THIS_STATIONS) => Ok(Withdrawal::NotFound),
            Deletion::Refused(why) => {
                let event = AuditEvent {
                    outcome: Outcome::Failure,
                    ..event
                }
                .reason(why);
                self.record(ctx, event).await?;
                Ok(Withdrawal::Refused(why))
            }
            Deletion::Deleted => {
                self.record(ctx, event).await?;
                Ok(Withdrawal::Withdrawn)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_rules() {
        assert!(valid_serial("HM-SIM-0001"));
        assert!(!valid_serial("a b") && !valid_serial("") && !valid_serial(&"a".repeat(65)));
        assert!(valid_model("Gateway 3000 (rev B)") && !valid_model("bad\nmodel"));
        assert!(valid_fingerprint(&"ab".repeat(32)) && !valid_fingerprint("abc"));
    }
}
