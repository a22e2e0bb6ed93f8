//! The events a run's history is made of, and the identifiers they use.
//!
//! Everything the engine knows about a run is one of these events, appended in order to the run's
//! log. Payloads (workflow and activity inputs and outputs) are kept as JSON text so that a history
//! is readable by an operator without the workflow's types; the envelope is encoded by
//! [`crate::codec`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one run of a workflow. UUID v7, so that ids sort by start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A new, time-ordered run id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The 16 bytes used in storage keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RunId)
    }
}

/// A JSON document carried by an event (an input or an output).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub String);

impl Payload {
    /// Serialises a value to its payload form.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Payload)
    }

    /// Reads a payload back into a typed value.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The `null` payload, for steps and workflows that return nothing.
    pub fn null() -> Self {
        Payload("null".to_owned())
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which step an attempt or a result belongs to.
///
/// Workflow steps are identified by their position in the workflow's sequence of commands, so that
/// replay can match them; compensation steps by their index in the compensation plan (the
/// registered compensations, newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StepRef {
    /// The step issued at this command position by the workflow code.
    Workflow(u32),
    /// The n-th compensation run, in the order they run (reverse of registration).
    Compensation(u32),
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepRef::Workflow(p) => write!(f, "step {p}"),
            StepRef::Compensation(i) => write!(f, "compensation {i}"),
        }
    }
}

/// An activity to run if the run later has to be rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationSpec {
    /// Registered activity name.
    pub activity: String,
    /// Its input.
    pub input: Payload,
    /// What an operator sees, e.g. "traffic back to zone B".
    pub label: String,
}

/// A value the workflow asked for that must be the same on replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordedKind {
    /// `ctx.now()`: an RFC 3339 time.
    Now,
    /// `ctx.uuid()`: a UUID.
    Uuid,
    /// `ctx.note(text)`: a decision of the workflow worth journaling (e.g. an approval it
    /// ignored, naming who and why). Kept last so that stored records keep decoding.
    Note,
}

/// Why a run stopped making progress without finishing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuspendReason {
    /// Replaying the workflow code produced a different command than the history records.
    Nondeterminism {
        /// Command position where they differ.
        position: u32,
        /// What the history has at that position.
        recorded: String,
        /// What the workflow code asked for.
        new: String,
    },
    /// The workflow code panicked (a bug in the workflow, or a value it did not expect). The run
    /// waits for an operator: cancel it (its compensations run without the workflow code), or
    /// resume it with a fixed binary. Kept after `Nondeterminism` so stored records keep decoding.
    WorkflowPanicked {
        /// The panic message.
        message: String,
    },
}

