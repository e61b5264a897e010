//! Handlers of the verification page: show, sign in, enter a code, decide, sign out. Each POST
//! needs the caller's CSRF token; code entries and sign-ins are limited per session and per
//! source address — each attempt is reserved against the limits before it is evaluated (see
//! [`super::limits`]) — and a lockout says how long it lasts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;

use super::limits::{Attempt, Lockout, Policy, Reservation};
use super::pages::{self, Tone};
use super::session::{self, Caller, Session};
use super::visitor::Visitor;
use super::WebState;
use crate::accounts::{Password, SignIn};
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
    let caller = match Caller::from_request(&st.oauth, &st.key, &headers, ctx.now) {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    match caller {
        Some(Caller::SignedIn(s)) => page(
            StatusCode::OK,
            pages::enter_code(&s.user, &s.record.csrf, &prefill, None),
        ),
        Some(Caller::Visitor(v)) => page(StatusCode::OK, pages::sign_in(&v.csrf, &prefill, None)),
        None => {
            // Nothing is stored for a visitor: the cookie itself carries the CSRF token.
            let v = Visitor::fresh(st.oauth.settings.device.session_ttl, ctx.now);
            let mut resp = page(StatusCode::OK, pages::sign_in(&v.csrf, &prefill, None));
            resp.headers_mut().append(
                header::SET_COOKIE,
                session::visitor_cookie(&v, &st.key, ctx.now),
            );
            resp
        }
    }
}

