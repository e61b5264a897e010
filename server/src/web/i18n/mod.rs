//! The verification page's words, one table per language ([`en`], [`de`]): templates take every
//! text from a [`Texts`], never from a literal. The language is picked from the request's
//! `Accept-Language` (RFC 9110 §12.5.4: quality values, a language range matching its
//! sub-tags), English when nothing we speak is asked for.

mod de;
mod en;

use axum::http::{header, HeaderMap};

/// A language the page speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lang {
    /// English, the fallback.
    En,
    /// German.
    De,
}

impl Lang {
    /// Every language the page speaks, fallback first.
    pub const ALL: [Lang; 2] = [Lang::En, Lang::De];

    /// The BCP 47 tag (`<html lang>`, `Content-Language`, config keys).
    pub fn tag(self) -> &'static str {
        self.texts().lang
    }

    /// The language with this primary tag (`de`, `DE`, `de-AT`).
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag.split('-').next().unwrap_or_default();
        Lang::ALL
            .into_iter()
            .find(|l| l.tag().eq_ignore_ascii_case(primary))
    }

    /// The language's string table.
    pub fn texts(self) -> &'static Texts {
        match self {
            Lang::En => &en::TEXTS,
            Lang::De => &de::TEXTS,
        }
    }

    /// The best language for a request: the highest-quality `Accept-Language` range we speak
    /// (the first of equals wins), else English.
    pub fn negotiate(headers: &HeaderMap) -> Lang {
        let mut best: Option<(u16, Lang)> = None;
        let ranges = headers
            .get_all(header::ACCEPT_LANGUAGE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges.take(32) {
            let mut parts = range.split(';');
            let tag = parts.next().unwrap_or_default().trim();
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1000), parse_quality);
            let (Some(q), Some(lang)) = (quality, Lang::from_tag(tag)) else {
                continue;
            };
            if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }
}

/// A quality value (`0`, `0.5`, `1.000`) in thousandths.
fn parse_quality(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u16 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let frac: u16 = format!("{frac:0<3}").parse().ok()?;
    (int + frac <= 1000).then_some(int + frac)
}

/// Replace each `{name}` in `template` with its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The parts of `template` before and after `{name}`, for markup in the middle of a sentence.
pub fn around<'a>(template: &'a str, name: &str) -> (&'a str, &'a str) {
    let marker = format!("{{{name}}}");
    template
        .split_once(marker.as_str())
        .unwrap_or((template, ""))
}

/// Every text of the page in one language. `{name}` marks a value filled in at rendering.
#[derive(Debug)]
pub struct Texts {
    /// BCP 47 tag.
    pub lang: &'static str,
    /// Product name in the header.
    pub brand: &'static str,
    /// `{title} · Hallmark`.
    pub page_title: &'static str,
    /// Header: `{user}`.
    pub signed_in_as: &'static str,
    /// Header button.
    pub sign_out: &'static str,
    /// Link to the page's start.
    pub back_to_start: &'static str,

    /// Sign-in page title.
    pub sign_in_title: &'static str,
    /// Sign-in page heading.
    pub sign_in_heading: &'static str,
    /// Sign-in page intro.
    pub sign_in_intro: &'static str,
    /// Field label.
    pub username_label: &'static str,
    /// Field label.
    pub password_label: &'static str,
    /// Button.
    pub sign_in_button: &'static str,
    /// After a failed sign-in.
    pub wrong_password: &'static str,
    /// A signed-out visitor posted a code.
    pub please_sign_in: &'static str,
    /// No password-check slot was free.
    pub busy: &'static str,

    /// Code page title and heading.
    pub code_heading: &'static str,
    /// Code page intro.
    pub code_intro: &'static str,
    /// Code page intro when the code came in the link.
    pub code_intro_prefilled: &'static str,
    /// Field label.
    pub code_label: &'static str,
    /// Button.
    pub continue_button: &'static str,
    /// The code matches no request.
    pub code_unknown: &'static str,
    /// The code's request expired.
    pub code_expired: &'static str,
    /// `{n}` tries left before the pause (one).
    pub tries_left_one: &'static str,
    /// `{n}` tries left before the pause (more).
    pub tries_left_other: &'static str,

    /// Lockout page title and heading (codes).
    pub code_paused_heading: &'static str,
    /// Why: this session's wrong codes.
    pub code_paused_session: &'static str,
    /// Why: this account's wrong codes.
    pub code_paused_account: &'static str,
    /// Why: wrong codes from the network.
    pub code_paused_source: &'static str,
    /// Why: wrong codes on the whole server.
    pub code_paused_global: &'static str,
    /// For how long: `{duration}`.
    pub code_paused_for: &'static str,
    /// What to do: `{lifetime}` of a code.
    pub code_paused_restart: &'static str,
    /// The code typed in was not looked at.
    pub code_not_checked: &'static str,
    /// Lockout page title and heading (sign-in).
    pub sign_in_paused_heading: &'static str,
    /// Why: this browser's failed sign-ins.
    pub sign_in_paused_session: &'static str,
    /// Why: failed sign-ins from the network.
    pub sign_in_paused_source: &'static str,
    /// For how long: `{duration}`.
    pub sign_in_paused_for: &'static str,
    /// Link to look again after the pause.
    pub try_again: &'static str,
    /// `{n}` minutes (one).
    pub minutes_one: &'static str,
    /// `{n}` minutes (more).
    pub minutes_other: &'static str,

