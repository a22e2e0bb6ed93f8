//! Schedules of `waymark daemon`: when a workflow starts on its own, decided by a pure function.
//!
//! A [`Schedule`] runs one workflow on one inventory at the fire times of a 5-field cron
//! expression (UTC). [`ScheduleBook::tick`] is the whole decision: given `now` and the clusters
//! that have a run going, it says which fire times start, which are queued, skipped or dropped,
//! and why. It reads no clock, does no IO and draws no random number; the daemon owns the clock,
//! the cluster locks and the journal, and calls it periodically. Only [`ScheduleBook::load`] and
//! [`ScheduleBook::save`] touch the disk.
//!
//! The rules `tick` applies, for each schedule, to the fire times in `(last_considered, now]`:
//!
//! 1. **Window.** A fire time `f` may only start in `[f, f + window)` (default: one hour).
//! 2. **Pause.** A paused schedule's fire times are skipped. Unpausing does not make them up:
//!    [`ScheduleBook::set_paused`] moves `last_considered` to the time of unpausing.
//! 3. **Catch-up.** A fire time whose window has already closed when `tick` first sees it could
//!    not have been handled on time: the daemon was not running (or not ticking). Then every
//!    fire time of that schedule seen in this tick counts as missed while down.
//!    [`CatchUp::None`] drops them all; [`CatchUp::Latest`] drops all but the newest and starts
//!    that one if its window is still open. An outage shorter than the window is not noticed:
//!    those fire times are handled as if on time.
//! 4. **Overlap.** One cluster never has two runs: no `Start` for a cluster in `busy_clusters`,
//!    and at most one `Start` per cluster in one tick. A fire time whose cluster is busy is
//!    skipped ([`Overlap::Skip`]) or queued ([`Overlap::Queue`]). Queued fire times are served
//!    first on every tick, oldest first, and only while their window is open.
//!
//! The daemon must pass in `busy_clusters` every cluster with a run going, including the runs it
//! started for earlier `Start` decisions, and persist the book (`save`) after each tick that
//! returned decisions, so that a restarted daemon knows what it already handled.
//!
//! Cron expressions follow standard (Vixie) cron, not the `cron` crate's Quartz-like dialect:
//! day of week 0-7 with 0 and 7 for Sunday (names `sun`-`sat`), and when both day of month and
//! day of week are restricted (neither starts with `*`), a day matches if *either* matches.
//! The macros `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly` and
//! `@annually` are accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The start window of a schedule created without `--window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The shortest window accepted: cron fires at most once a minute.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
/// The longest window accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// The version of the schedule file format written by [`ScheduleBook::save`].
const FORMAT_VERSION: u32 = 1;

