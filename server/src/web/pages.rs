//! The verification page's HTML (maud: every interpolated value is escaped). No JavaScript; one
//! small stylesheet that fits a phone and a desktop.

use maud::{html, Markup, DOCTYPE};

use crate::oauth::device_flow::PendingRequest;

/// A message shown above a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Something went wrong.
    Error,
    /// Neutral information.
    Info,
}

/// A message and its tone.
pub type Notice<'a> = Option<(Tone, &'a str)>;

/// The stylesheet, served at `/device/style.css` so the CSP can forbid inline styles.
pub const STYLESHEET: &str = r#"
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2430;background:#eef1f5}
header{background:#1c2a3a;color:#fff;padding:.75rem 1rem;min-height:3.625rem;display:flex;align-items:center;justify-content:space-between;gap:1rem}
header .brand{font-weight:700;letter-spacing:.02em}
header form{margin:0}
header .who{font-size:.875rem;opacity:.85;margin-right:.5rem}
main{max-width:30rem;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:1.5rem}
h1{font-size:1.375rem;margin:0 0 .75rem}
p{margin:.5rem 0}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=text],input[type=password]{width:100%;font-size:1.125rem;padding:.7rem .8rem;border:1px solid #9aa6b5;border-radius:8px;background:#fff}
input:focus{outline:3px solid #8ab4f8;outline-offset:1px}
input.code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.5rem;letter-spacing:.15em;text-transform:uppercase;text-align:center}
button{font:inherit;font-weight:600;cursor:pointer;border-radius:8px;padding:.75rem 1rem;border:2px solid transparent}
.primary{background:#1f6feb;color:#fff;width:100%;margin-top:1.25rem}
.approve{background:#1a7f37;color:#fff}
.deny{background:#fff;color:#b42318;border-color:#b42318}
.link{background:none;color:#fff;border:1px solid rgba(255,255,255,.5);padding:.35rem .7rem;font-size:.875rem}
.choices{display:flex;gap:.75rem;margin-top:1.25rem}
.choices button{flex:1}
.notice{border-radius:8px;padding:.75rem 1rem;margin:0 0 1rem}
.error{background:#fdecea;color:#8a1c12;border:1px solid #f5c2bd}
.info{background:#e8f1fd;color:#123e73;border:1px solid #bcd4f6}
.success{background:#e7f5ec;color:#14532d;border:1px solid #b7e0c4}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem;margin:1rem 0}
dt{color:#56616f}
dd{margin:0;word-break:break-all;font-weight:600}
.scopes{margin:.25rem 0 0;padding-left:1.25rem}
.codebox{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.75rem;letter-spacing:.15em;text-align:center;background:#f3f5f8;border-radius:8px;padding:.5rem;margin:.75rem 0}
.small{font-size:.875rem;color:#56616f}
@media (max-width:420px){main{margin-top:1rem}.card{padding:1.1rem}.choices{flex-direction:column-reverse}}
"#;

/// The page frame: header (with sign-out when signed in), a card, the body.
fn layout(title: &str, user: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) " · Hallmark" }
                link rel="stylesheet" href="/device/style.css";
            }
            body {
                header {
                    span.brand { "Hallmark" }
                    @if let Some((name, csrf)) = user {
                        form method="post" action="/device/sign-out" {
                            span.who { "Signed in as " (name) }
                            input type="hidden" name="csrf" value=(csrf);
                            button.link type="submit" id="sign-out" { "Sign out" }
                        }
                    }
                }
                main { div.card { (body) } }
            }
        }
    }
}

fn notice(n: Notice<'_>) -> Markup {
    html! {
        @if let Some((tone, text)) = n {
            @let class = match tone { Tone::Error => "notice error", Tone::Info => "notice info" };
            p class=(class) id="notice" role=(if tone == Tone::Error { "alert" } else { "status" }) { (text) }
        }
    }
}

/// Sign-in form; `user_code` is carried through so the person lands on the right request.
pub fn sign_in(csrf: &str, user_code: &str, message: Notice<'_>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to connect a device" }
            (notice(message))
            p { "Sign in with the account the device should act for." }
            form method="post" action="/device/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="user_code" value=(user_code);
                label for="username" { "User name" }
                input type="text" id="username" name="username" autocomplete="username"
                    autocapitalize="none" spellcheck="false" required;
                label for="password" { "Password" }
                input type="password" id="password" name="password" autocomplete="current-password" required;
                button.primary type="submit" id="sign-in" { "Sign in" }
            }
        },
    )
}

/// Code entry, pre-filled from `verification_uri_complete`.
pub fn enter_code(user: &str, csrf: &str, prefill: &str, message: Notice<'_>) -> Markup {
    layout(
        "Connect a device",
        Some((user, csrf)),
        html! {
            h1 { "Connect a device" }
            (notice(message))
            p { "Enter the code shown on your device." }
            form method="post" action="/device" {
                input type="hidden" name="csrf" value=(csrf);
                label for="user_code" { "Code" }
                input.code type="text" id="user_code" name="user_code" value=(prefill)
                    placeholder="XXXX-XXXX" maxlength="20" autocomplete="one-time-code"
                    autocapitalize="characters" autocorrect="off" spellcheck="false" required;
                button.primary type="submit" id="continue" { "Continue" }
            }
        },
    )
}

/// What the person approves or denies (RFC 8628 §5.4: show the code so they can compare it with
/// the device's screen, and say which device and scopes).
pub fn consent(user: &str, csrf: &str, request: &PendingRequest, now: u64) -> Markup {
    let minutes = request.expires_at.saturating_sub(now).div_ceil(60);
    layout(
        "Approve device",
        Some((user, csrf)),
        html! {
            h1 { "A device asks for access" }
            p { "Check that this code matches the one on the device's screen:" }
            div.codebox id="shown-code" { (request.user_code.display()) }
            dl {
                dt { "Device" }
                dd id="client-name" { (request.client_name.as_deref().unwrap_or("(unnamed)")) }
                @if let Some(device) = &request.device {
                    dt { "Model" } dd id="model" { (device.model) }
                    dt { "Serial" } dd id="serial" { (device.serial) }
                }
                dt { "Client ID" } dd id="client-id" { (request.client_id) }
                dt { "Access" }
                dd {
                    @if request.scope.is_empty() {
                        "no scopes"
                    } @else {
                        ul.scopes id="scopes" { @for s in &request.scope { li { (s) } } }
                    }
                }
            }
            p.small { "It will act as " strong { (user) } ". This request expires in about " (minutes) " min." }
            form method="post" action="/device/decision" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="user_code" value=(request.user_code.display());
                div.choices {
                    button.deny type="submit" name="decision" value="deny" id="deny" { "Deny" }
                    button.approve type="submit" name="decision" value="approve" id="approve" { "Approve" }
                }
            }
        },
    )
}

/// The outcome of a decision.
pub fn decided(user: &str, csrf: &str, request: &PendingRequest, approved: bool) -> Markup {
    let name = request.client_name.as_deref().unwrap_or("The device");
    layout(
        if approved {
            "Device approved"
        } else {
            "Request denied"
        },
        Some((user, csrf)),
        html! {
            @if approved {
                h1 { "Device approved" }
                p.notice.success id="result" role="status" {
                    (name) " is now connected to your account. You can return to the device; it will finish on its own."
                }
            } @else {
                h1 { "Request denied" }
                p.notice.info id="result" role="status" {
                    (name) " was not given access. If this was a mistake, start again on the device."
                }
            }
            p { a href="/device" { "Connect another device" } }
        },
    )
}

/// A page that only explains something (a refused form, a lockout).
pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p.notice.error id="notice" role="alert" { (text) }
            p { a href="/device" { "Back to the start" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_interpolated_is_escaped() {
        let page = sign_in(
            "c\"srf",
            "<script>alert(1)</script>",
            Some((Tone::Error, "<b>x</b>")),
        )
        .into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("c&quot;srf"));
        assert!(page.contains("&lt;b&gt;x"));
    }

    #[test]
    fn pages_use_no_inline_script_or_style() {
        let page = enter_code("ann", "t", "BCDF-GHJK", None).into_string();
        assert!(!page.contains("<script"));
        assert!(!page.contains("style="));
        assert!(page.contains("name=\"viewport\""));
    }
}
