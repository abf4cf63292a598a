//! The behaviour every [`Target`] must show, as a suite of async checks that
//! each implementation's tests run (object_store's `integration` idea).
//!
//! Start with a target whose job folder does not exist yet, then call
//! [`run_all`] (or single checks). Each check removes the files it created.
//! Checks return a [`Failure`] naming the check instead of panicking, so
//! the suite can live in library code behind the `test-util` (or
//! `emulator`) feature.

use std::collections::BTreeSet;
use std::io;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::target::{ErrorKind, PutMode, Target, TargetExt};

/// A conformance check that did not hold.
#[derive(Debug, thiserror::Error)]
#[error("conformance check `{check}` failed on {target}: {detail}")]
#[non_exhaustive]
pub struct Failure {
    /// The check's name.
    pub check: &'static str,
    /// The target, as displayed.
    pub target: String,
    /// What went wrong.
    pub detail: String,
}

/// Result of one check.
pub type Outcome = Result<(), Failure>;

/// How many files [`list_many`] creates in [`run_all`]: more than one
/// page of a DSM listing.
pub const MANY: usize = 130;

struct Checker<'a> {
    check: &'static str,
    target: &'a dyn Target,
}

impl Checker<'_> {
    fn fail(&self, detail: impl Into<String>) -> Failure {
        Failure {
            check: self.check,
            target: self.target.to_string(),
            detail: detail.into(),
        }
    }

    fn ensure(&self, ok: bool, detail: impl FnOnce() -> String) -> Outcome {
        if ok { Ok(()) } else { Err(self.fail(detail())) }
    }

    /// Unwraps a target result, failing the check on error.
    fn ok<T>(&self, what: &str, result: super::target::Result<T>) -> Result<T, Failure> {
        result.map_err(|e| self.fail(format!("{what}: {}", chain(&e))))
    }

    /// Expects an error of `kind`.
    fn err_kind<T: std::fmt::Debug>(
        &self,
        what: &str,
        result: super::target::Result<T>,
        kind: ErrorKind,
    ) -> Outcome {
        match result {
            Err(e) if e.kind() == kind => Ok(()),
            Err(e) => Err(self.fail(format!("{what}: expected {kind:?}, got {}", chain(&e)))),
            Ok(v) => Err(self.fail(format!("{what}: expected {kind:?}, got Ok({v:?})"))),
        }
    }

    async fn names(&self) -> Result<BTreeSet<String>, Failure> {
        let entries = self.ok("list", self.target.list().await)?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }
}

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// Deterministic test data of `len` bytes.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Runs every check in order. The target's job folder must not exist yet.
///
/// # Errors
/// The first [`Failure`].
pub async fn run_all(target: &dyn Target) -> Outcome {
    folder_lifecycle(target).await?;
    put_get_md5(target).await?;
    streamed_put(target).await?;
    bad_bodies(target).await?;
    create_mode(target).await?;
    rename_rules(target).await?;
    delete_and_missing(target).await?;
    invalid_names(target).await?;
    awkward_names(target).await?;
    list_many(target, MANY).await?;
    Ok(())
}

/// Listing a missing folder is `NotFound`; `ensure_folder` creates it, is
/// idempotent, and the new folder lists as empty.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn folder_lifecycle(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "folder_lifecycle",
        target,
    };
    c.err_kind(
        "list before ensure_folder",
        target.list().await,
        ErrorKind::NotFound,
    )?;
    c.ok("ensure_folder", target.ensure_folder().await)?;
    c.ok("ensure_folder again", target.ensure_folder().await)?;
    let names = c.names().await?;
    c.ensure(names.is_empty(), || format!("new folder lists {names:?}"))
}

