//! Connections: the accept loop (plain or TLS) and a kill switch per
//! connection, so that a fault can cut a connection in the middle of a
//! request body, as a broken link does.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{either::Either, sync::CancellationToken};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Cuts one connection: every later read or write on it fails.
#[derive(Debug, Clone, Default)]
pub(crate) struct KillSwitch(Arc<KillInner>);

#[derive(Debug, Default)]
struct KillInner {
    killed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl KillSwitch {
    /// Cuts the connection and wakes whoever waits on it.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.read.wake();
        self.0.write.wake();
    }

    fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::SeqCst)
    }
}

/// What a handler knows about its connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnMeta {
    /// The client's address.
    pub peer: SocketAddr,
    /// Cuts this connection.
    pub kill: KillSwitch,
}

impl Connected<IncomingStream<'_, EmuListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, EmuListener>) -> Self {
        stream.remote_addr().clone()
    }
}

type Inner = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// One accepted connection (plain or TLS) with its kill switch.
pub(crate) struct Conn {
    io: Inner,
    kill: KillSwitch,
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection cut by a fault")
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.kill.0.read.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.kill.0.write.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.kill.0.write.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.is_killed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The listener axum serves from: connections arrive from the accept task,
/// already through their TLS handshake.
pub(crate) struct EmuListener {
    rx: mpsc::Receiver<(Conn, ConnMeta)>,
    local: SocketAddr,
}

impl axum::serve::Listener for EmuListener {
    type Io = Conn;
    type Addr = ConnMeta;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (shutdown): never hand out anything again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnMeta {
            peer: self.local,
            kill: KillSwitch::default(),
        })
    }
}

impl EmuListener {
    /// Starts accepting on `tcp` until `stop` is cancelled.
    pub fn spawn(
        tcp: TcpListener,
        local: SocketAddr,
        tls: Option<TlsAcceptor>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, tx, stop));
        Self { rx, local }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<(Conn, ConnMeta)>,
    stop: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = tcp.accept() => accepted,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "emulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let meta = ConnMeta {
            peer,
            kill: KillSwitch::default(),
        };
        match &tls {
            None => {
                let conn = Conn {
                    io: Either::Left(stream),
                    kill: meta.kill.clone(),
                };
                if tx.send((conn, meta)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                handshakes.spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls_stream)) => {
                            let conn = Conn {
                                io: Either::Right(Box::new(tls_stream)),
                                kill: meta.kill.clone(),
                            };
                            let _ = tx.send((conn, meta)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