/// What can go wrong with schedules: bad input to `add` and friends, or the schedule file.
#[derive(Debug)]
pub enum Error {
    /// A cron expression that does not parse, or that never fires.
    InvalidCron {
        /// The expression as given.
        expression: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A duration that does not parse.
    InvalidDuration {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A start window that parses but cannot be used.
    InvalidWindow {
        /// The window, formatted.
        window: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A schedule name that cannot be used.
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Another field of a schedule (workflow, cluster, overlap, catch-up) that cannot be used.
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// The value as given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `add` with the name of an existing schedule.
    Duplicate {
        /// The name.
        name: String,
    },
    /// No schedule has this name.
    UnknownSchedule {
        /// The name.
        name: String,
    },
    /// Reading or writing the schedule file failed.
    Io {
        /// The file (or its temporary sibling, or its folder).
        path: PathBuf,
        /// What was being done: read, write, rename, ...
        action: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The schedule file does not hold a valid schedule book.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidCron {
                expression,
                problem,
            } => {
                write!(f, "invalid cron expression \"{expression}\": {problem}")
            }
            Error::InvalidDuration { text, problem } => {
                write!(f, "invalid duration \"{text}\": {problem}")
            }
            Error::InvalidWindow { window, problem } => {
                write!(f, "invalid window {window}: {problem}")
            }
            Error::InvalidName { name, problem } => {
                write!(f, "invalid schedule name \"{name}\": {problem}")
            }
            Error::InvalidValue {
                what,
                text,
                problem,
            } => {
                write!(f, "invalid {what} \"{text}\": {problem}")
            }
            Error::Duplicate { name } => write!(
                f,
                "a schedule named \"{name}\" already exists; remove it first \
                 (waymark schedule rm {name}) or choose another name"
            ),
            Error::UnknownSchedule { name } => write!(
                f,
                "no schedule named \"{name}\" (waymark schedule ls lists them)"
            ),
            Error::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Error::Corrupt { path, problem } => write!(
                f,
                "schedule file {} is not valid: {problem}; fix or remove the file",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// The units of [`parse_duration`], largest first.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration such as `30m`, `2h`, `1h30m`, `1d` or `90s`: numbers each followed by a unit
/// (`d`, `h`, `m`, `s`), units from largest to smallest, each at most once.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let fail = |problem: String| Error::InvalidDuration {
        text: text.to_owned(),
        problem,
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(fail(
            "it is empty; write for example 30m, 2h or 1h30m".to_owned(),
        ));
    }
    let mut total: u64 = 0;
    let mut previous_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(fail(format!("expected a number at \"{after}\"")));
        }
        let Some(unit) = after.chars().next() else {
            return Err(fail(format!(
                "{digits} has no unit; add d, h, m or s (for example {digits}m)"
            )));
        };
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(fail(format!("unknown unit \"{unit}\"; use d, h, m or s")));
        };
        if previous_unit.is_some_and(|previous| rank <= previous) {
            return Err(fail(
                "units must go from largest to smallest, each once (for example 1h30m)".to_owned(),
            ));
        }
        previous_unit = Some(rank);
        total = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(UNITS[rank].1))
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| fail("it is too large".to_owned()))?;
        rest = &after[unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (whole seconds): `1h30m`, `2d`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let n = seconds / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
            seconds -= n * size;
        }
    }
    out
}

