//! Injected faults: what can go wrong between a client and a real NAS.
//!
//! [`Faults`] is plain data (set from the command line or a test);
//! [`FaultHandle`] changes it while the emulator runs and keeps the counters
//! that "every Nth" faults need. Counters restart whenever faults change, so
//! a test that sets `http_502_every = Some(2)` knows the 2nd request fails.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::lock;

/// DSM's "system busy" code, the default for [`Faults::busy_code`].
pub const DEFAULT_BUSY_CODE: i32 = 117;

/// Faults to inject. `Default` injects none.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Faults {
    /// Drop the TCP connection (no answer) once an upload request body has
    /// delivered this many bytes.
    pub drop_upload_after: Option<u64>,
    /// How many uploads [`Faults::drop_upload_after`] hits before it stops
    /// (`None`: every one).
    pub drop_upload_times: Option<u32>,
    /// Answer every Nth HTTP request with HTTP 502 (a front-end proxy error).
    pub http_502_every: Option<u32>,
    /// Answer every Nth File Station call with [`Faults::busy_code`].
    pub busy_every: Option<u32>,
    /// The DSM code of a busy answer (117 unless changed; 109–111, 118 also
    /// mean "transient").
    pub busy_code: i32,
    /// Limit uploads and downloads to this many KiB per second.
    pub slow_kib_per_sec: Option<u32>,
    /// Corrupt the stored bytes of the next N uploads (one byte flipped
    /// after the upload answered success, so the NAS's MD5 differs).
    pub corrupt_uploads: u32,
    /// Refuse uploads that would bring the bytes stored under the root
    /// above this limit, with [`Faults::quota_code`].
    pub quota_bytes: Option<u64>,
    /// 416 (no space left, the default) or 415 (quota exceeded).
    pub quota_code: i32,
    /// Expire a session (106) once it has made this many authenticated calls.
    pub expire_session_after: Option<u32>,
    /// Delay the next request by this much, once (a NAS waking from disk
    /// hibernation). Consumed by the request it delays.
    pub wake_delay: Option<Duration>,
    /// Refuse any request whose body is larger than this many bytes with
    /// [`Faults::oversize_status`], as a front-end or reverse proxy does.
    pub max_request_bytes: Option<u64>,
    /// HTTP status for [`Faults::max_request_bytes`]: 413 (proxy, the
    /// default) or 504 (DSM's own front-end timing out).
    pub oversize_status: u16,
    /// Background tasks (MD5, delete, dir size) report `finished: false`
    /// for at least this long.
    pub task_min_duration: Option<Duration>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            drop_upload_after: None,
            drop_upload_times: None,
            http_502_every: None,
            busy_every: None,
            busy_code: DEFAULT_BUSY_CODE,
            slow_kib_per_sec: None,
            corrupt_uploads: 0,
            quota_bytes: None,
            quota_code: 416,
            expire_session_after: None,
            wake_delay: None,
            max_request_bytes: None,
            oversize_status: 413,
            task_min_duration: None,
        }
    }
}

/// Changes the faults of a running emulator. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    faults: Mutex<Faults>,
    requests: AtomicU64,
    calls: AtomicU64,
}

impl FaultHandle {
    /// A handle holding `faults`.
    pub fn new(faults: Faults) -> Self {
        let handle = Self::default();
        handle.set(faults);
        handle
    }

    /// The faults now in force.
    pub fn get(&self) -> Faults {
        lock(&self.inner.faults).clone()
    }

    /// Replaces every fault and restarts the counters.
    pub fn set(&self, faults: Faults) {
        *lock(&self.inner.faults) = faults;
        self.reset_counters();
    }

    /// Changes some faults and restarts the counters.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.inner.faults));
        self.reset_counters();
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    fn reset_counters(&self) {
        self.inner.requests.store(0, Ordering::SeqCst);
        self.inner.calls.store(0, Ordering::SeqCst);
    }

    /// Counts one HTTP request; true when it must get a 502.
    pub(crate) fn next_request_is_502(&self) -> bool {
        let n = self.inner.requests.fetch_add(1, Ordering::SeqCst) + 1;
        every(lock(&self.inner.faults).http_502_every, n)
    }

    /// Counts one File Station call; the busy code when it must fail.
    pub(crate) fn next_call_busy(&self) -> Option<i32> {
        let n = self.inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let faults = lock(&self.inner.faults);
        every(faults.busy_every, n).then_some(faults.busy_code)
    }

    /// Takes the one-shot wake-up delay.
    pub(crate) fn take_wake_delay(&self) -> Option<Duration> {
        lock(&self.inner.faults).wake_delay.take()
    }

    /// Takes one "drop this upload" ticket: the byte count to drop after.
    pub(crate) fn take_drop_upload(&self) -> Option<u64> {
        let mut faults = lock(&self.inner.faults);
        let after = faults.drop_upload_after?;
        match faults.drop_upload_times {
            None => Some(after),
            Some(0) => None,
            Some(n) => {
                faults.drop_upload_times = Some(n - 1);
                Some(after)
            }
        }
    }

    /// Takes one "corrupt this upload" ticket.
    pub(crate) fn take_corrupt_upload(&self) -> bool {
        let mut faults = lock(&self.inner.faults);
        if faults.corrupt_uploads == 0 {
            return false;
        }
        faults.corrupt_uploads -= 1;
        true
    }
}

fn every(n: Option<u32>, count: u64) -> bool {
    matches!(n, Some(n) if n > 0 && count % u64::from(n) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_fails_and_counters_restart_on_change() {
        let h = FaultHandle::default();
        h.update(|f| f.http_502_every = Some(2));
        let got: Vec<bool> = (0..4).map(|_| h.next_request_is_502()).collect();
        assert_eq!(got, [false, true, false, true]);
        h.next_request_is_502();
        h.update(|f| f.http_502_every = Some(2));
        assert!(!h.next_request_is_502());
    }

    #[test]
    fn tickets_run_out() {
        let h = FaultHandle::default();
        h.update(|f| {
            f.drop_upload_after = Some(10);
            f.drop_upload_times = Some(1);
            f.corrupt_uploads = 1;
            f.wake_delay = Some(Duration::from_millis(5));
        });
        assert_eq!(h.take_drop_upload(), Some(10));
        assert_eq!(h.take_drop_upload(), None);
        assert!(h.take_corrupt_upload());
        assert!(!h.take_corrupt_upload());
        assert!(h.take_wake_delay().is_some());
        assert!(h.take_wake_delay().is_none());
    }
}
