//! The admin API's bearer check: `Caller<DevicesAdmin>` means the request carried exactly one
//! `Authorization: Bearer` with an active access token holding that scope (RFC 6750), or the
//! client gets 400/401/403. As an extractor it suits routes without a body; routes with one read
//! the body first and call [`Caller::from_headers`], so that a refused client still reads its
//! answer instead of a connection reset in the middle of its upload.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::ctx::Ctx;
use crate::oauth::access_token::AccessClaims;
use crate::oauth::registration::BearerError;
use crate::oauth::RequestCtx;

/// A scope an admin route requires.
pub trait Scope {
    /// Its name.
    const NAME: &'static str;
}

macro_rules! scopes {
    ($($(#[$doc:meta])* $ty:ident = $name:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;
        impl Scope for $ty {
            const NAME: &'static str = $name;
        }
    )*};
}

scopes! {
    /// `clients:admin`: register clients.
    ClientsAdmin = "clients:admin";
    /// `devices:provision`: register devices (factory stations).
    DevicesProvision = "devices:provision";
    /// `devices:admin`: look up, disable and delete devices.
    DevicesAdmin = "devices:admin";
    /// `audit:read`: read the audit log.
    AuditRead = "audit:read";
    /// `users:admin`: create people who approve devices.
    UsersAdmin = "users:admin";
}

/// The authenticated caller of an admin route, holding scope `S`.
#[derive(Debug)]
pub struct Caller<S> {
    /// The caller's access token claims.
    pub claims: AccessClaims,
    scope: PhantomData<S>,
}

impl<S> Caller<S> {
    /// The calling client.
    pub fn client_id(&self) -> &str {
        &self.claims.client_id
    }
}

impl<S: Scope> Caller<S> {
    /// Check the request's headers: `Authorization: Bearer`, or `Authorization: DPoP` with a
    /// `DPoP` proof for `method` at the URL of the path `ctx` reached (RFC 9449 §7.1).
    pub async fn from_headers(
        state: &super::State,
        headers: &HeaderMap,
        method: &str,
        ctx: &RequestCtx,
    ) -> Result<Self, BearerError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(BearerError::Malformed("more than one Authorization header"));
        }
        let authorization = match first {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| BearerError::Malformed("Authorization header is not ASCII"))?,
            ),
        };
        let settings = &state.oauth.settings;
        let dpop = super::oauth::proof_request(headers, method, settings, ctx, &settings.issuer);
        let claims = state
            .oauth
            .authorize_bearer(authorization, &dpop, S::NAME, ctx.now)
            .await?;
        Ok(Caller {
            claims,
            scope: PhantomData,
        })
    }
}

impl<S: Scope> FromRequestParts<super::State> for Caller<S> {
    type Rejection = BearerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::State,
    ) -> Result<Self, Self::Rejection> {
        let Ok(Ctx(ctx)) = Ctx::from_request_parts(parts, state).await;
        let method = parts.method.as_str().to_owned();
        Self::from_headers(state, &parts.headers, &method, &ctx).await
    }
}
