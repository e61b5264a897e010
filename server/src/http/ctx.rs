//! The request context extractor: arrival time, request id, client address, storage epoch.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::oauth::RequestCtx;

/// Longest caller-supplied request id we keep.
const MAX_REQUEST_ID: usize = 64;
/// Longest endpoint path kept for assertion audiences; ours are short.
const MAX_ENDPOINT_PATH: usize = 64;

/// The client's address as the router worked it out from the peer and trusted proxies'
/// `X-Forwarded-For` (see [`super::forwarded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The storage epoch a request started in, put there by the router's middleware (see
/// [`crate::store::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageEpoch(pub crate::store::health::Epoch);

/// [`RequestCtx`] for a handler.
#[derive(Debug)]
pub struct Ctx(pub RequestCtx);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Without the router's middleware (a handler served on its own), the peer is all we know.
        let source = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
            });
        // A caller's id is kept only if it is short and plain, so it cannot inject into logs.
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_REQUEST_ID
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            })
            .map(str::to_owned)
            .unwrap_or_else(|| crate::secret::random_id(9));
        // Only our own routes reach a handler, so the path names one of our endpoints.
        let endpoint = Some(parts.uri.path())
            .filter(|p| p.len() <= MAX_ENDPOINT_PATH)
            .map(str::to_owned);
        let epoch = parts.extensions.get::<StorageEpoch>().map(|e| e.0);
        Ok(Ctx(RequestCtx {
            now: crate::unix_now(),
            request_id,
            source,
            endpoint,
            epoch,
        }))
    }
}
