//! The station's side of the server's admin API: its client credentials, a cached access token
//! (one per scope, refreshed before expiry), device registration and deletion.
//!
//! The station credentials file is JSON, `{"client_id": "…", "client_secret": "…"}`, readable
//! only by the station's user (a world-readable file is refused). The server's CA is pinned: the
//! station trusts no other.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hallmark_agent::tpm::EndorsementKey;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Scope a station needs to register devices.
pub const PROVISION_SCOPE: &str = "devices:provision";
/// Scope needed to delete a device (only for `--reset-lost`).
pub const ADMIN_SCOPE: &str = "devices:admin";
/// How long before its expiry a cached token is replaced (at most half its lifetime).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Connection timeout for every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall timeout for every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The station's OAuth client credentials.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationCredentials {
    /// The station's client_id.
    pub client_id: String,
    client_secret: Zeroizing<String>,
}

impl fmt::Debug for StationCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StationCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

impl StationCredentials {
    /// Credentials from their parts.
    pub fn new(client_id: String, client_secret: String) -> Self {
        StationCredentials {
            client_id,
            client_secret: Zeroizing::new(client_secret),
        }
    }

    /// Reads the credentials file, refusing one that every user may read.
    pub fn load(path: &Path) -> Result<Self, StationError> {
        let file = || path.to_path_buf();
        check_owner_only(path)?;
        let text =
            std::fs::read_to_string(path).map_err(|source| StationError::ReadCredentials {
                path: file(),
                source,
            })?;
        let text = Zeroizing::new(text);
        serde_json::from_str(&text).map_err(|source| StationError::ParseCredentials {
            path: file(),
            line: source.line(),
            reason: source.classify(),
        })
    }
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), StationError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| StationError::ReadCredentials {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    // Owner-only: a group that can read the station's secret can register devices as it.
    if mode & 0o077 != 0 {
        return Err(StationError::CredentialsExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_: &Path) -> Result<(), StationError> {
    Ok(())
}

/// The `ek_public` and `ek_certificate` members of a registration: base64url DER.
fn ek_members(ek: &EndorsementKey) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut members = vec![("ek_public", b64.encode(&ek.spki_der))];
    if let Some(cert) = &ek.certificate {
        members.push(("ek_certificate", b64.encode(cert)));
    }
    members
}

/// What went wrong between the station and the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// The credentials file cannot be read.
    #[error("cannot read station credentials {}", path.display())]
    ReadCredentials {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The credentials file is readable or writable by someone other than its owner.
    #[error(
        "station credentials {} are open to other users (mode {mode:03o}); only the owner may read them: run chmod 600 {}",
        path.display(), path.display()
    )]
    CredentialsExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The credentials file is not `{"client_id","client_secret"}` JSON.
    #[error(
        "station credentials {} are not JSON {{\"client_id\",\"client_secret\"}} (line {line}: {reason:?} error)",
        path.display()
    )]
    ParseCredentials {
        /// The file.
        path: PathBuf,
        /// Line of the error.
        line: usize,
        /// Kind of error (never the text, which could quote the secret).
        reason: serde_json::error::Category,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("cannot use {} as the server's CA: {reason}", path.display())]
    LoadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server could not be reached or answered garbage.
    #[error("cannot reach the server at {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The HTTP client's error.
        source: ureq::Error,
    },
    /// The server refused the request.
    #[error(
        "the server refused {operation} ({status}): {error}{}",
        description_suffix(description)
    )]
    Refused {
        /// What was asked.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// RFC 6749 error code or similar.
        error: String,
        /// error_description, if any.
        description: Option<String>,
    },
    /// The server answered with an unexpected body.
    #[error("unexpected answer to {operation} from the server: {reason}")]
    Protocol {
        /// What was asked.
        operation: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn description_suffix(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// What the server said to a device registration. `Debug` never shows the factory secret.
#[non_exhaustive]
pub enum Registration {
    /// A new device; its one-time factory secret (base64url, as sent).
    Created {
        /// The device's client_id.
        client_id: String,
        /// The factory secret.
        factory_secret: Zeroizing<String>,
    },
    /// The TPM's EK is registered under another serial: refused, one TPM is one identity.
    EkInUse {
        /// That registration's client_id.
        client_id: String,
        /// Its serial.
        serial: String,
    },
    /// The serial is already registered.
    Exists {
        /// Its client_id.
        client_id: String,
        /// The EK fingerprint it was registered with.
        ek_fingerprint: String,
        /// Whether the server holds the EK's public key (registrations from before attestation
        /// do not, and cannot rotate until a station supplies it).
        ek_public: bool,
    },
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Created { client_id, .. } => f
                .debug_struct("Created")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Registration::EkInUse { client_id, serial } => f
                .debug_struct("EkInUse")
                .field("client_id", client_id)
                .field("serial", serial)
                .finish(),
            Registration::Exists {
                client_id,
                ek_fingerprint,
                ek_public,
            } => f
                .debug_struct("Exists")
                .field("client_id", client_id)
                .field("ek_fingerprint", ek_fingerprint)
                .field("ek_public", ek_public)
                .finish(),
        }
    }
}

