//! What workflow code sees: [`WorkflowContext`] (every effect of a workflow goes through it),
//! [`StepCall`], [`StepOptions`] and the workflow [`Error`].
//!
//! The context only takes command positions and hands requests to the run's driver through the
//! [`Commands`] trait; it knows nothing of the driver, the log or the engine, so the layers point
//! one way: context ← workflow ← driver ← runtime (the `Engine` API).

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::{Answer, StepSpec};
use crate::event::{CompensationSpec, Payload, RecordedKind, RunId, SuspendReason};
use crate::retry::RetryPolicy;

/// Why a workflow (or one of its context calls) did not go on.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A step gave up after its retries.
    #[error("step {label:?} ({activity}) failed: {error}")]
    StepFailed {
        /// Step description.
        label: String,
        /// Activity name.
        activity: String,
        /// The last error.
        error: String,
    },
    /// An operator cancelled the run.
    #[error("{0}")]
    Cancelled(String),
    /// The code diverged from the recorded history; the engine suspends the run.
    #[error("non-determinism: {0:?}")]
    Nondeterminism(SuspendReason),
    /// The engine could not record progress (the log failed); the run resumes on the next start.
    #[error("engine: {0}")]
    Engine(String),
    /// An input or output did not (de)serialise.
    #[error("payload: {0}")]
    Payload(String),
    /// The workflow decided to fail (e.g. "cluster unhealthy: tserver n2 is DEAD").
    #[error("{0}")]
    Failed(String),
    /// The workflow refuses to go on and vouches that it has changed nothing (a failed
    /// pre-flight, an approval that timed out): the run ends `refused` (`RunRefused`) with these
    /// reasons and no compensation runs. A workflow that registered compensations before
    /// refusing has a bug: the engine then compensates as after any failure and the run ends
    /// failed, with the reasons.
    #[error("refused before any change: {}", .0.join("; "))]
    Refused(Vec<String>),
}

impl Error {
    /// A workflow-defined failure.
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }

    /// The workflow refuses to go on before it changed anything (see [`Error::Refused`]).
    pub fn refused(reasons: Vec<String>) -> Self {
        Error::Refused(reasons)
    }
}

/// Per-step execution options.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// What the operator sees; defaults to the activity name.
    pub label: Option<String>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Limit on one attempt.
    pub start_to_close: Option<Duration>,
    /// Limit between two heartbeats of an attempt.
    pub heartbeat_timeout: Option<Duration>,
    /// Compensation registered when the step is scheduled.
    pub compensation: Option<CompensationSpec>,
}

impl Default for StepOptions {
    /// Default retry policy, 30-minute attempt limit, no heartbeat limit, no compensation.
    fn default() -> Self {
        StepOptions {
            label: None,
            retry: RetryPolicy::default(),
            start_to_close: Some(Duration::from_secs(30 * 60)),
            heartbeat_timeout: None,
            compensation: None,
        }
    }
}

/// Retry policy for compensations: they must bring the estate back, so they try harder.
pub fn compensation_options() -> StepOptions {
    StepOptions {
        retry: RetryPolicy::default().max_attempts(10),
        ..StepOptions::default()
    }
}

/// A request of the workflow code at a command position, as the driver receives it.
pub(crate) enum Request {
    /// A step.
    Step {
        /// What to run.
        spec: Box<StepSpec>,
        /// How.
        options: Box<StepOptions>,
    },
    /// A durable timer of this duration.
    Sleep(Duration),
    /// A value recorded once (`fresh` is what to record when the history has none).
    Record {
        /// Which kind.
        kind: RecordedKind,
        /// The fresh value.
        fresh: Box<dyn FnOnce() -> String + Send>,
    },
    /// A compensation registered on its own.
    Register(CompensationSpec),
    /// A signal wait.
    Signal(String),
    /// A signal wait that gives up at `deadline` (a recorded wait keeps its recorded deadline).
    SignalUntil {
        /// Signal name.
        name: String,
        /// When a new wait gives up.
        deadline: DateTime<Utc>,
    },
}

/// What the driver of a run offers its workflow code.
pub(crate) trait Commands: Send + Sync + 'static {
    /// The run.
    fn run_id(&self) -> RunId;
    /// Takes the next command position.
    fn take_position(&self) -> u32;
    /// Now, by the engine's clock.
    fn now(&self) -> DateTime<Utc>;
    /// Whether an operator has asked to cancel the run.
    fn cancel_requested(&self) -> bool;
    /// Who started the run (its `RunStarted`).
    fn started_by(&self) -> String;
    /// A new value for `uuid()` at `position` (random, or drawn from the engine's seed).
    fn fresh_uuid(&self, position: u32) -> uuid::Uuid;
    /// Carries out a request at `position`.
    fn issue(
        self: Arc<Self>,
        position: u32,
        request: Request,
    ) -> BoxFuture<'static, Result<Answer, Error>>;
}

