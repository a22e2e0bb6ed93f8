//! What can go wrong with schedules.

use std::io;
use std::path::PathBuf;

/// What can go wrong with schedules: bad input to `add` and friends, or the schedule file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cron expression that does not parse, or that never fires.
    #[error("invalid cron expression \"{expression}\": {problem}")]
    InvalidCron {
        /// The expression as given.
        expression: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A duration that does not parse.
    #[error("invalid duration \"{text}\": {problem}")]
    InvalidDuration {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A start window that parses but cannot be used.
    #[error("invalid window {window}: {problem}")]
    InvalidWindow {
        /// The window, formatted.
        window: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A schedule name that cannot be used.
    #[error("invalid schedule name \"{name}\": {problem}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Another field of a schedule (workflow, cluster, overlap, catch-up) that cannot be used.
    #[error("invalid {what} \"{text}\": {problem}")]
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// The value as given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `add` with the name of an existing schedule.
    #[error(
        "a schedule named \"{name}\" already exists; remove it first \
         (waymark schedule rm {name}) or choose another name"
    )]
    Duplicate {
        /// The name.
        name: String,
    },
    /// No schedule has this name.
    #[error("no schedule named \"{name}\" (waymark schedule ls lists them)")]
    UnknownSchedule {
        /// The name.
        name: String,
    },
    /// Reading or writing the schedule file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The file (or its temporary sibling, or its folder).
        path: PathBuf,
        /// What was being done: read, write, rename, ...
        action: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The schedule file does not hold a valid schedule book.
    #[error("schedule file {} is not valid: {problem}; fix or remove the file", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}
