//! `POST /device/sign-in` and `POST /device/sign-out`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{
    audit_if_limit_reached, checked_caller, filled_by_sign_in, internal, page, parse, prefill,
    see_other, sign_in_policy, start_with, with_retry_after, Speak, St,
};
use crate::accounts::{Password, SignIn};
use crate::http::ctx::Ctx;
use crate::oauth::OAuthError;
use crate::web::flash::{Flash, Notice as FlashNotice};
use crate::web::pages::{self, Notice};
use crate::web::session::{self, Caller, Session};

/// Seconds a sign-in turned away for lack of a password-check slot is told to wait.
const BUSY_RETRY_AFTER: u64 = 1;

pub(in crate::web) async fn sign_in(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sp = Speak::of(&headers);
    let form = parse(&body);
    let caller = match checked_caller(&st, sp, &headers, &form, &ctx).await {
        Ok(Ok(c)) => c,
        Ok(Err(refused)) => return refused,
        Err(e) => return internal(sp, e),
    };
    let d = &st.oauth.settings.device;
    let policy = sign_in_policy(d);
    let code = prefill(form.user_code.as_deref());
    let back = start_with(form.user_code.as_deref());
    // Counted before the password is checked, so concurrent attempts cannot pass the limit.
    let reservation = match st
        .limits
        .reserve_sign_in(&caller.limit_key(), ctx.source, policy, ctx.now)
        .await
    {
        Ok(Ok(r)) => r,
        // The page it redirects to explains the pause.
        Ok(Err(_)) => return see_other(&back, &[]),
        Err(e) => return internal(sp, OAuthError::from(e)),
    };
    let name = form.username.unwrap_or_default();
    let password = form
        .password
        .unwrap_or_else(|| Password::new(String::new()));
    let result = async {
        match st.oauth.sign_in(&name, password, &ctx).await? {
            SignIn::Accepted(user) => {
                st.limits
                    .release(reservation)
                    .await
                    .map_err(OAuthError::from)?;
                // A new session id at sign-in: an id planted before it (session fixation) is
                // worthless, and the visitor's cookie is replaced by the session's.
                if let Caller::SignedIn(old) = &caller {
                    old.end(&st.oauth).await?;
                }
                let fresh = Session::fresh(user, d.session_ttl, ctx.now);
                fresh.save(&st.oauth).await?;
                st.oauth.commit_for(&ctx).await?;
                Ok(see_other(&back, &[fresh.set_cookie()]))
            }
            SignIn::Busy => {
                // Nothing was checked: the attempt does not count, and nothing changed, so
                // this answer needs no redirect.
                st.limits
                    .release(reservation)
                    .await
                    .map_err(OAuthError::from)?;
                let markup = pages::sign_in(
                    sp.t,
                    &pages::SignInView {
                        csrf: caller.csrf(),
                        user_code: &code,
                        username: &name,
                        notice: Some(Notice::error(sp.t.busy)),
                    },
                );
                Ok(with_retry_after(
                    page(sp, StatusCode::SERVICE_UNAVAILABLE, markup),
                    BUSY_RETRY_AFTER,
                ))
            }
            SignIn::Refused => {
                let filled = filled_by_sign_in(&reservation, policy);
                audit_if_limit_reached(&st, &ctx, "user.sign_in_locked_out", None, filled).await?;
                let f = Flash::new(FlashNotice::WrongPassword)
                    .username(&name)
                    .code(&code);
                Ok(see_other(&back, &[f.set_cookie(&st.key, ctx.now)]))
            }
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}

pub(in crate::web) async fn sign_out(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sp = Speak::of(&headers);
    let form = parse(&body);
    let result = async {
        match checked_caller(&st, sp, &headers, &form, &ctx).await? {
            Ok(Caller::SignedIn(session)) => {
                session.end(&st.oauth).await?;
                // Durable before the answer: a crash must not bring the session back.
                st.oauth.commit_for(&ctx).await?;
                Ok(see_other("/device", &[session::clear_cookie()]))
            }
            Ok(Caller::Visitor(_)) => Ok(see_other("/device", &[])),
            Err(refused) => Ok(refused),
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}
