//! The admin API's bearer check as an extractor: `Caller<DevicesAdmin>` in a handler's arguments
//! means the request carried exactly one `Authorization: Bearer` with an active access token
//! holding that scope (RFC 6750), or the handler never runs and the client gets 401/403.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::oauth::access_token::AccessClaims;
use crate::oauth::registration::BearerError;

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

impl<S: Scope> FromRequestParts<super::State> for Caller<S> {
    type Rejection = BearerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::State,
    ) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
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
        let claims = state
            .oauth
            .authorize_bearer(authorization, S::NAME, crate::unix_now())?;
        Ok(Caller {
            claims,
            scope: PhantomData,
        })
    }
}
