//! How runs look to an operator, as pure functions of engine data: one line per event, how a
//! run ended (and the exit status it means), the run summary of `show`, the replay report, and
//! the Mermaid sequence diagram. No IO: the commands and the daemon print or send what these return.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use waymark_engine::core::{RunState, RunStatus};
use waymark_engine::event::SuspendReason;
use waymark_engine::event::{Event, Record, StepRef};
use waymark_engine::runtime::{ReplayReport, ReplayVerdict};
use waymark_engine::{RunId, RunOutcome};

use crate::exit::ExitStatus;

pub mod checklist;

/// Step labels seen so far in a history (for lines about attempts and results).
#[derive(Default)]
pub struct Labels(BTreeMap<StepRef, String>);

impl Labels {
    fn get(&self, s: StepRef) -> String {
        self.0.get(&s).cloned().unwrap_or_else(|| s.to_string())
    }
}

/// The state of an unfinished run an operator holds (`waymark hold`) until `resume` or `cancel`.
pub const HELD: &str = "held";

/// The state of a run that ended before changing anything (its reasons in `show`).
pub const REFUSED: &str = "refused";

/// The state of a run that ended with its compensation incomplete and holds its cluster until an
/// operator resolves it (`waymark resolve`).
pub const NEEDS_OPERATOR: &str = "needs-operator";

/// The state shown for a run whose history does not load.
pub const DAMAGED: &str = "damaged";

/// The state name `ls` shows for a run.
pub fn state_name(st: &RunState) -> &'static str {
    if st.needs_operator() {
        NEEDS_OPERATOR
    } else if st.held.is_some() && !st.status.is_terminal() {
        HELD
    } else {
        st.status.name()
    }
}

/// The reason `ls` shows for a run, if its state has one.
pub fn state_reason(st: &RunState) -> Option<String> {
    use waymark_engine::core::RunStatus;
    match (&st.status, &st.held) {
        (RunStatus::Refused(reasons), _) => Some(reasons.join("; ")),
        (status, Some((by, why))) if !status.is_terminal() => Some(if why.is_empty() {
            format!("held by {by}")
        } else {
            format!("held by {by}: {why}")
        }),
        _ => None,
    }
}

/// One line for an event given by its parts.
pub fn line(
    seq: u64,
    at: chrono::DateTime<chrono::Utc>,
    event: &Event,
    labels: &mut Labels,
) -> String {
    let what = match event {
        Event::RunStarted {
            workflow,
            version,
            started_by,
            ..
        } => format!("run started: {workflow} v{version} by {started_by}"),
        Event::StepScheduled { step, label, .. } => {
            labels.0.insert(*step, label.clone());
            format!("{label}: scheduled")
        }
        Event::AttemptStarted { step, attempt } => {
            format!("{}: attempt {attempt} started", labels.get(*step))
        }
        Event::AttemptFailed {
            step,
            attempt,
            error,
            retryable,
            next_retry_at,
        } => {
            let then = match next_retry_at {
                Some(t) => format!("retry at {}", t.format("%H:%M:%S%.3f")),
                None if *retryable => "no attempts left".to_owned(),
                None => "not retryable".to_owned(),
            };
            format!(
                "{}: attempt {attempt} failed ({then}): {error}",
                labels.get(*step)
            )
        }
        Event::AttemptInterrupted { step, attempt } => {
            format!(
                "{}: attempt {attempt} was interrupted (the engine stopped)",
                labels.get(*step)
            )
        }
        Event::StepCompleted { step, output } => {
            format!(
                "{}: completed -> {}",
                labels.get(*step),
                summarise(&output.0)
            )
        }
        Event::StepFailed { step, error } => format!("{}: FAILED: {error}", labels.get(*step)),
        Event::TimerStarted { fire_at, .. } => {
            format!("sleeping until {}", fire_at.format("%H:%M:%S"))
        }
        Event::TimerFired { .. } => "timer fired".to_owned(),
        Event::ValueRecorded { kind, value, .. } => {
            format!("recorded {}: {value}", format!("{kind:?}").to_lowercase())
        }
        Event::CompensationRegistered { compensation, .. } => {
            format!("compensation registered: {}", compensation.label)
        }
        Event::SignalReceived { name, sent_by, .. } => format!("signal {name:?} from {sent_by}"),
        Event::SignalConsumed { name, .. } => format!("signal {name:?} taken"),
        Event::SignalWaitStarted { name, deadline, .. } => format!(
            "waiting for signal {name:?} until {}",
            deadline.format("%H:%M:%S")
        ),
        Event::SignalWaitTimedOut { .. } => "signal wait timed out".to_owned(),
        Event::CompensationStarted { reason, cancelled } => {
            if *cancelled {
                format!("CANCELLED, compensating: {reason}")
            } else {
                format!("FAILED, compensating: {reason}")
            }
        }
        Event::RunSuspended { reason } => format!("SUSPENDED: {reason:?}"),
        Event::RunCompleted { .. } => "run completed".to_owned(),
        Event::RunFailed { error } => format!("run failed: {error}"),
        Event::RunCancelled { reason } => format!("run cancelled: {reason}"),
        Event::RunResolved { by, note } => format!("resolved by {by}: {note}"),
        Event::RunRefused { reasons } => {
            format!("REFUSED (nothing changed): {}", reasons.join("; "))
        }
    };
    format!("{} #{:<4} {what}", at.format("%H:%M:%S%.3f"), seq)
}

