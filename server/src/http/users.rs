//! `POST /admin/users` (scope `users:admin`): create a person who may approve devices.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::admin::json_body;
use super::caller::{Caller, UsersAdmin};
use super::ctx::Ctx;
use super::error::{json_bytes, OAuthResponse};
use crate::accounts::NewUser;

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/admin/users", post(create_user))
}

async fn create_user(
    State(state): State<super::State>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match Caller::<UsersAdmin>::from_headers(&state, &headers, "POST", &ctx).await {
        Ok(c) => c.claims,
        Err(e) => return e.into_response(),
    };
    let new: NewUser = match json_body(&headers, body) {
        Ok(n) => n,
        Err(e) => return OAuthResponse(e).into_response(),
    };
    match state.oauth.create_user(new, &caller.client_id, &ctx).await {
        Ok(view) => {
            tracing::info!(actor = %caller.client_id, user = %view.username, "user created");
            json_bytes(
                StatusCode::CREATED,
                serde_json::to_vec(&view).unwrap_or_default(),
            )
        }
        Err(e) => OAuthResponse(e).into_response(),
    }
}
