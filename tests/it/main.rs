//! Integration tests, one binary, one module per topic.

mod dsm;
mod emulator;
mod repo;
