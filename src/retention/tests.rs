//! Table-driven tests of the retention rules with fixed dates, and property
//! tests of its invariants.

use super::*;
use chrono_tz::America::New_York;
use chrono_tz::Europe::Berlin;
use chrono_tz::UTC;
use proptest::prelude::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn candidates(times: &[&str]) -> Vec<Candidate> {
    times.iter().map(|t| Candidate::new(*t, at(t))).collect()
}

const NOW: &str = "2030-01-01T00:00:00Z";

/// Ids (= times) kept, newest first.
fn kept(times: &[&str], policy: &Policy, tz: Tz) -> Vec<String> {
    apply(&candidates(times), policy, at(NOW), tz)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| d.id)
        .collect()
}

struct Case {
    name: &'static str,
    tz: Tz,
    policy: Policy,
    times: &'static [&'static str],
    kept: &'static [&'static str],
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "empty policy keeps everything",
            tz: UTC,
            policy: Policy::default(),
            times: &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"],
            kept: &["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"],
        },
        Case {
            name: "zero counts are an empty policy",
            tz: UTC,
            policy: Policy::default().last(0).daily(0),
            times: &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"],
            kept: &["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"],
        },
        Case {
            name: "keep_last keeps the newest n",
            tz: UTC,
            policy: Policy::default().last(2),
            times: &[
                "2026-01-01T00:00:00Z",
                "2026-01-03T00:00:00Z",
                "2026-01-02T00:00:00Z",
                "2026-01-04T00:00:00Z",
            ],
            kept: &["2026-01-04T00:00:00Z", "2026-01-03T00:00:00Z"],
        },
        Case {
            name: "newest is kept even when rules would not",
            tz: UTC,
            policy: Policy::default().monthly(1),
            times: &["2026-01-01T00:00:00Z", "2026-01-20T00:00:00Z"],
            kept: &["2026-01-20T00:00:00Z"],
        },
        Case {
            name: "daily keeps the newest of each day",
            tz: UTC,
            policy: Policy::default().daily(2),
            times: &[
                "2026-01-01T08:00:00Z",
                "2026-01-01T20:00:00Z",
                "2026-01-02T08:00:00Z",
                "2026-01-02T20:00:00Z",
                "2026-01-03T08:00:00Z",
            ],
            kept: &["2026-01-03T08:00:00Z", "2026-01-02T20:00:00Z"],
        },
        Case {
            name: "days without snapshots do not use up the count",
            tz: UTC,
            policy: Policy::default().daily(3),
            times: &[
                "2026-01-01T08:00:00Z",
                "2026-01-05T08:00:00Z",
                "2026-01-09T08:00:00Z",
                "2026-01-10T08:00:00Z",
            ],
            kept: &[
                "2026-01-10T08:00:00Z",
                "2026-01-09T08:00:00Z",
                "2026-01-05T08:00:00Z",
            ],
        },
        Case {
            name: "days are local days: UTC sees one day",
            tz: UTC,
            policy: Policy::default().daily(5),
            times: &["2026-01-01T22:30:00Z", "2026-01-01T23:30:00Z"],
            kept: &["2026-01-01T23:30:00Z"],
        },
        Case {
            name: "days are local days: Berlin sees two",
            tz: Berlin,
            policy: Policy::default().daily(5),
            times: &["2026-01-01T22:30:00Z", "2026-01-01T23:30:00Z"],
            kept: &["2026-01-01T23:30:00Z", "2026-01-01T22:30:00Z"],
        },
        Case {
            name: "Berlin spring forward: the 23-hour day is one day",
            tz: Berlin,
            policy: Policy::default().daily(2),
            times: &[
                // 2026-03-29 00:00 CET, 01:59 CET, 03:00 CEST, 23:59 CEST
                "2026-03-28T23:00:00Z",
                "2026-03-29T00:59:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T21:59:00Z",
                // 2026-03-30 00:00 CEST
                "2026-03-29T22:00:00Z",
                // 2026-03-28 23:59 CET
                "2026-03-28T22:59:00Z",
            ],
            kept: &["2026-03-29T22:00:00Z", "2026-03-29T21:59:00Z"],
        },
        Case {
            name: "Berlin spring forward: hours around the gap are distinct",
            tz: Berlin,
            policy: Policy::default().hourly(10),
            times: &["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"],
            kept: &["2026-03-29T01:30:00Z", "2026-03-29T00:30:00Z"],
        },
        Case {
            name: "Berlin fall back: the repeated hour is one hourly period",
            tz: Berlin,
            policy: Policy::default().hourly(10),
            times: &[
                // 02:00 CEST, 02:30 CEST, 02:00 CET, 02:30 CET
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
            ],
            kept: &["2026-10-25T01:30:00Z"],
        },
        Case {
            name: "the same instants are two hours in UTC",
            tz: UTC,
            policy: Policy::default().hourly(10),
            times: &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
            ],
            kept: &["2026-10-25T01:30:00Z", "2026-10-25T00:30:00Z"],
        },
        Case {
            name: "Berlin fall back: the 25-hour day is one day",
            tz: Berlin,
            policy: Policy::default().daily(3),
            times: &[
                // 2026-10-25 00:00 CEST and 23:59 CET, then 2026-10-26 00:00 CET
                "2026-10-24T22:00:00Z",
                "2026-10-25T22:59:00Z",
                "2026-10-25T23:00:00Z",
            ],
            kept: &["2026-10-25T23:00:00Z", "2026-10-25T22:59:00Z"],
        },
        Case {
            name: "New York fall back: 01:30 EDT and 01:30 EST share an hour",
            tz: New_York,
            policy: Policy::default().hourly(5),
            times: &["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"],
            kept: &["2026-11-01T06:30:00Z"],
        },
        Case {
            name: "New York fall back: the 25-hour day is one day",
            tz: New_York,
            policy: Policy::default().daily(5),
            times: &[
                "2026-11-01T04:00:00Z",
                "2026-11-02T04:59:00Z",
                "2026-11-02T05:00:00Z",
            ],
            kept: &["2026-11-02T05:00:00Z", "2026-11-02T04:59:00Z"],
        },
        Case {
            name: "New York spring forward: day boundaries move by an hour",
            tz: New_York,
            policy: Policy::default().daily(5),
            times: &[
                // Mar 7 23:59 EST, Mar 8 00:00 EST, Mar 8 23:59 EDT, Mar 9 00:00 EDT
                "2026-03-08T04:59:00Z",
                "2026-03-08T05:00:00Z",
                "2026-03-09T03:59:00Z",
                "2026-03-09T04:00:00Z",
            ],
            kept: &[
                "2026-03-09T04:00:00Z",
                "2026-03-09T03:59:00Z",
                "2026-03-08T04:59:00Z",
            ],
        },
        Case {
            name: "New York spring forward: 01:30 EST and 03:30 EDT are different hours",
            tz: New_York,
            policy: Policy::default().hourly(5),
            times: &["2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"],
            kept: &["2026-03-08T07:30:00Z", "2026-03-08T06:30:00Z"],
        },
        Case {
            name: "ISO week 53 of 2026 spans into January 2027",
            tz: UTC,
            policy: Policy::default().weekly(10),
            times: &[
                "2026-12-27T12:00:00Z", // Sunday of 2026-W52
                "2026-12-28T12:00:00Z", // Monday of 2026-W53
                "2027-01-01T12:00:00Z", // Friday of 2026-W53
                "2027-01-03T12:00:00Z", // Sunday of 2026-W53
                "2027-01-04T12:00:00Z", // Monday of 2027-W01
            ],
            kept: &[
                "2027-01-04T12:00:00Z",
                "2027-01-03T12:00:00Z",
                "2026-12-27T12:00:00Z",
            ],
        },
        Case {
            name: "years are calendar years, not ISO years",
            tz: UTC,
            policy: Policy::default().yearly(10),
            times: &[
                "2026-12-28T12:00:00Z",
                "2027-01-01T12:00:00Z",
                "2027-01-04T12:00:00Z",
            ],
            kept: &["2027-01-04T12:00:00Z", "2026-12-28T12:00:00Z"],
        },
        Case {
            name: "new year's eve in UTC is new year in Berlin",
            tz: Berlin,
            policy: Policy::default().yearly(10),
            times: &["2026-12-31T22:30:00Z", "2026-12-31T23:30:00Z"],
            kept: &["2026-12-31T23:30:00Z", "2026-12-31T22:30:00Z"],
        },
        Case {
            name: "monthly skips empty months",
            tz: UTC,
            policy: Policy::default().monthly(3),
            times: &[
                "2026-01-15T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-04-10T00:00:00Z",
                "2026-05-02T00:00:00Z",
            ],
            kept: &[
                "2026-05-02T00:00:00Z",
                "2026-04-10T00:00:00Z",
                "2026-03-31T00:00:00Z",
            ],
        },
        Case {
            name: "month boundary is local: Jan 31 23:30 UTC is February in Berlin",
            tz: Berlin,
            policy: Policy::default().monthly(2),
            times: &["2026-01-31T22:30:00Z", "2026-01-31T23:30:00Z"],
            kept: &["2026-01-31T23:30:00Z", "2026-01-31T22:30:00Z"],
        },
        Case {
            name: "keep_within is measured from the newest snapshot, exclusive",
            tz: UTC,
            policy: Policy::default().within(hours(48)),
            times: &[
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                "2026-01-02T00:00:01Z",
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
            ],
            kept: &[
                "2026-01-04T00:00:00Z",
                "2026-01-03T00:00:00Z",
                "2026-01-02T00:00:01Z",
            ],
        },
        Case {
            name: "rules combine",
            tz: UTC,
            policy: Policy::default().last(1).daily(2).monthly(2),
            times: &[
                "2025-12-20T00:00:00Z",
                "2025-12-31T00:00:00Z",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                "2026-01-02T06:00:00Z",
            ],
            kept: &[
                "2026-01-02T06:00:00Z",
                "2026-01-01T00:00:00Z",
                "2025-12-31T00:00:00Z",
            ],
        },
    ]
}