struct CachedToken {
    token: Zeroizing<String>,
    refresh_at: Instant,
}

/// An HTTPS client for one server, authenticated as one station; cheap to share between
/// threads (the token cache is shared).
#[derive(Clone)]
pub struct StationClient {
    server: String,
    credentials: StationCredentials,
    http: ureq::Agent,
    tokens: Arc<Mutex<HashMap<&'static str, CachedToken>>>,
    token_endpoint: Arc<Mutex<Option<String>>>,
    token_requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl fmt::Debug for StationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StationClient")
            .field("server", &self.server)
            .field("client_id", &self.credentials.client_id)
            .finish()
    }
}

impl StationClient {
    /// A client for `server` (the issuer URL) trusting only the CA in `ca_pem`.
    pub fn new(
        server: &str,
        ca_path: &Path,
        ca_pem: &[u8],
        credentials: StationCredentials,
    ) -> Result<Self, StationError> {
        let ca = ureq::tls::Certificate::from_pem(ca_pem)
            .map_err(|e| StationError::LoadCa {
                path: ca_path.to_path_buf(),
                reason: e.to_string(),
            })?
            .to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let http = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Ok(StationClient {
            server: server.trim_end_matches('/').to_owned(),
            credentials,
            http,
            tokens: Arc::default(),
            token_endpoint: Arc::default(),
            token_requests: Arc::default(),
        })
    }

    /// The server's issuer URL as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// How many access tokens this client (and its clones) asked for so far.
    pub fn token_requests(&self) -> usize {
        self.token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `POST /admin/devices`: registers a device with its TPM's endorsement key (fingerprint,
    /// public key and, where the TPM has one, certificate), or learns that its serial exists.
    /// With `dpop`, the device's client is registered `dpop_bound_access_tokens` (RFC 9449
    /// §5.2).
    pub fn register_device(
        &self,
        serial: &str,
        model: &str,
        ek: &EndorsementKey,
        dpop: bool,
    ) -> Result<Registration, StationError> {
        let url = format!("{}/admin/devices", self.server);
        let mut body = serde_json::json!({"serial": serial, "model": model});
        if dpop {
            body["dpop_bound_access_tokens"] = true.into();
        }
        body["ek_fingerprint"] = ek.fingerprint().into();
        for (name, value) in ek_members(ek) {
            body[name] = value.into();
        }
        let (status, json) = self.with_token(PROVISION_SCOPE, |token| {
            let resp = self
                .http
                .post(&url)
                .header("Authorization", &format!("Bearer {}", token.as_str()))
                .send_json(&body);
            read_json(&url, resp)
        })?;
        let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let missing = |name: &str| StationError::Protocol {
            operation: "device registration",
            reason: format!("no {name} in the answer"),
        };
        match status {
            201 => Ok(Registration::Created {
                client_id: field("client_id").ok_or_else(|| missing("client_id"))?,
                factory_secret: Zeroizing::new(
                    field("factory_secret").ok_or_else(|| missing("factory_secret"))?,
                ),
            }),
            409 if field("error").as_deref() == Some("device_exists") => Ok(Registration::Exists {
                client_id: field("client_id").ok_or_else(|| missing("client_id"))?,
                ek_fingerprint: field("ek_fingerprint").ok_or_else(|| missing("ek_fingerprint"))?,
                // A server from before attestation does not say; it has no use for the key.
                ek_public: json
                    .get("ek_public")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true),
            }),
            409 if field("error").as_deref() == Some("ek_in_use") => Ok(Registration::EkInUse {
                client_id: field("client_id").ok_or_else(|| missing("client_id"))?,
                serial: field("serial").ok_or_else(|| missing("serial"))?,
            }),
            _ => Err(refused("device registration", status, &json)),
        }
    }

