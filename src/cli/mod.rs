//! Command-line front end: clap commands, human output, exit codes.
//!
//! This is the only place in synback that prints.

#[cfg(feature = "emulator")]
mod nas_emulator;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// synback: verified, compressed snapshot backups to a Synology NAS.
#[derive(Debug, Parser)]
#[command(name = "synback", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fake Synology NAS (DSM API emulator) for tests and demos.
    #[cfg(feature = "emulator")]
    NasEmulator(nas_emulator::NasEmulatorArgs),
}

/// Exit codes, distinct so that scripts and monitors can react.
#[allow(dead_code)]
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// The run failed.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration.
    pub const USAGE: u8 = 2;
    /// Partial: some files could not be read.
    pub const PARTIAL: u8 = 3;
    /// Verification failed.
    pub const VERIFY: u8 = 4;
    /// The NAS could not be reached.
    pub const UNREACHABLE: u8 = 5;
    /// The NAS refused the credentials.
    pub const AUTH: u8 = 6;
    /// The job is locked by another writer.
    pub const LOCKED: u8 = 7;
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        #[cfg(feature = "emulator")]
        Command::NasEmulator(args) => nas_emulator::run(args).await,
    }
}
