//! The fault matrix: every emulator fault aimed at every phase of a backup
//! (and at the downloads of a restore), each cell on its own emulator that
//! starts from a copy of one NAS holding an earlier snapshot.
//!
//! After each cell: every listed snapshot verifies (sizes and NAS MD5
//! against the manifest), the earlier snapshot is intact, the exit code and
//! message are the expected ones, and a failed run's leftovers are gone
//! after the next successful run. The matrix is printed as a table:
//! `cargo test --test it faults::fault_matrix -- --nocapture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synback::agent::{Agent, VerifyMode};
use synback::config::{Config, ConfigEnv};
use synback::emulator::{AimedFault, Emulator, EmulatorConfig, FaultAction};
use synback::restore::Selector;
use synback::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::support::{PASSWORD, USER, chain};

/// One volume is 1 MiB (the smallest the config allows); the source is a
/// little over 2 MiB of incompressible bytes, so a snapshot has 3 volumes:
/// first, middle and last.
const VOLUMES: usize = 3;

/// Deterministic incompressible bytes (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The backed-up tree: two noise files, some text, a nested folder.
pub fn source_tree(dir: &Path, noise_bytes: usize) {
    std::fs::create_dir_all(dir.join("docs/deep")).unwrap();
    std::fs::write(dir.join("docs/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("docs/deep/b.txt"), "beta\n".repeat(500)).unwrap();
    std::fs::write(dir.join("noise1.bin"), noise(noise_bytes / 2, 7)).unwrap();
    std::fs::write(dir.join("noise2.bin"), noise(noise_bytes / 2, 11)).unwrap();
}

/// A config for a job `home` of `source` on the emulator at `url`, with
/// 1 MiB volumes and quick retries.
pub fn write_config(dir: &Path, url: &str, source: &Path, extra_job: &str) -> PathBuf {
    let retry = "max_attempts = 4\nbase_delay = \"20ms\"\nmax_delay = \"100ms\"";
    let job = format!("volume_size = \"1MiB\"\n{extra_job}");
    crate::support::write_config_file(dir, url, source, retry, &job)
}

fn agent(config: &Path) -> Agent {
    Agent::new(Config::load(config, &ConfigEnv::new()).unwrap())
}

async fn start_nas(root: PathBuf) -> Emulator {
    let cfg = EmulatorConfig::new(root, USER, Secret::new(PASSWORD));
    Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// File names in the job folder (emulator temp files left out).
fn job_files(nas: &Emulator) -> Vec<String> {
    let dir = nas.share_path("backup").join("pc").join("home");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".synback-upload"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A phase of a run that a fault is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Login,
    Lock,
    FirstVolume,
    MiddleVolume,
    LastVolume,
    Md5,
    Rename,
    Manifest,
    Retention,
    Download,
}

impl Phase {
    const ALL: [Phase; 10] = [
        Phase::Login,
        Phase::Lock,
        Phase::FirstVolume,
        Phase::MiddleVolume,
        Phase::LastVolume,
        Phase::Md5,
        Phase::Rename,
        Phase::Manifest,
        Phase::Retention,
        Phase::Download,
    ];

    fn label(self) -> &'static str {
        match self {
            Phase::Login => "login",
            Phase::Lock => "lock write",
            Phase::FirstVolume => "upload 1st volume",
            Phase::MiddleVolume => "upload middle volume",
            Phase::LastVolume => "upload last volume",
            Phase::Md5 => "MD5 task",
            Phase::Rename => "rename",
            Phase::Manifest => "manifest write",
            Phase::Retention => "retention delete",
            Phase::Download => "restore download",
        }
    }

    /// What a failure in this phase must name.
    fn names(self) -> &'static str {
        match self {
            Phase::Login => "login",
            Phase::Lock => ".lock",
            Phase::FirstVolume => ".tar.zst.001",
            Phase::MiddleVolume => ".tar.zst.002",
            Phase::LastVolume => ".tar.zst.003",
            Phase::Md5 => "md5",
            Phase::Rename => "rename",
            Phase::Manifest => ".manifest.json",
            Phase::Retention => "delete",
            Phase::Download => ".tar.zst.001",
        }
    }

    fn is_upload(self) -> bool {
        matches!(
            self,
            Phase::Lock
                | Phase::FirstVolume
                | Phase::MiddleVolume
                | Phase::LastVolume
                | Phase::Manifest
        )
    }

    /// The calls of this phase.
    fn aim(self, action: FaultAction) -> AimedFault {
        let upload = |part: &str| {
            AimedFault::new("SYNO.FileStation.Upload", action.clone()).name_contains(part)
        };
        match self {
            Phase::Login => AimedFault::new("SYNO.API.Auth", action.clone()).method("login"),
            Phase::Lock => upload(".lock"),
            Phase::FirstVolume => upload(".tar.zst.001"),
            Phase::MiddleVolume => upload(".tar.zst.002"),
            Phase::LastVolume => upload(".tar.zst.003"),
            Phase::Manifest => upload(".manifest.json"),
            Phase::Md5 => AimedFault::new("SYNO.FileStation.MD5", action).method("start"),
            Phase::Rename => AimedFault::new("SYNO.FileStation.Rename", action),
            Phase::Retention => {
                AimedFault::new("SYNO.FileStation.Delete", action).name_contains(".manifest.json")
            }
            // The 2nd download: the first volume's bytes are already being
            // extracted when it fails.
            Phase::Download => AimedFault::new("SYNO.FileStation.Download", action).nth(2),
        }
    }
}

/// A fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Drop,
    Http502,
    Busy,
    SessionExpired,
    Asleep,
    Corrupt,
    DiskFull,
    Quota,
    Http502Always,
    Cut,
    CutAlways,
}

