//! The `synback` binary as a user runs it: commands, output, exit codes.

use std::process::Output;

use assert_cmd::Command;

use crate::support::{PASSWORD, World};

async fn synback(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::cargo_bin("synback")
            .unwrap()
            .args(&args)
            .env("SYNBACK_LOG", "trace")
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(world: &World, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--config".to_owned(),
        world.config_path.display().to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_list_verify_restore_from_the_command_line() {
    let world = World::new("excludes = [\"*.tmp\"]\nvolume_size = \"1MiB\"").await;
    let out = synback(args(&world, &["backup"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("snapshot home-"), "{stdout}");
    assert!(
        !text(&out).contains(PASSWORD),
        "the password leaked into the output"
    );

    let out = synback(args(&world, &["list", "--json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["snapshots"].as_array().unwrap().len(), 1, "{json}");

    let out = synback(args(&world, &["verify", "--deep"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let target = world.restore_dir("cli-restore");
    let target_arg = target.display().to_string();
    let out = synback(args(
        &world,
        &["restore", "latest", "--target", &target_arg],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(target.join("data/docs/a.txt").exists());

    let out = synback(args(&world, &["ls", "latest", "--json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("data/docs/a.txt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_exits_6_and_names_the_account() {
    let world = World::new("").await;
    std::fs::write(world.dir.path().join("password"), "not the password").unwrap();
    let out = synback(args(&world, &["backup"])).await;
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("backup"), "{all}");
    assert!(!all.contains("not the password"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nas_exits_5() {
    let world = World::new("").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cfg = std::fs::read_to_string(&world.config_path).unwrap();
    let cfg = cfg.replace(&world.nas.url(), &format!("http://127.0.0.1:{port}"));
    let cfg = cfg.replace("max_attempts = 6", "max_attempts = 1");
    std::fs::write(&world.config_path, cfg).unwrap();
    let out = synback(args(&world, &["list"])).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_exits_2_with_the_line() {
    let world = World::new("colour = \"blue\"").await;
    let out = synback(args(&world, &["check-config"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("colour") && all.contains("synback.toml"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_cycle() {
    let out = synback(vec!["demo".to_owned()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "synback backup demo",
        "synback list demo",
        "verify",
        "identical",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// Kills `synback backup` with SIGKILL at random moments; after each kill
/// every listed snapshot still verifies, and a final run succeeds (taking
/// over the dead run's lock) and removes everything the killed runs left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_leaves_a_half_snapshot() {
    use synback::agent::VerifyMode;
    use synback::restore::Selector;
    use tokio_util::sync::CancellationToken;

    let world = World::new("volume_size = \"1MiB\"").await;
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(4096));
    let agent = world.agent();
    let bin = assert_cmd::cargo::cargo_bin("synback");
    let kills = 10;
    for round in 0..kills {
        let mut child = std::process::Command::new(&bin)
            .args(args(&world, &["backup"]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = 100 + rand::random_range(0..1400u64);
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let listing = agent.snapshots("home").await.unwrap();
        for snap in &listing.snapshots {
            agent
                .verify(
                    "home",
                    &Selector::Id(snap.id.to_string()),
                    VerifyMode::Quick,
                    CancellationToken::new(),
                )
                .await
                .unwrap_or_else(|e| panic!("round {round}: {} does not verify: {e}", snap.id));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
    world.nas.faults().clear();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    let listing = agent.snapshots("home").await.unwrap();
    assert!(listing.partials.is_empty(), "{:?}", world.remote_names());
    assert!(listing.orphans.is_empty(), "{:?}", world.remote_names());
    assert!(listing.lock.is_none(), "{:?}", world.remote_names());
}
