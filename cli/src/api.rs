//! The API: what the commands show, computed from a log (the same data whether the CLI reads
//! the data directory itself or asks the daemon, which calls these same functions), what
//! clients send (the request bodies), and who holds a cluster ([`ClusterLocks`]).

use std::collections::{BTreeMap, BTreeSet};

use std::path::PathBuf;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use waymark_engine::core::RunState;
use waymark_engine::log::EventLog;
use waymark_engine::RunId;
use waymark_workflows::Inventory;

use crate::exit::usage;
use crate::schedule::{NewSchedule, ScheduleBook};
use crate::view;

pub use crate::follow::{follow_lines, EventRow, FollowLine};
pub use crate::view::{state_name, state_reason, DAMAGED, HELD, NEEDS_OPERATOR, REFUSED};

/// One row of `ls`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRow {
    /// Run id.
    pub run: String,
    /// Workflow name.
    pub workflow: String,
    /// Version.
    pub version: u32,
    /// State name.
    pub state: String,
    /// Who started it.
    pub started_by: String,
    /// When (RFC 3339).
    pub started_at: String,
    /// Last event (RFC 3339).
    pub updated_at: String,
    /// Why it stands where it does, when its state has a reason: `refused` (what failed, for
    /// example the pre-flight checks) and `held` (who holds it and why).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `ls` data; runs whose history does not load are reported apart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunList {
    /// Matching runs, oldest first.
    pub runs: Vec<RunRow>,
    /// `run: error` for histories that fail verification.
    pub damaged: Vec<String>,
}

/// The states `ls --state` accepts. `held`: stopped by an operator's `hold` (unfinished, its
/// cluster stays held); `refused`: ended before changing anything (pre-flight failed, approval
/// timed out); `needs-operator`: ended with its compensation incomplete and not resolved yet
/// (it holds its cluster); `damaged`: its history does not load (`waymark verify`).
pub const STATES: [&str; 10] = [
    "running",
    HELD,
    "compensating",
    "suspended",
    "completed",
    "failed",
    "cancelled",
    REFUSED,
    NEEDS_OPERATOR,
    DAMAGED,
];

/// The signals an operator may send (`waymark signal`, `POST /v1/runs/{id}/signal`).
pub const SIGNALS: [&str; 5] = ["approve", "pause", "hold", "resume", "cancel"];

/// Lists runs, filtered. A run whose history does not load is listed with state `damaged` (and
/// its error in [`RunList::damaged`]), never left out.
pub fn list(
    log: &dyn EventLog,
    state: Option<&str>,
    workflow: Option<&str>,
) -> anyhow::Result<RunList> {
    let mut out = RunList::default();
    for run in log.runs()? {
        let st = match log
            .read(run)
            .map_err(anyhow::Error::from)
            .and_then(|r| Ok(RunState::from_records(&r)?))
        {
            Ok(s) => s,
            Err(e) => {
                out.damaged.push(format!("{run}: {e:#}"));
                if state.is_none_or(|s| s == DAMAGED) && workflow.is_none() {
                    out.runs.push(RunRow {
                        run: run.to_string(),
                        workflow: "?".to_owned(),
                        version: 0,
                        state: DAMAGED.to_owned(),
                        started_by: "?".to_owned(),
                        started_at: String::new(),
                        updated_at: String::new(),
                        reason: None,
                    });
                }
                continue;
            }
        };
        let name = state_name(&st);
        if state.is_some_and(|s| s != name) || workflow.is_some_and(|w| w != st.workflow) {
            continue;
        }
        out.runs.push(RunRow {
            run: run.to_string(),
            workflow: st.workflow.clone(),
            version: st.version,
            state: name.to_owned(),
            started_by: st.started_by.clone(),
            started_at: st.started_at.to_rfc3339(),
            updated_at: st.updated_at.to_rfc3339(),
            reason: state_reason(&st),
        });
    }
    Ok(out)
}

/// Why a cluster may not get a new maintenance run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A run of this cluster is unfinished (running, compensating, suspended) or ended with its
    /// compensation incomplete and is not resolved yet.
    Run {
        /// The run.
        run: RunId,
        /// Its state name (`running`, ..., `needs-operator`).
        state: String,
    },
    /// The log cannot tell which clusters are free (an unfinished run's history does not load,
    /// or the list of runs cannot be read): every cluster counts as held (fail closed).
    Unknown {
        /// What could not be read, naming the run, and what to do.
        problem: String,
    },
}

