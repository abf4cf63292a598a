//! A broken or hostile NAS: huge, truncated, non-JSON and mistyped replies,
//! uploads whose MD5 never matches, volumes that come back shorter or
//! longer than written, listings with `..` or names synback did not write,
//! and a certificate that changes under pinning. Each is refused with an
//! error naming the problem; nothing foreign is deleted on the NAS and
//! nothing is overwritten locally.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use synback::dsm::{Client, ClientOptions, Error, RetryPolicy};
use synback::emulator::{Emulator, EmulatorConfig};
use synback::repo::{DsmTarget, JobName, Listing, Target};
use synback::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::support::World;

/// What the fake NAS answers to File Station calls (API.Info and login are
/// always answered properly).
#[derive(Clone)]
enum Reply {
    Raw(&'static str, Vec<u8>),
    /// A body streamed forever-ish, `chunks` × 64 KiB, no length announced.
    Endless {
        chunks: usize,
    },
}

type Calls = Arc<Mutex<Vec<HashMap<String, String>>>>;

struct Fake {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    calls: Calls,
}

async fn fake_nas(reply: Reply) -> Fake {
    use axum::{Form, Router, routing::post};
    let reply = Arc::new(Mutex::new(reply));
    let calls = Calls::default();
    let (r, c) = (reply.clone(), calls.clone());
    let handler = move |Form(form): Form<HashMap<String, String>>| {
        let (reply, calls) = (r.clone(), c.clone());
        async move {
            let method = form.get("method").cloned().unwrap_or_default();
            calls.lock().unwrap().push(form);
            let json = |v: serde_json::Value| {
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(v.to_string()))
                    .unwrap()
            };
            match method.as_str() {
                "query" => json(fake_api_info()),
                "login" => json(
                    serde_json::json!({"success": true, "data": {"sid": "fake-sid", "synotoken": "fake-token"}}),
                ),
                _ => match reply.lock().unwrap().clone() {
                    Reply::Raw(kind, body) => Response::builder()
                        .header(header::CONTENT_TYPE, kind)
                        .body(Body::from(body))
                        .unwrap(),
                    Reply::Endless { chunks } => {
                        let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
                        let stream = futures_util::stream::iter(
                            std::iter::repeat_n(chunk, chunks).map(Ok::<_, std::io::Error>),
                        );
                        Response::builder()
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Body::from_stream(stream))
                            .unwrap()
                    }
                },
            }
        }
    };
    let router = Router::new().route("/webapi/{cgi}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Fake { addr, reply, calls }
}

