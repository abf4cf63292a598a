//! `synback nas-emulator`: runs the DSM emulator from the command line.
//!
//! Prints the base URL on one line of stdout once it accepts connections
//! (tests and scripts read it; `--listen 127.0.0.1:0` picks a free port),
//! then serves until SIGINT or SIGTERM.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use synback::{
    emulator::{Emulator, EmulatorConfig, Faults},
    secret::Secret,
};

/// Options of `synback nas-emulator`.
#[derive(Debug, clap::Args)]
pub struct NasEmulatorArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Folder holding one sub-folder per share.
    #[arg(long)]
    root: PathBuf,
    /// Share names (repeat or give several).
    #[arg(long = "share", num_args = 1.., default_value = "backup")]
    shares: Vec<String>,
    /// The account name.
    #[arg(long)]
    user: String,
    /// File holding the password (first line).
    #[arg(long)]
    password_file: PathBuf,
    /// Base32 TOTP secret: logins then need an OTP code or a device token.
    #[arg(long)]
    otp_secret: Option<String>,
    /// Refuse upload bodies without Content-Length (chunked) with 1800.
    #[arg(long)]
    strict_content_length: bool,
    /// Serve HTTPS with a fresh self-signed certificate.
    #[arg(long)]
    tls: bool,
    /// Append every request (JSON lines, secrets masked) to this file.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Sessions unused this many seconds expire (106).
    #[arg(long, value_name = "SECS")]
    session_idle_timeout: Option<u64>,
    /// List page size when a client sends no `limit`.
    #[arg(long, default_value_t = synback::emulator::DEFAULT_LIST_PAGE)]
    list_page_size: u32,
    #[command(flatten)]
    faults: FaultArgs,
}

/// Fault flags (all off by default).
#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// Drop the connection once an upload body has sent this many bytes.
    #[arg(long, value_name = "BYTES")]
    drop_upload_after: Option<u64>,
    /// Only drop this many uploads (default: every one).
    #[arg(long, value_name = "N")]
    drop_upload_times: Option<u32>,
    /// Answer every Nth HTTP request with HTTP 502.
    #[arg(long, value_name = "N")]
    http_502_every: Option<u32>,
    /// Answer every Nth File Station call with the busy code.
    #[arg(long, value_name = "N")]
    busy_every: Option<u32>,
    /// DSM code of a busy answer.
    #[arg(long, default_value_t = synback::emulator::DEFAULT_BUSY_CODE)]
    busy_code: i32,
    /// Limit uploads and downloads to this many KiB/s.
    #[arg(long, value_name = "KIB")]
    slow_kib_per_sec: Option<u32>,
    /// Flip one stored byte of each of the next N uploads.
    #[arg(long, value_name = "N", default_value_t = 0)]
    corrupt_uploads: u32,
    /// Refuse uploads beyond this many stored bytes (disk full).
    #[arg(long, value_name = "BYTES")]
    quota_bytes: Option<u64>,
    /// Code for --quota-bytes: 416 (no space) or 415 (quota).
    #[arg(long, default_value_t = 416, value_parser = clap::value_parser!(i32).range(415..=416))]
    quota_code: i32,
    /// Expire each session after this many calls (106).
    #[arg(long, value_name = "N")]
    expire_session_after: Option<u32>,
    /// Delay the first request this long (a NAS waking up).
    #[arg(long, value_name = "MS")]
    wake_delay_ms: Option<u64>,
    /// Refuse requests with a body larger than this (HTTP 413 or 504).
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<u64>,
    /// HTTP status for --max-request-bytes: 413 (proxy) or 504 (front-end).
    #[arg(long, default_value_t = 413, value_parser = parse_oversize_status)]
    oversize_status: u16,
    /// Background tasks stay unfinished at least this long.
    #[arg(long, value_name = "MS")]
    task_min_ms: Option<u64>,
}

fn parse_oversize_status(text: &str) -> Result<u16, String> {
    match text {
        "413" => Ok(413),
        "504" => Ok(504),
        _ => Err("must be 413 or 504".to_owned()),
    }
}

impl FaultArgs {
    fn to_faults(&self) -> Faults {
        let mut f = Faults::default();
        f.drop_upload_after = self.drop_upload_after;
        f.drop_upload_times = self.drop_upload_times;
        f.http_502_every = self.http_502_every;
        f.busy_every = self.busy_every;
        f.busy_code = self.busy_code;
        f.slow_kib_per_sec = self.slow_kib_per_sec;
        f.corrupt_uploads = self.corrupt_uploads;
        f.quota_bytes = self.quota_bytes;
        f.quota_code = self.quota_code;
        f.expire_session_after = self.expire_session_after;
        f.wake_delay = self.wake_delay_ms.map(Duration::from_millis);
        f.max_request_bytes = self.max_request_bytes;
        f.oversize_status = self.oversize_status;
        f.task_min_duration = self.task_min_ms.map(Duration::from_millis);
        f
    }
}

/// Runs the emulator until interrupted.
pub async fn run(args: NasEmulatorArgs) -> ExitCode {
    let password = match std::fs::read_to_string(&args.password_file) {
        Ok(text) => Secret::new(text.lines().next().unwrap_or_default()),
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", args.password_file.display());
            return ExitCode::from(super::exit::USAGE);
        }
    };
    let mut cfg = EmulatorConfig::new(&args.root, &args.user, password);
    cfg.shares = args.shares.clone();
    cfg.otp_secret = args.otp_secret.clone();
    cfg.strict_content_length = args.strict_content_length;
    cfg.tls = args.tls;
    cfg.request_log = args.request_log.clone();
    cfg.list_default_limit = args.list_page_size;
    cfg.session_idle_timeout = args.session_idle_timeout.map(Duration::from_secs);
    cfg.faults = args.faults.to_faults();
    let emulator = match Emulator::start(cfg, args.listen).await {
        Ok(emulator) => emulator,
        Err(err) => {
            eprintln!("error: {}", synback::error_chain(&err));
            return ExitCode::from(super::exit::FAILED);
        }
    };
    announce(&emulator);
    super::commands::wait_for_signal().await;
    emulator.shutdown().await;
    ExitCode::from(super::exit::OK)
}

fn announce(emulator: &Emulator) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", emulator.url());
    let _ = out.flush();
    if let Some(sha) = emulator.cert_sha256() {
        eprintln!("certificate sha256: {sha}");
    }
}
