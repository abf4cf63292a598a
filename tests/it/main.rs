//! Integration tests, one binary, one module per topic.

mod archive;
mod backup;
mod cli;
mod config;
mod dsm;
mod emulator;
mod repo;
mod restore;
mod schedule;
mod support;
