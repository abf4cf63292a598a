//! The documentation and deployment files agree with the code:
//! docs/CONFIG.md documents exactly the keys of config.example.toml, the
//! Docker compose example mounts the Dockerfile's volumes, and the Home
//! Assistant add-on's options turn into a config that synback accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `section.key` for every key in the example config, commented-out
/// alternatives (`# password_file = ...`) included.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let commented = line.trim_start().starts_with('#');
        let body = line.trim_start().trim_start_matches('#').trim();
        if let Some(name) = table_name(body) {
            section = name;
            continue;
        }
        // A commented key is "# key = value" (one space), prose is not.
        if commented && !line.trim_start().starts_with("# ") {
            continue;
        }
        let Some((key, value)) = body.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key && !value.trim().is_empty() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// `job.retention` for `[job.retention]`, `job` for `[[job]]`.
fn table_name(text: &str) -> Option<String> {
    let inner = text
        .strip_prefix("[[")
        .and_then(|t| t.strip_suffix("]]"))
        .or_else(|| text.strip_prefix('[').and_then(|t| t.strip_suffix(']')))?;
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    valid.then(|| inner.to_owned())
}

/// `section.key` for every table row "| `key` | ..." under a heading
/// holding "`[section]`" or "`[[section]]`".
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut section = None;
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            section = line.split('`').nth(1).and_then(table_name);
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((key, _)) = rest.split_once('`') else {
            continue;
        };
        if let Some(section) = &section {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_example_config_key_is_documented_and_nothing_else() {
    let example = example_keys(&read("config.example.toml"));
    let documented = documented_keys(&read("docs/CONFIG.md"));
    assert!(example.len() > 40, "parsed too few keys: {example:?}");
    let undocumented: Vec<_> = example.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&example).collect();
    let mut problems = Vec::new();
    for key in &undocumented {
        let (section, name) = key.rsplit_once('.').unwrap();
        problems.push(format!(
            "config.example.toml has `{key}` but docs/CONFIG.md does not: add a row \"| `{name}` | ...\" under the heading with `[{section}]`"
        ));
    }
    for key in &unknown {
        problems.push(format!(
            "docs/CONFIG.md documents `{key}` but config.example.toml does not have it: add it to the example (commented out if optional) or remove the row"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_key_parsers_read_sections_and_commented_keys() {
    let example = "[nas]\nurl = \"x\"\n# password_file = \"/p\"\n# 1 = Monday, prose\n#   openssl x = y\n[[job]]\nname = \"a\"\n# [job.encryption]\n# recipients = [\"age1\"]\n";
    let keys: Vec<_> = example_keys(example).into_iter().collect();
    assert_eq!(
        keys,
        [
            "job.encryption.recipients",
            "job.name",
            "nas.password_file",
            "nas.url"
        ]
    );
    let doc = "## `[nas]`\n| key | t |\n|---|---|\n| `url` | s |\n### `[job.lock]`\n| `stale_after` | d |\n## Other\n| `ignored` | x |\n";
    let keys: Vec<_> = documented_keys(doc).into_iter().collect();
    assert_eq!(keys, ["job.lock.stale_after", "nas.url"]);
}

/// The mount targets of the compose service: "- host:target[:mode]" lines
/// under `volumes:`, as (target, read_only).
fn compose_mounts(text: &str) -> Vec<(String, bool)> {
    let mut mounts = Vec::new();
    let mut in_volumes = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if trimmed == "volumes:" && indent > 0 {
            in_volumes = true;
            continue;
        }
        if in_volumes {
            let Some(entry) = trimmed.strip_prefix("- ") else {
                in_volumes = false;
                continue;
            };
            let parts: Vec<&str> = entry.trim_matches('"').split(':').collect();
            if parts.len() >= 2 {
                mounts.push((parts[1].to_owned(), parts.get(2) == Some(&"ro")));
            }
        }
    }
    mounts
}

#[test]
fn the_compose_example_mounts_the_dockerfile_volumes() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let volume_line = dockerfile
        .lines()
        .find(|l| l.starts_with("VOLUME "))
        .expect("a VOLUME line");
    let volumes: Vec<String> =
        serde_json::from_str(volume_line.trim_start_matches("VOLUME ")).unwrap();
    assert_eq!(volumes, ["/config", "/state", "/data"]);

    let mounts = compose_mounts(&read("deploy/docker/compose.yaml"));
    for volume in &volumes {
        assert!(
            mounts
                .iter()
                .any(|(t, _)| t == volume || t.starts_with(&format!("{volume}/"))),
            "compose.yaml mounts nothing at or below {volume}: {mounts:?}"
        );
    }
    for (target, read_only) in &mounts {
        assert!(
            volumes
                .iter()
                .any(|v| target == v || target.starts_with(&format!("{v}/"))),
            "compose.yaml mounts {target}, which is no VOLUME of the Dockerfile"
        );
        let must_be_ro = target == "/config" || target.starts_with("/data/");
        assert_eq!(*read_only, must_be_ro, "{target} read-only");
    }

    // The entry point reads the config from the /config volume, as a
    // non-root user, and the sample config it points to is valid TOML
    // using the volumes.
    assert!(dockerfile.contains(
        r#"ENTRYPOINT ["/usr/local/bin/synback", "--config", "/config/synback.toml", "--log-format", "json"]"#
    ));
    assert!(dockerfile.contains("CMD [\"daemon\"]"));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert!(user != "root" && user != "0", "runs as {user}");
    assert!(dockerfile.contains("HEALTHCHECK"));
    let sample: toml::Value = toml::from_str(&read("deploy/docker/synback.example.toml")).unwrap();
    assert_eq!(sample["state"]["dir"].as_str(), Some("/state"));
    for source in sample["job"][0]["sources"].as_array().unwrap() {
        assert!(source.as_str().unwrap().starts_with("/data/"), "{source}");
    }
}

#[test]
fn compose_mounts_are_read_from_the_service_volumes_only() {
    let text = "services:\n  s:\n    volumes:\n      - ./c:/config:ro\n      # - /x:/y\n      - st:/state\n    secrets:\n      - pw\nvolumes:\n  st:\n";
    assert_eq!(
        compose_mounts(text),
        [("/config".to_owned(), true), ("/state".to_owned(), false)]
    );
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_home_assistant_options_become_a_valid_config() {
    if !have("jq") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "jq is needed in CI"
        );
        eprintln!("skipped: no jq on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for folder in ["config", "share", "ssl", "addons"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    let out = dir.path().join("data");
    let options = serde_json::json!({
        "nas_url": "https://nas.local:5001",
        "nas_user": "backup",
        "nas_password": "pa\"ss word",
        "pin_sha256": "",
        "share": "backup",
        "path": "homeassistant",
        "job": "ha",
        "folders": ["config", "share", "ssl"],
        "excludes": ["**/*.db-wal", "**/tts/**"],
        "schedule": "30 2 * * *",
        "timezone": "",
        "keep_last": 0,
        "keep_daily": 7,
        "keep_weekly": 4,
        "keep_monthly": 12,
        "keep_yearly": 0,
        "encryption_recipient": "age137yt6tlp2jztgh4qwezmdc8q9e583ycyz8ua87wh9z7qv0p8jg2qalvssc",
        "volume_size": "512MiB"
    });
    let options_path = dir.path().join("options.json");
    std::fs::write(&options_path, options.to_string()).unwrap();
    let status =
        std::process::Command::new(repo_file("deploy/homeassistant/synback/gen-config.sh"))
            .arg(&options_path)
            .arg(&out)
            .env("SYNBACK_SOURCE_ROOT", &root)
            .status()
            .unwrap();
    assert!(status.success());

    let config_path = out.join("synback.toml");
    let check = assert_cmd::Command::cargo_bin("synback")
        .unwrap()
        .args(["--config", config_path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let config =
        synback::config::Config::load(&config_path, &synback::config::ConfigEnv::new()).unwrap();
    assert_eq!(config.nas.password.expose(), "pa\"ss word");
    assert_eq!(config.nas.user, "backup");
    assert_eq!(config.state_dir, out.join("state"));
    // Only the Supervisor's ingress proxy may reach the status page, not
    // every container on the hassio network.
    assert_eq!(
        config.daemon.trusted_peers,
        ["172.30.32.2".parse::<std::net::IpAddr>().unwrap()]
    );
    let job = config.job("ha").unwrap();
    assert_eq!(
        job.sources,
        [root.join("config"), root.join("share"), root.join("ssl")]
    );
    assert_eq!(
        (job.share.as_str(), job.path.as_str()),
        ("backup", "homeassistant")
    );
    assert_eq!(job.volume_size, 512 * 1024 * 1024);
    assert_eq!(job.retention.keep_daily, Some(7));
    assert_eq!(job.retention.keep_last, None);
    assert_eq!(job.encryption.as_ref().unwrap().recipients.len(), 1);
    let toml_text = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        !toml_text.contains("pa\\\"ss"),
        "the password stays out of the TOML"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("nas-password"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "password file mode {mode:o}");
}

/// Runs the Docker health check against a one-shot server answering
/// `status`, or against a closed port when `status` is `None`.
fn healthcheck(status: Option<u16>) -> bool {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = match status {
        None => {
            drop(listener);
            None
        }
        Some(code) => Some(std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Read the whole request: closing with unread bytes would
            // reset the connection and lose the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            write!(conn, "HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            request
        })),
    };
    let ok = std::process::Command::new(repo_file("deploy/docker/healthcheck.sh"))
        .env("SYNBACK_STATUS_PORT", port.to_string())
        .status()
        .unwrap()
        .success();
    if let Some(server) = server {
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.0\r\n"),
            "{request}"
        );
    }
    ok
}

#[test]
fn the_docker_health_check_follows_healthz() {
    if !have("bash") {
        eprintln!("skipped: no bash on this machine");
        return;
    }
    assert!(healthcheck(Some(200)));
    assert!(!healthcheck(Some(503)));
    // No status listener configured: only the process being up counts.
    assert!(healthcheck(None));
}

/// The keys one level below a top-level `block:` of a simple YAML file.
fn yaml_block_keys(text: &str, block: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            inside = line.trim_end() == format!("{block}:");
            continue;
        }
        if inside
            && line.starts_with("  ")
            && !line.starts_with("   ")
            && let Some((key, _)) = line.trim().split_once(':')
            && !key.starts_with('-')
        {
            keys.insert(key.to_owned());
        }
    }
    keys
}

