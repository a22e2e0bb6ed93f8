//! The schedule core of `waymark daemon`: windows, overlap, catch-up, pause, validation and the
//! schedule file, driven by an injected `now` only (no sleeping, no clock).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use waymark_cli::schedule::{
    format_duration, parse_duration, CatchUp, CronExpr, Decision, Error, NewSchedule, Overlap,
    Queued, Reason, ScheduleBook,
};

use crate::util::temp_dir;

fn at(text: &str) -> DateTime<Utc> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
}

fn minutes(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

fn new(name: &str, cluster: &str, cron: &str) -> NewSchedule {
    NewSchedule {
        name: name.into(),
        workflow: "yb-maintenance".into(),
        inventory: format!("/etc/waymark/{cluster}.toml").into(),
        cluster: cluster.into(),
        cron: cron.into(),
        ..NewSchedule::default()
    }
}

fn idle() -> BTreeSet<String> {
    BTreeSet::new()
}

fn busy(clusters: &[&str]) -> BTreeSet<String> {
    clusters.iter().map(|c| (*c).to_owned()).collect()
}

fn start(schedule: &str, fire_time: &str) -> Decision {
    Decision::Start {
        schedule: schedule.into(),
        fire_time: at(fire_time),
    }
}

fn skipped(schedule: &str, fire_time: &str, reason: Reason) -> Decision {
    Decision::Skipped {
        schedule: schedule.into(),
        fire_time: at(fire_time),
        reason,
    }
}

fn cluster_busy(cluster: &str) -> Reason {
    Reason::ClusterBusy {
        cluster: cluster.into(),
    }
}

fn starts(decisions: &[Decision]) -> Vec<(String, DateTime<Utc>)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Start {
                schedule,
                fire_time,
            } => Some((schedule.clone(), *fire_time)),
            _ => None,
        })
        .collect()
}

fn hourly_fire_times(from: &str, to: &str) -> Vec<DateTime<Utc>> {
    let (from, to) = (at(from), at(to));
    let mut times = Vec::new();
    let mut t = from;
    while t <= to {
        times.push(t);
        t += TimeDelta::hours(1);
    }
    times
}

fn error_text<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    result.expect_err("must be rejected").to_string()
}

#[test]
fn a_fire_time_inside_its_window_starts_once() {
    let mut book = ScheduleBook::default();
    book.add(
        new("nightly", "yb-1", "0 * * * *"),
        at("2025-03-10T09:30:00Z"),
    )
    .unwrap();
    assert_eq!(book.tick(at("2025-03-10T09:59:59Z"), &idle()), vec![]);
    assert_eq!(
        book.tick(at("2025-03-10T10:00:20Z"), &idle()),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );
    assert_eq!(
        book.schedules["nightly"].last_considered,
        Some(at("2025-03-10T10:00:00Z"))
    );
    // The run it started holds the cluster now; the same fire time never starts again.
    assert_eq!(
        book.tick(at("2025-03-10T10:00:50Z"), &busy(&["yb-1"])),
        vec![]
    );
    assert_eq!(book.tick(at("2025-03-10T10:30:00Z"), &idle()), vec![]);
    // A fire time before the schedule was added never fires.
    let mut late = ScheduleBook::default();
    late.add(new("late", "yb-1", "0 * * * *"), at("2025-03-10T10:00:01Z"))
        .unwrap();
    assert_eq!(late.tick(at("2025-03-10T10:30:00Z"), &idle()), vec![]);
}

#[test]
fn a_tick_after_the_window_closed_skips_with_a_reason() {
    let daily_30m = |catch_up| NewSchedule {
        window: Some(Duration::from_secs(30 * 60)),
        catch_up,
        ..new("nightly", "yb-1", "0 10 * * *")
    };
    let added = at("2025-03-10T09:50:00Z");

    // The last second of the window still starts.
    let mut book = ScheduleBook::default();
    book.add(daily_30m(CatchUp::Latest), added).unwrap();
    assert_eq!(
        book.tick(at("2025-03-10T10:29:59Z"), &idle()),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );

    // At the end of the window it is too late.
    let mut book = ScheduleBook::default();
    book.add(daily_30m(CatchUp::Latest), added).unwrap();
    let decisions = book.tick(at("2025-03-10T10:30:00Z"), &idle());
    assert_eq!(
        decisions,
        vec![skipped(
            "nightly",
            "2025-03-10T10:00:00Z",
            Reason::WindowClosed {
                closed_at: at("2025-03-10T10:30:00Z")
            }
        )]
    );
    assert_eq!(
        decisions[0].to_string(),
        "schedule nightly: skipped fire time 2025-03-10 10:00:00 UTC: \
         its start window closed at 2025-03-10 10:30:00 UTC"
    );

    // With catch-up none the late fire time counts as missed while down, and is dropped.
    let mut book = ScheduleBook::default();
    book.add(daily_30m(CatchUp::None), added).unwrap();
    assert_eq!(
        book.tick(at("2025-03-10T10:45:00Z"), &idle()),
        vec![Decision::Dropped {
            schedule: "nightly".into(),
            fire_times: vec![at("2025-03-10T10:00:00Z")],
            reason: Reason::MissedWhileDown,
        }]
    );
    // Either way the fire time is handled: the next tick has nothing to say.
    assert_eq!(book.tick(at("2025-03-10T10:46:00Z"), &idle()), vec![]);
}

#[test]
fn overlap_skip_gives_up_the_fire_time_while_the_cluster_is_busy() {
    let mut book = ScheduleBook::default();
    book.add(
        new("nightly", "yb-1", "0 10 * * *"),
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    let decisions = book.tick(at("2025-03-10T10:00:05Z"), &busy(&["yb-1"]));
    assert_eq!(
        decisions,
        vec![skipped(
            "nightly",
            "2025-03-10T10:00:00Z",
            cluster_busy("yb-1")
        )]
    );
    assert!(decisions[0]
        .to_string()
        .contains("cluster yb-1 has a run going"));
    assert!(book.queued.is_empty());
    // The cluster frees up within the window: the skipped fire time stays skipped.
    assert_eq!(book.tick(at("2025-03-10T10:10:00Z"), &idle()), vec![]);
}

#[test]
fn overlap_queue_starts_when_the_cluster_frees_up() {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            ..new("nightly", "yb-1", "0 10 * * *")
        },
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        book.tick(at("2025-03-10T10:00:05Z"), &busy(&["yb-1"])),
        vec![Decision::Queued {
            schedule: "nightly".into(),
            fire_time: at("2025-03-10T10:00:00Z"),
            cluster: "yb-1".into(),
        }]
    );
    // Still busy: it waits, silently.
    assert_eq!(
        book.tick(at("2025-03-10T10:20:00Z"), &busy(&["yb-1"])),
        vec![]
    );
    // Another cluster being busy does not hold it back.
    assert_eq!(
        book.tick(at("2025-03-10T10:40:00Z"), &busy(&["yb-2"])),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );
    assert!(book.queued.is_empty());
    assert_eq!(book.tick(at("2025-03-10T10:41:00Z"), &idle()), vec![]);
}