/// Small files round-trip; MD5 is the real digest; sizes are listed;
/// overwriting replaces; empty files work.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn put_get_md5(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "put_get_md5",
        target,
    };
    let data = Bytes::from_static(b"hello synback\n");
    c.ok("put", target.put_bytes("hello.txt", data.clone()).await)?;
    let back = c.ok("get", target.get_bytes("hello.txt", 1024).await)?;
    c.ensure(back == data, || format!("got {back:?}"))?;
    let md5 = c.ok("md5", target.md5("hello.txt").await)?;
    c.ensure(md5 == md5_hex(&data), || format!("md5 {md5}"))?;
    let entries = c.ok("list", target.list().await)?;
    let size = entries
        .iter()
        .find(|e| e.name == "hello.txt")
        .map(|e| e.size);
    c.ensure(size == Some(data.len() as u64), || {
        format!("listed size {size:?}")
    })?;

    let replaced = Bytes::from_static(b"second");
    c.ok(
        "overwrite",
        target.put_bytes("hello.txt", replaced.clone()).await,
    )?;
    let back = c.ok(
        "get after overwrite",
        target.get_bytes("hello.txt", 1024).await,
    )?;
    c.ensure(back == replaced, || format!("after overwrite got {back:?}"))?;

    c.ok("put empty", target.put_bytes("empty", Bytes::new()).await)?;
    let back = c.ok("get empty", target.get_bytes("empty", 1024).await)?;
    c.ensure(back.is_empty(), || format!("empty file read as {back:?}"))?;
    let md5 = c.ok("md5 empty", target.md5("empty").await)?;
    c.ensure(md5 == md5_hex(b""), || format!("empty md5 {md5}"))?;

    c.ok("delete", target.delete("hello.txt").await)?;
    c.ok("delete empty", target.delete("empty").await)?;
    Ok(())
}

/// A multi-chunk body of a few MiB, with and without a known length,
/// arrives intact (checked by MD5 and by reading it back).
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn streamed_put(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "streamed_put",
        target,
    };
    let data = pattern(3 * 1024 * 1024 + 17, 5);
    for (name, len) in [
        ("known.bin", Some(data.len() as u64)),
        ("chunked.bin", None),
    ] {
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(64 * 1024 + 3)
            .map(|b| Ok(Bytes::copy_from_slice(b)))
            .collect();
        let body = stream::iter(chunks).boxed();
        c.ok("put stream", target.put(name, body, len).await)?;
        let md5 = c.ok("md5", target.md5(name).await)?;
        c.ensure(md5 == md5_hex(&data), || format!("{name}: md5 {md5}"))?;
        let stream = c.ok("get", target.get(name).await)?;
        let back: Vec<Bytes> = stream
            .try_collect()
            .await
            .map_err(|e| c.fail(format!("{name}: reading back: {e}")))?;
        let back = back.concat();
        c.ensure(back == data[..], || {
            format!("{name}: read back {} bytes differing", back.len())
        })?;
        c.ok("delete", target.delete(name).await)?;
    }
    Ok(())
}

/// A failing body gives [`ErrorKind::Body`]; a wrong announced length gives
/// [`ErrorKind::LengthMismatch`]. Neither leaves the name looking complete
/// (a file, if left at all, is not the full content).
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn bad_bodies(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "bad_bodies",
        target,
    };
    let failing = stream::iter(vec![
        Ok(Bytes::from_static(b"first part")),
        Err(io::Error::other("source file vanished")),
    ])
    .boxed();
    c.err_kind(
        "failing body",
        target.put("bad.bin", failing, None).await,
        ErrorKind::Body,
    )?;
    let short = stream::iter(vec![Ok(Bytes::from_static(b"abc"))]).boxed();
    c.err_kind(
        "short body",
        target.put("short.bin", short, Some(10)).await,
        ErrorKind::LengthMismatch,
    )?;
    let long = stream::iter(vec![Ok(Bytes::from_static(b"abcdef"))]).boxed();
    c.err_kind(
        "long body",
        target.put("long.bin", long, Some(3)).await,
        ErrorKind::LengthMismatch,
    )?;
    for name in ["bad.bin", "short.bin", "long.bin"] {
        c.ok("cleanup", target.delete_if_exists(name).await.map(drop))?;
    }
    Ok(())
}

