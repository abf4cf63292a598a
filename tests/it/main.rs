//! Integration tests, one binary, one module per topic.

mod emulator;
mod repo;
