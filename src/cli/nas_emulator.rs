//! `synback nas-emulator`: runs the DSM emulator from the command line.

use std::process::ExitCode;

/// Options of `synback nas-emulator`.
#[derive(Debug, clap::Args)]
pub struct NasEmulatorArgs {}

/// Runs the emulator until interrupted.
pub async fn run(_args: NasEmulatorArgs) -> ExitCode {
    eprintln!("error: the emulator is not built yet");
    ExitCode::from(super::exit::FAILED)
}
