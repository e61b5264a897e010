//! The shipped systemd unit (`server/deploy/hallmark-server.service`) as systemd itself reads
//! it: `systemd-analyze verify` finds nothing to complain about (with `ExecStart` pointed at the
//! binary just built, since verify checks that it exists), it restarts on failure and never
//! gives up, and `systemd-analyze security --offline` rates its sandbox at most 2.0 ("OK").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../deploy/hallmark-server.service");

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/install-deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_unit_verifies_restarts_on_failure_and_is_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("hallmark-server.service");
    let text = UNIT.replace(
        "/usr/local/bin/hallmark-server",
        env!("CARGO_BIN_EXE_hallmark-server"),
    );
    std::fs::write(&unit, text).unwrap();

    let (ok, said) = analyze(&["verify"], &unit);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let setting = |name: &str| {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in the unit"))
            .to_owned()
    };
    assert_eq!(setting("Restart"), "on-failure");
    assert_eq!(setting("StartLimitIntervalSec"), "0");
    assert!(setting("ExecStart").ends_with("serve --data-dir /var/lib/hallmark"));

    let (ok, said) = analyze(&["security", "--offline=true"], &unit);
    assert!(ok, "{said}");
    let exposure: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for hallmark-server.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure}: {said}");
}
