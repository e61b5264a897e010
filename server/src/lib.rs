//! hallmark-server: the bundled OAuth 2.0 authorization server, as a library the binary and the
//! tests drive.
#![warn(missing_docs)]

pub mod accounts;
pub mod attest;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod conn;
pub mod datadir;
pub mod export;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod secret;
pub mod serve;
pub mod store;
pub mod tls;
pub mod untrusted;
pub mod web;

/// Seconds since the Unix epoch, the unit of every JWT time claim (RFC 7519 §2 NumericDate).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch: the audit log's clock.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
