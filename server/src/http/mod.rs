//! Thin axum adapters: each area has its own `router()`, merged here; protocol logic lives in
//! [`crate::oauth`].

mod admin;
mod ctx;
mod devices;
mod discovery;
mod error;
mod oauth;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::oauth::AuthServer;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The protocol core.
    pub oauth: AuthServer,
    /// RFC 8414 metadata, serialised once.
    pub metadata_json: Vec<u8>,
}

/// Shared state handle.
pub type State = Arc<AppState>;

/// The whole HTTP API.
pub fn router(oauth: AuthServer, max_body_bytes: usize) -> Router {
    let metadata_json = discovery::metadata(&oauth.settings);
    let state = Arc::new(AppState { oauth, metadata_json });
    Router::new()
        .merge(discovery::router())
        .merge(oauth::router())
        .merge(admin::router())
        .merge(devices::router())
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
