//! File Station operations on the emulator's disk: list, getinfo, create
//! folder, check permission, rename, delete, MD5 and dir size.
//!
//! All functions here are synchronous; the server calls them on blocking
//! threads. They never touch a path that did not go through
//! [`Shares::resolve`].

use std::{
    collections::HashSet,
    fs::{self, Metadata},
    io::Read,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use globset::{GlobBuilder, GlobMatcher};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{
    params::Params,
    paths::{Resolved, Shares, check_name, is_hidden},
    reply::{ApiResult, Fail, code, path_error},
};

/// What file operations need from the emulator's set-up.
#[derive(Debug, Clone)]
pub(crate) struct FsCtx {
    /// The shares.
    pub shares: Shares,
    /// The account, reported as the owner of every file.
    pub user: String,
    /// `List` page size when no `limit` is given.
    pub list_default_limit: u32,
}

/// Which `additional` fields were asked for.
struct Additional(HashSet<String>);

impl Additional {
    fn from_params(params: &Params) -> Self {
        Self(
            params
                .list("additional")
                .unwrap_or_default()
                .into_iter()
                .collect(),
        )
    }

    fn has(&self, field: &str) -> bool {
        self.0.contains(field)
    }
}

fn secs(time: std::io::Result<SystemTime>) -> i64 {
    time.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn times(meta: &Metadata) -> Value {
    let mtime = secs(meta.modified());
    json!({
        "atime": secs(meta.accessed()),
        "crtime": meta.created().map_or(mtime, |t| secs(Ok(t))),
        "ctime": mtime,
        "mtime": mtime,
    })
}

#[cfg(unix)]
fn posix(meta: &Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    // DSM shows the octal mode as decimal digits: 0o755 → 755.
    format!("{:o}", meta.permissions().mode() & 0o777)
        .parse()
        .unwrap_or(0)
}

#[cfg(not(unix))]
fn posix(_meta: &Metadata) -> u32 {
    777
}

fn owner(user: &str) -> Value {
    json!({ "gid": 100, "group": "users", "uid": 1026, "user": user })
}

fn file_type(name: &str, is_dir: bool) -> String {
    if is_dir {
        return String::new();
    }
    Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_uppercase())
        .unwrap_or_default()
}

/// One `files[]` entry (also used for getinfo and rename answers).
fn file_entry(ctx: &FsCtx, dsm: &str, name: &str, meta: &Metadata, add: &Additional) -> Value {
    let mut entry = json!({ "isdir": meta.is_dir(), "name": name, "path": dsm });
    let mut extra = serde_json::Map::new();
    if add.has("real_path") {
        extra.insert("real_path".into(), json!(Shares::real_path(dsm)));
    }
    if add.has("size") {
        extra.insert("size".into(), json!(meta.len()));
    }
    if add.has("owner") {
        extra.insert("owner".into(), owner(&ctx.user));
    }
    if add.has("time") {
        extra.insert("time".into(), times(meta));
    }
    if add.has("perm") {
        extra.insert(
            "perm".into(),
            json!({ "acl": acl(), "is_acl_mode": true, "posix": posix(meta) }),
        );
    }
    if add.has("mount_point_type") {
        extra.insert("mount_point_type".into(), json!(""));
    }
    if add.has("type") {
        extra.insert("type".into(), json!(file_type(name, meta.is_dir())));
    }
    if !extra.is_empty() {
        entry["additional"] = Value::Object(extra);
    }
    entry
}

fn acl() -> Value {
    json!({ "append": true, "del": true, "exec": true, "read": true, "write": true })
}

/// One `shares[]` entry.
fn share_entry(ctx: &FsCtx, name: &str, meta: &Metadata, add: &Additional) -> Value {
    let dsm = format!("/{name}");
    let mut entry = json!({ "isdir": true, "name": name, "path": dsm });
    let mut extra = serde_json::Map::new();
    if add.has("real_path") {
        extra.insert("real_path".into(), json!(Shares::real_path(&dsm)));
    }
    if add.has("owner") {
        extra.insert("owner".into(), owner(&ctx.user));
    }
    if add.has("time") {
        extra.insert("time".into(), times(meta));
    }
    if add.has("perm") {
        extra.insert(
            "perm".into(),
            json!({
                "acl": acl(), "acl_enable": true,
                "adv_right": { "disable_download": false, "disable_list": false, "disable_modify": false },
                "is_acl_mode": true, "is_share_readonly": false, "posix": 0, "share_right": "RW"
            }),
        );
    }
    if add.has("mount_point_type") {
        extra.insert("mount_point_type".into(), json!(""));
    }
    if add.has("sync_share") {
        extra.insert("sync_share".into(), json!(false));
    }
    if add.has("volume_status") {
        extra.insert(
            "volume_status".into(),
            json!({ "freespace": 3_000_000_000_000u64, "readonly": false, "totalspace": 4_000_000_000_000u64 }),
        );
    }
    if !extra.is_empty() {
        entry["additional"] = Value::Object(extra);
    }
    entry
}

/// The requested page: `offset` (default 0) and `limit` (default: the small
/// default page; `0` or negative: everything, as the guide says).
fn page(ctx: &FsCtx, params: &Params, total: usize) -> Result<(usize, usize), Fail> {
    let invalid = || Fail::new(code::INVALID_PARAM);
    let offset = match params.i64("offset") {
        None => 0,
        Some(Ok(n)) => usize::try_from(n.max(0)).map_err(|_| invalid())?,
        Some(Err(())) => return Err(invalid()),
    };
    let limit = match params.i64("limit") {
        None => ctx.list_default_limit as usize,
        Some(Ok(n)) if n <= 0 => total,
        Some(Ok(n)) => usize::try_from(n).map_err(|_| invalid())?,
        Some(Err(())) => return Err(invalid()),
    };
    let start = offset.min(total);
    Ok((start, start.saturating_add(limit).min(total)))
}

/// `SYNO.FileStation.List` `list_share`.
pub(crate) fn list_share(ctx: &FsCtx, params: &Params) -> ApiResult {
    let add = Additional::from_params(params);
    let mut shares = Vec::new();
    for name in ctx.shares.names() {
        if let Ok(meta) = fs::metadata(ctx.shares.share_dir(name)) {
            shares.push((name.clone(), meta));
        }
    }
    if matches!(params.string("sort_direction").as_deref(), Some("desc")) {
        shares.sort_by(|a, b| b.0.cmp(&a.0));
    } else {
        shares.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let (start, end) = page(ctx, params, shares.len())?;
    let page: Vec<Value> = shares[start..end]
        .iter()
        .map(|(name, meta)| share_entry(ctx, name, meta, &add))
        .collect();
    Ok(Some(
        json!({ "offset": start, "shares": page, "total": shares.len() }),
    ))
}

struct Listed {
    name: String,
    meta: Metadata,
}

/// `SYNO.FileStation.List` `list`.
pub(crate) fn list(ctx: &FsCtx, params: &Params) -> ApiResult {
    let folder = params
        .single("folder_path")
        .ok_or_else(|| Fail::new(code::MISSING_PARAMS))?;
    let dir = ctx.shares.resolve(&folder).map_err(Fail::new)?;
    if !dir.fs.is_dir() {
        return Err(Fail::new(code::NOT_FOUND));
    }
    let filter = Filter::from_params(params)?;
    let mut entries = read_dir(&dir.fs)?
        .into_iter()
        .filter(|e| filter.keeps(e))
        .collect::<Vec<_>>();
    sort_entries(&mut entries, params);
    let (start, end) = page(ctx, params, entries.len())?;
    let add = Additional::from_params(params);
    let files: Vec<Value> = entries[start..end]
        .iter()
        .map(|e| {
            file_entry(
                ctx,
                &format!("{}/{}", dir.dsm, e.name),
                &e.name,
                &e.meta,
                &add,
            )
        })
        .collect();
    Ok(Some(
        json!({ "files": files, "offset": start, "total": entries.len() }),
    ))
}

fn read_dir(dir: &Path) -> Result<Vec<Listed>, Fail> {
    let reader = fs::read_dir(dir).map_err(|_| Fail::new(code::IO))?;
    let mut out = Vec::new();
    for item in reader.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        if let Ok(meta) = fs::metadata(item.path()) {
            out.push(Listed { name, meta });
        }
    }
    Ok(out)
}

/// `filetype` and `pattern` of a listing.
struct Filter {
    want_files: bool,
    want_dirs: bool,
    patterns: Vec<GlobMatcher>,
}

impl Filter {
    fn from_params(params: &Params) -> Result<Self, Fail> {
        let (want_files, want_dirs) = match params.string("filetype").as_deref() {
            None | Some("all") => (true, true),
            Some("file") => (true, false),
            Some("dir") => (false, true),
            Some(_) => return Err(Fail::new(code::INVALID_PARAM)),
        };
        let mut patterns = Vec::new();
        for pattern in params.list("pattern").unwrap_or_default() {
            if pattern.is_empty() {
                continue;
            }
            // DSM matches a pattern without wildcards as a substring.
            let glob = if pattern.contains(['*', '?', '[']) {
                pattern
            } else {
                format!("*{pattern}*")
            };
            let matcher = GlobBuilder::new(&glob)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|_| Fail::new(code::INVALID_PARAM))?
                .compile_matcher();
            patterns.push(matcher);
        }
        Ok(Self {
            want_files,
            want_dirs,
            patterns,
        })
    }

    fn keeps(&self, entry: &Listed) -> bool {
        let kind_ok = if entry.meta.is_dir() {
            self.want_dirs
        } else {
            self.want_files
        };
        kind_ok
            && (self.patterns.is_empty() || self.patterns.iter().any(|p| p.is_match(&entry.name)))
    }
}

