//! Cron expressions as people write them, adapted to the `cron` crate.
//!
//! Accepted forms:
//! - standard 5 fields: `minute hour day-of-month month day-of-week`
//!   (run at second 0);
//! - 6 fields with seconds first, or 7 with a year last;
//! - the aliases `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`,
//!   `@yearly` (`@annually`).
//!
//! Day-of-week numbers follow classic cron in every form: `0` and `7` are
//! Sunday, `1` is Monday. The `cron` crate counts `1` = Sunday, so numeric
//! days are rewritten as names before it sees them.

use std::collections::BTreeSet;
use std::str::FromStr;

/// Day names in classic cron order (0 = Sunday).
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Aliases and the `cron` crate expression each stands for.
const ALIASES: [(&str, &str); 7] = [
    ("@yearly", "0 0 0 1 1 *"),
    ("@annually", "0 0 0 1 1 *"),
    ("@monthly", "0 0 0 1 * *"),
    ("@weekly", "0 0 0 * * SUN"),
    ("@daily", "0 0 0 * * *"),
    ("@midnight", "0 0 0 * * *"),
    ("@hourly", "0 0 * * * *"),
];

/// Why a schedule could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// An `@name` that is not one of the aliases.
    #[error("unknown schedule alias `{0}`")]
    UnknownAlias(String),
    /// Not 5, 6 or 7 fields.
    #[error("a schedule has 5 fields (or 6 with seconds, 7 with a year), this one has {0}")]
    FieldCount(usize),
    /// A day-of-week value that is not a number 0-7 or a day name.
    #[error("day of week `{0}` is not a number 0-7 or a day name (MON, TUE, ...)")]
    DayOfWeek(String),
    /// The `cron` crate refused the expression.
    #[error("invalid cron expression `{expression}`")]
    Cron {
        /// The expression given to the `cron` crate.
        expression: String,
        /// Its error.
        #[source]
        source: cron::error::Error,
    },
}

/// A parsed schedule and whether it restricts both day fields.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub(crate) schedule: cron::Schedule,
    /// True when both day-of-month and day-of-week are restricted: the
    /// `cron` crate then needs both to match, classic cron either.
    pub(crate) both_days_restricted: bool,
}

/// The aliases accepted, for messages.
pub(crate) fn alias_names() -> String {
    ALIASES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a schedule in any of the accepted forms.
///
/// # Errors
/// [`ScheduleError`] naming the part that is wrong.
pub(crate) fn parse(text: &str) -> Result<Parsed, ScheduleError> {
    let text = text.trim();
    let expression = if text.starts_with('@') {
        alias(text)?.to_owned()
    } else {
        six_or_seven_fields(text)?
    };
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let restricted = |i: usize| fields.get(i).is_some_and(|f| !matches!(*f, "*" | "?"));
    let both_days_restricted = restricted(3) && restricted(5);
    let schedule = cron::Schedule::from_str(&expression).map_err(|source| ScheduleError::Cron {
        expression: expression.clone(),
        source,
    })?;
    Ok(Parsed {
        schedule,
        both_days_restricted,
    })
}

fn alias(text: &str) -> Result<&'static str, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    ALIASES
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, expression)| *expression)
        .ok_or_else(|| ScheduleError::UnknownAlias(text.to_owned()))
}

/// Brings 5 fields to 6 (second 0 first) and rewrites the day of week.
fn six_or_seven_fields(text: &str) -> Result<String, ScheduleError> {
    let mut fields: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    match fields.len() {
        5 => fields.insert(0, "0".to_owned()),
        6 | 7 => {}
        n => return Err(ScheduleError::FieldCount(n)),
    }
    if let Some(dow) = fields.get_mut(5) {
        *dow = day_of_week(dow)?;
    }
    Ok(fields.join(" "))
}

/// Rewrites a classic-cron day-of-week field (0/7 = Sunday) as day names.
fn day_of_week(field: &str) -> Result<String, ScheduleError> {
    if matches!(field, "*" | "?") {
        return Ok(field.to_owned());
    }
    let mut days = BTreeSet::new();
    for item in field.split(',') {
        days.extend(day_items(item).ok_or_else(|| ScheduleError::DayOfWeek(item.to_owned()))?);
    }
    let names: Vec<&str> = days.iter().filter_map(|&d| DAYS.get(d).copied()).collect();
    Ok(names.join(","))
}

