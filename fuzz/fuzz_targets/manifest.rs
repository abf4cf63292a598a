#![no_main]
//! Fuzz target: `synback::fuzzing::manifest` (see fuzz/README.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = synback::fuzzing::manifest(data) {
        panic!("manifest: {broken}");
    }
});
