//! The daemon wired to real backups: config → `plan` → `AgentRunner`
//! against the emulator, with notifications to a local HTTP server and a
//! real Mosquitto broker; the `synback daemon` binary itself under SIGTERM
//! (during an upload) and SIGHUP (good and bad config); and a soak of 200
//! runs with random emulator faults, checked for leaks on the NAS and in
//! memory and file descriptors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synback::agent::Agent;
use synback::daemon::{AgentRunner, plan};
use synback::schedule::{self, DaemonControl, JobStatus, SystemClock, read_status};

use crate::schedule::{Messages, Received, mosquitto, recorder, wait_message};
use crate::support::World;

/// Waits until `seen` holds `count` requests.
async fn wait_requests(seen: &Arc<Mutex<Vec<Received>>>, count: usize) -> Vec<Received> {
    for _ in 0..400 {
        let now = seen.lock().unwrap().clone();
        if now.len() >= count {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("only {:?} requests arrived", seen.lock().unwrap());
}

#[tokio::test]
async fn configured_notifications_report_real_backups_over_http_and_mqtt() {
    let (url, seen, server) = recorder().await;
    let broker = mosquitto().await;
    if broker.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto is not installed, and CI must run the MQTT part"
        );
        eprintln!("mosquitto not installed; the MQTT part of this test is skipped");
    }
    let mqtt = broker.as_ref().map_or(String::new(), |b| {
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nnode_id = \"itnode\"\ntopic_prefix = \"sb\"\n",
            b.port
        )
    });
    let world = World::new(&format!(
        "schedule = \"0 0 1 1 *\"\n\
         [job.notify]\n\
         healthchecks = \"{url}/ping/0000-check-uuid\"\n\
         webhook = \"{url}/hook?token=s3cret\"\n\
         {mqtt}\
         [daemon]\ncatch_up = false\n"
    ))
    .await;

    // An observer on the broker, subscribed before the daemon starts.
    let seen_mqtt: Messages = Arc::default();
    let observer = match &broker {
        Some(b) => {
            use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
            let (client, mut events) =
                AsyncClient::new(MqttOptions::new("it-observer", "127.0.0.1", b.port), 64);
            client
                .subscribe("homeassistant/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            client.subscribe("sb/#", QoS::AtLeastOnce).await.unwrap();
            let sink = Arc::clone(&seen_mqtt);
            Some(tokio::spawn(async move {
                let _client = client;
                while let Ok(event) = events.poll().await {
                    if let Event::Incoming(Packet::Publish(p)) = event {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        sink.lock().unwrap().push((p.topic, payload));
                    }
                }
            }))
        }
        None => None,
    };
    // Let the observer's subscriptions settle.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let config = world.config();
    let state = config.state_dir.clone();
    let (settings, jobs) = plan(&config);
    assert_eq!(settings.mqtt.is_some(), broker.is_some());
    let runner = AgentRunner::new(Agent::new(config));
    let (control, handle) = DaemonControl::new();
    let daemon = tokio::spawn(schedule::run(
        settings,
        jobs,
        Arc::new(runner),
        Arc::new(SystemClock),
        control,
    ));

    let first = run_once(&handle, &state, "home", 1).await;
    assert_eq!(
        first.last_status,
        Some(schedule::RunStatus::Ok),
        "{first:?}"
    );
    let snapshot = first.last_snapshot.clone().unwrap();
    assert!(snapshot.starts_with("home-"), "{snapshot}");

    // The second run fails: its source is gone.
    std::fs::rename(&world.source, world.dir.path().join("moved-away")).unwrap();
    // The first run's notifications may still be going out: `run_once`
    // asks again if this request finds the run still going.
    let second = run_once(&handle, &state, "home", 2).await;
    assert_eq!(
        second.last_status,
        Some(schedule::RunStatus::Failed),
        "{second:?}"
    );

    let requests = wait_requests(&seen, 6).await;
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ping/0000-check-uuid/start",
            "/ping/0000-check-uuid",
            "/hook",
            "/ping/0000-check-uuid/start",
            "/ping/0000-check-uuid/fail",
            "/hook",
        ]
    );
    let ok: serde_json::Value = serde_json::from_str(&requests[2].body).unwrap();
    assert_eq!(ok["job"], "home");
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["snapshot"], snapshot.as_str());
    assert!(ok["bytes_stored"].as_u64().unwrap() > 0, "{ok}");
    assert!(ok["bytes_read"].as_u64().unwrap() >= ok["bytes_stored"].as_u64().unwrap() / 2);
    let failed: serde_json::Value = serde_json::from_str(&requests[5].body).unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["snapshot"].is_null());
    let error = failed["error"].as_str().unwrap();
    // The /fail ping carries the tail of the same error text.
    assert!(!requests[4].body.is_empty());
    assert!(
        error.ends_with(&requests[4].body),
        "{error:?} / {:?}",
        requests[4].body
    );
    assert_eq!(second.last_error.as_deref(), Some(error));

    if broker.is_some() {
        let doc = wait_message(
            &seen_mqtt,
            "homeassistant/sensor/synback_itnode_home_last_size/config",
            "state_topic",
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["state_topic"], "sb/itnode/home/state");
        assert_eq!(doc["unit_of_measurement"], "B");
        wait_message(
            &seen_mqtt,
            "homeassistant/button/synback_itnode_home_run/config",
            "sb/itnode/home/run",
        )
        .await;
        let state_msg = wait_message(&seen_mqtt, "sb/itnode/home/state", "\"failures\":1").await;
        let state_msg: serde_json::Value = serde_json::from_str(&state_msg).unwrap();
        assert_eq!(state_msg["status"], "failed");
        assert_eq!(state_msg["runs"], 2);
        assert_eq!(state_msg["snapshot"], snapshot.as_str());
        // The size and count of the last snapshot, which the failure kept.
        assert_eq!(state_msg["last_size"], ok["bytes_stored"]);
        assert_eq!(state_msg["snapshot_count"], 1);
        wait_message(&seen_mqtt, "sb/itnode/status", "online").await;
    }

    handle.shutdown();
    daemon.await.unwrap().unwrap();
    if broker.is_some() {
        wait_message(&seen_mqtt, "sb/itnode/status", "offline").await;
    }
    if let Some(observer) = observer {
        observer.abort();
    }
    server.abort();
}

