//! The provisioner's manifest CSV (`hallmark_provision::batch::read_manifest`), read from a file
//! as in production. Properties: accepted manifests name each serial and each TCTI once, and
//! every `config_out` is made absolute against the manifest's (absolute) directory.
#![no_main]

use std::collections::HashSet;
use std::io::Write as _;

use hallmark_provision::batch::read_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let mut file = tempfile::Builder::new()
        .prefix("hallmark-fuzz-manifest")
        .tempfile_in(dir)
        .expect("temp file");
    file.write_all(data).expect("write manifest");
    let Ok(specs) = read_manifest(file.path()) else {
        return;
    };
    let (mut serials, mut tctis) = (HashSet::new(), HashSet::new());
    for spec in &specs {
        assert!(
            serials.insert(&spec.serial),
            "serial {:?} twice",
            spec.serial
        );
        assert!(tctis.insert(&spec.tcti), "tcti {:?} twice", spec.tcti);
        assert!(spec.config_out.is_absolute(), "{:?}", spec.config_out);
    }
});
