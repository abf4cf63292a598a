//! The fuzz targets' committed corpus (seeds and fixed crash reproducers in
//! `fuzz/corpus/<target>/`) replayed through the same harness functions
//! (`synback::fuzzing`), plus cheap proptest equivalents, so that a
//! regression shows in `cargo test` without a nightly toolchain.
//!
//! `cargo test --test it fuzz_corpus::regenerate_seeds -- --ignored`
//! rewrites the generated seeds from real synback output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use synback::archive::{self, PackOptions, WriterSink};
use synback::fuzzing::{self, BOUNDARY, UploadHarness};
use tokio_util::sync::CancellationToken;

type Harness = fn(&[u8]) -> Result<(), String>;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs every file of a target's corpus; returns how many ran.
fn replay(target: &str, harness: &dyn Fn(&[u8]) -> Result<(), String>) -> usize {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if let Err(broken) = harness(&data) {
            panic!("{}: {broken}", file.display());
        }
    }
    files.len()
}

fn upload_harness() -> &'static std::sync::Mutex<UploadHarness> {
    static HARNESS: OnceLock<std::sync::Mutex<UploadHarness>> = OnceLock::new();
    HARNESS.get_or_init(|| std::sync::Mutex::new(UploadHarness::new().unwrap()))
}

fn upload_succeeds(data: &[u8]) -> Result<bool, String> {
    let harness = upload_harness().lock().unwrap_or_else(|e| e.into_inner());
    harness.run(data)
}

fn upload(data: &[u8]) -> Result<(), String> {
    upload_succeeds(data).map(drop)
}

const TARGETS: &[(&str, Harness)] = &[
    ("dsm_reply", fuzzing::dsm_reply),
    ("manifest", fuzzing::manifest),
    ("config", fuzzing::config),
    ("archive", fuzzing::archive),
    ("archive_age", fuzzing::archive_age),
    ("emulator_upload", upload),
];

#[test]
fn every_committed_corpus_file_passes_its_harness() {
    for (target, harness) in TARGETS {
        let n = replay(target, harness);
        assert!(n >= 3, "{target}: only {n} corpus files");
    }
}