// ----------------------------------------------------- the real binary

/// `synback daemon` on `config`, stderr captured to a file.
fn spawn_daemon(config: &Path, stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_synback"))
        .arg("--config")
        .arg(config)
        .arg("daemon")
        .env("SYNBACK_LOG", "info")
        .env_remove("SYNBACK_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits up to `limit` for the process to exit.
async fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    panic!("the daemon did not exit within {limit:?}");
}

/// Files in `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Waits until an upload of more than 64 KiB is under way in `job_dir`.
async fn wait_upload(child: &mut Child, stderr: &Path, job_dir: &Path) {
    let started = Instant::now();
    loop {
        let uploading = files_under(job_dir).iter().any(|p| {
            p.to_string_lossy().contains("@synoupload-")
                && std::fs::metadata(job_dir.join(p)).is_ok_and(|m| m.len() > 64 * 1024)
        });
        if uploading {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "daemon exited early ({status}): {}",
                std::fs::read_to_string(stderr).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload started: {}",
            std::fs::read_to_string(stderr).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `job_dir` holds no partial, lock, upload temp file or
/// manifest.
fn assert_nothing_left(job_dir: &Path, log: &str) {
    let left = files_under(job_dir);
    assert!(
        left.iter().all(|p| {
            let name = p.to_string_lossy();
            !name.ends_with(".partial") && !name.ends_with(".lock") && !name.contains("@synoupload")
        }),
        "left on the NAS: {left:?}\n{log}"
    );
    assert!(
        !left
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".manifest.json")),
        "a cancelled run must not commit a snapshot: {left:?}"
    );
}

/// How a daemon stopped by SIGTERM in the middle of an upload went.
struct Stopped {
    status: std::process::ExitStatus,
    /// How long it took to exit after the signal.
    took: Duration,
    /// The daemon's log.
    log: String,
    /// How many NAS requests there were when the signal went out.
    term_at: usize,
}

/// Starts the daemon of `world` (whose job runs at once, by catch-up) over
/// `bytes` that zstd cannot shrink, uploaded at `kib_per_sec`; sends
/// SIGTERM once the upload is under way on the NAS and waits at most
/// `wait_secs` for the exit.
async fn sigterm_during_upload(
    world: &World,
    bytes: usize,
    kib_per_sec: u32,
    wait_secs: u64,
) -> Stopped {
    let mut noise = vec![0u8; bytes];
    rand::fill(&mut noise[..]);
    std::fs::write(world.source.join("noise.bin"), noise).unwrap();
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(kib_per_sec));
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);
    wait_upload(&mut child, &stderr, &world.job_dir()).await;
    let term_at = world.nas.request_log().len();
    signal(&child, "-TERM");
    let sent = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(wait_secs)).await;
    let took = sent.elapsed();
    let log = std::fs::read_to_string(&stderr).unwrap();
    eprintln!("daemon stopped {took:?} after SIGTERM");
    Stopped {
        status,
        took,
        log,
        term_at,
    }
}

