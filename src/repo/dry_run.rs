//! [`DryRunTarget`]: wraps any [`Target`]; reads pass through, changes
//! (put, rename, delete, folder creation) are recorded instead of made.
//!
//! `forget --dry-run` and cleanup plans run the real code against it and
//! print [`DryRunTarget::actions`]. Depends only on the [`Target`] trait.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use futures_util::future::BoxFuture;

use super::target::{GetStream, PutBody, PutMode, RemoteEntry, Result, Target, validate_name};

/// A change that a dry run skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DryRunAction {
    /// The job folder would have been created.
    EnsureFolder,
    /// `name` would have been uploaded (`len` bytes, when known).
    Put {
        /// The file name.
        name: String,
        /// The announced length.
        len: Option<u64>,
    },
    /// `from` would have been renamed to `to`.
    Rename {
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// `name` would have been deleted.
    Delete {
        /// The file name.
        name: String,
    },
}

impl fmt::Display for DryRunAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DryRunAction::EnsureFolder => f.write_str("would create the job folder"),
            DryRunAction::Put { name, len: Some(n) } => {
                write!(f, "would upload {name} ({n} bytes)")
            }
            DryRunAction::Put { name, len: None } => write!(f, "would upload {name}"),
            DryRunAction::Rename { from, to } => write!(f, "would rename {from} to {to}"),
            DryRunAction::Delete { name } => write!(f, "would delete {name}"),
        }
    }
}

/// A [`Target`] wrapper that records changes instead of making them.
///
/// Mutations succeed without checking that the named files exist (only the
/// names are validated); the body of a `put` is dropped unread.
pub struct DryRunTarget<T> {
    inner: T,
    actions: Mutex<Vec<DryRunAction>>,
}

impl<T: Target> fmt::Debug for DryRunTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DryRunTarget")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T: Target> fmt::Display for DryRunTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dry-run({})", self.inner)
    }
}

impl<T: Target> DryRunTarget<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            actions: Mutex::default(),
        }
    }

    /// The wrapped target.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The changes skipped so far, in order.
    pub fn actions(&self) -> Vec<DryRunAction> {
        self.log().clone()
    }

    /// Poisoning is recovered: the log is plain data.
    fn log(&self) -> MutexGuard<'_, Vec<DryRunAction>> {
        self.actions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, action: DryRunAction) {
        tracing::debug!(target = %self.inner, %action, "dry run");
        self.log().push(action);
    }
}

impl<T: Target> Target for DryRunTarget<T> {
    fn ensure_folder(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.record(DryRunAction::EnsureFolder);
            Ok(())
        })
    }

    fn put_opts<'a>(
        &'a self,
        name: &'a str,
        _body: PutBody,
        len: Option<u64>,
        _mode: PutMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_name(name)?;
            self.record(DryRunAction::Put {
                name: name.to_owned(),
                len,
            });
            Ok(())
        })
    }

    fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>> {
        self.inner.md5(name)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
        self.inner.list()
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>> {
        self.inner.get(name)
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_name(from)?;
            validate_name(to)?;
            self.record(DryRunAction::Rename {
                from: from.to_owned(),
                to: to.to_owned(),
            });
            Ok(())
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_name(name)?;
            self.record(DryRunAction::Delete {
                name: name.to_owned(),
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryTarget;
    use crate::repo::target::TargetExt;
    use bytes::Bytes;

    #[tokio::test]
    async fn changes_are_recorded_not_made() {
        let memory = MemoryTarget::with_folder();
        memory
            .put_bytes("a", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let dry = DryRunTarget::new(memory.clone());
        dry.delete("a").await.unwrap();
        dry.rename("a", "b").await.unwrap();
        dry.put_bytes("c", Bytes::from_static(b"yz")).await.unwrap();
        assert_eq!(memory.names(), ["a"]);
        assert_eq!(dry.list().await.unwrap().len(), 1);
        let printed: Vec<String> = dry.actions().iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "would delete a",
                "would rename a to b",
                "would upload c (2 bytes)"
            ]
        );
        assert!(dry.delete("../x").await.is_err());
    }
}
