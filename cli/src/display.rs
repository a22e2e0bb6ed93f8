//! How runs look to an operator: one line per event, the live follow loop with progress, the
//! run summary, and the Mermaid sequence diagram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use waymark_engine::core::{RunState, RunStatus};
use waymark_engine::event::{Event, Record, StepRef};
use waymark_engine::{Engine, RunId, RunOutcome};

/// Step labels seen so far in a history (for lines about attempts and results).
#[derive(Default)]
pub struct Labels(BTreeMap<StepRef, String>);

impl Labels {
    fn get(&self, s: StepRef) -> String {
        self.0.get(&s).cloned().unwrap_or_else(|| s.to_string())
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
            let out = output.0.chars().take(120).collect::<String>();
            format!("{}: completed -> {out}", labels.get(*step))
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
    };
    format!("{} #{:<4} {what}", at.format("%H:%M:%S%.3f"), seq)
}

/// Prints one line of a follow stream (events and throttled progress to stderr). Returns the
/// end line's outcome and exit code when the stream ends.
pub struct Printer {
    labels: Labels,
    last_progress: Instant,
}

impl Default for Printer {
    fn default() -> Self {
        Printer {
            labels: Labels::default(),
            last_progress: Instant::now()
                .checked_sub(Duration::from_secs(10))
                .unwrap_or_else(Instant::now),
        }
    }
}

impl Printer {
    /// Prints `line`; returns `(outcome line, exit code)` at the end of the stream.
    pub fn print(&mut self, line: crate::api::FollowLine) -> Option<(String, u8)> {
        match line {
            crate::api::FollowLine::Event(r) => {
                eprintln!("{}", self::line(r.seq, r.at, &r.event, &mut self.labels));
            }
            crate::api::FollowLine::Progress { label, message } => {
                if self.last_progress.elapsed() >= Duration::from_millis(900) {
                    eprintln!("             ... {label}: {message}");
                    self.last_progress = Instant::now();
                }
            }
            crate::api::FollowLine::End { outcome, code } => return Some((outcome, code)),
        }
        None
    }
}

/// Prints a run's history so far, then its new events and progress live, until it stops or the
/// operator presses Ctrl-C (the run then stays unfinished; `waymark resume` continues it).
pub async fn follow(engine: &Engine, run: RunId) -> anyhow::Result<RunOutcome> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let producer = crate::api::follow_lines(engine, run, tx);
    tokio::pin!(producer);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printer = Printer::default();
    loop {
        tokio::select! {
            outcome = &mut producer => {
                while let Ok(line) = rx.try_recv() {
                    printer.print(line);
                }
                return Ok(outcome?.unwrap_or(RunOutcome::Stopped("the follower stopped".into())));
            }
            Some(line) = rx.recv() => {
                printer.print(line);
            }
            _ = &mut ctrl_c => {
                eprintln!("interrupted: run {run} stays unfinished where it stands; `waymark resume {run}` continues it");
                engine.shutdown().await;
                return Ok(RunOutcome::Stopped("interrupted by the operator".into()));
            }
        }
    }
}

/// The run summary for `show`.
pub fn summary(state: &RunState, records: &[Record]) -> serde_json::Value {
    let mut steps = Vec::new();
    let mut started: BTreeMap<StepRef, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    let mut ended: BTreeMap<StepRef, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for r in records {
        match &r.event {
            Event::StepScheduled { step, .. } => {
                started.insert(*step, r.at);
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
    };
    serde_json::json!({
        "run": state.run.to_string(),
        "workflow": state.workflow,
        "version": state.version,
        "state": state.status.name(),
        "started_by": state.started_by,
        "started_at": state.started_at.to_rfc3339(),
        "updated_at": state.updated_at.to_rfc3339(),
        "duration_s": (state.updated_at - state.started_at).num_milliseconds() as f64 / 1000.0,
        "paused": state.paused,
        "current_step": current,
        "outcome": outcome,
        "events": state.events,
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
pub fn mermaid_rows(rows: &[crate::api::EventRow]) -> String {
    mermaid(rows.iter().map(|r| &r.event))
}

fn mermaid<'a>(events: impl Iterator<Item = &'a Event> + Clone) -> String {
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
            _ => {}
        }
    }
    out
}