/// The longest step output an event line shows whole.
const WHOLE_OUTPUT: usize = 160;

/// A step's output (JSON text) for an event line: whole when short; else summarised, never cut
/// in the middle of a value: an object shows its keys with their short scalar values (longer
/// ones and nested values as their kind and size), an array its length, a long string its
/// length. `waymark history RUN --output json` has every output whole.
pub fn summarise(json: &str) -> String {
    if json.chars().count() <= WHOLE_OUTPUT {
        return json.to_owned();
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return format!("<{} characters>", json.chars().count());
    };
    let brief = |v: &serde_json::Value| -> String {
        match v {
            serde_json::Value::Array(a) => format!("[{} items]", a.len()),
            serde_json::Value::Object(o) => format!("{{{} keys}}", o.len()),
            serde_json::Value::String(s) if s.chars().count() > 40 => {
                format!("<text, {} characters>", s.chars().count())
            }
            other => other.to_string(),
        }
    };
    match &value {
        serde_json::Value::Object(o) => {
            let mut parts = Vec::new();
            let mut used = 0;
            for (k, v) in o {
                let part = format!("{k}: {}", brief(v));
                if used + part.len() > WHOLE_OUTPUT && !parts.is_empty() {
                    parts.push(format!("… {} more keys", o.len() - parts.len()));
                    break;
                }
                used += part.len() + 2;
                parts.push(part);
            }
            format!("{{{}}}", parts.join(", "))
        }
        other => brief(other),
    }
}