impl Fault {
    const ALL: [Fault; 11] = [
        Fault::Drop,
        Fault::Http502,
        Fault::Busy,
        Fault::SessionExpired,
        Fault::Asleep,
        Fault::Corrupt,
        Fault::DiskFull,
        Fault::Quota,
        Fault::Http502Always,
        Fault::Cut,
        Fault::CutAlways,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::Drop => "drop conn",
            Fault::Http502 => "HTTP 502",
            Fault::Busy => "busy 117",
            Fault::SessionExpired => "session lost",
            Fault::Asleep => "NAS asleep",
            Fault::Corrupt => "corrupt bytes",
            Fault::DiskFull => "disk full 416",
            Fault::Quota => "quota 415",
            Fault::Http502Always => "502 always",
            Fault::Cut => "cut mid-body",
            Fault::CutAlways => "cut always",
        }
    }

    fn action(self) -> FaultAction {
        match self {
            Fault::Drop => FaultAction::Drop,
            Fault::Http502 | Fault::Http502Always => FaultAction::Http(502),
            Fault::Busy => FaultAction::Code(117),
            Fault::SessionExpired => FaultAction::ExpireSessions,
            Fault::Asleep => FaultAction::Delay(Duration::from_millis(700)),
            Fault::Corrupt => FaultAction::Corrupt,
            Fault::DiskFull => FaultAction::Code(416),
            Fault::Quota => FaultAction::Code(415),
            // 64 KiB of the body (a download announced in full), then the
            // link dies.
            Fault::Cut | Fault::CutAlways => FaultAction::CutAfter(64 << 10),
        }
    }

    /// Why this fault cannot happen in `phase`, if it cannot.
    fn not_applicable(self, phase: Phase) -> Option<&'static str> {
        match self {
            // At the MD5 task: the NAS reports a digest that is not the
            // file's.
            Fault::Corrupt
                if !phase.is_upload() && !matches!(phase, Phase::Download | Phase::Md5) =>
            {
                Some("no bytes stored or served")
            }
            Fault::DiskFull | Fault::Quota if !phase.is_upload() => Some("nothing stored"),
            Fault::Cut | Fault::CutAlways if !phase.is_upload() && phase != Phase::Download => {
                Some("no body sent")
            }
            Fault::SessionExpired | Fault::Busy if phase == Phase::Login => Some("no session yet"),
            _ => None,
        }
    }
}

/// What a cell must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The run succeeds (after retries).
    Ok,
    /// The run fails with this exit code and a message containing these
    /// words.
    Fail(u8, &'static [&'static str]),
}