    /// Consent page title.
    pub consent_title: &'static str,
    /// Consent page heading.
    pub consent_heading: &'static str,
    /// Compare the code with the device's screen.
    pub compare_code: &'static str,
    /// Who the device will act for: `{user}`.
    pub acts_for: &'static str,
    /// Row label.
    pub row_device: &'static str,
    /// Row label.
    pub row_serial: &'static str,
    /// Row label.
    pub row_access: &'static str,
    /// No scopes asked for.
    pub no_scopes: &'static str,
    /// A device without a registered name.
    pub unnamed_device: &'static str,
    /// Small print: `{client_id}`.
    pub client_id_line: &'static str,
    /// When the request expires: `{duration}`, `{time}` (UTC).
    pub expires: &'static str,
    /// Phishing warning heading.
    pub phishing_heading: &'static str,
    /// Phishing warning text.
    pub phishing_text: &'static str,
    /// Button.
    pub approve: &'static str,
    /// Button.
    pub deny: &'static str,

    /// Outcome page: approved (title and heading).
    pub approved_heading: &'static str,
    /// `{device}` is connected.
    pub approved_text: &'static str,
    /// Outcome page: denied.
    pub denied_heading: &'static str,
    /// `{device}` got no access.
    pub denied_text: &'static str,
    /// Someone else decided first: heading.
    pub already_decided_heading: &'static str,
    /// Another session of the same account approved it.
    pub already_approved_by_you: &'static str,
    /// Another session of the same account denied it.
    pub already_denied_by_you: &'static str,
    /// Another account approved it.
    pub already_approved_by_other: &'static str,
    /// Another account denied it.
    pub already_denied_by_other: &'static str,
    /// Link after an outcome.
    pub connect_another: &'static str,
    /// `{device}` stand-in when it has no name.
    pub the_device: &'static str,

    /// Refusal page title.
    pub cannot_continue: &'static str,
    /// Stale or forged form.
    pub form_expired: &'static str,
    /// Neither approve nor deny.
    pub choose_decision: &'static str,
    /// Internal error title.
    pub something_wrong: &'static str,
    /// Internal error text.
    pub try_later: &'static str,
}

impl Texts {
    /// "`n` minutes" in this language.
    pub fn minutes(&self, n: u64) -> String {
        let t = if n == 1 {
            self.minutes_one
        } else {
            self.minutes_other
        };
        fill(t, &[("n", &n.to_string())])
    }

    /// How many tries are left, in this language.
    pub fn tries_left(&self, n: u32) -> String {
        let t = if n == 1 {
            self.tries_left_one
        } else {
            self.tries_left_other
        };
        fill(t, &[("n", &n.to_string())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn pick(value: &str) -> Lang {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_str(value).unwrap(),
        );
        Lang::negotiate(&h)
    }

    #[test]
    fn accept_language_picks_the_best_we_speak() {
        assert_eq!(Lang::negotiate(&HeaderMap::new()), Lang::En);
        assert_eq!(pick("de-DE,de;q=0.9,en;q=0.8"), Lang::De);
        assert_eq!(pick("fr-CH, fr;q=0.9, de;q=0.7, en;q=0.8"), Lang::En);
        assert_eq!(pick("fr-CH, fr;q=0.9, de;q=0.8, en;q=0.7"), Lang::De);
        assert_eq!(pick("DE-at"), Lang::De);
        assert_eq!(pick("de;q=0, en;q=0.1"), Lang::En);
        assert_eq!(pick("de;q=0"), Lang::En);
        assert_eq!(pick("*"), Lang::En);
        assert_eq!(pick("de;q=2, en;q=0.5"), Lang::En, "bad quality ignored");
        assert_eq!(pick("xx, de;q=0.001"), Lang::De);
    }

    #[test]
    fn every_table_fills_the_same_placeholders() {
        let en = format!("{:?}", en::TEXTS);
        let de = format!("{:?}", de::TEXTS);
        let holes = |t: &str| {
            let mut v: Vec<String> = t
                .match_indices('{')
                .filter_map(|(i, _)| {
                    let rest = &t[i + 1..];
                    let end = rest.find('}')?;
                    let name = &rest[..end];
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_')
                        .then(|| name.to_owned())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(holes(&en), holes(&de));
        assert!(!en.contains("\"\""), "an empty English text");
        assert!(!de.contains("\"\""), "an empty German text");
    }

    #[test]
    fn fill_and_around() {
        assert_eq!(fill("a {x} b {y}", &[("x", "1"), ("y", "2")]), "a 1 b 2");
        assert_eq!(around("act as {user}.", "user"), ("act as ", "."));
        assert_eq!(Lang::De.texts().minutes(1), "1 Minute");
        assert_eq!(Lang::En.texts().minutes(3), "3 minutes");
    }
}
