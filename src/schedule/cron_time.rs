//! Cron fire times in a time zone, with explicit daylight-saving rules.
//!
//! A schedule is read in local wall-clock time. The schedule is evaluated
//! on the *naive* local time (so the `cron` crate never sees a zone), and
//! each local candidate is then placed in the zone:
//!
//! - **Spring forward** (a local time that does not exist, e.g. 02:30 in
//!   Europe/Berlin on the last Sunday of March): the run happens once, at
//!   the first instant after the gap (03:00 local), instead of being
//!   silently skipped for the day.
//! - **Fall back** (a local time that happens twice, e.g. 02:30 on the last
//!   Sunday of October): a schedule at fixed hours (`30 2 * * *`) runs
//!   once, at the first occurrence. Evaluation continues from the local
//!   wall-clock time of the last fire, so the repeated hour produces no
//!   second run. A daemon started inside the repeated hour, after the first
//!   occurrence, runs the second one. A schedule that fires every hour
//!   (hour field `*`, e.g. `*/30 * * * *` or `@hourly`) keeps its rhythm
//!   instead and fires in both occurrences of the repeated hour, as cron
//!   does for wildcard-hour jobs.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset as _, TimeZone, Utc};
use chrono_tz::Tz;
use cron::TimeUnitSpec as _;

/// How many local candidates are tried before giving up (guards against a
/// schedule whose candidates all lie before `after`, which cannot happen for
/// valid zones but must not loop forever).
const MAX_CANDIDATES: usize = 64;

/// How far around an instant a fall-back transition is looked for (folds
/// are an hour in practice, never more than a few).
const FOLD_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(3);

/// The first fire time of `schedule` strictly after `after`, with the
/// schedule read in `tz` (the local zone when `None`).
///
/// Returns `None` when the schedule never fires again (for example a year
/// field in the past).
pub fn next_after(
    schedule: &cron::Schedule,
    tz: Option<Tz>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match tz {
        Some(tz) => next_in_zone(schedule, &tz, after),
        None => next_in_zone(schedule, &chrono::Local, after),
    }
}

/// The time between the first two fire times after `after`, the "interval"
/// used by catch-up. `None` when the schedule fires fewer than twice more.
pub fn interval(
    schedule: &cron::Schedule,
    tz: Option<Tz>,
    after: DateTime<Utc>,
) -> Option<chrono::Duration> {
    let first = next_after(schedule, tz, after)?;
    let second = next_after(schedule, tz, first)?;
    Some(second - first)
}

fn next_in_zone<Z: TimeZone>(
    schedule: &cron::Schedule,
    zone: &Z,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(zone).naive_local();
    let candidates = schedule.after(&Utc.from_utc_datetime(&local));
    let next = candidates
        .take(MAX_CANDIDATES)
        .flat_map(|candidate| place(zone, candidate.naive_utc()))
        .find(|instant| *instant > after);
    if schedule.hours().count() < 24 {
        return next;
    }
    // Every hour: the second occurrences of the repeated hour count too,
    // even those whose wall-clock time is before the last fire's.
    let second = second_occurrence(schedule, zone, after);
    match (next, second) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The zone's offset from UTC at `at`, in seconds.
fn offset_at<Z: TimeZone>(zone: &Z, at: DateTime<Utc>) -> i64 {
    i64::from(at.with_timezone(zone).offset().fix().local_minus_utc())
}

/// The first instant after `after` that is the later occurrence of a
/// repeated local time the schedule names, when a fall-back transition
/// lies within [`FOLD_WINDOW`] of `after`.
fn second_occurrence<Z: TimeZone>(
    schedule: &cron::Schedule,
    zone: &Z,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (mut lo, mut hi) = (after - FOLD_WINDOW, after + FOLD_WINDOW);
    let (old, new) = (offset_at(zone, lo), offset_at(zone, hi));
    if old <= new {
        return None;
    }
    // The transition: the first second with the new offset.
    while hi - lo > chrono::TimeDelta::seconds(1) {
        let mid = lo + (hi - lo) / 2;
        match offset_at(zone, mid) == old {
            true => lo = mid,
            false => hi = mid,
        }
    }
    let naive =
        |at: DateTime<Utc>, offset: i64| (at + chrono::TimeDelta::seconds(offset)).naive_utc();
    // Local times in [first, end) happen twice; the second time is the
    // local time minus the new offset.
    let (first, end) = (naive(hi, new), naive(hi, old));
    let from = naive(after, new).max(first - chrono::TimeDelta::seconds(1));
    let candidate = schedule
        .after(&Utc.from_utc_datetime(&from))
        .next()?
        .naive_utc();
    (candidate < end).then(|| Utc.from_utc_datetime(&candidate) - chrono::TimeDelta::seconds(new))
}

/// The instants a local wall-clock time names, earliest first: both when it
/// happens twice (the caller takes the first one after `after`), the end of
/// the gap when it does not exist.
fn place<Z: TimeZone>(zone: &Z, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
        LocalResult::Ambiguous(earlier, later) => {
            vec![earlier.with_timezone(&Utc), later.with_timezone(&Utc)]
        }
        LocalResult::None => gap_end(zone, local).into_iter().collect(),
    }
}