#[test]
fn every_add_on_option_has_a_schema_and_reaches_the_config() {
    let config = read("deploy/homeassistant/synback/config.yaml");
    let options = yaml_block_keys(&config, "options");
    let schema = yaml_block_keys(&config, "schema");
    assert!(options.len() >= 15, "{options:?}");
    assert_eq!(options, schema, "options and schema list other keys");
    let generator = read("deploy/homeassistant/synback/gen-config.sh");
    for option in &options {
        let used = generator.contains(&format!(".{option}"))
            || generator.contains(&format!("\"{option}\""));
        assert!(used, "gen-config.sh ignores the option {option}");
    }
    for folder in ["config:ro", "share:ro", "ssl:ro", "addons:ro"] {
        assert!(config.contains(&format!("  - {folder}\n")), "map {folder}");
    }
    assert!(config.contains("ingress: true\ningress_port: 9105\n"));
    // The Supervisor kills the add-on 10 s after SIGTERM unless told
    // otherwise: too short for a run to clean up.
    assert!(config.contains("\ntimeout: 120\n"), "add-on stop timeout");
    assert!(generator.contains("status_listen = \\\"0.0.0.0:9105\\\""));
}

/// The commands of docs/RESTORE.md ("Without synback"), run on a
/// multi-volume snapshot synback stored on the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_without_synback_commands_work() {
    if !(have("jq") && have("zstd") && have("sha256sum")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "jq, zstd and sha256sum are needed in CI"
        );
        eprintln!("skipped: needs jq, zstd and sha256sum");
        return;
    }
    let doc = read("docs/RESTORE.md");
    let check =
        r#"jq -r '.volumes[] | "\(.sha256)  \(.name)"' "$id.manifest.json" | sha256sum -c -"#;
    let extract = r#"cat "$id".tar.zst.[0-9][0-9][0-9] | zstd -d | tar -x -C /srv/restore"#;
    assert!(doc.contains(check) && doc.contains(extract));

    let world = crate::support::World::new("volume_size = \"1MiB\"").await;
    let report = world
        .agent()
        .backup("home", tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(report.volumes.len() > 1);
    let out = world.dir.path().join("by-hand");
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "set -eu\nid={id}\n{check}\n{extract}\n\
         test \"$(cat \"$id\".tar.zst.[0-9][0-9][0-9] | sha256sum | cut -d' ' -f1)\" = \"$(jq -r .archive.sha256 \"$id.manifest.json\")\"\n",
        id = report.snapshot,
        extract = extract.replace("/srv/restore", out.to_str().unwrap()),
    );
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(world.job_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{script}\n{output:?}");
    let checked = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        checked.matches(": OK").count(),
        report.volumes.len(),
        "{checked}"
    );
    let diffs = crate::support::tree_diff(&world.source, &out.join("data"), &|_| false);
    assert!(diffs.is_empty(), "{diffs:?}");

    // A damaged volume fails the check.
    let first = world
        .job_dir()
        .join(format!("{}.tar.zst.001", report.snapshot));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let damaged = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("id={}\n{check}", report.snapshot))
        .current_dir(world.job_dir())
        .output()
        .unwrap();
    assert!(!damaged.status.success(), "{damaged:?}");
}

