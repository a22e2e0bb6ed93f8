//! Cron expressions in standard (Vixie) cron semantics, over the `cron` crate's Quartz dialect.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::Error;

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

/// The instant a local wall-clock time of `zone` stands for, by the DST rules of schedules:
///
/// - a local time that happens once is that instant;
/// - a local time that happens twice (the hour repeated when clocks go back) is its *first*
///   occurrence, so a fire time in the repeated hour fires once;
/// - a local time that does not happen (the hour skipped when clocks go forward) is the first
///   local time after it that does: 02:30 on the spring-forward day of `America/Los_Angeles`
///   (02:00 -> 03:00) is 03:00 local. A fire time in the skipped hour fires once, at the end of
///   the gap (as Vixie cron runs such jobs right after the change).
///
/// `None` only for a gap longer than a day (no real zone has one).
pub fn local_instant(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => {
            // Transitions fall on whole minutes: the first minute that exists ends the gap.
            let start = local.checked_sub_signed(TimeDelta::seconds(i64::from(
                chrono::Timelike::second(&local),
            )))?;
            (1..=24 * 60).find_map(|m| {
                let t = start.checked_add_signed(TimeDelta::minutes(m))?;
                zone.from_local_datetime(&t)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
        }
    }
}

impl CronExpr {
    /// The fire times of the expression read as wall-clock times of `zone`, in `(after, until]`
    /// (instants, oldest first, each once), by the DST rules of [`local_instant`]. With
    /// `chrono_tz::UTC` this is [`CronExpr::fire_times`].
    pub fn fire_times_in(
        &self,
        zone: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        if zone == chrono_tz::UTC {
            return self.fire_times(after, until);
        }
        let Some(start) = Self::local_start(zone, after) else {
            return Vec::new();
        };
        // Local times map to instants in order (a repeated hour maps to its first pass, a
        // skipped one to its end), so each stream can stop at the first instant past `until`.
        let mut times: Vec<DateTime<Utc>> = self
            .schedules
            .iter()
            .flat_map(|s| {
                s.after(&start)
                    .map_while(|local| local_instant(zone, local.naive_utc()))
                    .take_while(|t| *t <= until)
            })
            .filter(|t| *t > after)
            .collect();
        times.sort_unstable();
        times.dedup();
        times
    }

    /// The first fire time strictly after `after`, the expression read in `zone`.
    pub fn next_after_in(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if zone == chrono_tz::UTC {
            return self.next_after(after);
        }
        let start = Self::local_start(zone, after)?;
        self.schedules
            .iter()
            .filter_map(|s| {
                s.after(&start)
                    .map_while(|local| local_instant(zone, local.naive_utc()))
                    .find(|t| *t > after)
            })
            .min()
    }

    /// Where to begin reading local fire times so that none after `after` is missed: its local
    /// time, less three hours (more than any zone's DST shift), as a naive (UTC-typed) time.
    fn local_start(zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&zone).naive_local();
        let early = local.checked_sub_signed(TimeDelta::hours(3))?;
        Some(Utc.from_utc_datetime(&early))
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
