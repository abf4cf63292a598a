//! The `synback` command-line program.
//!
//! Thin by design: parse arguments, set up logging, call the library, print
//! the outcome and map it to an exit code. No backup logic lives here.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
