//! The deterministic core: folds a run's recorded events into its state and decides what each
//! request of the workflow code means against that history.
//!
//! No IO, no clock, no randomness: every input arrives as an argument. The driver
//! ([`crate::runtime`]) owns the IO and asks this module what to do; the unit tests feed it canned
//! histories directly.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::{
    CompensationSpec, Event, Payload, Record, RecordedKind, RunId, StepRef, SuspendReason,
};
use crate::retry::RetryPolicy;

/// A history that the core cannot make sense of.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An event refers to something the history never introduced, or comes in an impossible order.
    #[error("run {run}, event #{seq}: invalid history: {detail}")]
    InvalidHistory {
        /// The run.
        run: RunId,
        /// The offending event.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

/// Where a run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    /// The workflow code is (or should be) running.
    Running,
    /// Compensations are running.
    Compensating {
        /// Why the run is rolling back.
        reason: String,
        /// Whether it was cancelled by an operator.
        cancelled: bool,
    },
    /// Stopped for an operator (non-determinism).
    Suspended(SuspendReason),
    /// Finished successfully.
    Completed(Payload),
    /// Finished in failure.
    Failed(String),
    /// Finished by cancellation.
    Cancelled(String),
    /// Finished before it changed anything: the workflow refused (failed pre-flight, approval
    /// timed out); no compensation ran and the cluster is free.
    Refused(Vec<String>),
}

impl RunStatus {
    /// A short name: running, compensating, suspended, completed, failed, cancelled, refused.
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Compensating { .. } => "compensating",
            RunStatus::Suspended(_) => "suspended",
            RunStatus::Completed(_) => "completed",
            RunStatus::Failed(_) => "failed",
            RunStatus::Cancelled(_) => "cancelled",
            RunStatus::Refused(_) => "refused",
        }
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunStatus::Completed(_)
                | RunStatus::Failed(_)
                | RunStatus::Cancelled(_)
                | RunStatus::Refused(_)
        )
    }
}

impl std::fmt::Display for RunStatus {
    /// The name, then what it carries: `refused: zone B has no healthy target; ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        match self {
            RunStatus::Running => Ok(()),
            RunStatus::Compensating { reason, .. } => write!(f, ": {reason}"),
            RunStatus::Suspended(r) => write!(f, ": {r}"),
            RunStatus::Completed(p) => write!(f, ": {p}"),
            RunStatus::Failed(e) | RunStatus::Cancelled(e) => write!(f, ": {e}"),
            RunStatus::Refused(reasons) => write!(f, ": {}", reasons.join("; ")),
        }
    }
}

/// What the history holds at one command position.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// An activity step.
    Step {
        /// Activity name.
        activity: String,
        /// Its input.
        input: Payload,
    },
    /// A durable timer.
    Timer {
        /// Deadline.
        fire_at: DateTime<Utc>,
        /// Whether it fired.
        fired: bool,
    },
    /// A recorded value.
    Value {
        /// Which kind.
        kind: RecordedKind,
        /// The value.
        value: String,
    },
    /// A compensation registered on its own.
    Compensation(CompensationSpec),
    /// A consumed signal: the `index`-th of that name.
    Signal {
        /// Signal name.
        name: String,
        /// Which one of that name (0-based).
        index: usize,
    },
}

impl Entry {
    /// One line for the side-by-side non-determinism report.
    pub fn describe(&self) -> String {
        match self {
            Entry::Step { activity, input } => format!("step {activity}({input})"),
            Entry::Timer { fire_at, .. } => format!("sleep until {}", fire_at.to_rfc3339()),
            Entry::Value { kind, .. } => format!("{kind:?}()").to_lowercase(),
            Entry::Compensation(c) => format!("register compensation {}({})", c.activity, c.input),
            Entry::Signal { name, .. } => format!("wait for signal {name:?}"),
        }
    }
}

