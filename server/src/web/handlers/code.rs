//! `POST /device` (enter a code) and `GET /device/consent` (what the person approves). Only a
//! code that matches no request at all counts toward the failure limits; one whose request
//! expired or was decided is no guess.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{
    audit_if_limit_reached, code_policy, filled_by_code, internal, page, parse, see_other,
    signed_in, start_with, with_code, CodeQuery, Speak, St, WebState,
};
use crate::http::ctx::Ctx;
use crate::oauth::device_flow::{CodeLookup, CodeProblem, UserCode};
use crate::oauth::{OAuthError, RequestCtx};
use crate::web::flash::{Flash, Notice as FlashNotice};
use crate::web::limits::CodeCaller;
use crate::web::pages;
use crate::web::session::{Caller, Session};

pub(in crate::web) async fn enter_code(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sp = Speak::of(&headers);
    let form = parse(&body);
    let input = form.user_code.clone().unwrap_or_default();
    let result = async {
        let mut session = match signed_in(&st, sp, &headers, &form, &ctx).await? {
            Ok(s) => s,
            Err(refused) => return Ok(refused),
        };
        let policy = code_policy(&st.oauth.settings.device);
        let key = session.limit_key();
        let who = CodeCaller {
            session: &key,
            account: &session.user,
            source: ctx.source,
        };
        // Counted before the code is looked up, so parallel guesses cannot pass the limit.
        let reservation = match st
            .limits
            .reserve_code(who, policy, ctx.now)
            .await
            .map_err(OAuthError::from)?
        {
            Ok(r) => r,
            Err(_) => {
                // The page it redirects to explains the pause.
                let f = Flash::new(FlashNotice::CodeNotChecked);
                return Ok(see_other("/device", &[f.set_cookie(&st.key, ctx.now)]));
            }
        };
        if reservation.delay > 0 {
            // A busy address: a suspect account's guesses come slower (the slot stays reserved).
            tokio::time::sleep(std::time::Duration::from_secs(reservation.delay)).await;
        }
        let tag = session.decision_tag();
        match st
            .oauth
            .look_up_user_code(&input, &session.user, Some(&tag), &ctx)
            .await?
        {
            CodeLookup::Found(request) => {
                st.limits
                    .release(reservation)
                    .await
                    .map_err(OAuthError::from)?;
                remember(&st, &mut session, &request.user_code).await?;
                Ok(see_other(
                    &with_code("/device/consent", Some(&request.user_code)),
                    &[],
                ))
            }
            CodeLookup::Decided(d) => {
                st.limits
                    .release(reservation)
                    .await
                    .map_err(OAuthError::from)?;
                remember(&st, &mut session, &d.request.user_code).await?;
                Ok(see_other(
                    &with_code("/device/done", Some(&d.request.user_code)),
                    &[],
                ))
            }
            CodeLookup::Problem(CodeProblem::Expired) => {
                st.limits
                    .release(reservation)
                    .await
                    .map_err(OAuthError::from)?;
                Ok(expired(&st, &ctx))
            }
            CodeLookup::Problem(_) => {
                // A code that matches nothing: the one kind of attempt that can be a guess.
                let filled = filled_by_code(&reservation, policy);
                audit_if_limit_reached(
                    &st,
                    &ctx,
                    "device.code_entry_locked_out",
                    Some(&session.user),
                    filled,
                )
                .await?;
                let c = reservation.counts;
                let left = policy
                    .per_session
                    .saturating_sub(c.session)
                    .min(policy.per_account.saturating_sub(c.account));
                let f = Flash::new(FlashNotice::CodeUnknown)
                    .code(&input)
                    .tries_left(left);
                Ok(see_other("/device", &[f.set_cookie(&st.key, ctx.now)]))
            }
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}

/// `GET /device/consent?user_code=…`: the request this session entered the code of.
pub(in crate::web) async fn consent(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    query: Result<Query<CodeQuery>, QueryRejection>,
) -> Response {
    let sp = Speak::of(&headers);
    let typed = query.as_ref().ok().and_then(|q| q.user_code.clone());
    let result = async {
        let Some((session, code)) = entered(&st, &headers, typed.as_deref(), &ctx).await? else {
            return Ok(see_other(&start_with(typed.as_deref()), &[]));
        };
        match st
            .oauth
            .device_request(&code, Some(&session.decision_tag()), ctx.now)
            .await?
        {
            CodeLookup::Found(request) => {
                let scopes = st.scopes.lines(&request.scope, sp.lang);
                let markup = pages::consent(
                    sp.t,
                    &pages::ConsentView {
                        user: &session.user,
                        csrf: &session.record.csrf,
                        request: &request,
                        scopes: &scopes,
                        now: ctx.now,
                    },
                );
                Ok(page(sp, StatusCode::OK, markup))
            }
            CodeLookup::Decided(_) => Ok(see_other(&with_code("/device/done", Some(&code)), &[])),
            CodeLookup::Problem(CodeProblem::Expired) => Ok(expired(&st, &ctx)),
            CodeLookup::Problem(_) => Ok(see_other("/device", &[])),
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}

/// The signed-in session and the code in `typed`, if this session entered that code (the GET
/// pages show nothing about a code the rate-limited POST did not see from this session).
pub(super) async fn entered(
    st: &WebState,
    headers: &HeaderMap,
    typed: Option<&str>,
    ctx: &RequestCtx,
) -> Result<Option<(Session, UserCode)>, OAuthError> {
    let Some(Caller::SignedIn(session)) =
        Caller::from_request(&st.oauth, &st.key, headers, ctx.now).await?
    else {
        return Ok(None);
    };
    let Some(code) = typed.and_then(UserCode::parse) else {
        return Ok(None);
    };
    Ok(session.entered(&code).then_some((session, code)))
}

/// Note that this session entered `code` (durable with the next commit; losing it only means
/// entering the code again).
async fn remember(st: &WebState, session: &mut Session, code: &UserCode) -> Result<(), OAuthError> {
    if session.remember(code) {
        session.save(&st.oauth).await?;
    }
    Ok(())
}

/// Back to the code page, saying the code expired.
pub(super) fn expired(st: &WebState, ctx: &RequestCtx) -> Response {
    let f = Flash::new(FlashNotice::CodeExpired);
    see_other("/device", &[f.set_cookie(&st.key, ctx.now)])
}