    /// `POST /admin/devices/{client_id}/ek` (scope `devices:provision`): supplies the EK public
    /// key (and certificate) of a device registered without them, so that the server can
    /// attest its keys; `false` if the server no longer has the device.
    pub fn attest_ek(&self, client_id: &str, ek: &EndorsementKey) -> Result<bool, StationError> {
        let url = format!("{}/admin/devices/{client_id}/ek", self.server);
        let body = serde_json::Value::Object(
            ek_members(ek)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect(),
        );
        let (status, json) = self.with_token(PROVISION_SCOPE, |token| {
            let resp = self
                .http
                .post(&url)
                .header("Authorization", &format!("Bearer {}", token.as_str()))
                .send_json(&body);
            read_json(&url, resp)
        })?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(refused("re-attesting the EK", status, &json)),
        }
    }

    /// `DELETE /admin/devices/{client_id}` (needs `devices:admin`); `false` if it was gone.
    pub fn delete_device(&self, client_id: &str) -> Result<bool, StationError> {
        let url = format!("{}/admin/devices/{client_id}", self.server);
        let (status, json) = self.with_token(ADMIN_SCOPE, |token| {
            let resp = self
                .http
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", token.as_str()))
                .call();
            read_json(&url, resp)
        })?;
        match status {
            200 | 204 => Ok(true),
            404 => Ok(false),
            _ => Err(refused("device deletion", status, &json)),
        }
    }

    /// `POST /admin/devices/{client_id}/withdraw` (scope `devices:provision`): takes back a
    /// registration this station just made and could not complete; `false` if the server no
    /// longer has it.
    pub fn withdraw_device(&self, client_id: &str) -> Result<bool, StationError> {
        let url = format!("{}/admin/devices/{client_id}/withdraw", self.server);
        let (status, json) = self.with_token(PROVISION_SCOPE, |token| {
            let resp = self
                .http
                .post(&url)
                .header("Authorization", &format!("Bearer {}", token.as_str()))
                .send_empty();
            read_json(&url, resp)
        })?;
        match status {
            200 | 204 => Ok(true),
            404 => Ok(false),
            _ => Err(refused("withdrawing the registration", status, &json)),
        }
    }

    /// Runs `call` with a token for `scope`; on 401 (token revoked, signing key gone) fetches a
    /// fresh token and tries once more.
    fn with_token(
        &self,
        scope: &'static str,
        call: impl Fn(&Zeroizing<String>) -> Result<(u16, serde_json::Value), StationError>,
    ) -> Result<(u16, serde_json::Value), StationError> {
        let token = self.token(scope)?;
        let (status, json) = call(&token)?;
        if status != 401 {
            return Ok((status, json));
        }
        self.forget_token(scope);
        call(&self.token(scope)?)
    }

    fn forget_token(&self, scope: &'static str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(scope);
        }
    }

    /// A cached access token for `scope`, fetched with the client credentials grant (RFC 6749
    /// §4.4) when absent or about to expire. The lock is held while fetching so that parallel
    /// workers wait for one request instead of each making their own.
    fn token(&self, scope: &'static str) -> Result<Zeroizing<String>, StationError> {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = tokens.get(scope) {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let fetched = self.fetch_token(scope)?;
        let token = fetched.token.clone();
        tokens.insert(scope, fetched);
        Ok(token)
    }

    fn fetch_token(&self, scope: &'static str) -> Result<CachedToken, StationError> {
        let url = self.token_endpoint()?;
        self.token_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let resp = self
            .http
            .post(&url)
            .header("Authorization", &self.basic_authorization())
            .send_form([("grant_type", "client_credentials"), ("scope", scope)]);
        let (status, json) = read_json(&url, resp)?;
        if status != 200 {
            return Err(refused("the station's token request", status, &json));
        }
        let token =
            json.get("access_token")
                .and_then(|v| v.as_str())
                .ok_or(StationError::Protocol {
                    operation: "the station's token request",
                    reason: "no access_token in the answer".into(),
                })?;
        let lifetime = Duration::from_secs(
            json.get("expires_in")
                .and_then(|v| v.as_u64())
                .unwrap_or(60),
        );
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken {
            token: Zeroizing::new(token.to_owned()),
            refresh_at: started + lifetime - margin,
        })
    }

    /// The token endpoint from the server's RFC 8414 metadata (fetched once).
    fn token_endpoint(&self) -> Result<String, StationError> {
        let mut cached = self
            .token_endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(url) = cached.as_ref() {
            return Ok(url.clone());
        }
        let url = format!("{}/.well-known/oauth-authorization-server", self.server);
        let (status, json) = read_json(&url, self.http.get(&url).call())?;
        if status != 200 {
            return Err(refused("the metadata request", status, &json));
        }
        let endpoint = json
            .get("token_endpoint")
            .and_then(|v| v.as_str())
            .ok_or(StationError::Protocol {
                operation: "the metadata request",
                reason: "no token_endpoint".into(),
            })?
            .to_owned();
        *cached = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// RFC 6749 §2.3.1: client_id and secret form-urlencoded, then Basic.
    fn basic_authorization(&self) -> String {
        let pair = Zeroizing::new(format!(
            "{}:{}",
            form_urlencode(&self.credentials.client_id),
            form_urlencode(&self.credentials.client_secret)
        ));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        )
    }
}

