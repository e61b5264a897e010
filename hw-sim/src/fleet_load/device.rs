//! One simulated device: a client registered through `POST /admin/clients` with a software
//! ES256 key (RFC 7591 `jwks`), authenticating with `private_key_jwt` (RFC 7523 §2.2) exactly as
//! a rotated device's TPM key does, so the server does the same work per request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::LoadError;

/// The grant type URN of the device flow (RFC 8628 §3.4).
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 7523 §2.2.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A registered device: its client_id and its key.
pub(super) struct Device {
    pub(super) client_id: String,
    key: EcdsaKeyPair,
}

impl Device {
    /// Makes a key and registers a client for it with `admin_token` (scope `clients:admin`).
    /// `Ok(None)` when the admin token was refused (expired): the caller gets a new one.
    pub(super) fn register(
        http: &ureq::Agent,
        base: &str,
        admin_token: &str,
        rng: &SystemRandom,
    ) -> Result<Option<Device>, LoadError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            .map_err(|_| LoadError::Key)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
            .map_err(|_| LoadError::Key)?;
        // SEC1 uncompressed point: 0x04 ‖ x ‖ y.
        let point = key.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "fleet",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        });
        let mut resp = http
            .post(&format!("{base}/admin/clients"))
            .header("Authorization", &format!("Bearer {admin_token}"))
            .send_json(serde_json::json!({
                "client_name": "fleet-load device",
                "grant_types": ["client_credentials", DEVICE_CODE_GRANT],
                "scope": "device",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [jwk]},
            }))
            .map_err(|e| LoadError::Http(e.to_string()))?;
        match resp.status().as_u16() {
            201 | 200 => {}
            401 => return Ok(None),
            status => {
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                return Err(LoadError::Register(format!("HTTP {status}: {body}")));
            }
        }
        let body: serde_json::Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| LoadError::Register(e.to_string()))?;
        let client_id = body["client_id"]
            .as_str()
            .ok_or_else(|| LoadError::Register("no client_id".into()))?
            .to_owned();
        Ok(Some(Device { client_id, key }))
    }

    /// The form fields that authenticate one request: a fresh one-use assertion (RFC 7523
    /// §3: `iss` = `sub` = client_id, `aud` the token endpoint, a unique `jti`, 60 s to live).
    pub(super) fn auth_fields(
        &self,
        token_endpoint: &str,
        now: u64,
        jti: u64,
        rng: &SystemRandom,
    ) -> Result<[(&'static str, String); 2], LoadError> {
        let header = B64.encode(br#"{"alg":"ES256","typ":"JWT","kid":"fleet"}"#);
        let claims = serde_json::json!({
            "iss": self.client_id, "sub": self.client_id, "aud": token_endpoint,
            "iat": now, "exp": now + 60, "jti": format!("fleet-{jti:x}"),
        });
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let signature = self
            .key
            .sign(rng, input.as_bytes())
            .map_err(|_| LoadError::Key)?;
        let assertion = format!("{input}.{}", B64.encode(signature.as_ref()));
        Ok([
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion),
        ])
    }
}