/// A step's recorded progress.
#[derive(Clone, Debug, PartialEq)]
pub struct StepState {
    /// Activity name.
    pub activity: String,
    /// Description.
    pub label: String,
    /// Input.
    pub input: Payload,
    /// Compensation registered with the step.
    pub compensation: Option<CompensationSpec>,
    /// When it was first scheduled (writer's clock).
    pub scheduled_at: DateTime<Utc>,
    /// Highest attempt number started.
    pub attempts_started: u32,
    /// Attempts that ended in a recorded failure (interrupted ones do not count).
    pub failures: u32,
    /// An attempt started with no recorded end: in flight, or interrupted by a crash.
    pub open_attempt: Option<u32>,
    /// When the next attempt may start.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Final outcome, once there is one.
    pub outcome: Option<Result<Payload, String>>,
    /// The workflow code stopped waiting for this step before it ended (a `join` that failed on a
    /// sibling, a `select`): its `StepFailed` error starts with [`ABANDONED`]. Re-executed code
    /// never gets a result for it (it stays pending, as it did when the run went on without it).
    pub abandoned: bool,
}

/// How the `StepFailed` of a step the workflow code stopped waiting for begins.
pub const ABANDONED: &str = "abandoned: the workflow code stopped waiting for this step";

/// What to do for a step the workflow (or the compensation plan) asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum StepDecision {
    /// The history has its outcome: return it without calling the activity.
    Replay(Result<Payload, String>),
    /// The history records that the code stopped waiting for this step: it never resolves.
    Abandoned,
    /// Call the activity.
    Run {
        /// Whether `StepScheduled` must be appended first (a step new to the history).
        schedule: bool,
        /// The attempt number to start.
        attempt: u32,
        /// Failed attempts so far.
        failures: u32,
        /// Earliest start of that attempt (a journaled retry deadline).
        not_before: Option<DateTime<Utc>>,
        /// An attempt that was in flight when the previous process died, to record as interrupted.
        interrupted: Option<u32>,
    },
    /// The code asks for something else than the history has here.
    Nondeterminism(SuspendReason),
}

/// What to do for a durable timer.
#[derive(Clone, Debug, PartialEq)]
pub enum TimerDecision {
    /// Already fired.
    Fired,
    /// Started earlier: wait until the recorded deadline.
    WaitUntil(DateTime<Utc>),
    /// New: record `TimerStarted` with this deadline, then wait.
    Start(DateTime<Utc>),
    /// Diverges from the history.
    Nondeterminism(SuspendReason),
}

/// The result of a recorded-value request.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDecision {
    /// The history has it.
    Replay(String),
    /// Record this fresh value.
    Record(String),
    /// Diverges from the history.
    Nondeterminism(SuspendReason),
}

/// The result of a signal wait.
#[derive(Clone, Debug, PartialEq)]
pub enum SignalDecision {
    /// Consumed earlier at this position: return its payload.
    Replay(Payload),
    /// A signal is waiting: record its consumption at this position.
    Consume(Payload),
    /// None has arrived yet.
    Wait,
    /// Diverges from the history.
    Nondeterminism(SuspendReason),
}

/// How the workflow code returned, as the core needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub enum Returned {
    /// With this output.
    Completed(Payload),
    /// Refusing before any change, with these reasons.
    Refused(Vec<String>),
    /// With this error (a step that gave up, a workflow-defined failure, a cancellation).
    Failed(String),
}

/// What ends the workflow phase of a run (see [`RunState::on_workflow_returned`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// An operator holds the run: append nothing, wait for `resume` or `cancel`, ask again.
    Held,
    /// Append these events; then run the compensations, or stop (the run has ended).
    Append {
        /// What to append, in one group.
        events: Vec<Event>,
        /// Whether compensations follow (`CompensationStarted` is among the events).
        compensate: bool,
    },
}

/// What a run needs when the engine (re)starts it.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumeAction {
    /// Replay the workflow code from the start against the history.
    ReplayWorkflow,
    /// Run (the rest of) the compensation plan.
    Compensate,
    /// An operator cancelled a run that the workflow code cannot drive (it is suspended, or its
    /// version is not in this binary): close its open steps, then compensate, without the code.
    CancelWithoutCode,
    /// Nothing: it has ended.
    Finished,
}

