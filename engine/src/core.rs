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
    /// A wait for a signal with a deadline.
    SignalWait {
        /// Signal name.
        name: String,
        /// When it gives up.
        deadline: DateTime<Utc>,
        /// How it ended: `Some(Some(index))` the `index`-th signal of that name was consumed,
        /// `Some(None)` it timed out, `None` still waiting.
        outcome: Option<Option<usize>>,
    },
}

impl Entry {
    /// What the code asked for at this position.
    pub fn command(&self) -> Command {
        match self {
            Entry::Step { activity, input } => Command::Step {
                activity: activity.clone(),
                input: input.clone(),
            },
            Entry::Timer { .. } => Command::Sleep,
            Entry::Value { kind, .. } => Command::Record(*kind),
            Entry::Compensation(c) => Command::RegisterCompensation(c.clone()),
            Entry::Signal { name, .. } => Command::WaitForSignal(name.clone()),
            Entry::SignalWait { name, .. } => Command::WaitForSignalUntil(name.clone()),
        }
    }

    /// One line for the side-by-side non-determinism report (the command's).
    pub fn describe(&self) -> String {
        self.command().describe()
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

/// What the workflow code asks for at a command position. The history records the same thing at
/// that position ([`Entry::command`]), so a divergence is reported as two [`Command::describe`]s
/// in the same words.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run a step: an activity with its input.
    Step {
        /// Activity name.
        activity: String,
        /// Its input.
        input: Payload,
    },
    /// A durable timer.
    Sleep,
    /// A value recorded once and replayed after (`now()`, `uuid()`).
    Record(RecordedKind),
    /// A compensation registered on its own.
    RegisterCompensation(CompensationSpec),
    /// Wait for (consume) a signal of this name.
    WaitForSignal(String),
    /// Wait for (consume) a signal of this name, or give up at a deadline.
    WaitForSignalUntil(String),
}

impl Command {
    /// One line for the side-by-side non-determinism report.
    pub fn describe(&self) -> String {
        match self {
            Command::Step { activity, input } => format!("step {activity}({input})"),
            Command::Sleep => "sleep (a durable timer)".to_owned(),
            Command::Record(kind) => format!("{kind:?}()").to_lowercase(),
            Command::RegisterCompensation(c) => {
                format!("register compensation {}({})", c.activity, c.input)
            }
            Command::WaitForSignal(name) => format!("wait for signal {name:?}"),
            Command::WaitForSignalUntil(name) => {
                format!("wait for signal {name:?} with a deadline")
            }
        }
    }
}

/// A step as the workflow code (or the compensation plan) asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSpec {
    /// Activity name.
    pub activity: String,
    /// What the operator sees.
    pub label: String,
    /// Activity input.
    pub input: Payload,
    /// Compensation registered with the step.
    pub compensation: Option<CompensationSpec>,
}

/// How one attempt of an activity ended, as the driver saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// It returned this output.
    Completed(Payload),
    /// It failed.
    Failed {
        /// The error.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// The run was cancelled while it ran (the attempt was dropped).
    Cancelled,
}

/// What the code (or the compensation plan) gets back from a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A step's outcome: its output, or its last error.
    Step(Result<Payload, String>),
    /// An operator cancelled the run while the code waited here (the reason).
    Cancelled(String),
    /// The history records that the code stopped waiting for this step: it never resolves.
    Never,
    /// The timer fired.
    TimerFired,
    /// A recorded value.
    Value(String),
    /// The compensation is registered.
    Registered,
    /// A signal's payload.
    Signal(Payload),
    /// The end of a wait with a deadline: the signal's payload and who sent it, or `None` when
    /// the deadline passed first.
    SignalUntil(Option<(Payload, String)>),
}

