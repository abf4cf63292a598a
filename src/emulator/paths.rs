//! DSM paths (`/<share>/<rel>`) to files under the emulator's root.
//!
//! Every path a client sends goes through [`Shares::resolve`], which refuses
//! anything that could leave the root: `..`, `.`, empty components, unknown
//! shares, and symbolic links that point outside the share.

use std::path::{Path, PathBuf};

use super::reply::code;

/// Longest file name DSM accepts, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// The shares and where they live on disk.
#[derive(Debug, Clone)]
pub(crate) struct Shares {
    root: PathBuf,
    names: Vec<String>,
}

/// A client path resolved to a location inside one share.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The normalised DSM path, `/<share>/<rel>`.
    pub dsm: String,
    /// The file on disk.
    pub fs: PathBuf,
    /// True when the path is the share itself.
    pub is_share_root: bool,
}

impl Resolved {
    /// The last component of the DSM path.
    pub fn name(&self) -> &str {
        self.dsm.rsplit('/').next().unwrap_or_default()
    }

    /// The parent folder's DSM path (the share root's parent is `/`).
    pub fn parent_dsm(&self) -> &str {
        match self.dsm.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &self.dsm[..i],
        }
    }
}

impl Shares {
    /// Shares `names` under `root`.
    pub fn new(root: PathBuf, names: Vec<String>) -> Self {
        Self { root, names }
    }

    /// Share names, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where a share's files live.
    pub fn share_dir(&self, share: &str) -> PathBuf {
        self.root.join(share)
    }

    /// The `real_path` DSM reports for a DSM path (`/volume1/...`), which
    /// tells nothing about the emulator's real root.
    pub fn real_path(dsm: &str) -> String {
        format!("/volume1{dsm}")
    }

    /// Resolves a client path.
    ///
    /// Errors (DSM codes): 408 for a relative path, an empty component (so a
    /// trailing `/` too) or an unknown share; 418 for `.`/`..`/NUL or a link
    /// leading out of the share; 407 for `/` itself.
    pub fn resolve(&self, path: &str) -> Result<Resolved, i32> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(code::NOT_FOUND);
        };
        if rest.is_empty() {
            return Err(code::NOT_PERMITTED);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        for part in &parts {
            check_component(part)?;
        }
        let share = parts[0];
        if !self.names.iter().any(|n| n == share) {
            return Err(code::NOT_FOUND);
        }
        let share_dir = self.share_dir(share);
        let mut fs = share_dir.clone();
        fs.extend(&parts[1..]);
        ensure_inside(&share_dir, &fs)?;
        Ok(Resolved {
            dsm: format!("/{}", parts.join("/")),
            fs,
            is_share_root: parts.len() == 1,
        })
    }

    /// Resolves `name` inside the folder `parent` (already resolved).
    pub fn child(&self, parent: &Resolved, name: &str) -> Result<Resolved, i32> {
        check_name(name)?;
        self.resolve(&format!("{}/{}", parent.dsm, name))
    }
}

fn check_component(part: &str) -> Result<(), i32> {
    match part {
        "" => Err(code::NOT_FOUND),
        "." | ".." => Err(code::ILLEGAL_PATH),
        p if p.contains('\0') => Err(code::ILLEGAL_PATH),
        p if p.len() > MAX_NAME_BYTES => Err(code::NAME_TOO_LONG),
        _ => Ok(()),
    }
}

/// Checks a single file name (create, rename, upload): 419 when illegal,
/// 412 when too long.
pub(crate) fn check_name(name: &str) -> Result<(), i32> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.trim().is_empty()
    {
        return Err(code::ILLEGAL_NAME);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(code::NAME_TOO_LONG);
    }
    Ok(())
}

/// Follows links on the longest existing prefix of `target` and checks that
/// it stays inside `share_dir`.
fn ensure_inside(share_dir: &Path, target: &Path) -> Result<(), i32> {
    let Ok(base) = share_dir.canonicalize() else {
        return Err(code::NOT_FOUND);
    };
    let mut existing = target.to_path_buf();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return if real.starts_with(&base) {
                Ok(())
            } else {
                Err(code::ILLEGAL_PATH)
            };
        }
        if !existing.pop() {
            return Err(code::ILLEGAL_PATH);
        }
    }
}

/// Names the File Station never shows: DSM's own metadata folders and the
/// emulator's in-flight upload files.
pub(crate) fn is_hidden(name: &str) -> bool {
    name == "@eaDir" || name.starts_with(UPLOAD_TEMP_PREFIX)
}

/// Prefix of the temporary files an upload streams into.
pub(crate) const UPLOAD_TEMP_PREFIX: &str = "@synoupload-";

#[cfg(test)]
mod tests {
    use super::*;

    fn shares() -> (tempfile::TempDir, Shares) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("backup")).unwrap();
        let shares = Shares::new(dir.path().to_path_buf(), vec!["backup".into()]);
        (dir, shares)
    }

    #[test]
    fn resolves_paths_inside_a_share() {
        let (_d, s) = shares();
        let r = s.resolve("/backup/a/b.txt").unwrap();
        assert_eq!(r.dsm, "/backup/a/b.txt");
        assert_eq!(r.name(), "b.txt");
        assert_eq!(r.parent_dsm(), "/backup/a");
        assert!(!r.is_share_root);
        assert!(s.resolve("/backup").unwrap().is_share_root);
        assert_eq!(s.resolve("/backup").unwrap().parent_dsm(), "/");
    }

    #[test]
    fn refuses_escapes_and_unknown_shares() {
        let (_d, s) = shares();
        assert_eq!(s.resolve("/backup/../etc").unwrap_err(), 418);
        assert_eq!(s.resolve("/backup/./x").unwrap_err(), 418);
        assert_eq!(s.resolve("/other/x").unwrap_err(), 408);
        assert_eq!(s.resolve("backup/x").unwrap_err(), 408);
        assert_eq!(s.resolve("/backup/x/").unwrap_err(), 408);
        assert_eq!(s.resolve("/backup//x").unwrap_err(), 408);
        assert_eq!(s.resolve("/").unwrap_err(), 407);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_links_out_of_the_share() {
        let (d, s) = shares();
        std::os::unix::fs::symlink("/", d.path().join("backup/escape")).unwrap();
        assert_eq!(s.resolve("/backup/escape/etc").unwrap_err(), 418);
    }

    #[test]
    fn checks_names() {
        assert!(check_name("ok.txt").is_ok());
        assert_eq!(check_name("a/b"), Err(419));
        assert_eq!(check_name(".."), Err(419));
        assert_eq!(check_name(&"x".repeat(256)), Err(412));
    }
}