/// The run summary for `show`.
pub fn summary(state: &RunState, records: &[Record]) -> serde_json::Value {
    let mut steps = Vec::new();
    let mut started: BTreeMap<StepRef, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    let mut ended: BTreeMap<StepRef, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    // Each step's runbook step (checklist group): the compensation's are those scheduled after
    // the compensation started.
    let titles = checklist::titles(&state.workflow);
    let mut groups: BTreeMap<StepRef, usize> = BTreeMap::new();
    let mut compensating = false;
    for r in records {
        match &r.event {
            Event::CompensationStarted { .. } => compensating = true,
            Event::StepScheduled { step, label, .. } => {
                started.insert(*step, r.at);
                groups.insert(
                    *step,
                    checklist::group_of(label, compensating, titles.len()),
                );
            }
            Event::StepCompleted { step, .. } | Event::StepFailed { step, .. } => {
                ended.insert(*step, r.at);
            }
            _ => {}
        }
    }
    let mut current = None;
    for (step, s) in state.steps() {
        let status = match &s.outcome {
            Some(Ok(_)) => "completed",
            Some(Err(_)) => "failed",
            None if s.open_attempt.is_some() => "running",
            None => "waiting",
        };
        if s.outcome.is_none() {
            current = Some(s.label.clone());
        }
        let duration = match (started.get(step), ended.get(step)) {
            (Some(a), Some(b)) => Some((*b - *a).num_milliseconds() as f64 / 1000.0),
            _ => None,
        };
        steps.push(serde_json::json!({
            "step": step.to_string(),
            "group": groups.get(step).and_then(|g| titles.get(*g)),
            "label": s.label,
            "activity": s.activity,
            "status": status,
            "attempts": s.attempts_started,
            "failures": s.failures,
            "duration_s": duration,
            "error": s.outcome.as_ref().and_then(|o| o.as_ref().err()),
        }));
    }
    let outcome = match &state.status {
        RunStatus::Completed(p) => Some(p.0.clone()),
        RunStatus::Failed(e) | RunStatus::Cancelled(e) => Some(e.clone()),
        RunStatus::Compensating { reason, .. } => Some(reason.clone()),
        RunStatus::Suspended(r) => Some(format!("{r:?}")),
        RunStatus::Running => None,
        RunStatus::Refused(r) => Some(r.join("; ")),
    };
    serde_json::json!({
        "run": state.run.to_string(),
        "workflow": state.workflow,
        "version": state.version,
        "state": state_name(state),
        "reason": state_reason(state),
        "started_by": state.started_by,
        "started_at": state.started_at.to_rfc3339(),
        "updated_at": state.updated_at.to_rfc3339(),
        "duration_s": (state.updated_at - state.started_at).num_milliseconds() as f64 / 1000.0,
        "paused": state.paused,
        "current_step": current,
        "outcome": outcome,
        "events": state.events,
        "groups": titles,
        "steps": steps,
    })
}

fn system_of(activity: &str) -> &'static str {
    match activity.split('.').next() {
        Some("k8s") => "K8s",
        Some("ssh") => "Nodes",
        Some("yb") => "YB",
        Some("elb") => "ELB",
        _ => "Other",
    }
}