pub(super) async fn sign_in(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse(&body);
    let caller = match checked_caller(&st, &headers, &form, &ctx) {
        Ok(Ok(c)) => c,
        Ok(Err(refused)) => return refused,
        Err(e) => return internal(e),
    };
    let d = &st.oauth.settings.device;
    let policy = Policy {
        per_session: d.sign_in_failures_per_session,
        per_source: d.sign_in_failures_per_source,
        window: d.lockout_window,
    };
    let code = prefill(form.user_code.as_deref());
    let csrf = caller.csrf().to_owned();
    // Counted before the password is checked, so concurrent attempts cannot pass the limit.
    let reservation = match st.limits.reserve(
        Attempt::SignIn,
        &caller.limit_key(),
        ctx.source,
        policy,
        ctx.now,
    ) {
        Ok(r) => r,
        Err(lockout) => {
            let text = locked_text("failed sign-ins", "signing in", lockout.wait);
            return with_retry_after(
                page(
                    StatusCode::TOO_MANY_REQUESTS,
                    pages::sign_in(&csrf, &code, Some((Tone::Error, &text))),
                ),
                lockout.wait,
            );
        }
    };
    let name = form.username.unwrap_or_default();
    let password = form
        .password
        .unwrap_or_else(|| Password::new(String::new()));
    let result = async {
        match st.oauth.sign_in(&name, password, &ctx).await? {
            SignIn::Accepted(user) => {
                st.limits.release(reservation);
                // A new session id at sign-in: an id planted before it (session fixation) is
                // worthless, and a visitor's cookie is replaced by the session's.
                if let Caller::SignedIn(old) = &caller {
                    old.end(&st.oauth)?;
                }
                let fresh = Session::fresh(user, d.session_ttl, ctx.now);
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
                Ok(redirect(&to, Some(fresh.set_cookie())))
            }
            SignIn::Busy => {
                // Nothing was checked: the attempt does not count.
                st.limits.release(reservation);
                let text = "The server is busy. Please try again in a moment.";
                Ok(with_retry_after(
                    page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::sign_in(&csrf, &code, Some((Tone::Error, text))),
                    ),
                    BUSY_RETRY_AFTER,
                ))
            }
            SignIn::Refused => {
                audit_if_limit_reached(
                    &st,
                    &ctx,
                    "user.sign_in_locked_out",
                    None,
                    &reservation,
                    policy,
                )
                .await?;
                let text = "Wrong user name or password.";
                Ok(page(
                    StatusCode::BAD_REQUEST,
                    pages::sign_in(&csrf, &code, Some((Tone::Error, text))),
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
        let session = match signed_in(&st, &headers, &form, &ctx)? {
            Ok(s) => s,
            Err(refused) => return Ok(refused),
        };
        let reservation = match reserve_code(&st, &session, &input, &ctx) {
            Ok(r) => r,
            Err(refused) => return Ok(*refused),
        };
        match st
            .oauth
            .look_up_user_code(&input, &session.user, &ctx)
            .await?
        {
            CodeLookup::Found(request) => {
                st.limits.release(reservation);
                Ok(page(
                    StatusCode::OK,
                    pages::consent(&session.user, &session.record.csrf, &request, ctx.now),
                ))
            }
            CodeLookup::Problem(problem) => {
                code_failed(&st, &session, &input, problem, reservation, &ctx).await
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
        let session = match signed_in(&st, &headers, &form, &ctx)? {
            Ok(s) => s,
            Err(refused) => return Ok(refused),
        };
        let approve = match form.decision.as_deref() {
            Some("approve") => true,
            Some("deny") => false,
            _ => return Ok(refuse(StatusCode::BAD_REQUEST, "Choose Approve or Deny.")),
        };
        // Deciding names a code too, so it counts against the same limits as entering one.
        let reservation = match reserve_code(&st, &session, &input, &ctx) {
            Ok(r) => r,
            Err(refused) => return Ok(*refused),
        };
        let Some(code) = UserCode::parse(&input) else {
            return code_failed(
                &st,
                &session,
                &input,
                CodeProblem::Unknown,
                reservation,
                &ctx,
            )
            .await;
        };
        match st
            .oauth
            .decide_device_request(&code, &session.user, approve, &ctx)
            .await?
        {
            CodeLookup::Found(request) => {
                st.limits.release(reservation);
                Ok(page(
                    StatusCode::OK,
                    pages::decided(&session.user, &session.record.csrf, &request, approve),
                ))
            }
            CodeLookup::Problem(problem) => {
                code_failed(&st, &session, &input, problem, reservation, &ctx).await
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
    let result = async {
        match checked_caller(&st, &headers, &form, &ctx)? {
            Ok(Caller::SignedIn(session)) => {
                session.end(&st.oauth)?;
                // Durable before the answer: a crash must not bring the session back.
                st.oauth
                    .commit
                    .commit()
                    .await
                    .map_err(OAuthError::internal)?;
                Ok(redirect("/device", Some(session::clear_cookie())))
            }
            Ok(Caller::Visitor(_)) => Ok(redirect("/device", None)),
            Err(refused) => Ok(refused),
        }
    };
    result.await.unwrap_or_else(internal)
}

/// Seconds a sign-in turned away for lack of a password-check slot is told to wait.
const BUSY_RETRY_AFTER: u64 = 1;

/// The request's caller if its CSRF token matches, else the refusal page.
fn checked_caller(
    st: &WebState,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<Caller, Response>, OAuthError> {
    let caller = Caller::from_request(&st.oauth, &st.key, headers, ctx.now)?;
    Ok(match caller {
        Some(c) if c.csrf_matches(form.csrf.as_deref()) => Ok(c),
        _ => {
            tracing::info!(request_id = %ctx.request_id, "verification page form refused: missing session or CSRF token");
            Err(refuse(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this page. Go back to the start and try again.",
            ))
        }
    })
}

/// [`checked_caller`] for a signed-in person; otherwise the sign-in page.
fn signed_in(
    st: &WebState,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<Session, Response>, OAuthError> {
    match checked_caller(st, headers, form, ctx)? {
        Ok(Caller::SignedIn(s)) => Ok(Ok(s)),
        Ok(Caller::Visitor(v)) => {
            let code = prefill(form.user_code.as_deref());
            let text = "Please sign in first.";
            let markup = pages::sign_in(&v.csrf, &code, Some((Tone::Info, text)));
            Ok(Err(page(StatusCode::UNAUTHORIZED, markup)))
        }
        Err(refused) => Ok(Err(refused)),
    }
}

fn code_policy(st: &WebState) -> Policy {
    let d = &st.oauth.settings.device;
    Policy {
        per_session: d.code_failures_per_session,
        per_source: d.code_failures_per_source,
        window: d.lockout_window,
    }
}

/// Reserve one code attempt for this session, or the lockout page.
fn reserve_code(
    st: &WebState,
    session: &Session,
    input: &str,
    ctx: &RequestCtx,
) -> Result<Reservation, Box<Response>> {
    st.limits
        .reserve(
            Attempt::Code,
            &session.limit_key(),
            ctx.source,
            code_policy(st),
            ctx.now,
        )
        .map_err(|lockout: Lockout| {
            let text = locked_text("wrong codes", "code entry", lockout.wait);
            let markup = pages::enter_code(
                &session.user,
                &session.record.csrf,
                &prefill(Some(input)),
                Some((Tone::Error, &text)),
            );
            Box::new(with_retry_after(
                page(StatusCode::TOO_MANY_REQUESTS, markup),
                lockout.wait,
            ))
        })
}

/// A wrong, expired or used code: its reservation stays counted; say what was wrong.
async fn code_failed(
    st: &WebState,
    session: &Session,
    input: &str,
    problem: CodeProblem,
    reservation: Reservation,
    ctx: &RequestCtx,
) -> Result<Response, OAuthError> {
    audit_if_limit_reached(
        st,
        ctx,
        "device.code_entry_locked_out",
        Some(&session.user),
        &reservation,
        code_policy(st),
    )
    .await?;
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
        &session.user,
        &session.record.csrf,
        &prefill(Some(input)),
        Some((Tone::Error, text)),
    );
    Ok(page(StatusCode::BAD_REQUEST, markup))
}

/// Audit the failure that filled a limit (once per lockout, not per refused attempt).
async fn audit_if_limit_reached(
    st: &WebState,
    ctx: &RequestCtx,
    event: &str,
    user: Option<&str>,
    reservation: &Reservation,
    policy: Policy,
) -> Result<(), OAuthError> {
    let by_session = reservation.session_count == policy.per_session;
    let by_source = reservation.source_count == policy.per_source;
    if !(by_session || by_source) {
        return Ok(());
    }
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

/// An HTML page.
fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn refuse(status: StatusCode, text: &str) -> Response {
    page(status, pages::message("Cannot continue", text))
}

fn with_retry_after(mut resp: Response, wait: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// 303 See Other: after a POST, the browser GETs `to`.
fn redirect(to: &str, cookie: Option<HeaderValue>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    // Only paths we built from validated parts reach here.
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/device")),
    );
    if let Some(c) = cookie {
        h.append(header::SET_COOKIE, c);
    }
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
    )
}