#[tokio::test]
async fn sigterm_past_the_grace_period_abandons_the_upload_cleans_up_and_reports() {
    let (url, seen, server) = recorder().await;
    let world = World::new(&format!(
        "schedule = \"0 0 1 1 *\"\n[job.notify]\nwebhook = \"{url}/hook\"\n\
         [daemon]\ncatch_up = true\nshutdown_grace = \"1s\"\n"
    ))
    .await;
    // 8 MiB that zstd cannot shrink, sent at 256 KiB/s: about 32 s of
    // upload, far past the 1 s grace period (and more than the socket
    // buffers can hold, so the NAS never gets the whole body).
    let stop = sigterm_during_upload(&world, 8 << 20, 256, 40).await;
    let (job_dir, term_at, took, log) = (world.job_dir(), stop.term_at, stop.took, stop.log);
    assert_eq!(stop.status.code(), Some(0), "{log}");
    // Well before the upload could have finished.
    assert!(took < Duration::from_secs(10), "{took:?}\n{log}");
    assert!(log.contains("abandoned"), "{log}");

    // The daemon removed its lock (and any partial) before it exited.
    let left = files_under(&job_dir);
    assert!(
        left.iter().all(|p| {
            let name = p.to_string_lossy();
            !name.ends_with(".partial") && !name.ends_with(".lock")
        }),
        "left on the NAS: {left:?}\n{log}"
    );
    // The NAS drops its temporary file of the broken upload once it has
    // read what was still buffered of the body (slowly: it reads at
    // 256 KiB/s); the upload must not complete.
    let gone = Instant::now();
    while files_under(&job_dir)
        .iter()
        .any(|p| p.to_string_lossy().contains("@synoupload"))
    {
        assert!(
            gone.elapsed() < Duration::from_secs(60),
            "{:?}",
            files_under(&job_dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("upload temp file gone {:?} after the exit", gone.elapsed());
    assert_nothing_left(&job_dir, &log);
    let after: Vec<_> = world.nas.request_log().into_iter().skip(term_at).collect();
    assert!(
        after
            .iter()
            .any(|r| r.api.as_deref() == Some("SYNO.API.Auth")
                && r.method.as_deref() == Some("logout")),
        "no logout after SIGTERM: {after:?}"
    );
    // Every session was logged out: the abandoned run's and the cleanup's.
    let auth = |method: &str| {
        world
            .nas
            .request_log()
            .iter()
            .filter(|r| {
                r.api.as_deref() == Some("SYNO.API.Auth") && r.method.as_deref() == Some(method)
            })
            .count()
    };
    assert_eq!(auth("login"), 2, "{:?}", world.nas.request_log());
    assert_eq!(auth("logout"), 2, "{:?}", world.nas.request_log());
    let status = read_status(&world.config().state_dir).unwrap();
    let home = &status.jobs["home"];
    assert!(!home.running);
    assert_eq!(
        home.last_status,
        Some(schedule::RunStatus::Failed),
        "{home:?}"
    );
    assert!(
        home.last_error
            .as_deref()
            .is_some_and(|e| e.contains("abandoned")),
        "{home:?}"
    );
    // The failure was reported.
    let hooks = wait_requests(&seen, 1).await;
    server.abort();
    let body: serde_json::Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("abandoned"),
        "{body}"
    );
}

#[tokio::test]
async fn sigterm_during_an_upload_leaves_no_partial_no_lock_and_logs_out() {
    let world = World::new("schedule = \"0 0 1 1 *\"\n[daemon]\ncatch_up = true\n").await;
    // 1.5 MiB that zstd cannot shrink, sent at 512 KiB/s: about 3 s of upload.
    let stop = sigterm_during_upload(&world, 3 << 19, 512, 30).await;
    let (job_dir, term_at, took, log) = (world.job_dir(), stop.term_at, stop.took, stop.log);
    // Exit code 0: a clean stop (see `synback daemon --help`).
    assert_eq!(stop.status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    assert_nothing_left(&job_dir, &log);
    let after: Vec<_> = world.nas.request_log().into_iter().skip(term_at).collect();
    assert!(
        after
            .iter()
            .any(|r| r.api.as_deref() == Some("SYNO.API.Auth")
                && r.method.as_deref() == Some("logout")),
        "no logout after SIGTERM: {after:?}"
    );
    let status = read_status(&world.config().state_dir).unwrap();
    let home = &status.jobs["home"];
    assert!(!home.running);
    assert_eq!(
        home.last_status,
        Some(schedule::RunStatus::Failed),
        "{home:?}"
    );
}

#[tokio::test]
async fn daemon_log_format_json_from_the_config_puts_job_and_snapshot_in_the_run_span() {
    let world =
        World::new("schedule = \"0 0 1 1 *\"\n[daemon]\ncatch_up = true\nlog_format = \"json\"\n")
            .await;
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);
    let state = world.config().state_dir;
    let started = Instant::now();
    while !read_status(&state).is_ok_and(|s| s.jobs.get("home").is_some_and(|j| j.runs >= 1)) {
        assert!(started.elapsed() < Duration::from_secs(60), "no run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    let status = read_status(&state).unwrap();
    let snapshot = status.jobs["home"].last_snapshot.clone().unwrap();
    // Every log line is a JSON object (the config notes before logging
    // starts are plain text and say "note:").
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.starts_with("note:"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Each event of the backup, from the lock on, is inside a span that
    // names the job and the snapshot.
    let stored: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "volume stored and verified")
        .collect();
    assert!(!stored.is_empty(), "{log}");
    for event in stored {
        let spans = event["spans"].as_array().unwrap();
        assert!(
            spans
                .iter()
                .any(|s| s["job"] == "home" && s["snapshot"] == snapshot.as_str()),
            "{event}"
        );
    }
}

#[tokio::test]
async fn retry_bounds_whole_runs_and_requests_are_not_retried_as_often_again() {
    let world = World::new("schedule = \"0 0 1 1 *\"\n[daemon]\ncatch_up = false\n").await;
    // max_attempts = 6 from the test config: six runs at most.
    let config = world.config();
    assert_eq!(config.retry.max_attempts, 6);
    let state = config.state_dir.clone();
    let (settings, jobs) = plan(&config);
    let runner = AgentRunner::from_config(config);
    // A NAS behind a proxy that answers every request with 502.
    world.nas.faults().update(|f| f.http_502_every = Some(1));
    let (control, handle) = DaemonControl::new();
    let daemon = tokio::spawn(schedule::run(
        settings,
        jobs,
        Arc::new(runner),
        Arc::new(SystemClock),
        control,
    ));
    let status = run_once(&handle, &state, "home", 1).await;
    handle.shutdown();
    daemon.await.unwrap().unwrap();
    assert_eq!(status.last_status, Some(schedule::RunStatus::Failed));
    let requests = world.nas.request_log().len();
    // Six runs, each request of which is tried three times at most: not
    // six times six.
    let most = 6 * (synback::daemon::REQUEST_RETRIES as usize + 1);
    eprintln!("{requests} requests for one scheduled run against a NAS answering 502");
    assert!(
        (6..=most).contains(&requests),
        "{requests} requests, expected 6..={most}"
    );
}

/// `synback status` (and `--json`) on `config`: exit code, stdout and
/// stderr.
fn synback_status(config: &Path, json: bool) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synback"));
    cmd.arg("--config").arg(config).arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.env_remove("SYNBACK_CONFIG").output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn synback_status_prints_each_jobs_last_and_next_run_from_the_status_file() {
    let world = World::new("schedule = \"0 0 1 1 *\"\n").await;
    let state = world.config().state_dir;
    let (code, out, err) = synback_status(&world.config_path, false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no jobs have run yet"), "{out}");

    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let mut status = schedule::StatusFile::default();
    status.version = 1;
    let mut home = JobStatus::default();
    home.record(
        &schedule::RunOutcome::ok("home-20260101T020000Z", 10, 5),
        at("2026-01-01T02:00:09Z"),
    );
    home.last_start = Some(at("2026-01-01T02:00:00Z"));
    home.record(
        &schedule::RunOutcome::failed("NAS unreachable: connection refused", true),
        at("2026-01-02T02:00:03Z"),
    );
    home.next_run = Some(at("2099-01-03T02:00:00Z"));
    status.jobs.insert("home".into(), home);
    status.jobs.insert("etc".into(), JobStatus::default());
    schedule::status::write_status(&state, &status).unwrap();

    let (code, out, err) = synback_status(&world.config_path, false);
    assert_eq!(code, Some(0), "{out}{err}");
    for expected in [
        "home: failed",
        "last run:      2026-01-01 02:00:00 UTC (",
        "last success:  2026-01-01 02:00:09 UTC (",
        "next run:      2099-01-03 02:00:00 UTC (in ",
        "last snapshot: home-20260101T020000Z",
        "last error:    NAS unreachable: connection refused",
        "runs: 2, failures: 1, skipped: 0, stored: 5 bytes",
        "etc: never run",
    ] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }

    let (code, out, err) = synback_status(&world.config_path, true);
    assert_eq!(code, Some(0), "{out}{err}");
    let parsed: schedule::StatusFile = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed, status);

    // A corrupt status file is an error that names it.
    std::fs::write(state.join("status.json"), "{not json").unwrap();
    let (code, out, err) = synback_status(&world.config_path, false);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("status.json"), "{err}");
}

#[tokio::test]
async fn the_fail_ping_carries_the_tail_of_the_runs_log() {
    let (url, seen, server) = recorder().await;
    let world = World::new(&format!(
        "schedule = \"0 0 1 1 *\"\n[job.notify]\nhealthchecks = \"{url}/ping/tailed\"\n\
         [daemon]\ncatch_up = true\n"
    ))
    .await;
    // The NAS is nearly full: the run fails after it took the lock.
    world
        .nas
        .faults()
        .update(|f| f.quota_bytes = Some(16 * 1024));
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);
    let pings = wait_requests(&seen, 2).await;
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(30)).await;
    server.abort();
    let fail = pings
        .iter()
        .find(|r| r.path == "/ping/tailed/fail")
        .unwrap_or_else(|| panic!("{pings:?}"));
    let error = read_status(&world.config().state_dir).unwrap().jobs["home"]
        .last_error
        .clone()
        .unwrap();
    let (sent_error, log) = fail
        .body
        .split_once("\n\nlog of the run:\n")
        .unwrap_or_else(|| panic!("no log in {:?}", fail.body));
    assert_eq!(sent_error, error);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[0].contains("INFO run started"), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("lock taken") && l.contains("snapshot=")),
        "{log}"
    );
    assert!(
        lines.last().unwrap().contains("WARN run did not succeed"),
        "{log}"
    );
}

