//! The agent as an OAuth 2.0 client of any compliant authorization server: RFC 8414 metadata
//! discovery, token requests (RFC 6749 §4.4 client credentials, §6 refresh, RFC 8628 §3.4
//! device code), client authentication (`client_secret_basic`, RFC 6749 §2.3.1, and
//! `private_key_jwt`, RFC 7523 §2.2), and Hallmark's device key registration (first boot and
//! key-to-key rotation).

pub mod assertion;
pub mod device;
pub mod dpop;

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::http::{Http, HttpError, Response};

/// Grant type of the device authorization grant (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Why an OAuth exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// Fetching the server's metadata failed.
    #[error("cannot discover the authorization server {issuer}: {source}")]
    Discover {
        /// The issuer.
        issuer: String,
        /// The HTTP error.
        source: HttpError,
    },
    /// The metadata is unusable (RFC 8414 §3.2 and §3.3).
    #[error("the metadata of {issuer} is unusable: {reason}")]
    BadMetadata {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
    /// A request to an endpoint failed in transport.
    #[error("request to {endpoint} failed: {source}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// The HTTP error.
        source: HttpError,
    },
    /// The server answered with an RFC 6749 §5.2 error.
    #[error("{endpoint} refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        /// The endpoint.
        endpoint: String,
        /// The error code.
        code: ErrorCode,
        /// `error_description`, if any.
        description: Option<String>,
    },
    /// The server answered something that is not a valid response.
    #[error("{endpoint} answered HTTP {status} with an unusable body: {reason}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// What is wrong.
        reason: String,
    },
}

impl OAuthError {
    /// Whether trying again later may succeed (server unreachable or failing).
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthError::Discover { source, .. } | OAuthError::Request { source, .. } => {
                source.is_transient()
            }
            OAuthError::Rejected { code, .. } => *code == ErrorCode::TemporarilyUnavailable,
            _ => false,
        }
    }

    /// Whether the server asked for a DPoP nonce (RFC 9449 §8 `use_dpop_nonce`).
    pub fn wants_dpop_nonce(&self) -> bool {
        self.code()
            .is_some_and(|c| c.as_str() == dpop::USE_DPOP_NONCE)
    }

    /// The RFC 6749 error code, if the server answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            OAuthError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Error codes of RFC 6749 §5.2, RFC 8628 §3.5 and RFC 6749 §4.1.2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `invalid_request`.
    InvalidRequest,
    /// `invalid_client`: the client's credentials were refused.
    InvalidClient,
    /// `invalid_grant`: e.g. a spent or revoked refresh token.
    InvalidGrant,
    /// `unauthorized_client`.
    UnauthorizedClient,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `invalid_scope`.
    InvalidScope,
    /// `authorization_pending` (RFC 8628 §3.5).
    AuthorizationPending,
    /// `slow_down` (RFC 8628 §3.5).
    SlowDown,
    /// `access_denied`.
    AccessDenied,
    /// `expired_token` (RFC 8628 §3.5).
    ExpiredToken,
    /// `temporarily_unavailable`.
    TemporarilyUnavailable,
    /// Any other code.
    Other(String),
}

