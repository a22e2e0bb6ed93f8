//! The transitions an operator is told about, read from a run's history (pure: records in,
//! transitions out), and the payloads a webhook receives for them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use waymark_engine::core::RunState;
use waymark_engine::event::{Event, Record};
use waymark_engine::RunId;

use super::spec::Format;

/// What happened to a run that someone should hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The run waits for an operator's `approve` (`gates.require_approval`).
    ApprovalNeeded,
    /// A step failed for good (or the run failed): the compensation starts.
    Failed,
    /// The run ended failed or cancelled, its compensation complete: the estate is back.
    Compensated,
    /// The run ended with its compensation incomplete: the estate is unknown and the cluster
    /// stays locked until `waymark resolve`.
    NeedsOperator,
    /// The run stopped because its code no longer matches its history (or panicked).
    Suspended,
    /// The run ended before changing anything (pre-flight failed, approval timed out).
    Refused,
    /// The run completed.
    Completed,
}

impl Kind {
    /// The name in payloads and keys (`approval-needed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApprovalNeeded => "approval-needed",
            Kind::Failed => "failed",
            Kind::Compensated => "compensated",
            Kind::NeedsOperator => "needs-operator",
            Kind::Suspended => "suspended",
            Kind::Refused => "refused",
            Kind::Completed => "completed",
        }
    }
}

/// One transition of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The run.
    pub run: RunId,
    /// The event that made it (its sequence number); with the kind, it names the transition.
    pub seq: u64,
    /// When that event was written.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: Kind,
    /// Why, or the outcome (from the history: no secret is journaled there).
    pub detail: String,
}

impl Transition {
    /// The key that names this transition forever: `RUN/SEQ/KIND`. Sent to receivers as the
    /// `Idempotency-Key` header and the `idempotency_key` field, so a receiver can drop the
    /// rare duplicate (see the module documentation of [`crate::notify`]).
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.run, self.seq, self.kind.as_str())
    }
}

/// Every transition in `records` (a run's history, from its `RunStarted`), in order.
///
/// - `approval-needed`: the first timer of a run whose input has `gates.require_approval`,
///   before any `approve` was taken (the approval's timeout timer is the workflow's first
///   timer: it races the signal wait, which journals nothing until a signal is taken);
/// - `failed`: `CompensationStarted` of a failure (not a cancel), or a `RunFailed` without one;
/// - `compensated` / `needs-operator`: `RunFailed` or `RunCancelled`, by whether every
///   compensation of the plan completed;
/// - `suspended`, `refused`, `completed`: their terminal events.
pub fn transitions(records: &[Record]) -> Vec<Transition> {
    let Some(first) = records.first() else {
        return Vec::new();
    };
    let (run, require_approval) = match &first.event {
        Event::RunStarted { input, .. } => (
            first.run,
            serde_json::from_str::<serde_json::Value>(&input.0)
                .ok()
                .and_then(|v| v["gates"]["require_approval"].as_bool())
                .unwrap_or(false),
        ),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut approval_settled = !require_approval;
    let mut failed_told = false;
    for (i, r) in records.iter().enumerate() {
        let mut push = |kind: Kind, detail: String| {
            out.push(Transition {
                run,
                seq: r.seq,
                at: r.at,
                kind,
                detail,
            });
        };
        match &r.event {
            Event::SignalConsumed { name, .. } if name == "approve" => approval_settled = true,
            Event::SignalWaitStarted { name, .. } if name != "approve" => {}
            Event::TimerStarted { fire_at, .. }
            | Event::SignalWaitStarted {
                deadline: fire_at, ..
            } if !approval_settled => {
                approval_settled = true;
                push(
                    Kind::ApprovalNeeded,
                    format!(
                        "waiting for an operator's approval until {} (`waymark signal {run} approve`)",
                        fire_at.to_rfc3339()
                    ),
                );
            }
            Event::CompensationStarted {
                reason,
                cancelled: false,
            } => {
                failed_told = true;
                push(Kind::Failed, format!("compensating: {reason}"));
            }
            Event::RunFailed { error } => {
                if !failed_told {
                    failed_told = true;
                    push(Kind::Failed, error.clone());
                }
                let kind = ended_kind(&records[..=i]);
                push(kind, error.clone());
            }
            Event::RunCancelled { reason } => {
                let kind = ended_kind(&records[..=i]);
                push(kind, format!("cancelled: {reason}"));
            }
            Event::RunSuspended { reason } => push(Kind::Suspended, reason.to_string()),
            Event::RunRefused { reasons } => push(Kind::Refused, reasons.join("; ")),
            Event::RunCompleted { .. } => push(Kind::Completed, "completed".to_owned()),
            _ => {}
        }
    }
    out
}

fn ended_kind(history: &[Record]) -> Kind {
    match RunState::from_records(history) {
        Ok(st) if st.needs_operator() => Kind::NeedsOperator,
        // A history that does not fold was read whole a moment ago; say the worse.
        Err(_) => Kind::NeedsOperator,
        Ok(_) => Kind::Compensated,
    }
}

/// What a run is, for a payload: read from its `RunStarted`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunFacts {
    /// Workflow name.
    pub workflow: String,
    /// The inventory's cluster name, if the input has one.
    pub cluster: Option<String>,
    /// Who started it.
    pub started_by: String,
}