/// True when the status file lists exactly `names` (sorted).
fn has_jobs(state: &Path, names: &[&str]) -> bool {
    read_status(state).is_ok_and(|s| s.jobs.keys().map(String::as_str).eq(names.iter().copied()))
}

async fn wait_jobs(state: &Path, names: &[&str]) {
    for _ in 0..400 {
        if has_jobs(state, names) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("status never listed {names:?}: {:?}", read_status(state));
}

#[tokio::test]
async fn sighup_reloads_a_good_config_and_keeps_running_on_a_bad_one() {
    let world = World::new("schedule = \"0 0 1 1 *\"\n[daemon]\ncatch_up = false\n").await;
    let state = world.config().state_dir;
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);
    wait_jobs(&state, &["home"]).await;

    // A good new config adds a job.
    world.write_config(&format!(
        "schedule = \"0 0 1 1 *\"\n\
         [[job]]\nname = \"etc\"\nsources = [\"{}\"]\nshare = \"backup\"\nschedule = \"@daily\"\n\
         [daemon]\ncatch_up = false\n",
        world.source.display()
    ));
    signal(&child, "-HUP");
    wait_jobs(&state, &["etc", "home"]).await;

    // A bad one is refused with a message; the daemon keeps the old jobs.
    world.write_config("schedule = \"61 * * * *\"\n");
    signal(&child, "-HUP");
    let start = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("new configuration rejected")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no rejection logged"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon died on a bad config"
    );
    assert!(has_jobs(&state, &["etc", "home"]));

    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("job[home].schedule"),
        "the message names the key: {log}"
    );
}