/// What the workflow code gets: every effect on the world goes through it.
#[derive(Clone)]
pub struct WorkflowContext {
    commands: Arc<dyn Commands>,
}

fn unexpected(answer: &Answer) -> Error {
    Error::Engine(format!("unexpected answer from the engine: {answer:?}"))
}

/// A step being set up; `.await` it to run.
#[must_use = "a step does nothing until awaited"]
pub struct StepCall<O> {
    ctx: WorkflowContext,
    activity: String,
    input: Result<Payload, String>,
    options: StepOptions,
    _output: PhantomData<fn() -> O>,
}

impl<O> StepCall<O> {
    /// What the operator sees for this step.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.options.label = Some(label.into());
        self
    }

    /// Retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Limit on one attempt.
    pub fn start_to_close(mut self, d: Duration) -> Self {
        self.options.start_to_close = Some(d);
        self
    }

    /// Limit between heartbeats.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.options.heartbeat_timeout = Some(d);
        self
    }

    /// Registers `activity(input)` to run if the run later fails or is cancelled. Registered when
    /// the step is scheduled, so it also covers a step that failed half-way: compensations must be
    /// safe when the step's effect did not happen.
    pub fn compensate_with<I: Serialize>(
        mut self,
        activity: &str,
        input: &I,
        label: impl Into<String>,
    ) -> Self {
        match Payload::encode(input) {
            Ok(input) => {
                self.options.compensation = Some(CompensationSpec {
                    activity: activity.to_owned(),
                    input,
                    label: label.into(),
                });
            }
            Err(e) => self.input = Err(format!("compensation input for {activity}: {e}")),
        }
        self
    }

    /// All options at once.
    pub fn options(mut self, options: StepOptions) -> Self {
        self.options = options;
        self
    }
}

impl<O: DeserializeOwned + Send + 'static> IntoFuture for StepCall<O> {
    type Output = Result<O, Error>;
    type IntoFuture = BoxFuture<'static, Result<O, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        // The position is taken here, synchronously, so that `join`ed steps get positions in the
        // order they were written, whatever order they are polled in.
        let position = self.ctx.commands.take_position();
        let commands = self.ctx.commands.clone();
        Box::pin(async move {
            let input = self.input.map_err(Error::Payload)?;
            let label = self
                .options
                .label
                .clone()
                .unwrap_or_else(|| self.activity.clone());
            let spec = StepSpec {
                activity: self.activity,
                label: label.clone(),
                input,
                compensation: self.options.compensation.clone(),
            };
            let request = Request::Step {
                spec: Box::new(spec),
                options: Box::new(self.options),
            };
            match commands.issue(position, request).await? {
                Answer::Step(Ok(out)) => out
                    .decode()
                    .map_err(|e| Error::Payload(format!("output of step {label:?}: {e}"))),
                other => Err(unexpected(&other)),
            }
        })
    }
}

impl WorkflowContext {
    pub(crate) fn new(commands: Arc<dyn Commands>) -> Self {
        WorkflowContext { commands }
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.commands.run_id()
    }

    /// A step calling activity `activity` with `input`. Configure it, then `.await` it.
    pub fn step<I: Serialize, O>(&self, activity: &str, input: &I) -> StepCall<O> {
        StepCall {
            ctx: self.clone(),
            activity: activity.to_owned(),
            input: Payload::encode(input).map_err(|e| format!("input of {activity}: {e}")),
            options: StepOptions::default(),
            _output: PhantomData,
        }
    }

    /// A step calling the typed activity `A`.
    pub fn activity<A: crate::activity::Activity>(&self, input: &A::Input) -> StepCall<A::Output> {
        self.step(A::NAME, input)
    }

