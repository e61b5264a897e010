//! The OAuth endpoints: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::ctx::Ctx;
use super::error::json_or_error;
use crate::oauth::client_auth::Presented;
use crate::oauth::dpop::ProofRequest;
use crate::oauth::form::Form;
use crate::oauth::{OAuthError, RequestCtx, Settings};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
}

/// Read the form and the client's credentials from a request.
pub(super) fn read_request(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Presented, Form), OAuthError> {
    let (authorization, mut form) = read_request_form(headers, body)?;
    let presented = Presented::from_request(authorization, &mut form)?;
    Ok((presented, form))
}

/// Read the form and the raw `Authorization` header.
pub(super) fn read_request_form(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Option<&str>, Form), OAuthError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OAuthError::PayloadTooLarge
        } else {
            OAuthError::InvalidRequest("could not read the request body".into())
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let form = Form::parse(content_type, &body)?;
    // Two Authorization headers are two credentials (RFC 6749 §2.3: one method per request).
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(OAuthError::InvalidRequest(
            "more than one Authorization header".into(),
        ));
    }
    let authorization =
        match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                OAuthError::InvalidRequest("Authorization header is not ASCII".into())
            })?),
        };
    Ok((authorization, form))
}

/// What a request brings for DPoP (RFC 9449 §4.3): its `DPoP` header(s), the method, and the
/// URL the proof must name — the issuer and the path this request reached, as clients are
/// told them by the metadata (and as client assertions' `aud` are checked).
pub(super) fn proof_request(
    headers: &HeaderMap,
    method: &str,
    settings: &Settings,
    ctx: &RequestCtx,
    fallback_url: &str,
) -> ProofRequest {
    let mut values = headers.get_all("dpop").iter();
    let first = values.next();
    let repeated = values.next().is_some();
    ProofRequest {
        // A value that is not ASCII is no compact JWS: kept empty, refused as malformed.
        proof: first.map(|v| v.to_str().unwrap_or_default().to_owned()),
        repeated,
        method: method.to_owned(),
        url: ctx.endpoint.as_deref().map_or_else(
            || fallback_url.to_owned(),
            |path| format!("{}{path}", settings.issuer),
        ),
    }
}

/// RFC 9449 §8: with nonces required, every answer of an endpoint that takes proofs carries
/// the current one, so a client rarely needs the extra round trip of `use_dpop_nonce`.
pub(super) fn with_nonce(
    state: &super::State,
    ctx: &RequestCtx,
    mut response: Response,
) -> Response {
    let oauth = &state.oauth;
    if oauth.settings.dpop.require_nonce && !response.headers().contains_key("dpop-nonce") {
        if let Ok(v) = axum::http::HeaderValue::from_str(&oauth.dpop_nonce(ctx.now)) {
            response.headers_mut().insert("dpop-nonce", v);
        }
    }
    response
}

async fn token(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let settings = &state.oauth.settings;
    let dpop = proof_request(&headers, "POST", settings, &ctx, &settings.token_endpoint);
    let result = async {
        let (presented, form) = read_request(&headers, body)?;
        state
            .oauth
            .token_with_dpop(presented, form, &dpop, &ctx)
            .await
    }
    .await;
    with_nonce(&state, &ctx, json_or_error(result))
}

async fn introspect(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let (presented, form) = read_request(&headers, body)?;
        state.oauth.introspect(presented, form, &ctx).await
    }
    .await;
    json_or_error(result)
}

async fn revoke(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let (presented, form) = read_request(&headers, body)?;
        state.oauth.revoke(presented, form, &ctx).await
    }
    .await;
    // RFC 7009 §2.2: an empty 200.
    json_or_error(result.map(|()| serde_json::json!({})))
}
