//! The agent's rotation state file (`rotation.json`, read by `StateDir::read_json` into
//! `RotationState` at every start; it may be left by a crash or edited by hand). Properties: any
//! bytes are refused as corrupt or accepted, never a panic; an accepted state written back by
//! `write_json` (what the agent persists) reads back to the same state.
#![no_main]

use std::sync::OnceLock;

use hallmark_agent::store::StateDir;
use hallmark_agent::RotationState;
use libfuzzer_sys::fuzz_target;

fn state_dir() -> &'static (tempfile::TempDir, StateDir) {
    static DIR: OnceLock<(tempfile::TempDir, StateDir)> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let dir = tempfile::Builder::new()
            .prefix("hallmark-fuzz-state")
            .tempdir_in(base)
            .expect("temp dir");
        let state = StateDir::new(dir.path());
        (dir, state)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, state) = state_dir();
    state.write("rotation.json", data).expect("write state");
    let Ok(Some(read)) = state.read_json::<RotationState>("rotation.json") else {
        return;
    };
    state
        .write_json("rotation.json", &read)
        .expect("write state back");
    let again = state
        .read_json::<RotationState>("rotation.json")
        .expect("a written state reads")
        .expect("and is there");
    assert_eq!(again, read);
});
