#![no_main]
//! Fuzz target: `synback::fuzzing::config` (see fuzz/README.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = synback::fuzzing::config(data) {
        panic!("config: {broken}");
    }
});
