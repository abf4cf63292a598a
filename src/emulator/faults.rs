//! Injected faults: what can go wrong between a client and a real NAS.
//!
//! [`Faults`] is plain data (set from the command line or a test);
//! [`FaultHandle`] changes it while the emulator runs and keeps the counters
//! that "every Nth" faults need. Counters restart whenever faults change, so
//! a test that sets `http_502_every = Some(2)` knows the 2nd request fails.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// Faults aimed at particular calls (an API/method, a file name, the
    /// Nth such call): see [`AimedFault`].
    pub aimed: Vec<AimedFault>,
    /// Hold every upload once this many upload body bytes (all uploads
    /// since the faults were set, multipart framing included) have arrived:
    /// the client stalls mid-request, as on a hung link. Lets a test kill
    /// a client at an exact byte offset; see [`FaultHandle::is_holding`].
    pub hold_uploads_at: Option<u64>,
    /// Hold every download once this many download bytes were served.
    pub hold_downloads_at: Option<u64>,
}

/// What an [`AimedFault`] does to the call it hits.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Cut the connection without an answer (upload bodies are cut before
    /// they are stored).
    Drop,
    /// Answer with this HTTP status (a front-end proxy error such as 502).
    Http(u16),
    /// Answer with this DSM error code (117 busy, 416 disk full, 415 quota...).
    Code(i32),
    /// Lose every session first (as a NAS reboot or session timeout does);
    /// the call then gets DSM's own 119/106 answer.
    ExpireSessions,
    /// Delay the call by this much, then serve it (a NAS waking from disk
    /// hibernation).
    Delay(Duration),
    /// Uploads: store the file with one byte flipped, after answering
    /// success. Downloads: serve it with one byte flipped. MD5 task
    /// starts: the task reports a digest that is not the file's.
    Corrupt,
    /// Downloads: announce the whole file's length, send this many of its
    /// bytes, then cut the connection (a link that dies mid-transfer).
    /// Uploads: read this many bytes of the file part, then cut the
    /// connection without an answer; nothing is stored. Other calls are
    /// served normally.
    CutAfter(u64),
    /// Downloads: send the file followed by this many extra bytes, the
    /// longer length announced (a NAS whose file grew, or a hostile one).
    /// Other calls are served normally.
    Longer(u64),
    /// Downloads: send the file, then filler bytes for ever, with no
    /// length announced (chunked). Other calls are served normally.
    Endless,
    /// Hold the call before serving it until the faults change (see
    /// [`FaultHandle::is_holding`]), then serve it: lets a test kill a
    /// client at an exact step (the MD5 task, a rename, the lock's delete).
    Hold,
}

/// A fault aimed at particular calls: it hits the `nth` call (1-based)
/// that matches `api`, `method` and `name_contains`, and the `times - 1`
/// matching calls after it (`times: None`: every matching call from the
/// `nth` on). The counters restart whenever faults change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AimedFault {
    /// The API, e.g. `SYNO.FileStation.Upload` (`None`: any).
    pub api: Option<String>,
    /// The method, e.g. `start` (`None`: any).
    pub method: Option<String>,
    /// A substring of the file the call is about: the uploaded file's name,
    /// or the `path`, `file_path`, `name` or `dest_folder_path` parameter.
    pub name_contains: Option<String>,
    /// The first matching call hit (1-based; 0 counts as 1).
    pub nth: u32,
    /// How many matching calls are hit (`None`: all from `nth` on).
    pub times: Option<u32>,
    /// What happens to them.
    pub action: FaultAction,
}

impl AimedFault {
    /// Hits the first call of `api` (any method, any file) once.
    pub fn new(api: &str, action: FaultAction) -> Self {
        Self {
            api: Some(api.to_owned()),
            method: None,
            name_contains: None,
            nth: 1,
            times: Some(1),
            action,
        }
    }

    /// Only calls of `method`.
    #[must_use]
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// Only calls about a file whose name or path contains `part`.
    #[must_use]
    pub fn name_contains(mut self, part: &str) -> Self {
        self.name_contains = Some(part.to_owned());
        self
    }

    /// Starts at the `nth` matching call.
    #[must_use]
    pub fn nth(mut self, nth: u32) -> Self {
        self.nth = nth;
        self
    }

    /// Hits `times` matching calls (`None`: every one).
    #[must_use]
    pub fn times(mut self, times: Option<u32>) -> Self {
        self.times = times;
        self
    }

    fn matches(&self, call: &CallInfo<'_>) -> bool {
        let same = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        same(&self.api, call.api)
            && same(&self.method, call.method)
            && self
                .name_contains
                .as_deref()
                .is_none_or(|part| call.names.iter().any(|n| n.contains(part)))
    }