/// A fake NAS that answers API.Info, login, an MD5 task start and a
/// logout properly and gives `reply` to the one call whose method is
/// `hostile` (`login`, `status` of the MD5 task, `upload`). Reads the
/// method from the query string or a urlencoded body, so uploads
/// (multipart, method in the query) reach it too.
async fn fake_nas_hostile_at(hostile: &'static str, reply: Arc<Mutex<Reply>>) -> SocketAddr {
    use axum::{Router, extract::RawQuery, routing::post};
    let handler = move |RawQuery(query): RawQuery, body: axum::body::Bytes| {
        let reply = reply.clone();
        async move {
            let find = |text: &str| {
                text.split('&')
                    .find_map(|kv| kv.strip_prefix("method="))
                    .map(str::to_owned)
            };
            let method = query
                .as_deref()
                .and_then(find)
                .or_else(|| find(&String::from_utf8_lossy(&body)))
                .unwrap_or_default();
            let json = |v: serde_json::Value| {
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(v.to_string()))
                    .unwrap()
            };
            if method == hostile {
                return match reply.lock().unwrap().clone() {
                    Reply::Raw(kind, body) => Response::builder()
                        .header(header::CONTENT_TYPE, kind)
                        .body(Body::from(body))
                        .unwrap(),
                    Reply::Endless { .. } => unreachable!("not used here"),
                };
            }
            match method.as_str() {
                "query" => json(fake_api_info()),
                "login" => json(
                    serde_json::json!({"success": true, "data": {"sid": "fake-sid", "synotoken": "fake-token"}}),
                ),
                "start" => json(serde_json::json!({"success": true, "data": {"taskid": "t1"}})),
                _ => json(serde_json::json!({"success": true})),
            }
        }
    };
    let router = Router::new().route("/webapi/{cgi}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Huge, truncated, non-JSON and mistyped replies to the login, to an MD5
/// task's status and to an upload: each refused with an error naming the
/// call, quickly.
#[tokio::test]
async fn hostile_replies_to_login_md5_status_and_upload_are_refused() {
    let cases: Vec<(&str, Reply, &str)> = vec![
        (
            "huge",
            Reply::Raw("application/json", vec![b' '; 6 << 20]),
            "larger than",
        ),
        (
            "truncated JSON",
            Reply::Raw(
                "application/json",
                br#"{"success":true,"data":{"sid":"#.to_vec(),
            ),
            "cannot decode",
        ),
        (
            "HTML login page",
            Reply::Raw("text/html", b"<!DOCTYPE html><html>login</html>".to_vec()),
            "cannot decode",
        ),
        (
            "wrong types in data",
            Reply::Raw(
                "application/json",
                br#"{"success":true,"data":{"sid":7,"finished":"yes","md5":[1]}}"#.to_vec(),
            ),
            "",
        ),
        (
            "success not a bool",
            Reply::Raw("application/json", br#"{"success":"yes"}"#.to_vec()),
            "cannot decode",
        ),
    ];
    for (call, names) in [
        ("login", "SYNO.API.Auth.login"),
        ("status", "SYNO.FileStation.MD5.status"),
        ("upload", "SYNO.FileStation.Upload.upload"),
    ] {
        let reply = Arc::new(Mutex::new(Reply::Raw("application/json", Vec::new())));
        let addr = fake_nas_hostile_at(call, reply.clone()).await;
        for (case, hostile, expect) in &cases {
            if call == "upload" && *case == "wrong types in data" {
                // An upload's data is not used (the MD5 task proves the
                // file), so only the envelope's types matter.
                continue;
            }
            *reply.lock().unwrap() = hostile.clone();
            let started = Instant::now();
            let result = async {
                let client = Client::connect(opts(format!("http://{addr}"))).await?;
                match call {
                    "status" => client
                        .md5("/backup/x", &CancellationToken::new())
                        .await
                        .map(drop),
                    _ => {
                        let body = synback::dsm::UploadBody::Bytes(bytes::Bytes::from_static(b"x"));
                        client
                            .upload("/backup", "x", body, Default::default())
                            .await
                    }
                }
            }
            .await;
            let err = result.expect_err(&format!("{call} {case}: accepted"));
            let text = synback::error_chain(&err);
            assert!(text.contains(expect), "{call} {case}: {text}");
            assert!(text.contains(names), "{call} {case}: {text}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{call} {case}: took {:?}",
                started.elapsed()
            );
        }
    }
}

fn opts(url: String) -> ClientOptions {
    let mut opts = ClientOptions::new(url, "backup", Secret::new("pw"));
    opts.retry = RetryPolicy::none();
    opts
}

#[tokio::test]
async fn hostile_replies_are_refused_with_clear_errors() {
    let fake = fake_nas(Reply::Raw("application/json", Vec::new())).await;
    let client = Client::connect(opts(format!("http://{}", fake.addr)))
        .await
        .unwrap();
    let cases: Vec<(&str, Reply, &str)> = vec![
        (
            "huge with length",
            Reply::Raw("application/json", vec![b' '; 6 << 20]),
            "larger than",
        ),
        (
            "huge streamed",
            Reply::Endless { chunks: 16 * 1024 },
            "larger than",
        ),
        (
            "truncated JSON",
            Reply::Raw(
                "application/json",
                br#"{"success":true,"data":{"files":[{"name":"a""#.to_vec(),
            ),
            "cannot decode",
        ),
        (
            "HTML login page",
            Reply::Raw(
                "text/html",
                b"<!DOCTYPE html><html><title>Synology DiskStation</title><form>login</form></html>"
                    .to_vec(),
            ),
            "cannot decode",
        ),
        (
            "wrong types",
            Reply::Raw(
                "application/json",
                br#"{"success":true,"data":{"files":[{"name":7,"isdir":"no","additional":{"size":-1}}],"total":"x"}}"#
                    .to_vec(),
            ),
            "cannot decode",
        ),
        (
            "success not a bool",
            Reply::Raw("application/json", br#"{"success":"yes"}"#.to_vec()),
            "cannot decode",
        ),
    ];
    for (name, reply, expect) in cases {
        *fake.reply.lock().unwrap() = reply;
        let started = Instant::now();
        let err = client.list("/backup/pc").await.unwrap_err();
        let text = synback::error_chain(&err);
        assert!(text.contains(expect), "{name}: {text}");
        assert!(
            text.contains("SYNO.FileStation.List.list"),
            "{name}: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: took {:?}",
            started.elapsed()
        );
        if expect == "larger than" {
            assert!(
                matches!(err, Error::ReplyTooLarge { .. }),
                "{name}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_listing_with_dotdot_or_foreign_entries_is_never_acted_on() {
    let files = serde_json::json!({"success": true, "data": {"files": [
        {"isdir": false, "name": "..", "path": "/backup/pc", "additional": {"size": 1, "time": {"mtime": 1}}},
        {"isdir": false, "name": "../../etc/passwd", "path": "/etc/passwd", "additional": {"size": 1, "time": {"mtime": 1}}},
        {"isdir": false, "name": "a/b", "path": "/backup/pc/home/a/b", "additional": {"size": 1, "time": {"mtime": 1}}},
        {"isdir": false, "name": "home-20200101T000000Z.tar.zst", "path": "/other/home-20200101T000000Z.tar.zst", "additional": {"size": 1, "time": {"mtime": 1}}},
        {"isdir": false, "name": "home-20200102T000000Z.tar.zst", "path": "/backup/pc/home/home-20200102T000000Z.tar.zst", "additional": {"size": 1, "time": {"mtime": 1}}},
        {"isdir": false, "name": "notes.txt", "path": "/backup/pc/home/notes.txt", "additional": {"size": 1, "time": {"mtime": 1}}},
    ], "offset": 0, "total": 6}});
    let fake = fake_nas(Reply::Raw(
        "application/json",
        files.to_string().into_bytes(),
    ))
    .await;
    let client = Client::connect(opts(format!("http://{}", fake.addr)))
        .await
        .unwrap();
    let job = JobName::new("home").unwrap();
    let target = DsmTarget::new(client, "backup", "pc", &job).unwrap();
    let mut names: Vec<String> = target
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["home-20200102T000000Z.tar.zst", "notes.txt"]);
    let listing = Listing::classify(&job, target.list().await.unwrap());
    assert!(listing.snapshots.is_empty());
    for hostile in ["..", "../../etc/passwd", "a/b"] {
        let err = target.delete(hostile).await.unwrap_err();
        assert!(err.to_string().contains(hostile), "{err}");
        let err = target.rename(hostile, "x").await.unwrap_err();
        assert!(err.to_string().contains(hostile), "{err}");
    }
    let calls = fake.calls.lock().unwrap();
    assert!(
        !calls.iter().any(|c| matches!(
            c.get("method").map(String::as_str),
            Some("delete" | "start" | "rename")
        )),
        "a hostile name reached the NAS: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_synback_did_not_write_survive_retention_and_forget() {
    let world = World::new("[job.retention]\nkeep_last = 1\n").await;
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    let job_dir = world.job_dir();
    let foreign = [
        "notes.txt",
        "home-latest.tar.zst",
        "home.manifest.json",
        "other-20200101T000000Z.tar.zst",
    ];
    for name in foreign {
        std::fs::write(job_dir.join(name), "not synback's").unwrap();
    }
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    for name in foreign {
        filetime::set_file_mtime(job_dir.join(name), old).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    agent.forget("home", false).await.unwrap();
    for name in foreign {
        assert_eq!(
            std::fs::read_to_string(job_dir.join(name)).unwrap(),
            "not synback's",
            "{name}"
        );
    }
    let listing = agent.snapshots("home").await.unwrap();
    assert_eq!(listing.snapshots.len(), 1);
}

/// The emulator's own corruption fault hits the lock file first, so the
/// lie is told by a `FlakyTarget` around the real DSM target: the NAS's MD5
/// task never matches what was sent for the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_that_never_matches_commits_nothing() {
    use synback::backup::{self, BackupOptions};
    use synback::repo::flaky::{Fault, FlakyTarget};
    use synback::repo::target::Operation;

    let world = World::new("").await;
    let client = Client::connect(opts_with_password(world.nas.url()))
        .await
        .unwrap();
    let job = JobName::new("home").unwrap();
    let dsm = DsmTarget::new(client, "backup", "pc", &job).unwrap();
    let flaky = Arc::new(FlakyTarget::new(dsm));
    flaky.fail_always(Operation::Md5, Fault::WrongMd5);
    let target: Arc<dyn Target> = flaky.clone();
    let mut opts = BackupOptions::new(
        job.clone(),
        synback::archive::PackOptions::new([world.source.clone()]),
    );
    opts.retry_delay = Duration::from_millis(10);
    let err = backup::run(
        target.clone(),
        &opts,
        Arc::new(synback::event::NoEvents),
        CancellationToken::new(),
        chrono::Utc::now(),
    )
    .await
    .unwrap_err();
    let text = synback::error_chain(&err);
    assert!(text.to_lowercase().contains("md5"), "{text}");
    let listing = Listing::classify(&job, target.list().await.unwrap());
    assert!(listing.snapshots.is_empty(), "{listing:?}");
    assert!(
        !world
            .remote_names()
            .iter()
            .any(|n| n.ends_with(".manifest.json")),
        "{:?}",
        world.remote_names()
    );
}

/// The emulator itself lies: every MD5 task of the job reports a digest
/// that is not the file's. The backup retries, then fails naming the MD5
/// mismatch (exit 4); no manifest is written and no snapshot is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nas_whose_md5_task_never_matches_commits_nothing() {
    use synback::emulator::{AimedFault, FaultAction};
    let world = World::new("").await;
    world.nas.faults().update(|f| {
        f.aimed = vec![
            AimedFault::new("SYNO.FileStation.MD5", FaultAction::Corrupt)
                .method("start")
                .times(None),
        ];
    });
    let agent = world.agent();
    let err = agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap_err();
    let text = synback::error_chain(&err);
    assert!(world.nas.faults().aimed_hits() >= 2, "not retried");
    assert_eq!(err.exit_code(), 4, "{text}");
    assert!(text.contains("MD5"), "{text}");
    assert!(text.contains(".tar.zst"), "{text}");
    world.nas.faults().clear();
    assert!(agent.snapshots("home").await.unwrap().snapshots.is_empty());
    assert!(
        !world
            .remote_names()
            .iter()
            .any(|n| n.ends_with(".manifest.json")),
        "{:?}",
        world.remote_names()
    );
}

fn opts_with_password(url: String) -> ClientOptions {
    let mut opts = ClientOptions::new(
        url,
        crate::support::USER,
        Secret::new(crate::support::PASSWORD),
    );
    opts.retry = RetryPolicy::none();
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_shorter_or_longer_than_written_are_refused_on_restore() {
    let world = World::new("").await;
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    let volume = world
        .remote_names()
        .into_iter()
        .find(|n| n.contains(".tar.zst"))
        .unwrap_or_else(|| panic!("no volume in {:?}", world.remote_names()));
    let path = world.job_dir().join(&volume);
    let original = std::fs::read(&path).unwrap();
    let shorter = original[..original.len() - 100].to_vec();
    let longer = [&original[..], b"appended by the NAS"].concat();
    for (name, bytes) in [("shorter", shorter), ("longer", longer)] {
        std::fs::write(&path, &bytes).unwrap();
        let target = world.restore_dir(name);
        std::fs::create_dir_all(target.join("data/docs")).unwrap();
        std::fs::write(target.join("data/docs/a.txt"), "mine, keep me").unwrap();
        let err = crate::support::restore_latest(&agent, &target, true)
            .await
            .unwrap_err();
        let text = synback::error_chain(&err);
        let said = format!(
            "volume {volume} is corrupt: the NAS lists {} bytes, the manifest recorded {}",
            bytes.len(),
            original.len()
        );
        assert!(text.contains(&said), "{name}: {text}");
        assert_eq!(err.exit_code(), 4, "{name}: {text}");
        assert_eq!(
            std::fs::read_to_string(target.join("data/docs/a.txt")).unwrap(),
            "mine, keep me",
            "{name}: a local file was overwritten"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_changes_under_pinning_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = EmulatorConfig::new(root.path(), "backup", Secret::new("pw"));
    cfg.tls = true;
    let first = Emulator::start(cfg.clone(), crate::support::port_outside_ephemeral_range())
        .await
        .unwrap();
    let addr = first.local_addr();
    let mut pinned = opts(first.url());
    pinned.tls.pin_sha256 = first.cert_sha256();
    let client = Client::connect(pinned.clone()).await.unwrap();
    client.list("/backup").await.unwrap();
    first.shutdown().await;
    // Same address, new certificate (a swapped NAS, or someone in between).
    // The old server's sockets may take a moment to close on a busy machine.
    let mut second = Emulator::start(cfg.clone(), addr).await;
    for _ in 0..50 {
        if second.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        second = Emulator::start(cfg.clone(), addr).await;
    }
    let second = second.unwrap();
    assert_ne!(second.cert_sha256(), pinned.tls.pin_sha256);
    // A pooled connection to the old server may fail first; a new one must
    // meet the new certificate and refuse it.
    let mut err = client.list("/backup").await.unwrap_err();
    for _ in 0..3 {
        if matches!(err, Error::TlsRefused { .. }) {
            break;
        }
        err = client.list("/backup").await.unwrap_err();
    }
    assert!(matches!(err, Error::TlsRefused { .. }), "{err:?}");
    let err = Client::connect(pinned).await.unwrap_err();
    assert!(matches!(err, Error::TlsRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("pin_sha256"), "{err}");
}

/// Restores the latest snapshot of `home` into `target`, over a local file
/// `data/docs/a.txt` that must survive, spooling into `spool`.
async fn restore_over_mine(
    agent: &synback::agent::Agent,
    target: &std::path::Path,
    spool: &std::path::Path,
) -> Result<synback::restore::RestoreReport, synback::agent::Error> {
    std::fs::create_dir_all(target.join("data/docs")).unwrap();
    std::fs::write(target.join("data/docs/a.txt"), "mine, keep me").unwrap();
    std::fs::create_dir_all(spool).unwrap();
    let mut opts = synback::restore::RestoreOptions::default();
    opts.target_dir = target.to_path_buf();
    opts.overwrite = true;
    opts.spool_dir = Some(spool.to_path_buf());
    crate::support::restore_latest_with(agent, opts).await
}

fn assert_untouched(target: &std::path::Path, spool: &std::path::Path, case: &str) {
    assert_eq!(
        std::fs::read_to_string(target.join("data/docs/a.txt")).unwrap(),
        "mine, keep me",
        "{case}: a local file was overwritten"
    );
    let left: Vec<_> = std::fs::read_dir(spool).unwrap().collect();
    assert!(left.is_empty(), "{case}: spool files left: {left:?}");
}

fn downloads(world: &World) -> usize {
    world
        .nas
        .request_log()
        .iter()
        .filter(|r| r.api.as_deref() == Some("SYNO.FileStation.Download"))
        .count()
}

/// The first volume download (the manifest is the 1st download).
fn volume_download(action: synback::emulator::FaultAction) -> synback::emulator::AimedFault {
    synback::emulator::AimedFault::new("SYNO.FileStation.Download", action)
        .name_contains(".tar.zst")
}

/// A connection that breaks in the middle of a volume download (the full
/// length announced, a part sent, then cut) is resumed; one that keeps
/// breaking fails the restore as a connection problem (exit 5), not as
/// corruption, with the cause kept, and nothing local changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_midway_is_resumed_and_a_dead_link_is_exit_5() {
    use synback::emulator::FaultAction;
    let world = World::new("").await;
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    let cut = FaultAction::CutAfter(300_000);

    world
        .nas
        .faults()
        .update(|f| f.aimed = vec![volume_download(cut.clone()).times(Some(2))]);
    let before = downloads(&world);
    let target = world.restore_dir("resumed");
    crate::support::restore_latest(&agent, &target, false)
        .await
        .unwrap();
    assert_eq!(world.nas.faults().aimed_hits(), 2);
    assert!(
        downloads(&world) - before >= 4,
        "the volume was not fetched again"
    );
    let diffs = crate::support::tree_diff(&world.source, &target.join("data"), &|_| false);
    assert!(diffs.is_empty(), "{diffs:?}");

    // verify --deep streams the volume: resumed the same way.
    world
        .nas
        .faults()
        .update(|f| f.aimed = vec![volume_download(cut.clone())]);
    agent
        .verify(
            "home",
            &synback::restore::Selector::Latest,
            synback::agent::VerifyMode::Deep,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(world.nas.faults().aimed_hits(), 1);

    world
        .nas
        .faults()
        .update(|f| f.aimed = vec![volume_download(cut).times(None)]);
    let (target, spool) = (world.restore_dir("cut"), world.restore_dir("cut-spool"));
    let err = restore_over_mine(&agent, &target, &spool)
        .await
        .unwrap_err();
    let text = crate::support::chain(&err);
    assert_eq!(err.exit_code(), 5, "{text}");
    assert!(text.contains(".tar.zst"), "{text}");
    assert!(text.contains("broke off 4 times"), "{text}");
    assert!(!text.contains("corrupt"), "{text}");
    assert!(text.contains("caused by"), "the cause was lost: {text}");
    assert_untouched(&target, &spool, "cut");
}

/// A NAS that sends more bytes than the listing and the manifest say
/// (announced, or streamed for ever without a length) is stopped at the
/// first byte too many: a clear error, no local file changed, nothing
/// spooled, and no endless download filling the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_volume_is_stopped_at_once() {
    use synback::emulator::FaultAction;
    let world = World::new("").await;
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    for (case, action) in [
        ("longer", FaultAction::Longer(8 << 20)),
        ("endless", FaultAction::Endless),
    ] {
        world
            .nas
            .faults()
            .update(|f| f.aimed = vec![volume_download(action).times(None)]);
        let (target, spool) = (world.restore_dir(case), world.restore_dir("spool"));
        let started = Instant::now();
        let restored = tokio::time::timeout(
            Duration::from_secs(120),
            restore_over_mine(&agent, &target, &spool),
        )
        .await
        .unwrap_or_else(|_| panic!("{case}: the restore never stopped"));
        let err = restored.unwrap_err();
        let text = crate::support::chain(&err);
        assert_eq!(err.exit_code(), 4, "{case}: {text}");
        assert!(
            text.contains(".tar.zst.001 is corrupt: the NAS sent more than the"),
            "{case}: {text}"
        );
        assert!(world.nas.faults().aimed_hits() >= 1, "{case}");
        assert_untouched(&target, &spool, case);
        assert!(started.elapsed() < Duration::from_secs(60), "{case}");
    }
}

/// The `query.cgi` answer of the hand-made fake NASes: the APIs a backup,
/// a listing and a restore use, on `entry.cgi`.
fn fake_api_info() -> serde_json::Value {
    serde_json::json!({"success": true, "data": {
        "SYNO.API.Auth": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 7},
        "SYNO.FileStation.MD5": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 2},
        "SYNO.FileStation.List": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 2},
        "SYNO.FileStation.Delete": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 2},
        "SYNO.FileStation.Rename": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 2},
        "SYNO.FileStation.Upload": {"path": "entry.cgi", "minVersion": 1, "maxVersion": 3},
    }})
}