impl Holder {
    /// One line for an operator: who holds `cluster` and what to do.
    pub fn explain(&self, cluster: &str) -> String {
        match self {
            Holder::Run { run, state } if state == NEEDS_OPERATOR => format!(
                "cluster {cluster} is held by run {run}, which ended with its compensation \
                 incomplete (the estate may be half-switched); check and repair the estate, then \
                 `waymark resolve {run} --note \"what you checked\"` frees the cluster"
            ),
            Holder::Run { run, state } => format!(
                "cluster {cluster} already has run {run} ({state}); one maintenance run per \
                 cluster at a time: `waymark attach {run}` follows it (with a daemon), \
                 `waymark resume {run}` continues it (without one), \
                 `waymark signal {run} cancel` rolls it back"
            ),
            Holder::Unknown { problem } => format!(
                "cannot tell whether cluster {cluster} is free, so no run starts: {problem}"
            ),
        }
    }
}

/// Which clusters are held, from the log: the one answer the daemon, its schedules and the
/// foreground `waymark run` use. Runs known to be ended for good (terminal and not needing an
/// operator) are kept in `settled` by the caller, so that a long-lived daemon reads each such
/// history once.
#[derive(Clone, Debug, Default)]
pub struct ClusterLocks {
    /// Held clusters and the run holding each.
    pub held: BTreeMap<String, Holder>,
    /// Set when the log cannot say (every cluster then counts as held).
    pub unknown: Option<Holder>,
}

impl ClusterLocks {
    /// Reads the log. Fails closed: anything unreadable makes every cluster held.
    pub fn scan(log: &dyn EventLog, settled: &mut BTreeSet<RunId>) -> ClusterLocks {
        let mut locks = ClusterLocks::default();
        let mut unknown = |problem: String| {
            locks.unknown.get_or_insert(Holder::Unknown { problem });
        };
        let open: BTreeSet<RunId> = match log.open_runs() {
            Ok(o) => o.into_iter().collect(),
            Err(e) => {
                unknown(format!(
                    "the log's list of unfinished runs cannot be read ({e}); `waymark verify` \
                     checks the log"
                ));
                BTreeSet::new()
            }
        };
        let all = match log.runs() {
            Ok(r) => r,
            Err(e) => {
                unknown(format!(
                    "the log's list of runs cannot be read ({e}); `waymark verify` checks the log"
                ));
                Vec::new()
            }
        };
        let mut held = Vec::new();
        for run in all.into_iter().chain(open.iter().copied()) {
            if settled.contains(&run) {
                continue;
            }
            let st = match log
                .read(run)
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(RunState::from_records(&r)?))
            {
                Ok(st) => st,
                Err(e) if open.contains(&run) => {
                    unknown(format!(
                        "run {run} is unfinished but its history does not load ({e:#}); it may \
                         have left the estate half-switched: `waymark verify {run}` shows the \
                         damage, `waymark recover` (daemon stopped) salvages what verifies"
                    ));
                    continue;
                }
                // An ended run whose history does not load: listed as damaged by `ls`; it
                // will not load later either, so it is not read again.
                Err(_) => {
                    settled.insert(run);
                    continue;
                }
            };
            if st.status.is_terminal() && !st.needs_operator() {
                settled.insert(run);
                continue;
            }
            match st.input.decode::<waymark_workflows::Inventory>() {
                Ok(inv) => held.push((
                    inv.cluster.name,
                    Holder::Run {
                        run,
                        state: state_name(&st).to_owned(),
                    },
                )),
                Err(e) => unknown(format!(
                    "run {run} ({}) is {} but its input names no cluster ({e}); \
                     `waymark show {run}`",
                    st.workflow,
                    state_name(&st)
                )),
            }
        }
        for (cluster, h) in held {
            locks.held.entry(cluster).or_insert(h);
        }
        locks
    }

    /// Who holds `cluster`, if anyone.
    pub fn holder(&self, cluster: &str) -> Option<&Holder> {
        self.held.get(cluster).or(self.unknown.as_ref())
    }

    /// The clusters among `known` that may not start a run now.
    pub fn busy(&self, known: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let mut busy: BTreeSet<String> = self.held.keys().cloned().collect();
        if self.unknown.is_some() {
            busy.extend(known);
        }
        busy
    }
}

/// `show` data.
pub fn show(log: &dyn EventLog, run: RunId) -> anyhow::Result<serde_json::Value> {
    let records = log.read(run)?;
    let st = RunState::from_records(&records)?;
    Ok(view::summary(&st, &records))
}

/// `history` data.
pub fn history(log: &dyn EventLog, run: RunId) -> anyhow::Result<Vec<EventRow>> {
    Ok(log.read(run)?.iter().map(EventRow::from).collect())
}

/// `verify` data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Runs checked.
    pub runs: usize,
    /// Events verified.
    pub events: usize,
    /// One line per fault (naming run and position).
    pub faults: Vec<String>,
}

/// Verifies one run or all.
pub fn verify(log: &dyn EventLog, run: Option<RunId>) -> anyhow::Result<VerifyReport> {
    let runs = match run {
        Some(r) => vec![r],
        None => log.runs()?,
    };
    let mut report = VerifyReport {
        runs: runs.len(),
        ..VerifyReport::default()
    };
    for r in runs {
        match log.read(r) {
            Ok(recs) => report.events += recs.len(),
            Err(e) => report.faults.push(e.to_string()),
        }
    }
    if run.is_none() {
        report.faults.extend(log.damage());
    }
    Ok(report)
}

