//! The request context extractor: arrival time, request id, peer address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::oauth::RequestCtx;

/// Longest caller-supplied request id we keep.
const MAX_REQUEST_ID: usize = 64;

/// [`RequestCtx`] for a handler.
#[derive(Debug)]
pub struct Ctx(pub RequestCtx);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
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
        Ok(Ctx(RequestCtx {
            now: crate::unix_now(),
            request_id,
            source,
        }))
    }
}
