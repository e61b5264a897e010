//! The device registry and first-boot credential rotation (DESIGN "Life of a device"): a station
//! registers a device and receives its one-time factory secret; the device later registers a
//! TPM-resident key as *pending*, and its first `private_key_jwt` authentication with that key
//! makes it the device's only credential.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::client_auth::Presented;
use super::registration::parse_jwk;
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::secret::{random_id, Secret};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{AuthMethod, Client, Deletion, Device, KeyAlg};

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
    /// Scopes the device may be granted, all within the server's `device_scopes`; default: all
    /// of `device_scopes`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
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

impl AuthServer {
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
        };
        let device = Device {
            client_id: client_id.clone(),
            serial: req.serial,
            model: req.model,
            ek_fingerprint,
            registered_by: station.to_owned(),
            registered_at: ctx.now,
        };
        let event = AuditEvent::new("device.registered", Outcome::Success)
            .actor(station)
            .subject(&device.serial)
            .client(&client_id)
            .reason(format!(
                "model={} ek={}",
                device.model, device.ek_fingerprint
            ));
        match self
            .devices
            .register_device(&device, &client)
            .map_err(OAuthError::internal)?
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
    pub fn allowed_scopes<'c>(
        &self,
        client: &'c Client,
    ) -> Result<std::borrow::Cow<'c, [String]>, OAuthError> {
        let set = &self.settings.device_scopes;
        if client.scopes.iter().all(|s| set.contains(s))
            || self
                .devices
                .device(&client.client_id)
                .map_err(OAuthError::internal)?
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
    pub fn device_view(&self, client_id: &str) -> Result<Option<DeviceView>, OAuthError> {
        match self
            .devices
            .device(client_id)
            .map_err(OAuthError::internal)?
        {
            Some(d) => self.view(d),
            None => Ok(None),
        }
    }

    /// A device by serial, as shown to operators.
    pub fn device_view_by_serial(&self, serial: &str) -> Result<Option<DeviceView>, OAuthError> {
        match self
            .devices
            .device_by_serial(serial)
            .map_err(OAuthError::internal)?
        {
            Some(d) => self.view(d),
            None => Ok(None),
        }
    }

    fn view(&self, d: Device) -> Result<Option<DeviceView>, OAuthError> {
        let Some(client) = self
            .clients
            .client(&d.client_id)
            .map_err(OAuthError::internal)?
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
        }))
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
            .map_err(OAuthError::internal)?
            .is_none()
        {
            return Ok(false);
        }
        let updated = self
            .clients
            .update_client(client_id, &mut |c| {
                !std::mem::replace(&mut c.disabled, true)
            })
            .map_err(OAuthError::internal)?;
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
            .map_err(OAuthError::internal)?
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
            .map_err(OAuthError::internal)?
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

    /// `POST /oauth2/device-credentials`: a device, authenticated by its current credential,
    /// registers the public JWK of a new TPM-resident key as pending. Idempotent for the same
    /// key; a different key replaces the earlier pending one.
    pub async fn register_pending_key(
        &self,
        presented: Presented,
        jwk: &serde_json::Value,
        ctx: &RequestCtx,
    ) -> Result<String, OAuthError> {
        let client = self.authenticate(presented, false, ctx).await?;
        if self
            .devices
            .device(&client.client_id)
            .map_err(OAuthError::internal)?
            .is_none()
        {
            return Err(OAuthError::UnauthorizedClient(
                "only registered devices rotate credentials".into(),
            ));
        }
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
        key.jwk["kid"] = kid.clone().into();
        if client.keys.iter().any(|k| k.public == key.public) {
            return Err(OAuthError::InvalidRequest(
                "this key is already the device's credential".into(),
            ));
        }
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
            .map_err(OAuthError::internal)?;
        if written.is_none() {
            return Err(OAuthError::invalid_client("device deleted"));
        }
        let reason = match replaced {
            Some(old) => format!("pending kid={kid} (replaces {old})"),
            None => format!("pending kid={kid}"),
        };
        let event = AuditEvent::new("device.rotation_requested", Outcome::Success)
            .actor(&client.client_id)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(reason);
        self.record(ctx, event).await?;
        Ok(kid)
    }

    /// The pending key just authenticated: make it the only credential, erasing the factory
    /// secret and any older key. Durable when the caller's next commit returns.
    pub(crate) fn promote_pending_key(
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
                c.secret_hash = None;
                c.auth_method = AuthMethod::PrivateKeyJwt;
                true
            })
            .map_err(OAuthError::internal)?
            .ok_or_else(|| OAuthError::invalid_client("device deleted during rotation"))?;
        let kid = pending.kid.unwrap_or_default();
        self.append_audit(
            ctx,
            AuditEvent::new("device.credential_promoted", Outcome::Success)
                .actor(&client.client_id)
                .subject(&client.client_id)
                .client(&client.client_id)
                .reason(format!("kid={kid}; factory secret and older keys erased")),
        )?;
        Ok(Arc::new(updated))
    }
}

/// RFC 7638 thumbprint of a P-256 key given as a SEC1 uncompressed point.
fn ec_thumbprint(point: &[u8]) -> String {
    use sha2::Digest as _;
    let (x, y) = point
        .get(1..33)
        .zip(point.get(33..65))
        .unwrap_or((&[], &[]));
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        super::jws::b64(x),
        super::jws::b64(y)
    );
    super::jws::b64(&sha2::Sha256::digest(canonical.as_bytes()))
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