#[test]
fn a_queued_fire_time_never_starts_after_its_window() {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            window: Some(Duration::from_secs(3600)),
            ..new("nightly", "yb-1", "0 10 * * *")
        },
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    book.tick(at("2025-03-10T10:00:05Z"), &busy(&["yb-1"]));
    assert_eq!(
        book.tick(at("2025-03-10T10:59:59Z"), &busy(&["yb-1"])),
        vec![]
    );
    assert_eq!(
        book.tick(at("2025-03-10T11:00:00Z"), &idle()),
        vec![skipped(
            "nightly",
            "2025-03-10T10:00:00Z",
            Reason::WindowClosed {
                closed_at: at("2025-03-10T11:00:00Z")
            }
        )]
    );
    assert!(book.queued.is_empty());
    assert_eq!(book.tick(at("2025-03-10T11:30:00Z"), &idle()), vec![]);
}

#[test]
fn two_schedules_on_one_cluster_at_the_same_minute_start_one_run() {
    let added = at("2025-03-10T09:00:00Z");
    let mut book = ScheduleBook::default();
    book.add(new("a-upgrade", "yb-1", "0 10 * * *"), added)
        .unwrap();
    book.add(new("b-rotate", "yb-1", "0 10 * * *"), added)
        .unwrap();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            ..new("c-compact", "yb-1", "0 10 * * *")
        },
        added,
    )
    .unwrap();
    book.add(new("d-other", "yb-2", "0 10 * * *"), added)
        .unwrap();

    let decisions = book.tick(at("2025-03-10T10:00:03Z"), &idle());
    assert_eq!(
        decisions,
        vec![
            start("a-upgrade", "2025-03-10T10:00:00Z"),
            skipped("b-rotate", "2025-03-10T10:00:00Z", cluster_busy("yb-1")),
            Decision::Queued {
                schedule: "c-compact".into(),
                fire_time: at("2025-03-10T10:00:00Z"),
                cluster: "yb-1".into(),
            },
            start("d-other", "2025-03-10T10:00:00Z"),
        ]
    );
    // While a-upgrade runs, the queued one waits; when it ends, the queued one starts.
    assert_eq!(
        book.tick(at("2025-03-10T10:20:00Z"), &busy(&["yb-1"])),
        vec![]
    );
    assert_eq!(
        book.tick(at("2025-03-10T10:25:00Z"), &busy(&["yb-2"])),
        vec![start("c-compact", "2025-03-10T10:00:00Z")]
    );
}

#[test]
fn the_queue_is_served_first_and_oldest_first() {
    let added = at("2025-03-10T08:00:00Z");
    let mut book = ScheduleBook::default();
    for (name, cron) in [("a", "30 9 * * *"), ("b", "0 9 * * *"), ("c", "0 10 * * *")] {
        book.add(
            NewSchedule {
                overlap: Overlap::Queue,
                window: Some(Duration::from_secs(2 * 3600)),
                ..new(name, "yb-1", cron)
            },
            added,
        )
        .unwrap();
    }
    book.tick(at("2025-03-10T09:00:01Z"), &busy(&["yb-1"]));
    book.tick(at("2025-03-10T09:30:01Z"), &busy(&["yb-1"]));
    assert_eq!(book.queued.len(), 2);
    // The cluster frees up exactly when c fires: b (oldest) starts, a waits, c queues behind.
    let decisions = book.tick(at("2025-03-10T10:00:00Z"), &idle());
    assert_eq!(
        decisions,
        vec![
            start("b", "2025-03-10T09:00:00Z"),
            Decision::Queued {
                schedule: "c".into(),
                fire_time: at("2025-03-10T10:00:00Z"),
                cluster: "yb-1".into(),
            },
        ]
    );
    assert_eq!(
        book.queued,
        vec![
            Queued {
                schedule: "a".into(),
                fire_time: at("2025-03-10T09:30:00Z")
            },
            Queued {
                schedule: "c".into(),
                fire_time: at("2025-03-10T10:00:00Z")
            },
        ]
    );
    assert_eq!(
        book.tick(at("2025-03-10T10:40:00Z"), &idle()),
        vec![start("a", "2025-03-10T09:30:00Z")]
    );
    assert_eq!(
        book.tick(at("2025-03-10T11:10:00Z"), &idle()),
        vec![start("c", "2025-03-10T10:00:00Z")]
    );
}

/// Three days down with an hourly schedule: before the outage it ran at 10:00 on day 0; the
/// daemon comes back at 10:20 on day 3, 72 fire times later.
fn after_three_day_outage(catch_up: CatchUp) -> (ScheduleBook, Vec<Decision>) {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            catch_up,
            ..new("hourly", "yb-1", "0 * * * *")
        },
        at("2025-03-10T09:30:00Z"),
    )
    .unwrap();
    assert_eq!(
        book.tick(at("2025-03-10T10:00:10Z"), &idle()),
        vec![start("hourly", "2025-03-10T10:00:00Z")]
    );
    let decisions = book.tick(at("2025-03-13T10:20:00Z"), &idle());
    (book, decisions)
}

