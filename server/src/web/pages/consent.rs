//! What the person approves or denies (RFC 8628 §5.4: show the code so they can compare it with
//! the device's screen, say which device asks for which access, and warn that a code someone
//! else sent is a phishing attempt, as §5.4 and §6.1 describe), and the outcome.

use maud::{html, Markup};

use super::layout;
use crate::oauth::device_flow::PendingRequest;
use crate::web::i18n::{around, fill, Texts};

/// One scope as the page shows it: in words when the operator described it, the identifier
/// beside them (small), or the identifier alone.
#[derive(Debug, Clone)]
pub struct ScopeLine {
    /// The operator's description in the page's language, if any.
    pub words: Option<String>,
    /// The scope identifier.
    pub id: String,
}

/// What the consent page shows.
#[derive(Debug)]
pub struct ConsentView<'a> {
    /// The signed-in user, the account the device will act for.
    pub user: &'a str,
    /// The session's CSRF token.
    pub csrf: &'a str,
    /// The request.
    pub request: &'a PendingRequest,
    /// Its scopes, described.
    pub scopes: &'a [ScopeLine],
    /// Now, Unix seconds.
    pub now: u64,
}

/// The consent page.
pub fn consent(t: &Texts, v: &ConsentView<'_>) -> Markup {
    let r = v.request;
    let left = r.expires_at.saturating_sub(v.now);
    let expires = fill(
        t.expires,
        &[
            ("duration", &t.minutes(left.div_ceil(60).max(1))),
            ("time", &utc_hh_mm(r.expires_at)),
        ],
    );
    let (acts_before, acts_after) = around(t.acts_for, "user");
    let code = r.user_code.display();
    html! {
        (layout(t, t.consent_title, Some((v.user, v.csrf)), html! {
            h1 { (t.consent_heading) }
            p { (t.compare_code) }
            div.codebox id="shown-code" { (code) }
            p.acts id="acts-for" { (acts_before) strong { (v.user) } (acts_after) }
            dl {
                dt { (t.row_device) }
                dd id="device-name" { (device_name(t, r)) }
                @if let Some(device) = &r.device {
                    dt { (t.row_serial) }
                    dd id="serial" { (device.serial) }
                }
                dt { (t.row_access) }
                dd {
                    @if v.scopes.is_empty() {
                        (t.no_scopes)
                    } @else {
                        ul.scopes id="scopes" {
                            @for s in v.scopes {
                                li {
                                    @if let Some(words) = &s.words {
                                        (words) " " code { (s.id) }
                                    } @else {
                                        (s.id)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.small id="expires" { (expires) }
            div.warning id="phishing-warning" role="note" {
                h2 { (t.phishing_heading) }
                p { (t.phishing_text) }
            }
            form method="post" action="/device/decision" {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="user_code" value=(code);
                // Approve first in the document: first in tab order, on top on a phone, on the
                // left on a desktop.
                div.choices {
                    button.approve type="submit" name="decision" value="approve" id="approve" { (t.approve) }
                    button.deny type="submit" name="decision" value="deny" id="deny" { (t.deny) }
                }
            }
            p.small { span.id id="client-id" { (fill(t.client_id_line, &[("client_id", &r.client_id)])) } }
        }))
    }
}

/// What the device is called: its model for a registered device (its client name is "model
/// serial", and the serial has its own row), else its registered name.
pub fn device_name(t: &Texts, r: &PendingRequest) -> String {
    match (&r.device, &r.client_name) {
        (Some(d), Some(name)) if *name != format!("{} {}", d.model, d.serial) => name.clone(),
        (Some(d), _) => d.model.clone(),
        (None, Some(name)) => name.clone(),
        (None, None) => t.unnamed_device.to_owned(),
    }
}

/// `HH:MM` of a Unix time, UTC (the page has no script to learn the person's time zone).
fn utc_hh_mm(unix: u64) -> String {
    format!("{:02}:{:02}", unix % 86_400 / 3_600, unix % 3_600 / 60)
}

/// How a decision came out, for the person looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// This session approved it.
    Approved,
    /// This session denied it.
    Denied,
    /// Another session of this account approved it.
    ApprovedByYouElsewhere,
    /// Another session of this account denied it.
    DeniedByYouElsewhere,
    /// Another account approved it.
    ApprovedByOther,
    /// Another account denied it.
    DeniedByOther,
}

/// What the outcome page shows.
#[derive(Debug)]
pub struct OutcomeView<'a> {
    /// The signed-in user.
    pub user: &'a str,
    /// The session's CSRF token.
    pub csrf: &'a str,
    /// The device's name.
    pub device: &'a str,
    /// What happened.
    pub outcome: Outcome,
}

/// The outcome of a decision.
pub fn outcome(t: &Texts, v: &OutcomeView<'_>) -> Markup {
    let (heading, text, class) = match v.outcome {
        Outcome::Approved => (t.approved_heading, t.approved_text, "notice success"),
        Outcome::Denied => (t.denied_heading, t.denied_text, "notice info"),
        Outcome::ApprovedByYouElsewhere => (
            t.already_decided_heading,
            t.already_approved_by_you,
            "notice success",
        ),
        Outcome::DeniedByYouElsewhere => (
            t.already_decided_heading,
            t.already_denied_by_you,
            "notice info",
        ),
        Outcome::ApprovedByOther => (
            t.already_decided_heading,
            t.already_approved_by_other,
            "notice info",
        ),
        Outcome::DeniedByOther => (
            t.already_decided_heading,
            t.already_denied_by_other,
            "notice info",
        ),
    };
    let text = fill(text, &[("device", v.device)]);
    layout(
        t,
        heading,
        Some((v.user, v.csrf)),
        html! {
            h1 { (heading) }
            p class=(class) id="result" role="status" { (text) }
            p { a href="/device" { (t.connect_another) } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::device_flow::UserCode;
    use crate::store::Device;
    use crate::web::i18n::Lang;

    fn request(device: Option<Device>, name: Option<&str>) -> PendingRequest {
        PendingRequest {
            user_code: UserCode::parse("BCDFGHJK").unwrap(),
            client_id: "c-123".into(),
            client_name: name.map(str::to_owned),
            device,
            scope: vec!["telemetry:write".into()],
            expires_at: 1_000_000 + 540,
        }
    }

    fn device() -> Device {
        Device {
            client_id: "c-123".into(),
            serial: "SN-0042".into(),
            model: "Thermostat T2".into(),
            ek_fingerprint: "ab".into(),
            registered_by: "station".into(),
            registered_at: 0,
            ek_public: None,
            ek_certificate: Default::default(),
            ek_issuer: None,
        }
    }

    #[test]
    fn a_registered_device_is_named_once() {
        let t = Lang::En.texts();
        let r = request(Some(device()), Some("Thermostat T2 SN-0042"));
        assert_eq!(device_name(t, &r), "Thermostat T2");
        let r = request(Some(device()), Some("Hallway"));
        assert_eq!(device_name(t, &r), "Hallway");
        assert_eq!(device_name(t, &request(None, None)), t.unnamed_device);
    }

    #[test]
    fn consent_says_who_it_acts_for_warns_and_describes_scopes() {
        let t = Lang::En.texts();
        let r = request(Some(device()), Some("Thermostat T2 SN-0042"));
        let scopes = [ScopeLine {
            words: Some("Send measurements".into()),
            id: "telemetry:write".into(),
        }];
        let page = consent(
            t,
            &ConsentView {
                user: "ann",
                csrf: "x",
                request: &r,
                scopes: &scopes,
                now: 1_000_000,
            },
        )
        .into_string();
        assert!(
            page.contains("this device will act as <strong>ann</strong>."),
            "{page}"
        );
        assert!(page.contains("Send measurements <code>telemetry:write</code>"));
        assert!(
            page.contains("expires in 9 minutes (at 13:55 UTC)"),
            "{page}"
        );
        assert!(page.contains(t.phishing_heading));
        // The warning comes before the buttons, Approve before Deny.
        let warn = page.find("phishing-warning").unwrap();
        let approve = page.find("id=\"approve\"").unwrap();
        assert!(warn < approve && approve < page.find("id=\"deny\"").unwrap());
        assert_eq!(page.matches("SN-0042").count(), 1, "the serial once");
    }
}
