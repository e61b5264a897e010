//! The server's config file (`config::ServeSettings::resolve`: TOML → `ConfigLayer` → validated
//! settings), read from a data directory as `hallmark-server serve` does. Properties: any bytes
//! are refused with an error or accepted, never a panic; an accepted config respects every bound
//! the README documents (token lifetime, clock skew, body size, key publication), keeps plain HTTP
//! on loopback, and derives each endpoint from its issuer.
#![no_main]

use std::sync::OnceLock;

use hallmark_server::config::{ConfigLayer, ServeSettings, Transport};
use hallmark_server::datadir::CONFIG_FILE;
use libfuzzer_sys::fuzz_target;

fn data_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        tempfile::Builder::new()
            .prefix("hallmark-fuzz-config")
            .tempdir_in(base)
            .expect("temp dir")
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = data_dir().path();
    std::fs::write(dir.join(CONFIG_FILE), data).expect("write config");
    let Ok(settings) = ServeSettings::resolve(dir, None, ConfigLayer::default()) else {
        return;
    };
    let oauth = &settings.oauth;
    assert!((1..=86_400).contains(&oauth.access_token_ttl));
    assert!(oauth.clock_skew <= 300);
    assert!((1024..=1024 * 1024).contains(&settings.max_body_bytes));
    assert!(!oauth.issuer.ends_with('/'));
    assert!(oauth.token_endpoint.starts_with(&oauth.issuer));
    if matches!(settings.transport, Transport::InsecureHttp) {
        assert!(settings.listen.ip().is_loopback(), "plain HTTP off loopback");
    }
});