    fn hits(&self, count: u64) -> bool {
        let first = u64::from(self.nth.max(1));
        count >= first && self.times.is_none_or(|t| count < first + u64::from(t))
    }
}

/// What an aimed fault is matched against.
#[derive(Debug)]
pub(crate) struct CallInfo<'a> {
    pub api: Option<&'a str>,
    pub method: Option<&'a str>,
    pub names: Vec<String>,
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
            aimed: Vec::new(),
            hold_uploads_at: None,
            hold_downloads_at: None,
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
    aimed: Mutex<Vec<u64>>,
    aimed_hits: AtomicU64,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    holding: AtomicBool,
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
        lock(&self.inner.aimed).clear();
        self.inner.aimed_hits.store(0, Ordering::SeqCst);
        self.inner.uploaded.store(0, Ordering::SeqCst);
        self.inner.downloaded.store(0, Ordering::SeqCst);
        self.inner.holding.store(false, Ordering::SeqCst);
    }

    /// Counts `call` against every aimed fault; the actions that hit it.
    pub(crate) fn aimed_at(&self, call: &CallInfo<'_>) -> Vec<FaultAction> {
        let faults = lock(&self.inner.faults);
        let mut counts = lock(&self.inner.aimed);
        counts.resize(faults.aimed.len(), 0);
        let mut hit = Vec::new();
        for (fault, count) in faults.aimed.iter().zip(counts.iter_mut()) {
            if fault.matches(call) {
                *count += 1;
                if fault.hits(*count) {
                    self.inner.aimed_hits.fetch_add(1, Ordering::SeqCst);
                    hit.push(fault.action.clone());
                }
            }
        }
        hit
    }

    /// How many calls aimed faults have hit since the faults were set.
    pub fn aimed_hits(&self) -> u64 {
        self.inner.aimed_hits.load(Ordering::SeqCst)
    }

    /// True once a transfer is held by [`Faults::hold_uploads_at`] or
    /// [`Faults::hold_downloads_at`] (until the faults change).
    pub fn is_holding(&self) -> bool {
        self.inner.holding.load(Ordering::SeqCst)
    }

    /// Upload body bytes received since the faults were last set.
    pub fn uploaded_bytes(&self) -> u64 {
        self.inner.uploaded.load(Ordering::SeqCst)
    }

    /// Download bytes served since the faults were last set.
    pub fn downloaded_bytes(&self) -> u64 {
        self.inner.downloaded.load(Ordering::SeqCst)
    }

    /// Counts `n` more transferred bytes in one direction; how many of
    /// them may pass before the hold point (`n` when there is none).
    pub(crate) fn pass(&self, upload: bool, n: u64) -> u64 {
        let (counter, at) = match upload {
            true => (&self.inner.uploaded, self.get().hold_uploads_at),
            false => (&self.inner.downloaded, self.get().hold_downloads_at),
        };
        let before = counter.fetch_add(n, Ordering::SeqCst);
        match at {
            Some(at) if before + n > at => at.saturating_sub(before).min(n),
            _ => n,
        }
    }

    /// Holds the caller until the faults change (a hung transfer).
    pub(crate) async fn hold(&self) {
        self.inner.holding.store(true, Ordering::SeqCst);
        while self.inner.holding.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
    matches!(n, Some(n) if n > 0 && count.is_multiple_of(u64::from(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aimed_faults_hit_the_nth_matching_call_only() {
        let h = FaultHandle::default();
        h.update(|f| {
            f.aimed.push(
                AimedFault::new("SYNO.FileStation.Upload", FaultAction::Code(416))
                    .name_contains(".002")
                    .nth(2),
            );
        });
        let call = |api: &'static str, name: &str| CallInfo {
            api: Some(api),
            method: Some("upload"),
            names: vec![name.to_owned()],
        };
        let got: Vec<bool> = [
            call("SYNO.FileStation.Upload", "a.002.partial"),
            call("SYNO.FileStation.Upload", "a.001.partial"),
            call("SYNO.FileStation.Rename", "a.002.partial"),
            call("SYNO.FileStation.Upload", "a.002.partial"),
            call("SYNO.FileStation.Upload", "a.002.partial"),
        ]
        .iter()
        .map(|c| !h.aimed_at(c).is_empty())
        .collect();
        assert_eq!(got, [false, false, false, true, false]);
        assert_eq!(h.aimed_hits(), 1);
    }

    #[test]
    fn transfers_pass_up_to_the_hold_point() {
        let h = FaultHandle::default();
        h.update(|f| f.hold_uploads_at = Some(10));
        assert_eq!(h.pass(true, 6), 6);
        assert_eq!(h.pass(true, 6), 4);
        assert_eq!(h.pass(true, 6), 0);
        assert_eq!(h.pass(false, 100), 100);
        assert_eq!(h.uploaded_bytes(), 18);
    }

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
