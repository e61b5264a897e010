//! The admin API (JSON, bearer tokens with scopes): client registration, the audit log and its
//! signed checkpoints.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::caller::{AuditRead, Caller, ClientsAdmin};
use super::ctx::Ctx;
use super::error::{json_bytes, OAuthResponse};
use crate::oauth::registration::ClientMetadata;
use crate::oauth::OAuthError;

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/admin/clients", post(create_client))
        .route("/admin/audit", get(audit_entries))
        .route("/admin/audit/chains", get(audit_chains))
        .route("/admin/audit/checkpoint", get(audit_checkpoint))
}

/// Parse a JSON body into `T`, with RFC-style errors.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, OAuthError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OAuthError::PayloadTooLarge
        } else {
            OAuthError::InvalidRequest("could not read the request body".into())
        }
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        OAuthError::InvalidRequest(format!("body is not the expected JSON: {e}").into())
    })
}

async fn create_client(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match Caller::<ClientsAdmin>::from_headers(&state, &headers, "POST", &ctx).await {
        Ok(c) => c.claims,
        Err(e) => return e.into_response(),
    };
    let meta: ClientMetadata = match json_body(&headers, body) {
        Ok(m) => m,
        Err(OAuthError::InvalidRequest(d)) => {
            return OAuthResponse(OAuthError::InvalidClientMetadata(d)).into_response()
        }
        Err(e) => return OAuthResponse(e).into_response(),
    };
    match state
        .oauth
        .register_client(meta, &caller.client_id, &ctx)
        .await
    {
        Ok(info) => {
            tracing::info!(actor = %caller.client_id, client = %info.client_id, "client registered");
            json_bytes(
                StatusCode::CREATED,
                serde_json::to_vec(&info).unwrap_or_default(),
            )
        }
        Err(e) => OAuthResponse(e).into_response(),
    }
}

/// `GET /admin/audit/chains` (scope `audit:read`): every chain's head — one on the embedded
/// store, one per replica on PostgreSQL. Each is paged with `GET /admin/audit?chain=ID`.
async fn audit_chains(State(state): State<super::State>, _caller: Caller<AuditRead>) -> Response {
    match state.oauth.audit.chains().await {
        Ok(chains) => json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "chains": chains })).unwrap_or_default(),
        ),
        Err(e) => OAuthResponse(OAuthError::from(e)).into_response(),
    }
}

/// Largest page of `GET /admin/audit`.
const MAX_AUDIT_PAGE: usize = 1000;

#[derive(serde::Deserialize)]
struct AuditQuery {
    chain: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /admin/audit?after=N&limit=M` (scope `audit:read`): entries after sequence number N.
async fn audit_entries(
    State(state): State<super::State>,
    _caller: Caller<AuditRead>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return OAuthResponse(OAuthError::InvalidRequest(
            "after and limit are non-negative integers".into(),
        ))
        .into_response();
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    let chain = q.chain.as_deref();
    match state
        .oauth
        .audit
        .entries(chain, q.after.unwrap_or(0), limit)
        .await
    {
        Ok(entries) => {
            let next_after = entries.last().map(|e| e.body.seq);
            json_bytes(
                StatusCode::OK,
                serde_json::to_vec(
                    &serde_json::json!({"entries": entries, "next_after": next_after}),
                )
                .unwrap_or_default(),
            )
        }
        Err(e) => OAuthResponse(OAuthError::from(e)).into_response(),
    }
}

/// `GET /admin/audit/checkpoint` (scope `audit:read`): a signed checkpoint of the audit chain's
/// durable head (see [`crate::checkpoint`]), and what it says in the clear. Kept elsewhere, it
/// lets `audit verify --checkpoint` catch a chain cut short or rewritten at its end.
async fn audit_checkpoint(
    State(state): State<super::State>,
    _caller: Caller<AuditRead>,
) -> Response {
    match crate::checkpoint::make(&state.oauth, crate::unix_now()) {
        Ok((cp, jws)) => json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({
                "checkpoint": jws,
                "issuer": cp.issuer,
                "seq": cp.seq,
                "head_hash": cp.head_hash,
                "time": cp.time,
            }))
            .unwrap_or_default(),
        ),
        Err(e) => OAuthResponse(OAuthError::from(e)).into_response(),
    }
}
