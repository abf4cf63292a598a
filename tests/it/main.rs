//! Integration tests, one binary, one module per topic.

mod archive;
//! Integration tests, one module per topic, built into one binary.
mod config;
mod dsm;
mod emulator;
mod repo;
//! Integration tests, one module per topic.
mod schedule;