/// Finds a run by id or unique prefix.
pub fn find_run(log: &dyn EventLog, text: &str) -> anyhow::Result<RunId> {
    if let Ok(id) = text.parse::<RunId>() {
        return Ok(id);
    }
    let matches: Vec<RunId> = log
        .runs()?
        .into_iter()
        .filter(|r| r.to_string().starts_with(text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(usage(format!(
            "no run matches {text:?}; `waymark ls` lists the runs"
        ))),
        many => Err(usage(format!(
            "{text:?} matches {} runs; give more of the id (`waymark ls`)",
            many.len()
        ))),
    }
}

/// Checks an operator's note (`resolve --note`): something a later reader can use.
pub fn check_note(note: &str) -> anyhow::Result<()> {
    if note.trim().is_empty() {
        return Err(usage(
            "--note must say what you checked or repaired (it is journaled with your name)",
        ));
    }
    Ok(())
}

/// Checks a signal's name.
pub fn check_signal(name: &str) -> anyhow::Result<()> {
    if SIGNALS.contains(&name) {
        Ok(())
    } else {
        Err(usage(format!(
            "unknown signal {name:?}; use one of {}",
            SIGNALS.join(", ")
        )))
    }
}

/// `POST /v1/runs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartRequest {
    /// Workflow name.
    pub workflow: String,
    /// The inventory (validated again by the daemon).
    pub inventory: Inventory,
}

/// `POST /v1/runs/{id}/signal`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignalRequest {
    /// One of [`SIGNALS`].
    pub signal: String,
    /// Why (journaled).
    pub reason: Option<String>,
}

/// `POST /v1/runs/{id}/resolve`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolveRequest {
    /// What the operator checked or repaired (journaled with their name).
    pub note: String,
}

/// `POST /v1/schedules` (what `schedule add` sends).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleAddRequest {
    /// Name.
    pub name: String,
    /// Workflow.
    pub workflow: String,
    /// Absolute inventory path.
    pub inventory: PathBuf,
    /// 5-field cron.
    pub cron: String,
    /// Window text (`30m`), optional.
    pub window: Option<String>,
    /// `skip` or `queue`.
    pub overlap: String,
    /// `none` or `latest`.
    pub catch_up: String,
    /// The IANA zone the cron expression is read in (`America/Los_Angeles`); none: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Webhooks told about the runs it starts (`FORMAT:file:PATH` or `FORMAT:env:VAR`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::Webhook>,
}

/// Turns an `add` request into the schedule core's input, checking the inventory (its cluster
/// is the lock key).
pub fn new_schedule(b: &ScheduleAddRequest) -> anyhow::Result<NewSchedule> {
    let inv = Inventory::load(&b.inventory)?;
    let window = match &b.window {
        Some(w) => {
            let d = crate::schedule::parse_duration(w)?;
            crate::schedule::validate_window(d)?;
            Some(d)
        }
        None => None,
    };
    Ok(NewSchedule {
        name: b.name.clone(),
        workflow: b.workflow.clone(),
        inventory: b.inventory.clone(),
        cluster: inv.cluster.name,
        cron: b.cron.clone(),
        window,
        overlap: b.overlap.parse()?,
        catch_up: b.catch_up.parse()?,
        timezone: b
            .timezone
            .as_deref()
            .map(crate::schedule::parse_timezone)
            .transpose()?,
        notify: b.notify.clone(),
    })
}

/// The schedules as `schedule ls` shows them.
pub fn schedule_rows(book: &ScheduleBook) -> Vec<serde_json::Value> {
    let now = Utc::now();
    book.schedules
        .values()
        .map(|s| {
            serde_json::json!({
                "name": s.name, "workflow": s.workflow, "inventory": s.inventory, "cluster": s.cluster,
                "cron": s.cron.as_str(), "window": crate::schedule::format_duration(s.effective_window()),
                "overlap": s.overlap.as_str(), "catch_up": s.catch_up.as_str(), "paused": s.paused,
                "timezone": s.zone().name(),
                "next": s.next_fire_time(now).map(|t| t.to_rfc3339()),
                "next_local": s.next_fire_time(now).map(|t| t.with_timezone(&s.zone()).to_rfc3339()),
                "notify": s.notify,
                "queued": book.queued.iter().filter(|q| q.schedule == s.name).count(),
                "last_failure": s.last_failure.as_ref().map(|f| serde_json::json!({
                    "at": f.at.to_rfc3339(), "fire_time": f.fire_time.to_rfc3339(), "message": f.message,
                })),
            })
        })
        .collect()
}