/// Checks a start window: at least [`MIN_WINDOW`], at most [`MAX_WINDOW`].
pub fn validate_window(window: Duration) -> Result<(), Error> {
    let fail = |problem: String| Error::InvalidWindow {
        window: format_duration(window),
        problem,
    };
    if window < MIN_WINDOW {
        return Err(fail(format!(
            "a start window must be at least {} (cron fires at most once a minute)",
            format_duration(MIN_WINDOW)
        )));
    }
    if window > MAX_WINDOW {
        return Err(fail(format!(
            "a start window may be at most {}",
            format_duration(MAX_WINDOW)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cron expressions
// ---------------------------------------------------------------------------------------------

/// One field of a 5-field cron expression.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names, the first standing for `first_named`.
    names: &'static [&'static str],
    first_named: u32,
    /// The largest distinct value (day of week: 6, as 7 is Sunday again).
    last_distinct: u32,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    first_named: 0,
    last_distinct: 59,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    first_named: 0,
    last_distinct: 23,
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    first_named: 0,
    last_distinct: 31,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    first_named: 1,
    last_distinct: 12,
};
/// 0-7, both 0 and 7 are Sunday.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    first_named: 0,
    last_distinct: 6,
};

impl Field {
    /// Parses the field into a bit set of the values it matches.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut set = 0u64;
        for item in text.split(',') {
            set |= self
                .parse_item(item)
                .map_err(|problem| format!("{} field \"{text}\": {problem}", self.name))?;
        }
        Ok(set)
    }

    /// One list item: `*`, `N`, `N-M`, each optionally followed by `/STEP`.
    fn parse_item(&self, item: &str) -> Result<u64, String> {
        if item.is_empty() {
            return Err("empty list item".to_owned());
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step = step
                    .parse::<u32>()
                    .map_err(|_| format!("step \"{step}\" is not a number"))?;
                if step == 0 {
                    return Err("a step must be at least 1".to_owned());
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (self.min, self.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (self.value(low)?, self.value(high)?)
        } else {
            let value = self.value(range)?;
            // `N/STEP` means from N to the end of the range.
            (value, if step.is_some() { self.max } else { value })
        };
        if low > high {
            return Err(format!("range \"{range}\" goes backwards"));
        }
        let mut set = 0u64;
        for value in (low..=high).step_by(step.unwrap_or(1) as usize) {
            set |= 1 << value;
        }
        Ok(set)
    }

    fn value(&self, text: &str) -> Result<u32, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(value) if (self.min..=self.max).contains(&value) => Ok(value),
                _ => Err(format!("{text} is out of range {}-{}", self.min, self.max)),
            };
        }
        let lower = text.to_ascii_lowercase();
        if let Some(index) = self.names.iter().position(|name| *name == lower) {
            return Ok(self.first_named + index as u32);
        }
        let expected = match self.names.first().zip(self.names.last()) {
            Some((first, last)) => format!("a number {}-{} or {first}-{last}", self.min, self.max),
            None => format!("a number {}-{}", self.min, self.max),
        };
        Err(format!("\"{text}\" is not {expected}"))
    }

    /// The bit set of every distinct value of the field.
    fn all(&self) -> u64 {
        (self.min..=self.last_distinct).fold(0, |set, value| set | (1 << value))
    }

    /// The field for the `cron` crate: `*`, or the values as a list (`offset` added to each).
    fn crate_text(&self, set: u64, offset: u32) -> String {
        if set == self.all() {
            return "*".to_owned();
        }
        (self.min..=self.max)
            .filter(|value| set & (1 << value) != 0)
            .map(|value| (value + offset).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A validated 5-field cron expression (UTC), in standard cron semantics.
///
/// Serialised as its text; deserialising validates it again.
#[derive(Clone, Debug)]
pub struct CronExpr {
    /// The expression, whitespace normalised.
    text: String,
    /// One `cron` crate schedule, or two whose fire times are merged (day of month *or* day of
    /// week, when both are restricted).
    schedules: Vec<cron::Schedule>,
}

impl CronExpr {
    /// Parses and validates a 5-field cron expression ("min hour dom month dow") or a macro such
    /// as `@daily`. Rejects expressions that never fire (such as the 30th of February).
    pub fn parse(text: &str) -> Result<CronExpr, Error> {
        let fail = |problem: String| Error::InvalidCron {
            expression: text.trim().to_owned(),
            problem,
        };
        let normalised = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let expanded = match normalised.as_str() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@reboot" => {
                return Err(fail(
                    "@reboot is not supported: a schedule fires at times of day".to_owned(),
                ))
            }
            other if other.starts_with('@') => {
                return Err(fail(
                    "unknown macro; use @hourly, @daily, @weekly, @monthly or @yearly".to_owned(),
                ))
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split(' ').filter(|f| !f.is_empty()).collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            let seconds_hint = if fields.len() == 6 || fields.len() == 7 {
                "; seconds and years are not supported"
            } else {
                ""
            };
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}{seconds_hint}",
                fields.len()
            )));
        };
        let minute_set = MINUTE.parse(minute).map_err(&fail)?;
        let hour_set = HOUR.parse(hour).map_err(&fail)?;
        let dom_set = DAY_OF_MONTH.parse(dom).map_err(&fail)?;
        let month_set = MONTH.parse(month).map_err(&fail)?;
        let mut dow_set = DAY_OF_WEEK.parse(dow).map_err(&fail)?;
        if dow_set & (1 << 7) != 0 {
            // 7 is Sunday, like 0.
            dow_set = (dow_set & !(1 << 7)) | 1;
        }

        // For the `cron` crate: seconds first, days of week 1-7 from Sunday, and the two day
        // fields always ANDed.
        let crate_minute = MINUTE.crate_text(minute_set, 0);
        let crate_hour = HOUR.crate_text(hour_set, 0);
        let crate_day_of_month = DAY_OF_MONTH.crate_text(dom_set, 0);
        let crate_month = MONTH.crate_text(month_set, 0);
        let crate_day_of_week = DAY_OF_WEEK.crate_text(dow_set, 1);
        let time = format!("0 {crate_minute} {crate_hour}");
        // Vixie cron: a day field starting with `*` does not restrict; if neither does, either
        // one matching is enough.
        let crate_texts = if !dom.starts_with('*') && !dow.starts_with('*') {
            vec![
                format!("{time} {crate_day_of_month} {crate_month} *"),
                format!("{time} * {crate_month} {crate_day_of_week}"),
            ]
        } else {
            vec![format!(
                "{time} {crate_day_of_month} {crate_month} {crate_day_of_week}"
            )]
        };
        let schedules = crate_texts
            .iter()
            .map(|t| cron::Schedule::from_str(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let expr = CronExpr {
            text: normalised,
            schedules,
        };
        let reference = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if reference.and_then(|r| expr.next_after(r)).is_none() {
            return Err(fail("it never fires (no such date)".to_owned()));
        }
        Ok(expr)
    }

    /// The expression as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .iter()
            .filter_map(|s| s.after(&after).next())
            .min()
    }

    /// Every fire time in `(after, until]`, oldest first.
    pub fn fire_times(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut times: Vec<DateTime<Utc>> = self
            .schedules
            .iter()
            .flat_map(|s| s.after(&after).take_while(|t| *t <= until))
            .collect();
        times.sort_unstable();
        times.dedup();
        times
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronExpr {}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for CronExpr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        CronExpr::parse(text)
    }
}

