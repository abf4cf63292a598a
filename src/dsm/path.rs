//! Remote paths, built and checked in one place.
//!
//! DSM paths are absolute and start with the shared folder:
//! `/<share>/<rel/path>`. [`RemotePath`] collapses `//`, drops `.` segments
//! and a trailing `/`, and refuses `..`, empty shares and control characters,
//! so a typo in the config cannot make synback write outside its folder.

use std::fmt;

use super::error::{Error, Result};

/// A normalised absolute DSM path such as `/backup/hosts/pi`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

impl RemotePath {
    /// Joins a shared folder name and a path relative to it.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] when the share is empty or contains `/`, or the
    /// relative path contains `..` or control characters.
    pub fn new(share: &str, relative: &str) -> Result<Self> {
        let share = share.trim_matches('/');
        if share.is_empty() || share.contains('/') {
            return Err(invalid(
                share,
                "the shared folder must be one non-empty name",
            ));
        }
        check_name(share, share)?;
        Self::parse(&format!("/{share}/{relative}"))
    }

    /// Normalises an absolute path `/<share>/...`.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] when the path is relative, names no share,
    /// contains `..` or control characters.
    pub fn parse(path: &str) -> Result<Self> {
        if !path.starts_with('/') {
            return Err(invalid(path, "it must start with /<shared folder>"));
        }
        if path.chars().any(char::is_control) {
            return Err(invalid(path, "it contains control characters"));
        }
        let mut out = String::with_capacity(path.len());
        for segment in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
            if segment == ".." {
                return Err(invalid(path, "`..` is not allowed"));
            }
            out.push('/');
            out.push_str(segment);
        }
        if out.is_empty() {
            return Err(invalid(path, "it names no shared folder"));
        }
        Ok(Self(out))
    }

    /// This path with one more name at the end.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] when `name` is not a single valid file name.
    pub fn join(&self, name: &str) -> Result<Self> {
        check_name(name, name)?;
        Ok(Self(format!("{}/{name}", self.0)))
    }

    /// The path as DSM expects it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared folder (first segment).
    pub fn share(&self) -> &str {
        self.0[1..].split('/').next().unwrap_or_default()
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The parent folder, or `None` for a shared folder itself.
    pub fn parent(&self) -> Option<Self> {
        let cut = self.0.rfind('/')?;
        (cut > 0).then(|| Self(self.0[..cut].to_owned()))
    }

    /// True when this is a shared folder (`/<share>`).
    pub fn is_share(&self) -> bool {
        self.parent().is_none()
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RemotePath> for String {
    fn from(path: RemotePath) -> Self {
        path.0
    }
}

impl AsRef<str> for RemotePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks that `name` is one file name: not empty, no `/`, not `.` or `..`,
/// no control characters.
///
/// # Errors
/// [`Error::InvalidPath`] naming `shown` when it is not.
pub fn check_name(name: &str, shown: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.contains('/') {
        "a name may not contain /"
    } else if name == "." || name == ".." {
        "`.` and `..` are not names"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(invalid(shown, reason))
}

fn invalid(path: &str, reason: &'static str) -> Error {
    Error::InvalidPath {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(RemotePath::parse("/backup").unwrap().as_str(), "/backup");
        assert_eq!(RemotePath::parse("/backup/").unwrap().as_str(), "/backup");
        assert_eq!(
            RemotePath::parse("//backup//a///b/").unwrap().as_str(),
            "/backup/a/b"
        );
        assert_eq!(
            RemotePath::parse("/backup/./a").unwrap().as_str(),
            "/backup/a"
        );
        assert_eq!(
            RemotePath::new("backup", "hosts/pi/").unwrap().as_str(),
            "/backup/hosts/pi"
        );
        assert_eq!(RemotePath::new("/backup/", "").unwrap().as_str(), "/backup");
        assert_eq!(
            RemotePath::new("backup", "/x").unwrap().as_str(),
            "/backup/x"
        );
    }

    #[test]
    fn refuses_escapes_and_garbage() {
        for bad in [
            "",
            "backup",
            "/",
            "//",
            "/backup/../etc",
            "/backup/a/..",
            "/a\nb",
        ] {
            assert!(RemotePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RemotePath::new("", "x").is_err());
        assert!(RemotePath::new("a/b", "x").is_err());
        assert!(RemotePath::new("backup", "../x").is_err());
    }

    #[test]
    fn parts() {
        let p = RemotePath::parse("/backup/hosts/pi").unwrap();
        assert_eq!(p.share(), "backup");
        assert_eq!(p.name(), "pi");
        assert_eq!(p.parent().unwrap().as_str(), "/backup/hosts");
        assert!(!p.is_share());
        let share = RemotePath::parse("/backup").unwrap();
        assert!(share.is_share());
        assert_eq!(share.share(), "backup");
        assert_eq!(share.name(), "backup");
        assert_eq!(
            p.join("x.tar.zst").unwrap().as_str(),
            "/backup/hosts/pi/x.tar.zst"
        );
        assert!(p.join("a/b").is_err());
        assert!(p.join("..").is_err());
        assert!(p.join("").is_err());
    }

    #[test]
    fn keeps_unicode_and_spaces() {
        let p = RemotePath::new("backup", "Fotos 2024/été, \"x\"").unwrap();
        assert_eq!(p.as_str(), "/backup/Fotos 2024/été, \"x\"");
    }
}
