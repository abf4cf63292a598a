//! Integration tests, one module per topic.

mod dsm;
mod emulator;