impl fmt::Display for SuspendReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspendReason::Nondeterminism {
                position,
                recorded,
                new,
            } => write!(
                f,
                "non-determinism at command {position}: the history has {recorded}, the code asks for {new}"
            ),
            SuspendReason::WorkflowPanicked { message } => write!(
                f,
                "the workflow code panicked: {message}; cancel the run to compensate, or resume it with a fixed binary"
            ),
        }
    }
}

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The run was created.
    RunStarted {
        /// Registered workflow name.
        workflow: String,
        /// Version of the workflow code the run started with.
        version: u32,
        /// Workflow input.
        input: Payload,
        /// Operator or schedule that started it.
        started_by: String,
    },
    /// The workflow asked for an activity (or a compensation started).
    StepScheduled {
        /// Which step.
        step: StepRef,
        /// Registered activity name.
        activity: String,
        /// Human description of the step.
        label: String,
        /// Activity input.
        input: Payload,
        /// Compensation registered together with this step, if any.
        compensation: Option<CompensationSpec>,
    },
    /// An attempt of a step began; the activity is called after this is durable.
    AttemptStarted {
        /// Which step.
        step: StepRef,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// An attempt ended with an error.
    AttemptFailed {
        /// Which step.
        step: StepRef,
        /// Attempt number.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether the error allows another attempt.
        retryable: bool,
        /// When the next attempt may start; `None` when the step gives up.
        next_retry_at: Option<DateTime<Utc>>,
    },
    /// The engine found this attempt in flight when it started (the process had died).
    AttemptInterrupted {
        /// Which step.
        step: StepRef,
        /// Attempt number.
        attempt: u32,
    },
    /// A step finished successfully.
    StepCompleted {
        /// Which step.
        step: StepRef,
        /// Activity output.
        output: Payload,
    },
    /// A step gave up (retries exhausted or a non-retryable error).
    StepFailed {
        /// Which step.
        step: StepRef,
        /// The last error.
        error: String,
    },
    /// A durable timer began.
    TimerStarted {
        /// Command position.
        position: u32,
        /// Deadline, which survives restarts.
        fire_at: DateTime<Utc>,
    },
    /// A durable timer fired.
    TimerFired {
        /// Command position.
        position: u32,
    },
    /// A value that replay must reproduce (`now()`, `uuid()`).
    ValueRecorded {
        /// Command position.
        position: u32,
        /// What was asked for.
        kind: RecordedKind,
        /// The value, as text.
        value: String,
    },
    /// The workflow registered a compensation outside of a step.
    CompensationRegistered {
        /// Command position.
        position: u32,
        /// What to run.
        compensation: CompensationSpec,
    },
    /// A signal reached the run (approve, pause, resume, cancel, or a workflow-defined one).
    SignalReceived {
        /// Signal name.
        name: String,
        /// Optional data.
        payload: Payload,
        /// Operator that sent it.
        sent_by: String,
    },
    /// The workflow consumed a signal at a command position (`wait_for_signal`).
    SignalConsumed {
        /// Command position.
        position: u32,
        /// Signal name.
        name: String,
    },
    /// The run is rolling back: compensations run from here, newest first.
    CompensationStarted {
        /// Why.
        reason: String,
        /// Whether an operator cancelled the run (it ends as cancelled rather than failed).
        cancelled: bool,
    },
    /// The run could not go on without an operator (for instance, the code changed under it).
    RunSuspended {
        /// Why.
        reason: SuspendReason,
    },
    /// Finished successfully.
    RunCompleted {
        /// Workflow output.
        output: Payload,
    },
    /// Finished in failure, after compensation.
    RunFailed {
        /// The failure that started the rollback.
        error: String,
    },
    /// Finished because an operator cancelled it, after compensation.
    RunCancelled {
        /// Who cancelled and why.
        reason: String,
    },
    /// An operator resolved a run that ended with its compensation incomplete (it held its
    /// cluster until now). Only allowed after the run's terminal event; keep this variant last so
    /// that stored records keep decoding.
    RunResolved {
        /// Operator who resolved it.
        by: String,
        /// What the operator did or checked.
        note: String,
    },
    /// Finished before it changed anything: the workflow refused to go on (a failed pre-flight,
    /// an approval that timed out). No compensation ran; the cluster is free. Kept after
    /// `RunResolved` so that stored records keep decoding.
    RunRefused {
        /// Why, one line per failed check.
        reasons: Vec<String>,
    },
    /// The workflow began to wait for a signal with a deadline (`wait_for_signal_until`); ended
    /// by `SignalConsumed` at the same position or by `SignalWaitTimedOut`. Kept after
    /// `RunRefused` so that stored records keep decoding.
    SignalWaitStarted {
        /// Command position.
        position: u32,
        /// Signal name.
        name: String,
        /// When the wait gives up; survives restarts.
        deadline: DateTime<Utc>,
    },
    /// A wait for a signal reached its deadline with no signal of its name.
    SignalWaitTimedOut {
        /// Command position.
        position: u32,
    },
}

impl Event {
    /// A short name for listings ("`StepScheduled`", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "RunStarted",
            Event::StepScheduled { .. } => "StepScheduled",
            Event::AttemptStarted { .. } => "AttemptStarted",
            Event::AttemptFailed { .. } => "AttemptFailed",
            Event::AttemptInterrupted { .. } => "AttemptInterrupted",
            Event::StepCompleted { .. } => "StepCompleted",
            Event::StepFailed { .. } => "StepFailed",
            Event::TimerStarted { .. } => "TimerStarted",
            Event::TimerFired { .. } => "TimerFired",
            Event::ValueRecorded { .. } => "ValueRecorded",
            Event::CompensationRegistered { .. } => "CompensationRegistered",
            Event::SignalReceived { .. } => "SignalReceived",
            Event::SignalConsumed { .. } => "SignalConsumed",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::RunSuspended { .. } => "RunSuspended",
            Event::RunCompleted { .. } => "RunCompleted",
            Event::RunFailed { .. } => "RunFailed",
            Event::RunCancelled { .. } => "RunCancelled",
            Event::RunResolved { .. } => "RunResolved",
            Event::RunRefused { .. } => "RunRefused",
            Event::SignalWaitStarted { .. } => "SignalWaitStarted",
            Event::SignalWaitTimedOut { .. } => "SignalWaitTimedOut",
        }
    }

    /// Whether this event ends the run (a run whose last event is one of these is not open).
    /// `RunResolved` comes after the terminal event of a run that needed an operator, and closes
    /// it again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::RunCompleted { .. }
                | Event::RunFailed { .. }
                | Event::RunCancelled { .. }
                | Event::RunResolved { .. }
                | Event::RunRefused { .. }
        )
    }
}

/// An event as stored: its place in the run's history, when it was written, and the hash chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The run.
    pub run: RunId,
    /// 0-based position in the run's history.
    pub seq: u64,
    /// Wall-clock time the writer stamped it with (informational; never used for decisions on replay).
    pub at: DateTime<Utc>,
    /// SHA-256 of the previous record of the run (all zeroes for the first).
    pub prev_hash: [u8; 32],
    /// SHA-256 over `prev_hash` and this record's encoded body.
    pub hash: [u8; 32],
    /// The event.
    pub event: Event,
}
