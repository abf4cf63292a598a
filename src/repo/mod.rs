//! The remote layout of a job folder and the storage trait it is written
//! against.
//!
//! - [`target`]: the small async [`Target`] trait (put, md5, list, get,
//!   rename, delete, ensure_folder), its [`Error`](target::Error) and the
//!   [`TargetExt`] conveniences.
//! - [`DsmTarget`] (the job folder on a NAS, through [`crate::dsm`]),
//!   [`MemoryTarget`], and the wrappers [`FlakyTarget`] (fault injection)
//!   and [`DryRunTarget`] (records changes instead of making them).
//! - [`layout`]: job names, snapshot ids and file names.
//! - [`listing`]: a folder listing classified into snapshots, orphans,
//!   partials, the lock and foreign files; [`plan_forget`] and
//!   [`plan_cleanup`].
//! - [`lock`]: the `.lock` file that keeps two writers apart.
//!
//! # Example
//! Write a snapshot the way a backup run does, then list the folder.
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use chrono::Utc;
//! use synback::repo::layout::{Encryption, partial_name};
//! use synback::repo::{JobName, Listing, MemoryTarget, SnapshotId, Target, TargetExt};
//!
//! let target = MemoryTarget::new();
//! target.ensure_folder().await?;
//! let job = JobName::new("home")?;
//! let id = SnapshotId::new(job.clone(), Utc::now());
//! let archive = id.archive_name(Encryption::Plain);
//! let data = Bytes::from_static(b"compressed tar bytes");
//! target.put_bytes(&partial_name(&archive), data).await?;
//! let _md5 = target.md5(&partial_name(&archive)).await?; // compare with the local MD5
//! target.rename(&partial_name(&archive), &archive).await?;
//! target.put_bytes(&id.manifest_name(), Bytes::from_static(b"{}")).await?;
//!
//! let listing = Listing::load(&target, &job).await?;
//! assert_eq!(listing.latest().map(|s| &s.id), Some(&id));
//! # Ok(()) }
//! ```
//!
//! This module must not know DSM JSON or HTTP (the DSM adapter only calls
//! the `dsm` client and maps its errors), nor the archive format; the backup and restore code
//! uses it, never the other way round.

pub mod dry_run;
pub mod dsm_target;
pub mod flaky;
pub mod layout;
pub mod listing;
pub mod lock;
pub mod memory;
pub mod target;

#[cfg(any(test, feature = "test-util", feature = "emulator"))]
pub mod conformance;

pub use dry_run::{DryRunAction, DryRunTarget};
pub use dsm_target::DsmTarget;
pub use flaky::{Fault, FlakyTarget};
pub use layout::{Encryption, JobName, SnapshotId};
pub use listing::{ForgetPlan, Listing, delete_ours, plan_cleanup, plan_forget};
pub use lock::{Lock, LockInfo, LockOptions};
pub use memory::MemoryTarget;
pub use target::{PutBody, PutMode, RemoteEntry, Target, TargetExt};
