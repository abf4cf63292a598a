//! The `.lock` file that keeps two writers out of one job folder.
//!
//! The lock is a small JSON file ([`LockInfo`]: host, pid, start time,
//! snapshot id and a random token). [`Lock::acquire`] creates it without
//! overwriting; when it exists, the holder is reported in
//! [`Error::Locked`], unless the lock is stale (older than
//! [`LockOptions::stale_after`], or left by a dead process on this host),
//! in which case it is taken over with a warning. After writing, the file
//! is read back and its token compared, because the NAS cannot create a
//! file atomically "only if absent". [`Lock::release`] deletes the file only
//! while it still holds our token.
//!
//! Depends only on the [`Target`] trait.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::layout::LOCK_NAME;
use super::target::{self, Target, TargetExt};

/// Largest lock file we read (a real one is ~200 bytes).
const MAX_LOCK_BYTES: usize = 64 * 1024;
/// Attempts to create the lock when a stale one had to be removed first.
const ATTEMPTS: usize = 3;

/// What the lock file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// Host name of the writer.
    pub host: String,
    /// Process id of the writer on that host.
    pub pid: u32,
    /// Which boot of which kernel, and which process-id namespace, `pid`
    /// belongs to (a digest, see [`this_machine`]): two machines, or two
    /// containers, may share a host name and even a pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Which boot of the machine the writer ran in, and which machine (a
    /// digest of `/etc/machine-id`, which outlives reboots): a lock of this
    /// machine from an earlier boot was left by a writer that is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootId>,
    /// When the lock was taken.
    pub started: DateTime<Utc>,
    /// When the holder last confirmed it is alive ([`Lock::refresh`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<DateTime<Utc>>,
    /// The snapshot being written, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A random value that tells our lock from another one.
    pub token: String,
}

impl LockInfo {
    /// A lock for `pid` on `host`, taken at `started`, with a fresh token.
    pub fn new(host: impl Into<String>, pid: u32, started: DateTime<Utc>) -> Self {
        Self {
            host: host.into(),
            pid,
            machine: None,
            boot: None,
            started,
            refreshed: None,
            snapshot: None,
            token: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// The lock of this process (host name from the kernel, our pid, and
    /// the machine it runs on).
    pub fn for_this_process(started: DateTime<Utc>) -> Self {
        let mut info = Self::new(local_hostname(), std::process::id(), started);
        info.machine = this_machine();
        info.boot = this_boot();
        info
    }

    /// The same lock, naming the snapshot being written.
    #[must_use]
    pub fn with_snapshot(mut self, id: impl fmt::Display) -> Self {
        self.snapshot = Some(id.to_string());
        self
    }

    /// The last time the holder was known alive.
    pub fn last_seen(&self) -> DateTime<Utc> {
        self.refreshed.map_or(self.started, |r| r.max(self.started))
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on host {} since {}",
            self.pid,
            self.host,
            self.started.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        if let Some(snapshot) = &self.snapshot {
            write!(f, " (writing {snapshot})")?;
        }
        Ok(())
    }
}

/// When a lock counts as abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// A lock not refreshed for this long is stale and may be taken over.
    pub stale_after: TimeDelta,
    /// This machine's host name; a lock of this host whose process is gone
    /// (checked through `/proc`) is stale at once. `None` disables the check.
    pub local_host: Option<String>,
    /// This machine's [`LockInfo::machine`]: the check above is made only
    /// for a lock that names the same one, since a pid means nothing on
    /// another machine that happens to share the host name.
    pub local_machine: Option<String>,
    /// This machine's [`LockInfo::boot`]: a lock of the same machine from
    /// another boot is stale at once.
    pub local_boot: Option<BootId>,
}

/// A machine and one boot of it, as digests (see [`LockInfo::boot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootId {
    /// Digest of `/etc/machine-id`.
    pub machine: String,
    /// Digest of the kernel's boot id.
    pub boot: String,
}

impl Default for LockOptions {
    /// Stale after 24 hours; dead local holders detected.
    fn default() -> Self {
        Self {
            stale_after: TimeDelta::hours(24),
            local_host: Some(local_hostname()),
            local_machine: this_machine(),
            local_boot: this_boot(),
        }
    }
}