#[tokio::test]
async fn a_reload_the_daemon_rejects_leaves_the_running_agent_alone() {
    let world = World::new("schedule = \"*/2 * * * * *\"\n[daemon]\ncatch_up = false\n").await;
    let state = world.config().state_dir;
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);
    let ok_runs = || {
        read_status(&state)
            .ok()
            .and_then(|s| s.jobs.get("home").cloned())
            .filter(|j| j.last_status == Some(schedule::RunStatus::Ok))
            .map_or(0, |j| j.runs)
    };
    let (ok_runs, stderr_ref) = (&ok_runs, &stderr);
    let wait_ok_runs = |n: u64| async move {
        let start = Instant::now();
        while ok_runs() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no successful run {n}: {}",
                std::fs::read_to_string(stderr_ref).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    wait_ok_runs(1).await;

    // It parses, but its schedule never fires again (the daemon refuses
    // it), and its NAS is somewhere nothing listens: had the loader
    // swapped the agent anyway, the next runs would fail.
    let text = std::fs::read_to_string(&world.config_path)
        .unwrap()
        .replace(&world.nas.url(), "http://127.0.0.1:9")
        .replace("*/2 * * * * *", "0 0 0 1 1 * 2020");
    std::fs::write(&world.config_path, text).unwrap();
    signal(&child, "-HUP");
    let start = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("new configuration rejected")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no rejection logged"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = ok_runs();
    wait_ok_runs(before + 2).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
}

// ------------------------------------------------------------------- soak

/// SplitMix64: a seeded, dependency-free pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A field of `/proc/self/status` in kB.
fn proc_status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Picks this run's faults; returns a label for the counts.
fn random_faults(rng: &mut Rng, nas: &synback::emulator::Emulator) -> &'static str {
    let roll = rng.below(10);
    let n = u32::try_from(2 + rng.below(6)).unwrap();
    nas.faults().clear();
    match roll {
        0 => nas.faults().update(|f| f.http_502_every = Some(n)),
        1 => nas.faults().update(|f| f.busy_every = Some(n)),
        2 => nas.faults().update(|f| {
            f.drop_upload_after = Some(4096 + rng.below(16 * 1024));
            f.drop_upload_times = Some(1);
        }),
        3 => nas.faults().update(|f| f.expire_session_after = Some(n)),
        4 => nas.faults().update(|f| f.corrupt_uploads = 1),
        5 => nas.restart_sessions(),
        // The NAS is full for the whole run: a reported failure.
        6 if rng.below(2) == 0 => nas.faults().update(|f| f.quota_bytes = Some(0)),
        _ => return "none",
    }
    match roll {
        0 => "http 502",
        1 => "busy",
        2 => "dropped upload",
        3 => "session expired",
        4 => "corrupt upload",
        5 => "NAS restarted",
        _ => "NAS full",
    }
}

/// Asks for run number `run` of `job` once and waits for it. The previous
/// run shows as finished only once the daemon can start the next, so the
/// request is never refused.
async fn run_once(handle: &schedule::DaemonHandle, state: &Path, job: &str, run: u64) -> JobStatus {
    let current = || {
        read_status(state)
            .ok()
            .and_then(|s| s.jobs.get(job).cloned())
    };
    let answer = handle.run_now(job).await;
    assert_eq!(answer, Some(schedule::RunNow::Started), "{job} run {run}");
    let start = Instant::now();
    loop {
        if let Some(status) = current()
            && status.runs >= run
            && !status.running
        {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{job} run {run} never finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs [`soak_body`] alone in a child process, so that its memory and
/// file-descriptor figures are not mixed with other tests running in
/// parallel in this binary.
#[tokio::test]
async fn soak_200_runs_against_the_emulator_with_random_faults() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "daemon::soak_body",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| l.starts_with("soak:")) {
        eprintln!("{line}");
    }
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the soak did not run: {stdout}"
    );
}

