#![no_main]
//! Fuzz target: multipart upload bodies through the emulator's
//! `SYNO.FileStation.Upload` handler (see fuzz/README.md).

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use synback::fuzzing::UploadHarness;

static HARNESS: OnceLock<UploadHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| match UploadHarness::new() {
        Ok(harness) => harness,
        Err(err) => panic!("cannot start the emulator harness: {err}"),
    });
    if let Err(broken) = harness.run(data).map(drop) {
        panic!("emulator_upload: {broken}");
    }
});