#[test]
fn catch_up_latest_after_a_three_day_outage_starts_only_the_newest() {
    let (mut book, decisions) = after_three_day_outage(CatchUp::Latest);
    assert_eq!(
        starts(&decisions),
        vec![("hourly".to_owned(), at("2025-03-13T10:00:00Z"))]
    );
    assert_eq!(
        decisions,
        vec![
            Decision::Dropped {
                schedule: "hourly".into(),
                fire_times: hourly_fire_times("2025-03-10T11:00:00Z", "2025-03-13T09:00:00Z"),
                reason: Reason::OlderThanLatest,
            },
            start("hourly", "2025-03-13T10:00:00Z"),
        ]
    );
    assert!(decisions[0]
        .to_string()
        .starts_with("schedule hourly: dropped 71 fire times from 2025-03-10 11:00:00 UTC"));
    assert_eq!(
        book.schedules["hourly"].last_considered,
        Some(at("2025-03-13T10:00:00Z"))
    );
    // Back to normal at the next fire time.
    assert_eq!(
        book.tick(at("2025-03-13T11:00:10Z"), &idle()),
        vec![start("hourly", "2025-03-13T11:00:00Z")]
    );
}

#[test]
fn catch_up_none_after_a_three_day_outage_starts_nothing() {
    let (mut book, decisions) = after_three_day_outage(CatchUp::None);
    assert_eq!(starts(&decisions), vec![]);
    let expected = hourly_fire_times("2025-03-10T11:00:00Z", "2025-03-13T10:00:00Z");
    assert_eq!(expected.len(), 72);
    assert_eq!(
        decisions,
        vec![Decision::Dropped {
            schedule: "hourly".into(),
            fire_times: expected,
            reason: Reason::MissedWhileDown,
        }]
    );
    assert!(decisions[0]
        .to_string()
        .ends_with("missed while the daemon was not running (catch-up none)"));
    assert_eq!(book.tick(at("2025-03-13T10:59:00Z"), &idle()), vec![]);
    assert_eq!(
        book.tick(at("2025-03-13T11:00:10Z"), &idle()),
        vec![start("hourly", "2025-03-13T11:00:00Z")]
    );
}

#[test]
fn catch_up_latest_queues_the_newest_when_its_cluster_is_busy() {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            catch_up: CatchUp::Latest,
            overlap: Overlap::Queue,
            ..new("hourly", "yb-1", "0 * * * *")
        },
        at("2025-03-10T09:30:00Z"),
    )
    .unwrap();
    let decisions = book.tick(at("2025-03-10T13:10:00Z"), &busy(&["yb-1"]));
    assert_eq!(starts(&decisions), vec![]);
    assert_eq!(
        decisions.last(),
        Some(&Decision::Queued {
            schedule: "hourly".into(),
            fire_time: at("2025-03-10T13:00:00Z"),
            cluster: "yb-1".into(),
        })
    );
    assert_eq!(
        book.tick(at("2025-03-10T13:50:00Z"), &idle()),
        vec![start("hourly", "2025-03-10T13:00:00Z")]
    );
}

#[test]
fn paused_schedules_never_start_and_unpausing_does_not_make_up() {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            catch_up: CatchUp::Latest,
            ..new("hourly", "yb-1", "0 * * * *")
        },
        at("2025-03-10T09:30:00Z"),
    )
    .unwrap();
    book.tick(at("2025-03-10T10:00:10Z"), &busy(&["yb-1"]));
    assert_eq!(book.queued.len(), 1);

    // Pausing drops the queued fire time; the paused schedule's fire times are skipped.
    book.set_paused("hourly", true, at("2025-03-10T10:05:00Z"))
        .unwrap();
    assert!(book.schedules["hourly"].paused);
    assert!(book.queued.is_empty());
    assert_eq!(
        book.tick(at("2025-03-10T11:00:10Z"), &idle()),
        vec![skipped("hourly", "2025-03-10T11:00:00Z", Reason::Paused)]
    );
    assert_eq!(
        book.tick(at("2025-03-10T12:00:10Z"), &idle()),
        vec![skipped("hourly", "2025-03-10T12:00:00Z", Reason::Paused)]
    );
    // Pausing again changes nothing.
    book.set_paused("hourly", true, at("2025-03-10T12:10:00Z"))
        .unwrap();

    // No tick from 12:00:10 to 15:20 (the daemon was down, say); unpaused at 15:20: the fire
    // times 13:00, 14:00 and 15:00 are not made up, even with catch-up latest.
    book.set_paused("hourly", false, at("2025-03-10T15:20:00Z"))
        .unwrap();
    assert!(!book.schedules["hourly"].paused);
    assert_eq!(
        book.schedules["hourly"].last_considered,
        Some(at("2025-03-10T15:20:00Z"))
    );
    assert_eq!(book.tick(at("2025-03-10T15:20:30Z"), &idle()), vec![]);
    // Unpausing an active schedule does not move it.
    book.set_paused("hourly", false, at("2025-03-10T15:40:00Z"))
        .unwrap();
    assert_eq!(
        book.schedules["hourly"].last_considered,
        Some(at("2025-03-10T15:20:00Z"))
    );
    assert_eq!(
        book.tick(at("2025-03-10T16:00:05Z"), &idle()),
        vec![start("hourly", "2025-03-10T16:00:00Z")]
    );
}

#[test]
fn invalid_cron_expressions_are_rejected_naming_the_expression_and_the_problem() {
    let cases = [
        ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
        ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
        ("0 0 1 13 *", "month field \"13\": 13 is out of range 1-12"),
        (
            "0 0 L * *",
            "day-of-month field \"L\": \"L\" is not a number 1-31",
        ),
        (
            "0 3 * * mon-fri,xyz",
            "day-of-week field \"mon-fri,xyz\": \"xyz\" is not a number 0-7 or sun-sat",
        ),
        (
            "*/0 * * * *",
            "minute field \"*/0\": a step must be at least 1",
        ),
        ("*/x * * * *", "step \"x\" is not a number"),
        ("5-1 * * * *", "range \"5-1\" goes backwards"),
        ("0 0 1,,2 * *", "empty list item"),
        (
            "* * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), found 4",
        ),
        (
            "0 0 3 * * *",
            "found 6; seconds and years are not supported",
        ),
        ("", "found 0"),
        ("0 0 30 2 *", "it never fires"),
        ("@reboot", "@reboot is not supported"),
        ("@often", "unknown macro"),
    ];
    for (expression, problem) in cases {
        let message = error_text(CronExpr::parse(expression));
        assert!(
            message.starts_with(&format!("invalid cron expression \"{expression}\": ")),
            "{message}"
        );
        assert!(
            message.contains(problem),
            "{expression}: {message} should say {problem}"
        );
    }

    let mut book = ScheduleBook::default();
    let err = book
        .add(new("bad", "yb-1", "0 3 * *"), at("2025-03-10T09:00:00Z"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidCron { expression, .. } if expression == "0 3 * *"),
        "{err:?}"
    );
    assert!(book.schedules.is_empty());
}