/// A Mermaid sequence diagram of the systems a run touched, like the original runbook's picture.
pub fn mermaid<'a>(events: impl Iterator<Item = &'a Event> + Clone) -> String {
    let mut out = String::from("sequenceDiagram\n    autonumber\n    participant W as Waymark\n");
    let participants = [
        ("ELB", "AWS ELBv2"),
        ("K8s", "Kubernetes"),
        ("Nodes", "yb nodes (SSH/systemd)"),
        ("YB", "yb-master API"),
        ("Other", "other"),
    ];
    let mut systems: BTreeMap<StepRef, (&'static str, String)> = BTreeMap::new();
    let used: std::collections::BTreeSet<&str> = events
        .clone()
        .filter_map(|e| match e {
            Event::StepScheduled { activity, .. } => Some(system_of(activity)),
            _ => None,
        })
        .collect();
    for (id, name) in participants {
        if used.contains(id) {
            let _ = writeln!(out, "    participant {id} as {name}");
        }
    }
    let clean = |s: &str| s.replace([';', '#', '\n'], " ");
    for e in events {
        match e {
            Event::RunStarted {
                workflow,
                started_by,
                ..
            } => {
                let _ = writeln!(
                    out,
                    "    Note over W: {} started by {}",
                    clean(workflow),
                    clean(started_by)
                );
            }
            Event::StepScheduled {
                step,
                activity,
                label,
                ..
            } => {
                let sys = system_of(activity);
                systems.insert(*step, (sys, label.clone()));
                let _ = writeln!(out, "    W->>{sys}: {}", clean(label));
            }
            Event::AttemptFailed {
                step,
                attempt,
                error,
                ..
            } => {
                if let Some((sys, _)) = systems.get(step) {
                    let e: String = clean(error).chars().take(80).collect();
                    let _ = writeln!(out, "    {sys}--xW: attempt {attempt} failed: {e}");
                }
            }
            Event::StepCompleted { step, .. } => {
                if let Some((sys, _)) = systems.get(step) {
                    let _ = writeln!(out, "    {sys}-->>W: ok");
                }
            }
            Event::CompensationStarted { reason, .. } => {
                let e: String = clean(reason).chars().take(80).collect();
                let _ = writeln!(out, "    Note over W: compensating: {e}");
            }
            Event::RunCompleted { .. } => out.push_str("    Note over W: completed\n"),
            Event::RunFailed { .. } => out.push_str("    Note over W: failed (compensated)\n"),
            Event::RunCancelled { .. } => {
                out.push_str("    Note over W: cancelled (compensated)\n");
            }
            Event::RunRefused { .. } => {
                out.push_str("    Note over W: refused (nothing changed)\n");
            }
            _ => {}
        }
    }
    out
}

/// The exit status for how a run ended: success only when it completed.
pub fn outcome_status(outcome: &RunOutcome) -> ExitStatus {
    ExitStatus::success_if(matches!(outcome, RunOutcome::Completed(_)))
}

/// One line for how a run ended.
pub fn outcome_line(run: RunId, outcome: &RunOutcome) -> String {
    match outcome {
        RunOutcome::Completed(out) => format!("run {run} completed: {out}"),
        RunOutcome::Failed(e) => format!("run {run} FAILED (compensations ran): {e}"),
        RunOutcome::Cancelled(e) => format!("run {run} CANCELLED (compensations ran): {e}"),
        RunOutcome::Refused(reasons) => format!(
            "run {run} REFUSED before changing anything (no compensation needed, the cluster is \
             free): {}",
            reasons.join("; ")
        ),
        RunOutcome::Suspended(r) => format!(
            "run {run} SUSPENDED: the workflow code no longer matches its history: {r:?}; \
             `waymark replay {run}` shows the divergence"
        ),
        RunOutcome::Stopped(why) => {
            format!("run {run} stopped unfinished ({why}); `waymark resume {run}` continues it")
        }
    }
}

/// A replay report as the CLI prints it (and the daemon sends it).
pub fn replay_json(r: &ReplayReport) -> serde_json::Value {
    let (deterministic, verdict, recorded, new) = match &r.verdict {
        ReplayVerdict::Deterministic => (
            true,
            "deterministic: the code reproduces every recorded step and the outcome".to_owned(),
            None,
            None,
        ),
        ReplayVerdict::InProgress { next } => (
            true,
            format!("deterministic so far (the run is unfinished); next it would: {next}"),
            None,
            None,
        ),
        ReplayVerdict::Diverged(SuspendReason::Nondeterminism {
            position,
            recorded,
            new,
        }) => (
            false,
            format!("NOT deterministic at command {position}:"),
            Some(recorded.clone()),
            Some(new.clone()),
        ),
        ReplayVerdict::Diverged(reason @ SuspendReason::WorkflowPanicked { .. }) => {
            (false, reason.to_string(), None, None)
        }
        ReplayVerdict::OutcomeDiffers { recorded, replayed } => (
            false,
            "NOT deterministic: the outcome differs".to_owned(),
            Some(recorded.clone()),
            Some(replayed.clone()),
        ),
    };
    serde_json::json!({
        "run": r.run.to_string(), "workflow": r.workflow, "version": r.version, "events": r.events,
        "positions": r.positions, "deterministic": deterministic, "verdict": verdict,
        "recorded": recorded, "new": new,
    })
}
