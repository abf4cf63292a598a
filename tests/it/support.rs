//! Shared test fixtures: an emulator on loopback, a config file pointing at
//! it, sample trees and tree comparison.

#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use synback::agent::Agent;
use synback::config::{Config, ConfigEnv};
use synback::emulator::{Emulator, EmulatorConfig};
use synback::secret::Secret;

pub const USER: &str = "backup";
pub const PASSWORD: &str = "correct horse battery staple";

/// A running emulator, a sample source tree and a config file, all in one
/// temp folder.
pub struct World {
    pub dir: tempfile::TempDir,
    pub nas: Emulator,
    pub source: PathBuf,
    pub config_path: PathBuf,
}

impl World {
    /// Emulator + sample tree + config with `extra_job` lines added to the job.
    pub async fn new(extra_job: &str) -> Self {
        Self::with_emulator(extra_job, |_| {}).await
    }

    /// Like [`World::new`], with a chance to change the emulator's settings.
    pub async fn with_emulator(extra_job: &str, tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nas");
        std::fs::create_dir_all(&root).unwrap();
        let mut cfg = EmulatorConfig::new(root, USER, Secret::new(PASSWORD));
        tweak(&mut cfg);
        let nas = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let source = dir.path().join("data");
        sample_tree(&source);
        let config_path = dir.path().join("synback.toml");
        let world = Self {
            dir,
            nas,
            source,
            config_path,
        };
        world.write_config(extra_job);
        world
    }

    /// (Re)writes the config file.
    pub fn write_config(&self, extra_job: &str) {
        let retry = "max_attempts = 6\nbase_delay = \"50ms\"\nmax_delay = \"200ms\"";
        write_config_file(
            self.dir.path(),
            &self.nas.url(),
            &self.source,
            retry,
            extra_job,
        );
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path, &ConfigEnv::new()).unwrap()
    }

    pub fn agent(&self) -> Agent {
        Agent::new(self.config())
    }

    /// The job folder on the emulator's disk.
    pub fn job_dir(&self) -> PathBuf {
        self.nas.share_path("backup").join("pc").join("home")
    }

    /// File names in the job folder, sorted.
    pub fn remote_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.job_dir()) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".synback-upload") && !n.starts_with("@"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    pub fn restore_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A tree with text, a compressible log, random bytes, a symlink, an empty
/// directory, an executable and a long unicode name.
pub fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("docs/deep/er")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("docs/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("docs/deep/er/b.txt"), "beta\n".repeat(1000)).unwrap();
    let noise: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|_| rand::random::<u8>())
        .collect();
    std::fs::write(dir.join("noise.bin"), noise).unwrap();
    let log: String = (0..20_000)
        .map(|i| format!("line {i} of the log\n"))
        .collect();
    std::fs::write(dir.join("docs/app.log"), log).unwrap();
    let script = dir.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("docs/a.txt", dir.join("link-to-a")).unwrap();
    let long = format!("{}-ünïcödé.txt", "x".repeat(150));
    std::fs::write(dir.join("docs").join(long), "long name\n").unwrap();
    std::fs::write(dir.join("skip.tmp"), "temporary\n").unwrap();
}

/// Every difference between tree `a` and tree `b` (content, mode, mtime,
/// link targets, missing entries), ignoring names for which `skip` is true.
pub fn tree_diff(a: &Path, b: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<String> {
    let mut diffs = Vec::new();
    walk_diff(a, b, skip, &mut diffs);
    diffs
}

fn walk_diff(a: &Path, b: &Path, skip: &dyn Fn(&Path) -> bool, diffs: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (pa, pb) = (entry.path(), b.join(entry.file_name()));
        if skip(&pa) {
            if pb.exists() {
                diffs.push(format!("{} should not exist", pb.display()));
            }
            continue;
        }
        let ma = std::fs::symlink_metadata(&pa).unwrap();
        let Ok(mb) = std::fs::symlink_metadata(&pb) else {
            diffs.push(format!("{} missing", pb.display()));
            continue;
        };
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa).unwrap() != std::fs::read_link(&pb).unwrap() {
                diffs.push(format!("{} link target differs", pb.display()));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{} mode {:o} != {:o}",
                pb.display(),
                mb.mode(),
                ma.mode()
            ));
        }
        if ma.is_dir() {
            walk_diff(&pa, &pb, skip, diffs);
        } else {
            if ma.mtime() != mb.mtime() {
                diffs.push(format!("{} mtime differs", pb.display()));
            }
            if std::fs::read(&pa).unwrap() != std::fs::read(&pb).unwrap() {
                diffs.push(format!("{} content differs", pb.display()));
            }
        }
    }
}

/// Skips `*.tmp` (the tests' usual exclude).
pub fn skip_tmp(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "tmp")
}

/// An error and all its causes, one per line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Bytes stored under a folder, recursively.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += match meta.is_dir() {
            true => disk_usage(&entry.path()),
            false => meta.len(),
        };
    }
    total
}

/// Writes `dir/password` and `dir/synback.toml` (both mode 600): a job
/// `home` of `source` in `backup/pc` on the emulator at `url`, with the
/// `[retry]` keys `retry` and the extra job keys `extra_job`. Returns the
/// config's path.
pub fn write_config_file(
    dir: &Path,
    url: &str,
    source: &Path,
    retry: &str,
    extra_job: &str,
) -> PathBuf {
    let password_file = dir.join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"[nas]
url = "{url}"
user = "{USER}"
password_file = "{pw}"
request_timeout = "20s"
idle_timeout = "20s"

[state]
dir = "{state}"

[retry]
{retry}

[[job]]
name = "home"
sources = ["{src}"]
share = "backup"
path = "pc"
{extra_job}
"#,
        pw = password_file.display(),
        state = dir.join("state").display(),
        src = source.display(),
    );
    let path = dir.join("synback.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A free loopback address whose port is below Linux's ephemeral range
/// (32768 and up), for tests that stop a server and start one again on the
/// same address, or connect before it listens: a port from the ephemeral
/// range may meanwhile become the local end of another test's connection.
pub fn port_outside_ephemeral_range() -> std::net::SocketAddr {
    // Each call starts further on, so that two tests of this process never
    // probe the same port; the process id keeps other processes apart.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (std::process::id() + call * 1_009) % 10_000;
    (0..10_000u32)
        .map(|i| 20_000 + (seed + i * 37) % 10_000)
        .find_map(|port| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).ok()?));
            std::net::TcpListener::bind(addr).ok()?.local_addr().ok()
        })
        .expect("a free port in 20000..30000")
}

/// Restores the latest snapshot of job `home` into `target`, as a user's
/// `synback restore latest --target TARGET [--overwrite]` does.
pub async fn restore_latest(
    agent: &Agent,
    target: &Path,
    overwrite: bool,
) -> Result<synback::restore::RestoreReport, synback::agent::Error> {
    let mut opts = synback::restore::RestoreOptions::default();
    opts.target_dir = target.to_path_buf();
    opts.overwrite = overwrite;
    restore_latest_with(agent, opts).await
}

/// Restores the latest snapshot of job `home` with `opts`.
pub async fn restore_latest_with(
    agent: &Agent,
    opts: synback::restore::RestoreOptions,
) -> Result<synback::restore::RestoreReport, synback::agent::Error> {
    let selector = synback::restore::Selector::Latest;
    let cancel = tokio_util::sync::CancellationToken::new();
    agent.restore("home", &selector, opts, None, cancel).await
}
