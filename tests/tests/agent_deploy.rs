//! The agent's deployment files: the systemd unit (`agent/deploy/hallmark-agent.service`)
//! passes `systemd-analyze verify` without a single warning, its `ExecStart` resolving to a
//! real `hallmark-agent` in a scratch root; the sysusers file creates the user; and the unit
//! keeps the promises the README makes (user in group tss, the TPM as the only device, state
//! and socket directories, restart). Needs systemd's tools (scripts/install-deps installs the
//! `systemd` package); without them the test fails rather than skipping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/deploy")
        .join(name)
}

/// A scratch root holding the system's unit files (for the targets the unit names), the unit
/// under test in /etc/systemd/system and the agent binary at /usr/bin/hallmark-agent.
fn scratch_root(unit_text: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("the system's unit files (multi-user.target): install the systemd package");
    let copied = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&copied).unwrap();
    for entry in std::fs::read_dir(units).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copied.join(entry.file_name())).unwrap();
        }
    }
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hallmark-agent.service"), unit_text).unwrap();
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(
        hallmark_e2e::bin("hallmark-agent"),
        bin.join("hallmark-agent"),
    )
    .unwrap();
    root
}

/// `systemd-analyze verify` of the unit in `root`: (success, everything it printed).
fn verify(root: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system/hallmark-agent.service"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze: install the systemd package (scripts/install-deps does)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed.trim().to_owned())
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    let unit = std::fs::read_to_string(deploy("hallmark-agent.service")).unwrap();
    let root = scratch_root(&unit);
    let (ok, printed) = verify(root.path());
    assert!(
        ok && printed.is_empty(),
        "systemd-analyze verify: {printed}"
    );

    // The check is live: an unknown key is reported (verify still exits 0 for it, hence the
    // test on its output), and so is a missing binary.
    let root = scratch_root(&unit.replace("UMask=0077", "UMask=0077\nNoSuchKey=1"));
    let (_, printed) = verify(root.path());
    assert!(printed.contains("NoSuchKey"), "{printed}");
    std::fs::remove_file(root.path().join("usr/bin/hallmark-agent")).unwrap();
    let (ok, printed) = verify(root.path());
    assert!(
        !ok && printed.contains("/usr/bin/hallmark-agent"),
        "{printed}"
    );
}

#[test]
fn the_unit_says_what_the_readme_says() {
    let unit = std::fs::read_to_string(deploy("hallmark-agent.service")).unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "ExecStart=/usr/bin/hallmark-agent --config /etc/hallmark/agent.toml run",
        "User=hallmark-agent",
        "SupplementaryGroups=tss",
        "StateDirectory=hallmark-agent",
        "RuntimeDirectory=hallmark-agent",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/tpmrm0 rw",
        "Restart=on-failure",
        "StartLimitIntervalSec=0",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want:?}");
    }
}

#[test]
fn the_sysusers_file_makes_the_user_and_puts_it_in_group_tss() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\ntss:x:101:\n").unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("hallmark-agent.sysusers"))
        .output()
        .expect("run systemd-sysusers: install the systemd package (scripts/install-deps does)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("hallmark-agent:"))
        .unwrap_or_else(|| panic!("no hallmark-agent in {passwd}"));
    assert!(user.contains(":/var/lib/hallmark-agent:"), "{user}");
    let group = std::fs::read_to_string(etc.join("group")).unwrap();
    let tss = group.lines().find(|l| l.starts_with("tss:")).unwrap();
    assert!(tss.ends_with(":hallmark-agent"), "{group}");
}