#[test]
fn cron_expressions_follow_standard_cron() {
    let first_after = |expression: &str, after: &str| {
        CronExpr::parse(expression)
            .unwrap()
            .next_after(at(after))
            .unwrap()
    };
    // 2025-03-10 is a Monday. Days of week count from Sunday = 0 (and 7).
    assert_eq!(
        first_after("0 3 * * 2", "2025-03-10T00:00:00Z"),
        at("2025-03-11T03:00:00Z")
    );
    for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun"] {
        assert_eq!(
            first_after(sunday, "2025-03-10T00:00:00Z"),
            at("2025-03-16T09:00:00Z"),
            "{sunday}"
        );
    }
    let week = |expression: &str| {
        CronExpr::parse(expression)
            .unwrap()
            .fire_times(at("2025-03-10T00:00:00Z"), at("2025-03-16T23:59:59Z"))
            .iter()
            .map(|t| t.format("%d").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(week("0 9 * * 1-5"), ["10", "11", "12", "13", "14"]);
    assert_eq!(week("0 9 * * mon-fri"), ["10", "11", "12", "13", "14"]);
    assert_eq!(week("0 9 * * 5-7"), ["14", "15", "16"]);
    assert_eq!(week("0 9 * * */2"), ["11", "13", "15", "16"]);

    let march = |expression: &str| {
        CronExpr::parse(expression)
            .unwrap()
            .fire_times(at("2025-02-28T23:59:59Z"), at("2025-03-31T23:59:59Z"))
            .iter()
            .map(|t| t.format("%d").to_string())
            .collect::<Vec<_>>()
    };
    // Both day fields restricted: either matches (the 13th, and Fridays: 7, 14, 21, 28).
    assert_eq!(march("0 0 13 * 5"), ["07", "13", "14", "21", "28"]);
    // A day field starting with `*` does not widen: odd days that are Fridays.
    assert_eq!(march("0 0 */2 * 5"), ["07", "21"]);
    assert_eq!(march("0 0 1,15 mar *"), ["01", "15"]);
    assert_eq!(march("@weekly"), march("0 0 * * 0"));
    assert_eq!(march("@daily").len(), 31);

    // Bounds are (after, until]; several a day are listed in order.
    let quarter_hours = CronExpr::parse("*/15 9-10 * * *").unwrap();
    assert_eq!(
        quarter_hours.fire_times(at("2025-03-10T09:00:00Z"), at("2025-03-10T10:00:00Z")),
        vec![
            at("2025-03-10T09:15:00Z"),
            at("2025-03-10T09:30:00Z"),
            at("2025-03-10T09:45:00Z"),
            at("2025-03-10T10:00:00Z"),
        ]
    );
    assert_eq!(
        CronExpr::parse("  0   3 * *  2 ").unwrap().as_str(),
        "0 3 * * 2"
    );
}

#[test]
fn durations_parse_and_bad_ones_are_named() {
    for (text, seconds) in [
        ("30m", 1_800),
        ("2h", 7_200),
        ("1h30m", 5_400),
        ("1d", 86_400),
        ("90s", 90),
        ("1d2h3m4s", 93_784),
        ("0m", 0),
    ] {
        assert_eq!(
            parse_duration(text).unwrap(),
            Duration::from_secs(seconds),
            "{text}"
        );
    }
    assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
    assert_eq!(format_duration(Duration::from_secs(93_784)), "1d2h3m4s");
    assert_eq!(format_duration(Duration::ZERO), "0s");

    for (text, problem) in [
        ("", "it is empty"),
        ("30", "30 has no unit; add d, h, m or s (for example 30m)"),
        ("1x", "unknown unit \"x\""),
        ("2H", "unknown unit \"H\""),
        ("h", "expected a number at \"h\""),
        ("-5m", "expected a number at \"-5m\""),
        ("1h 30m", "expected a number at \" 30m\""),
        ("30m1h", "units must go from largest to smallest"),
        ("1h1h", "units must go from largest to smallest"),
        ("99999999999999999999d", "it is too large"),
    ] {
        let message = error_text(parse_duration(text));
        assert!(
            message.starts_with(&format!("invalid duration \"{text}\": ")),
            "{message}"
        );
        assert!(message.contains(problem), "{text}: {message}");
    }
}

#[test]
fn invalid_windows_names_and_fields_are_rejected() {
    let now = at("2025-03-10T09:00:00Z");
    let with_window = |seconds| NewSchedule {
        window: Some(Duration::from_secs(seconds)),
        ..new("nightly", "yb-1", "0 3 * * *")
    };
    let mut book = ScheduleBook::default();
    let message = error_text(book.add(with_window(0), now));
    assert_eq!(
        message,
        "invalid window 0s: a start window must be at least 1m (cron fires at most once a minute)"
    );
    assert!(error_text(book.add(with_window(30), now)).starts_with("invalid window 30s:"));
    assert_eq!(
        error_text(book.add(with_window(400 * 86_400), now)),
        "invalid window 400d: a start window may be at most 366d"
    );
    assert!(book.schedules.is_empty());
    book.add(with_window(45 * 60), now).unwrap();
    assert_eq!(
        book.schedules["nightly"].effective_window(),
        Duration::from_secs(2_700)
    );

    for (name, problem) in [
        ("", "a schedule needs a name"),
        ("has space", "use only letters, digits, -, _ and ."),
        ("-x", "a name may not start with - or ."),
    ] {
        assert_eq!(
            error_text(book.add(new(name, "yb-1", "0 3 * * *"), now)),
            format!("invalid schedule name \"{name}\": {problem}")
        );
    }
    assert!(error_text(book.add(
        NewSchedule {
            workflow: String::new(),
            ..new("w", "yb-1", "0 3 * * *")
        },
        now
    ))
    .contains("a schedule needs a workflow name"));
    assert!(error_text(book.add(new("c", " ", "0 3 * * *"), now)).contains("invalid cluster"));
    assert_eq!(
        error_text("sometimes".parse::<Overlap>()),
        "invalid overlap \"sometimes\": expected skip or queue"
    );
    assert_eq!(
        error_text("all".parse::<CatchUp>()),
        "invalid catch-up \"all\": expected none or latest"
    );
    assert_eq!("queue".parse::<Overlap>().unwrap(), Overlap::Queue);
    assert_eq!("latest".parse::<CatchUp>().unwrap(), CatchUp::Latest);
    assert_eq!(book.schedules.len(), 1);
}

#[test]
fn duplicates_and_unknown_names_are_refused_and_remove_clears_the_queue() {
    let now = at("2025-03-10T09:30:00Z");
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            ..new("nightly", "yb-1", "0 10 * * *")
        },
        now,
    )
    .unwrap();
    let err = book
        .add(new("nightly", "yb-2", "0 4 * * *"), now)
        .unwrap_err();
    assert!(matches!(&err, Error::Duplicate { name } if name == "nightly"));
    assert!(err
        .to_string()
        .starts_with("a schedule named \"nightly\" already exists"));
    assert_eq!(book.schedules["nightly"].cluster, "yb-1");

    assert_eq!(
        error_text(book.remove("nope")),
        "no schedule named \"nope\" (waymark schedule ls lists them)"
    );
    assert!(matches!(
        book.set_paused("nope", true, now),
        Err(Error::UnknownSchedule { .. })
    ));

    book.tick(at("2025-03-10T10:00:01Z"), &busy(&["yb-1"]));
    assert_eq!(book.queued.len(), 1);
    let removed = book.remove("nightly").unwrap();
    assert_eq!(removed.name, "nightly");
    assert!(book.schedules.is_empty());
    assert!(book.queued.is_empty());
    assert_eq!(book.tick(at("2025-03-10T10:10:00Z"), &idle()), vec![]);
}

