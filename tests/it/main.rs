//! Integration tests, one binary, one module per topic.

// Test helpers outside `#[test]` functions unwrap freely: a failure there is
// a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod archive;
mod backup;
mod cli;
mod config;
mod crash;
mod daemon;
mod docs;
mod dsm;
mod embed;
mod emulator;
mod faults;
mod fuzz_corpus;
mod hostile;
mod local_safety;
mod repo;
mod restore;
mod schedule;
mod secrets;
mod support;
