//! Schedules of `waymark daemon`: when a workflow starts on its own, decided by a pure function.
//!
//! A [`Schedule`] runs one workflow on one inventory at the fire times of a 5-field cron
//! expression, read as wall-clock times of its IANA time zone (UTC when it has none, as every
//! schedule written before zones existed).
//!
//! **Local time and DST** ([`local_instant`]): a fire time is a local wall-clock time turned
//! into an instant. One that falls in the hour skipped when clocks go forward fires once, at
//! the end of the gap (02:30 on the spring-forward day of `America/Los_Angeles` fires at 03:00
//! PDT); one that falls in the hour repeated when clocks go back fires once, at its first
//! occurrence (02:30 on the fall-back day of Europe/Berlin fires at 02:30 CEST, not again at
//! 02:30 CET). Two local times that become the same instant fire once. Windows are durations
//! from the fire time, in real time. [`ScheduleBook::tick`] is the whole decision: given `now` and the clusters
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

mod book;
mod cron;
mod duration;
mod error;

pub use book::{
    CatchUp, Decision, NewSchedule, Overlap, Queued, Reason, Schedule, ScheduleBook, StartFailure,
};
pub use cron::{local_instant, CronExpr};
pub use duration::{
    format_duration, parse_duration, validate_window, DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW,
};
pub use error::Error;

/// Parses an IANA time zone name (`America/Los_Angeles`, `Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, Error> {
    name.parse::<chrono_tz::Tz>().map_err(|_| Error::InvalidValue {
        what: "timezone",
        text: name.to_owned(),
        problem: "not an IANA time zone name; use a name like America/Los_Angeles, Europe/Berlin or UTC (see `timedatectl list-timezones`)".to_owned(),
    })
}
