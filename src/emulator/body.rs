//! The request body as the emulator reads it: counted, throttled (slow
//! link), cut after N bytes (dropped connection) or refused when too large
//! (413/504), all without holding more than one chunk in memory.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::{Body, BodyDataStream, Bytes};
use futures_util::{Stream, StreamExt, stream};

use super::{FaultHandle, conn::KillSwitch, lock};

/// Why the body stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trip {
    /// The drop-connection fault fired: the connection is cut.
    Dropped,
    /// The body grew past the request size limit.
    Oversize,
}

/// What the handler can learn about the body while and after reading it.
#[derive(Debug, Default)]
pub(crate) struct BodyStats {
    bytes: AtomicU64,
    trip: Mutex<Option<Trip>>,
}

impl BodyStats {
    /// Bytes delivered so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Why the body stopped early, if it did.
    pub fn trip(&self) -> Option<Trip> {
        *lock(&self.trip)
    }

    fn set_trip(&self, trip: Trip) {
        *lock(&self.trip) = Some(trip);
    }
}

/// Limits applied to one request body.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Refuse the body past this many bytes.
    pub max_bytes: Option<u64>,
    /// Cut the connection past this many bytes.
    pub drop_after: Option<u64>,
    /// Deliver at most this many KiB per second.
    pub kib_per_sec: Option<u32>,
    /// The connection to cut.
    pub kill: KillSwitch,
    /// Counts upload bytes and holds the body at the hold point.
    pub hold: Option<FaultHandle>,
}

struct Guard {
    inner: BodyDataStream,
    limits: Limits,
    stats: Arc<BodyStats>,
    pacer: Pacer,
    fail_next: bool,
    hold_next: bool,
}

/// Wraps `body` with `limits`; `stats` tells the handler what happened.
pub(crate) fn guard(body: Body, limits: Limits, stats: Arc<BodyStats>) -> Body {
    let pacer = Pacer::new(limits.kib_per_sec);
    let guard = Guard {
        inner: body.into_data_stream(),
        limits,
        stats,
        pacer,
        fail_next: false,
        hold_next: false,
    };
    Body::from_stream(stream::unfold(guard, |mut g| async move {
        let item = g.next().await?;
        Some((item, g))
    }))
}

impl Guard {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.fail_next {
            return None;
        }
        if self.hold_next {
            if let Some(handle) = &self.limits.hold {
                handle.hold().await;
            }
            self.fail_next = true;
            return Some(Err(io::Error::other("held upload released")));
        }
        let mut bytes = match self.inner.next().await? {
            Ok(bytes) => bytes,
            Err(err) => {
                self.fail_next = true;
                return Some(Err(io::Error::other(err)));
            }
        };
        let before = self.stats.bytes();
        let after = before + bytes.len() as u64;
        if self.limits.max_bytes.is_some_and(|max| after > max) {
            self.stats.set_trip(Trip::Oversize);
            self.fail_next = true;
            return Some(Err(io::Error::other("request body too large")));
        }
        if self.limits.drop_after.is_some_and(|limit| after > limit) {
            // Cut at the first chunk that crosses the limit: its bytes are
            // never delivered, so at most `limit` bytes reach the handler.
            self.stats.set_trip(Trip::Dropped);
            self.limits.kill.kill();
            self.fail_next = true;
            return Some(Err(io::Error::other("connection dropped by a fault")));
        }
        if let Some(handle) = &self.limits.hold {
            let len = bytes.len() as u64;
            let pass = handle.pass(true, len);
            if pass < len {
                // Deliver up to the hold point, then stall.
                self.hold_next = true;
                bytes.truncate(usize::try_from(pass).unwrap_or(0));
            }
        }
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        self.pacer.pace(bytes.len() as u64).await;
        Some(Ok(bytes))
    }
}

/// Keeps a byte stream at or under a rate (the slow-link fault).
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_sec: Option<f64>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `kib_per_sec` (`None`: no limit).
    pub fn new(kib_per_sec: Option<u32>) -> Self {
        Self {
            bytes_per_sec: kib_per_sec
                .filter(|k| *k > 0)
                .map(|k| f64::from(k) * 1024.0),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Accounts for `n` more bytes, sleeping if they came too fast.
    pub async fn pace(&mut self, n: u64) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        self.sent += n;
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        let due = Duration::from_secs_f64(self.sent as f64 / rate);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Paces a download stream (the slow-link fault).
pub(crate) fn paced<S>(
    inner: S,
    kib_per_sec: Option<u32>,
) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    stream::unfold(
        (inner, Pacer::new(kib_per_sec)),
        |(mut inner, mut pacer)| async move {
            let item = inner.next().await?;
            if let Ok(bytes) = &item {
                pacer.pace(bytes.len() as u64).await;
            }
            Some((item, (inner, pacer)))
        },
    )
}