impl ErrorCode {
    fn parse(code: &str) -> ErrorCode {
        match code {
            "invalid_request" => ErrorCode::InvalidRequest,
            "invalid_client" => ErrorCode::InvalidClient,
            "invalid_grant" => ErrorCode::InvalidGrant,
            "unauthorized_client" => ErrorCode::UnauthorizedClient,
            "unsupported_grant_type" => ErrorCode::UnsupportedGrantType,
            "invalid_scope" => ErrorCode::InvalidScope,
            "authorization_pending" => ErrorCode::AuthorizationPending,
            "slow_down" => ErrorCode::SlowDown,
            "access_denied" => ErrorCode::AccessDenied,
            "expired_token" => ErrorCode::ExpiredToken,
            "temporarily_unavailable" => ErrorCode::TemporarilyUnavailable,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// The wire form.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ExpiredToken => "expired_token",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of RFC 8414 metadata the agent uses.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// `issuer`: must equal the configured issuer (RFC 8414 §3.3).
    pub issuer: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `device_authorization_endpoint` (RFC 8628 §4).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// Hallmark's first-boot key registration endpoint; absent on other servers.
    #[serde(default)]
    pub device_credentials_endpoint: Option<String>,
    /// `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

/// Fetches `{issuer}/.well-known/oauth-authorization-server` (RFC 8414 §3.1).
pub fn discover(http: &Http, issuer: &str) -> Result<Metadata, OAuthError> {
    let issuer = issuer.trim_end_matches('/');
    let url = format!("{issuer}/.well-known/oauth-authorization-server");
    let resp = http.get(&url).map_err(|source| OAuthError::Discover {
        issuer: issuer.to_owned(),
        source,
    })?;
    let bad = |reason: String| OAuthError::BadMetadata {
        issuer: issuer.to_owned(),
        reason,
    };
    if resp.status != 200 {
        return Err(bad(format!("HTTP {}", resp.status)));
    }
    let metadata: Metadata =
        serde_json::from_str(&resp.body).map_err(|e| bad(format!("not RFC 8414 JSON: {e}")))?;
    // RFC 8414 §3.3: the issuer in the document must be identical to the one we asked.
    if metadata.issuer.trim_end_matches('/') != issuer {
        return Err(bad(format!(
            "it names issuer {} instead (RFC 8414 §3.3)",
            metadata.issuer
        )));
    }
    Ok(metadata)
}

/// How the client authenticates a request.
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1): the factory secret.
    Secret {
        /// client_id.
        client_id: String,
        /// The secret.
        secret: Zeroizing<String>,
    },
    /// `private_key_jwt` (RFC 7523 §2.2): a one-use assertion signed by the TPM.
    Assertion {
        /// client_id.
        client_id: String,
        /// The signed JWT.
        assertion: String,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::Secret { client_id, .. } => write!(f, "Secret({client_id}, <redacted>)"),
            ClientAuth::Assertion { client_id, .. } => write!(f, "Assertion({client_id})"),
        }
    }
}

