//! `POST /device/decision` (approve or deny) and `GET /device/done` (how it came out). A second
//! press of Approve — a double click on a slow connection — lands on the same success page;
//! anyone else learns that the request was already decided.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::code::{entered, expired};
use super::{
    internal, page, parse, refuse, see_other, signed_in, start_with, with_code, CodeQuery, Speak,
    St,
};
use crate::http::ctx::Ctx;
use crate::oauth::device_flow::{CodeLookup, CodeProblem, UserCode};
use crate::web::pages::{self, device_name, Outcome};

pub(in crate::web) async fn decide(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sp = Speak::of(&headers);
    let form = parse(&body);
    let result = async {
        let session = match signed_in(&st, sp, &headers, &form, &ctx).await? {
            Ok(s) => s,
            Err(refused) => return Ok(refused),
        };
        let code = form.user_code.as_deref().and_then(UserCode::parse);
        let Some(code) = code.filter(|c| session.entered(c)) else {
            // Only a code this session entered (through the rate-limited code form) is decided.
            return Ok(see_other(&start_with(form.user_code.as_deref()), &[]));
        };
        let approve = match form.decision.as_deref() {
            Some("approve") => true,
            Some("deny") => false,
            _ => {
                let back = with_code("/device/consent", Some(&code));
                return Ok(refuse(
                    sp,
                    StatusCode::BAD_REQUEST,
                    sp.t.choose_decision,
                    &back,
                ));
            }
        };
        let tag = session.decision_tag();
        match st
            .oauth
            .decide_device_request(&code, &session.user, Some(&tag), approve, &ctx)
            .await?
        {
            CodeLookup::Found(_) | CodeLookup::Decided(_) => {
                Ok(see_other(&with_code("/device/done", Some(&code)), &[]))
            }
            CodeLookup::Problem(CodeProblem::Expired) => Ok(expired(&st, &ctx)),
            CodeLookup::Problem(_) => Ok(see_other("/device", &[])),
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}

/// `GET /device/done?user_code=…`: the outcome, as this session sees it.
pub(in crate::web) async fn done(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    query: Result<Query<CodeQuery>, QueryRejection>,
) -> Response {
    let sp = Speak::of(&headers);
    let typed = query.as_ref().ok().and_then(|q| q.user_code.clone());
    let result = async {
        let Some((session, code)) = entered(&st, &headers, typed.as_deref(), &ctx).await? else {
            return Ok(see_other("/device", &[]));
        };
        match st
            .oauth
            .device_request(&code, Some(&session.decision_tag()), ctx.now)
            .await?
        {
            CodeLookup::Decided(d) => {
                let outcome = match (d.same_session, d.user == session.user, d.approved) {
                    (true, _, true) => Outcome::Approved,
                    (true, _, false) => Outcome::Denied,
                    (false, true, true) => Outcome::ApprovedByYouElsewhere,
                    (false, true, false) => Outcome::DeniedByYouElsewhere,
                    (false, false, true) => Outcome::ApprovedByOther,
                    (false, false, false) => Outcome::DeniedByOther,
                };
                let name = device_name(sp.t, &d.request);
                let markup = pages::outcome(
                    sp.t,
                    &pages::OutcomeView {
                        user: &session.user,
                        csrf: &session.record.csrf,
                        device: &name,
                        outcome,
                    },
                );
                Ok(page(sp, StatusCode::OK, markup))
            }
            CodeLookup::Found(_) => Ok(see_other(&with_code("/device/consent", Some(&code)), &[])),
            CodeLookup::Problem(CodeProblem::Expired) => Ok(expired(&st, &ctx)),
            CodeLookup::Problem(_) => Ok(see_other("/device", &[])),
        }
    };
    result.await.unwrap_or_else(|e| internal(sp, e))
}