impl Serialize for CronExpr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CronExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------------------

/// What to do when a fire time comes while its cluster has a run going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip that fire time.
    #[default]
    Skip,
    /// Start it when the cluster frees up, if its window is still open then.
    Queue,
}

/// What to do with fire times missed while the daemon was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Drop them all.
    #[default]
    None,
    /// Start only the newest, if its window is still open.
    Latest,
}

impl Overlap {
    /// `skip` or `queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

impl CatchUp {
    /// `none` or `latest`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
        }
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Overlap {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            _ => Err(Error::InvalidValue {
                what: "overlap",
                text: text.to_owned(),
                problem: "expected skip or queue".to_owned(),
            }),
        }
    }
}

impl FromStr for CatchUp {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "none" => Ok(CatchUp::None),
            "latest" => Ok(CatchUp::Latest),
            _ => Err(Error::InvalidValue {
                what: "catch-up",
                text: text.to_owned(),
                problem: "expected none or latest".to_owned(),
            }),
        }
    }
}

/// A workflow started on an inventory at the fire times of a cron expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// The workflow to start.
    pub workflow: String,
    /// Its inventory file.
    pub inventory: PathBuf,
    /// The lock key: the inventory's cluster. Two runs on one cluster never overlap.
    pub cluster: String,
    /// When it fires (UTC).
    pub cron: CronExpr,
    /// How long after a fire time its run may still start; `None` is [`DEFAULT_WINDOW`].
    #[serde(default, with = "optional_duration")]
    pub window: Option<Duration>,
    /// What to do when its cluster is busy at a fire time.
    pub overlap: Overlap,
    /// What to do with fire times missed while the daemon was down.
    pub catch_up: CatchUp,
    /// A paused schedule starts nothing.
    pub paused: bool,
    /// Every fire time at or before this instant has been handled (started, queued, skipped or
    /// dropped). Set to the time of adding and of unpausing; then to the newest fire time handled.
    /// `None` is treated as "now" by the next tick. A fire time whose start failed is handled
    /// only once [`ScheduleBook::start_failed`] has queued or skipped it.
    pub last_considered: Option<DateTime<Utc>>,
    /// The last time one of its fire times could not start, and why (for `schedule ls`).
    #[serde(default)]
    pub last_failure: Option<StartFailure>,
}

/// A fire time whose run could not start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartFailure {
    /// When the start was tried.
    pub at: DateTime<Utc>,
    /// The fire time it was for.
    pub fire_time: DateTime<Utc>,
    /// Why it failed.
    pub message: String,
}

impl Schedule {
    /// The start window in force: [`Schedule::window`] or [`DEFAULT_WINDOW`].
    pub fn effective_window(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_WINDOW)
    }

    /// The instant the window of `fire_time` closes: a run may start at `fire_time` or later,
    /// strictly before this.
    pub fn window_closes_at(&self, fire_time: DateTime<Utc>) -> DateTime<Utc> {
        let window = TimeDelta::from_std(self.effective_window()).unwrap_or(TimeDelta::MAX);
        fire_time
            .checked_add_signed(window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The next fire time strictly after `after` (for listings; pausing is not considered).
    pub fn next_fire_time(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.next_after(after)
    }
}

/// What `waymark schedule add` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSchedule {
    /// Unique name: letters, digits, `-`, `_`, `.`; at most 64 characters.
    pub name: String,
    /// The workflow to start.
    pub workflow: String,
    /// Its inventory file (the caller should make it absolute: the daemon's working folder may
    /// differ).
    pub inventory: PathBuf,
    /// The inventory's cluster name (the lock key).
    pub cluster: String,
    /// A 5-field cron expression (UTC).
    pub cron: String,
    /// The start window; `None` is [`DEFAULT_WINDOW`].
    pub window: Option<Duration>,
    /// What to do when the cluster is busy at a fire time.
    pub overlap: Overlap,
    /// What to do with fire times missed while the daemon was down.
    pub catch_up: CatchUp,
}