impl RunFacts {
    /// From a run's first record.
    pub fn of(records: &[Record]) -> RunFacts {
        match records.first().map(|r| &r.event) {
            Some(Event::RunStarted {
                workflow,
                input,
                started_by,
                ..
            }) => RunFacts {
                workflow: workflow.clone(),
                cluster: serde_json::from_str::<serde_json::Value>(&input.0)
                    .ok()
                    .and_then(|v| v["cluster"]["name"].as_str().map(str::to_owned)),
                started_by: started_by.clone(),
            },
            _ => RunFacts::default(),
        }
    }
}

/// The longest detail a payload carries (a history's error may be long; the whole is in
/// `waymark show`). Cut at a character boundary, marked with an ellipsis.
const MAX_DETAIL: usize = 1500;

fn short(text: &str) -> String {
    if text.chars().count() <= MAX_DETAIL {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(MAX_DETAIL).collect();
    s.push_str(" …");
    s
}

/// The JSON body a webhook of `format` receives for `t`.
pub fn payload(format: Format, t: &Transition, facts: &RunFacts) -> serde_json::Value {
    let cluster = facts.cluster.as_deref().unwrap_or("?");
    let headline = match t.kind {
        Kind::ApprovalNeeded => "needs approval",
        Kind::Failed => "FAILED: compensating",
        Kind::Compensated => "ended, compensated (estate restored)",
        Kind::NeedsOperator => "NEEDS AN OPERATOR: compensation incomplete, cluster locked",
        Kind::Suspended => "SUSPENDED: needs an operator",
        Kind::Refused => "refused (nothing changed)",
        Kind::Completed => "completed",
    };
    let detail = short(&t.detail);
    match format {
        Format::Json => serde_json::json!({
            "idempotency_key": t.key(),
            "transition": t.kind.as_str(),
            "run": t.run.to_string(),
            "seq": t.seq,
            "at": t.at.to_rfc3339(),
            "workflow": facts.workflow,
            "cluster": facts.cluster,
            "started_by": facts.started_by,
            "summary": format!("{} on {cluster}: run {} {headline}", facts.workflow, t.run),
            "detail": detail,
        }),
        Format::Slack => {
            let text = format!(
                "*{}* on *{cluster}*: run `{}` {headline}",
                facts.workflow, t.run
            );
            serde_json::json!({
                "text": format!("{text}\n{detail}"),
                "blocks": [
                    { "type": "section", "text": { "type": "mrkdwn", "text": text } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": detail } },
                    { "type": "context", "elements": [
                        { "type": "mrkdwn", "text": format!("{} · started by {} · `waymark show {}`", t.at.to_rfc3339(), facts.started_by, t.run) }
                    ] }
                ],
            })
        }
    }
}
