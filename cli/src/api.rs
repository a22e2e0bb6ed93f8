//! What the commands show, computed from a log: the same data whether the CLI reads the data
//! directory itself or asks the daemon (which calls these same functions).

use serde::{Deserialize, Serialize};
use waymark_engine::core::RunState;
use waymark_engine::event::{Event, Record};
use waymark_engine::log::EventLog;
use waymark_engine::RunId;

use crate::display;

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
}

/// `ls` data; runs whose history does not load are reported apart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunList {
    /// Matching runs, oldest first.
    pub runs: Vec<RunRow>,
    /// `run: error` for histories that fail verification.
    pub damaged: Vec<String>,
}

/// The states `ls --state` accepts.
pub const STATES: [&str; 6] = [
    "running",
    "compensating",
    "suspended",
    "completed",
    "failed",
    "cancelled",
];

/// Lists runs, filtered.
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
                continue;
            }
        };
        if state.is_some_and(|s| s != st.status.name())
            || workflow.is_some_and(|w| w != st.workflow)
        {
            continue;
        }
        out.runs.push(RunRow {
            run: run.to_string(),
            workflow: st.workflow.clone(),
            version: st.version,
            state: st.status.name().to_owned(),
            started_by: st.started_by.clone(),
            started_at: st.started_at.to_rfc3339(),
            updated_at: st.updated_at.to_rfc3339(),
        });
    }
    Ok(out)
}

/// `show` data.
pub fn show(log: &dyn EventLog, run: RunId) -> anyhow::Result<serde_json::Value> {
    let records = log.read(run)?;
    let st = RunState::from_records(&records)?;
    Ok(display::summary(&st, &records))
}

/// One event as the API carries it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRow {
    /// Position.
    pub seq: u64,
    /// When written.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Kind name.
    pub kind: String,
    /// The event.
    pub event: Event,
    /// Its chain hash (hex).
    pub hash: String,
}

impl From<&Record> for EventRow {
    fn from(r: &Record) -> Self {
        EventRow {
            seq: r.seq,
            at: r.at,
            kind: r.event.kind().to_owned(),
            event: r.event.clone(),
            hash: r.hash.iter().fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            }),
        }
    }
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
        [] => Err(crate::env::usage(format!(
            "no run matches {text:?}; `waymark ls` lists the runs"
        ))),
        many => Err(crate::env::usage(format!(
            "{text:?} matches {} runs; give more of the id (`waymark ls`)",
            many.len()
        ))),
    }
}

/// A line of the live follow stream (newline-delimited JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FollowLine {
    /// An event of the run.
    Event(EventRow),
    /// Progress an activity reported.
    Progress {
        /// Step label.
        label: String,
        /// Message.
        message: String,
    },
    /// The run's driver stopped: how.
    End {
        /// One line.
        outcome: String,
        /// Exit code for the CLI (0 completed).
        code: u8,
    },
}

/// Sends a run's history so far, then its new events and the progress its activities report, then
/// how its driver stopped, until the run stops or the receiver goes away (`Ok(None)`: the follower
/// left; the run goes on). The daemon's follow stream and the CLI's foreground display both use it.
pub async fn follow_lines(
    engine: &waymark_engine::Engine,
    run: RunId,
    tx: tokio::sync::mpsc::Sender<FollowLine>,
) -> anyhow::Result<Option<waymark_engine::RunOutcome>> {
    let mut records = engine.subscribe(run);
    let mut progress = engine.progress(run);
    let mut last: Option<u64> = None;
    for r in &engine.log().read(run)? {
        if tx.send(FollowLine::Event(EventRow::from(r))).await.is_err() {
            return Ok(None);
        }
        last = Some(r.seq);
    }
    let wait = engine.wait(run);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            outcome = &mut wait => {
                let outcome = outcome?;
                for r in engine.log().read(run)?.iter().filter(|r| last.is_none_or(|l| r.seq > l)) {
                    if tx.send(FollowLine::Event(EventRow::from(r))).await.is_err() {
                        return Ok(None);
                    }
                }
                let end = FollowLine::End {
                    outcome: crate::commands::outcome_line(run, &outcome),
                    code: crate::commands::outcome_code_u8(&outcome),
                };
                let _ = tx.send(end).await;
                return Ok(Some(outcome));
            }
            rec = async {
                match records.as_mut() {
                    Some(rx) => rx.recv().await.ok(),
                    None => futures::future::pending().await,
                }
            } => {
                if let Some(r) = rec {
                    if last.is_none_or(|l| r.seq > l) {
                        last = Some(r.seq);
                        if tx.send(FollowLine::Event(EventRow::from(&r))).await.is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
            changed = async {
                match progress.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => futures::future::pending().await,
                }
            } => {
                if !changed {
                    progress = None;
                    continue;
                }
                let p = progress.as_ref().and_then(|rx| rx.borrow().clone());
                if let Some(p) = p {
                    if tx.send(FollowLine::Progress { label: p.label, message: p.message }).await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}
