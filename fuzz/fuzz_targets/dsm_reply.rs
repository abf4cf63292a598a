#![no_main]
//! Fuzz target: `synback::fuzzing::dsm_reply` (see fuzz/README.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = synback::fuzzing::dsm_reply(data) {
        panic!("dsm_reply: {broken}");
    }
});