fn sort_entries(entries: &mut [Listed], params: &Params) {
    let key = params
        .string("sort_by")
        .unwrap_or_else(|| "name".to_owned());
    entries.sort_by(|a, b| {
        let by_name = a.name.cmp(&b.name);
        let primary = match key.as_str() {
            "size" => a.meta.len().cmp(&b.meta.len()),
            "mtime" | "ctime" => secs(a.meta.modified()).cmp(&secs(b.meta.modified())),
            "atime" => secs(a.meta.accessed()).cmp(&secs(b.meta.accessed())),
            "crtime" => secs(a.meta.created()).cmp(&secs(b.meta.created())),
            "type" => file_type(&a.name, a.meta.is_dir()).cmp(&file_type(&b.name, b.meta.is_dir())),
            _ => std::cmp::Ordering::Equal,
        };
        primary.then(by_name)
    });
    if matches!(params.string("sort_direction").as_deref(), Some("desc")) {
        entries.reverse();
    }
}

/// `SYNO.FileStation.List` `getinfo`: one entry per path; a missing one gets
/// an entry with `code` 408 instead of failing the call.
pub(crate) fn getinfo(ctx: &FsCtx, params: &Params) -> ApiResult {
    let paths = params
        .list("path")
        .ok_or_else(|| Fail::new(code::MISSING_PARAMS))?;
    let add = Additional::from_params(params);
    let files: Vec<Value> = paths
        .iter()
        .map(|path| match ctx.shares.resolve(path) {
            Err(c) => json!({ "code": c, "path": path }),
            Ok(r) => match fs::metadata(&r.fs) {
                Ok(meta) => file_entry(ctx, &r.dsm, r.name(), &meta, &add),
                Err(_) => json!({ "code": code::NOT_FOUND, "name": r.name(), "path": r.dsm }),
            },
        })
        .collect();
    Ok(Some(json!({ "files": files })))
}

