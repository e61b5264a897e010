//! Layering and validation of `serve`'s settings.

use super::*;

fn layer(toml: &str) -> ConfigLayer {
    toml::from_str(toml).unwrap()
}

#[test]
fn later_layers_win() {
    let l =
        layer("issuer = \"https://a.example\"\nclock_skew = 10").under(layer("clock_skew = 20"));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert_eq!(s.oauth.clock_skew, 20);
    assert_eq!(s.oauth.token_endpoint, "https://a.example/oauth2/token");
    assert!(matches!(s.transport, Transport::Tls { .. }));
}

#[test]
fn max_delegation_depth_has_a_default_and_layers() {
    let base = layer("issuer = \"https://a.example\"");
    let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
    assert_eq!(s.oauth.max_delegation_depth, DEFAULT_MAX_DELEGATION_DEPTH);
    let l = base
        .under(layer("max_delegation_depth = 2"))
        .under(layer("max_delegation_depth = 5"));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert_eq!(s.oauth.max_delegation_depth, 5);
}

#[test]
fn insecure_http_only_on_loopback() {
    let ok =
        layer("issuer = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:1\"\ninsecure_http = true");
    assert!(ServeSettings::from_layer(Path::new("/d"), ok).is_ok());
    let bad = layer("issuer = \"https://a.example\"\nlisten = \"0.0.0.0:1\"\ninsecure_http = true");
    assert!(ServeSettings::from_layer(Path::new("/d"), bad).is_err());
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    assert!(toml::from_str::<ConfigLayer>("issuer = \"x\"\nsurprise = 1").is_err());
    for bad in [
        "clock_skew = 301",
        "access_token_ttl = 0",
        "max_body_bytes = 10",
        "listen = \"nowhere\"",
        "tls_cert = \"/c\"",
        "max_delegation_depth = 0",
        "max_delegation_depth = 17",
        "max_assertion_lifetime = 59",
        "header_read_timeout = 0",
        "idle_timeout = 3601",
        "max_connections = 0",
        "max_assertion_lifetime = 3601",
    ] {
        let l = layer(&format!("issuer = \"https://a.example\"\n{bad}"));
        assert!(
            ServeSettings::from_layer(Path::new("/d"), l).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn trusted_proxies_default_to_none_and_layers_replace_the_list() {
    let base = layer("issuer = \"https://a.example\"");
    let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
    assert!(s.trusted_proxies.is_empty());
    let l = base
        .clone()
        .under(layer("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]"));
    let s = ServeSettings::from_layer(Path::new("/d"), l.clone()).unwrap();
    assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    assert!(s.trusted_proxies.contains("::1".parse().unwrap()));
    assert!(!s.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
    // A higher layer replaces the list; it does not add to it.
    let l = l.under(layer("trusted_proxies = [\"192.0.2.1\"]"));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert!(s.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
    assert!(!s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    // A layer that does not mention it keeps the lower one's.
    let l = base
        .under(layer("trusted_proxies = [\"10.0.0.0/8\"]"))
        .under(layer("clock_skew = 5"));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
}

#[test]
fn device_scopes_default_layer_and_never_hold_an_admin_scope() {
    let base = layer("issuer = \"https://a.example\"");
    let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
    assert_eq!(s.oauth.device_scopes, vec!["device".to_owned()]);
    let l = base
        .clone()
        .under(layer("device_scopes = [\"device\", \"telemetry:write\"]"));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert_eq!(s.oauth.device_scopes, vec!["device", "telemetry:write"]);
    for admin in crate::oauth::registration::ADMIN_SCOPES {
        let l = base
            .clone()
            .under(layer(&format!("device_scopes = [\"device\", \"{admin}\"]")));
        let e = ServeSettings::from_layer(Path::new("/d"), l).unwrap_err();
        assert!(e.to_string().contains(admin), "{e}");
    }
    for bad in ["[]", "[\"a b\"]", "[\"\"]"] {
        let l = base.clone().under(layer(&format!("device_scopes = {bad}")));
        assert!(
            ServeSettings::from_layer(Path::new("/d"), l).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn scope_descriptions_merge_per_scope_and_are_checked() {
    let base = layer(
        "issuer = \"https://a.example\"\n[scope_descriptions]\n\"a:read\" = \"Read a\"\n\"b\" = { en = \"B\", de = \"B auf Deutsch\" }",
    );
    let top = layer("[scope_descriptions]\n\"a:read\" = \"Read all of a\"\n\"c\" = \"C\"");
    let s = ServeSettings::from_layer(Path::new("/d"), base.under(top)).unwrap();
    let d = &s.page.scope_descriptions;
    use crate::web::i18n::Lang;
    assert_eq!(d.describe("a:read", Lang::En), Some("Read all of a"));
    assert_eq!(d.describe("b", Lang::De), Some("B auf Deutsch"));
    assert_eq!(d.describe("c", Lang::De), Some("C"));
    assert_eq!(d.len(), 3);
    let bad = layer("issuer = \"https://a.example\"\n[scope_descriptions]\n\"a\" = { fr = \"x\" }");
    let e = ServeSettings::from_layer(Path::new("/d"), bad).unwrap_err();
    assert!(e.to_string().starts_with("scope_descriptions: a:"), "{e}");
    assert!(toml::from_str::<ConfigLayer>("scope_descriptions = 3").is_err());
}

#[test]
fn a_bad_trusted_proxy_is_named() {
    for (bad, named) in [
        ("[\"10.0.0.0/8\", \"proxy.example\"]", "proxy.example"),
        ("[\"10.0.0.0/40\"]", "10.0.0.0/40"),
        ("[\"0.0.0.0/0\"]", "0.0.0.0/0"),
    ] {
        let l = layer(&format!(
            "issuer = \"https://a.example\"\ntrusted_proxies = {bad}"
        ));
        let e = ServeSettings::from_layer(Path::new("/d"), l).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(named) && !msg.contains('\n'), "{msg}");
    }
    assert!(toml::from_str::<ConfigLayer>("trusted_proxies = \"10.0.0.0/8\"").is_err());
}

#[test]
fn device_flow_settings_have_defaults_and_ranges() {
    let s = ServeSettings::from_layer(Path::new("/d"), layer("issuer = \"https://a.example\""))
        .unwrap();
    assert_eq!(
        (s.oauth.device.expires_in, s.oauth.device.interval),
        (600, 5)
    );
    assert_eq!(s.oauth.device.verification_uri, "https://a.example/device");
    let l = layer(
        "issuer = \"https://a.example\"\ndevice_poll_interval = 1\ncode_failures_per_session = 2",
    );
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert_eq!(
        (
            s.oauth.device.interval,
            s.oauth.device.code_failures_per_session
        ),
        (1, 2)
    );
    for bad in [
        "device_poll_interval = 0",
        "device_code_expires_in = 5",
        "code_failures_per_source = 0",
        "code_failures_per_account = 0",
        "code_failures_global = 0",
        "lockout_window = 0",
    ] {
        let l = layer(&format!("issuer = \"https://a.example\"\n{bad}"));
        assert!(
            ServeSettings::from_layer(Path::new("/d"), l).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn with_a_database_a_new_key_is_published_long_enough_for_every_replica() {
    let base = "issuer = \"https://a.example\"\nkey_publish_ahead = 15";
    // One server alone may switch keys as soon as it likes.
    assert!(ServeSettings::from_layer(Path::new("/d"), layer(base)).is_ok());
    let shared = layer(&format!(
        "{base}\ndatabase_url = \"postgres://h/db?sslmode=disable\""
    ));
    let err = ServeSettings::from_layer(Path::new("/d"), shared)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 20 s"), "{err}");
}

#[test]
fn audit_export_and_retention_layer_and_take_durations_with_units() {
    let base = layer("issuer = \"https://a.example\"");
    let s = ServeSettings::from_layer(Path::new("/d"), base.clone()).unwrap();
    assert_eq!(s.audit_export, None);
    assert_eq!(s.audit_retention, None);
    let l = base.clone().under(layer(
        "audit_export_dir = \"/var/log/hallmark\"\naudit_retention = \"30d\"\naudit_export_max_age = 90",
    ));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    let e = s.audit_export.unwrap();
    assert_eq!(e.dir, Path::new("/var/log/hallmark"));
    assert_eq!(
        e.retention,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_eq!(e.max_age, std::time::Duration::from_secs(90));
    assert_eq!(e.max_bytes, crate::export::DEFAULT_MAX_BYTES);
    // Retention without an export directory is kept (to be warned about), never applied.
    let l = base.clone().under(layer("audit_retention = \"12h\""));
    let s = ServeSettings::from_layer(Path::new("/d"), l).unwrap();
    assert_eq!(s.audit_export, None);
    assert_eq!(
        s.audit_retention,
        Some(std::time::Duration::from_secs(43_200))
    );
    for bad in [
        "audit_retention = \"30 days\"",
        "audit_retention = \"0\"",
        "audit_export_max_bytes = 10",
        "audit_export_max_age = \"1w\"",
    ] {
        let l = base.clone().under(layer(bad));
        assert!(
            ServeSettings::from_layer(Path::new("/d"), l).is_err(),
            "{bad}"
        );
    }
    for (text, secs) in [("600", 600), ("90s", 90), ("15m", 900), ("2h", 7200)] {
        assert_eq!(
            DurationText::Text(text.into()).duration(),
            Ok(std::time::Duration::from_secs(secs))
        );
    }
}