/// The harnesses are not vacuous: each one rejects a broken invariant that
/// it is meant to see.
#[test]
fn harnesses_see_what_they_check() {
    // A real archive unpacks; its files land in the target (checked by the
    // harness succeeding) and a hostile one is refused without escaping.
    let real = std::fs::read(corpus_dir("archive").join("real.tar.zst")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = archive::unpack(
        &real[..],
        &archive::UnpackOptions::new(out.path()),
        &CancellationToken::new(),
    )
    .unwrap();
    assert!(summary.files >= 2, "{summary:?}");
    let hostile = std::fs::read(corpus_dir("archive").join("hostile-planted.tar.zst")).unwrap();
    fuzzing::archive(&hostile).unwrap();
    // Each of the archive harness's checks fires when its rule is broken.
    use fuzzing::Sabotage;
    for overwrite in [false, true] {
        fuzzing::archive_sabotaged(&real, overwrite, Sabotage::None).unwrap();
    }
    let canary = std::env::temp_dir().join(fuzzing::ESCAPE_CANARY);
    for (sabotage, says) in [
        (Sabotage::Beside, "outside its target"),
        (Sabotage::FarAbove, "outside its target"),
        (Sabotage::ThroughLink, "through a symlink"),
        (Sabotage::ReplaceLink, "replaced an existing name"),
        (Sabotage::Canary, fuzzing::ESCAPE_CANARY),
    ] {
        let _ = std::fs::remove_file(&canary);
        let err = fuzzing::archive_sabotaged(&real, false, sabotage).unwrap_err();
        assert!(err.contains(says), "{sabotage:?}: {err}");
    }
    assert!(!canary.exists());
    // The emulator harness really uploads: a valid body answers success.
    let ok = multipart(
        2,
        "/backup",
        &[("overwrite", "true")],
        Some(("a.txt", b"hello")),
    );
    assert!(upload_succeeds(&ok).unwrap());
    let outside = multipart(
        2,
        "/backup/../x",
        &[("overwrite", "true")],
        Some(("a", b"x")),
    );
    assert!(!upload_succeeds(&outside).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_break_a_harness(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (target, harness) in TARGETS {
            if let Err(broken) = harness(&data) {
                panic!("{target}: {broken}");
            }
        }
    }

    #[test]
    fn mutated_seeds_never_break_a_harness(target in 0..TARGETS.len(), seed in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let (name, harness) = TARGETS[target];
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut data = std::fs::read(seed.get(&files)).unwrap();
        if !data.is_empty() {
            let i = at.index(data.len());
            if cut { data.truncate(i) } else { data[i] = byte }
        }
        if let Err(broken) = harness(&data) {
            panic!("{name}: {broken}");
        }
    }
}

/// A multipart body as the harness expects it: the version/length byte,
/// then the fields, then the file part.
fn multipart(
    version: u8,
    path: &str,
    fields: &[(&str, &str)],
    file: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut out = vec![version.wrapping_sub(1)];
    let mut field = |name: &str, value: &str| {
        write!(
            out,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    };
    field("path", path);
    field("create_parents", "true");
    for (name, value) in fields {
        field(name, value);
    }
    if let Some((name, data)) = file {
        write!(out, "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").unwrap();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    write!(out, "--{BOUNDARY}--\r\n").unwrap();
    out
}

fn sample_source() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docs");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(root.join("sub/data.bin"), [7u8; 300]).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    std::fs::hard_link(root.join("hello.txt"), root.join("sub/hard")).unwrap();
    dir
}

fn pack(source: &Path, recipients: &[&str]) -> Vec<u8> {
    let mut opts = PackOptions::new([source]);
    opts.recipients = recipients.iter().map(|r| (*r).to_owned()).collect();
    let mut sink = WriterSink::new(Vec::new());
    archive::pack(&opts, &mut sink, &|_| {}, &CancellationToken::new()).unwrap();
    sink.into_inner()
}

/// A tar stream with raw names (the `tar` crate's builder refuses `..`).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    zstd::encode_all(&plain_tar(entries)[..], 3).unwrap()
}

/// [`raw_tar`] before compression.
fn plain_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Path-ish names from parts that hostile archives use.
fn hostile_name() -> impl Strategy<Value = String> {
    let part = prop::sample::select(vec![
        "..",
        ".",
        "planted",
        "d",
        "x",
        "",
        "tmp",
        fuzzing::ESCAPE_CANARY,
    ]);
    (any::<bool>(), proptest::collection::vec(part, 1..5)).prop_map(|(absolute, parts)| {
        let name = parts.join("/");
        let name = if absolute { format!("/{name}") } else { name };
        name.chars().take(99).collect()
    })
}

fn entry_kind() -> impl Strategy<Value = tar::EntryType> {
    prop::sample::select(vec![
        tar::EntryType::Regular,
        tar::EntryType::Directory,
        tar::EntryType::Symlink,
        tar::EntryType::Link,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Well-formed zstd around a tar whose entries are hostile names,
    /// links and hard links (plus, sometimes, one mutated header byte):
    /// they get past the decoder and into the extractor's checks, unlike
    /// random bytes. Through both archive harnesses, plain and under age.
    #[test]
    fn structured_hostile_archives_never_escape(
        entries in proptest::collection::vec((hostile_name(), entry_kind(), hostile_name(), proptest::collection::vec(any::<u8>(), 0..64)), 1..6),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let raw: Vec<(&str, tar::EntryType, &str, &[u8])> = entries
            .iter()
            .map(|(name, kind, link, data)| (name.as_str(), *kind, link.as_str(), &data[..]))
            .collect();
        let mut tar = plain_tar(&raw);
        if let Some((at, byte)) = flip {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        let stream = zstd::encode_all(&tar[..], 3).unwrap();
        if let Err(broken) = fuzzing::archive(&stream) {
            panic!("archive: {broken}");
        }
        let mut under_age = vec![1u8];
        under_age.extend_from_slice(&stream);
        if let Err(broken) = fuzzing::archive_age(&under_age) {
            panic!("archive_age: {broken}");
        }
    }
}

#[tokio::test]
#[ignore = "rewrites fuzz/corpus seeds; run by hand"]
async fn regenerate_seeds() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let write = |target: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(corpus_dir(target)).unwrap();
        std::fs::write(corpus_dir(target).join(name), data).unwrap();
    };
    let source = sample_source();
    let real = pack(&source.path().join("docs"), &[]);
    write("archive", "real.tar.zst", &real);
    write(
        "archive",
        "hostile-dotdot.tar.zst",
        &raw_tar(&[("../evil", Regular, "", b"x")]),
    );
    write(
        "archive",
        "hostile-absolute.tar.zst",
        &raw_tar(&[("/tmp/synback-fuzz-evil", Regular, "", b"x")]),
    );
    write(
        "archive",
        "hostile-planted.tar.zst",
        &raw_tar(&[
            ("planted/x", Regular, "", b"through the link"),
            ("d/", Directory, "", b""),
            ("d/up", Symlink, "../..", b""),
            ("d/up/y", Regular, "", b"y"),
            ("hard", Link, "../outside/z", b""),
        ]),
    );
    write("archive", "truncated.tar.zst", &real[..real.len() / 2]);
    write(
        "archive_age",
        "plain-under-age.bin",
        &[&[1u8][..], &real].concat(),
    );
    let encrypted = pack(&source.path().join("docs"), &[fuzzing::FUZZ_RECIPIENT]);
    write(
        "archive_age",
        "encrypted.age",
        &[&[0u8][..], &encrypted].concat(),
    );
    write(
        "archive_age",
        "hostile-under-age.bin",
        &[
            &[1u8][..],
            &raw_tar(&[("planted/x", Regular, "", b"through the link")]),
        ]
        .concat(),
    );

    let target: Arc<dyn synback::repo::Target> =
        Arc::new(synback::repo::MemoryTarget::with_folder());
    let job = synback::repo::JobName::new("docs").unwrap();
    let opts =
        synback::backup::BackupOptions::new(job, PackOptions::new([source.path().join("docs")]));
    let report = synback::backup::run(
        target.clone(),
        &opts,
        Arc::new(synback::event::NoEvents),
        CancellationToken::new(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let name = format!("{}.manifest.json", report.snapshot);
    let mut stream = target.get(&name).await.unwrap();
    let mut manifest = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        manifest.extend_from_slice(&chunk.unwrap());
    }
    write("manifest", "real.manifest.json", &manifest);
    let text = String::from_utf8(manifest).unwrap();
    write(
        "manifest",
        "newer-format.json",
        text.replacen("\"format\": 1", "\"format\": 2", 1)
            .as_bytes(),
    );
    write(
        "manifest",
        "missing-volumes.json",
        text.replacen("\"volumes\"", "\"volumes_\"", 1).as_bytes(),
    );

    let example =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")).unwrap();
    write("config", "config.example.toml", &example);
    write(
        "config",
        "minimal.toml",
        b"[nas]\nurl = \"https://nas.local:5001\"\nuser = \"backup\"\npassword = \"pw\"\n\n[[job]]\nname = \"docs\"\nsources = [\"/srv/docs\"]\nshare = \"backup\"\n",
    );
    write(
        "config",
        "bad-types.toml",
        b"[nas]\nurl = 5\nuser = [\"a\"]\n\n[[job]]\nname = \"../x\"\nsources = \"/srv\"\nvolume_size = \"12 parsecs\"\n",
    );

    write(
        "emulator_upload",
        "v2-overwrite.bin",
        &multipart(
            2,
            "/backup/in",
            &[("overwrite", "true")],
            Some(("a.txt", b"hello")),
        ),
    );
    write(
        "emulator_upload",
        "v3-skip-mtime.bin",
        &multipart(
            3,
            "/backup/in",
            &[("overwrite", "skip"), ("mtime", "1700000000000")],
            Some(("b.bin", &[0u8; 64])),
        ),
    );
    write(
        "emulator_upload",
        "dotdot-name.bin",
        &multipart(
            2,
            "/backup/../etc",
            &[("overwrite", "true")],
            Some(("../x", b"x")),
        ),
    );
    write(
        "emulator_upload",
        "no-file-part.bin",
        &multipart(1, "/backup", &[], None),
    );
    let mut truncated = multipart(2, "/backup", &[("overwrite", "true")], Some(("t", b"abc")));
    truncated.truncate(truncated.len() - 20);
    write("emulator_upload", "truncated.bin", &truncated);
}
