//! A minimal command-line front end to the archive layer, used by
//! `scripts/bench-archive` (the real CLI is `synback`).
//!
//! ```text
//! archive_tool pack DIR... -o OUT [--level N] [--workers N] [--long]
//!                          [--recipient AGE1...] [--volume-size BYTES]
//!                          [--job-size BYTES (0 = zstd's default)]
//!                          [--overlap-log 1..9 (zstd's overlapLog; 0 = zstd's default)]
//! archive_tool unpack FILE DIR [--identity FILE] [--overwrite]
//! archive_tool list FILE [--identity FILE]
//! archive_tool gen DIR --size BYTES [--seed N]
//! ```

use std::error::Error;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use synback::archive::{self, DecryptKey, ListOptions, PackOptions, UnpackOptions, WriterSink};
use tokio_util::sync::CancellationToken;

type Res<T = ()> = Result<T, Box<dyn Error>>;
/// `--flag value` pairs (value empty for switches).
type Flags = Vec<(String, String)>;

fn main() -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("pack") => pack(&args[1..]),
        Some("unpack") => unpack(&args[1..]),
        Some("list") => list(&args[1..]),
        Some("gen") => generate(&args[1..]),
        _ => Err("usage: archive_tool pack|unpack|list|gen ... (see the source)".into()),
    }
}

/// Splits `--flag value` options from positional arguments.
fn parse(args: &[String], flags: &[&str]) -> Res<(Vec<String>, Flags)> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if flags.contains(&a.as_str()) {
            opts.push((a.clone(), String::new()));
        } else if a.starts_with("--") || a == "-o" {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            opts.push((a.clone(), v.clone()));
        } else {
            pos.push(a.clone());
        }
    }
    Ok((pos, opts))
}

fn keys(opts: &[(String, String)]) -> Vec<DecryptKey> {
    opts.iter()
        .filter(|(k, _)| k == "--identity")
        .map(|(_, v)| DecryptKey::IdentityFile(PathBuf::from(v)))
        .collect()
}