/// The first existing local time after `local`, minute by minute (gaps are
/// at most a few hours and start and end on whole minutes).
fn gap_end<Z: TimeZone>(zone: &Z, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let minute = chrono::Duration::minutes(1);
    let mut probe = local;
    for _ in 0..(26 * 60) {
        probe = probe.checked_add_signed(minute)?;
        let truncated = probe.date().and_hms_opt(
            chrono::Timelike::hour(&probe),
            chrono::Timelike::minute(&probe),
            0,
        )?;
        if let Some(t) = zone.from_local_datetime(&truncated).earliest() {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn berlin() -> Option<Tz> {
        Some(chrono_tz::Europe::Berlin)
    }

    #[test]
    fn daily_in_zone() {
        let s = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let next = next_after(&s, berlin(), utc("2026-01-10T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-01-11T01:30:00Z"));
    }

    #[test]
    fn spring_forward_runs_at_gap_end_once() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let s = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let next = next_after(&s, berlin(), utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-03-29T01:00:00Z")); // 03:00 CEST
        let after = next_after(&s, berlin(), next).unwrap();
        assert_eq!(after, utc("2026-03-30T00:30:00Z")); // 02:30 CEST next day
    }

    #[test]
    fn fall_back_runs_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET.
        let s = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let first = next_after(&s, berlin(), utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z")); // first 02:30 (CEST)
        let second = next_after(&s, berlin(), first).unwrap();
        assert_eq!(second, utc("2026-10-26T01:30:00Z")); // next day, CET
    }

    #[test]
    fn fall_back_started_inside_repeated_hour_runs_the_second_occurrence() {
        let s = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        // 02:10 CET, after the first 02:30 already passed.
        let next = next_after(&s, berlin(), utc("2026-10-25T01:10:00Z")).unwrap();
        assert_eq!(next, utc("2026-10-25T01:30:00Z"));
    }

    /// Every fire time of `cron` from `from` up to `until`, in Berlin.
    fn fires(cron: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
        let s = cron::Schedule::from_str(cron).unwrap();
        let mut at = utc(from);
        let mut out = Vec::new();
        while let Some(next) = next_after(&s, berlin(), at) {
            if next > utc(until) {
                break;
            }
            out.push(next);
            at = next;
        }
        out
    }

    fn every(from: &str, step_min: i64, n: i64) -> Vec<DateTime<Utc>> {
        (0..n)
            .map(|i| utc(from) + chrono::TimeDelta::minutes(step_min * i))
            .collect()
    }

    #[test]
    fn every_half_hour_keeps_its_rhythm_across_fall_back() {
        // 00:30Z is 02:30 CEST; 01:00Z-02:00Z is the repeated 02:xx (CET).
        let got = fires(
            "0 */30 * * * *",
            "2026-10-24T23:10:00Z",
            "2026-10-25T03:00:00Z",
        );
        assert_eq!(got, every("2026-10-24T23:30:00Z", 30, 8));
    }

    #[test]
    fn hourly_keeps_its_rhythm_across_fall_back_and_spring_forward() {
        let got = fires(
            "0 0 * * * *",
            "2026-10-24T22:30:00Z",
            "2026-10-25T04:00:00Z",
        );
        assert_eq!(got, every("2026-10-24T23:00:00Z", 60, 6));
        // Spring forward: 02:00 CET does not exist; 03:00 CEST runs once.
        let got = fires(
            "0 0 * * * *",
            "2026-03-28T22:30:00Z",
            "2026-03-29T03:00:00Z",
        );
        assert_eq!(got, every("2026-03-28T23:00:00Z", 60, 5));
        let got = fires(
            "0 */30 * * * *",
            "2026-03-29T00:10:00Z",
            "2026-03-29T02:00:00Z",
        );
        assert_eq!(got, every("2026-03-29T00:30:00Z", 30, 4));
    }

    #[test]
    fn every_second_near_fall_back_is_every_second() {
        let got = fires(
            "* * * * * *",
            "2026-10-25T00:59:57Z",
            "2026-10-25T01:00:03Z",
        );
        assert_eq!(got.len(), 6, "{got:?}");
    }

    #[test]
    fn interval_of_daily_and_hourly() {
        let daily = cron::Schedule::from_str("0 0 3 * * *").unwrap();
        let hourly = cron::Schedule::from_str("0 0 * * * *").unwrap();
        let t = utc("2026-01-10T12:00:00Z");
        assert_eq!(
            interval(&daily, berlin(), t),
            Some(chrono::Duration::days(1))
        );
        assert_eq!(
            interval(&hourly, berlin(), t),
            Some(chrono::Duration::hours(1))
        );
    }

    #[test]
    fn never_again() {
        let s = cron::Schedule::from_str("0 0 0 1 1 * 2020").unwrap();
        assert_eq!(next_after(&s, berlin(), utc("2026-01-01T00:00:00Z")), None);
    }
}