impl LockOptions {
    /// Sets [`LockOptions::stale_after`].
    #[must_use]
    pub fn stale_after(mut self, age: TimeDelta) -> Self {
        self.stale_after = age;
        self
    }

    /// Sets [`LockOptions::local_host`].
    #[must_use]
    pub fn local_host(mut self, host: Option<String>) -> Self {
        self.local_host = host;
        self
    }

    /// Sets [`LockOptions::local_machine`].
    #[must_use]
    pub fn local_machine(mut self, machine: Option<String>) -> Self {
        self.local_machine = machine;
        self
    }

    /// Sets [`LockOptions::local_boot`].
    #[must_use]
    pub fn local_boot(mut self, boot: Option<BootId>) -> Self {
        self.local_boot = boot;
        self
    }

    /// Why `holder` may be taken over at `now`, if it may.
    fn stale_reason(&self, holder: &LockInfo, now: DateTime<Utc>) -> Option<String> {
        let age = now - holder.last_seen();
        if age >= self.stale_after {
            return Some(format!("not refreshed for {}h", age.num_hours()));
        }
        let same_host = self.local_host.as_deref() == Some(holder.host.as_str());
        if let (true, Some(theirs), Some(ours)) = (same_host, &holder.boot, &self.local_boot)
            && theirs.machine == ours.machine
            && theirs.boot != ours.boot
        {
            return Some("this machine has restarted since".to_owned());
        }
        let local = same_host && holder.machine == self.local_machine;
        if local && holder.pid != std::process::id() && !process_alive(holder.pid) {
            return Some(format!("process {} is gone from this host", holder.pid));
        }
        if local && holder.pid == std::process::id() && !held::contains(&holder.token) {
            return Some("left by an earlier run of this process".to_owned());
        }
        None
    }
}

/// Why the lock could not be taken or released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another writer holds the lock.
    #[error("the job is locked by {holder}; wait for it to finish or remove `.lock` if it died")]
    Locked {
        /// Who holds it.
        holder: Box<LockInfo>,
    },
    /// A lock file exists that we cannot read.
    #[error(
        "the job is locked by an unreadable `.lock` (modified {modified}); remove it if no backup is running"
    )]
    Unreadable {
        /// Its modification time, when known.
        modified: String,
        /// Why it could not be read.
        #[source]
        source: serde_json::Error,
    },
    /// Our lock was replaced by another writer while we held it.
    #[error("our lock was taken over by {holder} while we held it")]
    Lost {
        /// Who holds it now.
        holder: Box<LockInfo>,
    },
    /// Our lock file was deleted while we held it (by hand, or by a
    /// writer that took it over and has finished since).
    #[error("our lock file was removed while we held it")]
    Gone,
    /// The lock file could not be written, read or deleted.
    #[error("lock file: {source}")]
    Target {
        /// The target error.
        #[from]
        source: target::Error,
    },
    /// The lock could not be encoded (cannot happen with these types).
    #[error("encoding the lock file")]
    Encode(#[source] serde_json::Error),
}

/// What the lock file said when we looked.
enum Found {
    Nothing,
    Held(LockInfo),
    Unreadable {
        modified: Option<DateTime<Utc>>,
        source: serde_json::Error,
    },
}

/// A lock we hold. Release it with [`Lock::release`]; dropping it leaves
/// the file (async code cannot clean up in `Drop`), which then goes stale.
#[derive(Debug, Clone)]
#[must_use = "a lock must be released"]
pub struct Lock {
    info: LockInfo,
}