/// The age command of docs/RESTORE.md ("Encrypted, with the age secret
/// key"), on an encrypted snapshot stored in several volumes and on one
/// stored in a single volume (numbered `.001` all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encrypted_restore_without_synback_commands_work() {
    if !(have("age") && have("zstd")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "age and zstd are needed in CI"
        );
        eprintln!("skipped: needs age and zstd");
        return;
    }
    let doc = read("docs/RESTORE.md");
    let command = r#"cat "$id".tar.zst.age.[0-9][0-9][0-9] | age -d -i key.txt | zstd -d | tar -x -C /srv/restore"#;
    assert!(doc.contains(command));

    let world = crate::support::World::new("").await;
    let key = world.dir.path().join("key.txt");
    let keygen = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let recipient = String::from_utf8(public.stdout).unwrap();
    for volume_size in ["1MiB", "1GiB"] {
        world.write_config(&format!(
            "volume_size = \"{volume_size}\"\n[job.encryption]\nrecipients = [\"{}\"]\n",
            recipient.trim()
        ));
        let report = world
            .agent()
            .backup("home", tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.volumes.len() > 1, volume_size == "1MiB");
        assert!(
            report.volumes[0].name.ends_with(".tar.zst.age.001"),
            "{report:?}"
        );
        let out = world.dir.path().join(format!("by-hand-{volume_size}"));
        std::fs::create_dir_all(&out).unwrap();
        let script = format!(
            "set -eu\nid={id}\n{command}\n",
            id = report.snapshot,
            command = command
                .replace("key.txt", key.to_str().unwrap())
                .replace("/srv/restore", out.to_str().unwrap()),
        );
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(world.job_dir())
            .output()
            .unwrap();
        assert!(output.status.success(), "{script}\n{output:?}");
        let diffs = crate::support::tree_diff(&world.source, &out.join("data"), &|_| false);
        assert!(diffs.is_empty(), "{volume_size}: {diffs:?}");
    }
}