/// A run's state folded from its history.
#[derive(Clone, Debug)]
pub struct RunState {
    /// The run.
    pub run: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Workflow version the run started with.
    pub version: u32,
    /// Workflow input.
    pub input: Payload,
    /// Who started it.
    pub started_by: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When the last event was written.
    pub updated_at: DateTime<Utc>,
    /// Status.
    pub status: RunStatus,
    /// Whether an operator paused it.
    pub paused: bool,
    /// Set while an operator holds the run (`hold` signal): who, and the reason they gave (empty
    /// when none). Lifted by `resume` or `cancel`.
    pub held: Option<(String, String)>,
    /// Set when a cancel signal arrived: who and why.
    pub cancel_requested: Option<String>,
    /// Events folded so far.
    pub events: u64,
    /// Set when an operator resolved the run (`RunResolved`): who, and their note.
    pub resolved: Option<(String, String)>,
    /// Whether the run went through compensation (`CompensationStarted`).
    compensation_started: bool,
    entries: BTreeMap<u32, Entry>,
    steps: BTreeMap<StepRef, StepState>,
    signals: HashMap<String, Vec<Payload>>,
    consumed: HashMap<String, usize>,
    compensations: Vec<(u32, CompensationSpec)>,
}

/// Signals the engine itself acts on; any other name is for the workflow to wait for.
///
/// `pause` and `hold` both stop the run before its next attempt; they differ in what else waits.
/// `pause` holds attempts only: a step that fails still starts the compensation
/// (`CompensationStarted` is written; its steps then wait for `resume`). `hold` stops the run
/// where it stands after the current step: no new step, no new attempt (workflow or
/// compensation), no `CompensationStarted` and no terminal event while it lasts, so a step that
/// fails under a hold has its failure journaled and the compensation waits. `resume` lifts
/// either; `cancel` lifts a hold and compensates.
pub mod signals {
    /// Hold before the next attempt until `resume`.
    pub const PAUSE: &str = "pause";
    /// Stop after the current step until `resume` or `cancel`: no new step or attempt, no
    /// compensation begins, the run does not end (its cluster stays held). The payload may carry
    /// a reason (a JSON string).
    pub const HOLD: &str = "hold";
    /// Lift a `pause` or a `hold`.
    pub const RESUME: &str = "resume";
    /// Stop the workflow and run its compensations (lifts a `hold`).
    pub const CANCEL: &str = "cancel";
    /// Approve a gate the workflow waits at.
    pub const APPROVE: &str = "approve";
}

/// `now + d`, saturating at the latest representable time instead of panicking (retry delays and
/// timers come from configuration and may be huge).
pub fn saturating_add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn nondeterminism(position: u32, recorded: &Entry, new: String) -> SuspendReason {
    SuspendReason::Nondeterminism {
        position,
        recorded: recorded.describe(),
        new,
    }
}

impl RunState {
    /// Folds a history (which must begin with `RunStarted`).
    pub fn from_records(records: &[Record]) -> Result<Self, Error> {
        let first = records.first().ok_or_else(|| Error::InvalidHistory {
            run: RunId(uuid::Uuid::nil()),
            seq: 0,
            detail: "empty history".into(),
        })?;
        let Event::RunStarted {
            workflow,
            version,
            input,
            started_by,
        } = &first.event
        else {
            return Err(Error::InvalidHistory {
                run: first.run,
                seq: first.seq,
                detail: format!("first event is {}, not RunStarted", first.event.kind()),
            });
        };
        let mut state = RunState {
            run: first.run,
            workflow: workflow.clone(),
            version: *version,
            input: input.clone(),
            started_by: started_by.clone(),
            started_at: first.at,
            updated_at: first.at,
            status: RunStatus::Running,
            paused: false,
            held: None,
            cancel_requested: None,
            events: 1,
            resolved: None,
            compensation_started: false,
            entries: BTreeMap::new(),
            steps: BTreeMap::new(),
            signals: HashMap::new(),
            consumed: HashMap::new(),
            compensations: Vec::new(),
        };
        for r in &records[1..] {
            state.apply(r)?;
        }
        Ok(state)
    }

