//! File Station calls that exchange JSON only: listing, info, folders,
//! permissions, rename, delete, and the background tasks (MD5, DirSize,
//! Delete).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::api;
use super::client::Client;
use super::error::{Error, Result};
use super::params::Params;
use super::path::{RemotePath, check_name};
use super::wire::{
    DsmInfo, FileEntry, FileInfo, InfoReply, ListPage, NasInfo, SharePage, TaskStart, TaskStatus,
    WireEntry,
};

/// Entries asked per `list` page (DSM's default page is small).
const PAGE: u64 = 1000;
/// Delay before the first task status poll. Status calls are cheap, and a
/// backup waits on the MD5 task of every volume, so time between the task's
/// end and our noticing it is time lost: the manifest and the small last
/// volumes of a tapered archive are done within a few milliseconds.
const POLL_FIRST: Duration = Duration::from_millis(5);
/// Shortest delay between the later polls of a task that was not done at
/// the first: a long task is not asked about hundreds of times.
const POLL_MIN: Duration = Duration::from_millis(20);
/// The delay between polls is the task's running time so far divided by
/// this: a finished task is noticed at most an eighth of its time late
/// (the last volume's MD5 is the tail of every backup), and a long task on
/// a slow NAS is not asked about more than twice a second.
const POLL_LATE_FRACTION: u32 = 8;
/// Longest delay between task status polls.
const POLL_MAX: Duration = Duration::from_millis(500);

impl Client {
    /// The NAS's host name and whether the account is an administrator.
    ///
    /// # Errors
    /// Any [`Error`] from the call.
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn nas_info(&self) -> Result<NasInfo> {
        self.call(api::FS_INFO, "get", Params::new()).await
    }

    /// The NAS's model and DSM version (`SYNO.DSM.Info`).
    ///
    /// # Errors
    /// Any [`Error`] from the call; some DSM setups refuse it (105) to
    /// non-administrators.
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn dsm_info(&self) -> Result<DsmInfo> {
        self.call(api::DSM_INFO, "getinfo", Params::new()).await
    }

    /// The shared folders the account can see (every page).
    ///
    /// # Errors
    /// Any [`Error`] from the call.
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn list_shares(&self) -> Result<Vec<FileEntry>> {
        let mut out = Vec::new();
        loop {
            let params = Params::new()
                .int("offset", offset(&out))
                .int("limit", PAGE as i64)
                .list("additional", ["time"]);
            let page: SharePage = self.call(api::LIST, "list_share", params).await?;
            let got = page.shares.len();
            out.extend(page.shares.into_iter().map(WireEntry::into_entry));
            if got == 0 || out.len() as u64 >= page.total {
                return Ok(out);
            }
        }
    }

    /// Every entry of a folder, following pages until DSM's `total`.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a bad path; [`Error::Api`] with code 408
    /// (see [`Error::is_not_found`]) when the folder does not exist.
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn list(&self, folder: &str) -> Result<Vec<FileEntry>> {
        let folder = RemotePath::parse(folder)?;
        let mut out = Vec::new();
        loop {
            let params = Params::new()
                .str("folder_path", folder.as_str())
                .int("offset", offset(&out))
                .int("limit", PAGE as i64)
                .str("sort_by", "name")
                .str("sort_direction", "asc")
                .str("filetype", "all")
                .list("additional", ["size", "time"]);
            let page: ListPage = self.call(api::LIST, "list", params).await?;
            let got = page.files.len();
            out.extend(page.files.into_iter().map(WireEntry::into_entry));
            if got == 0 || out.len() as u64 >= page.total {
                return Ok(out);
            }
        }
    }

    /// Information about each path; missing paths come back with
    /// [`FileInfo::exists`] false.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a bad path, or any [`Error`] from the call.
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn get_info(&self, paths: &[&str]) -> Result<Vec<FileInfo>> {
        let paths = normalise_all(paths)?;
        let params = Params::new()
            .list("path", paths)
            .list("additional", ["size", "time"]);
        let reply: InfoReply = self.call(api::LIST, "getinfo", params).await?;
        Ok(reply.files.into_iter().map(WireEntry::into_info).collect())
    }

    /// Creates `parent/name`; with `force_parent`, missing parents too and an
    /// existing folder is not an error.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a bad path or name; [`Error::Api`] (1100
    /// with per-path entries) when DSM cannot create it.
    ///
    /// # Cancel safety
    /// Safe to drop; the folder may or may not exist afterwards.
    pub async fn create_folder(&self, parent: &str, name: &str, force_parent: bool) -> Result<()> {
        let parent = RemotePath::parse(parent)?;
        check_name(name, name)?;
        let params = Params::new()
            .list("folder_path", [parent.as_str()])
            .list("name", [name])
            .bool("force_parent", force_parent);
        self.call::<serde_json::Value>(api::CREATE_FOLDER, "create", params)
            .await?;
        Ok(())
    }

    /// Checks that the account may write `filename` into `folder`.
    ///
    /// # Errors
    /// [`Error::Api`] explaining why not (e.g. 407 not permitted, 408 no
    /// such folder, 416 no space).
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn check_permission(&self, folder: &str, filename: &str) -> Result<()> {
        let folder = RemotePath::parse(folder)?;
        check_name(filename, filename)?;
        let params = Params::new()
            .str("path", folder.as_str())
            .str("filename", filename)
            .bool("overwrite", true)
            .bool("create_only", false);
        self.call::<serde_json::Value>(api::CHECK_PERMISSION, "write", params)
            .await?;
        Ok(())
    }

