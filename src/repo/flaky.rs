//! [`FlakyTarget`]: wraps any [`Target`] and injects failures and corruption
//! per operation, so tests can prove that backup, verify and restore cope.
//!
//! Faults are queued per operation (optionally only for names containing a
//! given text) and used up one call at a time, or made permanent with
//! [`FlakyTarget::fail_always`]. Calls are counted per operation.
//! Depends only on the [`Target`] trait.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;

use super::target::{
    BoxError, Context, Error, ErrorKind, GetStream, Operation, PutBody, PutMode, RemoteEntry,
    Result, Target, body_from_bytes, collect_body,
};

/// One injected misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with this kind of error without calling the inner target.
    Error(ErrorKind),
    /// Call the inner target, then report this error anyway (a reply lost
    /// after the work was done).
    ErrorAfter(ErrorKind),
    /// `put`: store the body with one byte changed, report success.
    CorruptStored,
    /// `put`: store only the first `n` bytes, then fail as
    /// [`Error::Transient`] (a connection dropped mid-upload).
    Truncate(u64),
    /// `get`: change one byte of the downloaded stream.
    CorruptRead,
    /// `md5`: answer a wrong digest.
    WrongMd5,
}

#[derive(Debug, Clone)]
struct Planned {
    fault: Fault,
    name_contains: Option<String>,
}

impl Planned {
    fn matches(&self, name: &str) -> bool {
        self.name_contains
            .as_deref()
            .is_none_or(|s| name.contains(s))
    }
}

#[derive(Debug, Default)]
struct Plan {
    queued: HashMap<Operation, VecDeque<Planned>>,
    always: HashMap<Operation, Planned>,
    calls: HashMap<Operation, u64>,
}

/// A [`Target`] wrapper that misbehaves on request.
pub struct FlakyTarget<T> {
    inner: T,
    plan: Mutex<Plan>,
}

impl<T: Target> fmt::Debug for FlakyTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlakyTarget")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T: Target> fmt::Display for FlakyTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flaky({})", self.inner)
    }
}

impl<T: Target> FlakyTarget<T> {
    /// Wraps `inner`; no faults planned.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            plan: Mutex::default(),
        }
    }

    /// The wrapped target.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Makes the next call of `op` misbehave.
    pub fn fail_next(&self, op: Operation, fault: Fault) {
        self.queue(op, fault, None);
    }

    /// Makes the next call of `op` on a name containing `name_contains`
    /// misbehave (other names pass).
    pub fn fail_next_on(&self, op: Operation, name_contains: &str, fault: Fault) {
        self.queue(op, fault, Some(name_contains.to_owned()));
    }

    /// Makes every call of `op` misbehave until [`FlakyTarget::clear`].
    pub fn fail_always(&self, op: Operation, fault: Fault) {
        self.plan().always.insert(
            op,
            Planned {
                fault,
                name_contains: None,
            },
        );
    }

    /// Removes every planned fault (call counts are kept).
    pub fn clear(&self) {
        let mut plan = self.plan();
        plan.queued.clear();
        plan.always.clear();
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Operation) -> u64 {
        self.plan().calls.get(&op).copied().unwrap_or(0)
    }

    fn queue(&self, op: Operation, fault: Fault, name_contains: Option<String>) {
        self.plan()
            .queued
            .entry(op)
            .or_default()
            .push_back(Planned {
                fault,
                name_contains,
            });
    }

    /// Poisoning is recovered: the plan is plain data.
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the call and takes the fault planned for it, if any.
    fn take(&self, op: Operation, name: &str) -> Option<Fault> {
        let mut plan = self.plan();
        *plan.calls.entry(op).or_default() += 1;
        if let Some(always) = plan.always.get(&op) {
            return Some(always.fault);
        }
        let queue = plan.queued.get_mut(&op)?;
        let index = queue.iter().position(|p| p.matches(name))?;
        queue.remove(index).map(|p| p.fault)
    }

    fn injected(&self, kind: ErrorKind, op: Operation, name: &str) -> Error {
        let source: BoxError = "fault injected by FlakyTarget".into();
        Error::new(kind, Context::new(self, op, name), Some(source))
    }

    /// Runs `call` under the planned fault when the fault is a plain error.
    async fn around<R>(
        &self,
        op: Operation,
        name: &str,
        fault: Option<Fault>,
        call: BoxFuture<'_, Result<R>>,
    ) -> Result<R> {
        match fault {
            Some(Fault::Error(kind)) => Err(self.injected(kind, op, name)),
            Some(Fault::ErrorAfter(kind)) => {
                call.await?;
                Err(self.injected(kind, op, name))
            }
            _ => call.await,
        }
    }

    async fn put_faulty(
        &self,
        name: &str,
        body: PutBody,
        len: Option<u64>,
        mode: PutMode,
        fault: Fault,
    ) -> Result<()> {
        let ctx = Context::new(self, Operation::Put, name);
        let data = collect_body(&ctx, body, len).await?;
        match fault {
            Fault::CorruptStored => {
                let data = flip_byte(data);
                let len = Some(data.len() as u64);
                self.inner
                    .put_opts(name, body_from_bytes(data), len, mode)
                    .await
            }
            Fault::Truncate(n) => {
                let cut = data.slice(..usize::try_from(n).unwrap_or(usize::MAX).min(data.len()));
                let len = Some(cut.len() as u64);
                self.inner
                    .put_opts(name, body_from_bytes(cut), len, mode)
                    .await?;
                Err(self.injected(ErrorKind::Transient, Operation::Put, name))
            }
            _ => {
                let len = Some(data.len() as u64);
                let call = self.inner.put_opts(name, body_from_bytes(data), len, mode);
                self.around(Operation::Put, name, Some(fault), call).await
            }
        }
    }
}