/// [`PutMode::Create`] refuses an existing name and keeps its content.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn create_mode(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "create_mode",
        target,
    };
    let first = Bytes::from_static(b"first");
    c.ok(
        "create new",
        target.create_bytes("once", first.clone()).await,
    )?;
    c.err_kind(
        "create existing",
        target
            .create_bytes("once", Bytes::from_static(b"second"))
            .await,
        ErrorKind::AlreadyExists,
    )?;
    let back = c.ok("get", target.get_bytes("once", 1024).await)?;
    c.ensure(back == first, || format!("content changed to {back:?}"))?;
    let body = stream::iter(vec![Ok(first.clone())]).boxed();
    c.ok(
        "overwrite mode",
        target
            .put_opts("once", body, Some(5), PutMode::Overwrite)
            .await,
    )?;
    c.ok("delete", target.delete("once").await)?;
    Ok(())
}

/// Rename moves content; a missing source is `NotFound`; an existing
/// destination is `AlreadyExists` and both files stay as they were.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn rename_rules(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "rename_rules",
        target,
    };
    let data = Bytes::from_static(b"volume");
    c.ok("put", target.put_bytes("v.partial", data.clone()).await)?;
    c.ok("rename", target.rename("v.partial", "v").await)?;
    let names = c.names().await?;
    c.ensure(names.contains("v") && !names.contains("v.partial"), || {
        format!("after rename: {names:?}")
    })?;
    let back = c.ok("get renamed", target.get_bytes("v", 1024).await)?;
    c.ensure(back == data, || format!("renamed content {back:?}"))?;
    c.err_kind(
        "rename missing",
        target.rename("v.partial", "w").await,
        ErrorKind::NotFound,
    )?;
    c.ok(
        "put other",
        target.put_bytes("w", Bytes::from_static(b"other")).await,
    )?;
    c.err_kind(
        "rename onto existing",
        target.rename("v", "w").await,
        ErrorKind::AlreadyExists,
    )?;
    let back = c.ok("get kept", target.get_bytes("w", 1024).await)?;
    c.ensure(&back[..] == b"other", || {
        format!("destination changed to {back:?}")
    })?;
    c.ok("delete v", target.delete("v").await)?;
    c.ok("delete w", target.delete("w").await)?;
    Ok(())
}

/// Deleting removes the file; missing files are `NotFound` for delete, get
/// and md5.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn delete_and_missing(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "delete_and_missing",
        target,
    };
    c.ok(
        "put",
        target.put_bytes("gone", Bytes::from_static(b"x")).await,
    )?;
    c.ok("delete", target.delete("gone").await)?;
    let names = c.names().await?;
    c.ensure(!names.contains("gone"), || {
        "deleted file still listed".to_owned()
    })?;
    c.err_kind(
        "delete again",
        target.delete("gone").await,
        ErrorKind::NotFound,
    )?;
    c.err_kind(
        "get missing",
        target.get("gone").await.map(drop),
        ErrorKind::NotFound,
    )?;
    c.err_kind("md5 missing", target.md5("gone").await, ErrorKind::NotFound)?;
    let deleted = c.ok("delete_if_exists", target.delete_if_exists("gone").await)?;
    c.ensure(!deleted, || {
        "delete_if_exists claimed a deletion".to_owned()
    })
}

