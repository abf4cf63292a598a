//! Retention: which snapshots to keep and which to forget, with a reason for
//! each, like restic's `forget`.
//!
//! [`apply`] is a pure function of the snapshots, the [`Policy`], the
//! current time and a time zone; it never reads a clock and does no I/O.
//! It knows nothing about targets or file names: callers pass
//! [`Candidate`]s (only complete, verified snapshots should be passed).
//!
//! # Rules
//! Snapshots are sorted newest first (ties broken by id, so the result does
//! not depend on the input order). Then, for each snapshot:
//! - the newest is always kept (reason `newest`);
//! - `keep_last = N` keeps the N newest;
//! - `keep_hourly`/`daily`/`weekly`/`monthly`/`yearly = N` keep the newest
//!   snapshot of each of the N most recent hours/days/ISO weeks/months/years
//!   *that have a snapshot* (periods without one do not use up the count);
//!   periods are taken in the given time zone, so a day is a local calendar
//!   day even when it has 23 or 25 hours, and the repeated hour when clocks
//!   go back is one hourly period; weeks are ISO 8601 weeks (Monday first,
//!   week 53 included), years are calendar years;
//! - `keep_within = D` keeps every snapshot taken less than D before the
//!   *newest snapshot* (not before `now`, as restic does: a job whose
//!   backups stopped does not lose its history by waiting);
//! - a snapshot dated after `now` (a writer with a wrong clock) is kept,
//!   and left out of the rules: it is not the newest, takes no place of
//!   `keep_last` or a period, and `keep_within` counts back from the newest
//!   snapshot not in the future. Otherwise one snapshot dated 2030 would
//!   make every real one older than it, and `keep_last = 1` would forget
//!   each night's snapshot as soon as it was made.
//!
//! A policy with no rule (or only zero counts) keeps everything.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// A snapshot as retention sees it: an id and a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Candidate {
    /// The snapshot id (shown in reasons and used to break ties).
    pub id: String,
    /// When the snapshot was taken.
    pub time: DateTime<Utc>,
}

impl Candidate {
    /// A candidate with this id and time.
    pub fn new(id: impl Into<String>, time: DateTime<Utc>) -> Self {
        Self {
            id: id.into(),
            time,
        }
    }
}

/// How many snapshots to keep, per rule. `None` (or 0) disables a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent ISO weeks.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent months.
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent years.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot taken less than this before the newest one
    /// (humantime in TOML/JSON: `"7days"`, `"36h"`).
    #[serde(with = "humantime_opt")]
    pub keep_within: Option<Duration>,
}

impl Policy {
    /// True when no rule is active (then everything is kept).
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        counts.iter().all(|c| c.unwrap_or(0) == 0) && self.keep_within.is_none_or(|d| d.is_zero())
    }

    /// Sets `keep_last`.
    #[must_use]
    pub fn last(mut self, n: u32) -> Self {
        self.keep_last = Some(n);
        self
    }

    /// Sets `keep_hourly`.
    #[must_use]
    pub fn hourly(mut self, n: u32) -> Self {
        self.keep_hourly = Some(n);
        self
    }

    /// Sets `keep_daily`.
    #[must_use]
    pub fn daily(mut self, n: u32) -> Self {
        self.keep_daily = Some(n);
        self
    }

    /// Sets `keep_weekly`.
    #[must_use]
    pub fn weekly(mut self, n: u32) -> Self {
        self.keep_weekly = Some(n);
        self
    }

    /// Sets `keep_monthly`.
    #[must_use]
    pub fn monthly(mut self, n: u32) -> Self {
        self.keep_monthly = Some(n);
        self
    }

    /// Sets `keep_yearly`.
    #[must_use]
    pub fn yearly(mut self, n: u32) -> Self {
        self.keep_yearly = Some(n);
        self
    }

    /// Sets `keep_within`.
    #[must_use]
    pub fn within(mut self, d: Duration) -> Self {
        self.keep_within = Some(d);
        self
    }
}

/// The fate of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Decision {
    /// The snapshot id.
    pub id: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// True to keep it, false to forget it.
    pub keep: bool,
    /// Why: every rule that keeps it (`newest`, `last 2/3`,
    /// `daily 2026-03-29`, …), or `no keep rule matched`.
    pub reasons: Vec<String>,
}

