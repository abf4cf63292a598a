//! DSM's JSON: the `{"success": ..., "data"|"error": ...}` envelope, the
//! reply shapes synback reads, and the public types made from them.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{Error, Result};

#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: i64,
    #[serde(default)]
    errors: Option<serde_json::Value>,
}

/// Decodes a reply: the `data` as `T` on success, [`Error::Api`] on failure.
///
/// # Errors
/// [`Error::Decode`] when the body is not the envelope or `data` is not a `T`;
/// [`Error::Api`] when DSM reports `success: false`.
pub(crate) fn decode<T: DeserializeOwned>(api: &str, method: &str, body: &[u8]) -> Result<T> {
    let decode_err = |source| Error::Decode {
        api: api.to_owned(),
        method: method.to_owned(),
        source,
    };
    let envelope: Envelope = serde_json::from_slice(body).map_err(decode_err)?;
    if !envelope.success {
        let (code, errors) = match envelope.error {
            Some(e) => (e.code, file_errors(e.errors)),
            None => (100, Vec::new()),
        };
        return Err(Error::api(api, method, code, errors));
    }
    T::deserialize(envelope.data.unwrap_or(serde_json::Value::Null)).map_err(decode_err)
}

/// Reads DSM's per-file `errors`, which is usually a list of
/// `{"code": N, "path": "..."}` and sometimes a single object.
fn file_errors(value: Option<serde_json::Value>) -> Vec<(i64, Option<String>)> {
    let items = match value {
        Some(serde_json::Value::Array(items)) => items,
        Some(obj @ serde_json::Value::Object(_)) => vec![obj],
        _ => return Vec::new(),
    };
    items
        .iter()
        .filter_map(|item| {
            let code = item.get("code")?.as_i64()?;
            let path = item.get("path").and_then(|p| p.as_str()).map(str::to_owned);
            Some((code, path))
        })
        .collect()
}

/// A file or folder on the NAS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileEntry {
    /// The last path segment.
    pub name: String,
    /// The absolute DSM path (`/<share>/...`).
    pub path: String,
    /// True for folders.
    pub is_dir: bool,
    /// Size in bytes, when DSM reported it (files).
    pub size: Option<u64>,
    /// Modification time, Unix seconds, when DSM reported it.
    pub mtime: Option<i64>,
}

/// The answer of `getinfo` for one asked path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileInfo {
    /// The path as DSM echoed it.
    pub path: String,
    /// The entry, when the path exists.
    pub entry: Option<FileEntry>,
    /// The DSM code when it does not (408: no such file).
    pub code: Option<i64>,
}

impl FileInfo {
    /// True when the path exists.
    pub fn exists(&self) -> bool {
        self.entry.is_some()
    }
}

/// What `SYNO.FileStation.Info` tells about the NAS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct NasInfo {
    /// The NAS's host name.
    #[serde(default)]
    pub hostname: String,
    /// True when the account is an administrator.
    #[serde(default)]
    pub is_manager: bool,
}

#[derive(Deserialize)]
pub(crate) struct WireEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    isdir: bool,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    additional: Option<WireAdditional>,
}

#[derive(Deserialize, Default)]
struct WireAdditional {
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    time: Option<WireTime>,
}

#[derive(Deserialize, Default)]
struct WireTime {
    #[serde(default)]
    mtime: Option<i64>,
}

impl WireEntry {
    pub(crate) fn into_entry(self) -> FileEntry {
        let additional = self.additional.unwrap_or_default();
        FileEntry {
            name: self.name,
            path: self.path,
            is_dir: self.isdir,
            size: if self.isdir { None } else { additional.size },
            mtime: additional.time.and_then(|t| t.mtime),
        }
    }

    pub(crate) fn into_info(self) -> FileInfo {
        match self.code {
            Some(code) if code != 0 => FileInfo {
                path: self.path,
                entry: None,
                code: Some(code),
            },
            _ => FileInfo {
                path: self.path.clone(),
                entry: Some(self.into_entry()),
                code: None,
            },
        }
    }
}

/// One page of `list`.
#[derive(Deserialize)]
pub(crate) struct ListPage {
    #[serde(default)]
    pub(crate) files: Vec<WireEntry>,
    #[serde(default)]
    pub(crate) total: u64,
}

/// One page of `list_share`.
#[derive(Deserialize)]
pub(crate) struct SharePage {
    #[serde(default)]
    pub(crate) shares: Vec<WireEntry>,
    #[serde(default)]
    pub(crate) total: u64,
}

/// The reply of `getinfo`.
#[derive(Deserialize)]
pub(crate) struct InfoReply {
    #[serde(default)]
    pub(crate) files: Vec<WireEntry>,
}