/// A fire time waiting for its cluster to free up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The schedule's name.
    pub schedule: String,
    /// The fire time it stands for.
    pub fire_time: DateTime<Utc>,
}

/// Why a fire time did not start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The schedule is paused.
    Paused,
    /// The cluster has a run going (or one was started for it in this tick), overlap is skip.
    ClusterBusy {
        /// The cluster.
        cluster: String,
    },
    /// The window closed before the fire time could start.
    WindowClosed {
        /// When it closed.
        closed_at: DateTime<Utc>,
    },
    /// Missed while the daemon was down, catch-up is none.
    MissedWhileDown,
    /// Missed while the daemon was down, and catch-up latest starts only the newest.
    OlderThanLatest,
    /// A queued fire time whose schedule no longer exists.
    ScheduleGone,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Paused => f.write_str("the schedule is paused"),
            Reason::ClusterBusy { cluster } => {
                write!(f, "cluster {cluster} has a run going (overlap skip)")
            }
            Reason::WindowClosed { closed_at } => {
                write!(f, "its start window closed at {closed_at}")
            }
            Reason::MissedWhileDown => {
                f.write_str("missed while the daemon was not running (catch-up none)")
            }
            Reason::OlderThanLatest => f.write_str(
                "missed while the daemon was not running; catch-up latest keeps only the newest",
            ),
            Reason::ScheduleGone => f.write_str("the schedule no longer exists"),
        }
    }
}

/// What [`ScheduleBook::tick`] decided about a fire time (or several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Start a run now; the daemon takes the cluster's lock and starts the schedule's workflow.
    Start {
        /// The schedule.
        schedule: String,
        /// The fire time it stands for.
        fire_time: DateTime<Utc>,
    },
    /// A fire time that will never start.
    Skipped {
        /// The schedule.
        schedule: String,
        /// The fire time.
        fire_time: DateTime<Utc>,
        /// Why.
        reason: Reason,
    },
    /// A fire time put in the queue because its cluster is busy (overlap queue).
    Queued {
        /// The schedule.
        schedule: String,
        /// The fire time.
        fire_time: DateTime<Utc>,
        /// The busy cluster.
        cluster: String,
    },
    /// Fire times missed while the daemon was down, none of which will start.
    Dropped {
        /// The schedule.
        schedule: String,
        /// The fire times, oldest first.
        fire_times: Vec<DateTime<Utc>>,
        /// Why.
        reason: Reason,
    },
}

impl Decision {
    /// The schedule it is about.
    pub fn schedule(&self) -> &str {
        match self {
            Decision::Start { schedule, .. }
            | Decision::Skipped { schedule, .. }
            | Decision::Queued { schedule, .. }
            | Decision::Dropped { schedule, .. } => schedule,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Start {
                schedule,
                fire_time,
            } => write!(f, "schedule {schedule}: start (fire time {fire_time})"),
            Decision::Skipped {
                schedule,
                fire_time,
                reason,
            } => write!(
                f,
                "schedule {schedule}: skipped fire time {fire_time}: {reason}"
            ),
            Decision::Queued {
                schedule,
                fire_time,
                cluster,
            } => write!(
                f,
                "schedule {schedule}: fire time {fire_time} queued until cluster {cluster} is free"
            ),
            Decision::Dropped {
                schedule,
                fire_times,
                reason,
            } => match (fire_times.first(), fire_times.last()) {
                (Some(first), Some(last)) if fire_times.len() > 1 => write!(
                    f,
                    "schedule {schedule}: dropped {} fire times from {first} to {last}: {reason}",
                    fire_times.len()
                ),
                (Some(only), _) => {
                    write!(f, "schedule {schedule}: dropped fire time {only}: {reason}")
                }
                _ => write!(f, "schedule {schedule}: dropped no fire time: {reason}"),
            },
        }
    }
}

/// Every schedule, and the fire times waiting for their cluster. Stored as one JSON file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleBook {
    /// The schedules by name.
    pub schedules: BTreeMap<String, Schedule>,
    /// Fire times waiting for their cluster (overlap queue), in the order they were queued.
    pub queued: Vec<Queued>,
}