fn required_list(params: &Params, key: &str) -> Result<Vec<String>, Fail> {
    match params.list(key) {
        Some(list) if !list.is_empty() => Ok(list),
        _ => Err(Fail::new(code::MISSING_PARAMS)),
    }
}

fn flag(params: &Params, key: &str, default: bool) -> Result<bool, Fail> {
    match params.bool(key) {
        None => Ok(default),
        Some(Ok(b)) => Ok(b),
        Some(Err(())) => Err(Fail::new(code::INVALID_PARAM)),
    }
}

/// Pairs `paths` with `names` (same length, or one path for every name).
fn pair_up(paths: Vec<String>, names: Vec<String>) -> Result<Vec<(String, String)>, Fail> {
    if paths.len() == names.len() {
        Ok(paths.into_iter().zip(names).collect())
    } else if paths.len() == 1 {
        Ok(names.into_iter().map(|n| (paths[0].clone(), n)).collect())
    } else {
        Err(Fail::new(code::INVALID_PARAM))
    }
}

/// `SYNO.FileStation.CreateFolder` `create`: 1100 with the per-path code
/// (408 parent missing without `force_parent`, 414 exists, 419 bad name).
pub(crate) fn create_folder(ctx: &FsCtx, params: &Params) -> ApiResult {
    let pairs = pair_up(
        required_list(params, "folder_path")?,
        required_list(params, "name")?,
    )?;
    let force_parent = flag(params, "force_parent", false)?;
    let add = Additional::from_params(params);
    let mut folders = Vec::new();
    for (parent, name) in pairs {
        let shown = format!("{parent}/{name}");
        let created = create_one(ctx, &parent, &name, force_parent)
            .map_err(|c| Fail::with_errors(code::CREATE_FAILED, vec![path_error(c, &shown)]))?;
        let meta = fs::metadata(&created.fs).map_err(|_| Fail::new(code::IO))?;
        folders.push(file_entry(ctx, &created.dsm, created.name(), &meta, &add));
    }
    Ok(Some(json!({ "folders": folders })))
}

