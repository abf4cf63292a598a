//! Background tasks (`start` → `status` … → `stop`), as DSM runs MD5, delete
//! and dir-size: the work runs on a blocking thread and `status` answers
//! `finished: false` until it is done.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::RngExt;
use serde_json::{Value, json};

use super::{
    lock,
    reply::{ApiResult, Fail, code},
};

/// The kinds of task; a task id only answers to its own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskKind {
    /// `SYNO.FileStation.MD5`.
    Md5,
    /// `SYNO.FileStation.Delete`.
    Delete,
    /// `SYNO.FileStation.DirSize`.
    DirSize,
}

impl TaskKind {
    fn running(self) -> Value {
        match self {
            Self::Md5 => json!({ "finished": false }),
            Self::Delete => json!({
                "finished": false, "processed_num": 0, "processing_path": "",
                "progress": 0.0, "total": -1
            }),
            Self::DirSize => json!({
                "finished": false, "num_dir": 0, "num_file": 0, "total_size": 0
            }),
        }
    }
}

/// Work done by a task: gets a flag that turns true when it should stop.
pub(crate) type Job = Box<dyn FnOnce(&AtomicBool) -> Result<Value, Fail> + Send>;

#[derive(Debug)]
struct Task {
    kind: TaskKind,
    cancel: Arc<AtomicBool>,
    result: Mutex<Option<Result<Value, Fail>>>,
}

/// The running and finished tasks.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    map: Mutex<HashMap<String, Arc<Task>>>,
}

impl Tasks {
    /// Starts `job` on a blocking thread; it reports `finished: false` for
    /// at least `min_duration`. Returns the task id.
    ///
    /// The thread is not joined: it checks the cancel flag, which `stop`,
    /// [`Tasks::clear`] and the emulator's shutdown set.
    pub fn start(&self, kind: TaskKind, min_duration: Option<Duration>, job: Job) -> String {
        let id = format!("FileStation_{:016X}", rand::rng().random::<u64>());
        let task = Arc::new(Task {
            kind,
            cancel: Arc::new(AtomicBool::new(false)),
            result: Mutex::new(None),
        });
        lock(&self.map).insert(id.clone(), Arc::clone(&task));
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = job(&task.cancel);
            if let Some(min) = min_duration {
                while started.elapsed() < min && !task.cancel.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            *lock(&task.result) = Some(result);
        });
        id
    }

    /// `status`: `finished: false` while running, then the result
    /// (with `finished: true`); 599 for an unknown id.
    pub fn status(&self, kind: TaskKind, id: &str) -> ApiResult {
        let task = self.find(kind, id)?;
        let result = lock(&task.result).clone();
        match result {
            None => Ok(Some(kind.running())),
            Some(Ok(mut data)) => {
                data["finished"] = json!(true);
                Ok(Some(data))
            }
            Some(Err(fail)) => Err(fail),
        }
    }

    /// `stop`: cancels and forgets the task; 599 for an unknown id.
    pub fn stop(&self, kind: TaskKind, id: &str) -> ApiResult {
        let task = self.find(kind, id)?;
        task.cancel.store(true, Ordering::SeqCst);
        lock(&self.map).remove(id);
        Ok(None)
    }

    /// Cancels and forgets every task (a reboot, or the emulator stopping).
    pub fn clear(&self) {
        for (_, task) in lock(&self.map).drain() {
            task.cancel.store(true, Ordering::SeqCst);
        }
    }

    fn find(&self, kind: TaskKind, id: &str) -> Result<Arc<Task>, Fail> {
        lock(&self.map)
            .get(id)
            .filter(|t| t.kind == kind)
            .cloned()
            .ok_or_else(|| Fail::new(code::NO_SUCH_TASK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_is_unfinished_until_the_job_ends() {
        let tasks = Tasks::default();
        let id = tasks.start(
            TaskKind::Md5,
            Some(Duration::from_millis(100)),
            Box::new(|_| Ok(json!({ "md5": "abc" }))),
        );
        assert_eq!(
            tasks.status(TaskKind::Md5, &id).unwrap().unwrap()["finished"],
            false
        );
        assert_eq!(tasks.status(TaskKind::Delete, &id).unwrap_err().code, 599);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = tasks.status(TaskKind::Md5, &id).unwrap().unwrap();
        assert_eq!(done, json!({ "md5": "abc", "finished": true }));
        assert!(tasks.stop(TaskKind::Md5, &id).is_ok());
        assert_eq!(tasks.status(TaskKind::Md5, &id).unwrap_err().code, 599);
    }
}