impl Lock {
    /// Takes the lock of the job folder behind `target` for `info`'s holder.
    ///
    /// A stale lock (see [`LockOptions`]) is removed with a warning and
    /// taken over.
    ///
    /// # Errors
    /// [`Error::Locked`] when another writer holds it, [`Error::Unreadable`]
    /// for a garbled recent lock file, [`Error::Target`] when the target
    /// fails.
    ///
    /// # Cancel safety
    /// Dropping the future may leave a lock file behind, which then goes
    /// stale like one from a crashed run.
    pub async fn acquire(
        target: &dyn Target,
        info: LockInfo,
        opts: &LockOptions,
        now: DateTime<Utc>,
    ) -> Result<Lock, Error> {
        let body = encode(&info)?;
        for _ in 0..ATTEMPTS {
            match target.create_bytes(LOCK_NAME, body.clone()).await {
                Ok(()) => match confirm(target, info.clone()).await {
                    // The bytes we just wrote came back damaged (a storage
                    // fault): the file is ours, so remove it and write again.
                    Err(Error::Unreadable { .. }) => {
                        tracing::warn!(target = %target, "the lock we wrote reads back damaged; writing it again");
                        target.delete_if_exists(LOCK_NAME).await?;
                        continue;
                    }
                    // Deleted right after we made it (a writer taking
                    // over a lock it read before ours): try again.
                    Err(Error::Gone) => continue,
                    other => return other,
                },
                Err(target::Error::AlreadyExists { .. }) => {}
                Err(err) => return Err(err.into()),
            }
            match read(target).await? {
                Found::Nothing => continue,
                // Our own create went through but its answer was lost and
                // the retry found the file: it is ours.
                Found::Held(holder) if holder.token == info.token => return Ok(Lock::held(info)),
                Found::Held(holder) => match opts.stale_reason(&holder, now) {
                    // Deleted only while it is still the lock judged stale:
                    // another writer may have taken it over meanwhile and
                    // written its own, which must not be deleted too.
                    Some(reason) if still_held_by(target, &holder).await? => {
                        take_over(target, &holder.to_string(), &reason).await?;
                    }
                    Some(_) => {}
                    None => {
                        return Err(Error::Locked {
                            holder: Box::new(holder),
                        });
                    }
                },
                Found::Unreadable { modified, source } => {
                    match modified.filter(|m| now - *m >= opts.stale_after) {
                        Some(m) => {
                            let reason = format!("unchanged for {}h", (now - m).num_hours());
                            take_over(target, "an unreadable lock file", &reason).await?;
                        }
                        None => return Err(unreadable(modified, source)),
                    }
                }
            }
        }
        // Every attempt lost a race against another writer; report it.
        match read(target).await? {
            Found::Held(holder) => Err(Error::Locked {
                holder: Box::new(holder),
            }),
            Found::Unreadable { modified, source } => Err(unreadable(modified, source)),
            Found::Nothing => Err(Error::Target {
                source: target::Error::new(
                    target::ErrorKind::Transient,
                    target::Context::new(target, target::Operation::Put, LOCK_NAME),
                    Some("the lock kept appearing and disappearing".into()),
                ),
            }),
        }
    }

