//! The device authorization endpoint (RFC 8628 §3.1): a form in, the codes out as JSON.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::ctx::Ctx;
use super::error::json_or_error;
use super::oauth::read_request;

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/oauth2/device_authorization", post(device_authorization))
}

async fn device_authorization(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let settings = &state.oauth.settings;
    let dpop = super::oauth::proof_request(
        &headers,
        "POST",
        settings,
        &ctx,
        &settings.device.device_authorization_endpoint,
    );
    let result = async {
        let (presented, form) = read_request(&headers, body)?;
        state
            .oauth
            .device_authorization_with_dpop(presented, form, &dpop, &ctx)
            .await
    }
    .await;
    // §3.2: 200 with a JSON body, never cached (it holds the device code).
    super::oauth::with_nonce(&state, &ctx, json_or_error(result))
}
