//! Human and JSON output: reports, tables, the progress bar, errors.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use synback::agent::{DiffReport, Error as AgentError, ForgetReport, OnlineCheck, VerifyReport};
use synback::archive::{EntryInfo, EntryKind};
use synback::backup::BackupReport;
use synback::event::{Event, EventSink, Events, Phase};
use synback::repo::listing::Listing;
use synback::restore::RestoreReport;

/// Where output goes and how: JSON on stdout for scripts, or human text with
/// a progress bar on stderr when stderr is a terminal.
#[derive(Clone)]
pub struct Printer {
    json: bool,
    bar: Option<ProgressBar>,
}

impl Printer {
    /// A printer; the progress bar exists only on a terminal and without `--json`.
    pub fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:12} {bytes:>10} read, {prefix} sent  {bytes_per_sec:>11}  {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { json, bar }
    }

    /// True when output is JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// An event sink that drives the progress bar (or does nothing).
    pub fn events(&self) -> Events {
        Arc::new(BarEvents {
            bar: self.bar.clone(),
            files: Mutex::new(0),
            checking: Mutex::new(Checking {
                names: Vec::new(),
                phase: Phase::Connecting,
            }),
        })
    }

    /// Clears the progress bar before the report is printed.
    pub fn finish_progress(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

struct BarEvents {
    bar: Option<ProgressBar>,
    files: Mutex<u64>,
    checking: Mutex<Checking>,
}

/// Volumes whose MD5 the NAS is computing, and the phase: while the last
/// volumes are checked nothing else moves, so the bar says what it waits
/// for, and shows the phase again once none is left.
struct Checking {
    names: Vec<String>,
    phase: Phase,
}

impl BarEvents {
    /// Notes that `name` is being checked (or no longer is) and shows the
    /// newest volume still being checked, or the phase.
    fn checking(&self, bar: &ProgressBar, name: String, started: bool) {
        let Ok(mut checking) = self.checking.lock() else {
            return;
        };
        checking.names.retain(|n| *n != name);
        if started {
            checking.names.push(name);
        }
        match checking.names.last() {
            Some(name) => bar.set_message(checking_message(name)),
            None => bar.set_message(phase_name(checking.phase)),
        }
    }

    /// A new phase: whatever was being checked has ended one way or the
    /// other (a failed run sends no `VolumeStored`).
    fn phase(&self, bar: &ProgressBar, phase: Phase) {
        if let Ok(mut checking) = self.checking.lock() {
            checking.names.clear();
            checking.phase = phase;
        }
        bar.set_message(phase_name(phase));
    }
}

/// "NAS MD5 .003" for volume 3 (what fits the message's column), "NAS MD5"
/// for an archive in one piece.
fn checking_message(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((_, number)) if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => {
            format!("NAS MD5 .{number}")
        }
        _ => "NAS MD5".to_owned(),
    }
}

impl EventSink for BarEvents {
    fn event(&self, event: Event) {
        let Some(bar) = &self.bar else { return };
        match event {
            Event::Phase(phase) => self.phase(bar, phase),
            Event::Progress(p) => {
                bar.set_position(p.bytes);
                let eta = p.eta.map_or(String::new(), |eta| {
                    let eta = Duration::from_secs(eta.as_secs());
                    format!(", about {} left", humantime::format_duration(eta))
                });
                bar.set_prefix(format!(
                    "{} ({} files){eta}",
                    HumanBytes(p.transferred),
                    p.files
                ));
                if let Ok(mut files) = self.files.lock() {
                    *files = p.files;
                }
            }
            Event::VolumeUploaded { name, .. } => self.checking(bar, name, true),
            Event::VolumeStored { name, .. } => self.checking(bar, name, false),
            Event::VolumeRetry {
                name,
                attempt,
                reason,
            } => {
                bar.println(format!(
                    "retrying {name} (attempt {attempt} failed: {reason})"
                ));
                self.checking(bar, name, false);
            }
            Event::Warning { path, reason } => bar.println(format!("warning: {path}: {reason}")),
            _ => {}
        }
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Connecting => "connecting",
        Phase::Transferring => "uploading",
        Phase::Verifying => "verifying",
        Phase::Committing => "committing",
        Phase::Rotating => "rotating",
        Phase::Restoring => "restoring",
        _ => "done",
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("error: cannot encode JSON output: {err}"),
    }
}

/// Prints an error with its whole cause chain, one cause per line.
pub fn print_error(err: &AgentError) {
    eprintln!("error: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    if let Some(hint) = err.hint() {
        eprintln!("  hint: {hint}");
    }
}

/// The summary of one backup run.
pub fn print_backup(printer: &Printer, job: &str, report: &BackupReport) {
    if printer.json() {
        print_json(report);
        return;
    }
    let secs = report.duration.as_secs_f64().max(0.001);
    let ratio = match report.bytes_read {
        0 => 0.0,
        n => report.bytes_stored as f64 / n as f64 * 100.0,
    };
    let status = match report.status {
        synback::backup::RunStatus::Ok => "ok",
        _ => "partial: some files were not saved",
    };
    println!("backup {job}: snapshot {} ({status})", report.snapshot);
    println!(
        "  files {}, dirs {}, links {}; read {}, stored {} ({ratio:.1}%) in {} volume{}",
        report.counts.files,
        report.counts.dirs,
        report.counts.symlinks + report.counts.hardlinks,
        HumanBytes(report.bytes_read),
        HumanBytes(report.bytes_stored),
        report.volumes.len(),
        if report.volumes.len() == 1 { "" } else { "s" }
    );
    println!(
        "  {secs:.1}s at {}/s; every volume verified by the NAS's MD5",
        HumanBytes((report.bytes_read as f64 / secs) as u64)
    );
    for issue in &report.issues {
        println!("  not saved: {}: {}", issue.path.display(), issue.reason);
    }
    if !report.forgotten.is_empty() {
        println!("  retention removed: {}", report.forgotten.join(", "));
    }
    if !report.cleaned.is_empty() {
        println!("  stale partial uploads removed: {}", report.cleaned.len());
    }
    if let Some(why) = &report.retention_held {
        println!("  retention held back: {why}");
    }
    if let Some(err) = &report.retention_error {
        println!("  retention not applied this time (the next run tries again): {err}");
    }
}

