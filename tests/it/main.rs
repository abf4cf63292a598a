//! Integration tests, one binary, one module per topic.

// Test helpers outside `#[test]` functions unwrap freely: a failure there is
// a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod archive;
mod backup;
mod cli;
mod config;
mod dsm;
mod emulator;
mod fuzz_corpus;
mod hostile;
mod local_safety;
mod repo;
mod restore;
mod schedule;
mod secrets;
mod support;
