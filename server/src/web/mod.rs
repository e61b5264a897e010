//! The verification page at `/device` (RFC 8628 §3.3): a person signs in, enters or confirms the
//! user code, sees which device asks for what, and approves or denies. Server-rendered HTML
//! without JavaScript, in the browser's language; every response carries a strict CSP and the
//! framing and referrer headers.

mod flash;
mod handlers;
pub mod i18n;
pub mod limits;
pub mod pages;
pub mod scopes;
pub mod session;
pub mod visitor;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::oauth::AuthServer;

/// Largest form the page accepts; its forms are a few hundred bytes.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// Content-Security-Policy of every page: our stylesheet and icon, our forms, nothing else — no
/// script at all, no framing (also `X-Frame-Options: DENY` for older browsers).
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Settings of the page itself (the limits are in [`crate::oauth::device_flow::DeviceSettings`]).
#[derive(Debug, Clone, Default)]
pub struct PageSettings {
    /// Plain words for scopes on the consent page.
    pub scope_descriptions: scopes::ScopeDescriptions,
}

/// What the page's handlers share.
#[derive(Debug)]
pub struct WebState {
    /// The protocol core.
    pub oauth: AuthServer,
    /// Failure counters with reservations.
    pub limits: limits::Limits,
    /// The MAC key of anonymous visitors' and flash cookies.
    pub key: Arc<visitor::CookieKey>,
    /// Plain words for scopes.
    pub scopes: scopes::ScopeDescriptions,
}

/// The page's routes, with their own state, ready to merge into the API router (whatever its
/// state type).
pub fn router<S: Clone + Send + Sync + 'static>(
    oauth: AuthServer,
    key: Arc<visitor::CookieKey>,
    page: PageSettings,
) -> Router<S> {
    // On PostgreSQL the counters are shared, so the limits hold across replicas.
    let limits = match &oauth.database {
        Some(db) => limits::Limits::shared(db.clone()),
        None => limits::Limits::default(),
    };
    let state = Arc::new(WebState {
        oauth,
        limits,
        key,
        scopes: page.scope_descriptions,
    });
    Router::new()
        .route("/device", get(handlers::show).post(handlers::enter_code))
        .route("/device/consent", get(handlers::consent))
        .route("/device/done", get(handlers::done))
        .route("/device/sign-in", post(handlers::sign_in))
        .route("/device/decision", post(handlers::decide))
        .route("/device/sign-out", post(handlers::sign_out))
        .route("/device/style.css", get(stylesheet))
        .route("/device/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

async fn stylesheet() -> Response {
    asset(pages::STYLESHEET, "text/css; charset=utf-8")
}

async fn icon() -> Response {
    asset(pages::ICON_SVG, "image/svg+xml")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

/// Headers every response of the page carries.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The URL can hold a live user code; no other site may learn it through Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // Browsers ignore HSTS over plain HTTP, so this is harmless in --insecure-http mode.
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    // Pages hold CSRF tokens and account names: no cache may keep them.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