#[test]
fn table() {
    for case in cases() {
        let got = kept(case.times, &case.policy, case.tz);
        assert_eq!(got, case.kept, "{}", case.name);
    }
}

#[test]
fn nothing_in_nothing_out() {
    assert!(apply(&[], &Policy::default().last(3), at(NOW), UTC).is_empty());
}

#[test]
fn reasons_name_every_rule_that_keeps() {
    let times = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"];
    let policy = Policy::default().last(2).daily(1).weekly(1);
    let d = apply(&candidates(&times), &policy, at(NOW), UTC);
    assert_eq!(
        d[0].reasons,
        ["newest", "last 1/2", "daily 2026-01-02", "weekly 2026-W01"]
    );
    assert_eq!(d[1].reasons, ["last 2/2"]);
    let d = apply(
        &candidates(&times),
        &Policy::default().last(1),
        at(NOW),
        UTC,
    );
    assert!(!d[1].keep);
    assert_eq!(d[1].reasons, [FORGET_REASON]);
}

#[test]
fn within_reason_uses_humantime() {
    let times = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"];
    let d = apply(
        &candidates(&times),
        &Policy::default().within(hours(36)),
        at(NOW),
        UTC,
    );
    assert_eq!(d[1].reasons, ["within 1day 12h of the newest"]);
}

