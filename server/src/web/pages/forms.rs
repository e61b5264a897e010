//! The page's forms: sign in, enter a code; and the page that stands in for them while a limit
//! pauses them.

use maud::{html, Markup};

use super::{layout, notice, Notice, Tone, NOTICE_ID};
use crate::web::i18n::Texts;

/// What the sign-in page shows.
#[derive(Debug)]
pub struct SignInView<'a> {
    /// The visitor's CSRF token.
    pub csrf: &'a str,
    /// The user code carried through, so the person lands on the right request.
    pub user_code: &'a str,
    /// The user name typed before (kept after a wrong password).
    pub username: &'a str,
    /// A message.
    pub notice: Option<Notice<'a>>,
}

/// Sign-in form. The first empty field takes focus; after a wrong password, the password field
/// (marked invalid, pointing at the message).
pub fn sign_in(t: &Texts, v: &SignInView<'_>) -> Markup {
    let invalid = v.notice.is_some_and(|n| n.tone == Tone::Error);
    let focus_name = v.username.is_empty();
    layout(
        t,
        t.sign_in_title,
        None,
        html! {
            h1 { (t.sign_in_heading) }
            (notice(v.notice))
            p { (t.sign_in_intro) }
            form method="post" action="/device/sign-in" {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="user_code" value=(v.user_code);
                label for="username" { (t.username_label) }
                input type="text" id="username" name="username" value=(v.username)
                    autocomplete="username" autocapitalize="none" spellcheck="false" required
                    autofocus[focus_name]
                    aria-invalid=[invalid.then_some("true")]
                    aria-describedby=[invalid.then_some(NOTICE_ID)];
                label for="password" { (t.password_label) }
                input type="password" id="password" name="password"
                    autocomplete="current-password" required
                    autofocus[!focus_name]
                    aria-invalid=[invalid.then_some("true")]
                    aria-describedby=[invalid.then_some(NOTICE_ID)];
                button.primary type="submit" id="sign-in" { (t.sign_in_button) }
            }
        },
    )
}

/// What the code page shows.
#[derive(Debug)]
pub struct CodeEntryView<'a> {
    /// The signed-in user.
    pub user: &'a str,
    /// The session's CSRF token.
    pub csrf: &'a str,
    /// What goes in the field.
    pub prefill: &'a str,
    /// Whether the code came with the link (`verification_uri_complete`): then the page asks
    /// the person to check it, and Continue takes focus.
    pub from_link: bool,
    /// A message.
    pub notice: Option<Notice<'a>>,
}

/// Code entry, pre-filled from `verification_uri_complete`.
pub fn code_entry(t: &Texts, v: &CodeEntryView<'_>) -> Markup {
    let invalid = v.notice.is_some_and(|n| n.tone == Tone::Error);
    let confirm = v.from_link && !v.prefill.is_empty() && !invalid;
    layout(
        t,
        t.code_heading,
        Some((v.user, v.csrf)),
        html! {
            h1 { (t.code_heading) }
            (notice(v.notice))
            p { (if confirm { t.code_intro_prefilled } else { t.code_intro }) }
            form method="post" action="/device" {
                input type="hidden" name="csrf" value=(v.csrf);
                label for="user_code" { (t.code_label) }
                // Not autocomplete="one-time-code": phones would offer codes from SMS.
                input.code type="text" id="user_code" name="user_code" value=(v.prefill)
                    placeholder="XXXX-XXXX" maxlength="20" autocomplete="off"
                    autocapitalize="characters" autocorrect="off" spellcheck="false" required
                    autofocus[!confirm]
                    aria-invalid=[invalid.then_some("true")]
                    aria-describedby=[invalid.then_some(NOTICE_ID)];
                button.primary type="submit" id="continue" autofocus[confirm] {
                    (t.continue_button)
                }
            }
        },
    )
}

/// What a paused page says.
#[derive(Debug)]
pub struct PausedView<'a> {
    /// The signed-in user and CSRF token (for the sign-out button), if signed in.
    pub user: Option<(&'a str, &'a str)>,
    /// Heading (and title).
    pub heading: &'a str,
    /// Why it is paused.
    pub reason: &'a str,
    /// For how long.
    pub pause: &'a str,
    /// What to do (start again on the device), if anything.
    pub advice: Option<&'a str>,
    /// Whether the code just sent was not looked at.
    pub not_checked: Option<&'a str>,
}

/// A pause: why, for how long, what to do; no form to fill in meanwhile.
pub fn paused(t: &Texts, v: &PausedView<'_>) -> Markup {
    layout(
        t,
        v.heading,
        v.user,
        html! {
            h1 { (v.heading) }
            div.notice.error id=(NOTICE_ID) role="alert" tabindex="-1" autofocus {
                p { (v.reason) }
                p { strong { (v.pause) } }
            }
            @if let Some(text) = v.not_checked { p { (text) } }
            @if let Some(text) = v.advice { p { (text) } }
            p { a href="/device" id="try-again" { (t.try_again) } }
        },
    )
}
