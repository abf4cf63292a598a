//! [`MemoryTarget`]: a complete [`Target`] kept in memory, for tests and for
//! embedders that want to exercise the backup logic without a NAS.
//!
//! It is a real implementation (MD5 is computed, names are checked, a
//! missing folder and a full disk behave like on the NAS), not a stub. It
//! depends on nothing but the [`Target`] contract.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use md5::{Digest, Md5};

use super::target::{
    Context, Error, ErrorKind, GetStream, Operation, PutBody, PutMode, RemoteEntry, Result, Target,
    collect_body, validate_name,
};

/// Chunk size of the streams [`MemoryTarget::get`] returns.
const GET_CHUNK: usize = 64 * 1024;

/// A clock for modification times; tests replace it to age files.
type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    mtime: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    folder_exists: bool,
    files: BTreeMap<String, Stored>,
    capacity: Option<u64>,
}

impl State {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.data.len() as u64).sum()
    }
}

/// A job folder held in memory. Cheap to clone: clones share the same files.
#[derive(Clone)]
pub struct MemoryTarget {
    label: Arc<str>,
    state: Arc<Mutex<State>>,
    clock: Clock,
}

impl fmt::Debug for MemoryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTarget")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MemoryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory:{}", self.label)
    }
}

impl Default for MemoryTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTarget {
    /// An empty target whose job folder does not exist yet (as before the
    /// first backup): [`Target::list`] says not found until
    /// [`Target::ensure_folder`] runs.
    pub fn new() -> Self {
        Self::with_label("job")
    }

    /// Like [`MemoryTarget::new`], with a label shown in `Display` and errors.
    pub fn with_label(label: &str) -> Self {
        Self {
            label: Arc::from(label),
            state: Arc::default(),
            clock: Arc::new(Utc::now),
        }
    }

    /// An empty target whose job folder already exists.
    pub fn with_folder() -> Self {
        let target = Self::new();
        target.state().folder_exists = true;
        target
    }

    /// Limits the total stored bytes; uploads beyond it fail with
    /// [`Error::NoSpace`], as a full NAS volume does.
    #[must_use]
    pub fn with_capacity(self, bytes: u64) -> Self {
        self.state().capacity = Some(bytes);
        self
    }

    /// Uses `clock` for the modification times of new and renamed files.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Stores `data` as `name` with modification time `mtime`, creating the
    /// folder if needed (test setup; no name check).
    pub fn insert(&self, name: &str, data: impl Into<Bytes>, mtime: DateTime<Utc>) {
        let mut state = self.state();
        state.folder_exists = true;
        state.files.insert(
            name.to_owned(),
            Stored {
                data: data.into(),
                mtime,
            },
        );
    }

    /// The content of `name`, if present.
    pub fn contents(&self, name: &str) -> Option<Bytes> {
        self.state().files.get(name).map(|f| f.data.clone())
    }

    /// The sorted names of all stored files.
    pub fn names(&self) -> Vec<String> {
        self.state().files.keys().cloned().collect()
    }

    /// Replaces the stored content of `name` without changing its mtime (to
    /// simulate corruption on the storage side). Returns false if absent.
    pub fn tamper(&self, name: &str, data: impl Into<Bytes>) -> bool {
        match self.state().files.get_mut(name) {
            Some(file) => {
                file.data = data.into();
                true
            }
            None => false,
        }
    }

