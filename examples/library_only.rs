//! The smallest embedding: backup, verify and restore with nothing but the
//! library (it builds with `--no-default-features`), and no output at all.
//!
//! ```text
//! SYNBACK_URL=... SYNBACK_USER=... SYNBACK_PASSWORD=... \
//! library_only SOURCE_DIR STATE_DIR RESTORE_DIR [--log] [--path FOLDER]
//! ```
//!
//! Snapshots go to `/backup/FOLDER/quiet/` (default FOLDER: `embedded`).
//! The exit code is the result (synback's codes, see the README); only a
//! failure is reported, on stderr. With
//! `--log`, the program installs its own tracing subscriber, which writes
//! the library's log events to stderr: the library logs through `tracing`
//! and never prints by itself. A test runs both ways and checks that
//! without `--log` stdout and stderr stay empty. `examples/library-only/`
//! builds this file against synback with `default-features = false` (as
//! an example of the main package it gets the default features through
//! the dev-dependencies); that build is the "library-only" size in
//! docs/BENCHMARKS.md, and CI runs it too.

use std::process::ExitCode;

use synback::agent::{VerifyMode, exit};
use synback::restore::{RestoreOptions, Selector};
use synback::{Agent, CancellationToken, Config, ConfigEnv, Error};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, state, restore_to] = match args.get(..3) {
        Some([a, b, c]) => [a.clone(), b.clone(), c.clone()],
        _ => return ExitCode::from(exit::USAGE),
    };
    if args.iter().any(|a| a == "--log") {
        // Ignoring the error: another subscriber is only possible if this
        // program set one already.
        let _ = tracing::subscriber::set_global_default(log::StderrLog);
    }
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::from(exit::FAILED);
    };
    let folder = args
        .iter()
        .position(|a| a == "--path")
        .and_then(|i| args.get(i + 1))
        .map_or("embedded", String::as_str);
    match runtime.block_on(run(&source, &state, &restore_to, folder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("library_only: {}", synback::error_chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(source: &str, state: &str, restore_to: &str, folder: &str) -> Result<(), Error> {
    let text = format!(
        "[nas]\nurl = {url}\nuser = {user}\npassword_env = \"SYNBACK_PASSWORD\"\n\
         [state]\ndir = {state}\n\
         [[job]]\nname = \"quiet\"\nsources = [{source}]\nshare = \"backup\"\npath = {folder}\n",
        url = quoted(&std::env::var("SYNBACK_URL").unwrap_or_default()),
        user = quoted(&std::env::var("SYNBACK_USER").unwrap_or_default()),
        state = quoted(state),
        source = quoted(source),
        folder = quoted(folder),
    );
    let env = ConfigEnv::from_vars(std::env::vars().filter(|(k, _)| k == "SYNBACK_PASSWORD"));
    let agent = Agent::new(Config::from_toml_str(&text, "embedded.toml", &env)?);
    let cancel = CancellationToken::new();
    let report = agent.backup("quiet", cancel.clone()).await?;
    let selector = Selector::Id(report.snapshot);
    agent
        .verify("quiet", &selector, VerifyMode::Deep, cancel.clone())
        .await?;
    let mut opts = RestoreOptions::default();
    opts.target_dir = restore_to.into();
    agent
        .restore("quiet", &selector, opts, None, cancel)
        .await?;
    Ok(())
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A tracing subscriber in a few lines, so that this example needs no
/// crate beyond the library's own dependencies: every event at DEBUG or
/// above, as `LEVEL target: message field=value...` on stderr.
mod log {
    use std::fmt::Write as _;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    pub struct StderrLog;

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = match field.name() {
                "message" => write!(self.0, " {value:?}"),
                name => write!(self.0, " {name}={value:?}"),
            };
        }
    }

    impl Subscriber for StderrLog {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= Level::DEBUG
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let meta = event.metadata();
            let mut line = Line(format!("{} {}:", meta.level(), meta.target()));
            event.record(&mut line);
            eprintln!("{}", line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