fn expected(fault: Fault, phase: Phase) -> Expect {
    match (fault, phase) {
        (Fault::DiskFull, _) => Expect::Fail(1, &["no space left", "free space"]),
        (Fault::Quota, _) => Expect::Fail(1, &["quota", "raise"]),
        // Retention failures never fail a stored snapshot.
        (_, Phase::Retention) => Expect::Ok,
        // DSM behind the front-end is down: "unreachable", try later.
        (Fault::Http502Always, _) => Expect::Fail(5, &["502", "run again"]),
        // Bytes that differ from the manifest's SHA-256 are never extracted.
        (Fault::Corrupt, Phase::Download) => Expect::Fail(4, &["corrupt", "verify"]),
        // A link that dies in every attempt: a connection problem, not
        // corruption.
        (Fault::CutAlways, Phase::Download) => {
            Expect::Fail(5, &["broke off", "run the restore again"])
        }
        (Fault::CutAlways, _) => Expect::Fail(5, &["not answering", "run again"]),
        _ => Expect::Ok,
    }
}

/// What happened in one cell.
#[derive(Debug, Clone)]
struct Outcome {
    text: String,
    problems: Vec<String>,
}

/// The NAS with one earlier snapshot, made once and copied for each cell.
struct Template {
    dir: tempfile::TempDir,
    source: PathBuf,
    nas_root: PathBuf,
    baseline: String,
}

async fn template() -> Template {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data");
    source_tree(&source, 2 * 1024 * 1024 + 200 * 1024);
    let nas_root = dir.path().join("nas");
    let nas = start_nas(nas_root.clone()).await;
    let config = write_config(dir.path(), &nas.url(), &source, "");
    let report = agent(&config)
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.volumes.len(), VOLUMES, "{:?}", report.volumes);
    nas.shutdown().await;
    // Later snapshots must not share the baseline's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Template {
        dir,
        source,
        nas_root,
        baseline: report.snapshot,
    }
}