/// The reply of a login.
#[derive(Deserialize)]
pub(crate) struct LoginReply {
    pub(crate) sid: String,
    #[serde(default)]
    pub(crate) synotoken: Option<String>,
    #[serde(default)]
    pub(crate) did: Option<String>,
}

/// The reply of a task `start`. DSM sends the id as a string; a number is
/// accepted too.
#[derive(Deserialize)]
pub(crate) struct TaskStart {
    taskid: serde_json::Value,
}

impl TaskStart {
    /// The task id as text.
    pub(crate) fn id(&self) -> String {
        match &self.taskid {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// The reply of a task `status` (MD5, DirSize, Delete).
#[derive(Deserialize)]
pub(crate) struct TaskStatus {
    #[serde(default)]
    pub(crate) finished: bool,
    #[serde(default)]
    pub(crate) md5: Option<String>,
    #[serde(default)]
    pub(crate) total_size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_success_with_and_without_data() {
        let page: ListPage = decode("SYNO.FileStation.List", "list", br#"{"success":true,"data":{"files":[
            {"isdir":false,"name":"a.tar.zst","path":"/backup/a.tar.zst","additional":{"size":42,"time":{"mtime":1700000000,"atime":1}}},
            {"isdir":true,"name":"sub","path":"/backup/sub","additional":{"size":4096}}
        ],"offset":0,"total":2}}"#).unwrap();
        assert_eq!(page.total, 2);
        let entries: Vec<FileEntry> = page.files.into_iter().map(WireEntry::into_entry).collect();
        assert_eq!(entries[0].size, Some(42));
        assert_eq!(entries[0].mtime, Some(1_700_000_000));
        assert!(entries[1].is_dir);
        assert_eq!(entries[1].size, None);
        let () = decode("SYNO.FileStation.Rename", "rename", br#"{"success":true}"#).unwrap();
    }

    #[test]
    fn decodes_failures_with_file_errors() {
        let err = decode::<()>(
            "SYNO.FileStation.CreateFolder",
            "create",
            br#"{"success":false,"error":{"code":1100,"errors":[{"code":418,"path":"/backup/x"}]}}"#,
        )
        .unwrap_err();
        match err {
            Error::Api { code, errors, .. } => {
                assert_eq!(code, 1100);
                assert_eq!(errors.0[0].code, 418);
                assert_eq!(errors.0[0].path.as_deref(), Some("/backup/x"));
            }
            other => panic!("{other:?}"),
        }
        let err = decode::<()>(
            "SYNO.FileStation.Upload",
            "upload",
            br#"{"success":false,"error":{"code":1805,"errors":{"code":414,"path":"/b/x"}}}"#,
        )
        .unwrap_err();
        assert!(err.is_already_exists());
        let err = decode::<()>("SYNO.API.Auth", "login", br#"{"success":false}"#).unwrap_err();
        assert_eq!(err.dsm_code(), Some(100));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode::<()>(
            "SYNO.FileStation.List",
            "list",
            b"<html>502 Bad Gateway</html>",
        )
        .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }

    #[test]
    fn getinfo_marks_missing_paths() {
        let reply: InfoReply = decode(
            "SYNO.FileStation.List",
            "getinfo",
            br#"{"success":true,"data":{"files":[
            {"code":408,"errors":[],"name":"nope","path":"/backup/nope"},
            {"isdir":false,"name":"x","path":"/backup/x","additional":{"size":1}}
        ]}}"#,
        )
        .unwrap();
        let infos: Vec<FileInfo> = reply.files.into_iter().map(WireEntry::into_info).collect();
        assert!(!infos[0].exists());
        assert_eq!(infos[0].code, Some(408));
        assert_eq!(infos[1].entry.as_ref().unwrap().size, Some(1));
    }

    #[test]
    fn login_and_task_replies() {
        let r: LoginReply = decode("SYNO.API.Auth", "login", br#"{"success":true,"data":{"sid":"S","synotoken":"T","did":"D","is_portal_port":false}}"#).unwrap();
        assert_eq!(
            (r.sid.as_str(), r.synotoken.as_deref(), r.did.as_deref()),
            ("S", Some("T"), Some("D"))
        );
        let s: TaskStatus = decode(
            "SYNO.FileStation.MD5",
            "status",
            br#"{"success":true,"data":{"finished":true,"md5":"abc"}}"#,
        )
        .unwrap();
        assert!(s.finished);
        let s: TaskStatus = decode("SYNO.FileStation.DirSize", "status", br#"{"success":true,"data":{"finished":false,"num_dir":1,"num_file":2,"total_size":30}}"#).unwrap();
        assert_eq!(s.total_size, Some(30));
    }
}