/// What the driver does once the events of a decision are appended.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Give this to the code. The events before it need not be durable yet: nothing of them has
    /// left the process (the next append that starts an activity, or ends the run, covers them).
    Answer(Answer),
    /// Call the activity (this attempt), once the events, which start it, are durable.
    RunAttempt {
        /// The attempt number.
        attempt: u32,
    },
    /// Wait until this time, or until the run's state changes, then ask again.
    WaitUntil(DateTime<Utc>),
    /// Wait until the run's state changes (an operator lifts a pause or hold, or cancels), then
    /// ask again.
    WaitWhileHeld,
    /// Wait until the run's state changes (a signal arrives), then ask again.
    WaitForSignal,
    /// Run the compensation plan.
    Compensate,
    /// The run has ended (or stopped for an operator) once the events are durable.
    Finish,
}

/// What the core decides for a request of the code, the end of an attempt, or the end of a phase
/// of the run. The driver appends what it is told and carries out the action; it builds no event.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The history has the answer: nothing to append.
    Replay(Answer),
    /// Append these events (possibly none), then do this.
    Append {
        /// Events, in order.
        events: Vec<Event>,
        /// What follows.
        then: Action,
    },
    /// The code diverged from its history: the run stops for an operator.
    Suspend(SuspendReason),
}

