//! A metadata-only walk that runs ahead of the pack, on its own thread, and
//! adds up the file bytes the pack is going to read.
//!
//! The splitter uses the total to make the last volumes of a run small (see
//! [`super::volume`]), and progress reports show it. The scan follows the
//! pack's rules (excludes, marker files, one file system) but opens no file
//! and reads no link, so it runs far ahead of the pack and leaves the
//! directory entries it touched cached for it. Its answer is an estimate:
//! files change while a backup runs, and a hard-linked file counts once per
//! name. Nothing depends on it being right.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::filter::Excludes;

/// What [`InputTotal::get`] holds until the scan has finished.
const UNKNOWN: u64 = u64::MAX;

/// The scan's result, shared with the pack thread.
#[derive(Debug, Clone)]
pub(crate) struct InputTotal(Arc<AtomicU64>);

impl InputTotal {
    /// The file bytes the pack will read; `None` while the scan runs, or
    /// when it could not finish.
    pub(crate) fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => None,
            total => Some(total),
        }
    }

    /// A total known from the start (tests).
    #[cfg(test)]
    pub(crate) fn known(total: u64) -> Self {
        Self(Arc::new(AtomicU64::new(total)))
    }
}

/// Stops the scan when dropped: once the pack has ended (or failed), its
/// answer is of no use.
#[derive(Debug)]
pub(crate) struct ScanGuard(Arc<AtomicBool>);

impl Drop for ScanGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The pack's rules that decide what is read.
pub(crate) struct Rules {
    pub(crate) excludes: Excludes,
    pub(crate) markers: Vec<OsString>,
    pub(crate) one_file_system: bool,
}

/// Starts scanning `roots` (each with its metadata) on a new thread.
pub(crate) fn start(roots: Vec<(PathBuf, Metadata)>, rules: Rules) -> (InputTotal, ScanGuard) {
    let total = InputTotal(Arc::new(AtomicU64::new(UNKNOWN)));
    let stop = Arc::new(AtomicBool::new(false));
    let (out, stopped) = (Arc::clone(&total.0), Arc::clone(&stop));
    let spawned = std::thread::Builder::new()
        .name("synback-scan".into())
        .spawn(move || {
            if let Some(bytes) = scan(&roots, &rules, &stopped) {
                out.store(bytes, Ordering::Relaxed);
            }
        });
    if let Err(err) = spawned {
        tracing::debug!(error = %err, "no scan thread: volumes keep their full size");
    }
    (total, ScanGuard(stop))
}

/// The bytes of every regular file the pack would read under `roots`;
/// `None` when stopped.
fn scan(roots: &[(PathBuf, Metadata)], rules: &Rules, stop: &AtomicBool) -> Option<u64> {
    let mut total = 0u64;
    for (root, meta) in roots {
        if !meta.is_dir() {
            total += regular_len(meta);
            continue;
        }
        // Directories still to scan (their paths relative to the root are
        // derived, not stored: a flat tree can queue very many).
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            total += scan_dir(root, &dir, meta.dev(), rules, &mut dirs);
        }
    }
    Some(total)
}

/// Adds up the files of one directory and queues its subdirectories.
fn scan_dir(root: &Path, dir: &Path, root_dev: u64, rules: &Rules, dirs: &mut Vec<PathBuf>) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let entries: Vec<_> = entries.filter_map(Result::ok).collect();
    if entries
        .iter()
        .any(|e| rules.markers.contains(&e.file_name()))
    {
        return 0;
    }
    let mut total = 0;
    for entry in entries {
        let name = entry.file_name();
        let abs = dir.join(&name);
        let Ok(meta) = fs::symlink_metadata(&abs) else {
            continue;
        };
        let rel = abs.strip_prefix(root).unwrap_or(&abs);
        if rules.excludes.is_excluded(&abs, rel, &name, meta.is_dir()) {
            continue;
        }
        if meta.is_dir() {
            if !rules.one_file_system || meta.dev() == root_dev {
                dirs.push(abs);
            }
        } else {
            total += regular_len(&meta);
        }
    }
    total
}

fn regular_len(meta: &Metadata) -> u64 {
    match meta.file_type().is_file() {
        true => meta.len(),
        false => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(excludes: &[&str], markers: &[&str]) -> Rules {
        let excludes: Vec<String> = excludes.iter().map(|s| (*s).to_owned()).collect();
        Rules {
            excludes: Excludes::new(&excludes).unwrap(),
            markers: markers.iter().map(OsString::from).collect(),
            one_file_system: false,
        }
    }

    fn wait(total: &InputTotal) -> u64 {
        for _ in 0..500 {
            if let Some(t) = total.get() {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the scan did not finish");
    }

    #[test]
    fn counts_the_files_the_pack_would_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("skip")).unwrap();
        fs::create_dir_all(root.join("marked")).unwrap();
        fs::write(root.join("one"), vec![1; 100]).unwrap();
        fs::write(root.join("a/b/two"), vec![2; 1000]).unwrap();
        fs::write(root.join("a/x.tmp"), vec![3; 5000]).unwrap();
        fs::write(root.join("skip/three"), vec![4; 7000]).unwrap();
        fs::write(root.join("marked/four"), vec![5; 9000]).unwrap();
        fs::write(root.join("marked/.nobackup"), b"").unwrap();
        std::os::unix::fs::symlink("one", root.join("link")).unwrap();
        let single = dir.path().join("single");
        fs::write(&single, vec![6; 10]).unwrap();
        let roots = [&root, &single]
            .map(|p| (p.clone(), fs::metadata(p).unwrap()))
            .to_vec();

        let (total, _guard) = start(roots, rules(&["*.tmp", "skip/"], &[".nobackup"]));
        assert_eq!(wait(&total), 100 + 1000 + 10);
    }

    #[test]
    fn a_dropped_guard_stops_the_scan_unanswered() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"x").unwrap();
        let stop = AtomicBool::new(true);
        let roots = [(dir.path().to_path_buf(), fs::metadata(dir.path()).unwrap())];
        assert_eq!(scan(&roots, &rules(&[], &[]), &stop), None);
        assert_eq!(
            scan(&roots, &rules(&[], &[]), &AtomicBool::new(false)),
            Some(1)
        );
    }
}