#[test]
fn hourly_labels_are_local() {
    let times = ["2026-07-01T10:15:00Z"];
    let d = apply(
        &candidates(&times),
        &Policy::default().hourly(1),
        at(NOW),
        Berlin,
    );
    assert_eq!(d[0].reasons, ["newest", "hourly 2026-07-01 12h"]);
}

#[test]
fn ties_are_broken_by_id() {
    let t = at("2026-01-01T00:00:00Z");
    let snaps = vec![Candidate::new("a", t), Candidate::new("b", t)];
    let d = apply(&snaps, &Policy::default().daily(1), at(NOW), UTC);
    assert_eq!(d[0].id, "b");
    assert!(d[0].keep && !d[1].keep);
}

#[test]
fn future_snapshots_are_kept_and_flagged() {
    let times = ["2031-01-01T00:00:00Z", "2031-01-02T00:00:00Z"];
    let d = apply(
        &candidates(&times),
        &Policy::default().last(1),
        at(NOW),
        UTC,
    );
    assert!(d.iter().all(|d| d.keep));
    assert_eq!(d[1].reasons, ["dated in the future (clock skew?)"]);
}

#[test]
fn a_future_snapshot_does_not_push_out_the_real_ones() {
    // One run had its clock years ahead; the real snapshots go on.
    let times = [
        "2031-06-01T00:00:00Z",
        "2029-12-31T00:00:00Z",
        "2029-12-30T00:00:00Z",
        "2029-12-20T00:00:00Z",
    ];
    let policy = Policy::default().last(1).within(hours(48));
    let d = apply(&candidates(&times), &policy, at(NOW), UTC);
    let fate: Vec<(bool, &str)> = d.iter().map(|d| (d.keep, d.reasons[0].as_str())).collect();
    assert_eq!(
        fate,
        [
            (true, "dated in the future (clock skew?)"),
            (true, "newest"),
            (true, "within 2days of the newest"),
            (false, "no keep rule matched"),
        ]
    );
}

#[test]
fn huge_within_keeps_everything() {
    let times = ["1970-01-01T00:00:00Z", "2026-01-02T00:00:00Z"];
    let policy = Policy::default().within(Duration::from_secs(u64::MAX));
    assert_eq!(kept(&times, &policy, UTC).len(), 2);
}