/// What one job's driver saw: runs per fault and failures per fault.
type Tally = std::collections::BTreeMap<&'static str, (u64, u64)>;

/// Drives runs `runs` of `job`, each after a fresh random fault.
async fn drive(
    handle: &schedule::DaemonHandle,
    state: &Path,
    job: &'static str,
    runs: std::ops::RangeInclusive<u64>,
    rng: &Mutex<Rng>,
    nas: &synback::emulator::Emulator,
    tally: &Mutex<Tally>,
) {
    for run in runs {
        let fault = random_faults(&mut rng.lock().unwrap(), nas);
        let status = run_once(handle, state, job, run).await;
        let mut tally = tally.lock().unwrap();
        let entry = tally.entry(fault).or_default();
        entry.0 += 1;
        if status.last_status == Some(schedule::RunStatus::Failed) {
            entry.1 += 1;
            // Snapshot ids have one-second resolution: a run in the same
            // second as the previous one of its job would collide with it
            // (AgentRunner waits for a new second; asserted below).
            if status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("already exists"))
            {
                tally.entry("(same-second id)").or_default().1 += 1;
            }
            // A run whose lock release failed under a fault leaves `.lock`;
            // the next run must take it over (asserted below).
            if status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("is locked by"))
            {
                tally.entry("(left-over lock)").or_default().1 += 1;
            }
        }
    }
}