/// The days (0 = Sunday) one list item stands for: `*`, `N`, `N-M`, each
/// with an optional `/STEP`.
fn day_items(item: &str) -> Option<Vec<usize>> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step.parse::<usize>().ok().filter(|s| *s > 0)?)),
        None => (item, None),
    };
    let (first, last) = match base.split_once('-') {
        _ if base == "*" => (0, 6),
        Some((a, b)) => (day_value(a)?, day_value(b)?),
        None if step.is_some() => (day_value(base)?, 6),
        None => (day_value(base)?, day_value(base)?),
    };
    if first > last {
        return None;
    }
    let days = (first..=last)
        .step_by(step.unwrap_or(1))
        .map(|d| d % 7)
        .collect();
    Some(days)
}

/// A day number 0-7 or a day name, as a classic-cron number.
fn day_value(text: &str) -> Option<usize> {
    if let Ok(n) = text.parse::<usize>() {
        return (n <= 7).then_some(n);
    }
    let lower = text.to_ascii_lowercase();
    let prefix = lower.get(..3)?;
    const FULL: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    FULL.iter()
        .position(|full| full.starts_with(&lower) && full.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Utc, Weekday};

    fn next(text: &str) -> chrono::DateTime<Utc> {
        // Monday 2026-01-05 12:00:00 UTC.
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 12, 0, 0).unwrap();
        parse(text).unwrap().schedule.after(&start).next().unwrap()
    }

    #[test]
    fn five_fields_run_at_second_zero() {
        let t = next("30 2 * * *");
        assert_eq!((t.day(), t.hour(), t.minute(), t.second()), (6, 2, 30, 0));
    }

    #[test]
    fn six_fields_keep_seconds() {
        let t = next("15 30 2 * * *");
        assert_eq!((t.hour(), t.minute(), t.second()), (2, 30, 15));
    }

    #[test]
    fn seven_fields_with_a_year() {
        assert_eq!(next("0 0 3 1 1 * 2030").year(), 2030);
    }

    #[test]
    fn aliases() {
        assert_eq!(next("@daily").day(), 6);
        assert_eq!(next("@midnight").hour(), 0);
        assert_eq!(next("@hourly").hour(), 13);
        assert_eq!(next("@weekly").weekday(), Weekday::Sun);
        assert_eq!(next("@monthly").day(), 1);
        let y = next("@yearly");
        assert_eq!((y.year(), y.month(), y.day()), (2027, 1, 1));
        assert_eq!(next("@ANNUALLY").year(), 2027);
    }

    #[test]
    fn day_of_week_numbers_follow_classic_cron() {
        assert_eq!(next("0 3 * * 0").weekday(), Weekday::Sun);
        assert_eq!(next("0 3 * * 7").weekday(), Weekday::Sun);
        assert_eq!(next("0 3 * * 1").weekday(), Weekday::Mon);
        assert_eq!(next("0 3 * * 6").weekday(), Weekday::Sat);
        assert_eq!(next("0 3 * * fri").weekday(), Weekday::Fri);
        assert_eq!(next("0 3 * * 2-4").weekday(), Weekday::Tue);
        assert_eq!(next("0 3 * * 5-7").weekday(), Weekday::Fri);
        assert_eq!(next("0 0 3 * * MON-FRI").weekday(), Weekday::Tue);
        assert_eq!(day_of_week("*/2").unwrap(), "SUN,TUE,THU,SAT");
        assert_eq!(day_of_week("1-5/2").unwrap(), "MON,WED,FRI");
        assert_eq!(day_of_week("Sunday,wed").unwrap(), "SUN,WED");
    }

    #[test]
    fn both_day_fields_are_flagged() {
        assert!(parse("0 3 1 * 1").unwrap().both_days_restricted);
        assert!(!parse("0 3 1 * *").unwrap().both_days_restricted);
        assert!(!parse("@weekly").unwrap().both_days_restricted);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse("@reboot"),
            Err(ScheduleError::UnknownAlias(_))
        ));
        assert!(matches!(parse("* * *"), Err(ScheduleError::FieldCount(3))));
        assert!(matches!(
            parse("0 3 * * 8"),
            Err(ScheduleError::DayOfWeek(_))
        ));
        assert!(matches!(
            parse("0 3 * * 5-2"),
            Err(ScheduleError::DayOfWeek(_))
        ));
        assert!(matches!(
            parse("61 3 * * *"),
            Err(ScheduleError::Cron { .. })
        ));
    }
}
