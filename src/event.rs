//! Progress events: what a run is doing, for progress bars, appliances and logs.
//!
//! The library never draws anything. Runs report through an [`EventSink`]
//! that the caller supplies; [`NoEvents`] ignores them and
//! [`ChannelEvents`] forwards them into a tokio channel, which is how an
//! appliance gets "a stream of events".

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One phase of a backup or restore run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Logging in, creating the job folder, taking the lock.
    Connecting,
    /// Reading sources and uploading volumes.
    Transferring,
    /// Checking a stored snapshot against its manifest (`verify`).
    Verifying,
    /// Writing the manifest that makes the snapshot visible.
    Committing,
    /// Applying the retention policy and removing stale partials.
    Rotating,
    /// Downloading and extracting a snapshot.
    Restoring,
    /// Finished (successfully or not).
    Done,
}

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A new phase began.
    Phase(Phase),
    /// Counters moved on. Sent at most a few times per second.
    Progress(Progress),
    /// A volume's bytes reached the NAS, which now computes their MD5 (a
    /// background task on the NAS: seconds per GiB on a small one, while
    /// no counter moves). [`Event::VolumeStored`] follows once it matched;
    /// [`Event::VolumeRetry`] if it did not and the volume is sent again
    /// (spool mode); otherwise the run fails. The manifest, which is no
    /// volume, is not announced.
    VolumeUploaded {
        /// Remote name of the volume.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A volume was uploaded, verified by the NAS's MD5 and renamed.
    VolumeStored {
        /// Remote name of the volume.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A volume failed and will be sent again.
    VolumeRetry {
        /// Remote name of the volume.
        name: String,
        /// Which attempt failed (1-based).
        attempt: u32,
        /// Why it failed.
        reason: String,
    },
    /// A file was skipped or changed while being read.
    Warning {
        /// The local path concerned.
        path: String,
        /// What happened.
        reason: String,
    },
}

/// Running totals of a transfer.
///
/// A backup counts `files` and `bytes` as it reads the sources and
/// `transferred` as the NAS receives them; its totals are estimates:
/// `total_bytes` from a metadata-only scan that runs ahead of the pack
/// (archives split into volumes), else what the job's previous snapshot
/// read, and `total_transferred` what the previous snapshot stored (none on
/// the first run). A restore counts `transferred` against `total_transferred`,
/// the size of the snapshot's volumes, as the extractor consumes them.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Files read (backup) so far.
    pub files: u64,
    /// Bytes of file content read (backup) so far.
    pub bytes: u64,
    /// Compressed bytes sent to (backup) or received and extracted
    /// (restore) so far.
    pub transferred: u64,
    /// Expected total of `bytes`, when known or estimated in advance.
    pub total_bytes: Option<u64>,
    /// Expected total of `transferred`, when known in advance.
    pub total_transferred: Option<u64>,
    /// The path being worked on.
    pub current: Option<String>,
    /// Time since the transfer began.
    pub elapsed: Duration,
    /// Estimated time left, from the rate so far and the expected total;
    /// `None` until there is a rate, without a total, or once the total
    /// was exceeded (the estimate was wrong).
    pub eta: Option<Duration>,
}

impl Progress {
    /// Counters of a backup, without totals or times (those are filled in
    /// by [`with_eta`]).
    pub fn counters(files: u64, bytes: u64, transferred: u64, current: Option<String>) -> Self {
        Self {
            files,
            bytes,
            transferred,
            current,
            ..Self::default()
        }
    }

    /// The share of the work done, from `transferred` of
    /// `total_transferred` (a backup's archiver runs ahead of its uploads,
    /// and the run ends with the last upload) or else `bytes` of
    /// `total_bytes`; `None` when unknown or when the count ran past the
    /// total.
    pub fn fraction(&self) -> Option<f64> {
        let (done, total) = match (self.total_transferred, self.total_bytes) {
            (Some(total), _) => (self.transferred, total),
            (None, Some(total)) => (self.bytes, total),
            (None, None) => return None,
        };
        match done <= total && total > 0 {
            true => Some(done as f64 / total as f64),
            false => None,
        }
    }

    /// The time left at the average rate so far, given `elapsed`.
    pub fn estimate_eta(&self, elapsed: Duration) -> Option<Duration> {
        let done = self.fraction()?;
        if done <= 0.0 || elapsed.is_zero() {
            return None;
        }
        Duration::try_from_secs_f64(elapsed.as_secs_f64() * (1.0 - done) / done).ok()
    }
}

/// Receives the events of a run. Must be cheap and must not block.
pub trait EventSink: Send + Sync {
    /// Called for every event, in order, from any thread.
    fn event(&self, event: Event);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _event: Event) {}
}

/// Forwards events into an unbounded tokio channel; a dropped receiver is fine.
#[derive(Debug, Clone)]
pub struct ChannelEvents(pub tokio::sync::mpsc::UnboundedSender<Event>);