    /// Folds one more event.
    #[allow(clippy::too_many_lines)]
    pub fn apply(&mut self, record: &Record) -> Result<(), Error> {
        let invalid = |detail: String| Error::InvalidHistory {
            run: record.run,
            seq: record.seq,
            detail,
        };
        self.events += 1;
        self.updated_at = record.at;
        match &record.event {
            Event::RunStarted { .. } => return Err(invalid("a second RunStarted".into())),
            Event::StepScheduled {
                step,
                activity,
                label,
                input,
                compensation,
            } => {
                if self.steps.contains_key(step) {
                    return Err(invalid(format!("{step} scheduled twice")));
                }
                if let StepRef::Workflow(pos) = step {
                    self.entries.insert(
                        *pos,
                        Entry::Step {
                            activity: activity.clone(),
                            input: input.clone(),
                        },
                    );
                    if let Some(c) = compensation {
                        self.compensations.push((*pos, c.clone()));
                    }
                }
                self.steps.insert(
                    *step,
                    StepState {
                        activity: activity.clone(),
                        label: label.clone(),
                        input: input.clone(),
                        compensation: compensation.clone(),
                        scheduled_at: record.at,
                        attempts_started: 0,
                        failures: 0,
                        open_attempt: None,
                        next_retry_at: None,
                        outcome: None,
                        abandoned: false,
                    },
                );
            }
            Event::AttemptStarted { step, attempt } => {
                let s = self
                    .step_mut(*step)
                    .ok_or_else(|| invalid(format!("attempt of unscheduled {step}")))?;
                s.attempts_started = s.attempts_started.max(*attempt);
                s.open_attempt = Some(*attempt);
            }
            Event::AttemptFailed {
                step,
                attempt,
                next_retry_at,
                error,
                ..
            } => {
                let s = self
                    .step_mut(*step)
                    .ok_or_else(|| invalid(format!("failure of unscheduled {step}")))?;
                s.failures += 1;
                if s.open_attempt == Some(*attempt) {
                    s.open_attempt = None;
                }
                s.next_retry_at = *next_retry_at;
                // No next attempt: the step gave up, even if the `StepFailed` written in the same
                // batch was lost in a crash.
                if next_retry_at.is_none() && s.outcome.is_none() {
                    s.outcome = Some(Err(error.clone()));
                }
            }
            Event::AttemptInterrupted { step, attempt } => {
                let s = self
                    .step_mut(*step)
                    .ok_or_else(|| invalid(format!("interruption of unscheduled {step}")))?;
                if s.open_attempt == Some(*attempt) {
                    s.open_attempt = None;
                }
            }
            Event::StepCompleted { step, output } => {
                let s = self
                    .step_mut(*step)
                    .ok_or_else(|| invalid(format!("completion of unscheduled {step}")))?;
                s.open_attempt = None;
                s.outcome = Some(Ok(output.clone()));
            }
            Event::StepFailed { step, error } => {
                let s = self
                    .step_mut(*step)
                    .ok_or_else(|| invalid(format!("failure of unscheduled {step}")))?;
                s.open_attempt = None;
                s.abandoned = error.starts_with(ABANDONED);
                s.outcome = Some(Err(error.clone()));
            }
            Event::TimerStarted { position, fire_at } => {
                self.entries.insert(
                    *position,
                    Entry::Timer {
                        fire_at: *fire_at,
                        fired: false,
                    },
                );
            }
            Event::TimerFired { position } => match self.entries.get_mut(position) {
                Some(Entry::Timer { fired, .. }) => *fired = true,
                _ => {
                    return Err(invalid(format!(
                        "timer at position {position} fired but never started"
                    )))
                }
            },
            Event::ValueRecorded {
                position,
                kind,
                value,
            } => {
                self.entries.insert(
                    *position,
                    Entry::Value {
                        kind: *kind,
                        value: value.clone(),
                    },
                );
            }
            Event::CompensationRegistered {
                position,
                compensation,
            } => {
                self.entries
                    .insert(*position, Entry::Compensation(compensation.clone()));
                self.compensations.push((*position, compensation.clone()));
            }
            Event::SignalReceived {
                name,
                payload,
                sent_by,
            } => match name.as_str() {
                signals::PAUSE => self.paused = true,
                signals::HOLD => {
                    let why = payload.decode::<String>().unwrap_or_default();
                    self.held = Some((sent_by.clone(), why));
                }
                signals::RESUME => {
                    self.paused = false;
                    self.held = None;
                }
                signals::CANCEL => {
                    self.held = None;
                    if self.cancel_requested.is_none() {
                        let why = payload.decode::<String>().unwrap_or_default();
                        self.cancel_requested = Some(if why.is_empty() {
                            format!("cancelled by {sent_by}")
                        } else {
                            format!("cancelled by {sent_by}: {why}")
                        });
                    }
                }
                _ => self
                    .signals
                    .entry(name.clone())
                    .or_default()
                    .push(payload.clone()),
            },
            Event::SignalConsumed { position, name } => {
                let index = self.consumed.entry(name.clone()).or_default();
                self.entries.insert(
                    *position,
                    Entry::Signal {
                        name: name.clone(),
                        index: *index,
                    },
                );
                *index += 1;
            }
            Event::CompensationStarted { reason, cancelled } => {
                self.compensation_started = true;
                self.status = RunStatus::Compensating {
                    reason: reason.clone(),
                    cancelled: *cancelled,
                };
            }
            Event::RunSuspended { reason } => {
                if !self.status.is_terminal() {
                    self.status = RunStatus::Suspended(reason.clone());
                }
            }
            Event::RunCompleted { output } => self.status = RunStatus::Completed(output.clone()),
            Event::RunFailed { error } => self.status = RunStatus::Failed(error.clone()),
            Event::RunCancelled { reason } => self.status = RunStatus::Cancelled(reason.clone()),
            Event::RunRefused { reasons } => self.status = RunStatus::Refused(reasons.clone()),
            Event::RunResolved { by, note } => {
                if !self.status.is_terminal() {
                    return Err(invalid(format!(
                        "RunResolved while the run is {}: only an ended run can be resolved",
                        self.status.name()
                    )));
                }
                self.resolved = Some((by.clone(), note.clone()));
            }
        }
        Ok(())
    }