    /// Renames a file or folder in place (`new_name` is a name, not a path).
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a bad path or name; [`Error::Api`] (1200
    /// with per-path entries, e.g. 408 missing or 414 exists).
    ///
    /// # Cancel safety
    /// Safe to drop; the rename may or may not have happened.
    pub async fn rename(&self, path: &str, new_name: &str) -> Result<()> {
        let path = RemotePath::parse(path)?;
        check_name(new_name, new_name)?;
        let params = Params::new()
            .list("path", [path.as_str()])
            .list("name", [new_name]);
        self.call::<serde_json::Value>(api::RENAME, "rename", params)
            .await?;
        Ok(())
    }

    /// Deletes files or folders. Without `recursive`, DSM's blocking `delete`
    /// is used; with it, the background task form (`start`/`status`), which
    /// copes with large folders.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a bad path (shared folders themselves are
    /// refused); [`Error::Api`] (900 with per-path entries).
    ///
    /// # Cancel safety
    /// Dropping the future may leave a delete task running on the NAS.
    #[tracing::instrument(level = "debug", skip_all, fields(recursive = recursive))]
    pub async fn delete(&self, paths: &[&str], recursive: bool) -> Result<()> {
        let paths = normalise_all(paths)?;
        if let Some(share) = paths.iter().find(|p| p.is_share()) {
            return Err(Error::InvalidPath {
                path: share.to_string(),
                reason: "synback never deletes a shared folder",
            });
        }
        let names: Vec<String> = paths.iter().map(|p| p.as_str().to_owned()).collect();
        let params = Params::new()
            .list("path", names.clone())
            .bool("recursive", recursive);
        if !recursive {
            self.call::<serde_json::Value>(api::DELETE, "delete", params)
                .await?;
            return Ok(());
        }
        let start: TaskStart = self
            .call(
                api::DELETE,
                "start",
                params.bool("accurate_progress", false),
            )
            .await?;
        self.wait_task(
            api::DELETE,
            &start.id(),
            &names.join(", "),
            &CancellationToken::new(),
        )
        .await?;
        Ok(())
    }

    /// The MD5 of a remote file, computed by the NAS (lowercase hex).
    ///
    /// Starts the task, polls its status with backoff until it finishes, and
    /// stops the task when `cancel` fires.
    ///
    /// # Errors
    /// [`Error::Cancelled`] on cancel; [`Error::Api`] (408 when missing);
    /// [`Error::Task`] when the NAS finishes without a digest.
    ///
    /// # Cancel safety
    /// Use `cancel` to stop: dropping the future leaves the task running.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    pub async fn md5(&self, path: &str, cancel: &CancellationToken) -> Result<String> {
        let path = RemotePath::parse(path)?;
        let start: TaskStart = self
            .call(
                api::MD5,
                "start",
                Params::new().str("file_path", path.as_str()),
            )
            .await?;
        let status = self
            .wait_task(api::MD5, &start.id(), path.as_str(), cancel)
            .await?;
        match status.md5 {
            Some(md5) if md5.len() == 32 && md5.chars().all(|c| c.is_ascii_hexdigit()) => {
                Ok(md5.to_ascii_lowercase())
            }
            other => Err(Error::Task {
                api: api::MD5.to_owned(),
                path: path.to_string(),
                reason: format!("finished without a valid MD5 (got {other:?})"),
            }),
        }
    }

    /// The total size in bytes of a folder, computed by the NAS.
    ///
    /// # Errors
    /// Any [`Error`] from the calls; [`Error::Task`] when no size is given.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the task running on the NAS.
    pub async fn dir_size(&self, path: &str) -> Result<u64> {
        let path = RemotePath::parse(path)?;
        let start: TaskStart = self
            .call(
                api::DIR_SIZE,
                "start",
                Params::new().list("path", [path.as_str()]),
            )
            .await?;
        let status = self
            .wait_task(
                api::DIR_SIZE,
                &start.id(),
                path.as_str(),
                &CancellationToken::new(),
            )
            .await?;
        status.total_size.ok_or_else(|| Error::Task {
            api: api::DIR_SIZE.to_owned(),
            path: path.to_string(),
            reason: "finished without a total size".into(),
        })
    }

    /// Polls a task's status with backoff until it is finished; stops it on cancel.
    async fn wait_task(
        &self,
        api: &'static str,
        taskid: &str,
        path: &str,
        cancel: &CancellationToken,
    ) -> Result<TaskStatus> {
        let started = tokio::time::Instant::now();
        let mut delay = POLL_FIRST;
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.stop_task(api, taskid).await;
                    return Err(Error::Cancelled { what: format!("{api} task for {path}") });
                }
                () = tokio::time::sleep(delay) => {}
            }
            let status: TaskStatus = self
                .call(api, "status", Params::new().str("taskid", taskid))
                .await?;
            if status.finished {
                return Ok(status);
            }
            delay = (started.elapsed() / POLL_LATE_FRACTION).clamp(POLL_MIN, POLL_MAX);
        }
    }

    /// Best effort: tells the NAS to stop a task.
    async fn stop_task(&self, api: &'static str, taskid: &str) {
        let result = self
            .call::<serde_json::Value>(api, "stop", Params::new().str("taskid", taskid))
            .await;
        if let Err(err) = result {
            tracing::debug!(api, error = %err, "stopping the NAS task failed");
        }
    }
}

fn offset(collected: &[FileEntry]) -> i64 {
    i64::try_from(collected.len()).unwrap_or(i64::MAX)
}

fn normalise_all(paths: &[&str]) -> Result<Vec<RemotePath>> {
    paths.iter().map(|p| RemotePath::parse(p)).collect()
}