async fn run_cell(tpl: &Template, fault: Fault, phase: Phase) -> Outcome {
    let cell = tempfile::tempdir().unwrap();
    let root = cell.path().join("nas");
    copy_tree(&tpl.nas_root, &root);
    let nas = start_nas(root).await;
    let extra = match phase {
        Phase::Retention => "[job.retention]\nkeep_last = 1",
        _ => "",
    };
    let config = write_config(cell.path(), &nas.url(), &tpl.source, extra);
    let agent = agent(&config);
    let mut problems = Vec::new();
    let aimed = phase.aim(fault.action()).times(match fault {
        Fault::Http502Always | Fault::CutAlways => None,
        _ => Some(1),
    });
    nas.faults().update(|f| f.aimed = vec![aimed]);

    let restore_dir = cell.path().join("restore");
    // What retention deleted (nothing for a restore).
    let result = match phase {
        Phase::Download => crate::support::restore_latest(&agent, &restore_dir, false)
            .await
            .map(|_| (Vec::new(), None)),
        _ => agent
            .backup("home", CancellationToken::new())
            .await
            .map(|report| (report.forgotten, report.retention_error)),
    };
    if nas.faults().aimed_hits() == 0 {
        problems.push("the fault never fired".to_owned());
    }
    nas.faults().clear();

    let text = match (&result, expected(fault, phase)) {
        (Ok((forgotten, retention_error)), Expect::Ok) if phase == Phase::Retention => {
            // keep_last = 1: the earlier snapshot goes, unless every delete
            // failed; then it stays for the next run, and the report says so.
            let (want, warned) = match fault {
                Fault::Http502Always => (Vec::new(), true),
                _ => (vec![tpl.baseline.clone()], false),
            };
            if *forgotten != want {
                problems.push(format!("retention forgot {forgotten:?}, not {want:?}"));
            }
            if retention_error.is_some() != warned {
                problems.push(format!("retention error reported: {retention_error:?}"));
            }
            match fault {
                Fault::Http502Always => "ok, retention left for the next run".to_owned(),
                _ => "retried-ok".to_owned(),
            }
        }
        (Ok(_), Expect::Ok) => "retried-ok".to_owned(),
        (Err(err), Expect::Fail(code, words)) => {
            let message = format!("{}\n{}", chain(err), err.hint().unwrap_or_default());
            if err.exit_code() != code {
                problems.push(format!(
                    "exit code {} not {code}: {message}",
                    err.exit_code()
                ));
            }
            if !message.to_lowercase().contains(phase.names()) {
                problems.push(format!(
                    "message does not name {:?}: {message}",
                    phase.names()
                ));
            }
            for word in words {
                if !message.to_lowercase().contains(word) {
                    problems.push(format!("message lacks {word:?}: {message}"));
                }
            }
            format!("failed-clean, exit {}", err.exit_code())
        }
        (Ok(_), Expect::Fail(code, _)) => {
            problems.push(format!("succeeded, expected exit {code}"));
            "UNEXPECTED ok".to_owned()
        }
        (Err(err), Expect::Ok) => {
            problems.push(format!("failed (exit {}): {}", err.exit_code(), chain(err)));
            format!("UNEXPECTED exit {}", err.exit_code())
        }
    };

    check_state(
        &agent,
        &nas,
        tpl,
        (phase, fault),
        result.is_ok(),
        &mut problems,
    )
    .await;
    if phase == Phase::Download {
        check_restored(
            &tpl.source,
            &restore_dir.join("data"),
            result.is_ok(),
            &mut problems,
        );
    } else if result.is_err() || phase == Phase::Retention {
        // The next successful run removes whatever this one left.
        if phase == Phase::Retention {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        match agent.backup("home", CancellationToken::new()).await {
            Ok(_) => {
                let left: Vec<String> = job_files(&nas)
                    .into_iter()
                    .filter(|n| n.ends_with(".partial") || n == ".lock")
                    .collect();
                if !left.is_empty() {
                    problems.push(format!("left after the next run: {left:?}"));
                }
                let listing = agent.snapshots("home").await.unwrap();
                if !listing.orphans.is_empty() || !listing.partials.is_empty() {
                    problems.push(format!(
                        "orphans/partials after the next run: {:?}",
                        job_files(&nas)
                    ));
                }
                // What retention left is gone now: keep_last = 1 keeps
                // only the next run's snapshot.
                let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
                if phase == Phase::Retention && ids.len() != 1 {
                    problems.push(format!("after the next run retention kept {ids:?}"));
                }
            }
            Err(err) => problems.push(format!("the next run failed: {}", chain(&err))),
        }
    }
    Outcome { text, problems }
}

/// Every listed snapshot verifies; the baseline is listed (unless
/// retention may have removed it); a failed run recorded nothing.
async fn check_state(
    agent: &Agent,
    nas: &Emulator,
    tpl: &Template,
    (phase, fault): (Phase, Fault),
    ok: bool,
    problems: &mut Vec<String>,
) {
    let listing = match agent.snapshots("home").await {
        Ok(listing) => listing,
        Err(err) => {
            problems.push(format!("cannot list: {}", chain(&err)));
            return;
        }
    };
    let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
    for id in &ids {
        if let Err(err) = agent
            .verify(
                "home",
                &Selector::Id(id.clone()),
                VerifyMode::Quick,
                CancellationToken::new(),
            )
            .await
        {
            problems.push(format!(
                "listed snapshot {id} does not verify: {}",
                chain(&err)
            ));
        }
    }
    if phase != Phase::Retention && !ids.contains(&tpl.baseline) {
        problems.push(format!("the earlier snapshot is gone: {ids:?}"));
    }
    let runs = match phase {
        Phase::Download => 0,
        _ => usize::from(ok),
    };
    let expected = match (phase, fault) {
        // Every delete failed: the earlier snapshot is still there.
        (Phase::Retention, Fault::Http502Always) => ids.len() == 2 && ids.contains(&tpl.baseline),
        (Phase::Retention, _) => ids.len() == 1 && !ids.contains(&tpl.baseline),
        _ => ids.len() == 1 + runs,
    };
    if !expected {
        problems.push(format!("listed {ids:?} after a run that ok={ok}"));
    }
    if ok && phase != Phase::Download {
        let left: Vec<String> = job_files(nas)
            .into_iter()
            .filter(|n| n.ends_with(".partial") || n == ".lock")
            .collect();
        if !left.is_empty() {
            problems.push(format!("a successful run left {left:?}"));
        }
    }
}

/// A finished restore equals the source; a failed one left no file under
/// its final name with other bytes than the source's.
fn check_restored(source: &Path, restored: &Path, ok: bool, problems: &mut Vec<String>) {
    if ok {
        let diffs = crate::support::tree_diff(source, restored, &|_| false);
        if !diffs.is_empty() {
            problems.push(format!("restored tree differs: {diffs:?}"));
        }
        return;
    }
    for bad in wrong_final_files(source, restored) {
        problems.push(format!("a failed restore left {bad}"));
    }
}

/// Files under `restored` whose final name holds other bytes than the same
/// path under `source` (restore's temporary names are skipped).
pub fn wrong_final_files(source: &Path, restored: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(restored) else {
        return bad;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            bad.extend(wrong_final_files(&source.join(&name), &path));
        } else if name.starts_with('.') && name.contains(".synback-") {
            continue;
        } else if meta.is_file() {
            match std::fs::read(source.join(&name)) {
                Ok(want) if want == std::fs::read(&path).unwrap() => {}
                _ => bad.push(path.display().to_string()),
            }
        }
    }
    bad
}

