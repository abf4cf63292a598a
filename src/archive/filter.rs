//! Glob filters: excludes for packing, includes for restore and listing.

use std::ffi::OsStr;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::error::{Error, Result};

/// Where an exclude pattern is matched.
#[derive(Clone, Copy)]
enum Scope {
    /// No `/` in the pattern: the file name, at any depth (`*.tmp`).
    Name,
    /// A `/` inside: the path relative to the source root (`**/node_modules`).
    Relative,
    /// Starts with `/`: the absolute path on disk.
    Absolute,
}

/// Compiled exclude patterns.
///
/// Rules (gitignore-like): a pattern without `/` matches a file or directory
/// name at any depth; a pattern with a `/` inside matches the path relative
/// to the source root; a pattern starting with `/` matches the absolute
/// path; a trailing `/` restricts the pattern to directories (`cache/`).
/// `*` never crosses a `/`, `**` does.
#[derive(Debug)]
pub(crate) struct Excludes {
    /// Index `scope * 2 + dir_only`.
    sets: [GlobSet; 6],
}

impl Excludes {
    pub(crate) fn new(patterns: &[String]) -> Result<Self> {
        let mut builders: [GlobSetBuilder; 6] = std::array::from_fn(|_| GlobSetBuilder::new());
        for pattern in patterns {
            let (body, dir_only) = match pattern.strip_suffix('/') {
                Some(body) if !body.is_empty() => (body, true),
                _ => (pattern.as_str(), false),
            };
            let scope = if body.starts_with('/') {
                Scope::Absolute
            } else if body.contains('/') {
                Scope::Relative
            } else {
                Scope::Name
            };
            builders[slot(scope, dir_only)].add(glob(pattern, body)?);
        }
        let mut sets: [GlobSet; 6] = Default::default();
        for (set, builder) in sets.iter_mut().zip(builders) {
            *set = builder.build().map_err(|source| Error::Pattern {
                pattern: patterns.join(" "),
                source,
            })?;
        }
        Ok(Self { sets })
    }

    /// True when the entry must be left out.
    pub(crate) fn is_excluded(&self, abs: &Path, rel: &Path, name: &OsStr, is_dir: bool) -> bool {
        let hit = |dir_only: bool| {
            self.sets[slot(Scope::Name, dir_only)].is_match(name)
                || self.sets[slot(Scope::Relative, dir_only)].is_match(rel)
                || self.sets[slot(Scope::Absolute, dir_only)].is_match(abs)
        };
        hit(false) || (is_dir && hit(true))
    }
}

fn slot(scope: Scope, dir_only: bool) -> usize {
    scope as usize * 2 + usize::from(dir_only)
}

fn glob(pattern: &str, body: &str) -> Result<Glob> {
    GlobBuilder::new(body)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|source| Error::Pattern {
            pattern: pattern.to_owned(),
            source,
        })
}

/// Compiled include patterns for restore and listing.
///
/// An entry is selected when a pattern matches its archive path or one of
/// its parent directories, so `home/docs` selects everything under it. As
/// for excludes, a pattern without `/` matches a name at any depth (`*.txt`).
/// No patterns select everything. Leading and trailing `/` are ignored.
#[derive(Debug)]
pub(crate) struct Includes {
    /// (patterns with a `/`, patterns without), or None for "everything".
    sets: Option<(GlobSet, GlobSet)>,
    /// The patterns as given, for [`Includes::check_matched`].
    patterns: Vec<String>,
    /// Whether any entry was selected so far.
    matched: std::cell::Cell<bool>,
}

impl Includes {
    pub(crate) fn new(patterns: &[String]) -> Result<Self> {
        if patterns.is_empty() {
            return Ok(Self {
                sets: None,
                patterns: Vec::new(),
                matched: std::cell::Cell::new(false),
            });
        }
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for pattern in patterns {
            let body = pattern.trim_start_matches('/').trim_end_matches('/');
            let builder = if body.contains('/') {
                &mut paths
            } else {
                &mut names
            };
            builder.add(glob(pattern, body)?);
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|source| Error::Pattern {
                pattern: patterns.join(" "),
                source,
            })
        };
        Ok(Self {
            sets: Some((build(paths)?, build(names)?)),
            patterns: patterns.to_vec(),
            matched: std::cell::Cell::new(false),
        })
    }

    /// True when the entry (a normalised relative archive path) is selected.
    pub(crate) fn is_selected(&self, path: &Path) -> bool {
        let Some((paths, names)) = &self.sets else {
            return true;
        };
        let selected = path
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .any(|p| paths.is_match(p) || p.file_name().is_some_and(|n| names.is_match(n)));
        if selected {
            self.matched.set(true);
        }
        selected
    }

    /// After the whole archive was seen: an error when patterns were given
    /// and none selected anything, which is a mistyped path far more often
    /// than a wish to restore nothing.
    pub(crate) fn check_matched(&self) -> Result<()> {
        match self.sets.is_some() && !self.matched.get() {
            true => Err(Error::NothingSelected {
                patterns: self.patterns.join(" "),
            }),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(patterns: &[&str]) -> Excludes {
        Excludes::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn excluded(e: &Excludes, rel: &str, is_dir: bool) -> bool {
        let rel = Path::new(rel);
        let abs = Path::new("/src").join(rel);
        e.is_excluded(&abs, rel, rel.file_name().unwrap(), is_dir)
    }

    #[test]
    fn name_patterns_match_at_any_depth() {
        let e = ex(&["*.tmp"]);
        assert!(excluded(&e, "a.tmp", false));
        assert!(excluded(&e, "x/y/a.tmp", false));
        assert!(!excluded(&e, "x/a.tmpl", false));
    }

    #[test]
    fn double_star_matches_nested_directories() {
        let e = ex(&["**/node_modules"]);
        assert!(excluded(&e, "node_modules", true));
        assert!(excluded(&e, "app/web/node_modules", true));
        assert!(!excluded(&e, "app/node_modules_old", true));
    }

    #[test]
    fn trailing_slash_means_directories_only() {
        let e = ex(&["cache/"]);
        assert!(excluded(&e, "home/cache", true));
        assert!(!excluded(&e, "home/cache", false));
    }

    #[test]
    fn relative_and_absolute_patterns_are_anchored() {
        let e = ex(&["docs/*.pdf", "/src/secret"]);
        assert!(excluded(&e, "docs/a.pdf", false));
        assert!(!excluded(&e, "x/docs/a.pdf", false));
        assert!(!excluded(&e, "docs/sub/a.pdf", false));
        assert!(excluded(&e, "secret", false));
    }

    #[test]
    fn bad_pattern_is_reported_with_its_text() {
        let err = Excludes::new(&["a[".to_string()]).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }

    #[test]
    fn includes_select_parents_and_children() {
        let inc = Includes::new(&["home/docs".to_string(), "*.txt".to_string()]).unwrap();
        assert!(inc.is_selected(Path::new("home/docs")));
        assert!(inc.is_selected(Path::new("home/docs/a/b.bin")));
        assert!(inc.is_selected(Path::new("notes.txt")));
        assert!(inc.is_selected(Path::new("home/other/b.txt")));
        assert!(!inc.is_selected(Path::new("home/other/b.bin")));
        assert!(!inc.is_selected(Path::new("x/home/docs")));
        assert!(Includes::new(&[]).unwrap().is_selected(Path::new("x")));
    }
}