/// 200 runs of eight jobs (25 each, all at once; a job's runs are at least
/// a second apart, see `AgentRunner`) through the daemon's run
/// path (`run_now`, retries, status, notifications) with `AgentRunner`
/// against the emulator, a random fault before each run from a fixed seed,
/// while a ninth job runs every 3 s on its own schedule. What is left on
/// the NAS is checked before any clean run (which would remove it).
/// Run by the test above in its own process.
#[tokio::test]
#[ignore = "run in a child process by soak_200_runs_against_the_emulator_with_random_faults"]
async fn soak_body() {
    const PER_JOB: u64 = 25;
    const WARM_UP: u64 = 8;
    const JOBS: [&str; 8] = ["home", "j1", "j2", "j3", "j4", "j5", "j6", "j7"];
    const CRON: &str = "cron";
    let (url, seen, server) = recorder().await;
    // The default stale_after (6 h): a lock left by a run whose release
    // failed must be taken over by the next run of the same process.
    let job_tables = "[job.retention]\nkeep_last = 3\n[job.compression]\nworkers = 1\n";
    let mut extra = format!("schedule = \"0 0 1 1 *\"\n{job_tables}");
    for name in &JOBS[1..] {
        extra += &format!(
            "[[job]]\nname = \"{name}\"\nsources = [\"SOURCE\"]\nshare = \"backup\"\n\
             path = \"pc\"\nschedule = \"0 0 1 1 *\"\n{job_tables}"
        );
    }
    // One more job runs on its own schedule (every 3 s, the 6-field form),
    // so the daemon's cron path also runs against the faulty NAS.
    extra += &format!(
        "[[job]]\nname = \"{CRON}\"\nsources = [\"SOURCE\"]\nshare = \"backup\"\n\
         path = \"pc\"\nschedule = \"*/3 * * * * *\"\n{job_tables}"
    );
    extra += "[notify]\nwebhook = \"URL/hook\"\n[daemon]\ncatch_up = false\nmax_parallel = 9\n";
    let world = World::new(&extra).await;
    // A small tree keeps 200 runs quick.
    std::fs::remove_file(world.source.join("noise.bin")).unwrap();
    let mut small = vec![0u8; 16 * 1024];
    rand::fill(&mut small[..]);
    std::fs::write(world.source.join("small.bin"), small).unwrap();
    let text = std::fs::read_to_string(&world.config_path)
        .unwrap()
        .replace("SOURCE", &world.source.display().to_string())
        .replace("URL", &url)
        .replace("max_attempts = 6", "max_attempts = 3")
        .replace("base_delay = \"50ms\"", "base_delay = \"10ms\"")
        .replace("max_delay = \"200ms\"", "max_delay = \"20ms\"");
    std::fs::write(&world.config_path, text).unwrap();

    let config = world.config();
    let state = config.state_dir.clone();
    let (settings, jobs) = plan(&config);
    assert_eq!(jobs.len(), JOBS.len() + 1);
    let runner = AgentRunner::new(Agent::new(config));
    let (control, handle) = DaemonControl::new();
    let daemon = tokio::spawn(schedule::run(
        settings,
        jobs,
        Arc::new(runner),
        Arc::new(SystemClock),
        control,
    ));

    let rng = Mutex::new(Rng(0x5eed_2026));
    let tally = Mutex::new(Tally::new());
    let started = Instant::now();
    let phase = |runs: std::ops::RangeInclusive<u64>| {
        let (handle, state, rng, tally, nas) = (&handle, &state, &rng, &tally, &world.nas);
        async move {
            futures_util::future::join_all(
                JOBS.map(|job| drive(handle, state, job, runs.clone(), rng, nas, tally)),
            )
            .await;
        }
    };
    // Measured after connections of the last runs had time to close.
    let settle = Duration::from_millis(300);
    phase(1..=WARM_UP).await;
    tokio::time::sleep(settle).await;
    let warm = (proc_status_kb("VmRSS:"), open_fds());
    phase(WARM_UP + 1..=PER_JOB / 2 + WARM_UP / 2).await;
    let middle = proc_status_kb("VmRSS:");
    phase(PER_JOB / 2 + WARM_UP / 2 + 1..=PER_JOB).await;
    let elapsed = started.elapsed();
    tokio::time::sleep(settle).await;
    let end = (proc_status_kb("VmRSS:"), open_fds());
    world.nas.faults().clear();
    let status = read_status(&state).unwrap();

    // Before any clean run (each run starts by removing what interrupted
    // runs left): whatever is left over on the NAS belongs to failures that
    // were reported, at most one snapshot id per reported failure.
    let agent = world.agent();
    for job in JOBS {
        let listing = agent.snapshots(job).await.unwrap();
        let ids: std::collections::BTreeSet<String> = listing
            .partials
            .iter()
            .map(|p| p.id.to_string())
            .chain(listing.orphans.iter().map(|o| o.id.to_string()))
            .collect();
        let s = &status.jobs[job];
        eprintln!(
            "soak: {job} on the NAS after its faulted runs: {} snapshots, {} leftover ids, lock {}; {} failures",
            listing.snapshots.len(),
            ids.len(),
            listing.lock.is_some(),
            s.failures
        );
        assert!(
            (ids.len() as u64) <= s.failures,
            "{job}: leftovers {ids:?} but {} reported failures",
            s.failures
        );
        if s.last_status == Some(schedule::RunStatus::Ok) {
            let last = s.last_snapshot.as_deref().unwrap();
            assert!(!ids.contains(last), "{job}: a successful run left {last}");
        }
    }

    // A final clean run of each (in a new second, so that its snapshot id
    // is new), then nothing may be left over on the NAS.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for job in JOBS {
        let last = run_once(&handle, &state, job, PER_JOB + 1).await;
        assert_eq!(last.last_status, Some(schedule::RunStatus::Ok), "{last:?}");
    }
    handle.shutdown();
    daemon.await.unwrap().unwrap();
    let cron = read_status(&state).unwrap().jobs[CRON].clone();
    let hooks = wait_requests(
        &seen,
        usize::try_from(JOBS.len() as u64 * (PER_JOB + 1) + cron.runs).unwrap(),
    )
    .await;
    server.abort();
    let cron_hooks = hooks
        .iter()
        .filter(|h| h.body.contains("\"job\":\"cron\""))
        .count();
    let hooks: Vec<_> = hooks
        .into_iter()
        .filter(|h| !h.body.contains("\"job\":\"cron\""))
        .collect();
    eprintln!(
        "soak: {CRON} (every 3 s) ran {} times by its schedule, {} failed, {} fire times skipped",
        cron.runs, cron.failures, cron.skipped
    );
    // Every scheduled run of the cron job was reported.
    assert!(
        cron.runs >= elapsed.as_secs() / 3 / 2,
        "{cron:?} in {elapsed:?}"
    );
    assert_eq!(cron_hooks as u64, cron.runs, "{cron:?}");
    assert!(!cron.running);

    let tally = tally.into_inner().unwrap();
    // The two cause rows count failures already counted under their fault.
    let collisions = tally.get("(same-second id)").map_or(0, |(_, n)| *n);
    let same_second = collisions + tally.get("(left-over lock)").map_or(0, |(_, n)| *n);
    assert_eq!(
        tally.get("(left-over lock)"),
        None,
        "a run was refused by a lock its own process left"
    );
    let runs: u64 = tally.values().map(|(runs, _)| runs).sum();
    let failures: u64 = tally.values().map(|(_, failed)| failed).sum::<u64>() - same_second;
    eprintln!(
        "soak: {runs} runs in {elapsed:.1?}, {failures} failed; per fault (runs, failed): {tally:?}"
    );
    eprintln!(
        "soak: VmRSS {} kB after {} runs, {middle} kB after {}, {} kB after {runs}; open fds {} then {}",
        warm.0,
        JOBS.len() as u64 * WARM_UP,
        JOBS.len() as u64 * (PER_JOB / 2 + WARM_UP / 2),
        end.0,
        warm.1,
        end.1
    );
    // Every run accounted for, the same in the status file and the webhooks.
    assert_eq!(runs, JOBS.len() as u64 * PER_JOB);
    assert_eq!(collisions, 0, "two runs got the same snapshot id");
    let mut reported = std::collections::BTreeMap::<(String, String), u64>::new();
    for hook in &hooks {
        let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
        let key = (
            body["job"].as_str().unwrap().to_owned(),
            body["status"].as_str().unwrap().to_owned(),
        );
        *reported.entry(key).or_default() += 1;
    }
    assert_eq!(
        hooks.len(),
        usize::try_from(JOBS.len() as u64 * (PER_JOB + 1)).unwrap()
    );
    let mut total_failed = 0;
    for job in JOBS {
        let s = &status.jobs[job];
        let ok = reported
            .get(&(job.to_owned(), "ok".to_owned()))
            .copied()
            .unwrap_or(0);
        let failed = reported
            .get(&(job.to_owned(), "failed".to_owned()))
            .copied()
            .unwrap_or(0);
        assert_eq!(s.runs, PER_JOB, "{job}: {s:?}");
        assert_eq!(s.failures, failed, "{job}: {reported:?}");
        // The final clean run added one "ok" webhook.
        assert_eq!(ok + failed, PER_JOB + 1, "{job}: {reported:?}");
        assert!(!s.running);
        total_failed += failed;
    }
    assert_eq!(total_failed, failures);
    assert!(failures > 0 && failures < runs, "{tally:?}");
    // Nothing leaked on the NAS.
    for job in JOBS {
        let listing = agent.snapshots(job).await.unwrap();
        eprintln!(
            "soak: {job} on the NAS after a clean run: {} snapshots, {} orphans, {} partials, lock {}",
            listing.snapshots.len(),
            listing.orphans.len(),
            listing.partials.len(),
            listing.lock.is_some()
        );
        assert!(listing.orphans.is_empty(), "{job}: {:?}", listing.orphans);
        assert!(listing.partials.is_empty(), "{job}: {:?}", listing.partials);
        assert!(listing.lock.is_none(), "{job}");
        assert_eq!(listing.snapshots.len(), 3, "{job}: keep_last = 3");
    }
    let listing = agent.snapshots(CRON).await.unwrap();
    let leftovers = listing.partials.len() + listing.orphans.len();
    assert!(
        leftovers as u64 <= cron.failures,
        "{CRON}: {leftovers} leftovers, {} failures",
        cron.failures
    );
    let temp: Vec<_> = files_under(&world.nas.share_path("backup"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("@synoupload"))
        .collect();
    assert!(temp.is_empty(), "{temp:?}");
    // No growth in memory or open files after warm-up.
    // The emulator (in this process) keeps a log of every request, so a
    // little growth is expected; a leak of a run's buffers would be more.
    assert!(
        end.0 <= warm.0 + 24 * 1024,
        "VmRSS grew from {} kB to {} kB",
        warm.0,
        end.0
    );
    // The last 72 runs: a leak of 150 KiB per run (less than one upload
    // chunk in flight) would show.
    assert!(
        end.0 <= middle + 10 * 1024,
        "VmRSS grew from {middle} kB to {} kB over the last runs",
        end.0
    );
    // A few sockets (HTTP keep-alive on both ends, in this process) may be
    // open at either moment; a leak per run would be dozens.
    assert!(
        end.1 <= warm.1 + 4,
        "open fds grew from {} to {}",
        warm.1,
        end.1
    );
}

