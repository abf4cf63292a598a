//! The daemon wired to real backups: config → `plan` → `AgentRunner`
//! against the emulator, with notifications to a local HTTP server and a
//! real Mosquitto broker; and the `synback daemon` binary itself under
//! SIGTERM (during an upload) and SIGHUP (good and bad config).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synback::agent::Agent;
use synback::daemon::{AgentRunner, plan};
use synback::schedule::{self, DaemonControl, JobStatus, SystemClock, read_status};

use crate::schedule::{Messages, Received, mosquitto, recorder, wait_message};
use crate::support::World;

/// Waits (real time, up to `limit`) until `job` shows `runs` finished runs.
async fn wait_finished(state: &Path, job: &str, runs: u64, limit: Duration) -> JobStatus {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(j) = read_status(state)
            .ok()
            .and_then(|s| s.jobs.get(job).cloned())
        {
            if j.runs >= runs && !j.running {
                return j;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not reach {runs} finished runs in {limit:?}");
}

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

    handle.run_now("home").await;
    let first = wait_finished(&state, "home", 1, Duration::from_secs(60)).await;
    assert_eq!(
        first.last_status,
        Some(schedule::RunStatus::Ok),
        "{first:?}"
    );
    let snapshot = first.last_snapshot.clone().unwrap();
    assert!(snapshot.starts_with("home-"), "{snapshot}");

    // The second run fails: its source is gone.
    std::fs::rename(&world.source, world.dir.path().join("moved-away")).unwrap();
    handle.run_now("home").await;
    let second = wait_finished(&state, "home", 2, Duration::from_secs(60)).await;
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

#[tokio::test]
async fn sigterm_during_an_upload_leaves_no_partial_no_lock_and_logs_out() {
    let world = World::new("schedule = \"0 0 1 1 *\"\n[daemon]\ncatch_up = true\n").await;
    // 1.5 MiB that zstd cannot shrink, sent at 512 KiB/s: about 3 s of upload.
    let mut noise = vec![0u8; 3 << 19];
    rand::fill(&mut noise[..]);
    std::fs::write(world.source.join("noise.bin"), noise).unwrap();
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(512));
    let stderr = world.dir.path().join("daemon.log");
    let mut child = spawn_daemon(&world.config_path, &stderr);

    // catch_up starts the never-run job at once; wait for its upload to be
    // under way on the NAS.
    let job_dir = world.job_dir();
    let started = Instant::now();
    loop {
        let uploading = files_under(&job_dir).iter().any(|p| {
            p.to_string_lossy().contains("@synoupload-")
                && std::fs::metadata(job_dir.join(p)).is_ok_and(|m| m.len() > 64 * 1024)
        });
        if uploading {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "daemon exited early ({status}): {}",
                std::fs::read_to_string(&stderr).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload started: {}",
            std::fs::read_to_string(&stderr).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term_at = world.nas.request_log().len();
    signal(&child, "-TERM");
    let sent = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    let took = sent.elapsed();
    let log = std::fs::read_to_string(&stderr).unwrap();
    eprintln!("daemon stopped {took:?} after SIGTERM");
    // Exit code 0: a clean stop (see `synback daemon --help`).
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    let left = files_under(&job_dir);
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