#[test]
fn save_and_load_keep_last_considered_and_the_queue() {
    let dir = temp_dir();
    let path = dir.path().join("schedules.json");
    assert_eq!(ScheduleBook::load(&path).unwrap(), ScheduleBook::default());

    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            overlap: Overlap::Queue,
            catch_up: CatchUp::Latest,
            window: Some(Duration::from_secs(45 * 60)),
            ..new("nightly", "yb-1", "0 10 * * 1-5")
        },
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    book.add(new("hourly", "yb-2", "@hourly"), at("2025-03-10T09:00:00Z"))
        .unwrap();
    book.set_paused("hourly", true, at("2025-03-10T09:01:00Z"))
        .unwrap();
    let decisions = book.tick(at("2025-03-10T10:00:02Z"), &busy(&["yb-1"]));
    assert_eq!(decisions.len(), 2);
    book.save(&path).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(text.contains("\"window\": \"45m\""), "{text}");
    assert!(text.contains("\"cron\": \"0 10 * * 1-5\""), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("schedules.json")]);

    let mut loaded = ScheduleBook::load(&path).unwrap();
    assert_eq!(loaded, book);
    assert_eq!(
        loaded.schedules["nightly"].last_considered,
        Some(at("2025-03-10T10:00:00Z"))
    );
    assert!(loaded.schedules["hourly"].paused);
    assert_eq!(loaded.queued.len(), 1);

    // A restarted daemon does not fire the handled fire time again, and serves the queue.
    assert_eq!(
        loaded.tick(at("2025-03-10T10:05:00Z"), &idle()),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );
    // Saving again replaces the file.
    loaded.save(&path).unwrap();
    assert!(ScheduleBook::load(&path).unwrap().queued.is_empty());
}