    /// What closes the workflow steps the code left without a result when it returned (a `join`
    /// that failed on a sibling still in flight): `AttemptInterrupted` for an attempt in flight,
    /// then a `StepFailed` starting with [`ABANDONED`], so that the history explains every step
    /// and a replay of it is clean.
    pub fn abandonment_events(&self) -> Vec<Event> {
        self.close_open_steps(&|_| format!("{ABANDONED} (it returned without its result)"))
    }

    /// What cancels a run without its workflow code (suspended, or of a version this binary
    /// lacks): every workflow step without a result is closed (`AttemptInterrupted` for an attempt
    /// in flight, `StepFailed` with the cancel reason), then `CompensationStarted` (cancelled).
    /// `None` when no cancel was requested.
    pub fn cancel_without_code_events(&self) -> Option<Vec<Event>> {
        let why = self.cancel_requested.clone()?;
        let mut events = self.close_open_steps(&|_| why.clone());
        events.push(Event::CompensationStarted {
            reason: why,
            cancelled: true,
        });
        Some(events)
    }

    fn close_open_steps(&self, error: &dyn Fn(StepRef) -> String) -> Vec<Event> {
        let mut events = Vec::new();
        for (step, s) in &self.steps {
            if !matches!(step, StepRef::Workflow(_)) || s.outcome.is_some() {
                continue;
            }
            if let Some(attempt) = s.open_attempt {
                events.push(Event::AttemptInterrupted {
                    step: *step,
                    attempt,
                });
            }
            events.push(Event::StepFailed {
                step: *step,
                error: error(*step),
            });
        }
        events
    }

    /// Whether a new attempt (of a workflow step or a compensation) must wait: the run is paused
    /// or held.
    pub fn attempts_on_hold(&self) -> bool {
        self.paused || self.held.is_some()
    }

    /// What ends the workflow phase once the code has returned `returned`: the events to append
    /// (closing the steps the code left without a result first) and whether compensations follow.
    /// While an operator holds the run, nothing: [`Ending::Held`] (the driver waits for `resume`
    /// or `cancel`). A cancel requested while the code failed compensates as cancelled. A refusal
    /// with no compensation registered ends the run `RunRefused`; with some registered (a
    /// workflow bug: it vouched that nothing changed) it compensates as a failure.
    pub fn on_workflow_returned(&self, returned: &Returned) -> Ending {
        if self.held.is_some() {
            return Ending::Held;
        }
        let mut events = self.abandonment_events();
        let (last, compensate) = match (returned, &self.cancel_requested) {
            (Returned::Completed(output), _) => (
                Event::RunCompleted {
                    output: output.clone(),
                },
                false,
            ),
            (_, Some(why)) => (
                Event::CompensationStarted {
                    reason: why.clone(),
                    cancelled: true,
                },
                true,
            ),
            (Returned::Refused(reasons), None) if self.compensations.is_empty() => (
                Event::RunRefused {
                    reasons: reasons.clone(),
                },
                false,
            ),
            (Returned::Refused(reasons), None) => (
                Event::CompensationStarted {
                    reason: format!(
                        "refused ({}), but the workflow had registered {} compensation(s): \
                         a refusal must come before any change (a bug in the workflow); \
                         compensating as after a failure",
                        reasons.join("; "),
                        self.compensations.len()
                    ),
                    cancelled: false,
                },
                true,
            ),
            (Returned::Failed(error), None) => (
                Event::CompensationStarted {
                    reason: error.clone(),
                    cancelled: false,
                },
                true,
            ),
        };
        events.push(last);
        Ending::Append { events, compensate }
    }