/// The schedule file as stored.
#[derive(Deserialize)]
struct BookFile {
    version: u32,
    #[serde(default)]
    schedules: BTreeMap<String, Schedule>,
    #[serde(default)]
    queued: Vec<Queued>,
}

/// The schedule file as written.
#[derive(Serialize)]
struct BookFileRef<'a> {
    version: u32,
    schedules: &'a BTreeMap<String, Schedule>,
    queued: &'a [Queued],
}

impl ScheduleBook {
    /// Reads the schedule file; a missing file is an empty book.
    pub fn load(path: &Path) -> Result<ScheduleBook, Error> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ScheduleBook::default()),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    action: "read",
                    source,
                })
            }
        };
        let corrupt = |problem: String| Error::Corrupt {
            path: path.to_owned(),
            problem,
        };
        let file: BookFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this waymark reads version {FORMAT_VERSION})",
                file.version
            )));
        }
        for (key, schedule) in &file.schedules {
            if *key != schedule.name {
                return Err(corrupt(format!(
                    "schedule \"{}\" is stored under the name \"{key}\"",
                    schedule.name
                )));
            }
            validate_name(key).map_err(|e| corrupt(e.to_string()))?;
            if let Some(window) = schedule.window {
                validate_window(window).map_err(|e| corrupt(format!("schedule \"{key}\": {e}")))?;
            }
        }
        if let Some(orphan) = file
            .queued
            .iter()
            .find(|q| !file.schedules.contains_key(&q.schedule))
        {
            return Err(corrupt(format!(
                "a queued fire time ({}) belongs to no schedule \"{}\"",
                orphan.fire_time, orphan.schedule
            )));
        }
        Ok(ScheduleBook {
            schedules: file.schedules,
            queued: file.queued,
        })
    }

    /// Writes the schedule file atomically: a temporary sibling, fsynced, renamed over the file,
    /// then the folder fsynced. A crash leaves the old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io_error = |path: &Path, action: &'static str| {
            let path = path.to_owned();
            move |source: io::Error| Error::Io {
                path,
                action,
                source,
            }
        };
        let mut json = serde_json::to_vec_pretty(&BookFileRef {
            version: FORMAT_VERSION,
            schedules: &self.schedules,
            queued: &self.queued,
        })
        .map_err(|e| io_error(path, "encode the schedules for")(e.into()))?;
        json.push(b'\n');

        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().map_or_else(
            || "schedules".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        // The process id keeps a CLI and the daemon from writing the same temporary file.
        let tmp = folder.join(format!(".{file_name}.{}.tmp", std::process::id()));
        fs::create_dir_all(&folder).map_err(io_error(&folder, "create the folder"))?;
        let write_and_rename = || -> Result<(), Error> {
            let mut file = fs::File::create(&tmp).map_err(io_error(&tmp, "create"))?;
            file.write_all(&json).map_err(io_error(&tmp, "write"))?;
            file.sync_all().map_err(io_error(&tmp, "fsync"))?;
            fs::rename(&tmp, path).map_err(io_error(path, "rename a new version onto"))
        };
        if let Err(e) = write_and_rename() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::File::open(&folder)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&folder, "fsync the folder"))
    }

    /// Adds a schedule. Its `last_considered` is `now`: only fire times after it can start.
    pub fn add(&mut self, new: NewSchedule, now: DateTime<Utc>) -> Result<&Schedule, Error> {
        validate_name(&new.name)?;
        if self.schedules.contains_key(&new.name) {
            return Err(Error::Duplicate { name: new.name });
        }
        if new.workflow.trim().is_empty() {
            return Err(Error::InvalidValue {
                what: "workflow",
                text: new.workflow,
                problem: "a schedule needs a workflow name".to_owned(),
            });
        }
        if new.cluster.trim().is_empty() {
            return Err(Error::InvalidValue {
                what: "cluster",
                text: new.cluster,
                problem: "a schedule needs its inventory's cluster name (the lock key)".to_owned(),
            });
        }
        let cron = CronExpr::parse(&new.cron)?;
        if let Some(window) = new.window {
            validate_window(window)?;
        }
        let name = new.name.clone();
        let schedule = Schedule {
            name: new.name,
            workflow: new.workflow,
            inventory: new.inventory,
            cluster: new.cluster,
            cron,
            window: new.window,
            overlap: new.overlap,
            catch_up: new.catch_up,
            paused: false,
            last_considered: Some(now),
            last_failure: None,
        };
        Ok(self.schedules.entry(name).or_insert(schedule))
    }

    /// Removes a schedule and its queued fire times.
    pub fn remove(&mut self, name: &str) -> Result<Schedule, Error> {
        let schedule = self
            .schedules
            .remove(name)
            .ok_or_else(|| Error::UnknownSchedule {
                name: name.to_owned(),
            })?;
        self.queued.retain(|q| q.schedule != name);
        Ok(schedule)
    }

    /// Pauses or unpauses a schedule. Pausing drops its queued fire times; unpausing moves its
    /// `last_considered` to `now`, so that nothing it missed while paused starts. Setting the
    /// state it already has changes nothing.
    pub fn set_paused(
        &mut self,
        name: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let schedule = self
            .schedules
            .get_mut(name)
            .ok_or_else(|| Error::UnknownSchedule {
                name: name.to_owned(),
            })?;
        if schedule.paused == paused {
            return Ok(());
        }
        schedule.paused = paused;
        if paused {
            self.queued.retain(|q| q.schedule != name);
        } else {
            schedule.last_considered = Some(schedule.last_considered.map_or(now, |l| l.max(now)));
        }
        Ok(())
    }

    /// The earliest next fire time of the unpaused schedules strictly after `after` (so the
    /// daemon may sleep until then; queued fire times also need a tick when a cluster frees up).
    pub fn next_fire_time(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .values()
            .filter(|s| !s.paused)
            .filter_map(|s| s.next_fire_time(after))
            .min()
    }

    /// The daemon could not start the run of a `Start` decision (its inventory unreadable or
    /// invalid, its cluster taken meanwhile, the log failing). Records the failure on the
    /// schedule and keeps the fire time: queued again (served by the next ticks while its window
    /// is open), except a cluster conflict under `overlap = skip`, which is skipped as a busy
    /// cluster would have been. Returns what became of it.
    pub fn start_failed(
        &mut self,
        schedule: &str,
        fire_time: DateTime<Utc>,
        now: DateTime<Utc>,
        message: &str,
        cluster_busy: bool,
    ) -> Decision {
        let Some(s) = self.schedules.get_mut(schedule) else {
            return Decision::Skipped {
                schedule: schedule.to_owned(),
                fire_time,
                reason: Reason::ScheduleGone,
            };
        };
        s.last_failure = Some(StartFailure {
            at: now,
            fire_time,
            message: message.to_owned(),
        });
        if cluster_busy && s.overlap == Overlap::Skip {
            return Decision::Skipped {
                schedule: schedule.to_owned(),
                fire_time,
                reason: Reason::ClusterBusy {
                    cluster: s.cluster.clone(),
                },
            };
        }
        let cluster = s.cluster.clone();
        if !self
            .queued
            .iter()
            .any(|q| q.schedule == schedule && q.fire_time == fire_time)
        {
            self.queued.push(Queued {
                schedule: schedule.to_owned(),
                fire_time,
            });
        }
        Decision::Queued {
            schedule: schedule.to_owned(),
            fire_time,
            cluster,
        }
    }

    /// Decides what happens at `now`, given the clusters that have a run going. Pure: no clock,
    /// no IO, no randomness. Updates `last_considered` and the queue; returns every decision,
    /// queue first, for the daemon to carry out and journal. See the module documentation.
    pub fn tick(&mut self, now: DateTime<Utc>, busy_clusters: &BTreeSet<String>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        // Clusters that may not start a run in this tick.
        let mut busy = busy_clusters.clone();
        self.serve_queue(now, &mut busy, &mut decisions);

        // Fire times that may start, as (fire time, schedule): served oldest first.
        let mut candidates: Vec<(DateTime<Utc>, String)> = Vec::new();
        for (name, schedule) in &mut self.schedules {
            let Some(after) = schedule.last_considered else {
                schedule.last_considered = Some(now);
                continue;
            };
            let fire_times = schedule.cron.fire_times(after, now);
            let Some(&newest) = fire_times.last() else {
                continue;
            };
            schedule.last_considered = Some(newest);
            if schedule.paused {
                decisions.extend(fire_times.into_iter().map(|fire_time| Decision::Skipped {
                    schedule: name.clone(),
                    fire_time,
                    reason: Reason::Paused,
                }));
                continue;
            }
            // The oldest fire time is the first whose window would have closed.
            let missed_while_down = now >= schedule.window_closes_at(fire_times[0]);
            if !missed_while_down {
                candidates.extend(fire_times.into_iter().map(|f| (f, name.clone())));
                continue;
            }
            match schedule.catch_up {
                CatchUp::None => decisions.push(Decision::Dropped {
                    schedule: name.clone(),
                    fire_times,
                    reason: Reason::MissedWhileDown,
                }),
                CatchUp::Latest => {
                    let older = fire_times[..fire_times.len() - 1].to_vec();
                    if !older.is_empty() {
                        decisions.push(Decision::Dropped {
                            schedule: name.clone(),
                            fire_times: older,
                            reason: Reason::OlderThanLatest,
                        });
                    }
                    let closed_at = schedule.window_closes_at(newest);
                    if now < closed_at {
                        candidates.push((newest, name.clone()));
                    } else {
                        decisions.push(Decision::Skipped {
                            schedule: name.clone(),
                            fire_time: newest,
                            reason: Reason::WindowClosed { closed_at },
                        });
                    }
                }
            }
        }

        candidates.sort();
        for (fire_time, name) in candidates {
            let schedule = &self.schedules[&name];
            if !busy.contains(&schedule.cluster) {
                busy.insert(schedule.cluster.clone());
                decisions.push(Decision::Start {
                    schedule: name,
                    fire_time,
                });
                continue;
            }
            match schedule.overlap {
                Overlap::Skip => decisions.push(Decision::Skipped {
                    schedule: name,
                    fire_time,
                    reason: Reason::ClusterBusy {
                        cluster: schedule.cluster.clone(),
                    },
                }),
                Overlap::Queue => {
                    self.queued.push(Queued {
                        schedule: name.clone(),
                        fire_time,
                    });
                    decisions.push(Decision::Queued {
                        schedule: name,
                        fire_time,
                        cluster: schedule.cluster.clone(),
                    });
                }
            }
        }
        decisions
    }

    /// Starts queued fire times whose cluster is free (oldest first), skips those whose window
    /// closed (or whose schedule is paused or gone), keeps the rest.
    fn serve_queue(
        &mut self,
        now: DateTime<Utc>,
        busy: &mut BTreeSet<String>,
        decisions: &mut Vec<Decision>,
    ) {
        let mut queue = std::mem::take(&mut self.queued);
        queue.sort_by_key(|q| q.fire_time);
        for queued in queue {
            let skip = |reason: Reason| Decision::Skipped {
                schedule: queued.schedule.clone(),
                fire_time: queued.fire_time,
                reason,
            };
            let Some(schedule) = self.schedules.get(&queued.schedule) else {
                decisions.push(skip(Reason::ScheduleGone));
                continue;
            };
            if schedule.paused {
                decisions.push(skip(Reason::Paused));
                continue;
            }
            let closed_at = schedule.window_closes_at(queued.fire_time);
            if now >= closed_at {
                decisions.push(skip(Reason::WindowClosed { closed_at }));
                continue;
            }
            // Before its fire time only if the clock went back: wait.
            if now < queued.fire_time || busy.contains(&schedule.cluster) {
                self.queued.push(queued);
                continue;
            }
            busy.insert(schedule.cluster.clone());
            decisions.push(Decision::Start {
                schedule: queued.schedule,
                fire_time: queued.fire_time,
            });
        }
    }
}

/// Checks a schedule name: 1-64 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
fn validate_name(name: &str) -> Result<(), Error> {
    let fail = |problem: &str| Error::InvalidName {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    if name.is_empty() {
        return Err(fail("a schedule needs a name"));
    }
    if name.len() > 64 {
        return Err(fail("a name has at most 64 characters"));
    }
    if name.starts_with(['-', '.']) {
        return Err(fail("a name may not start with - or ."));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail("use only letters, digits, -, _ and ."));
    }
    Ok(())
}

/// Serde for `Option<Duration>` as the text of [`format_duration`] (or null).
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option, reason = "the signature serde's `with` requires")]
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&super::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