/// `cargo tree` on this workspace (no build, no target toolchain needed):
/// the crate names it lists with `args`, `None` when cargo cannot answer
/// (no network for a crate never downloaded; a failure under `CI=true`).
fn cargo_tree(args: &[&str]) -> Option<BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .arg("tree")
        .arg("--locked")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "cargo tree {args:?} failed: {stderr}"
        );
        eprintln!("skipped: cargo tree {args:?} failed: {stderr}");
        return None;
    }
    let text = String::from_utf8(output.stdout).unwrap();
    Some(
        text.lines()
            .filter_map(|line| {
                line.trim_start_matches(|c: char| c.is_ascii_digit())
                    .split(' ')
                    .next()
            })
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// The library-only build (examples/library-only, synback with
/// `default-features = false`) pulls in none of the front ends: its
/// features do not unify with the main package's.
#[test]
fn the_library_only_build_has_no_cli_daemon_or_emulator_dependencies() {
    let Some(crates) = cargo_tree(&[
        "-p",
        "synback-library-only",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]) else {
        return;
    };
    assert!(
        crates.contains("synback") && crates.contains("reqwest"),
        "{crates:?}"
    );
    for absent in [
        "clap",
        "indicatif",
        "axum",
        "rumqttc",
        "tracing-subscriber",
        "rcgen",
        // tokio's "signal" feature: only the CLI and the daemon need it.
        "signal-hook-registry",
    ] {
        assert!(
            !crates.contains(absent),
            "{absent} is in the library-only build"
        );
    }
}

/// docs/INSTALL.md (cross-compiling): on aarch64 and armv7 Linux only
/// zstd-sys and ring compile C, for the binary that ships and for the
/// library alone, so a cross C compiler is the only extra tool.
#[test]
fn cross_builds_compile_c_only_for_zstd_and_ring() {
    let install = read("docs/INSTALL.md");
    let expected: BTreeSet<String> = ["ring", "zstd-sys"].map(str::to_owned).into();
    for target in ["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"] {
        assert!(
            install.contains(target),
            "INSTALL.md does not name {target}"
        );
        for build in [
            &["--no-default-features", "--features", "cli,daemon"][..],
            &["-p", "synback-library-only"][..],
        ] {
            let mut args = vec!["--target", target, "-e", "normal,build", "-i", "cc"];
            args.extend(["--prefix", "depth", "--depth", "1"]);
            args.extend(build);
            let Some(crates) = cargo_tree(&args) else {
                return;
            };
            let users: BTreeSet<String> = crates.into_iter().filter(|c| c != "cc").collect();
            assert_eq!(users, expected, "{target} {build:?}: crates that build C");
        }
    }
}

/// Compose mounts a file secret with the host file's owner and mode, and
/// the container runs as uid 10001 with no capabilities: the steps must
/// hand the password file to that uid, or the daemon cannot read it.
#[test]
fn the_docker_steps_make_the_secret_readable_by_the_container_user() {
    let dockerfile = read("deploy/docker/Dockerfile");
    assert!(dockerfile.contains("--uid 10001") && dockerfile.contains("\nUSER synback"));
    for file in ["docs/INSTALL.md", "deploy/docker/compose.yaml"] {
        let text = read(file);
        assert!(text.contains("chmod 600 nas-password"), "{file}");
        assert!(text.contains("chown 10001 nas-password"), "{file}");
    }
}