fn pack(args: &[String]) -> Res {
    let (sources, opts) = parse(args, &["--long"])?;
    let mut o = PackOptions::new(sources.iter().map(PathBuf::from));
    let mut out = None;
    for (k, v) in &opts {
        match k.as_str() {
            "-o" => out = Some(PathBuf::from(v)),
            "--level" => o.level = v.parse()?,
            "--workers" => o.workers = v.parse()?,
            "--long" => o.long_distance = true,
            "--recipient" => o.recipients.push(v.clone()),
            "--volume-size" => o.volume_size = Some(v.parse()?),
            "--job-size" => o.zstd_job_size = Some(v.parse()?),
            "--overlap-log" => o.zstd_overlap_log = Some(v.parse()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let out = out.ok_or("pack needs -o OUT")?;
    let started = Instant::now();
    let mut sink = WriterSink::new(BufWriter::with_capacity(1 << 20, File::create(&out)?));
    let summary = archive::pack(&o, &mut sink, &|_| {}, &CancellationToken::new())?;
    sink.into_inner().flush()?;
    eprintln!(
        "packed {} files, {} dirs, {} bytes read → {} bytes in {} volume(s), {:.2}s, sha256 {}",
        summary.counts.files,
        summary.counts.dirs,
        summary.bytes_read,
        summary.bytes_out,
        summary.volumes.len(),
        started.elapsed().as_secs_f64(),
        summary.sha256
    );
    for issue in &summary.issues {
        eprintln!(
            "warning: {}: {:?}: {}",
            issue.path.display(),
            issue.kind,
            issue.reason
        );
    }
    Ok(())
}

fn unpack(args: &[String]) -> Res {
    let (pos, opts) = parse(args, &["--overwrite"])?;
    let [file, target] = pos.as_slice() else {
        return Err("unpack FILE DIR".into());
    };
    let mut o = UnpackOptions::new(target);
    o.keys = keys(&opts);
    o.overwrite = opts.iter().any(|(k, _)| k == "--overwrite");
    let started = Instant::now();
    let summary = archive::unpack(File::open(file)?, &o, &CancellationToken::new())?;
    eprintln!(
        "restored {} files, {} dirs, {} bytes in {:.2}s; {} skipped",
        summary.files,
        summary.dirs,
        summary.bytes,
        started.elapsed().as_secs_f64(),
        summary.skipped_count
    );
    Ok(())
}

fn list(args: &[String]) -> Res {
    let (pos, opts) = parse(args, &[])?;
    let [file] = pos.as_slice() else {
        return Err("list FILE".into());
    };
    let mut o = ListOptions::default();
    o.keys = keys(&opts);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = None;
    archive::list(File::open(file)?, &o, &CancellationToken::new(), &mut |e| {
        if let Err(err) = writeln!(
            out,
            "{:?} {:o} {:>12} {} {}",
            e.kind,
            e.mode,
            e.size,
            e.mtime,
            e.path.display()
        ) {
            failed = Some(err);
        }
    })?;
    match failed {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------ data set

/// splitmix64: small, fast, seeded, reproducible everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "backup",
    "snapshot",
    "volume",
    "archive",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "config",
    "error",
    "warning",
    "info",
    "debug",
    "user",
    "file",
    "directory",
    "network",
    "storage",
    "synology",
    "restore",
    "verify",
    "upload",
    "time",
    "daemon",
    "home",
    "assistant",
    "sensor",
    "temperature",
    "light",
    "switch",
    "automation",
    "value",
    "state",
    "changed",
    "service",
    "request",
    "response",
    "session",
    "token",
    "cache",
];

/// Text with a Zipf-ish word mix: compresses about as well as real text.
fn text(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    out.clear();
    while out.len() < len {
        let r = rng.below(1 << 20) as f64 / f64::from(1 << 20);
        let idx = ((r * r * r) * WORDS.len() as f64) as usize;
        out.extend_from_slice(WORDS[idx.min(WORDS.len() - 1)].as_bytes());
        out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
        if rng.below(40) == 0 {
            out.extend_from_slice(rng.next().to_string().as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(len);
}

/// Log lines: timestamps, levels, repeated messages, numbers.
fn log_lines(rng: &mut Rng, len: usize, t0: &mut u64, out: &mut Vec<u8>) {
    out.clear();
    let levels = ["INFO", "DEBUG", "WARN", "ERROR"];
    let mut words = Vec::new();
    while out.len() < len {
        *t0 += rng.below(5000);
        let n = 30 + rng.below(90) as usize;
        text(rng, n, &mut words);
        words.retain(|&b| b != b'\n');
        let line = format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {} [worker-{}] {} id={}\n",
            1 + (*t0 / 86_400_000) % 28,
            (*t0 / 3_600_000) % 24,
            (*t0 / 60_000) % 60,
            (*t0 / 1000) % 60,
            *t0 % 1000,
            levels[rng.below(4) as usize],
            rng.below(8),
            String::from_utf8_lossy(&words),
            rng.below(100_000)
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
}

fn generate(args: &[String]) -> Res {
    let (pos, opts) = parse(args, &[])?;
    let [dir] = pos.as_slice() else {
        return Err("gen DIR --size BYTES [--seed N]".into());
    };
    let mut size: u64 = 1 << 30;
    let mut seed: u64 = 42;
    for (k, v) in &opts {
        match k.as_str() {
            "--size" => size = v.parse()?,
            "--seed" => seed = v.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let root = Path::new(dir);
    let mut rng = Rng(seed);
    let small = gen_small_text(root, size / 4, &mut rng)?;
    let logs = gen_big(root, "logs", size * 45 / 100, 64 << 20, &mut rng, true)?;
    let random = gen_big(
        root,
        "random",
        size - small - logs,
        32 << 20,
        &mut rng,
        false,
    )?;
    eprintln!(
        "generated {small} bytes of small text, {logs} of logs, {random} of random data in {dir}"
    );
    Ok(())
}

fn gen_small_text(root: &Path, budget: u64, rng: &mut Rng) -> Res<u64> {
    let mut total = 0u64;
    let mut buf = Vec::new();
    let mut n = 0u64;
    while total < budget {
        let dir = root.join(format!("text/d{:03}/e{:02}", n / 2000, (n / 100) % 20));
        if n.is_multiple_of(100) {
            fs::create_dir_all(&dir)?;
        }
        let len = (200 + rng.below(16 * 1024 - 200)).min(budget - total) as usize;
        text(rng, len, &mut buf);
        fs::write(dir.join(format!("note-{n:06}.txt")), &buf)?;
        total += len as u64;
        n += 1;
    }
    Ok(total)
}

fn gen_big(
    root: &Path,
    name: &str,
    budget: u64,
    file_size: u64,
    rng: &mut Rng,
    logs: bool,
) -> Res<u64> {
    let dir = root.join(name);
    fs::create_dir_all(&dir)?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut t0 = 0u64;
    let mut i = 0;
    while total < budget {
        let size = file_size.min(budget - total);
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(dir.join(format!("{name}-{i:03}.dat")))?,
        );
        let mut written = 0u64;
        while written < size {
            let len = (size - written).min(1 << 20) as usize;
            if logs {
                log_lines(rng, len, &mut t0, &mut buf);
            } else {
                buf.resize(len, 0);
                rng.fill(&mut buf);
            }
            out.write_all(&buf[..len])?;
            written += len as u64;
        }
        out.flush()?;
        total += size;
        i += 1;
    }
    Ok(total)
}