fn create_one(ctx: &FsCtx, parent: &str, name: &str, force_parent: bool) -> Result<Resolved, i32> {
    check_name(name)?;
    let parent = ctx.shares.resolve(parent)?;
    let target = ctx.shares.child(&parent, name)?;
    if !parent.fs.is_dir() {
        if !force_parent || parent.fs.exists() {
            return Err(code::NOT_FOUND);
        }
        fs::create_dir_all(&parent.fs).map_err(|_| code::IO)?;
    }
    match fs::metadata(&target.fs) {
        Ok(meta) if meta.is_dir() && force_parent => Ok(target),
        Ok(_) => Err(code::EXISTS),
        Err(_) => {
            fs::create_dir(&target.fs).map_err(|_| code::IO)?;
            Ok(target)
        }
    }
}

/// `SYNO.FileStation.CheckPermission` `write`: 408 when the folder is
/// missing, 414 when `create_only` and the file exists.
pub(crate) fn check_permission(ctx: &FsCtx, params: &Params) -> ApiResult {
    let folder = params
        .single("path")
        .ok_or_else(|| Fail::new(code::MISSING_PARAMS))?;
    let dir = ctx.shares.resolve(&folder).map_err(Fail::new)?;
    if !dir.fs.is_dir() {
        return Err(Fail::new(code::NOT_FOUND));
    }
    if let Some(name) = params.string("filename") {
        let target = ctx.shares.child(&dir, &name).map_err(Fail::new)?;
        if flag(params, "create_only", false)? && target.fs.exists() {
            return Err(Fail::new(code::EXISTS));
        }
    }
    Ok(None)
}

/// `SYNO.FileStation.Rename` `rename`: 1200 with the per-path code.
pub(crate) fn rename(ctx: &FsCtx, params: &Params) -> ApiResult {
    let pairs = pair_up(
        required_list(params, "path")?,
        required_list(params, "name")?,
    )?;
    let add = Additional::from_params(params);
    let mut files = Vec::new();
    for (path, name) in pairs {
        let renamed = rename_one(ctx, &path, &name)
            .map_err(|c| Fail::with_errors(code::RENAME_FAILED, vec![path_error(c, &path)]))?;
        let meta = fs::metadata(&renamed.fs).map_err(|_| Fail::new(code::IO))?;
        files.push(file_entry(ctx, &renamed.dsm, renamed.name(), &meta, &add));
    }
    Ok(Some(json!({ "files": files })))
}

fn rename_one(ctx: &FsCtx, path: &str, name: &str) -> Result<Resolved, i32> {
    check_name(name)?;
    let from = ctx.shares.resolve(path)?;
    if from.is_share_root {
        return Err(code::NOT_PERMITTED);
    }
    if fs::symlink_metadata(&from.fs).is_err() {
        return Err(code::NOT_FOUND);
    }
    let parent = ctx.shares.resolve(from.parent_dsm())?;
    let to = ctx.shares.child(&parent, name)?;
    if to.fs != from.fs && fs::symlink_metadata(&to.fs).is_ok() {
        return Err(code::EXISTS);
    }
    fs::rename(&from.fs, &to.fs).map_err(|_| code::IO)?;
    Ok(to)
}

