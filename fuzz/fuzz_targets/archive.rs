#![no_main]
//! Fuzz target: `synback::fuzzing::archive` (see fuzz/README.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = synback::fuzzing::archive(data) {
        panic!("archive: {broken}");
    }
});
