//! The tail of each job's current run log, for the healthchecks `/fail`
//! ping.
//!
//! [`layer`] is a `tracing_subscriber` layer: add it to the process's
//! subscriber (the binary does, at INFO) and every event inside a daemon
//! `run` span (the span carries the job name) is kept, formatted as one
//! line, in a per-job buffer of the last [`TAIL_BYTES`]. The daemon clears a
//! job's buffer when a run starts and reads it when the run failed. Without
//! the layer the buffers stay empty and the ping carries only the error.
//!
//! Knows nothing of backups; the buffers are process-wide (one per job
//! name), like the subscriber they are fed by.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// How much of a run's log is kept per job.
pub const TAIL_BYTES: usize = 8 * 1024;

/// The name of the daemon's per-run span.
const RUN_SPAN: &str = "run";

static LOGS: LazyLock<Mutex<HashMap<String, Tail>>> = LazyLock::new(Mutex::default);

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

/// The layer that feeds the per-job buffers; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLogLayer;

/// A new [`RunLogLayer`].
pub fn layer() -> RunLogLayer {
    RunLogLayer
}

/// The job a daemon `run` span belongs to, kept in the span's extensions.
struct RunJob(String);

impl<S> tracing_subscriber::Layer<S> for RunLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.name() != RUN_SPAN
            || !meta
                .target()
                .starts_with(module_path!().trim_end_matches("::run_log"))
        {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let (Some(job), Some(span)) = (fields.job, ctx.span(id)) else {
            return;
        };
        span.extensions_mut().insert(RunJob(job));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(job) = scope
            .from_root()
            .find_map(|span| span.extensions().get::<RunJob>().map(|j| j.0.clone()))
        else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format!(
            "{} {:>5} {}{}",
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            event.metadata().level(),
            fields.message,
            fields.rest
        );
        push(&job, line);
    }
}

/// An event's or span's fields: the message, the `job` field, and the
/// others as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    job: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "job" => self.job = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "job" => self.job = Some(format!("{value:?}").trim_matches('"').to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

fn push(job: &str, line: String) {
    let mut logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    let tail = logs.entry(job.to_owned()).or_default();
    tail.bytes += line.len() + 1;
    tail.lines.push_back(line);
    while tail.bytes > TAIL_BYTES && tail.lines.len() > 1 {
        if let Some(old) = tail.lines.pop_front() {
            tail.bytes -= old.len() + 1;
        }
    }
}

/// Forgets what `job`'s previous run logged.
pub(crate) fn clear(job: &str) {
    LOGS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(job);
}

/// The lines `job`'s current run logged so far (the last [`TAIL_BYTES`]),
/// one per line; empty without the layer.
pub fn tail(job: &str) -> String {
    let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    logs.get(job).map_or_else(String::new, |tail| {
        tail.lines.iter().fold(String::new(), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
    })
}