    /// Reads who holds the lock of `target`, if anyone (for `list`).
    ///
    /// # Errors
    /// [`Error::Unreadable`] for a garbled lock file, [`Error::Target`]
    /// when the target fails.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    pub async fn holder(target: &dyn Target) -> Result<Option<LockInfo>, Error> {
        match read(target).await? {
            Found::Nothing => Ok(None),
            Found::Held(info) => Ok(Some(info)),
            Found::Unreadable { modified, source } => Err(unreadable(modified, source)),
        }
    }

    /// A lock we now hold, recorded as held by this process.
    fn held(info: LockInfo) -> Lock {
        held::insert(&info.token);
        Lock { info }
    }

    /// What our lock file says.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Rewrites the lock with `refreshed = now`, so that long runs are not
    /// taken for dead, after checking that it is still ours. A backup calls
    /// it every [`refresh_interval`] and once more before it commits.
    ///
    /// # Errors
    /// [`Error::Lost`] when the file is no longer ours (it is left alone),
    /// [`Error::Gone`] when it was deleted, [`Error::Target`] when the
    /// target fails.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the old or the new content; both are
    /// ours.
    pub async fn refresh(&mut self, target: &dyn Target, now: DateTime<Utc>) -> Result<(), Error> {
        self.check_ours(target).await?;
        let mut info = self.info.clone();
        info.refreshed = Some(now);
        let body = encode(&info)?;
        self.info = info;
        for _ in 1..ATTEMPTS {
            target.put_bytes(LOCK_NAME, body.clone()).await?;
            // Another writer may have replaced the file between our read
            // and our write; reading it back catches one replacing ours.
            match self.check_ours(target).await {
                // Our bytes came back damaged (a storage fault): the file
                // is ours, and a garbled lock would stop every later run.
                Err(Error::Unreadable { .. }) => {
                    tracing::warn!(target = %target, "the lock we refreshed reads back damaged; writing it again");
                }
                other => return other,
            }
        }
        target.put_bytes(LOCK_NAME, body).await?;
        self.check_ours(target).await
    }

    /// Deletes the lock file if it is still ours.
    ///
    /// # Errors
    /// [`Error::Lost`] when another writer's lock is there now (it is left
    /// alone), [`Error::Target`] when the target fails. A lock file that is
    /// already gone is not an error (a warning is logged).
    ///
    /// # Cancel safety
    /// Dropping the future may leave the lock file, which then goes stale.
    pub async fn release(self, target: &dyn Target) -> Result<(), Error> {
        // From here on this process no longer counts on the lock: if the
        // file cannot be deleted, our next run may take it over at once.
        held::remove(&self.info.token);
        match self.check_ours(target).await {
            Ok(()) => {
                target.delete_if_exists(LOCK_NAME).await?;
                Ok(())
            }
            Err(Error::Gone) => {
                tracing::warn!(target = %target, "lock file vanished before release");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn check_ours(&self, target: &dyn Target) -> Result<(), Error> {
        let data = match target.get_bytes(LOCK_NAME, MAX_LOCK_BYTES).await {
            Ok(data) => data,
            Err(err) if err.is_not_found() => return Err(Error::Gone),
            Err(err) => return Err(err.into()),
        };
        match serde_json::from_slice::<LockInfo>(&data) {
            Ok(found) if found.token == self.info.token => Ok(()),
            Ok(found) => Err(Error::Lost {
                holder: Box::new(found),
            }),
            Err(source) => Err(unreadable(None, source)),
        }
    }
}

/// Reads our lock back after creating it: another writer may have created
/// it at the same moment on a target without atomic create.
async fn confirm(target: &dyn Target, info: LockInfo) -> Result<Lock, Error> {
    let lock = Lock { info };
    match lock.check_ours(target).await {
        Ok(()) => Ok(Lock::held(lock.info)),
        Err(Error::Lost { holder }) => Err(Error::Locked { holder }),
        Err(err) => Err(err),
    }
}

/// Whether the lock file still names `holder` (same token).
async fn still_held_by(target: &dyn Target, holder: &LockInfo) -> Result<bool, Error> {
    Ok(matches!(read(target).await?, Found::Held(now) if now.token == holder.token))
}

async fn take_over(target: &dyn Target, holder: &str, reason: &str) -> Result<(), Error> {
    tracing::warn!(target = %target, holder, reason, "taking over a stale lock");
    target.delete_if_exists(LOCK_NAME).await?;
    Ok(())
}

async fn read(target: &dyn Target) -> Result<Found, Error> {
    let data = match target.get_bytes(LOCK_NAME, MAX_LOCK_BYTES).await {
        Ok(data) => data,
        Err(err) if err.is_not_found() => return Ok(Found::Nothing),
        Err(err) => return Err(err.into()),
    };
    match serde_json::from_slice::<LockInfo>(&data) {
        Ok(info) => Ok(Found::Held(info)),
        Err(source) => {
            let modified = lock_mtime(target).await?;
            Ok(Found::Unreadable { modified, source })
        }
    }
}

async fn lock_mtime(target: &dyn Target) -> Result<Option<DateTime<Utc>>, Error> {
    let entries = target.list().await?;
    Ok(entries
        .into_iter()
        .find(|e| e.name == LOCK_NAME)
        .and_then(|e| e.mtime))
}

fn unreadable(modified: Option<DateTime<Utc>>, source: serde_json::Error) -> Error {
    Error::Unreadable {
        modified: modified.map_or_else(|| "at an unknown time".to_owned(), |m| m.to_rfc3339()),
        source,
    }
}

fn encode(info: &LockInfo) -> Result<Bytes, Error> {
    serde_json::to_vec_pretty(info)
        .map(Bytes::from)
        .map_err(Error::Encode)
}

/// Tokens of the locks this process holds. A lock file naming this host and
/// this process but none of these tokens was left by one of our own earlier
/// runs whose release failed (a daemon lives on after a run), and is stale;
/// without this, a daemon would lock itself out of a job until
/// [`LockOptions::stale_after`].
mod held {
    use std::collections::HashSet;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    static TOKENS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    fn tokens() -> MutexGuard<'static, Option<HashSet<String>>> {
        // The set stays consistent whatever a panicking holder did.
        TOKENS.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn insert(token: &str) {
        tokens()
            .get_or_insert_with(HashSet::new)
            .insert(token.to_owned());
    }

    pub(super) fn remove(token: &str) {
        if let Some(set) = tokens().as_mut() {
            set.remove(token);
        }
    }

    pub(super) fn contains(token: &str) -> bool {
        tokens().as_ref().is_some_and(|set| set.contains(token))
    }
}

/// How often a holder refreshes its lock: a quarter of the stale age, so
/// that three refreshes in a row may fail (a NAS restarting, a network
/// outage) before the lock looks abandoned, and at least every ten minutes.
pub fn refresh_interval(stale_after: TimeDelta) -> std::time::Duration {
    (stale_after / 4).to_std().unwrap_or_default().clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(600),
    )
}

/// Whether `info` is a lock this process holds and has not released: a
/// run of ours whose future was dropped left it.
pub fn held_by_this_process(info: &LockInfo) -> bool {
    held::contains(&info.token)
}

/// Forgets that this process holds `info` (its file was deleted by hand).
pub fn forget_held(info: &LockInfo) {
    held::remove(&info.token);
}

/// A digest of this kernel's boot id and of this process's pid namespace,
/// for [`LockInfo::machine`]; `None` without `/proc`. A digest rather than
/// the values: the lock file is readable by anyone with the share.
pub fn this_machine() -> Option<String> {
    static MACHINE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let boot = read_trimmed("/proc/sys/kernel/random/boot_id")?;
            let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(short_digest(&[
                b"synback lock machine\0",
                boot.as_bytes(),
                b"\0",
                pid_ns.as_os_str().as_encoded_bytes(),
            ]))
        })
        .clone()
}

