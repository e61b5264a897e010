//! Scope descriptions (`scope_descriptions` in hallmark.toml): what a scope lets a device do,
//! in plain words, for the consent page. One text for every language, or one per language:
//!
//! ```toml
//! [scope_descriptions]
//! "telemetry:write" = "Send measurements to your account"
//! "config:read" = { en = "Read its settings", de = "Seine Einstellungen lesen" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::i18n::Lang;
use super::pages::ScopeLine;
use crate::oauth::scope::is_scope_token;

/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// A description as written in a config layer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawDescription {
    /// The same words in every language.
    Text(String),
    /// Words per language tag (`en`, `de`).
    ByLanguage(BTreeMap<String, String>),
}

/// Validated descriptions by scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeDescriptions(BTreeMap<String, Described>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Described {
    any: Option<String>,
    by_lang: BTreeMap<&'static str, String>,
}

impl ScopeDescriptions {
    /// Check every scope, language and text once, at start-up.
    pub fn parse(raw: &BTreeMap<String, RawDescription>) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (scope, description) in raw {
            if !is_scope_token(scope) {
                return Err(format!("{scope:?} is not a scope (RFC 6749 §3.3)"));
            }
            let text = |t: &str| -> Result<String, String> {
                let t = t.trim();
                let n = t.chars().count();
                if n == 0 || n > MAX_DESCRIPTION_CHARS || t.chars().any(char::is_control) {
                    return Err(format!(
                        "{scope}: a description is 1 to {MAX_DESCRIPTION_CHARS} characters without control characters"
                    ));
                }
                Ok(t.to_owned())
            };
            let described = match description {
                RawDescription::Text(t) => Described {
                    any: Some(text(t)?),
                    by_lang: BTreeMap::new(),
                },
                RawDescription::ByLanguage(map) => {
                    let mut by_lang = BTreeMap::new();
                    for (tag, t) in map {
                        let lang =
                            Lang::from_tag(tag)
                                .filter(|l| l.tag() == tag)
                                .ok_or_else(|| {
                                    let known: Vec<&str> =
                                        Lang::ALL.iter().map(|l| l.tag()).collect();
                                    format!(
                                        "{scope}: language {tag:?} is not one the page speaks ({})",
                                        known.join(", ")
                                    )
                                })?;
                        by_lang.insert(lang.tag(), text(t)?);
                    }
                    Described { any: None, by_lang }
                }
            };
            out.insert(scope.clone(), described);
        }
        Ok(ScopeDescriptions(out))
    }

    /// The words for `scope` in `lang`: that language's, else the one text for all, else the
    /// English.
    pub fn describe(&self, scope: &str, lang: Lang) -> Option<&str> {
        let d = self.0.get(scope)?;
        d.by_lang
            .get(lang.tag())
            .or(d.any.as_ref())
            .or_else(|| d.by_lang.get(Lang::En.tag()))
            .map(String::as_str)
    }

    /// The consent page's lines for `scopes`.
    pub fn lines(&self, scopes: &[String], lang: Lang) -> Vec<ScopeLine> {
        scopes
            .iter()
            .map(|s| ScopeLine {
                words: self.describe(s, lang).map(str::to_owned),
                id: s.clone(),
            })
            .collect()
    }

    /// How many scopes are described.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `SCOPE=TEXT` from a flag or an environment variable.
pub fn parse_flag(entry: &str) -> Result<(String, RawDescription), String> {
    let (scope, text) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not SCOPE=TEXT"))?;
    Ok((
        scope.trim().to_owned(),
        RawDescription::Text(text.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ScopeDescriptions, String> {
        let raw: BTreeMap<String, RawDescription> = toml::from_str(toml_text).unwrap();
        ScopeDescriptions::parse(&raw)
    }

    #[test]
    fn one_text_or_one_per_language() {
        let d = parse(
            r#"
            "telemetry:write" = "Send measurements"
            "config:read" = { en = "Read its settings", de = "Seine Einstellungen lesen" }
            "de:only" = { de = "Nur deutsch" }
            "#,
        )
        .unwrap();
        assert_eq!(
            d.describe("telemetry:write", Lang::De),
            Some("Send measurements")
        );
        assert_eq!(
            d.describe("config:read", Lang::De),
            Some("Seine Einstellungen lesen")
        );
        assert_eq!(
            d.describe("config:read", Lang::En),
            Some("Read its settings")
        );
        assert_eq!(d.describe("de:only", Lang::En), None);
        assert_eq!(d.describe("other", Lang::En), None);
        let lines = d.lines(&["telemetry:write".into(), "x".into()], Lang::En);
        assert_eq!(lines[0].words.as_deref(), Some("Send measurements"));
        assert_eq!(
            (lines[1].words.as_deref(), lines[1].id.as_str()),
            (None, "x")
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (bad, named) in [
            (r#""a b" = "x""#, "a b"),
            (r#""a" = """#, "a:"),
            (r#""a" = { fr = "x" }"#, "fr"),
            (r#""a" = { DE = "x" }"#, "DE"),
            (r#""a" = "line\nbreak""#, "control"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
        assert!(parse(&format!(r#""a" = "{}""#, "x".repeat(201))).is_err());
        assert_eq!(
            parse_flag("api:read=Read your data, all of it").unwrap(),
            (
                "api:read".into(),
                RawDescription::Text("Read your data, all of it".into())
            )
        );
        assert!(parse_flag("nothing").is_err());
    }
}
