//! Archive layer: round trips, interoperability with the real `tar`,
//! `zstd` and `age` tools, and hostile archives.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use age::secrecy::ExposeSecret;
use filetime::FileTime;
use proptest::prelude::*;
use synback::archive::{
    self, DecryptKey, EntryKind, Error, IssueKind, ListOptions, PackOptions, PackSummary,
    UnpackOptions, VolumeInfo, VolumeSink, WriterSink,
};
use synback::secret::Secret;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- helpers

fn never() -> CancellationToken {
    CancellationToken::new()
}

fn opts(sources: &[&Path]) -> PackOptions {
    let mut o = PackOptions::new(sources.iter().copied());
    o.workers = 2;
    o
}

fn pack_to_vec(o: &PackOptions) -> (Vec<u8>, PackSummary) {
    let mut sink = WriterSink::new(Vec::new());
    let summary = archive::pack(o, &mut sink, &|_| {}, &never()).unwrap();
    (sink.into_inner(), summary)
}

fn unpack_into(bytes: &[u8], target: &Path) -> archive::UnpackSummary {
    archive::unpack(bytes, &UnpackOptions::new(target), &never()).unwrap()
}

fn set_mtime(path: &Path, secs: i64) {
    let t = FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

fn write_file(path: &Path, data: &[u8], mode: u32, mtime: i64) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime);
}

/// One line per path: kind, mode, mtime, content digest or link target.
fn snapshot(root: &Path, symlink_mtimes: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, root, symlink_mtimes, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, symlink_mtimes: bool, out: &mut BTreeMap<PathBuf, String>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let m = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let line = if m.file_type().is_symlink() {
            let mt = if symlink_mtimes { m.mtime() } else { 0 };
            format!("link {:?} {mt}", fs::read_link(&path).unwrap())
        } else if m.is_dir() {
            walk(root, &path, symlink_mtimes, out);
            format!("dir {:o} {}", m.mode() & 0o7777, m.mtime())
        } else {
            let data = fs::read(&path).unwrap();
            format!(
                "file {:o} {} {} {}",
                m.mode() & 0o7777,
                m.mtime(),
                data.len(),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
            )
        };
        out.insert(rel, line);
    }
}

/// Inode groups: paths that share an inode (hard links), by relative path.
fn link_groups(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for (rel, _) in snapshot(root, false) {
        let m = fs::symlink_metadata(root.join(&rel)).unwrap();
        if m.is_file() && m.nlink() > 1 {
            by_ino.entry(m.ino()).or_default().push(rel);
        }
    }
    let mut groups: Vec<_> = by_ino.into_values().collect();
    groups.iter_mut().for_each(|g| g.sort());
    groups.sort();
    groups
}

fn assert_same_tree(src: &Path, restored: &Path, symlink_mtimes: bool) {
    let a = snapshot(src, symlink_mtimes);
    let b = snapshot(restored, symlink_mtimes);
    assert_eq!(a, b, "trees differ");
    assert_eq!(link_groups(src), link_groups(restored), "hard links differ");
    let (ma, mb) = (fs::metadata(src).unwrap(), fs::metadata(restored).unwrap());
    assert_eq!(
        (ma.mode() & 0o7777, ma.mtime()),
        (mb.mode() & 0o7777, mb.mtime())
    );
}

/// A tree with the awkward cases: unicode and long names, an empty dir,
/// symlinks, hard links, an empty file and a large mostly-zero file.
fn awkward_tree(root: &Path) {
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("nested/deeper/still")).unwrap();
    write_file(&root.join("plain.txt"), b"hello\n", 0o644, 1_600_000_000);
    write_file(&root.join("exec.sh"), b"#!/bin/sh\n", 0o755, 1_500_000_000);
    write_file(&root.join("empty-file"), b"", 0o600, 1_000_000_000);
    write_file(
        &root.join("Grüße 日本 ✓.txt"),
        "ünïcödé".as_bytes(),
        0o640,
        1_234_567_890,
    );
    let long = "l".repeat(120) + &"é".repeat(60);
    write_file(
        &root.join("nested/deeper/still").join(&long),
        b"long name",
        0o644,
        1_700_000_000,
    );
    let mut sparse = vec![0u8; 3 << 20];
    sparse[1 << 20] = 1;
    sparse[(3 << 20) - 1] = 2;
    write_file(
        &root.join("nested/sparse.bin"),
        &sparse,
        0o600,
        1_650_000_000,
    );
    fs::hard_link(root.join("plain.txt"), root.join("nested/hardlink.txt")).unwrap();
    std::os::unix::fs::symlink("plain.txt", root.join("link-to-plain")).unwrap();
    std::os::unix::fs::symlink("../../plain.txt", root.join("nested/deeper/up")).unwrap();
    std::os::unix::fs::symlink("missing-target", root.join("dangling")).unwrap();
    let long_target = "t".repeat(150);
    std::os::unix::fs::symlink(&long_target, root.join("long-target-link")).unwrap();
    for p in [
        "link-to-plain",
        "nested/deeper/up",
        "dangling",
        "long-target-link",
    ] {
        set_mtime(&root.join(p), 1_400_000_000);
    }
    for d in ["nested/deeper/still", "nested/deeper", "nested", "empty"] {
        set_mtime(&root.join(d), 1_300_000_000);
    }
    set_mtime(root, 1_200_000_000);
}