/// Reason given for snapshots no rule keeps.
pub const FORGET_REASON: &str = "no keep rule matched";

/// Reason given for snapshots dated after `now`, kept outside the rules.
pub const FUTURE_REASON: &str = "dated in the future (clock skew?)";

/// A calendar period kind used by the bucket rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    /// The label of the period holding `t` (unique per period).
    fn label(self, t: &DateTime<Tz>) -> String {
        match self {
            Period::Hourly => format!("{} {:02}h", t.date_naive(), t.hour()),
            Period::Daily => t.date_naive().to_string(),
            Period::Weekly => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Period::Monthly => format!("{}-{:02}", t.year(), t.month()),
            Period::Yearly => t.year().to_string(),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        })
    }
}

/// A bucket rule while it is being applied.
struct Bucket {
    period: Period,
    remaining: u32,
    last: Option<String>,
}

impl Bucket {
    /// Keeps `t` if it opens a new period and the count allows; returns the
    /// reason.
    fn offer(&mut self, t: &DateTime<Tz>) -> Option<String> {
        if self.remaining == 0 {
            return None;
        }
        let label = self.period.label(t);
        if self.last.as_deref() == Some(label.as_str()) {
            return None;
        }
        self.remaining -= 1;
        let reason = format!("{} {label}", self.period);
        self.last = Some(label);
        Some(reason)
    }
}

fn buckets(policy: &Policy) -> Vec<Bucket> {
    [
        (Period::Hourly, policy.keep_hourly),
        (Period::Daily, policy.keep_daily),
        (Period::Weekly, policy.keep_weekly),
        (Period::Monthly, policy.keep_monthly),
        (Period::Yearly, policy.keep_yearly),
    ]
    .into_iter()
    .filter_map(|(period, n)| {
        n.filter(|n| *n > 0).map(|remaining| Bucket {
            period,
            remaining,
            last: None,
        })
    })
    .collect()
}

/// Decides for every snapshot whether to keep it, and why.
///
/// Returns one [`Decision`] per candidate, newest first. See the module
/// docs for the rules.
pub fn apply(
    snapshots: &[Candidate],
    policy: &Policy,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snapshots.iter().collect();
    order.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let (future, order): (Vec<&Candidate>, Vec<&Candidate>) =
        order.into_iter().partition(|c| c.time > now);
    let mut decisions: Vec<Decision> = future
        .into_iter()
        .map(|snap| Decision {
            id: snap.id.clone(),
            time: snap.time,
            keep: true,
            reasons: vec![FUTURE_REASON.to_owned()],
        })
        .collect();
    let Some(newest) = order.first().map(|c| c.time) else {
        return decisions;
    };
    let keep_all = policy.is_empty();
    let mut buckets = buckets(policy);
    let keep_last = policy.keep_last.unwrap_or(0) as usize;
    // A window too large for chrono keeps everything, which is what it means.
    let within = policy
        .keep_within
        .filter(|d| !d.is_zero())
        .map(|d| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX));

    decisions.reserve(order.len());
    for (index, snap) in order.into_iter().enumerate() {
        let local = snap.time.with_timezone(&tz);
        let mut reasons = Vec::new();
        if keep_all {
            reasons.push("no retention policy: keep everything".to_owned());
        }
        if index == 0 {
            reasons.push("newest".to_owned());
        }
        if index < keep_last {
            reasons.push(format!("last {}/{keep_last}", index + 1));
        }
        reasons.extend(buckets.iter_mut().filter_map(|b| b.offer(&local)));
        if within.is_some_and(|within| newest - snap.time < within) {
            reasons.push(format!(
                "within {} of the newest",
                humantime::format_duration(policy.keep_within.unwrap_or_default())
            ));
        }
        let keep = !reasons.is_empty();
        if !keep {
            reasons.push(FORGET_REASON.to_owned());
        }
        decisions.push(Decision {
            id: snap.id.clone(),
            time: snap.time,
            keep,
            reasons,
        });
    }
    decisions
}

/// Serde for `Option<Duration>` as a humantime string.
mod humantime_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests;