impl EventSink for ChannelEvents {
    fn event(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

/// Shared handle to an event sink.
pub type Events = Arc<dyn EventSink>;

/// Wraps `inner` so that every [`Event::Progress`] carries `elapsed`
/// (since this call) and `eta`, with `total_bytes` and `total_transferred`
/// filled in from these estimates where the run did not know them. Costs
/// a clock read per progress event (a few per second), nothing else.
pub fn with_eta(inner: Events, total_bytes: Option<u64>, total_transferred: Option<u64>) -> Events {
    Arc::new(EtaEvents {
        inner,
        total_bytes,
        total_transferred,
        started: Instant::now(),
        state: Mutex::new(EtaState::default()),
    })
}

struct EtaEvents {
    inner: Events,
    total_bytes: Option<u64>,
    total_transferred: Option<u64>,
    started: Instant,
    state: Mutex<EtaState>,
}

/// The last progress sent and the volumes stored since.
#[derive(Default)]
struct EtaState {
    last: Option<Progress>,
    stored: u64,
}

impl EtaEvents {
    fn complete(&self, mut p: Progress) -> Progress {
        p.total_bytes = p.total_bytes.or(self.total_bytes);
        p.total_transferred = p.total_transferred.or(self.total_transferred);
        p.elapsed = self.started.elapsed();
        p.eta = p.estimate_eta(p.elapsed);
        p
    }
}

impl EventSink for EtaEvents {
    fn event(&self, event: Event) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Progress(p) => {
                let p = self.complete(p);
                state.last = Some(p.clone());
                self.inner.event(Event::Progress(p));
            }
            // The archiver stops reporting once it has read everything,
            // while the last volumes are still uploading: each stored
            // volume refreshes the counts and the ETA.
            Event::VolumeStored { name, size } => {
                state.stored += size;
                let stored = state.stored;
                self.inner.event(Event::VolumeStored { name, size });
                if let Some(last) = &state.last
                    && stored > last.transferred
                {
                    let mut p = last.clone();
                    p.transferred = stored;
                    let p = self.complete(p);
                    state.last = Some(p.clone());
                    self.inner.event(Event::Progress(p));
                }
            }
            other => self.inner.event(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_rate_so_far() {
        let mut p = Progress::counters(10, 250, 100, None);
        assert_eq!(p.estimate_eta(Duration::from_secs(10)), None, "no total");
        p.total_bytes = Some(1000);
        assert_eq!(p.fraction(), Some(0.25));
        assert_eq!(
            p.estimate_eta(Duration::from_secs(10)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(p.estimate_eta(Duration::ZERO), None);
        p.bytes = 1500;
        assert_eq!(
            p.estimate_eta(Duration::from_secs(10)),
            None,
            "past the estimate"
        );
        // What the NAS received counts before what was read.
        p.total_transferred = Some(400);
        assert_eq!(p.fraction(), Some(0.25));
        let restore = Progress {
            transferred: 600,
            total_transferred: Some(600),
            ..Progress::default()
        };
        assert_eq!(
            restore.estimate_eta(Duration::from_secs(3)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_wrapper_fills_in_total_elapsed_and_eta() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = with_eta(Arc::new(ChannelEvents(tx)), Some(1000), Some(800));
        events.event(Event::Phase(Phase::Transferring));
        std::thread::sleep(Duration::from_millis(20));
        events.event(Event::Progress(Progress::counters(1, 500, 400, None)));
        assert_eq!(rx.try_recv().unwrap(), Event::Phase(Phase::Transferring));
        let Event::Progress(p) = rx.try_recv().unwrap() else {
            panic!("not progress")
        };
        assert_eq!(
            (p.total_bytes, p.total_transferred),
            (Some(1000), Some(800))
        );
        assert!(p.elapsed >= Duration::from_millis(20));
        let eta = p.eta.unwrap();
        // Half done: as long again as it took so far.
        assert!(
            eta.abs_diff(p.elapsed) < Duration::from_millis(2),
            "{eta:?} {p:?}"
        );
        // Stored volumes move the count on after the archiver's last report.
        events.event(Event::VolumeStored {
            name: "v.001".into(),
            size: 300,
        });
        assert!(matches!(rx.try_recv().unwrap(), Event::VolumeStored { .. }));
        assert!(rx.try_recv().is_err(), "300 stored is behind 400 sent");
        events.event(Event::VolumeStored {
            name: "v.002".into(),
            size: 500,
        });
        assert!(matches!(rx.try_recv().unwrap(), Event::VolumeStored { .. }));
        let Event::Progress(p) = rx.try_recv().unwrap() else {
            panic!("no refreshed progress")
        };
        assert_eq!((p.files, p.bytes, p.transferred), (1, 500, 800));
        assert_eq!(p.eta, Some(Duration::ZERO));
    }
}