/// Changes the middle byte of `data` (an empty buffer gains a byte).
fn flip_byte(data: Bytes) -> Bytes {
    let mut buf = BytesMut::from(&data[..]);
    match buf.len() {
        0 => buf.extend_from_slice(b"!"),
        n => buf[n / 2] ^= 0xff,
    }
    buf.freeze()
}

/// Changes the first byte of the first non-empty chunk of `stream`.
fn corrupt_stream(stream: GetStream) -> GetStream {
    let mut done = false;
    stream
        .map(move |chunk| {
            chunk.map(|bytes| {
                if done || bytes.is_empty() {
                    return bytes;
                }
                done = true;
                let mut buf = BytesMut::from(&bytes[..]);
                buf[0] ^= 0xff;
                buf.freeze()
            })
        })
        .boxed()
}

/// A digest that differs from `md5` (last hex digit changed).
fn wrong_md5(mut md5: String) -> String {
    let last = match md5.pop() {
        Some('0') => '1',
        _ => '0',
    };
    md5.push(last);
    md5
}

impl<T: Target> Target for FlakyTarget<T> {
    fn ensure_folder(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let fault = self.take(Operation::EnsureFolder, "");
            let call = self.inner.ensure_folder();
            self.around(Operation::EnsureFolder, "", fault, call).await
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
            match self.take(Operation::Put, name) {
                Some(fault) => self.put_faulty(name, body, len, mode, fault).await,
                None => self.inner.put_opts(name, body, len, mode).await,
            }
        })
    }

    fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let fault = self.take(Operation::Md5, name);
            let md5 = self
                .around(Operation::Md5, name, fault, self.inner.md5(name))
                .await?;
            Ok(match fault {
                Some(Fault::WrongMd5) => wrong_md5(md5),
                _ => md5,
            })
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
        Box::pin(async move {
            let fault = self.take(Operation::List, "");
            self.around(Operation::List, "", fault, self.inner.list())
                .await
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>> {
        Box::pin(async move {
            let fault = self.take(Operation::Get, name);
            let stream = self
                .around(Operation::Get, name, fault, self.inner.get(name))
                .await?;
            Ok(match fault {
                Some(Fault::CorruptRead) => corrupt_stream(stream),
                _ => stream,
            })
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let fault = self.take(Operation::Rename, from);
            self.around(Operation::Rename, from, fault, self.inner.rename(from, to))
                .await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let fault = self.take(Operation::Delete, name);
            self.around(Operation::Delete, name, fault, self.inner.delete(name))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryTarget;
    use crate::repo::target::TargetExt;

    fn flaky() -> FlakyTarget<MemoryTarget> {
        FlakyTarget::new(MemoryTarget::with_folder())
    }

    #[tokio::test]
    async fn queued_faults_are_used_once() {
        let t = flaky();
        t.fail_next(Operation::Put, Fault::Error(ErrorKind::Transient));
        let err = t
            .put_bytes("a", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        t.put_bytes("a", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(t.calls(Operation::Put), 2);
    }

    #[tokio::test]
    async fn name_filters_pick_the_call() {
        let t = flaky();
        t.fail_next_on(Operation::Put, ".002", Fault::Error(ErrorKind::NoSpace));
        t.put_bytes("v.001", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let err = t
            .put_bytes("v.002", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
    }

    #[tokio::test]
    async fn corruption_is_caught_by_md5() {
        let t = flaky();
        t.fail_next(Operation::Put, Fault::CorruptStored);
        t.put_bytes("a", Bytes::from_static(b"abc")).await.unwrap();
        assert_ne!(
            t.md5("a").await.unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        t.put_bytes("a", Bytes::from_static(b"abc")).await.unwrap();
        t.fail_next(Operation::Md5, Fault::WrongMd5);
        assert_ne!(
            t.md5("a").await.unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        t.fail_next(Operation::Get, Fault::CorruptRead);
        assert_ne!(&t.get_bytes("a", 10).await.unwrap()[..], b"abc");
        assert_eq!(&t.get_bytes("a", 10).await.unwrap()[..], b"abc");
    }

    #[tokio::test]
    async fn truncated_upload_leaves_a_short_file() {
        let t = flaky();
        t.fail_next(Operation::Put, Fault::Truncate(2));
        assert!(t.put_bytes("a", Bytes::from_static(b"abcd")).await.is_err());
        assert_eq!(t.inner().contents("a").unwrap(), Bytes::from_static(b"ab"));
    }

    #[tokio::test]
    async fn error_after_does_the_work() {
        let t = flaky();
        t.put_bytes("a", Bytes::from_static(b"x")).await.unwrap();
        t.fail_always(Operation::Delete, Fault::ErrorAfter(ErrorKind::Transient));
        assert!(t.delete("a").await.is_err());
        assert!(t.inner().contents("a").is_none());
        t.clear();
        assert!(t.delete("a").await.unwrap_err().is_not_found());
    }
}
