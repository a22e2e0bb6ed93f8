//! The schedule book: every schedule, the fire times queued for their cluster, and
//! [`ScheduleBook::tick`], the pure decision of what starts now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use chrono_tz::Tz;

use super::cron::CronExpr;
use super::duration::{optional_duration, validate_window, DEFAULT_WINDOW};
use super::error::Error;
use crate::notify::Webhook;

/// The version of the schedule file format written by [`ScheduleBook::save`] when a schedule
/// has a time zone or webhooks (an older waymark must refuse such a book rather than fire it in
/// UTC); a book without either is still written as version 1.
const FORMAT_VERSION: u32 = 2;
/// Books without time zones or webhooks: read as UTC, no notifications.
const FORMAT_VERSION_UTC_ONLY: u32 = 1;

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
    /// When it fires: wall-clock times of [`Schedule::timezone`].
    pub cron: CronExpr,
    /// The IANA zone its cron expression is read in (`None`, as in books written before zones
    /// existed: UTC). DST rules: [`crate::schedule::local_instant`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<Tz>,
    /// Webhooks told about its runs' transitions (besides the daemon's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Webhook>,
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

    /// The zone its cron expression is read in (UTC when none was given).
    pub fn zone(&self) -> Tz {
        self.timezone.unwrap_or(chrono_tz::UTC)
    }

    /// The next fire time strictly after `after` (for listings; pausing is not considered).
    pub fn next_fire_time(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.next_after_in(self.zone(), after)
    }

    /// Its fire times in `(after, until]`, oldest first, in its zone.
    pub fn fire_times(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.cron.fire_times_in(self.zone(), after, until)
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
    /// A 5-field cron expression (wall-clock times of `timezone`).
    pub cron: String,
    /// The IANA zone of the cron expression; `None`: UTC.
    pub timezone: Option<Tz>,
    /// Webhooks told about its runs' transitions.
    pub notify: Vec<Webhook>,
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
        ScheduleBook::from_json(&bytes, path)
    }

    /// Reads a book from its JSON text (a schedules file's, or the shared store's book);
    /// `source` names where it came from in errors.
    pub fn from_json(bytes: &[u8], source: &Path) -> Result<ScheduleBook, Error> {
        let path = source;
        let corrupt = |problem: String| Error::Corrupt {
            path: path.to_owned(),
            problem,
        };
        let file: BookFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FORMAT_VERSION && file.version != FORMAT_VERSION_UTC_ONLY {
            return Err(corrupt(format!(
                "format version {} (this waymark reads versions {FORMAT_VERSION_UTC_ONLY} and {FORMAT_VERSION})",
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

    /// The book as the JSON text a schedules file holds (without its final newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let plain = self
            .schedules
            .values()
            .all(|s| s.timezone.is_none() && s.notify.is_empty());
        serde_json::to_string_pretty(&BookFileRef {
            version: if plain {
                FORMAT_VERSION_UTC_ONLY
            } else {
                FORMAT_VERSION
            },
            schedules: &self.schedules,
            queued: &self.queued,
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
        let mut json = self
            .to_json()
            .map_err(|e| io_error(path, "encode the schedules for")(e.into()))?
            .into_bytes();
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
            timezone: new.timezone,
            notify: new.notify,
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
            let fire_times = schedule.fire_times(after, now);
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