#[test]
fn load_refuses_a_damaged_schedule_file() {
    let dir = temp_dir();
    let path = dir.path().join("schedules.json");
    let mut book = ScheduleBook::default();
    book.add(
        new("nightly", "yb-1", "0 3 * * *"),
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    book.save(&path).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    let cases = [
        ("{not json".to_owned(), "key must be a string"),
        (
            good.replace("\"version\": 1", "\"version\": 3"),
            "format version 3 (this waymark reads versions 1 and 2)",
        ),
        (
            good.replace("0 3 * * *", "0 3 * * 8"),
            "invalid cron expression \"0 3 * * 8\": day-of-week field \"8\": 8 is out of range 0-7",
        ),
        (
            good.replace("\"name\": \"nightly\"", "\"name\": \"other\""),
            "stored under the name \"nightly\"",
        ),
        (
            good.replace(
                "\"queued\": []",
                "\"queued\": [{\"schedule\": \"gone\", \"fire_time\": \"2025-03-10T03:00:00Z\"}]",
            ),
            "belongs to no schedule \"gone\"",
        ),
    ];
    for (text, problem) in cases {
        std::fs::write(&path, &text).unwrap();
        let message = error_text(ScheduleBook::load(&path));
        assert!(
            message.starts_with(&format!("schedule file {} is not valid: ", path.display())),
            "{message}"
        );
        assert!(message.contains(problem), "{message} should say {problem}");
    }
}

/// A (schedule, fire time).
type Key = (String, DateTime<Utc>);

/// The simulated daemon: its runs, and what it saw happen to each fire time.
#[derive(Default)]
struct SimulatedDaemon {
    /// Cluster -> when its run ends.
    running: BTreeMap<String, DateTime<Utc>>,
    rng: u64,
    handled: BTreeMap<Key, &'static str>,
    /// Queued and not yet started or skipped.
    pending: BTreeSet<Key>,
    seen: BTreeMap<&'static str, usize>,
}

impl SimulatedDaemon {
    fn busy_clusters(&mut self, now: DateTime<Utc>) -> BTreeSet<String> {
        self.running.retain(|_, ends| *ends > now);
        self.running.keys().cloned().collect()
    }

    /// A run of 2 to 40 minutes.
    fn run_length(&mut self) -> TimeDelta {
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        minutes(i64::try_from((self.rng >> 33) % 39).unwrap() + 2)
    }

    fn resolve(&mut self, key: Key, how: &'static str, now: DateTime<Utc>) {
        let described = format!("{key:?}");
        assert!(key.1 <= now, "{described} handled before its time at {now}");
        self.pending.remove(&key);
        let previous = self.handled.insert(key, how);
        assert_eq!(previous, None, "{described} handled twice ({how}) at {now}");
    }

    /// Carries out one tick's decisions, checking them against the clusters busy before it.
    fn apply(
        &mut self,
        book: &ScheduleBook,
        decisions: Vec<Decision>,
        now: DateTime<Utc>,
        busy_before: &BTreeSet<String>,
    ) {
        let mut started_clusters = BTreeSet::new();
        for decision in decisions {
            let kind = match &decision {
                Decision::Start { .. } => "start",
                Decision::Queued { .. } => "queued",
                Decision::Dropped { .. } => "dropped",
                Decision::Skipped { reason, .. } => match reason {
                    Reason::Paused => "skipped: paused",
                    Reason::ClusterBusy { .. } => "skipped: busy",
                    Reason::WindowClosed { .. } => "skipped: window closed",
                    other => panic!("unexpected reason {other:?} at {now}"),
                },
            };
            *self.seen.entry(kind).or_default() += 1;
            match decision {
                Decision::Start {
                    schedule,
                    fire_time,
                } => {
                    let s = &book.schedules[&schedule];
                    assert!(!s.paused, "{schedule} started while paused at {now}");
                    assert!(
                        !busy_before.contains(&s.cluster),
                        "{schedule} started on busy {} at {now}",
                        s.cluster
                    );
                    assert!(
                        started_clusters.insert(s.cluster.clone()),
                        "two starts on {} at {now}",
                        s.cluster
                    );
                    assert!(
                        now < s.window_closes_at(fire_time),
                        "{schedule} {fire_time} started late at {now}"
                    );
                    let ends = now + self.run_length();
                    self.running.insert(s.cluster.clone(), ends);
                    self.resolve((schedule, fire_time), kind, now);
                }
                Decision::Skipped {
                    schedule,
                    fire_time,
                    ..
                } => self.resolve((schedule, fire_time), kind, now),
                Decision::Queued {
                    schedule,
                    fire_time,
                    ..
                } => {
                    let key = (schedule, fire_time);
                    let described = format!("{key:?}");
                    assert!(
                        !self.handled.contains_key(&key),
                        "{described} queued after being handled"
                    );
                    assert!(self.pending.insert(key), "{described} queued twice");
                }
                Decision::Dropped {
                    schedule,
                    fire_times,
                    reason,
                } => {
                    assert!(matches!(
                        reason,
                        Reason::MissedWhileDown | Reason::OlderThanLatest
                    ));
                    for fire_time in fire_times {
                        self.resolve((schedule.clone(), fire_time), kind, now);
                    }
                }
            }
        }
    }

    /// Every fire time from `t0` to each schedule's `last_considered` (but those `bypassed`) was
    /// handled exactly once or is still queued; every kind of decision happened.
    fn check_accounts(&self, book: &ScheduleBook, t0: DateTime<Utc>, bypassed: &[Key]) {
        let still_queued: BTreeSet<Key> = book
            .queued
            .iter()
            .map(|q| (q.schedule.clone(), q.fire_time))
            .collect();
        assert_eq!(still_queued, self.pending);
        for (name, schedule) in &book.schedules {
            let expected: BTreeSet<Key> = schedule
                .cron
                .fire_times(t0, schedule.last_considered.unwrap())
                .into_iter()
                .map(|f| (name.clone(), f))
                .filter(|key| !bypassed.contains(key))
                .collect();
            let accounted: BTreeSet<Key> = self
                .handled
                .keys()
                .chain(&self.pending)
                .filter(|(s, _)| s == name)
                .cloned()
                .collect();
            assert_eq!(accounted, expected, "schedule {name}");
        }
        for kind in [
            "start",
            "queued",
            "dropped",
            "skipped: paused",
            "skipped: busy",
            "skipped: window closed",
        ] {
            assert!(
                self.seen.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} in {:?}",
                self.seen
            );
        }
    }
}

/// A day of schedules on two clusters, ticked every 40 seconds by a simulated daemon whose runs
/// take 2 to 40 minutes, with a three-hour outage, a stall and a pause. Checks, at every tick, that
/// no cluster ever gets a second run and that starts stay in their windows, and at the end that
/// every fire time was handled exactly once.
#[test]
fn a_simulated_day_never_overlaps_and_handles_every_fire_time_once() {
    let t0 = at("2025-03-10T00:00:00Z");
    let mut book = ScheduleBook::default();
    let specs = [
        ("a", "c1", "*/10 * * * *", 15, Overlap::Queue, CatchUp::None),
        (
            "b",
            "c1",
            "*/15 * * * *",
            30,
            Overlap::Skip,
            CatchUp::Latest,
        ),
        ("c", "c1", "0 * * * *", 60, Overlap::Queue, CatchUp::Latest),
        ("d", "c2", "*/5 * * * *", 10, Overlap::Queue, CatchUp::None),
        (
            "e",
            "c2",
            "7 */2 * * *",
            120,
            Overlap::Skip,
            CatchUp::Latest,
        ),
    ];
    for (name, cluster, cron, window_minutes, overlap, catch_up) in specs {
        book.add(
            NewSchedule {
                window: Some(Duration::from_secs(window_minutes * 60)),
                overlap,
                catch_up,
                ..new(name, cluster, cron)
            },
            t0,
        )
        .unwrap();
    }

    let outage = (at("2025-03-10T06:03:00Z"), at("2025-03-10T09:17:00Z"));
    let stall = (at("2025-03-10T14:00:00Z"), at("2025-03-10T14:08:00Z"));
    let (pause_at, unpause_at) = (at("2025-03-10T12:00:00Z"), at("2025-03-10T16:30:00Z"));
    let mut paused = false;
    // Fire times of e passed over by unpausing between two ticks: (last considered, unpause].
    let mut bypassed: Vec<Key> = Vec::new();
    let mut daemon = SimulatedDaemon {
        rng: 0x5eed,
        ..SimulatedDaemon::default()
    };

    let mut now = t0;
    while now < at("2025-03-11T00:00:00Z") {
        now += TimeDelta::seconds(40);
        if (now > outage.0 && now < outage.1) || (now > stall.0 && now < stall.1) {
            continue;
        }
        if !paused && now >= pause_at && now < unpause_at {
            book.set_paused("e", true, now).unwrap();
            paused = true;
        }
        if paused && now >= unpause_at {
            let e = &book.schedules["e"];
            let passed_over = e.cron.fire_times(e.last_considered.unwrap(), now);
            bypassed.extend(passed_over.into_iter().map(|f| ("e".to_owned(), f)));
            book.set_paused("e", false, now).unwrap();
            paused = false;
        }
        let busy_before = daemon.busy_clusters(now);
        let decisions = book.tick(now, &busy_before);
        if now < outage.1 {
            assert!(
                !decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Dropped { .. })),
                "dropped before any outage, at {now}"
            );
        }
        daemon.apply(&book, decisions, now, &busy_before);
    }
    daemon.check_accounts(&book, t0, &bypassed);
}