#[test]
fn policy_reads_from_toml() {
    let policy: Policy = toml::from_str("keep_daily = 7\nkeep_within = \"2days\"").unwrap();
    assert_eq!(policy, Policy::default().daily(7).within(hours(48)));
    assert!(toml::from_str::<Policy>("keep_dayly = 7").is_err());
    assert!(toml::from_str::<Policy>("keep_within = \"soon\"").is_err());
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    let count = || proptest::option::of(0u32..6);
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        proptest::option::of(0u64..(90 * 24)),
    )
        .prop_map(|(l, h, d, w, m, y, within)| Policy {
            keep_last: l,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            keep_within: within.map(hours),
        })
}

fn arb_snapshots() -> impl Strategy<Value = Vec<Candidate>> {
    // Two years of minutes around 2026, with duplicates likely.
    proptest::collection::vec(0i64..(2 * 365 * 24 * 60), 0..40).prop_map(|minutes| {
        let base = at("2025-06-01T00:00:00Z");
        minutes
            .into_iter()
            .enumerate()
            .map(|(i, m)| Candidate::new(format!("s{i:02}"), base + TimeDelta::minutes(m)))
            .collect()
    })
}

fn arb_tz() -> impl Strategy<Value = Tz> {
    prop_oneof![
        Just(UTC),
        Just(Berlin),
        Just(New_York),
        Just(chrono_tz::Australia::Lord_Howe),
        Just(chrono_tz::Asia::Kolkata),
    ]
}

fn sorted(mut d: Vec<Decision>) -> Vec<Decision> {
    d.sort_by(|a, b| a.id.cmp(&b.id));
    d
}

proptest! {
    #[test]
    fn newest_is_always_kept(snaps in arb_snapshots(), policy in arb_policy(), tz in arb_tz()) {
        let d = apply(&snaps, &policy, at(NOW), tz);
        prop_assert_eq!(d.len(), snaps.len());
        if let Some(first) = d.first() {
            prop_assert!(first.keep);
            let newest = snaps.iter().map(|s| s.time).max().unwrap();
            prop_assert_eq!(first.time, newest);
        }
    }

    #[test]
    fn keep_last_keeps_exactly_the_newest_n(snaps in arb_snapshots(), n in 1u32..10, tz in arb_tz()) {
        let d = apply(&snaps, &Policy::default().last(n), at(NOW), tz);
        let want = (n as usize).min(snaps.len());
        prop_assert_eq!(d.iter().filter(|d| d.keep).count(), want);
        prop_assert!(d.iter().take(want).all(|d| d.keep));
        prop_assert!(d.windows(2).all(|w| w[0].time >= w[1].time));
    }

    #[test]
    fn input_order_does_not_matter(
        snaps in arb_snapshots(),
        policy in arb_policy(),
        tz in arb_tz(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = snaps.clone();
        // A deterministic shuffle from the seed (no RNG needed).
        shuffled.sort_by_key(|c| (c.id.len() as u64 * 31 + c.id.bytes().map(u64::from).sum::<u64>()) ^ seed);
        shuffled.reverse();
        let a = sorted(apply(&snaps, &policy, at(NOW), tz));
        let b = sorted(apply(&shuffled, &policy, at(NOW), tz));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn empty_policy_keeps_everything(snaps in arb_snapshots(), tz in arb_tz()) {
        let d = apply(&snaps, &Policy::default(), at(NOW), tz);
        prop_assert!(d.iter().all(|d| d.keep));
    }

    #[test]
    fn bucket_counts_bound_what_is_kept(snaps in arb_snapshots(), policy in arb_policy(), tz in arb_tz()) {
        prop_assume!(policy.keep_within.is_none() && !policy.is_empty());
        let d = apply(&snaps, &policy, at(NOW), tz);
        let total: u32 = [policy.keep_last, policy.keep_hourly, policy.keep_daily,
            policy.keep_weekly, policy.keep_monthly, policy.keep_yearly]
            .iter().map(|c| c.unwrap_or(0)).sum();
        let kept = d.iter().filter(|d| d.keep).count();
        prop_assert!(kept <= total as usize + 1);
    }

    #[test]
    fn more_generous_policies_keep_a_superset(snaps in arb_snapshots(), policy in arb_policy(), tz in arb_tz()) {
        prop_assume!(!policy.is_empty());
        let bigger = Policy {
            keep_daily: Some(policy.keep_daily.unwrap_or(0) + 1),
            ..policy.clone()
        };
        let small = sorted(apply(&snaps, &policy, at(NOW), tz));
        let big = sorted(apply(&snaps, &bigger, at(NOW), tz));
        for (s, b) in small.iter().zip(&big) {
            prop_assert!(!s.keep || b.keep, "{} kept by {:?} but not by {:?}", s.id, policy, bigger);
        }
    }
}