    /// Locks the state. A poisoned lock is recovered: every mutation below
    /// is a single map operation, so the state stays consistent.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ctx(&self, op: Operation, name: &str) -> Context {
        Context::new(self, op, name)
    }

    fn err(&self, kind: ErrorKind, op: Operation, name: &str) -> Error {
        Error::new(kind, self.ctx(op, name), None)
    }

    fn require_folder(&self, state: &State, op: Operation, name: &str) -> Result<()> {
        if state.folder_exists {
            Ok(())
        } else {
            Err(Error::NotFound {
                ctx: self.ctx(op, name),
                source: Some("the job folder does not exist".into()),
            })
        }
    }

    fn store(&self, name: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let mut state = self.state();
        self.require_folder(&state, Operation::Put, name)?;
        let existing = state.files.get(name).map(|f| f.data.len() as u64);
        if mode == PutMode::Create && existing.is_some() {
            return Err(self.err(ErrorKind::AlreadyExists, Operation::Put, name));
        }
        if let Some(capacity) = state.capacity {
            let after = state.used() - existing.unwrap_or(0) + data.len() as u64;
            if after > capacity {
                return Err(self.err(ErrorKind::NoSpace, Operation::Put, name));
            }
        }
        let mtime = (self.clock)();
        state.files.insert(name.to_owned(), Stored { data, mtime });
        Ok(())
    }

    fn read(&self, op: Operation, name: &str) -> Result<Bytes> {
        validate_name(name)?;
        let state = self.state();
        self.require_folder(&state, op, name)?;
        state
            .files
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| self.err(ErrorKind::NotFound, op, name))
    }

    fn rename_now(&self, from: &str, to: &str) -> Result<()> {
        validate_name(from)?;
        validate_name(to)?;
        let mut state = self.state();
        self.require_folder(&state, Operation::Rename, from)?;
        if !state.files.contains_key(from) {
            return Err(self.err(ErrorKind::NotFound, Operation::Rename, from));
        }
        if from == to {
            return Ok(());
        }
        if state.files.contains_key(to) {
            return Err(self.err(ErrorKind::AlreadyExists, Operation::Rename, to));
        }
        if let Some(file) = state.files.remove(from) {
            state.files.insert(to.to_owned(), file);
        }
        Ok(())
    }

    fn delete_now(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let mut state = self.state();
        self.require_folder(&state, Operation::Delete, name)?;
        match state.files.remove(name) {
            Some(_) => Ok(()),
            None => Err(self.err(ErrorKind::NotFound, Operation::Delete, name)),
        }
    }

    fn list_now(&self) -> Result<Vec<RemoteEntry>> {
        let state = self.state();
        self.require_folder(&state, Operation::List, "")?;
        Ok(state
            .files
            .iter()
            .map(|(name, f)| {
                RemoteEntry::file(name.clone(), f.data.len() as u64).with_mtime(f.mtime)
            })
            .collect())
    }
}

/// Lowercase hex MD5 of `data`.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

impl Target for MemoryTarget {
    fn ensure_folder(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.state().folder_exists = true;
            Ok(())
        })
    }

    fn put_opts<'a>(
        &'a self,
        name: &'a str,
        body: PutBody,
        len: Option<u64>,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_name(name)?;
            {
                let state = self.state();
                self.require_folder(&state, Operation::Put, name)?;
                if mode == PutMode::Create && state.files.contains_key(name) {
                    return Err(self.err(ErrorKind::AlreadyExists, Operation::Put, name));
                }
            }
            let data = collect_body(&self.ctx(Operation::Put, name), body, len).await?;
            self.store(name, data, mode)
        })
    }

    fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move { self.read(Operation::Md5, name).map(|data| md5_hex(&data)) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
        Box::pin(async move { self.list_now() })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>> {
        Box::pin(async move {
            let data = self.read(Operation::Get, name)?;
            Ok(chunked(data))
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.rename_now(from, to) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.delete_now(name) })
    }
}

/// Splits `data` into a stream of cheap slices.
fn chunked(data: Bytes) -> GetStream {
    let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(GET_CHUNK)
        .map(|start| Ok(data.slice(start..(start + GET_CHUNK).min(data.len()))))
        .collect();
    stream::iter(chunks).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::target::TargetExt;

    #[tokio::test]
    async fn md5_is_the_real_digest() {
        let target = MemoryTarget::with_folder();
        target
            .put_bytes("a", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(
            target.md5("a").await.unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[tokio::test]
    async fn capacity_gives_no_space() {
        let target = MemoryTarget::with_folder().with_capacity(4);
        target
            .put_bytes("a", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let err = target
            .put_bytes("b", Bytes::from_static(b"de"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        // Replacing a file only counts the difference.
        target
            .put_bytes("a", Bytes::from_static(b"abcd"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn large_files_stream_in_chunks() {
        let target = MemoryTarget::with_folder();
        let data = Bytes::from(vec![7u8; GET_CHUNK * 2 + 5]);
        target.put_bytes("big", data.clone()).await.unwrap();
        let chunks: Vec<_> = target.get("big").await.unwrap().collect().await;
        assert_eq!(chunks.len(), 3);
        let back = target.get_bytes("big", data.len()).await.unwrap();
        assert_eq!(back, data);
        assert!(target.get_bytes("big", 10).await.is_err());
    }

    #[tokio::test]
    async fn missing_folder_is_not_found() {
        let target = MemoryTarget::new();
        assert!(target.list().await.unwrap_err().is_not_found());
        let err = target
            .put_bytes("a", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        assert!(target.list_or_empty().await.unwrap().is_empty());
    }
}