/// Names with separators or dot segments are refused before anything
/// happens.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn invalid_names(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "invalid_names",
        target,
    };
    for name in ["", ".", "..", "../escape", "a/b", "/abs", "a\\b"] {
        let what = format!("name {name:?}");
        let body = Bytes::from_static(b"x");
        c.err_kind(
            &what,
            target.put_bytes(name, body).await,
            ErrorKind::InvalidName,
        )?;
        c.err_kind(&what, target.md5(name).await, ErrorKind::InvalidName)?;
        c.err_kind(
            &what,
            target.get(name).await.map(drop),
            ErrorKind::InvalidName,
        )?;
        c.err_kind(&what, target.delete(name).await, ErrorKind::InvalidName)?;
        c.err_kind(
            &what,
            target.rename(name, "ok").await,
            ErrorKind::InvalidName,
        )?;
        c.err_kind(
            &what,
            target.rename("ok", name).await,
            ErrorKind::InvalidName,
        )?;
    }
    let names = c.names().await?;
    c.ensure(names.is_empty(), || {
        format!("refused names left files: {names:?}")
    })
}

/// Names with spaces, `%`, `&`, `+`, `#`, `?`, quotes and non-ASCII survive
/// every operation (URL and form encoding bugs show up here).
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn awkward_names(target: &dyn Target) -> Outcome {
    let c = Checker {
        check: "awkward_names",
        target,
    };
    for (i, name) in [
        "with space.txt",
        "per%20cent+plus&amp#hash?q=1",
        "quote\"s 'and' ;semi",
        "ünïcödé-日本.txt",
        ".hidden",
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(100 + i, i as u8);
        c.ok(name, target.put_bytes(name, data.clone()).await)?;
        let names = c.names().await?;
        c.ensure(names.contains(name), || {
            format!("{name:?} listed as {names:?}")
        })?;
        let md5 = c.ok(name, target.md5(name).await)?;
        c.ensure(md5 == md5_hex(&data), || format!("{name:?}: md5 {md5}"))?;
        let renamed = format!("{name}.renamed");
        c.ok(name, target.rename(name, &renamed).await)?;
        let back = c.ok(name, target.get_bytes(&renamed, 1024).await)?;
        c.ensure(back == data, || format!("{name:?}: content differs"))?;
        c.ok(name, target.delete(&renamed).await)?;
    }
    let names = c.names().await?;
    c.ensure(names.is_empty(), || format!("left behind: {names:?}"))
}

/// `n` files all appear in one listing (paged backends must fetch every
/// page), with their sizes.
///
/// # Errors
/// A [`Failure`] saying what differed.
pub async fn list_many(target: &dyn Target, n: usize) -> Outcome {
    let c = Checker {
        check: "list_many",
        target,
    };
    let names: Vec<String> = (0..n).map(|i| format!("file-{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        let data = Bytes::from(vec![b'x'; i % 7]);
        c.ok(name, target.put_bytes(name, data).await)?;
    }
    let entries = c.ok("list", target.list().await)?;
    c.ensure(entries.len() == n, || {
        format!("listed {} of {n}", entries.len())
    })?;
    for entry in &entries {
        let i: usize = entry
            .name
            .strip_prefix("file-")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| c.fail(format!("unexpected entry {:?}", entry.name)))?;
        c.ensure(entry.size == (i % 7) as u64, || {
            format!("{}: size {}", entry.name, entry.size)
        })?;
    }
    for name in &names {
        c.ok(name, target.delete(name).await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{DryRunTarget, FlakyTarget, MemoryTarget};

    #[tokio::test]
    async fn memory_target_conforms() {
        run_all(&MemoryTarget::new()).await.unwrap();
    }

    #[tokio::test]
    async fn flaky_target_without_faults_conforms() {
        run_all(&FlakyTarget::new(MemoryTarget::new()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_broken_target_fails_the_suite() {
        let flaky = FlakyTarget::new(MemoryTarget::new());
        flaky.fail_always(
            crate::repo::target::Operation::Md5,
            crate::repo::Fault::WrongMd5,
        );
        let failure = run_all(&flaky).await.unwrap_err();
        assert_eq!(failure.check, "put_get_md5");
        // A dry run changes nothing, so it cannot conform.
        assert!(
            run_all(&DryRunTarget::new(MemoryTarget::new()))
                .await
                .is_err()
        );
    }
}
