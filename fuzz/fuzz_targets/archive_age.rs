#![no_main]
//! Fuzz target: `synback::fuzzing::archive_age` (see fuzz/README.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = synback::fuzzing::archive_age(data) {
        panic!("archive_age: {broken}");
    }
});