fn read_json(
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, serde_json::Value), StationError> {
    let unreachable = |source| StationError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let mut resp = resp.map_err(unreachable)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(unreachable)?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

fn refused(operation: &'static str, status: u16, json: &serde_json::Value) -> StationError {
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    StationError::Refused {
        operation,
        status,
        error: field("error").unwrap_or_else(|| "no error code".into()),
        description: field("error_description"),
    }
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let c = StationCredentials::new("station".into(), "s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
        let r = Registration::Created {
            client_id: "dev-1".into(),
            factory_secret: Zeroizing::new("f4ctory".into()),
        };
        let shown = format!("{r:?}");
        assert!(
            shown.contains("dev-1") && !shown.contains("f4ctory"),
            "{shown}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_credentials() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.json");
        std::fs::write(&path, r#"{"client_id":"a","client_secret":"b"}"#).unwrap();
        for open in [0o644, 0o640, 0o620, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
            let err = StationCredentials::load(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{open:o}: {err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(StationCredentials::load(&path).unwrap().client_id, "a");
    }

    #[test]
    fn parse_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.json");
        std::fs::write(
            &path,
            r#"{"client_id":"a","client_secret":"topsecret","x":1}"#,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = StationCredentials::load(&path).unwrap_err().to_string();
        assert!(!err.contains("topsecret") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn form_urlencodes_reserved_characters() {
        assert_eq!(form_urlencode("a b:c/é"), "a%20b%3Ac%2F%C3%A9");
    }
}