/// Issue 8, item 7: a `Start` whose run could not start is not lost. It is recorded on the
/// schedule (for `schedule ls`), kept queued and started again by a later tick within its
/// window; a cluster taken meanwhile under `overlap = skip` is skipped as a busy cluster is.
#[test]
fn a_start_that_failed_is_kept_until_it_starts_or_its_window_closes() {
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            window: Some(Duration::from_secs(3600)),
            ..new("nightly", "yb-1", "0 10 * * *")
        },
        at("2025-03-10T09:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        book.tick(at("2025-03-10T10:00:05Z"), &idle()),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );
    let kept = book.start_failed(
        "nightly",
        at("2025-03-10T10:00:00Z"),
        at("2025-03-10T10:00:06Z"),
        "inventory /etc/waymark/yb-1.toml: cannot read it",
        false,
    );
    assert_eq!(
        kept,
        Decision::Queued {
            schedule: "nightly".into(),
            fire_time: at("2025-03-10T10:00:00Z"),
            cluster: "yb-1".into(),
        }
    );
    let failure = book.schedules["nightly"].last_failure.clone().unwrap();
    assert_eq!(failure.at, at("2025-03-10T10:00:06Z"));
    assert!(failure.message.contains("cannot read it"));
    // Saved and loaded, the failure and the queued fire time are still there.
    let dir = temp_dir();
    let path = dir.path().join("schedules.json");
    book.save(&path).unwrap();
    let mut book = ScheduleBook::load(&path).unwrap();
    assert_eq!(book.schedules["nightly"].last_failure, Some(failure));
    // The next tick tries again.
    assert_eq!(
        book.tick(at("2025-03-10T10:00:10Z"), &idle()),
        vec![start("nightly", "2025-03-10T10:00:00Z")]
    );
    // Failing until the window closes: then it is skipped with the reason.
    book.start_failed(
        "nightly",
        at("2025-03-10T10:00:00Z"),
        at("2025-03-10T10:00:11Z"),
        "still unreadable",
        false,
    );
    assert_eq!(
        book.tick(at("2025-03-10T11:00:00Z"), &idle()),
        vec![skipped(
            "nightly",
            "2025-03-10T10:00:00Z",
            Reason::WindowClosed {
                closed_at: at("2025-03-10T11:00:00Z")
            }
        )]
    );
    // A cluster taken between the tick and the start, with overlap = skip: skipped.
    assert_eq!(
        book.tick(at("2025-03-11T10:00:01Z"), &idle()),
        vec![start("nightly", "2025-03-11T10:00:00Z")]
    );
    assert_eq!(
        book.start_failed(
            "nightly",
            at("2025-03-11T10:00:00Z"),
            at("2025-03-11T10:00:02Z"),
            "cluster yb-1 already has run R",
            true,
        ),
        skipped("nightly", "2025-03-11T10:00:00Z", cluster_busy("yb-1"))
    );
    assert!(book.queued.is_empty());
}

// ---- Local time (issue 14): schedules read in an IANA zone, DST rules ----

fn in_zone(name: &str, cluster: &str, cron: &str, zone: &str) -> NewSchedule {
    NewSchedule {
        timezone: Some(waymark_cli::schedule::parse_timezone(zone).unwrap()),
        ..new(name, cluster, cron)
    }
}

/// Ticks the book every minute from `from` to `to` (a daemon that never missed a tick) and
/// returns the fire times started.
fn minute_ticks(book: &mut ScheduleBook, from: &str, to: &str) -> Vec<DateTime<Utc>> {
    let mut now = at(from);
    let mut started = Vec::new();
    while now <= at(to) {
        started.extend(starts(&book.tick(now, &idle())).into_iter().map(|(_, f)| f));
        now += minutes(1);
    }
    started
}

#[test]
fn a_local_schedule_fires_at_its_wall_clock_time_in_winter_and_in_summer() {
    let mut book = ScheduleBook::default();
    // Tuesdays 03:00 Pacific: 11:00 UTC in PST (UTC-8), 10:00 UTC in PDT (UTC-7).
    let s = book
        .add(
            in_zone("tue", "yb-1", "0 3 * * 2", "America/Los_Angeles"),
            at("2025-01-01T00:00:00Z"),
        )
        .unwrap()
        .clone();
    assert_eq!(
        s.next_fire_time(at("2025-01-01T00:00:00Z")),
        Some(at("2025-01-07T11:00:00Z"))
    );
    assert_eq!(
        s.next_fire_time(at("2025-07-01T00:00:00Z")),
        Some(at("2025-07-01T10:00:00Z"))
    );
    // The same expression without a zone is UTC, as before.
    let utc = CronExpr::parse("0 3 * * 2").unwrap();
    assert_eq!(
        utc.next_after(at("2025-07-01T00:00:00Z")),
        Some(at("2025-07-01T03:00:00Z"))
    );
}

