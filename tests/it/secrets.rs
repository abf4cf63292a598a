//! Secrets never leak: a full backup and restore, failed logins (wrong
//! password, wrong OTP code), an OTP login that stores a device id, and two
//! runs through the daemon's runner, all with tracing at TRACE level
//! captured; then every captured line, every error's Display, Debug and
//! chain, and the daemon's status file are searched for the password, the
//! OTP secret and code, and every sid, SynoToken and device id the NAS
//! handed out. Files holding secrets are mode 0600.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use synback::agent::{Agent, DEVICE_ID_FILE};
use synback::config::{Config, ConfigEnv};
use synback::daemon::AgentRunner;
use synback::schedule::{
    DaemonControl, DaemonSettings, JobRunner, JobSpec, RunNow, SystemClock, read_status,
};
use synback::secret::Secret;
use synback::totp::Totp;
use tokio_util::sync::CancellationToken;

use crate::support::{PASSWORD, World};

const OTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const WRONG_PASSWORD: &str = "Tr0ub4dor&3-not-it";
const WRONG_OTP: &str = "918273";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// While on, every tracing event of the test binary is captured.
static CAPTURING: AtomicBool = AtomicBool::new(false);

/// Every tracing event of the test binary while [`CAPTURING`], at TRACE
/// level, as text (the global subscriber: spawned threads are captured
/// too). Off again, it costs other tests one atomic load per event.
fn captured_logs() -> Buffer {
    use tracing_subscriber::prelude::*;
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    let buffer = LOGS
        .get_or_init(|| {
            let buffer = Buffer::default();
            let writer = buffer.clone();
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                    CAPTURING.load(Ordering::SeqCst)
                }));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .unwrap();
            buffer
        })
        .clone();
    CAPTURING.store(true, Ordering::SeqCst);
    buffer
}

