//! Fixtures for the end-to-end suite: the real binaries (built on first use), a server process
//! on a free loopback port over TLS with its own data directory, and an HTTPS client that trusts
//! only that server's CA. Every fixture cleans up on drop, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod device;
pub mod server;
pub mod station;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of one of the workspace's binaries (`hallmark-server`, `hallmark-agent`,
/// `hallmark-provision`, `hallmark-hwsim`) in the same target directory as this test, built once
/// per test process if it is missing or stale.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // `cargo test` builds only this package's dependencies' libraries, not the other
        // packages' binaries; build them all once (a no-op when fresh).
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    // target/debug/deps/<test> → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