    /// Whether the run ended with its compensation incomplete: it failed or was cancelled after
    /// compensating, and some compensation of the plan has no successful result (it failed, or
    /// never ran). The estate is then in an unknown, possibly half-switched state.
    pub fn compensation_incomplete(&self) -> bool {
        if !matches!(self.status, RunStatus::Failed(_) | RunStatus::Cancelled(_))
            || !self.compensation_started
        {
            return false;
        }
        (0..self.compensations.len()).any(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            !matches!(
                self.steps
                    .get(&StepRef::Compensation(i))
                    .and_then(|s| s.outcome.as_ref()),
                Some(Ok(_))
            )
        })
    }

    /// Whether the run holds its cluster until an operator resolves it: it ended with its
    /// compensation incomplete ("COMPENSATION INCOMPLETE") and has no `RunResolved`. This is the
    /// only terminal state that leaves the estate unknown (a suspended run has not ended and
    /// counts as unfinished anyway).
    pub fn needs_operator(&self) -> bool {
        self.resolved.is_none() && self.compensation_incomplete()
    }

    fn step_mut(&mut self, step: StepRef) -> Option<&mut StepState> {
        self.steps.get_mut(&step)
    }

    /// A step's recorded progress.
    pub fn step(&self, step: StepRef) -> Option<&StepState> {
        self.steps.get(&step)
    }

    /// Every step recorded, workflow steps by position then compensations.
    pub fn steps(&self) -> impl Iterator<Item = (&StepRef, &StepState)> {
        self.steps.iter()
    }

    /// What the history has at a command position.
    pub fn entry(&self, position: u32) -> Option<&Entry> {
        self.entries.get(&position)
    }

    /// One past the highest command position recorded.
    pub fn positions_recorded(&self) -> u32 {
        self.entries.keys().next_back().map_or(0, |p| p + 1)
    }

    /// What the engine must do with this run when it starts.
    pub fn resume_action(&self) -> ResumeAction {
        match self.status {
            RunStatus::Suspended(_) if self.cancel_requested.is_some() => {
                ResumeAction::CancelWithoutCode
            }
            RunStatus::Running | RunStatus::Suspended(_) => ResumeAction::ReplayWorkflow,
            RunStatus::Compensating { .. } => ResumeAction::Compensate,
            _ => ResumeAction::Finished,
        }
    }

    /// Decides a workflow step at `position`.
    pub fn decide_step(&self, position: u32, activity: &str, input: &Payload) -> StepDecision {
        match self.entries.get(&position) {
            None => StepDecision::Run {
                schedule: true,
                attempt: 1,
                failures: 0,
                not_before: None,
                interrupted: None,
            },
            Some(Entry::Step {
                activity: a,
                input: i,
            }) if a == activity && i == input => self.progress(StepRef::Workflow(position)),
            Some(other) => StepDecision::Nondeterminism(nondeterminism(
                position,
                other,
                format!("step {activity}({input})"),
            )),
        }
    }

    /// Decides compensation `index` of the plan.
    pub fn decide_compensation(&self, index: u32) -> StepDecision {
        if self.steps.contains_key(&StepRef::Compensation(index)) {
            self.progress(StepRef::Compensation(index))
        } else {
            StepDecision::Run {
                schedule: true,
                attempt: 1,
                failures: 0,
                not_before: None,
                interrupted: None,
            }
        }
    }

    fn progress(&self, step: StepRef) -> StepDecision {
        let s = &self.steps[&step];
        if s.abandoned {
            return StepDecision::Abandoned;
        }
        if let Some(outcome) = &s.outcome {
            return StepDecision::Replay(outcome.clone());
        }
        StepDecision::Run {
            schedule: false,
            attempt: s.attempts_started + 1,
            failures: s.failures,
            not_before: s.next_retry_at,
            interrupted: s.open_attempt,
        }
    }

    /// After a failed attempt: the time of the next attempt, or `None` to give up. `delay` is the
    /// (jittered) delay the driver drew from the policy; `now` the driver's clock.
    pub fn decide_retry(
        &self,
        step: StepRef,
        policy: &RetryPolicy,
        failures_after: u32,
        retryable: bool,
        now: DateTime<Utc>,
        delay: Duration,
    ) -> Option<DateTime<Utc>> {
        let scheduled_at = self.steps.get(&step).map_or(now, |s| s.scheduled_at);
        let elapsed = (now - scheduled_at).to_std().unwrap_or(Duration::ZERO);
        if policy.allows_another(failures_after, retryable, elapsed) {
            Some(saturating_add(now, delay))
        } else {
            None
        }
    }

    /// Decides a durable timer at `position`, of `duration` from `now`.
    pub fn decide_timer(
        &self,
        position: u32,
        duration: Duration,
        now: DateTime<Utc>,
    ) -> TimerDecision {
        match self.entries.get(&position) {
            None => TimerDecision::Start(saturating_add(now, duration)),
            Some(Entry::Timer { fired: true, .. }) => TimerDecision::Fired,
            Some(Entry::Timer { fire_at, .. }) => TimerDecision::WaitUntil(*fire_at),
            Some(other) => TimerDecision::Nondeterminism(nondeterminism(
                position,
                other,
                format!("sleep {duration:?}"),
            )),
        }
    }

    /// Decides a recorded value at `position`; `fresh` is what to record if the history has none.
    pub fn decide_value(
        &self,
        position: u32,
        kind: RecordedKind,
        fresh: impl FnOnce() -> String,
    ) -> ValueDecision {
        match self.entries.get(&position) {
            None => ValueDecision::Record(fresh()),
            Some(Entry::Value { kind: k, value }) if *k == kind => {
                ValueDecision::Replay(value.clone())
            }
            Some(other) => ValueDecision::Nondeterminism(nondeterminism(
                position,
                other,
                format!("{kind:?}()").to_lowercase(),
            )),
        }
    }

    /// Decides a compensation registration at `position`.
    pub fn decide_registration(
        &self,
        position: u32,
        spec: &CompensationSpec,
    ) -> Result<bool, SuspendReason> {
        match self.entries.get(&position) {
            None => Ok(true),
            Some(Entry::Compensation(c)) if c == spec => Ok(false),
            Some(other) => Err(nondeterminism(
                position,
                other,
                format!("register compensation {}({})", spec.activity, spec.input),
            )),
        }
    }

    /// Decides a wait for signal `name` at `position`.
    pub fn decide_signal(&self, position: u32, name: &str) -> SignalDecision {
        match self.entries.get(&position) {
            Some(Entry::Signal { name: n, index }) if n == name => {
                match self.signals.get(name).and_then(|v| v.get(*index)) {
                    Some(p) => SignalDecision::Replay(p.clone()),
                    None => SignalDecision::Nondeterminism(SuspendReason::Nondeterminism {
                        position,
                        recorded: format!("signal {name:?} #{index} consumed"),
                        new: "that signal is missing from the history".into(),
                    }),
                }
            }
            Some(other) => SignalDecision::Nondeterminism(nondeterminism(
                position,
                other,
                format!("wait for signal {name:?}"),
            )),
            None => {
                let consumed = self.consumed.get(name).copied().unwrap_or(0);
                match self.signals.get(name).and_then(|v| v.get(consumed)) {
                    Some(p) => SignalDecision::Consume(p.clone()),
                    None => SignalDecision::Wait,
                }
            }
        }
    }

    /// Compensations in the order they run: newest registration first. Fixed once the run starts
    /// compensating, because no new registration can happen after that.
    pub fn compensation_plan(&self) -> Vec<CompensationSpec> {
        let mut plan = self.compensations.clone();
        plan.sort_by_key(|(pos, _)| std::cmp::Reverse(*pos));
        plan.into_iter().map(|(_, c)| c).collect()
    }

    /// When the workflow code has returned after issuing `issued` commands: a history that holds
    /// more is a divergence (the code lost a step).
    pub fn check_finished(&self, issued: u32) -> Result<(), SuspendReason> {
        match self.entries.range(issued..).next() {
            None => Ok(()),
            Some((pos, e)) => Err(nondeterminism(*pos, e, "workflow returned".into())),
        }
    }
}