fn table(results: &BTreeMap<(Phase, Fault), Outcome>) -> String {
    let mut out = String::from("| phase |");
    for fault in Fault::ALL {
        out.push_str(&format!(" {} |", fault.label()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Fault::ALL.len()));
    out.push('\n');
    for phase in Phase::ALL {
        out.push_str(&format!("| {} |", phase.label()));
        for fault in Fault::ALL {
            let cell = match (results.get(&(phase, fault)), fault.not_applicable(phase)) {
                (Some(outcome), _) => outcome.text.clone(),
                (None, Some(why)) => format!("n/a ({why})"),
                (None, None) => "?".to_owned(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let started = Instant::now();
    let tpl = Arc::new(template().await);
    let limit = Arc::new(tokio::sync::Semaphore::new(6));
    let mut tasks = tokio::task::JoinSet::new();
    for phase in Phase::ALL {
        for fault in Fault::ALL {
            if fault.not_applicable(phase).is_some() {
                continue;
            }
            let tpl = Arc::clone(&tpl);
            let limit = Arc::clone(&limit);
            tasks.spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                ((phase, fault), run_cell(&tpl, fault, phase).await)
            });
        }
    }
    let mut results = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (key, outcome) = done.unwrap();
        results.insert(key, outcome);
    }
    let cases = results.len();
    println!(
        "fault matrix: {cases} cases in {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        table(&results)
    );
    let failures: Vec<String> = results
        .iter()
        .flat_map(|((phase, fault), o)| {
            o.problems
                .iter()
                .map(move |p| format!("{} × {}: {p}", phase.label(), fault.label()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    check_doc_table(&table(&results));
    assert!(tpl.dir.path().exists());
}

const DOC: &str = "docs/RELIABILITY.md";
const BEGIN: &str = "<!-- fault-matrix:begin (written by tests/it/faults.rs) -->";
const END: &str = "<!-- fault-matrix:end -->";

/// The table in `docs/RELIABILITY.md` (between the markers) is the one
/// this run computed. `SYNBACK_WRITE_DOCS=1` writes it there instead.
fn check_doc_table(computed: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("{DOC} lacks the markers {BEGIN:?} … {END:?}");
    };
    let documented = doc[begin + BEGIN.len()..end].trim();
    if documented == computed.trim() {
        return;
    }
    if std::env::var_os("SYNBACK_WRITE_DOCS").is_some() {
        let updated = format!(
            "{}{BEGIN}\n{}\n{}",
            &doc[..begin],
            computed.trim(),
            &doc[end..]
        );
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "the fault matrix in {DOC} differs from this run's (rerun with SYNBACK_WRITE_DOCS=1 to write it):\n{}\n--- documented:\n{documented}",
        computed.trim()
    );
}
