//! Unix signals for the daemon: SIGTERM and SIGINT stop it, SIGHUP reloads
//! the configuration. The binary calls [`forward_signals`] next to
//! [`run`](super::run); library users that manage signals themselves use
//! [`DaemonHandle`] directly.

use std::fmt::Display;
use std::task::Poll;

use futures_util::{Stream, StreamExt as _};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{DaemonHandle, Error, Reload};

/// A signal the daemon reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonSignal {
    /// SIGTERM: stop.
    Terminate,
    /// SIGINT: stop.
    Interrupt,
    /// SIGHUP: reload the configuration.
    Hangup,
}

/// Forwards signals to the daemon until it is asked to stop.
///
/// SIGTERM or SIGINT calls [`DaemonHandle::shutdown`] and returns. SIGHUP
/// calls `load` for a new configuration: `Ok` is sent to the daemon, `Err`
/// is logged and the old configuration keeps running. Also returns when the
/// daemon's shutdown token is cancelled some other way. See [`forward`].
///
/// # Errors
/// [`Error::Signal`] when a handler cannot be installed.
///
/// # Cancel safety
/// Cancel safe; the handlers stay installed for the life of the process
/// (tokio's signal handling never uninstalls them).
pub async fn forward_signals<F, E>(handle: DaemonHandle, load: F) -> Result<(), Error>
where
    F: FnMut() -> Result<Reload, E>,
    E: Display,
{
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
    let signals = futures_util::stream::poll_fn(move |cx| {
        let ready = |poll: Poll<Option<()>>| matches!(poll, Poll::Ready(Some(())));
        if ready(term.poll_recv(cx)) {
            return Poll::Ready(Some(DaemonSignal::Terminate));
        }
        if ready(int.poll_recv(cx)) {
            return Poll::Ready(Some(DaemonSignal::Interrupt));
        }
        if ready(hup.poll_recv(cx)) {
            return Poll::Ready(Some(DaemonSignal::Hangup));
        }
        Poll::Pending
    });
    forward(handle, signals, load).await;
    Ok(())
}

/// What [`forward_signals`] does with each signal, for signals from any
/// source (tests feed a channel). Returns after a stop signal (having
/// called [`DaemonHandle::shutdown`]), when the daemon's shutdown token is
/// cancelled some other way, or when `signals` ends.
///
/// # Cancel safety
/// Cancel safe.
pub async fn forward<S, F, E>(handle: DaemonHandle, mut signals: S, mut load: F)
where
    S: Stream<Item = DaemonSignal> + Unpin,
    F: FnMut() -> Result<Reload, E>,
    E: Display,
{
    let stopped = handle.shutdown_token();
    loop {
        let signal = tokio::select! {
            () = stopped.cancelled() => return,
            signal = signals.next() => signal,
        };
        match signal {
            None => return,
            Some(DaemonSignal::Hangup) => reload(&handle, &mut load).await,
            Some(DaemonSignal::Terminate) => {
                tracing::info!(signal = "SIGTERM", "stopping");
                break;
            }
            Some(DaemonSignal::Interrupt) => {
                tracing::info!(signal = "SIGINT", "stopping");
                break;
            }
        }
    }
    handle.shutdown();
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
