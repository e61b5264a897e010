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
use crate::oauth::devices::{
    DeviceRegistration, KeyAnswer, KeyPresentation, Registered, Withdrawal,
};
use crate::oauth::form::Form;
use crate::oauth::OAuthError;

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/admin/devices", post(register).get(find_by_serial))
        .route("/admin/devices/{client_id}", get(show).delete(remove))
        .route("/admin/devices/{client_id}/disable", post(disable))
        .route("/admin/devices/{client_id}/withdraw", post(withdraw))
        .route("/admin/devices/{client_id}/ek", post(attest_ek))
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
    let caller =
        match Caller::<DevicesProvision>::from_headers(&state, &headers, "POST", &ctx).await {
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
                "ek_public": d.ek_public.is_some(),
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
struct DevicesQuery {
    serial: Option<String>,
    attested: Option<bool>,
    after: Option<String>,
    limit: Option<usize>,
}

/// Most devices one listing returns.
const MAX_LIST: usize = 1000;

/// `GET /admin/devices?serial=S` (one device), or a listing: `?attested=false` (devices whose
/// EK or key is not attested), `after` (a client_id) and `limit` (default 100, at most 1000);
/// `next` names the `after` of the following page.
async fn find_by_serial(
    State(state): State<super::State>,
    _caller: Caller<DevicesAdmin>,
    query: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return OAuthResponse(OAuthError::InvalidRequest(
            "give ?serial=S, or ?attested=true|false&after=ID&limit=N".into(),
        ))
        .into_response();
    };
    if let Some(serial) = query.serial {
        return match state.oauth.device_view_by_serial(&serial).await {
            Ok(Some(v)) => json_bytes(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
            Ok(None) => not_found(),
            Err(e) => OAuthResponse(e).into_response(),
        };
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let after = query.after.unwrap_or_default();
    match state
        .oauth
        .device_views(&after, limit, query.attested)
        .await
    {
        Ok((devices, next)) => json_response(
            StatusCode::OK,
            &serde_json::json!({"devices": devices, "next": next}),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EkAttestation {
    ek_public: String,
    #[serde(default)]
    ek_certificate: Option<String>,
}

/// A station supplies a legacy device's EK public key (see
/// [`crate::oauth::AuthServer::attest_device_ek`]).
async fn attest_ek(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller =
        match Caller::<DevicesProvision>::from_headers(&state, &headers, "POST", &ctx).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
    let req: EkAttestation = match json_body(&headers, body) {
        Ok(r) => r,
        Err(e) => return OAuthResponse(e).into_response(),
    };
    let result = state
        .oauth
        .attest_device_ek(
            &client_id,
            &req.ek_public,
            req.ek_certificate.as_deref(),
            caller.client_id(),
            &ctx,
        )
        .await;
    match result {
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
    match state.oauth.device_view(&client_id).await {
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

/// The rotation body: `{"jwk": …, "tpm_public": …}` or `{"jwk": …, "activated_secret": …}` as
/// JSON (client authentication by Basic, or `client_assertion_type`/`client_assertion`
/// members), or a form with those parameters (`jwk` holding the JWK's JSON) next to the usual
/// client authentication parameters. `tpm_public` and `activated_secret` are base64url.
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
            for name in [
                "client_id",
                "client_assertion_type",
                "client_assertion",
                "tpm_public",
                "activated_secret",
            ] {
                match doc.get(name) {
                    Some(serde_json::Value::String(v)) => pairs.push((name.to_owned(), v.clone())),
                    Some(_) => {
                        return Err(OAuthError::InvalidRequest(
                            format!("{name} must be a string").into(),
                        ))
                    }
                    None => {}
                }
            }
            (Form::from_pairs(pairs)?, jwk)
        } else {
            let (_, form) = super::oauth::read_request_form(&headers, body)?;
            let jwk = serde_json::from_str(form.require("jwk")?)
                .map_err(|_| OAuthError::InvalidRequest("jwk is not JSON".into()))?;
            (form, jwk)
        };
        let bytes = |name: &'static str| -> Result<Option<Vec<u8>>, OAuthError> {
            use base64::Engine as _;
            form.get(name)
                .map(|v| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(v.trim_end_matches('='))
                        .map_err(|_| {
                            OAuthError::InvalidRequest(format!("{name} is not base64url").into())
                        })
                })
                .transpose()
        };
        let presentation = KeyPresentation {
            jwk,
            tpm_public: bytes("tpm_public")?,
            activated_secret: bytes("activated_secret")?,
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let presented = Presented::from_request(authorization, &mut form)?;
        state
            .oauth
            .present_device_key(presented, presentation, &ctx)
            .await
    }
    .await;
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    match result {
        Ok(KeyAnswer::Pending { kid, attested }) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "pending", "kid": kid, "attested": attested}),
        ),
        Ok(KeyAnswer::Challenge {
            kid,
            credential_blob,
            encrypted_secret,
            expires_in,
        }) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": "challenge",
                "kid": kid,
                "credential_blob": b64(&credential_blob),
                "encrypted_secret": b64(&encrypted_secret),
                "expires_in": expires_in,
            }),
        ),
        Err(e) => OAuthResponse(e).into_response(),
    }
}
