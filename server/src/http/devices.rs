//! Device routes: the registry under `/admin/devices` (bearer tokens with `devices:provision` or
//! `devices:admin`; a station may withdraw its own unused registrations) and the first-boot
//! rotation endpoint `POST /oauth2/device-credentials`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::admin::json_body;
use super::caller::{Caller, DevicesAdmin, DevicesProvision};
use super::ctx::Ctx;
use super::error::{json_bytes, json_response, OAuthResponse};
use crate::oauth::client_auth::Presented;
use crate::oauth::devices::{DeviceRegistration, Registered, Withdrawal};
use crate::oauth::form::Form;
use crate::oauth::OAuthError;

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/admin/devices", post(register).get(find_by_serial))
        .route("/admin/devices/{client_id}", get(show).delete(remove))
        .route("/admin/devices/{client_id}/disable", post(disable))
        .route("/admin/devices/{client_id}/withdraw", post(withdraw))
        .route("/oauth2/device-credentials", post(rotate))
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "error_description": "no such device"}),
    )
}

async fn register(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match Caller::<DevicesProvision>::from_headers(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let station = caller.client_id();
    let req: DeviceRegistration = match json_body(&headers, body) {
        Ok(r) => r,
        Err(e) => return OAuthResponse(e).into_response(),
    };
    match state.oauth.register_device(req, station, &ctx).await {
        Ok(Registered::Created {
            client_id,
            factory_secret,
        }) => json_response(
            StatusCode::CREATED,
            &serde_json::json!({"client_id": client_id, "factory_secret": factory_secret.expose()}),
        ),
        Ok(Registered::Exists(d)) => json_response(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "device_exists",
                "error_description": "this serial is already registered",
                "client_id": d.client_id,
                "ek_fingerprint": d.ek_fingerprint,
            }),
        ),
        Ok(Registered::EkInUse(d)) => json_response(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "ek_in_use",
                "error_description": "this TPM is already registered under another serial",
                "client_id": d.client_id,
                "serial": d.serial,
                "ek_fingerprint": d.ek_fingerprint,
            }),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

#[derive(Deserialize)]
struct SerialQuery {
    serial: Option<String>,
}

async fn find_by_serial(
    State(state): State<super::State>,
    _caller: Caller<DevicesAdmin>,
    query: Result<Query<SerialQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(serial) = query.ok().and_then(|q| q.0.serial) else {
        return OAuthResponse(OAuthError::InvalidRequest("give ?serial=S".into())).into_response();
    };
    match state.oauth.device_view_by_serial(&serial) {
        Ok(Some(v)) => json_bytes(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
        Ok(None) => not_found(),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

async fn show(
    State(state): State<super::State>,
    _caller: Caller<DevicesAdmin>,
    Path(client_id): Path<String>,
) -> Response {
    match state.oauth.device_view(&client_id) {
        Ok(Some(v)) => json_bytes(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
        Ok(None) => not_found(),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

async fn disable(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    caller: Caller<DevicesAdmin>,
    Path(client_id): Path<String>,
) -> Response {
    let actor = caller.client_id();
    match state.oauth.disable_device(&client_id, actor, &ctx).await {
        Ok(true) => json_response(
            StatusCode::OK,
            &serde_json::json!({"client_id": client_id, "status": "disabled"}),
        ),
        Ok(false) => not_found(),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

async fn remove(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    caller: Caller<DevicesAdmin>,
    Path(client_id): Path<String>,
) -> Response {
    let actor = caller.client_id();
    match state.oauth.delete_device(&client_id, actor, &ctx).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

/// A station takes back its own unused registration (see [`crate::oauth::AuthServer::withdraw_device`]).
async fn withdraw(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    caller: Caller<DevicesProvision>,
    Path(client_id): Path<String>,
) -> Response {
    let station = caller.client_id();
    match state.oauth.withdraw_device(&client_id, station, &ctx).await {
        Ok(Withdrawal::Withdrawn) => StatusCode::NO_CONTENT.into_response(),
        Ok(Withdrawal::NotFound) => not_found(),
        Ok(Withdrawal::Refused(why)) => json_response(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "not_withdrawable", "error_description": why}),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

/// The rotation body: `{"jwk": …}` as JSON (client authentication by Basic, or
/// `client_assertion_type`/`client_assertion` members), or a form with a `jwk` parameter holding
/// the JWK's JSON next to the usual client authentication parameters.
async fn rotate(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        let (mut form, jwk) = if is_json {
            let mut doc: serde_json::Map<String, serde_json::Value> = json_body(&headers, body)?;
            let jwk = doc
                .remove("jwk")
                .ok_or_else(|| OAuthError::InvalidRequest("missing member: jwk".into()))?;
            let mut pairs = Vec::new();
            for name in ["client_id", "client_assertion_type", "client_assertion"] {
                if let Some(v) = doc.get(name).and_then(|v| v.as_str()) {
                    pairs.push((name.to_owned(), v.to_owned()));
                }
            }
            (Form::from_pairs(pairs)?, jwk)
        } else {
            let (_, form) = super::oauth::read_request_form(&headers, body)?;
            let jwk = serde_json::from_str(form.require("jwk")?)
                .map_err(|_| OAuthError::InvalidRequest("jwk is not JSON".into()))?;
            (form, jwk)
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let presented = Presented::from_request(authorization, &mut form)?;
        state
            .oauth
            .register_pending_key(presented, &jwk, &ctx)
            .await
    }
    .await;
    match result {
        Ok(kid) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "pending", "kid": kid}),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}
