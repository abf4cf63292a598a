//! The request log: one record per HTTP request, secrets masked.
//!
//! Kept in memory (the last [`MEMORY_LIMIT`] records) for tests, and written
//! as JSON lines to a file when asked.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::Write,
    path::Path,
    sync::Mutex,
};

use serde::Serialize;

use super::{Error, lock};

/// How many records the in-memory log keeps.
pub const MEMORY_LIMIT: usize = 10_000;

/// Parameter names whose values never appear in the log.
const SECRET_PARAMS: [&str; 6] = [
    "passwd",
    "otp_code",
    "_sid",
    "synotoken",
    "device_id",
    "did",
];

/// What one HTTP request asked and got.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// HTTP method.
    pub http_method: String,
    /// URL path (`/webapi/entry.cgi`).
    pub path: String,
    /// `api` parameter, when given.
    pub api: Option<String>,
    /// `method` parameter, when given.
    pub method: Option<String>,
    /// `version` parameter, when it parsed.
    pub version: Option<u32>,
    /// HTTP status of the answer.
    pub status: u16,
    /// DSM error code of the answer (`None` on success or raw answers).
    pub code: Option<i32>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes (the announced length for streamed downloads).
    pub bytes_out: u64,
    /// Where the session id came from: `param`, `cookie` or none.
    pub sid_source: Option<String>,
    /// A fault that shaped this answer (`http_502`, `busy`, `dropped`…).
    pub fault: Option<String>,
    /// Parameters (query, form, multipart text fields), secrets as `***`.
    pub params: BTreeMap<String, String>,
    /// Time to answer, in milliseconds.
    pub duration_ms: u64,
}

/// Masks secret values and shortens long ones.
pub(crate) fn masked_params<'a>(
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    pairs
        .map(|(k, v)| {
            let value = if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                "***".to_owned()
            } else if v.len() > 256 {
                let cut = (0..=256)
                    .rev()
                    .find(|i| v.is_char_boundary(*i))
                    .unwrap_or(0);
                format!("{}…", &v[..cut])
            } else {
                v.clone()
            };
            (k.clone(), value)
        })
        .collect()
}

/// The log: memory ring plus optional JSON-lines file.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    memory: Mutex<VecDeque<LoggedRequest>>,
    file: Option<Mutex<File>>,
}

impl RequestLog {
    /// A log that also appends to `path`, when given.
    pub fn open(path: Option<&Path>) -> Result<Self, Error> {
        let file = match path {
            None => None,
            Some(path) => Some(Mutex::new(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::RequestLog {
                        path: path.to_path_buf(),
                        source,
                    })?,
            )),
        };
        Ok(Self {
            memory: Mutex::default(),
            file,
        })
    }

    /// Records one request.
    pub fn push(&self, record: LoggedRequest) {
        if let Some(file) = &self.file
            && let Ok(line) = serde_json::to_string(&record)
        {
            let mut file = lock(file);
            if let Err(err) = writeln!(file, "{line}") {
                tracing::warn!(error = %err, "cannot write the emulator request log");
            }
        }
        let mut memory = lock(&self.memory);
        if memory.len() >= MEMORY_LIMIT {
            memory.pop_front();
        }
        memory.push_back(record);
    }

    /// A copy of the records in memory.
    pub fn snapshot(&self) -> Vec<LoggedRequest> {
        lock(&self.memory).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let pairs: Vec<(String, String)> = [
            ("passwd", "hunter2"),
            ("_sid", "abc"),
            ("SynoToken", "tok"),
            ("otp_code", "123456"),
            ("device_id", "dev"),
            ("account", "alice"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let masked = masked_params(pairs.iter().map(|(k, v)| (k, v)));
        let text = format!("{masked:?}");
        for secret in ["hunter2", "abc", "tok", "123456", "dev"] {
            assert!(!text.contains(&format!("\"{secret}\"")), "{text}");
        }
        assert_eq!(masked["account"], "alice");
    }
}
