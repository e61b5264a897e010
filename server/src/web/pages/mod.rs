//! The verification page's HTML (maud: every interpolated value is escaped). Every word comes
//! from the request's language table ([`super::i18n`]); no JavaScript; one small stylesheet.

mod consent;
mod forms;
mod style;

use maud::{html, Markup, DOCTYPE};

use super::i18n::{fill, Texts};

pub use self::consent::{
    consent, device_name, outcome, ConsentView, Outcome, OutcomeView, ScopeLine,
};
pub use self::forms::{code_entry, paused, sign_in, CodeEntryView, PausedView, SignInView};
pub use self::style::{ICON_SVG, STYLESHEET};

/// How a message reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tone {
    /// Something went wrong (and the field it is about is marked invalid).
    Error,
    /// Neutral information.
    Info,
}

/// A message shown above a form.
#[derive(Debug, Clone, Copy)]
pub struct Notice<'a> {
    /// How it reads.
    pub tone: Tone,
    /// What it says.
    pub text: &'a str,
    /// A second line (tries left), if any.
    pub detail: Option<&'a str>,
}

impl<'a> Notice<'a> {
    /// An error message.
    pub fn error(text: &'a str) -> Self {
        Notice {
            tone: Tone::Error,
            text,
            detail: None,
        }
    }

    /// An information message.
    pub fn info(text: &'a str) -> Self {
        Notice {
            tone: Tone::Info,
            text,
            detail: None,
        }
    }
}

/// The id of the message box, which invalid fields point at with `aria-describedby`.
pub const NOTICE_ID: &str = "notice";

/// The page frame: header (with sign-out when signed in), a card, the body.
fn layout(t: &Texts, title: &str, user: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(t.lang) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (fill(t.page_title, &[("title", title)])) }
                link rel="stylesheet" href="/device/style.css";
                link rel="icon" href="/device/icon.svg" type="image/svg+xml";
            }
            body {
                header {
                    span.brand { (t.brand) }
                    @if let Some((name, csrf)) = user {
                        form method="post" action="/device/sign-out" {
                            span.who { (fill(t.signed_in_as, &[("user", name)])) }
                            input type="hidden" name="csrf" value=(csrf);
                            button.link type="submit" id="sign-out" { (t.sign_out) }
                        }
                    }
                }
                main { div.card { (body) } }
            }
        }
    }
}

/// The message box. An error takes focus when the page opens only if no field does (a field
/// marked invalid is focused instead and points here).
fn notice(n: Option<Notice<'_>>) -> Markup {
    html! {
        @if let Some(n) = n {
            @let (class, role) = match n.tone {
                Tone::Error => ("notice error", "alert"),
                Tone::Info => ("notice info", "status"),
            };
            div class=(class) id=(NOTICE_ID) role=(role) {
                p { (n.text) }
                @if let Some(d) = n.detail { p { (d) } }
            }
        }
    }
}

/// A page that only explains something (a refused form), with a way back that keeps the code.
pub fn message(t: &Texts, title: &str, text: &str, back: &str) -> Markup {
    layout(
        t,
        title,
        None,
        html! {
            h1 { (title) }
            p.notice.error id=(NOTICE_ID) role="alert" { (text) }
            p { a href=(back) autofocus { (t.back_to_start) } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::i18n::Lang;

    #[test]
    fn everything_interpolated_is_escaped() {
        let t = Lang::En.texts();
        let page = sign_in(
            t,
            &SignInView {
                csrf: "c\"srf",
                user_code: "<script>alert(1)</script>",
                username: "<i>",
                notice: Some(Notice::error("<b>x</b>")),
            },
        )
        .into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("c&quot;srf"));
        assert!(page.contains("&lt;b&gt;x"));
        assert!(page.contains("value=\"&lt;i&gt;\""));
    }

    #[test]
    fn pages_use_no_inline_script_or_style_and_speak_their_language() {
        let t = Lang::De.texts();
        let page = code_entry(
            t,
            &CodeEntryView {
                user: "ann",
                csrf: "t",
                prefill: "BCDF-GHJK",
                from_link: true,
                notice: None,
            },
        )
        .into_string();
        assert!(!page.contains("<script"));
        assert!(!page.contains("style="));
        assert!(page.contains("name=\"viewport\""));
        assert!(page.contains("lang=\"de\""));
        assert!(page.contains(t.code_intro_prefilled));
        assert!(page.contains("autocomplete=\"off\""));
        assert!(!page.contains("one-time-code"));
    }

    #[test]
    fn an_error_marks_its_field_and_the_field_takes_focus() {
        let t = Lang::En.texts();
        let page = code_entry(
            t,
            &CodeEntryView {
                user: "ann",
                csrf: "t",
                prefill: "BBBB-BBBB",
                from_link: false,
                notice: Some(Notice::error(t.code_unknown)),
            },
        )
        .into_string();
        let field = &page[page.find("id=\"user_code\"").unwrap()..];
        let field = &field[..field.find('>').unwrap()];
        for attr in [
            "aria-invalid=\"true\"",
            "aria-describedby=\"notice\"",
            "autofocus",
        ] {
            assert!(field.contains(attr), "{attr} in {field}");
        }
    }
}
