//! The NAS side of a job: share names and the path inside the share.
//!
//! Users of other DSM backup tools trip on a trailing `/` or a `//` in the
//! path, so these are normalised (with a note) rather than refused; `..` and
//! absolute paths are refused because the job folder must stay inside the
//! share.

/// Why a share or path cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteError {
    Empty,
    Absolute,
    ParentDir,
    Backslash,
    ShareHasSlash,
}

/// A normalised path and whether normalising changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalised {
    pub(crate) value: String,
    pub(crate) changed: bool,
}

/// Normalises the relative path inside the share: drops empty and `.`
/// segments (trailing or doubled slashes), refuses `..`, a leading `/` and
/// backslashes. The result has no leading or trailing `/` and may be empty
/// (the share's top folder).
pub(crate) fn normalise_path(raw: &str) -> Result<Normalised, RemoteError> {
    if raw.starts_with('/') {
        return Err(RemoteError::Absolute);
    }
    if raw.contains('\\') {
        return Err(RemoteError::Backslash);
    }
    let mut segments = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(RemoteError::ParentDir),
            s => segments.push(s),
        }
    }
    let value = segments.join("/");
    Ok(Normalised {
        changed: value != raw,
        value,
    })
}

/// Normalises a share name: a leading or trailing `/` is dropped (with a
/// note), anything else with a `/` is refused since the rest belongs in
/// `path`.
pub(crate) fn normalise_share(raw: &str) -> Result<Normalised, RemoteError> {
    let value = raw.trim_matches('/');
    if value.is_empty() {
        return Err(RemoteError::Empty);
    }
    if value.contains('/') {
        return Err(RemoteError::ShareHasSlash);
    }
    if value == "." || value == ".." {
        return Err(RemoteError::ParentDir);
    }
    Ok(Normalised {
        changed: value != raw,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let n = normalise_path(raw).unwrap();
        (n.value, n.changed)
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(ok("backups/pi"), ("backups/pi".into(), false));
        assert_eq!(ok("backups/pi/"), ("backups/pi".into(), true));
        assert_eq!(ok("backups//pi"), ("backups/pi".into(), true));
        assert_eq!(ok("./backups/./pi"), ("backups/pi".into(), true));
        assert_eq!(ok(""), (String::new(), false));
    }

    #[test]
    fn bad_paths_are_refused() {
        assert_eq!(normalise_path("/backups"), Err(RemoteError::Absolute));
        assert_eq!(normalise_path("a/../b"), Err(RemoteError::ParentDir));
        assert_eq!(normalise_path(".."), Err(RemoteError::ParentDir));
        assert_eq!(normalise_path("a\\b"), Err(RemoteError::Backslash));
    }

    #[test]
    fn shares() {
        assert_eq!(normalise_share("backup").unwrap().value, "backup");
        assert!(normalise_share("/backup/").unwrap().changed);
        assert_eq!(normalise_share("a/b"), Err(RemoteError::ShareHasSlash));
        assert_eq!(normalise_share("/"), Err(RemoteError::Empty));
        assert_eq!(normalise_share(".."), Err(RemoteError::ParentDir));
    }

    proptest::proptest! {
        #[test]
        fn normalised_paths_are_clean(raw in "[a-z./]{0,24}") {
            if let Ok(n) = normalise_path(&raw) {
                proptest::prop_assert!(!n.value.starts_with('/') && !n.value.ends_with('/'));
                proptest::prop_assert!(!n.value.contains("//"));
                proptest::prop_assert!(n.value.split('/').all(|s| s != ".." && s != "."));
                proptest::prop_assert_eq!(n.changed, n.value != raw);
            }
        }
    }
}
