//! The agent's config file (`hallmark_agent::AgentConfig::load`), read from a file as in
//! production. Property: an accepted config serialises (`to_toml`, what the provisioner writes)
//! to a file that loads back to the same config.
#![no_main]

use std::io::Write as _;

use hallmark_agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let write = |bytes: &[u8]| {
        let mut file = tempfile::Builder::new()
            .prefix("hallmark-fuzz-agent")
            .suffix(".toml")
            .tempfile_in(dir)
            .expect("temp file");
        file.write_all(bytes).expect("write config");
        file
    };
    let file = write(data);
    let Ok(config) = AgentConfig::load(file.path()) else {
        return;
    };
    let again = write(config.to_toml().as_bytes());
    let reloaded = AgentConfig::load(again.path()).expect("a serialised config loads");
    assert_eq!(reloaded, config);
});
