//! Progress events: what a run is doing, for progress bars, appliances and logs.
//!
//! The library never draws anything. Runs report through an [`EventSink`]
//! that the caller supplies; [`NoEvents`] ignores them and
//! [`ChannelEvents`] forwards them into a tokio channel, which is how an
//! appliance gets "a stream of events".

use std::sync::Arc;

/// One phase of a backup or restore run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Logging in, creating the job folder, taking the lock.
    Connecting,
    /// Reading sources and uploading volumes.
    Transferring,
    /// Waiting for the NAS's MD5 of an uploaded volume.
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Files read (backup) or written (restore) so far.
    pub files: u64,
    /// Bytes of file content read (backup) or written (restore) so far.
    pub bytes: u64,
    /// Compressed bytes sent to (backup) or received from (restore) the NAS.
    pub transferred: u64,
    /// Expected total of `bytes`, when known in advance.
    pub total_bytes: Option<u64>,
    /// The path being worked on.
    pub current: Option<String>,
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