#[tokio::test]
async fn plan_carries_the_config_into_the_daemon_settings() {
    let world = World::new(
        "schedule = \"@daily\"\n\
         [job.notify]\nhealthchecks = \"https://hc-ping.com/abc\"\n\
         [[job]]\nname = \"on-demand\"\nsources = [\"/\"]\nshare = \"backup\"\n\
         [notify]\nwebhook = \"https://hooks.example/h?token=T\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = 1884\ntopic_prefix = \"home/sb\"\nnode_id = \"pi\"\n\
         [daemon]\nhealthy_within = \"26h\"\nshutdown_grace = \"15s\"\nmax_parallel = 2\n",
    )
    .await;
    let (settings, jobs) = plan(&world.config());
    assert_eq!(
        settings.healthy_within,
        Some(Duration::from_secs(26 * 3600))
    );
    assert_eq!(settings.shutdown_grace, Duration::from_secs(15));
    assert_eq!(settings.max_parallel, 2);
    let mqtt = settings.mqtt.unwrap();
    assert_eq!((mqtt.host.as_str(), mqtt.port), ("127.0.0.1", 1884));
    assert_eq!(
        (mqtt.base_topic.as_str(), mqtt.node_id.as_str()),
        ("home/sb", "pi")
    );
    assert_eq!(mqtt.discovery_prefix, "homeassistant");
    // Only scheduled jobs are planned; the global webhook reaches them.
    assert_eq!(jobs.len(), 1);
    let notify = &jobs[0].notify;
    assert_eq!(
        notify.healthchecks_url.as_ref().unwrap().expose(),
        "https://hc-ping.com/abc"
    );
    assert_eq!(
        notify.webhook_url.as_ref().unwrap().expose(),
        "https://hooks.example/h?token=T"
    );
    assert!(!format!("{jobs:?}").contains("token=T"));
    assert!(!format!("{jobs:?}").contains("hc-ping.com/abc"));
}