fn append(events: Vec<Event>, then: Action) -> Decision {
    Decision::Append { events, then }
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
    /// Each workflow-defined signal received, by name: its payload and who sent it.
    signals: HashMap<String, Vec<(Payload, String)>>,
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

fn nondeterminism(position: u32, recorded: &Entry, new: &Command) -> SuspendReason {
    SuspendReason::Nondeterminism {
        position,
        recorded: recorded.command().describe(),
        new: new.describe(),
    }
}

/// The first event of a run.
pub fn run_started(workflow: &str, version: u32, input: Payload, started_by: &str) -> Event {
    Event::RunStarted {
        workflow: workflow.to_owned(),
        version,
        input,
        started_by: started_by.to_owned(),
    }
}

/// A signal that reached a run.
pub fn signal_received(name: &str, payload: Payload, sent_by: &str) -> Event {
    Event::SignalReceived {
        name: name.to_owned(),
        payload,
        sent_by: sent_by.to_owned(),
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
    pub fn apply(&mut self, record: &Record) -> Result<(), Error> {
        self.fold(record.run, record.seq, record.at, &record.event)
    }

    /// Folds an event the core has just decided, before the log has stored it (the driver
    /// decides the next request on everything decided so far); `at` is the driver's clock. Its
    /// record, once durable, is passed to [`Self::confirm`].
    pub fn apply_decided(&mut self, at: DateTime<Utc>, event: &Event) -> Result<(), Error> {
        self.fold(self.run, self.events, at, event)
    }

    /// A record of an event folded earlier by [`Self::apply_decided`] is durable: the times
    /// become the log's (a step's `scheduled_at` is the one a resumed run will read).
    pub fn confirm(&mut self, record: &Record) {
        self.updated_at = self.updated_at.max(record.at);
        if let Event::StepScheduled { step, .. } = &record.event {
            if let Some(s) = self.steps.get_mut(step) {
                s.scheduled_at = record.at;
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    fn fold(
        &mut self,
        run: RunId,
        seq: u64,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<(), Error> {
        let invalid = |detail: String| Error::InvalidHistory { run, seq, detail };
        self.events += 1;
        self.updated_at = at;
        match event {
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
                        scheduled_at: at,
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
                    .push((payload.clone(), sent_by.clone())),
            },
            Event::SignalConsumed { position, name } => {
                let index = self.consumed.entry(name.clone()).or_default();
                match self.entries.get_mut(position) {
                    Some(Entry::SignalWait {
                        name: waited,
                        outcome,
                        ..
                    }) => {
                        if waited != name || outcome.is_some() {
                            return Err(invalid(format!(
                                "signal {name:?} consumed at position {position}, whose wait for {waited:?} was already ended or is for another signal"
                            )));
                        }
                        *outcome = Some(Some(*index));
                    }
                    _ => {
                        self.entries.insert(
                            *position,
                            Entry::Signal {
                                name: name.clone(),
                                index: *index,
                            },
                        );
                    }
                }
                *index += 1;
            }
            Event::SignalWaitStarted {
                position,
                name,
                deadline,
            } => {
                self.entries.insert(
                    *position,
                    Entry::SignalWait {
                        name: name.clone(),
                        deadline: *deadline,
                        outcome: None,
                    },
                );
            }
            Event::SignalWaitTimedOut { position } => match self.entries.get_mut(position) {
                Some(Entry::SignalWait { outcome, .. }) if outcome.is_none() => {
                    *outcome = Some(None);
                }
                _ => {
                    return Err(invalid(format!(
                        "the signal wait at position {position} timed out but never started, or had already ended"
                    )))
                }
            },
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
    /// (closing the steps the code left without a result first), then compensate or finish.
    /// While an operator holds the run, nothing ([`Action::WaitWhileHeld`]: `resume` or `cancel`). A cancel requested while the code failed compensates as cancelled. A refusal
    /// with no compensation registered ends the run `RunRefused`; with some registered (a
    /// workflow bug: it vouched that nothing changed) it compensates as a failure.
    pub fn on_workflow_returned(&self, returned: &Returned) -> Decision {
        if self.held.is_some() {
            return append(Vec::new(), Action::WaitWhileHeld);
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
        append(
            events,
            if compensate {
                Action::Compensate
            } else {
                Action::Finish
            },
        )
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

    /// Checks that the history has `asked` (or nothing) at workflow position `position`.
    fn matches(&self, position: u32, asked: &Command) -> Result<Option<&Entry>, SuspendReason> {
        match self.entries.get(&position) {
            None => Ok(None),
            Some(e) if e.command() == *asked => Ok(Some(e)),
            Some(other) => Err(nondeterminism(position, other, asked)),
        }
    }

    /// What to do next for a step (a workflow step, or a compensation of the plan) when no
    /// attempt of it runs in this process: replay its recorded outcome, wait (for its retry
    /// deadline, or while the run is paused or held), close it because the run was cancelled
    /// (`cancellable` steps only), or start its next attempt (`StepScheduled` for a step new to
    /// the history, `AttemptInterrupted` for an attempt a crash left open, `AttemptStarted`).
    pub fn step_next(
        &self,
        step: StepRef,
        spec: &StepSpec,
        now: DateTime<Utc>,
        cancellable: bool,
    ) -> Decision {
        if let StepRef::Workflow(position) = step {
            let asked = Command::Step {
                activity: spec.activity.clone(),
                input: spec.input.clone(),
            };
            if let Err(r) = self.matches(position, &asked) {
                return Decision::Suspend(r);
            }
        }
        let cancel = self.cancel_requested.as_ref().filter(|_| cancellable);
        let Some(s) = self.steps.get(&step) else {
            if let Some(why) = cancel {
                // Cancelled before the step's first attempt: it never reaches the history.
                return Decision::Replay(Answer::Cancelled(why.clone()));
            }
            if self.attempts_on_hold() {
                return append(Vec::new(), Action::WaitWhileHeld);
            }
            return append(
                vec![
                    Event::StepScheduled {
                        step,
                        activity: spec.activity.clone(),
                        label: spec.label.clone(),
                        input: spec.input.clone(),
                        compensation: spec.compensation.clone(),
                    },
                    Event::AttemptStarted { step, attempt: 1 },
                ],
                Action::RunAttempt { attempt: 1 },
            );
        };
        if s.abandoned {
            return Decision::Replay(Answer::Never);
        }
        if let Some(outcome) = &s.outcome {
            // A step cancelled by an operator gave the code `Cancelled`: replay gives it the same.
            return Decision::Replay(match (outcome, &self.cancel_requested) {
                (Err(e), Some(why)) if e == why => Answer::Cancelled(e.clone()),
                _ => Answer::Step(outcome.clone()),
            });
        }
        if let Some(why) = cancel {
            // Cancelled while no attempt ran (waiting for its retry, paused, held, or resumed
            // after a crash): the history says how it ended.
            let mut events = Vec::with_capacity(2);
            if let Some(attempt) = s.open_attempt {
                events.push(Event::AttemptInterrupted { step, attempt });
            }
            events.push(Event::StepFailed {
                step,
                error: why.clone(),
            });
            return append(events, Action::Answer(Answer::Cancelled(why.clone())));
        }
        if let Some(t) = s.next_retry_at.filter(|t| *t > now) {
            return append(Vec::new(), Action::WaitUntil(t));
        }
        if self.attempts_on_hold() {
            return append(Vec::new(), Action::WaitWhileHeld);
        }
        let attempt = s.attempts_started + 1;
        let mut events = Vec::with_capacity(2);
        if let Some(prev) = s.open_attempt {
            events.push(Event::AttemptInterrupted {
                step,
                attempt: prev,
            });
        }
        events.push(Event::AttemptStarted { step, attempt });
        append(events, Action::RunAttempt { attempt })
    }

    /// After attempt `attempt` of `step` ended with `result`: the step's result
    /// (`StepCompleted`, or `AttemptFailed` + `StepFailed` when it gives up) or its retry
    /// (`AttemptFailed` with the next attempt's time, then wait for it). `delay` is the
    /// (jittered) delay the driver drew from `policy`; `now` the driver's clock.
    pub fn on_attempt_end(
        &self,
        step: StepRef,
        attempt: u32,
        result: AttemptResult,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
        delay: Duration,
    ) -> Decision {
        match result {
            AttemptResult::Completed(output) => append(
                vec![Event::StepCompleted {
                    step,
                    output: output.clone(),
                }],
                Action::Answer(Answer::Step(Ok(output))),
            ),
            AttemptResult::Cancelled => {
                let why = self
                    .cancel_requested
                    .clone()
                    .unwrap_or_else(|| "cancelled".to_owned());
                append(
                    vec![
                        Event::AttemptFailed {
                            step,
                            attempt,
                            error: format!("attempt abandoned: {why}"),
                            retryable: false,
                            next_retry_at: None,
                        },
                        Event::StepFailed {
                            step,
                            error: why.clone(),
                        },
                    ],
                    Action::Answer(Answer::Cancelled(why)),
                )
            }
            AttemptResult::Failed { message, retryable } => {
                let failures = self.steps.get(&step).map_or(0, |s| s.failures) + 1;
                let next = self.decide_retry(step, policy, failures, retryable, now, delay);
                let mut events = vec![Event::AttemptFailed {
                    step,
                    attempt,
                    error: message.clone(),
                    retryable,
                    next_retry_at: next,
                }];
                let then = if let Some(t) = next {
                    Action::WaitUntil(t)
                } else {
                    events.push(Event::StepFailed {
                        step,
                        error: message.clone(),
                    });
                    Action::Answer(Answer::Step(Err(message)))
                };
                append(events, then)
            }
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

    /// A durable timer at `position` of `duration` from `now`: `TimerStarted` and wait for a
    /// new one, wait for the recorded deadline, `TimerFired` once it has passed, or the replay
    /// of one that fired. A cancel ends the wait.
    pub fn decide_sleep(&self, position: u32, duration: Duration, now: DateTime<Utc>) -> Decision {
        let fire_at = match self.matches(position, &Command::Sleep) {
            Err(r) => return Decision::Suspend(r),
            Ok(Some(Entry::Timer { fired: true, .. })) => {
                return Decision::Replay(Answer::TimerFired)
            }
            Ok(Some(Entry::Timer { fire_at, .. })) => Some(*fire_at),
            Ok(_) => None,
        };
        if let Some(why) = &self.cancel_requested {
            return Decision::Replay(Answer::Cancelled(why.clone()));
        }
        match fire_at {
            None => {
                let t = saturating_add(now, duration);
                append(
                    vec![Event::TimerStarted {
                        position,
                        fire_at: t,
                    }],
                    Action::WaitUntil(t),
                )
            }
            Some(t) if t > now => append(Vec::new(), Action::WaitUntil(t)),
            Some(_) => append(
                vec![Event::TimerFired { position }],
                Action::Answer(Answer::TimerFired),
            ),
        }
    }

    /// A recorded value at `position`; `fresh` is what to record if the history has none.
    pub fn decide_value(
        &self,
        position: u32,
        kind: RecordedKind,
        fresh: impl FnOnce() -> String,
    ) -> Decision {
        match self.matches(position, &Command::Record(kind)) {
            Err(r) => Decision::Suspend(r),
            Ok(Some(Entry::Value { value, .. })) => Decision::Replay(Answer::Value(value.clone())),
            Ok(_) => {
                let value = fresh();
                append(
                    vec![Event::ValueRecorded {
                        position,
                        kind,
                        value: value.clone(),
                    }],
                    Action::Answer(Answer::Value(value)),
                )
            }
        }
    }

    /// A compensation registration at `position`.
    pub fn decide_registration(&self, position: u32, spec: &CompensationSpec) -> Decision {
        match self.matches(position, &Command::RegisterCompensation(spec.clone())) {
            Err(r) => Decision::Suspend(r),
            Ok(Some(_)) => Decision::Replay(Answer::Registered),
            Ok(None) => append(
                vec![Event::CompensationRegistered {
                    position,
                    compensation: spec.clone(),
                }],
                Action::Answer(Answer::Registered),
            ),
        }
    }

    /// A wait for signal `name` at `position`: the replay of the one consumed there, the
    /// consumption of the next one waiting (`SignalConsumed`), or a wait (ended by a cancel).
    pub fn decide_signal(&self, position: u32, name: &str) -> Decision {
        match self.matches(position, &Command::WaitForSignal(name.to_owned())) {
            Err(r) => Decision::Suspend(r),
            Ok(Some(Entry::Signal { index, .. })) => {
                match self.signals.get(name).and_then(|v| v.get(*index)) {
                    Some((p, _)) => Decision::Replay(Answer::Signal(p.clone())),
                    None => Decision::Suspend(SuspendReason::Nondeterminism {
                        position,
                        recorded: format!("signal {name:?} #{index} consumed"),
                        new: "that signal is missing from the history".into(),
                    }),
                }
            }
            Ok(_) => {
                let consumed = self.consumed.get(name).copied().unwrap_or(0);
                match self.signals.get(name).and_then(|v| v.get(consumed)) {
                    Some((p, _)) => append(
                        vec![Event::SignalConsumed {
                            position,
                            name: name.to_owned(),
                        }],
                        Action::Answer(Answer::Signal(p.clone())),
                    ),
                    None => match &self.cancel_requested {
                        Some(why) => Decision::Replay(Answer::Cancelled(why.clone())),
                        None => append(Vec::new(), Action::WaitForSignal),
                    },
                }
            }
        }
    }

    /// A wait for signal `name` at `position` that gives up at a deadline (`deadline` is used
    /// when the history has no wait there yet; a recorded wait keeps its recorded deadline).
    /// The replay of how it ended; else the next signal of that name waiting is consumed
    /// (`SignalConsumed`), even when the deadline has passed too (a signal that arrived wins);
    /// else a cancel ends it; else wait until the deadline or a change; once the deadline has
    /// passed, `SignalWaitTimedOut`. A new wait is journaled first (`SignalWaitStarted`), so a
    /// restart keeps its deadline.
    pub fn decide_signal_until(
        &self,
        position: u32,
        name: &str,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Decision {
        let (mut events, deadline) =
            match self.matches(position, &Command::WaitForSignalUntil(name.to_owned())) {
                Err(r) => return Decision::Suspend(r),
                Ok(Some(Entry::SignalWait {
                    outcome: Some(Some(index)),
                    ..
                })) => {
                    return match self.signals.get(name).and_then(|v| v.get(*index)) {
                        Some((p, by)) => {
                            Decision::Replay(Answer::SignalUntil(Some((p.clone(), by.clone()))))
                        }
                        None => Decision::Suspend(SuspendReason::Nondeterminism {
                            position,
                            recorded: format!("signal {name:?} #{index} consumed"),
                            new: "that signal is missing from the history".into(),
                        }),
                    }
                }
                Ok(Some(Entry::SignalWait {
                    outcome: Some(None),
                    ..
                })) => return Decision::Replay(Answer::SignalUntil(None)),
                Ok(Some(Entry::SignalWait { deadline, .. })) => (Vec::new(), *deadline),
                Ok(_) => (
                    vec![Event::SignalWaitStarted {
                        position,
                        name: name.to_owned(),
                        deadline,
                    }],
                    deadline,
                ),
            };
        let consumed = self.consumed.get(name).copied().unwrap_or(0);
        if let Some((p, by)) = self.signals.get(name).and_then(|v| v.get(consumed)) {
            events.push(Event::SignalConsumed {
                position,
                name: name.to_owned(),
            });
            return append(
                events,
                Action::Answer(Answer::SignalUntil(Some((p.clone(), by.clone())))),
            );
        }
        if let Some(why) = &self.cancel_requested {
            return Decision::Replay(Answer::Cancelled(why.clone()));
        }
        if deadline > now {
            return append(events, Action::WaitUntil(deadline));
        }
        events.push(Event::SignalWaitTimedOut { position });
        append(events, Action::Answer(Answer::SignalUntil(None)))
    }

    /// The compensation plan's step `index`, as the driver runs it.
    pub fn compensation_step(&self, index: usize) -> Option<StepSpec> {
        self.compensation_plan().get(index).map(|c| StepSpec {
            activity: c.activity.clone(),
            label: c.label.clone(),
            input: c.input.clone(),
            compensation: None,
        })
    }

    /// Once every compensation of the plan has run: the terminal event, `RunCancelled` or
    /// `RunFailed`, with "COMPENSATION INCOMPLETE" and each failed compensation when some did
    /// not succeed. Nothing while an operator holds the run.
    pub fn on_compensations_done(&self) -> Decision {
        if self.held.is_some() {
            return append(Vec::new(), Action::WaitWhileHeld);
        }
        let (reason, cancelled) = match &self.status {
            RunStatus::Compensating { reason, cancelled } => (reason.clone(), *cancelled),
            other => (format!("unexpected status {}", other.name()), false),
        };
        let failed: Vec<String> = self
            .compensation_plan()
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                match self
                    .steps
                    .get(&StepRef::Compensation(i))
                    .and_then(|s| s.outcome.as_ref())
                {
                    Some(Ok(_)) => None,
                    Some(Err(e)) => Some(format!("{}: {e}", c.label)),
                    None => Some(format!("{}: did not run", c.label)),
                }
            })
            .collect();
        let summary = if failed.is_empty() {
            reason
        } else {
            format!(
                "{reason}; COMPENSATION INCOMPLETE, operator action needed: {}",
                failed.join("; ")
            )
        };
        let event = if cancelled {
            Event::RunCancelled { reason: summary }
        } else {
            Event::RunFailed { error: summary }
        };
        append(vec![event], Action::Finish)
    }

    /// The run stops for an operator: `RunSuspended` (unless the history already ends so, as
    /// when a suspended run is resumed by the same binary).
    pub fn on_suspended(&self, reason: SuspendReason) -> Decision {
        let events = if matches!(&self.status, RunStatus::Suspended(r) if *r == reason) {
            Vec::new()
        } else {
            vec![Event::RunSuspended { reason }]
        };
        append(events, Action::Finish)
    }

    /// What the engine journals for this run when it shuts down: `AttemptInterrupted` for each
    /// attempt in flight, so the history says why it has no result.
    pub fn shutdown_events(&self) -> Vec<Event> {
        self.steps
            .iter()
            .filter_map(|(step, s)| {
                s.open_attempt.map(|attempt| Event::AttemptInterrupted {
                    step: *step,
                    attempt,
                })
            })
            .collect()
    }

    /// `RunResolved` by operator `by`, allowed only for a run that needs an operator
    /// ([`Self::needs_operator`]); otherwise what the run is instead.
    pub fn resolution(&self, by: &str, note: &str) -> Result<Event, String> {
        if self.needs_operator() {
            return Ok(Event::RunResolved {
                by: by.to_owned(),
                note: note.to_owned(),
            });
        }
        Err(match &self.resolved {
            Some((who, _)) => format!("it was already resolved by {who}"),
            None => format!("it is {}", self.status.name()),
        })
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
            Some((pos, e)) => Err(SuspendReason::Nondeterminism {
                position: *pos,
                recorded: e.describe(),
                new: "the workflow returned".to_owned(),
            }),
        }
    }
}