/// Spring forward: on 2025-03-09 `America/Los_Angeles` goes from 01:59:59 PST to 03:00 PDT, so
/// 02:30 does not happen that day. It fires once, at 03:00 PDT (10:00 UTC), and the day before
/// and after at 02:30 as usual.
#[test]
fn spring_forward_a_0230_fire_time_fires_once_at_0300() {
    let mut book = ScheduleBook::default();
    book.add(
        in_zone("nightly", "yb-1", "30 2 * * *", "America/Los_Angeles"),
        at("2025-03-08T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        minute_ticks(&mut book, "2025-03-08T00:00:00Z", "2025-03-11T00:00:00Z"),
        vec![
            at("2025-03-08T10:30:00Z"), // 02:30 PST
            at("2025-03-09T10:00:00Z"), // 03:00 PDT: the end of the skipped hour
            at("2025-03-10T09:30:00Z"), // 02:30 PDT
        ]
    );
    // Europe/Berlin, 2025-03-30: 02:00 CET -> 03:00 CEST; 02:30 fires at 03:00 CEST.
    let cron = CronExpr::parse("30 2 * * *").unwrap();
    let berlin = waymark_cli::schedule::parse_timezone("Europe/Berlin").unwrap();
    assert_eq!(
        cron.fire_times_in(
            berlin,
            at("2025-03-29T12:00:00Z"),
            at("2025-03-31T12:00:00Z")
        ),
        vec![at("2025-03-30T01:00:00Z"), at("2025-03-31T00:30:00Z")]
    );
    // Two local times that become one instant fire once: 02:30 and 03:00 on that day.
    let two = CronExpr::parse("30 2,3 * * *").unwrap();
    let la = waymark_cli::schedule::parse_timezone("America/Los_Angeles").unwrap();
    assert_eq!(
        two.fire_times_in(la, at("2025-03-09T08:00:00Z"), at("2025-03-09T12:00:00Z")),
        vec![at("2025-03-09T10:00:00Z"), at("2025-03-09T10:30:00Z")]
    );
}

/// Fall back: on 2025-10-26 `Europe/Berlin` goes from 02:59:59 CEST back to 02:00 CET, so 02:30
/// happens twice. It fires once, at the first 02:30 (CEST, 00:30 UTC), never at 02:30 CET.
#[test]
fn fall_back_a_0230_fire_time_fires_once_at_the_first_0230() {
    let mut book = ScheduleBook::default();
    book.add(
        in_zone("nightly", "yb-1", "30 2 * * *", "Europe/Berlin"),
        at("2025-10-25T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        minute_ticks(&mut book, "2025-10-25T00:00:00Z", "2025-10-27T12:00:00Z"),
        vec![
            at("2025-10-25T00:30:00Z"), // 02:30 CEST
            at("2025-10-26T00:30:00Z"), // the first 02:30 (CEST); not 01:30 UTC (CET)
            at("2025-10-27T01:30:00Z"), // 02:30 CET
        ]
    );
    // America/Los_Angeles repeats 01:00-01:59 on 2025-11-02: 01:30 fires at 01:30 PDT only.
    let mut book = ScheduleBook::default();
    book.add(
        in_zone("la", "yb-1", "30 1 * * *", "America/Los_Angeles"),
        at("2025-11-02T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        minute_ticks(&mut book, "2025-11-02T00:00:00Z", "2025-11-02T23:00:00Z"),
        vec![at("2025-11-02T08:30:00Z")]
    );
}

#[test]
fn an_unknown_time_zone_is_refused_naming_it() {
    let e = waymark_cli::schedule::parse_timezone("Pacific/Nowhere").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("Pacific/Nowhere"), "{text}");
    assert!(text.contains("America/Los_Angeles"), "{text}");
}

/// Books written before zones existed (version 1, no `timezone`) read as UTC; a book with a
/// zone is written as version 2 (an older waymark refuses it rather than firing in UTC) and
/// keeps the zone.
#[test]
fn old_books_read_as_utc_and_zones_are_saved() {
    let dir = temp_dir();
    let path = dir.path().join("schedules.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "schedules": {"nightly": {"name": "nightly", "workflow": "yb-maintenance",
            "inventory": "/etc/waymark/yb-1.toml", "cluster": "yb-1", "cron": "0 3 * * *",
            "window": "1h", "overlap": "skip", "catch_up": "none", "paused": false,
            "last_considered": "2025-07-01T00:00:00Z"}}, "queued": []}"#,
    )
    .unwrap();
    let mut book = ScheduleBook::load(&path).unwrap();
    assert_eq!(book.schedules["nightly"].timezone, None);
    assert_eq!(
        book.schedules["nightly"].next_fire_time(at("2025-07-01T00:00:00Z")),
        Some(at("2025-07-01T03:00:00Z"))
    );
    book.add(
        in_zone("pacific", "yb-2", "0 3 * * 2", "America/Los_Angeles"),
        at("2025-07-01T00:00:00Z"),
    )
    .unwrap();
    book.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 2"), "{text}");
    assert!(
        text.contains("\"timezone\": \"America/Los_Angeles\""),
        "{text}"
    );
    assert_eq!(ScheduleBook::load(&path).unwrap(), book);
}

/// `schedule ls` shows the zone and the next fire time in it and in UTC (text and JSON).
#[test]
fn schedule_ls_shows_next_fire_times_in_the_zone_and_in_utc() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut book = ScheduleBook::default();
    book.add(
        in_zone("pacific", "yb-1", "0 3 * * 2", "America/Los_Angeles"),
        Utc::now(),
    )
    .unwrap();
    book.save(&waymark_cli::paths::schedules_path(&data))
        .unwrap();
    let rows = waymark_cli::api::schedule_rows(&book);
    let next_utc: DateTime<Utc> = rows[0]["next"].as_str().unwrap().parse().unwrap();
    let next_local =
        chrono::DateTime::parse_from_rfc3339(rows[0]["next_local"].as_str().unwrap()).unwrap();
    assert_eq!(next_local.with_timezone(&Utc), next_utc, "{rows:?}");
    assert!(
        [-7 * 3600, -8 * 3600].contains(&next_local.offset().local_minus_utc()),
        "{rows:?}"
    );
    assert_eq!(next_local.format("%H:%M %a").to_string(), "03:00 Tue");
    assert_eq!(rows[0]["timezone"], "America/Los_Angeles");

    let out = crate::util::waymark(&data)
        .args(["schedule", "ls"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("America/Los_Angeles"), "{text}");
    assert!(
        text.contains(&next_local.format("%Y-%m-%d %H:%M %:z").to_string()),
        "{text}"
    );
    assert!(
        text.contains(&next_utc.format("%Y-%m-%d %H:%M +00:00").to_string()),
        "{text}"
    );
}
