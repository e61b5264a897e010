//! Fixtures for the end-to-end suite: the real binaries (built on first use), a server process
//! on a free loopback port over TLS with its own data directory, and an HTTPS client that trusts
//! only that server's CA. Every fixture cleans up on drop, so tests run in parallel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations
)]

pub mod checks;
pub mod device;
pub mod disk;
pub mod pg;
#[path = "../../server/tests/common/mod.rs"]
pub mod server;
pub mod stand_in;
pub mod station;
pub mod verification;

use std::path::PathBuf;

/// Path of one of the workspace's binaries, built once per test process (see
/// [`server::workspace_bin`]).
pub fn bin(name: &str) -> PathBuf {
    server::workspace_bin(name)
}
