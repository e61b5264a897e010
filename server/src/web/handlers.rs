//! Handlers of the verification page: show, sign in, enter a code, decide, sign out. Each POST
//! needs the session's CSRF token; code entries and sign-ins are limited per session and per
//! source address, and a lockout says how long it lasts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;

use super::limits::Failure;
use super::pages::{self, Tone};
use super::session::Session;
use super::WebState;
use crate::accounts::Password;
use crate::http::ctx::Ctx;
use crate::oauth::device_flow::{CodeLookup, CodeProblem, UserCode};
use crate::oauth::{OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};

type St = State<Arc<WebState>>;

/// `GET /device?user_code=…`.
#[derive(Debug, Deserialize)]
pub(super) struct ShowQuery {
    user_code: Option<String>,
}

/// Every form of the page; each handler reads the fields it needs.
#[derive(Default, Deserialize)]
#[serde(default)]
struct PageForm {
    csrf: Option<String>,
    user_code: Option<String>,
    username: Option<String>,
    password: Option<Password>,
    decision: Option<String>,
}

pub(super) async fn show(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Response {
    let prefill = prefill(query.as_ref().ok().and_then(|q| q.user_code.as_deref()));
    let result = Session::load_or_start(&st.oauth, &headers, ctx.now).map(|session| {
        let markup = match &session.record.user {
            None => pages::sign_in(&session.record.csrf, &prefill, None),
            Some(user) => pages::enter_code(user, &session.record.csrf, &prefill, None),
        };
        page(StatusCode::OK, markup, Some(&session))
    });
    result.unwrap_or_else(internal)
}

pub(super) async fn sign_in(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse(&body);
    let mut session = match checked_session(&st, &headers, &form, &ctx) {
        Ok(Ok(s)) => s,
        Ok(Err(refused)) => return refused,
        Err(e) => return internal(e),
    };
    let d = &st.oauth.settings.device;
    let code = prefill(form.user_code.as_deref());
    let csrf = session.record.csrf.clone();
    let locked = session
        .record
        .failed_sign_ins
        .locked_for(d.sign_in_failures_per_session, d.lockout_window, ctx.now)
        .or_else(|| {
            st.sources.locked_for(
                Failure::SignIn,
                ctx.source,
                d.sign_in_failures_per_source,
                d.lockout_window,
                ctx.now,
            )
        });
    if let Some(wait) = locked {
        let text = locked_text("failed sign-ins", "signing in", wait);
        return with_retry_after(
            page(
                StatusCode::TOO_MANY_REQUESTS,
                pages::sign_in(&csrf, &code, Some((Tone::Error, &text))),
                None,
            ),
            wait,
        );
    }
    let name = form.username.unwrap_or_default();
    let password = form
        .password
        .unwrap_or_else(|| Password::new(String::new()));
    let result = async {
        match st.oauth.sign_in(&name, password, &ctx).await? {
            Some(user) => {
                // A new session id at sign-in: an id planted before it (session fixation) is worthless.
                session.end(&st.oauth)?;
                let fresh = Session::fresh(Some(user), d.session_ttl, ctx.now);
                fresh.save(&st.oauth)?;
                st.oauth
                    .commit
                    .commit()
                    .await
                    .map_err(OAuthError::internal)?;
                let to = match UserCode::parse(&code) {
                    Some(c) => format!("/device?user_code={}", c.display()),
                    None => "/device".to_owned(),
                };
                Ok(redirect(&to, fresh.set_cookie()))
            }
            None => {
                session
                    .record
                    .failed_sign_ins
                    .record(d.lockout_window, ctx.now);
                let by_session =
                    session.record.failed_sign_ins.count == d.sign_in_failures_per_session;
                let by_source = st.sources.record(
                    Failure::SignIn,
                    ctx.source,
                    d.sign_in_failures_per_source,
                    d.lockout_window,
                    ctx.now,
                );
                session.save(&st.oauth)?;
                if by_session || by_source {
                    audit_lockout(&st, &ctx, "user.sign_in_locked_out", None, by_session).await?;
                }
                let text = "Wrong user name or password.";
                Ok(page(
                    StatusCode::BAD_REQUEST,
                    pages::sign_in(&csrf, &code, Some((Tone::Error, text))),
                    None,
                ))
            }
        }
    };
    result.await.unwrap_or_else(internal)
}

pub(super) async fn enter_code(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse(&body);
    let input = form.user_code.clone().unwrap_or_default();
    let result = async {
        let (mut session, user) = match signed_in(&st, &headers, &form, &ctx)? {
            Ok(pair) => pair,
            Err(refused) => return Ok(refused),
        };
        if let Some(refused) = code_lockout(&st, &session, &user, &input, &ctx) {
            return Ok(refused);
        }
        match st.oauth.look_up_user_code(&input, &user, &ctx).await? {
            CodeLookup::Found(request) => Ok(page(
                StatusCode::OK,
                pages::consent(&user, &session.record.csrf, &request, ctx.now),
                None,
            )),
            CodeLookup::Problem(problem) => {
                code_failed(&st, &mut session, &user, &input, problem, &ctx).await
            }
        }
    };
    result.await.unwrap_or_else(internal)
}

pub(super) async fn decide(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse(&body);
    let input = form.user_code.clone().unwrap_or_default();
    let result = async {
        let (mut session, user) = match signed_in(&st, &headers, &form, &ctx)? {
            Ok(pair) => pair,
            Err(refused) => return Ok(refused),
        };
        let approve = match form.decision.as_deref() {
            Some("approve") => true,
            Some("deny") => false,
            _ => return Ok(refuse(StatusCode::BAD_REQUEST, "Choose Approve or Deny.")),
        };
        // Deciding names a code too, so it counts against the same limits as entering one.
        if let Some(refused) = code_lockout(&st, &session, &user, &input, &ctx) {
            return Ok(refused);
        }
        let Some(code) = UserCode::parse(&input) else {
            return code_failed(&st, &mut session, &user, &input, CodeProblem::Unknown, &ctx).await;
        };
        match st
            .oauth
            .decide_device_request(&code, &user, approve, &ctx)
            .await?
        {
            CodeLookup::Found(request) => Ok(page(
                StatusCode::OK,
                pages::decided(&user, &session.record.csrf, &request, approve),
                None,
            )),
            CodeLookup::Problem(problem) => {
                code_failed(&st, &mut session, &user, &input, problem, &ctx).await
            }
        }
    };
    result.await.unwrap_or_else(internal)
}

pub(super) async fn sign_out(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse(&body);
    match checked_session(&st, &headers, &form, &ctx) {
        Ok(Ok(session)) => match session.end(&st.oauth) {
            Ok(()) => redirect("/device", Session::clear_cookie()),
            Err(e) => internal(e),
        },
        Ok(Err(refused)) => refused,
        Err(e) => internal(e),
    }
}

/// The request's session if its CSRF token matches, else the refusal page.
fn checked_session(
    st: &WebState,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<Session, Response>, OAuthError> {
    let session = Session::from_request(&st.oauth, headers, ctx.now)?;
    Ok(match session {
        Some(s) if s.csrf_matches(form.csrf.as_deref()) => Ok(s),
        _ => {
            tracing::info!(request_id = %ctx.request_id, "verification page form refused: missing session or CSRF token");
            Err(refuse(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this page. Go back to the start and try again.",
            ))
        }
    })
}

/// [`checked_session`] for a signed-in person; otherwise the sign-in page.
fn signed_in(
    st: &WebState,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<(Session, String), Response>, OAuthError> {
    let session = match checked_session(st, headers, form, ctx)? {
        Ok(s) => s,
        Err(refused) => return Ok(Err(refused)),
    };
    match session.record.user.clone() {
        Some(user) => Ok(Ok((session, user))),
        None => {
            let code = prefill(form.user_code.as_deref());
            let text = "Please sign in first.";
            let markup = pages::sign_in(&session.record.csrf, &code, Some((Tone::Info, text)));
            Ok(Err(page(StatusCode::UNAUTHORIZED, markup, None)))
        }
    }
}

/// The lockout page, if this session or address entered too many wrong codes.
fn code_lockout(
    st: &WebState,
    session: &Session,
    user: &str,
    input: &str,
    ctx: &RequestCtx,
) -> Option<Response> {
    let d = &st.oauth.settings.device;
    let wait = session
        .record
        .failed_codes
        .locked_for(d.code_failures_per_session, d.lockout_window, ctx.now)
        .or_else(|| {
            st.sources.locked_for(
                Failure::Code,
                ctx.source,
                d.code_failures_per_source,
                d.lockout_window,
                ctx.now,
            )
        })?;
    let text = locked_text("wrong codes", "code entry", wait);
    let markup = pages::enter_code(
        user,
        &session.record.csrf,
        &prefill(Some(input)),
        Some((Tone::Error, &text)),
    );
    Some(with_retry_after(
        page(StatusCode::TOO_MANY_REQUESTS, markup, None),
        wait,
    ))
}

/// Count a wrong, expired or used code against the session and the address, and say what was
/// wrong.
async fn code_failed(
    st: &WebState,
    session: &mut Session,
    user: &str,
    input: &str,
    problem: CodeProblem,
    ctx: &RequestCtx,
) -> Result<Response, OAuthError> {
    let d = &st.oauth.settings.device;
    session
        .record
        .failed_codes
        .record(d.lockout_window, ctx.now);
    let by_session = session.record.failed_codes.count == d.code_failures_per_session;
    let by_source = st.sources.record(
        Failure::Code,
        ctx.source,
        d.code_failures_per_source,
        d.lockout_window,
        ctx.now,
    );
    session.save(&st.oauth)?;
    if by_session || by_source {
        audit_lockout(
            st,
            ctx,
            "device.code_entry_locked_out",
            Some(user),
            by_session,
        )
        .await?;
    }
    let text = match problem {
        CodeProblem::Expired => {
            "That code has expired. Start again on your device to get a new code."
        }
        CodeProblem::Used => {
            "That code has already been used. Start again on your device if you need a new one."
        }
        _ => "That code is not valid. Check it against the code on your device and try again.",
    };
    let markup = pages::enter_code(
        user,
        &session.record.csrf,
        &prefill(Some(input)),
        Some((Tone::Error, text)),
    );
    Ok(page(StatusCode::BAD_REQUEST, markup, None))
}

async fn audit_lockout(
    st: &WebState,
    ctx: &RequestCtx,
    event: &str,
    user: Option<&str>,
    by_session: bool,
) -> Result<(), OAuthError> {
    let mut e = AuditEvent::new(event, Outcome::Failure).reason(if by_session {
        "failure limit reached for the session"
    } else {
        "failure limit reached for the source address"
    });
    if let Some(u) = user {
        e = e.actor(u);
    }
    st.oauth.record(ctx, e).await
}

fn locked_text(what: &str, activity: &str, wait: u64) -> String {
    let minutes = wait.div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!("Too many {what}. For your security, {activity} is paused for {minutes} {unit}.")
}

/// What to put in the code field: the code's display form, or (escaped) what was typed, capped.
fn prefill(input: Option<&str>) -> String {
    match input {
        None => String::new(),
        Some(raw) => UserCode::parse(raw)
            .map(|c| c.display())
            .unwrap_or_else(|| raw.chars().take(20).collect()),
    }
}

fn parse(body: &[u8]) -> PageForm {
    // A malformed body is an empty form: it then fails the CSRF check like any forged one.
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// An HTML page; a new session's cookie goes with it.
fn page(status: StatusCode, markup: Markup, session: Option<&Session>) -> Response {
    let mut resp = (status, Html(markup.into_string())).into_response();
    if let Some(s) = session.filter(|s| s.is_new) {
        resp.headers_mut()
            .append(header::SET_COOKIE, s.set_cookie());
    }
    resp
}

fn refuse(status: StatusCode, text: &str) -> Response {
    page(status, pages::message("Cannot continue", text), None)
}

fn with_retry_after(mut resp: Response, wait: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// 303 See Other: after a POST, the browser GETs `to`.
fn redirect(to: &str, cookie: HeaderValue) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    // Only paths we built from validated parts reach here.
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/device")),
    );
    h.append(header::SET_COOKIE, cookie);
    resp
}

fn internal(e: OAuthError) -> Response {
    tracing::error!(error = %e, "verification page failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message(
            "Something went wrong",
            "The server could not complete this step. Please try again.",
        ),
        None,
    )
}
