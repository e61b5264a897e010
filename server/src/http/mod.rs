//! Thin axum adapters: each area has its own `router()`, merged here; protocol logic lives in
//! [`crate::oauth`].

mod admin;
mod caller;
pub(crate) mod ctx;
mod device_flow;
mod devices;
mod discovery;
mod error;
pub mod forwarded;
mod oauth;
mod users;

use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::Router;

use crate::config::ServeSettings;
use crate::http::ctx::ClientAddr;
use crate::http::forwarded::TrustedProxies;
use crate::oauth::AuthServer;
use crate::serve::Built;

/// Longest time a request body may take to arrive.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every handler can reach.
pub struct AppState {
    /// The protocol core.
    pub oauth: AuthServer,
    /// RFC 8414 metadata, serialised once.
    pub metadata_json: Vec<u8>,
    /// What `/metrics` renders.
    pub registry: prometheus_client::registry::Registry,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

/// Shared state handle.
pub type State = Arc<AppState>;

/// The whole HTTP API of a built server, with the body limit and trusted proxies of `settings`.
pub fn router(built: &Built, settings: &ServeSettings) -> Router {
    let oauth = built.oauth.clone();
    let trusted = Arc::new(settings.trusted_proxies.clone());
    let metadata_json = discovery::metadata(&oauth.settings);
    let registry = oauth.metrics.registry();
    let web = crate::web::router(oauth.clone(), built.page_key.clone(), settings.page.clone());
    let state = Arc::new(AppState {
        oauth,
        metadata_json,
        registry,
    });
    Router::new()
        .merge(discovery::router())
        .merge(oauth::router())
        .merge(admin::router())
        .merge(devices::router())
        .merge(device_flow::router())
        .merge(users::router())
        .merge(web)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            storage_epoch,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            resolve_client,
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        // A client that announces a body and then stalls must not hold a connection forever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .with_state(state)
}

/// Work out the client's address once per request (see [`forwarded::client_addr`]) and hand it
/// to [`ctx::Ctx`] as a [`ClientAddr`] extension, whatever the router state of the handler.
async fn resolve_client(
    axum::extract::State(trusted): axum::extract::State<Arc<TrustedProxies>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = forwarded::client_addr(
            peer,
            request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
            &trusted,
        );
        request.extensions_mut().insert(ClientAddr(client));
    }
    next.run(request).await
}

/// Stamp the request with the storage epoch it starts in (its commit is refused if storage
/// fails meanwhile), and give every 503 a `Retry-After`. While storage is failing, a 500 is
/// turned into that 503 too: whatever failed most likely failed for want of storage.
async fn storage_epoch(
    axum::extract::State(state): axum::extract::State<State>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let health = state.oauth.commit.health().clone();
    request
        .extensions_mut()
        .insert(ctx::StorageEpoch(health.epoch()));
    let mut response = next.run(request).await;
    let status = response.status();
    let failing = status == axum::http::StatusCode::INTERNAL_SERVER_ERROR && health.is_failing();
    if failing {
        *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    if response.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .entry(axum::http::header::RETRY_AFTER)
            .or_insert_with(|| axum::http::HeaderValue::from(health.retry_after_secs()));
    }
    response
}

/// Count every response by route pattern and status.
async fn count_requests(
    axum::extract::State(state): axum::extract::State<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state
        .oauth
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            endpoint,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