/// Is a command-line tool there? Missing tools fail under CI and skip
/// loudly elsewhere.
fn have_tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{name}` is required under CI (installed by .ci/run)"
        );
        eprintln!("SKIPPED: `{name}` is not installed; this interoperability test did not run");
    }
    ok
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "command failed: {script}");
}

fn age_key(dir: &Path) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join("key.txt");
    fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

// ---------------------------------------------------------------- round trips

#[test]
fn awkward_tree_round_trips_byte_identical() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    awkward_tree(&src);
    let (bytes, summary) = pack_to_vec(&opts(&[&src]));
    assert_eq!(summary.counts.files, 6);
    assert_eq!(summary.counts.hardlinks, 1);
    assert_eq!(summary.counts.symlinks, 4);
    assert_eq!(summary.counts.dirs, 5);
    assert!(!summary.is_partial(), "{:?}", summary.issues);
    assert_eq!(summary.volumes.len(), 1);
    assert_eq!(summary.bytes_out, bytes.len() as u64);
    assert_eq!(summary.sources[0].prefix, "data");

    let out = tmp.path().join("out");
    let report = unpack_into(&bytes, &out);
    assert_eq!(report.files, 6);
    assert_eq!(report.hardlinks, 1);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_same_tree(&src, &out.join("data"), true);
    let sparse = fs::metadata(out.join("data/nested/sparse.bin")).unwrap();
    assert!(
        sparse.blocks() * 512 < sparse.len(),
        "zero runs should be restored as holes"
    );
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32, i64),
    Dir(BTreeMap<String, Node>, u32, i64),
    Link(String, i64),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ._é日-]{1,12}",
        1 => "[a-zé]{100,120}",
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn node() -> impl Strategy<Value = Node> {
    let mtime = 0i64..2_000_000_000;
    let leaf = prop_oneof![
        4 => (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o400, 0o777, 0o640]),
            mtime.clone()
        )
            .prop_map(|(d, m, t)| Node::File(d, m, t)),
        1 => ("[a-z]{1,8}(/[a-z]{1,8})?", mtime.clone()).prop_map(|(t, m)| Node::Link(t, m)),
    ];
    leaf.prop_recursive(3, 40, 6, move |inner| {
        (
            prop::collection::btree_map(name(), inner, 0..6),
            prop::sample::select(vec![0o755u32, 0o700, 0o750]),
            0i64..2_000_000_000,
        )
            .prop_map(|(c, m, t)| Node::Dir(c, m, t))
    })
}

fn build(path: &Path, node: &Node, files: &mut Vec<PathBuf>) {
    match node {
        Node::File(data, mode, mtime) => {
            write_file(path, data, *mode, *mtime);
            files.push(path.to_path_buf());
        }
        Node::Link(target, mtime) => {
            std::os::unix::fs::symlink(target, path).unwrap();
            set_mtime(path, *mtime);
        }
        Node::Dir(children, mode, mtime) => {
            fs::create_dir(path).unwrap();
            for (n, child) in children {
                build(&path.join(n), child, files);
            }
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).unwrap();
            set_mtime(path, *mtime);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn generated_trees_round_trip(
        children in prop::collection::btree_map(name(), node(), 0..8),
        hard_links in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let tmp = TempDir::new().unwrap();
        let src = tmp.path().join("src");
        let mut files = Vec::new();
        build(&src, &Node::Dir(children, 0o755, 1_111_111_111), &mut files);
        if !files.is_empty() {
            for (i, ix) in hard_links.iter().enumerate() {
                let f = ix.get(&files);
                fs::hard_link(f, src.join(format!("hard-{i}"))).unwrap();
            }
        }
        set_mtime(&src, 1_111_111_111);
        let (bytes, summary) = pack_to_vec(&opts(&[&src]));
        prop_assert!(!summary.is_partial());
        let out = tmp.path().join("out");
        unpack_into(&bytes, &out);
        assert_same_tree(&src, &out.join("src"), true);
    }
}

#[test]
fn several_roots_get_unique_prefixes() {
    let tmp = TempDir::new().unwrap();
    let a = tmp.path().join("a/data");
    let b = tmp.path().join("b/data");
    let single = tmp.path().join("notes.txt");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("x"), "from a").unwrap();
    fs::write(b.join("x"), "from b").unwrap();
    fs::write(&single, "single file").unwrap();
    let (bytes, summary) = pack_to_vec(&opts(&[&a, &b, &single]));
    let prefixes: Vec<_> = summary.sources.iter().map(|s| s.prefix.as_str()).collect();
    assert_eq!(prefixes, ["data", "data-2", "notes.txt"]);
    let out = tmp.path().join("out");
    unpack_into(&bytes, &out);
    assert_eq!(fs::read_to_string(out.join("data/x")).unwrap(), "from a");
    assert_eq!(fs::read_to_string(out.join("data-2/x")).unwrap(), "from b");
    assert_eq!(
        fs::read_to_string(out.join("notes.txt")).unwrap(),
        "single file"
    );
}

#[test]
fn excludes_markers_and_special_files() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    for d in [
        "keep",
        "app/node_modules/pkg",
        "cache",
        "sub/cache",
        "skipme",
        "cachefile-dir",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("keep/a.txt"), "a").unwrap();
    fs::write(src.join("keep/b.tmp"), "b").unwrap();
    fs::write(src.join("app/node_modules/pkg/i.js"), "x").unwrap();
    fs::write(src.join("cache/c"), "c").unwrap();
    fs::write(src.join("sub/cache/c"), "c").unwrap();
    fs::write(
        src.join("cachefile-dir/cache"),
        "a file named cache is kept",
    )
    .unwrap();
    fs::write(src.join("skipme/.nobackup"), "").unwrap();
    fs::write(src.join("skipme/data"), "d").unwrap();
    sh(&format!("mkfifo '{}'", src.join("keep/fifo").display()));
    let _socket = std::os::unix::net::UnixListener::bind(src.join("keep/sock")).unwrap();

    let mut o = opts(&[&src]);
    o.excludes = vec!["*.tmp".into(), "**/node_modules".into(), "cache/".into()];
    o.exclude_if_present = vec![".nobackup".into()];
    let (bytes, summary) = pack_to_vec(&o);
    assert_eq!(summary.counts.special, 2);
    assert!(summary.issues.iter().all(|i| i.kind == IssueKind::Special));
    assert!(
        !summary.is_partial(),
        "special files do not make a run partial"
    );

    let mut names = Vec::new();
    archive::list(&bytes[..], &ListOptions::default(), &never(), &mut |e| {
        names.push(e.path.to_string_lossy().into_owned())
    })
    .unwrap();
    assert_eq!(
        names,
        [
            "src",
            "src/app",
            "src/cachefile-dir",
            "src/cachefile-dir/cache",
            "src/keep",
            "src/keep/a.txt",
            "src/sub"
        ]
    );
}

#[test]
fn changed_and_unreadable_files_are_reported() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("ok"), "fine").unwrap();
    // A file whose reported size is not what reading gives (procfs-like).
    std::os::unix::fs::symlink("/proc/self/status", src.join("not-followed")).unwrap();
    let (_, summary) = pack_to_vec(&opts(&[&src]));
    assert_eq!(summary.counts.files, 1);
    assert_eq!(summary.counts.symlinks, 1);

    // An unreadable file (only meaningful when not root).
    fs::write(src.join("secret"), "x").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let (_, summary) = pack_to_vec(&opts(&[&src]));
    if fs::read(src.join("secret")).is_err() {
        assert_eq!(summary.counts.unreadable, 1);
        assert!(summary.is_partial());
        assert!(summary.issues[0].path.ends_with("secret"));
    } else {
        assert_eq!(summary.counts.unreadable, 0, "root reads everything");
    }
}

#[test]
fn missing_source_is_an_error_naming_it() {
    let tmp = TempDir::new().unwrap();
    let missing = tmp.path().join("nope");
    let mut sink = WriterSink::new(Vec::new());
    let err = archive::pack(&opts(&[&missing]), &mut sink, &|_| {}, &never()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
}

// ---------------------------------------------------------------- volumes, sinks, cancel

/// Incompressible bytes (xorshift), reproducible.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[derive(Default)]
struct Volumes {
    data: Vec<Vec<u8>>,
    infos: Vec<VolumeInfo>,
}

impl VolumeSink for Volumes {
    fn begin_volume(&mut self, index: u32) -> io::Result<()> {
        assert_eq!(index as usize, self.data.len() + 1);
        self.data.push(Vec::new());
        Ok(())
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.last_mut().unwrap().extend_from_slice(buf);
        Ok(())
    }
    fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()> {
        self.infos.push(info.clone());
        Ok(())
    }
}

#[test]
fn volumes_split_exactly_and_concatenate_back() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let noise = noise(400_000);
    fs::write(src.join("noise"), &noise).unwrap();
    let mut o = opts(&[&src]);
    o.volume_size = Some(64 * 1024);
    let mut sink = Volumes::default();
    let summary = archive::pack(&o, &mut sink, &|_| {}, &never()).unwrap();
    assert!(summary.volumes.len() >= 5, "{}", summary.volumes.len());
    assert_eq!(summary.volumes, sink.infos);
    let (last, full) = summary.volumes.split_last().unwrap();
    assert!(full.iter().all(|v| v.size == 64 * 1024));
    assert!(last.size <= 64 * 1024);
    for (v, bytes) in summary.volumes.iter().zip(&sink.data) {
        assert_eq!(v.md5, hex::encode(<md5::Md5 as md5::Digest>::digest(bytes)));
        assert_eq!(v.size, bytes.len() as u64);
    }
    let all = sink.data.concat();
    assert_eq!(
        summary.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&all))
    );
    let out = tmp.path().join("out");
    unpack_into(&all, &out);
    assert_eq!(fs::read(out.join("src/noise")).unwrap(), noise);
}

#[test]
fn sink_failure_names_the_volume() {
    struct Full;
    impl VolumeSink for Full {
        fn begin_volume(&mut self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn write(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::other("no space left"))
        }
        fn end_volume(&mut self, _: &VolumeInfo) -> io::Result<()> {
            Ok(())
        }
    }
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), vec![1u8; 100_000]).unwrap();
    let err = archive::pack(&opts(&[tmp.path()]), &mut Full, &|_| {}, &never()).unwrap_err();
    assert!(matches!(err, Error::Sink { index: 1, .. }), "{err:?}");
}

#[test]
fn cancel_stops_the_pack() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), "x").unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut sink = WriterSink::new(Vec::new());
    let err = archive::pack(&opts(&[tmp.path()]), &mut sink, &|_| {}, &cancel).unwrap_err();
    assert!(matches!(err, Error::Cancelled));
}

#[test]
fn progress_reports_bytes_and_counts() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), vec![3u8; 40 << 20]).unwrap();
    let seen = std::cell::RefCell::new(Vec::new());
    let mut sink = WriterSink::new(io::sink());
    archive::pack(
        &opts(&[tmp.path()]),
        &mut sink,
        &|p| seen.borrow_mut().push((p.bytes_read, p.counts.files)),
        &never(),
    )
    .unwrap();
    let seen = seen.into_inner();
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(seen.last().unwrap(), &(40 << 20, 1));
}

// ---------------------------------------------------------------- restore options

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "new").unwrap();
    let (bytes, _) = pack_to_vec(&opts(&[&src]));
    let out = tmp.path().join("out");
    fs::create_dir_all(out.join("src")).unwrap();
    fs::write(out.join("src/f"), "old").unwrap();

    let report = unpack_into(&bytes, &out);
    assert_eq!(fs::read_to_string(out.join("src/f")).unwrap(), "old");
    assert_eq!(report.skipped_count, 1);
    assert!(report.skipped[0].reason.contains("exists"));

    let mut o = UnpackOptions::new(&out);
    o.overwrite = true;
    archive::unpack(&bytes[..], &o, &never()).unwrap();
    assert_eq!(fs::read_to_string(out.join("src/f")).unwrap(), "new");
    let leftovers: Vec<_> = fs::read_dir(out.join("src")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[test]
fn includes_select_what_is_restored_and_listed() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("docs/deep")).unwrap();
    fs::create_dir_all(src.join("other")).unwrap();
    fs::write(src.join("docs/deep/a.pdf"), "a").unwrap();
    fs::write(src.join("other/b.txt"), "b").unwrap();
    fs::write(src.join("other/c.bin"), "c").unwrap();
    let (bytes, _) = pack_to_vec(&opts(&[&src]));
    let out = tmp.path().join("out");
    let mut o = UnpackOptions::new(&out);
    o.include = vec!["src/docs".into(), "*.txt".into()];
    let report = archive::unpack(&bytes[..], &o, &never()).unwrap();
    assert_eq!(report.files, 2);
    assert!(out.join("src/docs/deep/a.pdf").exists());
    assert!(out.join("src/other/b.txt").exists());
    assert!(!out.join("src/other/c.bin").exists());

    let mut lo = ListOptions::default();
    lo.include = vec!["*.bin".into()];
    let mut listed = Vec::new();
    let summary =
        archive::list(&bytes[..], &lo, &never(), &mut |e| listed.push(e.clone())).unwrap();
    assert_eq!(summary.entries, 1);
    assert_eq!(listed[0].path, Path::new("src/other/c.bin"));
    assert_eq!(listed[0].kind, EntryKind::File);
    assert_eq!(listed[0].size, 1);
}

#[test]
fn an_include_that_selects_nothing_is_an_error_naming_it() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/a.txt"), "a").unwrap();
    let (bytes, _) = pack_to_vec(&opts(&[&src]));
    let out = tmp.path().join("out");
    let mut o = UnpackOptions::new(&out);
    // The path the files had on the source machine, not in the archive.
    o.include = vec!["/home/alice/docs".into()];
    let err = archive::unpack(&bytes[..], &o, &never()).unwrap_err();
    assert!(
        matches!(err, archive::Error::NothingSelected { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/home/alice/docs"), "{err}");
    assert!(err.to_string().contains("synback ls"), "{err}");
    let mut lo = ListOptions::default();
    lo.include = vec!["*.pdf".into()];
    let err = archive::list(&bytes[..], &lo, &never(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, archive::Error::NothingSelected { .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------- encryption

#[test]
fn encrypted_round_trip_and_wrong_key() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    awkward_tree(&src);
    let (key, public) = age_key(tmp.path());
    let mut o = opts(&[&src]);
    o.recipients = vec![public];
    let (bytes, _) = pack_to_vec(&o);
    assert!(bytes.starts_with(b"age-encryption.org/v1"));

    let out = tmp.path().join("out");
    let err = archive::unpack(&bytes[..], &UnpackOptions::new(&out), &never()).unwrap_err();
    assert!(matches!(err, Error::NeedIdentity), "{err:?}");

    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let (wrong, _) = age_key(&other);
    let mut u = UnpackOptions::new(&out);
    u.keys = vec![DecryptKey::IdentityFile(wrong)];
    let err = archive::unpack(&bytes[..], &u, &never()).unwrap_err();
    assert!(matches!(err, Error::Decrypt { .. }), "{err:?}");
    assert!(
        !out.join("src").exists(),
        "nothing written with a wrong key"
    );

    u.keys = vec![DecryptKey::IdentityFile(key)];
    archive::unpack(&bytes[..], &u, &never()).unwrap();
    assert_same_tree(&src, &out.join("src"), true);
}

#[test]
fn passphrase_round_trip() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), "secret data").unwrap();
    let mut o = opts(&[tmp.path()]);
    o.passphrase = Some(Secret::new("correct horse"));
    let (bytes, _) = pack_to_vec(&o);
    let mut lo = ListOptions::default();
    lo.keys = vec![DecryptKey::Passphrase(Secret::new("correct horse"))];
    let summary = archive::list(&bytes[..], &lo, &never(), &mut |_| {}).unwrap();
    assert_eq!(summary.entries, 2);
}

// ---------------------------------------------------------------- real tools

#[test]
fn real_zstd_and_tar_restore_what_synback_packs() {
    if !have_tool("zstd") || !have_tool("tar") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    awkward_tree(&src);
    let mut o = opts(&[&src]);
    o.volume_size = Some(512);
    let dir = tmp.path().join("vols");
    fs::create_dir(&dir).unwrap();
    let mut sink = archive::FileSink::new(|i| dir.join(format!("snap.tar.zst.{i:03}")));
    archive::pack(&o, &mut sink, &|_| {}, &never()).unwrap();
    assert!(sink.files().len() > 1);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    sh(&format!(
        "cat '{d}'/snap.tar.zst.* | zstd -d -q | tar -x -p -C '{o}'",
        d = dir.display(),
        o = out.display()
    ));
    assert_same_tree(&src, &out.join("data"), false);
}

#[test]
fn real_age_decrypts_what_synback_encrypts() {
    if !have_tool("age") || !have_tool("zstd") || !have_tool("tar") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    awkward_tree(&src);
    let (key, public) = age_key(tmp.path());
    let mut o = opts(&[&src]);
    o.recipients = vec![public];
    let file = tmp.path().join("snap.tar.zst");
    let mut sink = WriterSink::new(fs::File::create(&file).unwrap());
    archive::pack(&o, &mut sink, &|_| {}, &never()).unwrap();
    sink.into_inner().flush().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    sh(&format!(
        "age -d -i '{k}' '{f}' | zstd -d -q | tar -x -p -C '{o}'",
        k = key.display(),
        f = file.display(),
        o = out.display()
    ));
    assert_same_tree(&src, &out.join("data"), false);
}

#[test]
fn synback_lists_and_restores_what_real_tools_pack() {
    if !have_tool("age") || !have_tool("zstd") || !have_tool("tar") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    awkward_tree(&src);
    let (key, public) = age_key(tmp.path());
    let plain = tmp.path().join("gnu.tar.zst");
    let sealed = tmp.path().join("gnu.tar.zst.age");
    sh(&format!(
        "tar -C '{t}' -cf - data | zstd -q -3 -T0 > '{p}' && age -r {public} -o '{s}' '{p}'",
        t = tmp.path().display(),
        p = plain.display(),
        s = sealed.display()
    ));

    let mut listed = Vec::new();
    archive::list(
        fs::File::open(&plain).unwrap(),
        &ListOptions::default(),
        &never(),
        &mut |e| listed.push(e.clone()),
    )
    .unwrap();
    let expected: Vec<_> = snapshot(&src, false)
        .into_keys()
        .map(|p| Path::new("data").join(p))
        .collect();
    let mut got: Vec<_> = listed
        .iter()
        .map(|e| e.path.clone())
        .filter(|p| p != Path::new("data"))
        .collect();
    got.sort();
    assert_eq!(got, expected);
    let link = listed
        .iter()
        .find(|e| e.path.ends_with("link-to-plain"))
        .unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some(Path::new("plain.txt")));

    let mut lo = ListOptions::default();
    lo.keys = vec![DecryptKey::IdentityFile(key.clone())];
    let n = archive::list(fs::File::open(&sealed).unwrap(), &lo, &never(), &mut |_| {}).unwrap();
    assert_eq!(n.entries, listed.len() as u64);
    let armored = tmp.path().join("gnu.tar.zst.asc");
    sh(&format!(
        "age -a -r {public} -o '{a}' '{p}'",
        a = armored.display(),
        p = plain.display()
    ));
    let n = archive::list(
        fs::File::open(&armored).unwrap(),
        &lo,
        &never(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(n.entries, listed.len() as u64, "armored age input");

    let out = tmp.path().join("out");
    let mut u = UnpackOptions::new(&out);
    u.keys = vec![DecryptKey::IdentityFile(key)];
    archive::unpack(fs::File::open(&sealed).unwrap(), &u, &never()).unwrap();
    assert_same_tree(&src, &out.join("data"), false);
}

// ---------------------------------------------------------------- hostile archives

/// A tar header with raw bytes as name (and link), as an attacker writes it.
fn raw_entry(tar: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

fn hostile(entries: &[(tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (kind, name, link) in entries {
        raw_entry(&mut tar, *kind, name.as_bytes(), link.as_bytes(), b"pwned");
    }
    tar.extend_from_slice(&[0; 1024]);
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// Unpacks into `<tmp>/target` and checks nothing appeared next to it.
fn unpack_hostile(bytes: &[u8], prepare: impl FnOnce(&Path)) -> Error {
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    prepare(&target);
    let err = archive::unpack(bytes, &UnpackOptions::new(&target), &never()).unwrap_err();
    let escaped: Vec<_> = fs::read_dir(&outside).unwrap().collect();
    assert!(escaped.is_empty(), "wrote outside the target: {escaped:?}");
    let siblings: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings.len(), 2, "{siblings:?}");
    err
}

fn assert_unsafe(err: Error, reason_part: &str) {
    match &err {
        Error::UnsafePath { reason, .. } => assert!(reason.contains(reason_part), "{err}"),
        other => panic!("expected UnsafePath, got {other:?}"),
    }
}

use tar::EntryType as T;

#[test]
fn directories_get_their_modes_even_when_a_later_entry_fails() {
    let mut tar = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("shared/").unwrap();
    h.set_entry_type(T::Directory);
    h.set_mode(0o750);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    raw_entry(&mut tar, T::Regular, b"../outside/evil", b"", b"pwned");
    tar.extend_from_slice(&[0; 1024]);
    let bytes = zstd::encode_all(&tar[..], 3).unwrap();
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("target");
    let err = archive::unpack(&bytes[..], &UnpackOptions::new(&target), &never()).unwrap_err();
    assert_unsafe(err, "..");
    // Made private (0700) while it filled, then given its archived mode.
    let meta = fs::metadata(target.join("shared")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    assert_eq!(meta.mtime(), 1_600_000_000);
}

#[test]
fn traversal_is_refused() {
    let err = unpack_hostile(&hostile(&[(T::Regular, "../outside/evil", "")]), |_| {});
    assert_unsafe(err, "..");
    let err = unpack_hostile(
        &hostile(&[(T::Regular, "a/../../outside/evil", "")]),
        |_| {},
    );
    assert_unsafe(err, "..");
}

#[test]
fn absolute_paths_are_refused() {
    let err = unpack_hostile(&hostile(&[(T::Regular, "/tmp/synback-evil", "")]), |_| {});
    assert_unsafe(err, "absolute");
    assert!(!Path::new("/tmp/synback-evil").exists());
}

#[test]
fn escaping_symlinks_are_refused() {
    let err = unpack_hostile(&hostile(&[(T::Symlink, "l", "../outside")]), |_| {});
    assert_unsafe(err, "outside");
    let err = unpack_hostile(&hostile(&[(T::Symlink, "l", "/etc")]), |_| {});
    assert_unsafe(err, "outside");
    let err = unpack_hostile(&hostile(&[(T::Symlink, "d/l", "x/../../..")]), |_| {});
    assert_unsafe(err, "outside");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // The archive plants an (inside-pointing) link, then writes through it.
    let err = unpack_hostile(
        &hostile(&[(T::Symlink, "l", "."), (T::Regular, "l/f", "")]),
        |_| {},
    );
    assert_unsafe(err, "symlink");
    // A link already in the target, pointing outside.
    let err = unpack_hostile(&hostile(&[(T::Regular, "planted/evil", "")]), |target| {
        std::os::unix::fs::symlink("../outside", target.join("planted")).unwrap();
    });
    assert_unsafe(err, "symlink");
}

#[test]
fn escaping_hard_links_are_refused() {
    let err = unpack_hostile(&hostile(&[(T::Link, "h", "../outside/x")]), |_| {});
    assert_unsafe(err, "..");
    let err = unpack_hostile(&hostile(&[(T::Link, "h", "/etc/passwd")]), |_| {});
    assert_unsafe(err, "absolute");
}

#[test]
fn allowed_external_symlinks_are_links_only() {
    let tmp = TempDir::new().unwrap();
    let bytes = hostile(&[(T::Symlink, "etc-link", "/etc")]);
    let mut o = UnpackOptions::new(tmp.path());
    o.allow_external_symlinks = true;
    archive::unpack(&bytes[..], &o, &never()).unwrap();
    assert_eq!(
        fs::read_link(tmp.path().join("etc-link")).unwrap(),
        Path::new("/etc")
    );
}

fn good_archive() -> Vec<u8> {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), vec![42u8; 200_000]).unwrap();
    pack_to_vec(&opts(&[tmp.path()])).0
}

#[test]
fn truncated_zstd_is_a_zstd_error() {
    let bytes = good_archive();
    let err = unpack_hostile(&bytes[..bytes.len() - 10], |_| {});
    assert!(matches!(err, Error::Zstd { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt or truncated"), "{err}");
}

#[test]
fn corrupt_zstd_is_a_zstd_error() {
    let mut bytes = good_archive();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let err = unpack_hostile(&bytes, |_| {});
    assert!(matches!(err, Error::Zstd { .. }), "{err:?}");
}

#[test]
fn truncated_age_stream_is_refused() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("f"), vec![1u8; 300_000]).unwrap();
    let (key, public) = age_key(tmp.path());
    let mut o = opts(&[tmp.path()]);
    o.recipients = vec![public];
    let (bytes, _) = pack_to_vec(&o);
    let mut u = UnpackOptions::new(tmp.path().join("out"));
    u.keys = vec![DecryptKey::IdentityFile(key)];
    let err = archive::unpack(&bytes[..bytes.len() - 100], &u, &never()).unwrap_err();
    assert!(matches!(err, Error::DecryptStream { .. }), "{err:?}");
}

#[test]
fn garbage_is_not_an_archive() {
    let err = unpack_hostile(b"PK\x03\x04 definitely a zip", |_| {});
    assert!(matches!(err, Error::UnknownFormat), "{err:?}");
}

#[test]
fn one_file_system_stays_on_the_source_device() {
    let (dev, pts) = (Path::new("/dev"), Path::new("/dev/pts"));
    let same =
        |a: &Path, b: &Path| fs::metadata(a).unwrap().dev() == fs::metadata(b).unwrap().dev();
    if !pts.is_dir() || same(dev, pts) {
        eprintln!("SKIPPED: /dev/pts is not a separate mount here");
        return;
    }
    let mut o = opts(&[dev]);
    o.one_file_system = true;
    let (bytes, summary) = pack_to_vec(&o);
    assert!(
        summary.counts.special > 0,
        "device files are skipped with a warning"
    );
    let mut names = Vec::new();
    archive::list(&bytes[..], &ListOptions::default(), &never(), &mut |e| {
        names.push(e.path.clone())
    })
    .unwrap();
    assert!(
        names.contains(&PathBuf::from("dev/pts")),
        "the mount point itself is kept"
    );
    assert!(
        !names
            .iter()
            .any(|p| p.starts_with("dev/pts") && p != Path::new("dev/pts")),
        "{names:?}"
    );
}

#[test]
fn cancel_stops_unpack_and_list() {
    let bytes = good_archive();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let tmp = TempDir::new().unwrap();
    let err = archive::unpack(&bytes[..], &UnpackOptions::new(tmp.path()), &cancel).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    let err = archive::list(&bytes[..], &ListOptions::default(), &cancel, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
}

#[test]
fn a_file_even_root_cannot_read_is_reported_not_dropped() {
    // Write-only sysfs attribute: open() fails with EACCES, even for root.
    let wo = Path::new("/sys/bus/pci/rescan");
    if fs::File::open(wo).is_ok() || !wo.exists() {
        eprintln!("SKIPPED: no unreadable sysfs attribute here");
        return;
    }
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("ok"), "fine").unwrap();
    let (bytes, summary) = pack_to_vec(&opts(&[tmp.path(), wo]));
    assert_eq!(summary.counts.unreadable, 1);
    assert!(summary.is_partial());
    assert_eq!(summary.issues[0].path, wo);
    assert_eq!(summary.issues[0].kind, IssueKind::Unreadable);
    assert!(
        summary.issues[0].reason.contains("cannot open"),
        "{:?}",
        summary.issues
    );
    let listed = archive::list(&bytes[..], &ListOptions::default(), &never(), &mut |_| {}).unwrap();
    assert_eq!(listed.entries, 2, "the readable part is archived");
}

#[test]
fn only_the_final_volume_is_marked_last() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("noise"), noise(50_000)).unwrap();
    let mut o = opts(&[tmp.path()]);
    o.volume_size = Some(20_000);
    let mut sink = Volumes::default();
    let summary = archive::pack(&o, &mut sink, &|_| {}, &never()).unwrap();
    let last: Vec<bool> = sink.infos.iter().map(|v| v.last).collect();
    assert_eq!(last.len(), summary.volumes.len());
    assert!(last.len() >= 3);
    assert!(last[..last.len() - 1].iter().all(|l| !l) && last[last.len() - 1]);
    o.volume_size = None;
    let (_, single) = pack_to_vec(&o);
    assert!(single.volumes[0].last);
}

#[test]
fn owners_are_restored_when_root() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    if std::os::unix::fs::lchown(src.join("f"), Some(1234), Some(2345)).is_err() {
        eprintln!("SKIPPED: not root, cannot set owners");
        return;
    }
    std::os::unix::fs::lchown(src.join("l"), Some(1235), Some(2346)).unwrap();
    let (bytes, _) = pack_to_vec(&opts(&[&src]));
    let out = tmp.path().join("out");
    unpack_into(&bytes, &out);
    let f = fs::symlink_metadata(out.join("src/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1234, 2345));
    let l = fs::symlink_metadata(out.join("src/l")).unwrap();
    assert_eq!((l.uid(), l.gid()), (1235, 2346));

    let mut o = UnpackOptions::new(tmp.path().join("out2"));
    o.restore_owner = Some(false);
    archive::unpack(&bytes[..], &o, &never()).unwrap();
    assert_eq!(
        fs::metadata(tmp.path().join("out2/src/f")).unwrap().uid(),
        0
    );
}

#[test]
fn overwriting_a_hard_link_with_itself_leaves_no_temporary_file() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), "same").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let (bytes, _) = pack_to_vec(&opts(&[&src]));
    let out = tmp.path().join("out");
    unpack_into(&bytes, &out);
    let mut o = UnpackOptions::new(&out);
    o.overwrite = true;
    archive::unpack(&bytes[..], &o, &never()).unwrap();
    let mut names: Vec<_> = fs::read_dir(out.join("src"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Damaged archives fail cleanly: no panic, nothing outside the target.
    #[test]
    fn damaged_archives_never_escape(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
    ) {
        let mut bytes = hostile(&[
            (T::Directory, "d/", ""),
            (T::Regular, "d/f", ""),
            (T::Symlink, "d/l", "f"),
            (T::Link, "d/h", "d/f"),
        ]);
        for (ix, x) in &flips {
            let i = ix.index(bytes.len());
            bytes[i] ^= x;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let tmp = TempDir::new().unwrap();
        let target = tmp.path().join("target");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let _ = archive::unpack(&bytes[..], &UnpackOptions::new(&target), &never());
        prop_assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        prop_assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }
}