/// This machine and boot, for [`LockInfo::boot`]; `None` without a
/// machine id or a boot id.
pub fn this_boot() -> Option<BootId> {
    static BOOT: std::sync::OnceLock<Option<BootId>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        let machine = read_trimmed("/etc/machine-id").filter(|m| !m.is_empty())?;
        let boot = read_trimmed("/proc/sys/kernel/random/boot_id")?;
        Some(BootId {
            machine: short_digest(&[b"synback machine\0", machine.as_bytes()]),
            boot: short_digest(&[b"synback boot\0", boot.as_bytes()]),
        })
    })
    .clone()
}

/// The first 8 bytes of the SHA-256 of `parts`, in hex: enough to tell
/// machines apart, nothing to read them back from.
fn short_digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part);
    }
    hex::encode(&digest.finalize()[..8])
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// This machine's host name, from the kernel; `unknown` when unavailable.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether `pid` runs on this machine. Without `/proc` we cannot tell and
/// answer yes, so that a live writer is never pushed out.
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryTarget;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
    }

    fn opts() -> LockOptions {
        LockOptions::default()
            .local_host(Some("here".to_owned()))
            .local_machine(None)
            .local_boot(None)
    }

    #[tokio::test]
    async fn second_writer_is_told_who_holds_the_lock() {
        let target = MemoryTarget::with_folder();
        let first = LockInfo::new("nuc", 42, now()).with_snapshot("pc-20260501T120000Z");
        let lock = Lock::acquire(&target, first, &opts(), now()).await.unwrap();
        let err = Lock::acquire(&target, LockInfo::new("pi", 7, now()), &opts(), now())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(
            msg.contains("pid 42 on host nuc since 2026-05-01 12:00:00 UTC"),
            "{msg}"
        );
        assert!(msg.contains("pc-20260501T120000Z"), "{msg}");
        lock.release(&target).await.unwrap();
        assert!(target.names().is_empty());
    }

    #[tokio::test]
    async fn stale_lock_is_taken_over() {
        let target = MemoryTarget::with_folder();
        let old = LockInfo::new("nuc", 42, now() - TimeDelta::hours(25));
        let _abandoned = Lock::acquire(&target, old, &opts(), now()).await.unwrap();
        let lock = Lock::acquire(&target, LockInfo::new("pi", 7, now()), &opts(), now())
            .await
            .unwrap();
        assert_eq!(Lock::holder(&target).await.unwrap().unwrap().host, "pi");
        lock.release(&target).await.unwrap();
    }

    #[tokio::test]
    async fn refreshed_lock_is_not_stale() {
        let target = MemoryTarget::with_folder();
        let old = LockInfo::new("nuc", 42, now() - TimeDelta::hours(30));
        let mut lock = Lock::acquire(&target, old, &opts(), now() - TimeDelta::hours(30))
            .await
            .unwrap();
        lock.refresh(&target, now() - TimeDelta::hours(1))
            .await
            .unwrap();
        let err = Lock::acquire(&target, LockInfo::new("pi", 7, now()), &opts(), now()).await;
        assert!(matches!(err, Err(Error::Locked { .. })));
    }

    #[tokio::test]
    async fn dead_local_process_is_stale_at_once() {
        let target = MemoryTarget::with_folder();
        // Pid 0 is never a user process, so /proc/0 does not exist.
        let dead = LockInfo::new("here", 0, now());
        let _abandoned = Lock::acquire(&target, dead, &opts(), now()).await.unwrap();
        let lock = Lock::acquire(&target, LockInfo::new("here", 1, now()), &opts(), now()).await;
        assert!(lock.is_ok());
    }

    #[tokio::test]
    async fn a_dead_pid_of_another_machine_with_our_host_name_is_not_stale() {
        // Two Raspberry Pis both called `raspberrypi`, or two containers
        // sharing the host's name: the other one's pid is not in our /proc.
        let target = MemoryTarget::with_folder();
        let mut elsewhere = LockInfo::new("here", 0, now());
        elsewhere.machine = Some("another machine".to_owned());
        let _live = Lock::acquire(&target, elsewhere, &opts(), now())
            .await
            .unwrap();
        let here = opts().local_machine(Some("this machine".to_owned()));
        let err = Lock::acquire(&target, LockInfo::new("here", 1, now()), &here, now()).await;
        assert!(matches!(err, Err(Error::Locked { .. })), "{err:?}");
        // Once it is older than the stale age, it is taken over.
        let later = now() + TimeDelta::hours(25);
        let lock = Lock::acquire(&target, LockInfo::new("here", 1, later), &here, later).await;
        assert!(lock.is_ok(), "{lock:?}");
    }

    #[tokio::test]
    async fn a_lock_of_this_machine_from_an_earlier_boot_is_stale_at_once() {
        let target = MemoryTarget::with_folder();
        let boot = |b: &str| BootId {
            machine: "m1".to_owned(),
            boot: b.to_owned(),
        };
        let mut before = LockInfo::new("here", 4242, now());
        before.boot = Some(boot("b1"));
        let _dead = Lock::acquire(&target, before, &opts(), now())
            .await
            .unwrap();
        // Same boot (the pid may be anyone's): refused.
        let same = opts()
            .local_machine(Some("ns".to_owned()))
            .local_boot(Some(boot("b1")));
        let err = Lock::acquire(&target, LockInfo::new("here", 1, now()), &same, now()).await;
        assert!(matches!(err, Err(Error::Locked { .. })), "{err:?}");
        // Another machine with our host name and a boot of its own: refused.
        let other = same.clone().local_boot(Some(BootId {
            machine: "m2".to_owned(),
            boot: "b2".to_owned(),
        }));
        let err = Lock::acquire(&target, LockInfo::new("here", 1, now()), &other, now()).await;
        assert!(matches!(err, Err(Error::Locked { .. })), "{err:?}");
        // This machine, rebooted since: taken over at once.
        let rebooted = same.local_boot(Some(boot("b2")));
        let lock = Lock::acquire(&target, LockInfo::new("here", 1, now()), &rebooted, now()).await;
        assert!(lock.is_ok(), "{lock:?}");
    }

    #[test]
    fn this_process_names_its_machine_and_refreshes_often_enough() {
        let info = LockInfo::for_this_process(now());
        assert_eq!(info.machine, this_machine());
        assert!(info.machine.is_some(), "no /proc on this test machine?");
        assert_eq!(
            refresh_interval(TimeDelta::hours(6)),
            std::time::Duration::from_secs(600)
        );
        assert_eq!(
            refresh_interval(TimeDelta::seconds(2)),
            std::time::Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn a_lock_our_process_no_longer_holds_is_taken_over() {
        let target = MemoryTarget::with_folder();
        let me = std::process::id();
        let held = Lock::acquire(&target, LockInfo::new("here", me, now()), &opts(), now())
            .await
            .unwrap();
        // A second run in this process while the first holds it: refused.
        let err = Lock::acquire(&target, LockInfo::new("here", me, now()), &opts(), now()).await;
        assert!(matches!(err, Err(Error::Locked { .. })));
        // The first run's release could not delete the file (the NAS
        // failed); the file is left with our pid but nobody holds it.
        held::remove(&held.info().token);
        let next = Lock::acquire(&target, LockInfo::new("here", me, now()), &opts(), now())
            .await
            .unwrap();
        assert_ne!(next.info().token, held.info().token);
        next.release(&target).await.unwrap();
        assert!(target.names().is_empty());
    }

    #[tokio::test]
    async fn release_leaves_a_foreign_lock_alone() {
        let target = MemoryTarget::with_folder();
        let lock = Lock::acquire(&target, LockInfo::new("nuc", 1, now()), &opts(), now())
            .await
            .unwrap();
        let other = LockInfo::new("pi", 2, now());
        target
            .put_bytes(LOCK_NAME, encode(&other).unwrap())
            .await
            .unwrap();
        assert!(matches!(
            lock.release(&target).await,
            Err(Error::Lost { .. })
        ));
        assert_eq!(Lock::holder(&target).await.unwrap(), Some(other));
    }

    #[tokio::test]
    async fn garbled_lock_blocks_until_old() {
        let target = MemoryTarget::with_folder();
        target.insert(LOCK_NAME, &b"{not json"[..], now() - TimeDelta::hours(1));
        let err = Lock::acquire(&target, LockInfo::new("pi", 7, now()), &opts(), now())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreadable { .. }), "{err}");
        let later = now() + TimeDelta::hours(24);
        let lock = Lock::acquire(&target, LockInfo::new("pi", 7, later), &opts(), later).await;
        assert!(lock.is_ok());
    }

    #[tokio::test]
    async fn a_lost_create_answer_still_gets_the_lock() {
        use crate::repo::target::{ErrorKind, Operation};
        use crate::repo::{Fault, FlakyTarget};
        let target = FlakyTarget::new(MemoryTarget::with_folder());
        target.fail_next(Operation::Put, Fault::ErrorAfter(ErrorKind::Transient));
        let info = LockInfo::new("nuc", 1, now());
        let err = Lock::acquire(&target, info.clone(), &opts(), now()).await;
        assert!(matches!(err, Err(Error::Target { .. })));
        // The caller retries with the same lock info.
        let lock = Lock::acquire(&target, info, &opts(), now()).await.unwrap();
        lock.release(&target).await.unwrap();
    }

    #[tokio::test]
    async fn vanished_lock_releases_quietly() {
        let target = MemoryTarget::with_folder();
        let lock = Lock::acquire(&target, LockInfo::new("nuc", 1, now()), &opts(), now())
            .await
            .unwrap();
        target.delete(LOCK_NAME).await.unwrap();
        lock.release(&target).await.unwrap();
    }
}
