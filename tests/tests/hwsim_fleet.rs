//! `hallmark-hwsim fleet` from the command line with a relative directory, as an operator types
//! it: `down` stops the fleet whatever spelling of the directory it is given and from wherever
//! it runs, and says so; a `down` that finds a fleet none of whose TPMs runs is an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

fn hwsim(cwd: &Path, args: &[&str]) -> Output {
    hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-hwsim"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stops the fleet even when an assertion fails, so no swtpm outlives the test.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = hallmark_hwsim::fleet::down(&self.0);
    }
}

#[test]
fn fleet_down_with_a_relative_path_stops_the_fleet() {
    let work = tempfile::tempdir().unwrap();
    let _down = Down(work.path().join("fleet"));
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let up = hwsim(
        work.path(),
        &["fleet", "up", "--count", "2", "--dir", "fleet"],
    );
    assert!(up.status.success(), "{}", said(&up));
    // The manifest names absolute paths, so the provisioner finds the configs from anywhere.
    let manifest = std::fs::read_to_string(work.path().join("fleet/manifest.csv")).unwrap();
    assert!(
        manifest.contains(&format!(
            "{}/",
            work.path().canonicalize().unwrap().display()
        )),
        "{manifest}"
    );

    // From another directory, another spelling.
    let down = hwsim(&elsewhere, &["fleet", "down", "--dir", "../fleet"]);
    assert!(down.status.success(), "{}", said(&down));
    assert_eq!(
        String::from_utf8_lossy(&down.stdout).trim(),
        "stopped 2 TPMs"
    );
    let again = hwsim(work.path(), &["fleet", "down", "--dir", "fleet"]);
    assert!(again.status.success(), "{}", said(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "stopped 0 TPMs"
    );

    // A pid file whose TPM is gone (a reboot, a kill): the fleet is not up, and `down` says so.
    let pid_file = work.path().join("fleet/HM-SIM-0001/swtpm.pid");
    std::fs::write(&pid_file, "999999999\n").unwrap();
    let stale = hwsim(work.path(), &["fleet", "down", "--dir", "fleet"]);
    assert_eq!(stale.status.code(), Some(1), "{}", said(&stale));
    assert!(
        said(&stale).contains("none of its TPMs is running"),
        "{}",
        said(&stale)
    );
    assert!(!pid_file.exists(), "the stale pid file is removed");
}