    /// The time, recorded on first execution and replayed after.
    pub async fn now(&self) -> Result<DateTime<Utc>, Error> {
        let now = self.commands.now();
        let v = self
            .recorded(RecordedKind::Now, Box::new(move || now.to_rfc3339()))
            .await?;
        DateTime::parse_from_rfc3339(&v)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Error::Payload(format!("recorded time {v:?}: {e}")))
    }

    /// A random UUID, recorded on first execution and replayed after.
    pub async fn uuid(&self) -> Result<uuid::Uuid, Error> {
        let position = self.commands.take_position();
        let commands = self.commands.clone();
        let v = self
            .recorded_at(
                position,
                RecordedKind::Uuid,
                Box::new(move || commands.fresh_uuid(position).to_string()),
            )
            .await?;
        uuid::Uuid::parse_str(&v).map_err(|e| Error::Payload(format!("recorded uuid {v:?}: {e}")))
    }

    /// Journals `text` as a recorded value (`ValueRecorded` of kind `note`): what the workflow
    /// decided and why, for the operator reading the history. Replay returns the recorded text.
    pub async fn note(&self, text: impl Into<String>) -> Result<String, Error> {
        let text = text.into();
        self.recorded(RecordedKind::Note, Box::new(move || text))
            .await
    }

    async fn recorded(
        &self,
        kind: RecordedKind,
        fresh: Box<dyn FnOnce() -> String + Send>,
    ) -> Result<String, Error> {
        let position = self.commands.take_position();
        self.recorded_at(position, kind, fresh).await
    }

    async fn recorded_at(
        &self,
        position: u32,
        kind: RecordedKind,
        fresh: Box<dyn FnOnce() -> String + Send>,
    ) -> Result<String, Error> {
        match self
            .commands
            .clone()
            .issue(position, Request::Record { kind, fresh })
            .await?
        {
            Answer::Value(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// A durable sleep: the deadline is recorded, so a restart waits only for what is left.
    pub async fn sleep(&self, duration: Duration) -> Result<(), Error> {
        let position = self.commands.take_position();
        match self
            .commands
            .clone()
            .issue(position, Request::Sleep(duration))
            .await?
        {
            Answer::TimerFired => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits for signal `name` (e.g. `approve`) and returns its payload. Each call consumes one
    /// signal of that name, in the order they arrived.
    pub async fn wait_for_signal<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let position = self.commands.take_position();
        match self
            .commands
            .clone()
            .issue(position, Request::Signal(name.to_owned()))
            .await?
        {
            Answer::Signal(p) => p
                .decode()
                .map_err(|e| Error::Payload(format!("signal {name:?}: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits for signal `name` at most `timeout`: `Some((payload, sent_by))` for the next signal
    /// of that name (consumed, in the order they arrived), `None` when the deadline passed
    /// first. The deadline is journaled when the wait begins (`SignalWaitStarted`), so a restart
    /// waits only for what is left, and a deadline that passed while the engine was down times
    /// out at once (unless a signal had arrived: it wins). One command position; replay gives
    /// the same outcome.
    pub async fn wait_for_signal_until<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<(T, String)>, Error> {
        let deadline = crate::core::saturating_add(self.commands.now(), timeout);
        self.wait_for_signal_by(name, deadline).await
    }

    /// As [`Self::wait_for_signal_until`], with the deadline as a time (e.g. one computed once
    /// from `now()` for several waits in a row). A deadline already passed times out at once.
    pub async fn wait_for_signal_by<T: DeserializeOwned>(
        &self,
        name: &str,
        deadline: DateTime<Utc>,
    ) -> Result<Option<(T, String)>, Error> {
        let position = self.commands.take_position();
        match self
            .commands
            .clone()
            .issue(
                position,
                Request::SignalUntil {
                    name: name.to_owned(),
                    deadline,
                },
            )
            .await?
        {
            Answer::SignalUntil(None) => Ok(None),
            Answer::SignalUntil(Some((p, sent_by))) => p
                .decode()
                .map(|v| Some((v, sent_by)))
                .map_err(|e| Error::Payload(format!("signal {name:?}: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    /// Registers a compensation on its own (not tied to a step).
    pub async fn register_compensation<I: Serialize>(
        &self,
        activity: &str,
        input: &I,
        label: impl Into<String>,
    ) -> Result<(), Error> {
        let position = self.commands.take_position();
        let spec = CompensationSpec {
            activity: activity.to_owned(),
            input: Payload::encode(input).map_err(|e| Error::Payload(e.to_string()))?,
            label: label.into(),
        };
        match self
            .commands
            .clone()
            .issue(position, Request::Register(spec))
            .await?
        {
            Answer::Registered => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether an operator has asked to cancel the run.
    pub fn is_cancel_requested(&self) -> bool {
        self.commands.cancel_requested()
    }

    /// Who started the run, as its `RunStarted` records it: the same on every replay, so code may
    /// decide on it (e.g. an approval that must come from someone else). Takes no position.
    pub fn started_by(&self) -> String {
        self.commands.started_by()
    }
}
