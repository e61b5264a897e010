//! Errors to responses: RFC 6749 §5.2 JSON for OAuth errors (401 with `WWW-Authenticate: Basic`
//! for `invalid_client`), RFC 6750 §3 for bearer failures, a bare 500 for our own faults, 503
//! `temporarily_unavailable` while storage is out of reach (the router adds `Retry-After`).

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;

use crate::oauth::registration::BearerError;
use crate::oauth::OAuthError;
use crate::untrusted::{clip_to, MAX_REASON_CHARS};

/// An OAuth error on its way out.
#[derive(Debug)]
pub struct OAuthResponse(pub OAuthError);

impl From<OAuthError> for OAuthResponse {
    fn from(e: OAuthError) -> Self {
        OAuthResponse(e)
    }
}

impl IntoResponse for OAuthResponse {
    fn into_response(self) -> axum::response::Response {
        let e = self.0;
        match &e {
            OAuthError::Internal(detail) => tracing::error!(%detail, "internal error"),
            // The committer logs the failure's onset with the OS error, once; not per request.
            OAuthError::TemporarilyUnavailable(detail) => {
                tracing::debug!(%detail, "refused: storage unavailable")
            }
            OAuthError::InvalidClient { reason } => {
                let reason = clip_to(reason, MAX_REASON_CHARS);
                tracing::info!(%reason, "client authentication failed")
            }
            other => {
                let error = other.to_string();
                let error = clip_to(&error, MAX_REASON_CHARS);
                tracing::debug!(%error, "request refused")
            }
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = json_response(status, &e.body());
        // RFC 9449 §8: the nonce to use comes in `DPoP-Nonce`.
        if let OAuthError::UseDpopNonce { nonce } = &e {
            if let Ok(v) = HeaderValue::from_str(nonce) {
                resp.headers_mut().insert("dpop-nonce", v);
            }
        }
        if matches!(e, OAuthError::InvalidClient { .. }) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hallmark\""),
            );
        }
        resp
    }
}

impl IntoResponse for BearerError {
    fn into_response(self) -> axum::response::Response {
        let (status, code, challenge) = match &self {
            BearerError::Malformed(why) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "invalid_request", "error_description": why}),
                );
            }
            BearerError::Missing => (
                StatusCode::UNAUTHORIZED,
                None,
                "Bearer realm=\"hallmark\"".to_owned(),
            ),
            BearerError::InvalidToken(why) => {
                tracing::info!(%why, "bearer token refused");
                (
                    StatusCode::UNAUTHORIZED,
                    Some("invalid_token"),
                    "Bearer realm=\"hallmark\", error=\"invalid_token\"".to_owned(),
                )
            }
            // RFC 9449 §7.1-7.2: a DPoP failure is a DPoP challenge; a nonce comes with it.
            BearerError::Dpop(e) => {
                tracing::info!(error = %e, "DPoP proof refused at a resource");
                let (code, nonce) = match e {
                    crate::oauth::dpop::DpopError::UseNonce { nonce } => {
                        ("use_dpop_nonce", Some(nonce.as_str()))
                    }
                    _ => ("invalid_dpop_proof", None),
                };
                let mut resp = json_response(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": code, "error_description": e.to_string()}),
                );
                let challenge = format!(
                    "DPoP algs=\"{}\", error=\"{code}\"",
                    crate::oauth::dpop::DPOP_SIGNING_ALGS.join(" ")
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                if let Some(n) = nonce.and_then(|n| HeaderValue::from_str(n).ok()) {
                    resp.headers_mut().insert("dpop-nonce", n);
                }
                return resp;
            }
            BearerError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                format!(
                    "Bearer realm=\"hallmark\", error=\"insufficient_scope\", scope=\"{scope}\""
                ),
            ),
            BearerError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "server_error"}),
                );
            }
            // The router adds `Retry-After` to every 503.
            BearerError::Unavailable(detail) => {
                tracing::debug!(%detail, "refused: storage unavailable");
                return OAuthResponse(crate::oauth::OAuthError::TemporarilyUnavailable(
                    detail.clone(),
                ))
                .into_response();
            }
        };
        let body = match code {
            Some(c) => serde_json::json!({"error": c, "error_description": self.to_string()}),
            None => {
                serde_json::json!({"error": "invalid_request", "error_description": "a bearer token is required"})
            }
        };
        let mut resp = json_response(status, &body);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// A JSON response that no cache may keep (RFC 6749 §5.1).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> axum::response::Response {
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// `value` as a 200 JSON answer, or the OAuth error.
pub fn json_or_error<T: serde::Serialize>(
    result: Result<T, OAuthError>,
) -> axum::response::Response {
    match result {
        Ok(value) => json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&value).unwrap_or_default(),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

/// Pre-serialised JSON, `Cache-Control: no-store`.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> axum::response::Response {
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Every error the API answers is JSON of one shape, `{"error", "error_description"}`, whoever
/// produced it: axum's own rejections (a path that does not decode, a wrong method, a body of
/// the wrong type) come as text or with no body, and are rewritten here. HTML (the verification
/// page) and JSON pass through untouched.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request",
    };
    let mut json = serde_json::json!({ "error": code });
    if !status.is_server_error() {
        // axum's rejection text says what was wrong; it may quote the request, so clipped.
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        let description = if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_owned()
        } else {
            clip_to(text, 200).into_owned()
        };
        json["error_description"] = description.into();
    }
    let mut resp = json_response(status, &json);
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            resp.headers_mut().insert(name, value.clone());
        }
    }
    resp
}

/// Unknown routes.
pub async fn not_found() -> axum::response::Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found"}),
    )
}
