//! Handlers of the verification page. Every POST needs the caller's CSRF token and answers with
//! a redirect (post/redirect/get), so Back and reload never resubmit a form; what the next page
//! must say travels in the flash cookie. Code entries and sign-ins are reserved against the
//! failure limits before they are evaluated ([`super::limits`]). Every page is in the language
//! the browser asks for ([`super::i18n`]).

mod code;
mod decision;
mod sign_in;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;

use super::flash::{self, Flash, Notice as FlashNotice};
use super::i18n::{fill, Lang, Texts};
use super::limits::{CodeCaller, CodePolicy, LockedBy, Lockout, Reservation, SignInPolicy};
use super::pages::{self, Notice};
use super::session::{self, Caller, Session};
use super::visitor::Visitor;
use super::WebState;
use crate::accounts::Password;
use crate::http::ctx::Ctx;
use crate::oauth::device_flow::{DeviceSettings, UserCode};
use crate::oauth::{OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};

pub(super) use self::code::{consent, enter_code};
pub(super) use self::decision::{decide, done};
pub(super) use self::sign_in::{sign_in, sign_out};

type St = State<Arc<WebState>>;

/// `?user_code=…` of the page's GETs.
#[derive(Debug, Deserialize)]
pub(super) struct CodeQuery {
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

/// The language of a request and its texts.
#[derive(Debug, Clone, Copy)]
struct Speak {
    lang: Lang,
    t: &'static Texts,
}

impl Speak {
    fn of(headers: &HeaderMap) -> Self {
        let lang = Lang::negotiate(headers);
        Speak {
            lang,
            t: lang.texts(),
        }
    }
}

/// `GET /device`: the sign-in page for a visitor, the code page for a signed-in person, or what
/// pauses them; with what the flash says.
pub(super) async fn show(
    State(st): St,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    query: Result<Query<CodeQuery>, QueryRejection>,
) -> Response {
    let sp = Speak::of(&headers);
    let from_query = query.as_ref().ok().and_then(|q| q.user_code.as_deref());
    let flash = Flash::from_request(&st.key, &headers, ctx.now);
    let mut resp = match Caller::from_request(&st.oauth, &st.key, &headers, ctx.now).await {
        Err(e) => internal(sp, e),
        Ok(None) => {
            // Nothing is stored for a visitor: the cookie itself carries the CSRF token.
            let v = Visitor::fresh(st.oauth.settings.device.session_ttl, ctx.now);
            let mut resp = sign_in_page(&st, sp, &v, from_query, None, &ctx).await;
            resp.headers_mut().append(
                header::SET_COOKIE,
                session::visitor_cookie(&v, &st.key, ctx.now),
            );
            resp
        }
        Ok(Some(Caller::Visitor(v))) => sign_in_page(&st, sp, &v, from_query, flash, &ctx).await,
        Ok(Some(Caller::SignedIn(s))) => code_page(&st, sp, &s, from_query, flash, &ctx).await,
    };
    if flash::present(&headers) {
        resp.headers_mut()
            .append(header::SET_COOKIE, flash::clear_cookie());
    }
    resp
}

async fn sign_in_page(
    st: &WebState,
    sp: Speak,
    v: &Visitor,
    from_query: Option<&str>,
    flash: Option<Flash>,
    ctx: &RequestCtx,
) -> Response {
    let t = sp.t;
    let d = &st.oauth.settings.device;
    let lockout = st
        .limits
        .sign_in_lockout(&v.limit_key(), ctx.source, sign_in_policy(d), ctx.now)
        .await;
    let lockout = match lockout {
        Ok(l) => l,
        Err(e) => return internal(sp, OAuthError::from(e)),
    };
    if let Some(l) = lockout {
        let reason = match l.by {
            LockedBy::Session => t.sign_in_paused_session,
            _ => t.sign_in_paused_source,
        };
        let pause = fill(
            t.sign_in_paused_for,
            &[("duration", &t.minutes(minutes(l.wait)))],
        );
        let markup = pages::paused(
            t,
            &pages::PausedView {
                user: None,
                heading: t.sign_in_paused_heading,
                reason,
                pause: &pause,
                advice: None,
                not_checked: None,
            },
        );
        return with_retry_after(page(sp, StatusCode::TOO_MANY_REQUESTS, markup), l.wait);
    }
    let (notice, username, code) = match &flash {
        Some(f) if f.notice == FlashNotice::WrongPassword => (
            Some(Notice::error(t.wrong_password)),
            f.username.as_str(),
            f.code.clone(),
        ),
        Some(f) if f.notice == FlashNotice::PleaseSignIn => {
            (Some(Notice::info(t.please_sign_in)), "", f.code.clone())
        }
        _ => (None, "", String::new()),
    };
    let code = from_query.map_or(code, |q| prefill(Some(q)));
    let markup = pages::sign_in(
        t,
        &pages::SignInView {
            csrf: &v.csrf,
            user_code: &code,
            username,
            notice,
        },
    );
    page(sp, StatusCode::OK, markup)
}

async fn code_page(
    st: &WebState,
    sp: Speak,
    s: &Session,
    from_query: Option<&str>,
    flash: Option<Flash>,
    ctx: &RequestCtx,
) -> Response {
    let t = sp.t;
    let d = &st.oauth.settings.device;
    let key = s.limit_key();
    let who = CodeCaller {
        session: &key,
        account: &s.user,
        source: ctx.source,
    };
    let lockout = match st.limits.code_lockout(who, code_policy(d), ctx.now).await {
        Ok(l) => l,
        Err(e) => return internal(sp, OAuthError::from(e)),
    };
    if let Some(l) = lockout {
        let not_checked = flash
            .as_ref()
            .is_some_and(|f| f.notice == FlashNotice::CodeNotChecked);
        return code_paused(st, sp, s, l, not_checked);
    }
    let tries;
    let (notice, prefill_text) = match &flash {
        Some(f) if f.notice == FlashNotice::CodeUnknown => {
            tries = f.tries_left.map(|n| t.tries_left(n));
            let mut n = Notice::error(t.code_unknown);
            n.detail = tries.as_deref();
            (Some(n), f.code.clone())
        }
        Some(f) if f.notice == FlashNotice::CodeExpired => {
            (Some(Notice::error(t.code_expired)), String::new())
        }
        _ => (None, String::new()),
    };
    let from_link = from_query.is_some() && notice.is_none();
    let prefill_text = from_query.map_or(prefill_text, |q| prefill(Some(q)));
    let markup = pages::code_entry(
        t,
        &pages::CodeEntryView {
            user: &s.user,
            csrf: &s.record.csrf,
            prefill: &prefill_text,
            from_link,
            notice,
        },
    );
    page(sp, StatusCode::OK, markup)
}

/// The code-entry pause page (429 with `Retry-After`).
fn code_paused(st: &WebState, sp: Speak, s: &Session, l: Lockout, not_checked: bool) -> Response {
    let t = sp.t;
    let reason = match l.by {
        LockedBy::Session => t.code_paused_session,
        LockedBy::Account => t.code_paused_account,
        LockedBy::Source => t.code_paused_source,
        _ => t.code_paused_global,
    };
    let pause = fill(
        t.code_paused_for,
        &[("duration", &t.minutes(minutes(l.wait)))],
    );
    let lifetime = t.minutes(minutes(st.oauth.settings.device.expires_in));
    let advice = fill(t.code_paused_restart, &[("lifetime", &lifetime)]);
    let markup = pages::paused(
        t,
        &pages::PausedView {
            user: Some((&s.user, &s.record.csrf)),
            heading: t.code_paused_heading,
            reason,
            pause: &pause,
            advice: Some(&advice),
            not_checked: not_checked.then_some(t.code_not_checked),
        },
    );
    with_retry_after(page(sp, StatusCode::TOO_MANY_REQUESTS, markup), l.wait)
}

/// Whole minutes, rounded up, at least one.
fn minutes(seconds: u64) -> u64 {
    seconds.div_ceil(60).max(1)
}

fn sign_in_policy(d: &DeviceSettings) -> SignInPolicy {
    SignInPolicy {
        per_session: d.sign_in_failures_per_session,
        per_source: d.sign_in_failures_per_source,
        window: d.lockout_window,
    }
}

fn code_policy(d: &DeviceSettings) -> CodePolicy {
    CodePolicy {
        per_session: d.code_failures_per_session,
        per_account: d.code_failures_per_account,
        slowdown_per_source: d.code_slowdown_per_source,
        per_source: d.code_failures_per_source,
        global: d.code_failures_global,
        window: d.lockout_window,
    }
}

/// The request's caller if its CSRF token matches, else the refusal page (its way back keeps the
/// code the form carried).
async fn checked_caller(
    st: &WebState,
    sp: Speak,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<Caller, Response>, OAuthError> {
    let caller = Caller::from_request(&st.oauth, &st.key, headers, ctx.now).await?;
    Ok(match caller {
        Some(c) if c.csrf_matches(form.csrf.as_deref()) => Ok(c),
        _ => {
            tracing::info!(request_id = %ctx.request_id, "verification page form refused: missing session or CSRF token");
            Err(refuse(
                sp,
                StatusCode::FORBIDDEN,
                sp.t.form_expired,
                &start_with(form.user_code.as_deref()),
            ))
        }
    })
}

/// [`checked_caller`] for a signed-in person; a visitor is sent to sign in, the code kept.
async fn signed_in(
    st: &WebState,
    sp: Speak,
    headers: &HeaderMap,
    form: &PageForm,
    ctx: &RequestCtx,
) -> Result<Result<Session, Response>, OAuthError> {
    match checked_caller(st, sp, headers, form, ctx).await? {
        Ok(Caller::SignedIn(s)) => Ok(Ok(s)),
        Ok(Caller::Visitor(_)) => {
            let typed = form.user_code.as_deref().unwrap_or_default();
            let f = Flash::new(FlashNotice::PleaseSignIn).code(&prefill(Some(typed)));
            Ok(Err(see_other(
                &start_with(form.user_code.as_deref()),
                &[f.set_cookie(&st.key, ctx.now)],
            )))
        }
        Err(refused) => Ok(Err(refused)),
    }
}

/// Audit the failure that filled a limit (once per lockout, not per refused attempt).
async fn audit_if_limit_reached(
    st: &WebState,
    ctx: &RequestCtx,
    event: &str,
    user: Option<&str>,
    reached: Option<&str>,
) -> Result<(), OAuthError> {
    let Some(whose) = reached else {
        return Ok(());
    };
    let mut e = AuditEvent::new(event, Outcome::Failure)
        .reason(format!("failure limit reached for the {whose}"));
    if let Some(u) = user {
        e = e.actor(u);
    }
    st.oauth.record(ctx, e).await
}

/// Which limit, if any, this kept reservation just filled.
fn filled_by_sign_in(r: &Reservation, p: SignInPolicy) -> Option<&'static str> {
    if r.counts.session == p.per_session {
        Some("session")
    } else if r.counts.source == p.per_source {
        Some("source address")
    } else {
        None
    }
}

/// Which limit, if any, this kept reservation just filled.
fn filled_by_code(r: &Reservation, p: CodePolicy) -> Option<&'static str> {
    let c = r.counts;
    [
        (c.session == p.per_session, "session"),
        (c.account == p.per_account, "account"),
        (c.source == p.per_source, "source address"),
        (c.global == p.global, "server"),
    ]
    .into_iter()
    .find_map(|(hit, whose)| hit.then_some(whose))
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

/// `/device`, with `?user_code=` when `input` is a well-formed code.
fn start_with(input: Option<&str>) -> String {
    with_code("/device", input.and_then(UserCode::parse).as_ref())
}

/// `path?user_code=XXXX-XXXX`, or `path` alone.
fn with_code(path: &str, code: Option<&UserCode>) -> String {
    match code {
        Some(c) => format!("{path}?user_code={}", c.display()),
        None => path.to_owned(),
    }
}

fn parse(body: &[u8]) -> PageForm {
    // A malformed body is an empty form: it then fails the CSRF check like any forged one.
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// An HTML page in the request's language.
fn page(sp: Speak, status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, Html(markup.into_string())).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(sp.lang.tag()),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    resp
}

fn refuse(sp: Speak, status: StatusCode, text: &str, back: &str) -> Response {
    page(
        sp,
        status,
        pages::message(sp.t, sp.t.cannot_continue, text, back),
    )
}

fn with_retry_after(mut resp: Response, wait: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// 303 See Other: after a POST, the browser GETs `to` (with these cookies set).
fn see_other(to: &str, cookies: &[HeaderValue]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    // Only paths we built from validated parts reach here.
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/device")),
    );
    for c in cookies {
        h.append(header::SET_COOKIE, c.clone());
    }
    resp
}

fn internal(sp: Speak, e: OAuthError) -> Response {
    // Storage out of reach is not our bug: 503, and the router adds `Retry-After`.
    let status = if matches!(e, OAuthError::TemporarilyUnavailable(_)) {
        tracing::warn!(error = %e, "verification page: storage unavailable");
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        tracing::error!(error = %e, "verification page failed");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    page(
        sp,
        status,
        pages::message(sp.t, sp.t.something_wrong, sp.t.try_later, "/device"),
    )
}