impl ClientAuth {
    /// The `Authorization` header and the extra form parameters this authentication adds.
    fn apply(&self) -> (Option<String>, Vec<(&'static str, String)>) {
        match self {
            ClientAuth::Secret { client_id, secret } => {
                (Some(basic(client_id, secret.as_str())), vec![])
            }
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => (
                None,
                vec![
                    ("client_id", client_id.clone()),
                    (
                        "client_assertion_type",
                        assertion::ASSERTION_TYPE.to_owned(),
                    ),
                    ("client_assertion", assertion.clone()),
                ],
            ),
        }
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer` in practice.
    #[serde(default)]
    pub token_type: String,
    /// Lifetime in seconds (RECOMMENDED; the agent assumes 5 minutes when absent).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Granted scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// A refresh token (device flow and refresh grants).
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// POSTs a token request (RFC 6749 §3.2) with `params` and the client's authentication.
pub fn token_request(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    dpop: Option<&str>,
    params: &[(&str, &str)],
) -> Result<TokenResponse, OAuthError> {
    let resp = post_form(http, endpoint, auth, dpop, params)?;
    parse_success(endpoint, &resp)
}

/// POSTs a form to `endpoint` with the client's authentication; the raw response.
pub(crate) fn post_form(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    dpop: Option<&str>,
    params: &[(&str, &str)],
) -> Result<Response, OAuthError> {
    let (authorization, extra) = auth.apply();
    let mut form: Vec<(&str, &str)> = params.to_vec();
    form.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    http.post_form_dpop(endpoint, authorization.as_deref(), dpop, &form)
        .map_err(|source| OAuthError::Request {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// What the server made of a presented device key.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyRegistration {
    /// The key is pending: its first `private_key_jwt` use makes it the credential.
    Pending {
        /// Its kid.
        kid: String,
        /// Whether the server attested it (credential activation); `None` if it did not say.
        attested: Option<bool>,
    },
    /// The server wants proof that the key lives in this TPM: a credential-activation
    /// challenge (TPM 2.0 Part 1 §24) to answer with [`answer_key_challenge`].
    Challenge(KeyChallenge),
}

/// A credential-activation challenge for a new key.
#[derive(Debug)]
#[non_exhaustive]
pub struct KeyChallenge {
    /// The contents of the TPM2B_ID_OBJECT.
    pub credential_blob: Vec<u8>,
    /// The contents of the TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
}

/// Presents the public JWK and TPM public area (TPM2B_PUBLIC) of a new device key at Hallmark's
/// `device_credentials_endpoint`, authenticated by the device's current credential: the
/// factory secret (`Authorization: Basic`) on first boot, or a `private_key_jwt` assertion of
/// its current key for a key-to-key rotation (the RFC 7523 §2.2 parameters as JSON members
/// beside `jwk`). The server answers that the key is pending, or with a challenge.
pub fn register_key(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    jwk: &serde_json::Value,
    tpm_public: &[u8],
) -> Result<KeyRegistration, OAuthError> {
    present_key(http, endpoint, auth, jwk, ("tpm_public", tpm_public))
}

/// Answers a [`KeyChallenge`] with the secret the TPM recovered; the key is pending after.
pub fn answer_key_challenge(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    jwk: &serde_json::Value,
    activated_secret: &[u8],
) -> Result<KeyRegistration, OAuthError> {
    present_key(
        http,
        endpoint,
        auth,
        jwk,
        ("activated_secret", activated_secret),
    )
}

fn present_key(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    jwk: &serde_json::Value,
    (name, value): (&str, &[u8]),
) -> Result<KeyRegistration, OAuthError> {
    let (authorization, mut body) = registration(auth, jwk);
    body.insert(name.into(), URL_SAFE_NO_PAD.encode(value).into());
    let resp = http
        .post_json(
            endpoint,
            authorization.as_deref(),
            &serde_json::Value::Object(body),
        )
        .map_err(|source| OAuthError::Request {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let value: serde_json::Value = parse_success(endpoint, &resp)?;
    let bad = |reason: &str| OAuthError::BadResponse {
        endpoint: endpoint.to_owned(),
        status: resp.status,
        reason: reason.to_owned(),
    };
    let bytes = |member: &str| -> Result<Vec<u8>, OAuthError> {
        value
            .get(member)
            .and_then(|v| v.as_str())
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
            .ok_or_else(|| bad(&format!("a challenge without a base64url {member}")))
    };
    match value.get("status").and_then(|s| s.as_str()) {
        Some("challenge") => Ok(KeyRegistration::Challenge(KeyChallenge {
            credential_blob: bytes("credential_blob")?,
            encrypted_secret: bytes("encrypted_secret")?,
        })),
        // A server from before attestation answers `pending` without saying more.
        _ => match value.get("kid").and_then(|k| k.as_str()) {
            Some(kid) => Ok(KeyRegistration::Pending {
                kid: kid.to_owned(),
                attested: value.get("attested").and_then(|a| a.as_bool()),
            }),
            None => Err(bad("no kid in the answer")),
        },
    }
}

/// The `Authorization` header and JSON body of a key registration: `{"jwk": …}`, plus the
/// assertion parameters when the client authenticates with one.
fn registration(
    auth: &ClientAuth,
    jwk: &serde_json::Value,
) -> (Option<String>, serde_json::Map<String, serde_json::Value>) {
    let (authorization, extra) = auth.apply();
    let mut body = serde_json::Map::new();
    body.insert("jwk".into(), jwk.clone());
    for (name, value) in extra {
        body.insert(name.into(), value.into());
    }
    (authorization, body)
}

/// Parses a 2xx JSON body as `T`, or an RFC 6749 §5.2 error body into [`OAuthError::Rejected`].
/// Both must be JSON objects (RFC 6749 §5.1, §5.2): serde would also read a struct from a JSON
/// array by position, so `["x"]` would otherwise pass as a token response carrying token "x"
/// (found by the `agent_response` fuzz target).
pub fn parse_success<T: serde::de::DeserializeOwned>(
    endpoint: &str,
    resp: &Response,
) -> Result<T, OAuthError> {
    let bad = |reason: String| OAuthError::BadResponse {
        endpoint: endpoint.to_owned(),
        status: resp.status,
        reason,
    };
    let object = serde_json::from_str::<serde_json::Value>(&resp.body)
        .ok()
        .filter(serde_json::Value::is_object);
    if (200..300).contains(&resp.status) {
        let object = object.ok_or_else(|| bad("not a JSON object".into()))?;
        return T::deserialize(object).map_err(|e| bad(e.to_string()));
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    match object.map(ErrorBody::deserialize) {
        Some(Ok(e)) => Err(OAuthError::Rejected {
            endpoint: endpoint.to_owned(),
            code: ErrorCode::parse(&e.error),
            description: e.error_description,
        }),
        _ => Err(bad("not an RFC 6749 §5.2 error".into())),
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn basic(client_id: &str, secret: &str) -> String {
    let pair = Zeroizing::new(format!(
        "{}:{}",
        form_urlencode(client_id),
        form_urlencode(secret)
    ));
    format!("Basic {}", STANDARD.encode(pair.as_bytes()))
}

/// application/x-www-form-urlencoded encoding of one value (RFC 6749 Appendix B).
fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_urlencodes_both_parts() {
        // RFC 6749 §2.3.1: "client_id:secret" after form-urlencoding each.
        let h = basic("a b", "x:y");
        let decoded = STANDARD.decode(h.trim_start_matches("Basic ")).unwrap();
        assert_eq!(decoded, b"a+b:x%3Ay");
    }

    #[test]
    fn registration_carries_the_current_credential() {
        let jwk = serde_json::json!({"kty": "EC", "kid": "new"});
        // First boot: the factory secret in a Basic header, only the JWK in the body.
        let secret = ClientAuth::Secret {
            client_id: "dev".into(),
            secret: Zeroizing::new("s3cret".into()),
        };
        let (authorization, body) = registration(&secret, &jwk);
        assert_eq!(authorization, Some(basic("dev", "s3cret")));
        assert_eq!(
            serde_json::Value::Object(body),
            serde_json::json!({"jwk": jwk})
        );
        // Rekey: the old key's assertion as RFC 7523 §2.2 parameters beside the JWK.
        let assertion = ClientAuth::Assertion {
            client_id: "dev".into(),
            assertion: "a.b.c".into(),
        };
        let (authorization, body) = registration(&assertion, &jwk);
        assert_eq!(authorization, None);
        assert_eq!(
            serde_json::Value::Object(body),
            serde_json::json!({
                "jwk": jwk,
                "client_id": "dev",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": "a.b.c",
            })
        );
    }

    #[test]
    fn error_bodies_become_rfc6749_codes() {
        let resp = Response {
            status: 401,
            body: r#"{"error":"invalid_client","error_description":"nope"}"#.into(),
        };
        let err = parse_success::<TokenResponse>("t", &resp).unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::InvalidClient));
        assert!(!err.is_transient());
        assert!(err.to_string().contains("invalid_client (nope)"));
        let garbage = Response {
            status: 400,
            body: "<html>".into(),
        };
        assert!(matches!(
            parse_success::<TokenResponse>("t", &garbage),
            Err(OAuthError::BadResponse { .. })
        ));
    }

    /// Found by the `agent_response` fuzz target: serde reads a struct from a JSON array by
    /// position, so `["x"]` passed as a token response and `[""]` as an error. Only objects do.
    #[test]
    fn json_arrays_are_neither_tokens_nor_errors() {
        for status in [200, 400] {
            for body in [
                r#"["x"]"#,
                r#"[""]"#,
                r#"["x","Bearer",300]"#,
                "7",
                r#""s""#,
            ] {
                let resp = Response {
                    status,
                    body: body.into(),
                };
                assert!(
                    matches!(
                        parse_success::<TokenResponse>("t", &resp),
                        Err(OAuthError::BadResponse { .. })
                    ),
                    "{status} {body}"
                );
            }
        }
    }

    #[test]
    fn token_response_debug_hides_tokens() {
        let t: TokenResponse = serde_json::from_str(
            r#"{"access_token":"SECRET1","token_type":"Bearer","expires_in":300,"refresh_token":"SECRET2"}"#,
        )
        .unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
