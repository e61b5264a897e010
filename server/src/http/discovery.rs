//! Discovery and liveness: RFC 8414 metadata, the JWKS, `/healthz`, `/readyz`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::error::json_bytes;
use crate::oauth::{grant, Settings};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata_handler),
        )
        .route("/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// RFC 8414 §2 metadata for these settings.
pub(super) fn metadata(s: &Settings) -> Vec<u8> {
    let issuer = &s.issuer;
    let auth_methods = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ];
    let algs = ["ES256", "EdDSA"];
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": s.token_endpoint,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        // Hallmark's first-boot rotation endpoint (DESIGN: Life of a device, step 2).
        "device_credentials_endpoint": format!("{issuer}/oauth2/device-credentials"),
        // RFC 8628 §4.
        "device_authorization_endpoint": s.device.device_authorization_endpoint,
        "grant_types_supported": [
            grant::CLIENT_CREDENTIALS,
            grant::DEVICE_CODE,
            grant::REFRESH_TOKEN,
            grant::TOKEN_EXCHANGE,
        ],
        "response_types_supported": [],
        // Public device clients ("none") at the token endpoint for the device_code and
        // refresh_token grants only (RFC 8628 §3.4).
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": algs,
        // RFC 7009 §2.1: public clients revoke their own tokens by client_id alone.
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": algs,
        // RFC 9449 §5.1.
        "dpop_signing_alg_values_supported": crate::oauth::dpop::DPOP_SIGNING_ALGS,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

async fn metadata_handler(State(state): State<super::State>) -> impl IntoResponse {
    let mut resp = json_bytes(StatusCode::OK, state.metadata_json.clone());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

async fn jwks(State(state): State<super::State>) -> impl IntoResponse {
    let ring = state.oauth.keys.current();
    let mut resp = json_bytes(StatusCode::OK, ring.jwks_json.clone());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Validators may cache for a minute; rotation publishes keys well ahead of that.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// Prometheus scrape endpoint (OpenMetrics text).
async fn metrics(State(state): State<super::State>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
}

/// Ready when writes reach stable storage: not while storage is failing; otherwise a recent
/// flush or a write probe through the group committer proves it. (Reads alone would say
/// nothing: a full disk still answers them.) The 503 gets its `Retry-After` from the router.
async fn ready(State(state): State<super::State>) -> axum::response::Response {
    match state.oauth.commit.probe().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "not ready");
            super::error::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": "storage does not take writes",
                }),
            )
        }
    }
}