fn text_of(err: &(dyn std::error::Error + 'static)) -> String {
    format!("{err}\n{err:?}\n{}", synback::error_chain(err))
}

fn with_nas_lines(world: &World, lines: &str, password_file: Option<&Path>) -> Config {
    let text = std::fs::read_to_string(&world.config_path).unwrap();
    let mut text = text.replacen("[nas]\n", &format!("[nas]\n{lines}\n"), 1);
    if let Some(file) = password_file {
        let start = text.find("password_file = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(start..end, &format!("password_file = {:?}", file));
    }
    Config::from_toml_str(&text, &world.config_path, &ConfigEnv::new()).unwrap()
}

async fn wait_runs(state: &Path, job: &str, runs: u64) -> synback::schedule::JobStatus {
    for _ in 0..600 {
        if let Ok(status) = read_status(state)
            && let Some(job) = status.jobs.get(job)
            && job.runs >= runs
            && !job.running
        {
            return job.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{job} did not finish {runs} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_or_the_status_file() {
    let logs = captured_logs();
    let world = World::with_emulator("", |cfg| cfg.otp_secret = Some(OTP_SECRET.into())).await;
    let state = world.dir.path().join("state");
    let otp_file = world.dir.path().join("otp-secret");
    std::fs::write(&otp_file, OTP_SECRET).unwrap();
    std::fs::set_permissions(&otp_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let otp_line = format!("otp_secret_file = {:?}", otp_file);
    let mut errors = Vec::new();

    // A full backup and restore, logging in with the TOTP secret.
    let agent = Agent::new(with_nas_lines(&world, &otp_line, None));
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    crate::support::restore_latest(&agent, &world.restore_dir("restored"), false)
        .await
        .unwrap();
    assert!(
        world
            .restore_dir("restored")
            .join("data/docs/a.txt")
            .exists()
    );

    // A wrong password, then a wrong OTP code, then an OTP login that keeps
    // a device id.
    let wrong_pw = world.dir.path().join("wrong-password");
    std::fs::write(&wrong_pw, WRONG_PASSWORD).unwrap();
    std::fs::set_permissions(&wrong_pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad_agent = Agent::new(with_nas_lines(&world, &otp_line, Some(&wrong_pw)));
    let err = bad_agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("password") || synback::error_chain(&err).contains("password"),
        "{err}"
    );
    errors.push(text_of(&err));
    let plain = Agent::new(with_nas_lines(&world, "", None));
    let err = plain.login_with_otp(WRONG_OTP).await.unwrap_err();
    errors.push(text_of(&err));
    let totp = Totp::from_base32(&Secret::new(OTP_SECRET)).unwrap();
    let code = totp.now();
    let device_file = plain.login_with_otp(code.expose()).await.unwrap();
    assert_eq!(device_file, state.join(DEVICE_ID_FILE));
    let mode = std::fs::metadata(&device_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "device id file mode {mode:o}");
    // The stored device id lets the next login skip OTP. (Snapshot ids have
    // one-second resolution: wait for a new one.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    plain
        .backup("home", CancellationToken::new())
        .await
        .unwrap();

    // Two runs through the daemon's runner: one good, one refused login,
    // so the status file holds a snapshot and an error.
    let runner = Arc::new(AgentRunner::new(plain.clone()));
    let (control, handle) = DaemonControl::new();
    let mut settings = DaemonSettings::new(&state);
    settings.shutdown_grace = Duration::from_secs(30);
    let spec = JobSpec::new(
        "home",
        cron::Schedule::from_str("0 0 0 1 1 * 2099").unwrap(),
    );
    let runner_dyn: Arc<dyn JobRunner> = runner.clone();
    let daemon = tokio::spawn(synback::schedule::run(
        settings,
        vec![spec],
        runner_dyn,
        Arc::new(SystemClock),
        control,
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(handle.run_now("home").await, Some(RunNow::Started));
    let first = wait_runs(&state, "home", 1).await;
    assert!(first.last_snapshot.is_some(), "{first:?}");
    runner.replace(Agent::new(with_nas_lines(&world, "", Some(&wrong_pw))));
    assert_eq!(handle.run_now("home").await, Some(RunNow::Started));
    let second = wait_runs(&state, "home", 2).await;
    assert!(second.last_error.is_some(), "{second:?}");
    handle.shutdown();
    daemon.await.unwrap().unwrap();
    let status_file = state.join("status.json");
    let mode = std::fs::metadata(&status_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "status file mode {mode:o}");
    let status = std::fs::read_to_string(&status_file).unwrap();

    // What must never show.
    let issued = world.nas.issued_secrets();
    assert!(
        issued.len() >= 4,
        "expected several sessions and a device id, got {}",
        issued.len()
    );
    let device_id = std::fs::read_to_string(&device_file).unwrap();
    assert!(issued.iter().any(|s| s.expose() == device_id.trim()));
    let mut secrets: Vec<(String, String)> = vec![
        ("password".into(), PASSWORD.into()),
        ("wrong password".into(), WRONG_PASSWORD.into()),
        ("OTP secret".into(), OTP_SECRET.into()),
        ("wrong OTP code".into(), WRONG_OTP.into()),
    ];
    secrets.extend(
        issued
            .iter()
            .map(|s| ("sid/SynoToken/device id".to_owned(), s.expose().to_owned())),
    );
    CAPTURING.store(false, Ordering::SeqCst);
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("TRACE"), "the capture saw no TRACE line");
    assert!(logs.contains("DSM call"), "the capture missed the client");
    let places = [
        ("logs", logs.as_str()),
        ("status file", status.as_str()),
        ("errors", &errors.join("\n")),
    ];
    for (what, secret) in &secrets {
        for (place, text) in &places {
            assert!(!text.contains(secret.as_str()), "{what} found in {place}");
        }
    }
    // The valid OTP code is six digits that may occur by chance in byte
    // counts or timings, so it is only looked for where it could have been
    // copied: errors and the status file.
    for (place, text) in &places[1..] {
        assert!(!text.contains(code.expose()), "OTP code found in {place}");
    }
}

/// The real binary, with `SYNBACK_LOG=trace`: a backup and a restore
/// logging in with a TOTP secret, then a refused login. Everything it
/// prints (stdout and stderr, log lines and error chains) is searched for
/// the password, the wrong password, the OTP secret and every sid,
/// SynoToken and device id the NAS handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_at_trace_level_prints_no_secret() {
    let world = World::with_emulator("", |cfg| cfg.otp_secret = Some(OTP_SECRET.into())).await;
    let otp_file = world.dir.path().join("otp-secret");
    std::fs::write(&otp_file, OTP_SECRET).unwrap();
    std::fs::set_permissions(&otp_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&world.config_path).unwrap();
    let text = text.replacen(
        "[nas]\n",
        &format!("[nas]\notp_secret_file = {:?}\n", otp_file),
        1,
    );
    std::fs::write(&world.config_path, text).unwrap();
    let run = |args: Vec<String>| {
        let config = world.config_path.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_synback"))
                .env("SYNBACK_LOG", "trace")
                .arg("--config")
                .arg(config)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.code(), text)
        })
    };
    let target = world.restore_dir("restored").display().to_string();
    let mut output = String::new();
    for args in [
        vec!["backup".to_owned()],
        vec!["restore".into(), "latest".into(), "--target".into(), target],
    ] {
        let (code, text) = run(args.clone()).await.unwrap();
        assert_eq!(code, Some(0), "{args:?}: {text}");
        output.push_str(&text);
    }
    std::fs::write(world.dir.path().join("password"), WRONG_PASSWORD).unwrap();
    let (code, text) = run(vec!["backup".to_owned()]).await.unwrap();
    assert_eq!(code, Some(6), "{text}");
    output.push_str(&text);

    assert!(output.contains("TRACE"), "no TRACE line in the output");
    assert!(
        output.contains("DSM call"),
        "the client's debug lines are missing"
    );
    let issued = world.nas.issued_secrets();
    assert!(issued.len() >= 3, "only {} secrets issued", issued.len());
    let mut secrets: Vec<(&str, String)> = vec![
        ("password", PASSWORD.into()),
        ("wrong password", WRONG_PASSWORD.into()),
        ("OTP secret", OTP_SECRET.into()),
    ];
    secrets.extend(
        issued
            .iter()
            .map(|s| ("sid/SynoToken/device id", s.expose().to_owned())),
    );
    for (what, secret) in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "{what} found in the binary's output"
        );
    }
}
