//! Unix signals for the daemon: SIGTERM and SIGINT stop it, SIGHUP reloads
//! the configuration. The binary calls [`forward_signals`] next to
//! [`run`](super::run); library users that manage signals themselves use
//! [`DaemonHandle`] directly.

use std::fmt::Display;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{DaemonHandle, Error, Reload};

/// Forwards signals to the daemon until it is asked to stop.
///
/// SIGTERM or SIGINT calls [`DaemonHandle::shutdown`] and returns. SIGHUP
/// calls `load` for a new configuration: `Ok` is sent to the daemon, `Err`
/// is logged and the old configuration keeps running. Also returns when the
/// daemon's shutdown token is cancelled some other way.
///
/// # Errors
/// [`Error::Signal`] when a handler cannot be installed.
///
/// # Cancel safety
/// Cancel safe; the handlers stay installed for the life of the process
/// (tokio's signal handling never uninstalls them).
pub async fn forward_signals<F, E>(handle: DaemonHandle, mut load: F) -> Result<(), Error>
where
    F: FnMut() -> Result<Reload, E>,
    E: Display,
{
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
    let stopped = handle.shutdown_token();
    loop {
        tokio::select! {
            () = stopped.cancelled() => return Ok(()),
            _ = term.recv() => {
                tracing::info!(signal = "SIGTERM", "stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!(signal = "SIGINT", "stopping");
                break;
            }
            _ = hup.recv() => reload(&handle, &mut load).await,
        }
    }
    handle.shutdown();
    Ok(())
}

async fn reload<F, E>(handle: &DaemonHandle, load: &mut F)
where
    F: FnMut() -> Result<Reload, E>,
    E: Display,
{
    tracing::info!(signal = "SIGHUP", "reloading the configuration");
    match load() {
        Ok(new) => {
            if !handle.reload(new).await {
                tracing::warn!("daemon stopped before the reload");
            }
        }
        Err(error) => {
            tracing::error!(error = %error, "new configuration rejected; keeping the old one");
        }
    }
}

fn listen(kind: SignalKind, name: &'static str) -> Result<Signal, Error> {
    signal(kind).map_err(|source| Error::Signal {
        signal: name,
        source,
    })
}