/// The snapshot table of `list`.
pub fn print_listings(printer: &Printer, all: &[(String, Listing)]) {
    if printer.json() {
        let value: Vec<_> = all
            .iter()
            .map(|(job, l)| synback::agent::listing_json(job, l))
            .collect();
        print_json(&value);
        return;
    }
    for (job, listing) in all {
        println!("{job}: {} snapshot(s)", listing.snapshots.len());
        if listing.snapshots.is_empty() {
            println!("  (none yet)");
        } else {
            println!(
                "  {:<34} {:<20} {:>10} {:>7}",
                "SNAPSHOT", "TIME (UTC)", "SIZE", "VOLUMES"
            );
        }
        for snap in &listing.snapshots {
            println!(
                "  {:<34} {:<20} {:>10} {:>7}",
                snap.id.to_string(),
                snap.id.time().format("%Y-%m-%d %H:%M:%S").to_string(),
                HumanBytes(snap.archive_size()).to_string(),
                snap.archives.len()
            );
        }
        for orphan in &listing.orphans {
            println!(
                "  {:<34} orphan: volumes without a manifest (an interrupted run; removed by the next one)",
                orphan.id.to_string()
            );
        }
        for partial in &listing.partials {
            println!(
                "  {:<34} partial upload in progress or abandoned",
                partial.entry.name
            );
        }
        if listing.lock.is_some() {
            println!("  locked: a backup is running (or was killed; the lock goes stale)");
        }
    }
}

/// One verification result.
pub fn print_verify(printer: &Printer, report: &VerifyReport) {
    if printer.json() {
        print_json(report);
        return;
    }
    println!("{}: ok ({})", report.snapshot, report.summary());
}

/// What retention decided.
pub fn print_forget(printer: &Printer, job: &str, report: &ForgetReport, dry_run: bool) {
    if printer.json() {
        print_json(report);
        return;
    }
    let verb = if dry_run { "would forget" } else { "forgotten" };
    println!("{job}:");
    for d in &report.decisions {
        let fate = if d.keep { "keep" } else { verb };
        println!("  {:<34} {:<12} {}", d.id, fate, d.reasons.join(", "));
    }
    if report.decisions.is_empty() {
        println!("  (no snapshots)");
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for name in &report.cleaned {
        println!("  {verb} stale leftover {name}");
    }
}

/// The summary of a restore.
pub fn print_restore(printer: &Printer, report: &RestoreReport, dry_run: bool) {
    if printer.json() {
        print_json(report);
        return;
    }
    let verb = if dry_run { "would restore" } else { "restored" };
    println!(
        "{verb} {} entries, {} from {} in {:.1}s",
        report.entries,
        HumanBytes(report.bytes),
        if report.snapshot.is_empty() {
            "the given files"
        } else {
            &report.snapshot
        },
        report.seconds
    );
    for (path, reason) in &report.skipped {
        println!("  skipped {path}: {reason}");
    }
}

/// One line of `ls`.
pub fn print_entry(entry: &EntryInfo, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(entry) {
            println!("{line}");
        }
        return;
    }
    let kind = match entry.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::HardLink => 'h',
        EntryKind::File => '-',
        _ => '?',
    };
    let time = chrono::DateTime::from_timestamp(entry.mtime, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default();
    let link = entry
        .link_target
        .as_ref()
        .map(|t| format!(" -> {}", t.display()))
        .unwrap_or_default();
    println!(
        "{kind}{:04o} {:>10} {time} {}{link}",
        entry.mode & 0o7777,
        entry.size,
        entry.path.display()
    );
}

/// Added, removed and changed paths.
pub fn print_diff(printer: &Printer, diff: &DiffReport) {
    if printer.json() {
        print_json(diff);
        return;
    }
    for path in &diff.added {
        println!("+ {path}");
    }
    for path in &diff.removed {
        println!("- {path}");
    }
    for path in &diff.changed {
        println!("M {path}");
    }
    println!(
        "{} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    );
}

/// The findings of `check-config --online`; returns the exit code.
pub fn print_online_check(report: &OnlineCheck) -> u8 {
    use synback::dsm::Level;
    let mut code = super::exit::OK;
    for (job, findings) in &report.jobs {
        println!("{job}:");
        for finding in findings {
            println!("  {finding}");
            if finding.level == Level::Problem {
                code = super::exit::USAGE;
            }
        }
    }
    code
}

/// Asks a question on the terminal and reads one line.
pub fn prompt(question: &str) -> std::io::Result<String> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_names_the_volume_being_checked_by_its_number() {
        assert_eq!(checking_message("home-x.tar.zst.003"), "NAS MD5 .003");
        assert_eq!(checking_message("home-x.tar.zst.age.012"), "NAS MD5 .012");
        assert_eq!(checking_message("home-x.tar.zst"), "NAS MD5");
        assert_eq!(checking_message("home-x.tar.zst.age"), "NAS MD5");
        assert_eq!(checking_message("odd."), "NAS MD5");
    }
}