/// Resolves the `path` list of a delete, refusing share roots (407).
pub(crate) fn delete_targets(ctx: &FsCtx, params: &Params) -> Result<(Vec<Resolved>, bool), Fail> {
    let paths = required_list(params, "path")?;
    let recursive = flag(params, "recursive", true)?;
    let mut targets = Vec::new();
    for path in paths {
        match ctx.shares.resolve(&path) {
            Ok(r) if r.is_share_root => {
                return Err(Fail::with_errors(
                    code::DELETE_FAILED,
                    vec![path_error(code::NOT_PERMITTED, &path)],
                ));
            }
            Ok(r) => targets.push(r),
            Err(c) => {
                return Err(Fail::with_errors(
                    code::DELETE_FAILED,
                    vec![path_error(c, &path)],
                ));
            }
        }
    }
    Ok((targets, recursive))
}

/// Deletes `targets`; 900 listing the paths that failed (408 missing, 407
/// a non-empty folder without `recursive`).
pub(crate) fn delete(
    targets: &[Resolved],
    recursive: bool,
    cancel: &AtomicBool,
) -> Result<Value, Fail> {
    let mut errors = Vec::new();
    let mut done = 0usize;
    for target in targets {
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        match delete_one(&target.fs, recursive) {
            Ok(()) => done += 1,
            Err(c) => errors.push(path_error(c, &target.dsm)),
        }
    }
    if !errors.is_empty() {
        return Err(Fail::with_errors(code::DELETE_FAILED, errors));
    }
    let shown = targets.first().map(|t| t.dsm.clone()).unwrap_or_default();
    Ok(json!({
        "path": shown, "processed_num": done, "processing_path": "",
        "progress": 1.0, "total": targets.len()
    }))
}

fn delete_one(path: &Path, recursive: bool) -> Result<(), i32> {
    let meta = fs::symlink_metadata(path).map_err(|_| code::NOT_FOUND)?;
    let result = if !meta.is_dir() {
        fs::remove_file(path)
    } else if recursive {
        fs::remove_dir_all(path)
    } else {
        fs::remove_dir(path).map_err(|_| std::io::Error::other("not empty"))
    };
    match result {
        Ok(()) => Ok(()),
        Err(_) if meta.is_dir() && !recursive => Err(code::NOT_PERMITTED),
        Err(_) => Err(code::IO),
    }
}

/// MD5 of a file as lower-case hex, reading 1 MiB at a time.
pub(crate) fn md5_file(path: &Path, cancel: &AtomicBool) -> Result<Value, Fail> {
    let mut file = fs::File::open(path).map_err(|_| Fail::new(code::NOT_FOUND))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(Fail::new(code::NO_SUCH_TASK));
        }
        let n = file.read(&mut buf).map_err(|_| Fail::new(code::IO))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(json!({ "md5": hex::encode(hasher.finalize()) }))
}

/// Totals of a tree walk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Folders below the starting points.
    pub dirs: u64,
    /// Files.
    pub files: u64,
    /// Bytes in files.
    pub bytes: u64,
}

/// Walks `path` without following links.
pub(crate) fn walk(path: &Path, totals: &mut Totals, cancel: &AtomicBool) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        totals.files += 1;
        totals.bytes += meta.len();
        return;
    }
    let Ok(reader) = fs::read_dir(path) else {
        return;
    };
    for item in reader.flatten() {
        if cancel.load(Ordering::SeqCst) {
            return;
        }
        if item.file_type().is_ok_and(|t| t.is_dir()) {
            totals.dirs += 1;
        }
        walk(&item.path(), totals, cancel);
    }
}

/// `SYNO.FileStation.DirSize` result for `targets`.
pub(crate) fn dir_size(targets: &[Resolved], cancel: &AtomicBool) -> Result<Value, Fail> {
    let mut totals = Totals::default();
    for target in targets {
        walk(&target.fs, &mut totals, cancel);
    }
    Ok(json!({ "num_dir": totals.dirs, "num_file": totals.files, "total_size": totals.bytes }))
}

/// Resolves paths that must exist (MD5, DirSize start): 408 otherwise.
pub(crate) fn existing(ctx: &FsCtx, paths: &[String]) -> Result<Vec<Resolved>, Fail> {
    paths
        .iter()
        .map(|p| {
            let r = ctx.shares.resolve(p).map_err(Fail::new)?;
            if r.fs.exists() {
                Ok(r)
            } else {
                Err(Fail::new(code::NOT_FOUND))
            }
        })
        .collect()
}
