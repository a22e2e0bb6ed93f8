//! The driver: runs workflow code on tokio, asks the core what each call means against the
//! history, executes activities, and appends what happened before going on.
//!
//! Invariants kept here: a step's `StepScheduled`/`AttemptStarted` are durable before its activity
//! is called, and its result is durable before the workflow sees it; a step with a recorded result
//! is never called again.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::activity::{self, Activity, DynActivity, FnActivity};
use crate::clock::{self, SharedClock, SystemClock};
use crate::core::{
    self, ResumeAction, RunState, RunStatus, SignalDecision, StepDecision, TimerDecision,
    ValueDecision,
};
use crate::event::{
    CompensationSpec, Event, Payload, Record, RecordedKind, RunId, StepRef, SuspendReason,
};
use crate::log::{self, SharedLog};
use crate::retry::RetryPolicy;
use crate::workflow::{self, DynWorkflow, Workflow};

/// Errors of the engine's API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] log::Error),
    /// A history the core rejects.
    #[error(transparent)]
    Core(#[from] core::Error),
    /// No workflow of that name is registered.
    #[error("no workflow named {name:?} in this binary (known: {known})")]
    UnknownWorkflow {
        /// Asked for.
        name: String,
        /// Registered names.
        known: String,
    },
    /// The run was started by a version of the workflow this binary does not have.
    #[error(
        "run {run} was started by {workflow} version {recorded}, but this binary has version(s) {available}: \
         replaying it with other code could repeat or skip steps. Finish it with a binary that has version \
         {recorded}, or cancel it"
    )]
    VersionMismatch {
        /// The run.
        run: RunId,
        /// Workflow name.
        workflow: String,
        /// Version in the history.
        recorded: u32,
        /// Versions registered.
        available: String,
    },
    /// The input does not serialise.
    #[error("workflow input: {0}")]
    Input(String),
    /// The run is not being driven by this engine and has not finished.
    #[error("run {0} is not running in this engine (resume it first)")]
    NotActive(RunId),
    /// `resolve` on a run that does not hold its cluster for an operator.
    #[error(
        "run {run} does not need an operator ({detail}); only a run that ended with \
         COMPENSATION INCOMPLETE and was not resolved yet can be resolved"
    )]
    NothingToResolve {
        /// The run.
        run: RunId,
        /// Its state.
        detail: String,
    },
    /// The run has ended; signals no longer apply.
    #[error("run {run} has already ended ({status})")]
    Finished {
        /// The run.
        run: RunId,
        /// How it ended.
        status: String,
    },
}

/// How a run's driver stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// The workflow returned this.
    Completed(Payload),
    /// It failed; compensations ran.
    Failed(String),
    /// It was cancelled; compensations ran.
    Cancelled(String),
    /// It ended before it changed anything (the workflow refused, with these reasons); no
    /// compensation ran.
    Refused(Vec<String>),
    /// It needs an operator (non-determinism).
    Suspended(SuspendReason),
    /// The driver stopped without finishing (shutdown, or the log failed); resumes on next start.
    Stopped(String),
}

impl RunOutcome {
    fn from_status(status: &RunStatus) -> Option<Self> {
        match status {
            RunStatus::Completed(p) => Some(RunOutcome::Completed(p.clone())),
            RunStatus::Failed(e) => Some(RunOutcome::Failed(e.clone())),
            RunStatus::Cancelled(e) => Some(RunOutcome::Cancelled(e.clone())),
            RunStatus::Refused(r) => Some(RunOutcome::Refused(r.clone())),
            RunStatus::Suspended(r) => Some(RunOutcome::Suspended(r.clone())),
            RunStatus::Running | RunStatus::Compensating { .. } => None,
        }
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

enum Fatal {
    /// The run must wait for an operator: non-determinism, or the workflow code panicked.
    Suspend(SuspendReason),
    Engine(String),
    /// Replay-only mode: the code asked for something the history does not hold.
    ReplayEnd(String),
}

/// What one run's driver and its workflow code share.
pub(crate) struct RunShared {
    run: RunId,
    engine: Arc<Inner>,
    state: Mutex<RunState>,
    next_position: AtomicU32,
    fatal: Mutex<Option<Fatal>>,
    changed: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
    /// Followers of this run; created on the first `subscribe` (a broadcast buffer per run would
    /// cost memory for every resumed run).
    records: Mutex<Option<broadcast::Sender<Record>>>,
    replay_only: bool,
    progress: watch::Sender<Option<activity::Progress>>,
    /// Records acknowledged by the log but not folded yet, because an earlier one of the run is
    /// still on its way: appends of parallel steps are acknowledged together and their tasks wake
    /// in any order, but the state and the followers get records in sequence order.
    delivery: Mutex<Delivery>,
    /// The next sequence number to fold, and whether delivery broke (an append failed).
    folded: watch::Sender<(u64, bool)>,
    /// Appends sent to the log whose records are not delivered yet.
    appends_in_flight: watch::Sender<usize>,
    /// Replay only: context calls so far, and 1 + the position of the last step waiting forever
    /// because the history says the code abandoned it (0: none), to tell a code that waits for
    /// such a step from one that drops it.
    replay_calls: std::sync::atomic::AtomicU64,
    replay_abandoned_waiting: AtomicU32,
}

struct Delivery {
    next_seq: u64,
    pending: std::collections::BTreeMap<u64, Record>,
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

fn describe_events(events: &[Event]) -> String {
    match events
        .iter()
        .find(|e| !matches!(e, Event::AttemptInterrupted { .. }))
    {
        Some(Event::StepScheduled {
            activity, input, ..
        }) => format!("step {activity}({input})"),
        Some(Event::AttemptStarted { step, attempt }) => format!("attempt {attempt} of {step}"),
        Some(Event::TimerStarted { fire_at, .. }) => {
            format!("sleep until {}", fire_at.to_rfc3339())
        }
        Some(Event::TimerFired { position }) => format!("fire the timer at position {position}"),
        Some(Event::ValueRecorded { kind, .. }) => format!("{kind:?}()").to_lowercase(),
        Some(Event::SignalConsumed { name, .. }) => format!("consume signal {name:?}"),
        Some(Event::CompensationRegistered { compensation, .. }) => {
            format!(
                "register compensation {}({})",
                compensation.activity, compensation.input
            )
        }
        Some(other) => other.kind().to_owned(),
        None => "nothing".to_owned(),
    }
}

impl RunShared {
    fn new(engine: Arc<Inner>, state: RunState, replay_only: bool) -> Arc<Self> {
        let next_seq = state.events;
        Arc::new(RunShared {
            run: state.run,
            engine,
            cancel: watch::channel(state.cancel_requested.is_some()).0,
            state: Mutex::new(state),
            next_position: AtomicU32::new(0),
            fatal: Mutex::new(None),
            changed: watch::channel(0).0,
            records: Mutex::new(None),
            replay_only,
            progress: watch::channel(None).0,
            delivery: Mutex::new(Delivery {
                next_seq,
                pending: std::collections::BTreeMap::new(),
            }),
            folded: watch::channel((next_seq, false)).0,
            appends_in_flight: watch::channel(0).0,
            replay_calls: std::sync::atomic::AtomicU64::new(0),
            replay_abandoned_waiting: AtomicU32::new(0),
        })
    }

    fn set_fatal(&self, f: Fatal) {
        let mut slot = self.fatal.lock().expect("fatal lock");
        if slot.is_none() {
            *slot = Some(f);
        }
    }

    fn check_fatal(&self) -> Result<(), workflow::Error> {
        match &*self.fatal.lock().expect("fatal lock") {
            None => Ok(()),
            Some(Fatal::Suspend(r)) => Err(workflow::Error::Nondeterminism(r.clone())),
            Some(Fatal::Engine(e) | Fatal::ReplayEnd(e)) => Err(workflow::Error::Engine(e.clone())),
        }
    }

    fn cancel_reason(&self) -> Option<String> {
        self.state
            .lock()
            .expect("state lock")
            .cancel_requested
            .clone()
    }

    /// Appends durably, folds into the state, wakes waiters, publishes to followers. Records are
    /// folded and published in sequence order, whatever order the appends' tasks wake in; the
    /// delivery runs in its own task, so a caller dropped mid-append (a `join` that dropped a
    /// sibling) cannot leave a hole that would stall the run's later records.
    async fn append(self: &Arc<Self>, events: Vec<Event>) -> Result<Vec<Record>, workflow::Error> {
        if self.replay_only {
            let what = events.first().map_or("nothing", Event::kind);
            let msg = format!(
                "replay reached the end of the recorded history (the code would now record {what})"
            );
            self.set_fatal(Fatal::ReplayEnd(describe_events(&events)));
            return Err(workflow::Error::Engine(msg));
        }
        let written = self.engine.log.append(self.run, events);
        self.appends_in_flight.send_modify(|n| *n += 1);
        let me = self.clone();
        let delivered = tokio::spawn(async move {
            let result = match written.await {
                Ok(records) => me.deliver(&records).map(|()| records),
                Err(e) => {
                    me.folded.send_modify(|(_, broken)| *broken = true);
                    Err(e.to_string())
                }
            };
            let mut last = false;
            me.appends_in_flight.send_modify(|n| {
                *n -= 1;
                last = *n == 0;
            });
            if last && result.is_ok() {
                me.fill_gap();
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(format!("the append task of run {} failed: {e}", self.run)));
        let records = match delivered {
            Ok(r) => r,
            Err(msg) => {
                self.set_fatal(Fatal::Engine(msg.clone()));
                return Err(workflow::Error::Engine(msg));
            }
        };
        if let Some(last) = records.last() {
            let mut rx = self.folded.subscribe();
            let waited = rx
                .wait_for(|(next, broken)| *next > last.seq || *broken)
                .await;
            if waited.map_or(true, |v| v.1 && v.0 <= last.seq) {
                let msg = format!(
                    "run {}: event #{} was written but an earlier event of the run never came back \
                     from the log; restart the engine to resume the run from its history",
                    self.run, last.seq
                );
                self.set_fatal(Fatal::Engine(msg.clone()));
                return Err(workflow::Error::Engine(msg));
            }
        }
        Ok(records)
    }

    /// Folds and publishes, in sequence order, every record that is now contiguous.
    fn deliver(&self, records: &[Record]) -> Result<(), String> {
        let mut d = self.delivery.lock().expect("delivery lock");
        for r in records {
            if r.seq >= d.next_seq {
                d.pending.insert(r.seq, r.clone());
            }
        }
        let mut ready = Vec::new();
        loop {
            let next = d.next_seq;
            let Some(r) = d.pending.remove(&next) else {
                break;
            };
            d.next_seq += 1;
            ready.push(r);
        }
        if ready.is_empty() {
            return Ok(());
        }
        let cancel = {
            let mut st = self.state.lock().expect("state lock");
            for r in &ready {
                if let Err(e) = st.apply(r) {
                    drop(st);
                    self.folded.send_modify(|(_, broken)| *broken = true);
                    return Err(e.to_string());
                }
            }
            st.cancel_requested.is_some()
        };
        if cancel {
            self.cancel.send_replace(true);
        }
        if let Some(tx) = &*self.records.lock().expect("records lock") {
            for r in &ready {
                let _ = tx.send(r.clone());
            }
        }
        let next = d.next_seq;
        self.folded.send_modify(|(n, _)| *n = next);
        drop(d);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// With no append of ours in flight, records still waiting behind a hole come after records
    /// someone appended to the log directly (not through this run's driver): read those back
    /// from the log, so that the run never stalls on them.
    fn fill_gap(&self) {
        let missing = {
            let d = self.delivery.lock().expect("delivery lock");
            match d.pending.keys().next() {
                Some(first) => d.next_seq..*first,
                None => return,
            }
        };
        let result = self
            .engine
            .log
            .read(self.run)
            .map_err(|e| e.to_string())
            .and_then(|all| {
                let found: Vec<Record> = all
                    .into_iter()
                    .filter(|r| missing.contains(&r.seq))
                    .collect();
                self.deliver(&found)
            });
        if result.is_err()
            || !self
                .delivery
                .lock()
                .expect("delivery lock")
                .pending
                .is_empty()
        {
            self.folded.send_modify(|(_, broken)| *broken = true);
        }
    }

    /// Waits until every append sent has been delivered (folded), so that the state holds
    /// everything the log has for the run.
    async fn quiesce(&self) {
        let mut rx = self.appends_in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn take_position(&self) -> u32 {
        self.replay_calls.fetch_add(1, Ordering::SeqCst);
        self.next_position.fetch_add(1, Ordering::SeqCst)
    }

    async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    fn nondeterminism(&self, reason: SuspendReason) -> workflow::Error {
        self.set_fatal(Fatal::Suspend(reason.clone()));
        workflow::Error::Nondeterminism(reason)
    }

    /// Waits until `deadline`; `Err` if cancelled first (when `cancellable`).
    async fn wait_until(
        &self,
        deadline: DateTime<Utc>,
        cancellable: bool,
    ) -> Result<(), workflow::Error> {
        let sleep = clock::sleep_until(self.engine.clock.as_ref(), deadline);
        if cancellable {
            tokio::select! {
                () = sleep => Ok(()),
                () = self.cancelled() => Err(workflow::Error::Cancelled(self.cancel_reason().unwrap_or_default())),
            }
        } else {
            sleep.await;
            Ok(())
        }
    }

    /// Holds while an operator has paused or held the run.
    async fn wait_unpaused(&self, cancellable: bool) -> Result<(), workflow::Error> {
        if self.replay_only {
            return Ok(());
        }
        loop {
            let mut rx = self.changed.subscribe();
            {
                let st = self.state.lock().expect("state lock");
                if cancellable {
                    if let Some(why) = &st.cancel_requested {
                        return Err(workflow::Error::Cancelled(why.clone()));
                    }
                }
                if !st.attempts_on_hold() {
                    return Ok(());
                }
            }
            let _ = rx.changed().await;
        }
    }
}

/// What the workflow code gets: every effect on the world goes through it.
#[derive(Clone)]
pub struct WorkflowContext {
    shared: Arc<RunShared>,
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
    type Output = Result<O, workflow::Error>;
    type IntoFuture = BoxFuture<'static, Result<O, workflow::Error>>;

    fn into_future(self) -> Self::IntoFuture {
        // The position is taken here, synchronously, so that `join`ed steps get positions in the
        // order they were written, whatever order they are polled in.
        let position = self.ctx.shared.take_position();
        let shared = self.ctx.shared.clone();
        Box::pin(async move {
            shared.check_fatal()?;
            let input = self.input.map_err(workflow::Error::Payload)?;
            let label = self
                .options
                .label
                .clone()
                .unwrap_or_else(|| self.activity.clone());
            let out = execute(
                &shared,
                StepRef::Workflow(position),
                &StepSpec {
                    activity: &self.activity,
                    label: &label,
                    input: &input,
                    compensation: self.options.compensation.as_ref(),
                },
                &self.options,
                true,
            )
            .await?;
            out.decode()
                .map_err(|e| workflow::Error::Payload(format!("output of step {label:?}: {e}")))
        })
    }
}

impl WorkflowContext {
    /// The run.
    pub fn run_id(&self) -> RunId {
        self.shared.run
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
    pub fn activity<A: Activity>(&self, input: &A::Input) -> StepCall<A::Output> {
        self.step(A::NAME, input)
    }

    /// The time, recorded on first execution and replayed after.
    pub async fn now(&self) -> Result<DateTime<Utc>, workflow::Error> {
        let v = self
            .recorded(RecordedKind::Now, || {
                self.shared.engine.clock.now().to_rfc3339()
            })
            .await?;
        DateTime::parse_from_rfc3339(&v)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| workflow::Error::Payload(format!("recorded time {v:?}: {e}")))
    }

    /// A random UUID, recorded on first execution and replayed after.
    pub async fn uuid(&self) -> Result<uuid::Uuid, workflow::Error> {
        let v = self
            .recorded(RecordedKind::Uuid, || uuid::Uuid::new_v4().to_string())
            .await?;
        uuid::Uuid::parse_str(&v)
            .map_err(|e| workflow::Error::Payload(format!("recorded uuid {v:?}: {e}")))
    }

    async fn recorded(
        &self,
        kind: RecordedKind,
        fresh: impl FnOnce() -> String,
    ) -> Result<String, workflow::Error> {
        let s = &self.shared;
        let position = s.take_position();
        s.check_fatal()?;
        let decision = s
            .state
            .lock()
            .expect("state lock")
            .decide_value(position, kind, fresh);
        match decision {
            ValueDecision::Replay(v) => Ok(v),
            ValueDecision::Record(v) => {
                s.append(vec![Event::ValueRecorded {
                    position,
                    kind,
                    value: v.clone(),
                }])
                .await?;
                Ok(v)
            }
            ValueDecision::Nondeterminism(r) => Err(s.nondeterminism(r)),
        }
    }

    /// A durable sleep: the deadline is recorded, so a restart waits only for what is left.
    pub async fn sleep(&self, duration: Duration) -> Result<(), workflow::Error> {
        let s = &self.shared;
        let position = s.take_position();
        s.check_fatal()?;
        let decision = s.state.lock().expect("state lock").decide_timer(
            position,
            duration,
            s.engine.clock.now(),
        );
        let deadline = match decision {
            TimerDecision::Fired => return Ok(()),
            TimerDecision::WaitUntil(t) => t,
            TimerDecision::Start(t) => {
                s.append(vec![Event::TimerStarted {
                    position,
                    fire_at: t,
                }])
                .await?;
                t
            }
            TimerDecision::Nondeterminism(r) => return Err(s.nondeterminism(r)),
        };
        s.wait_until(deadline, true).await?;
        s.append(vec![Event::TimerFired { position }]).await?;
        Ok(())
    }

    /// Waits for signal `name` (e.g. `approve`) and returns its payload. Each call consumes one
    /// signal of that name, in the order they arrived.
    pub async fn wait_for_signal<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<T, workflow::Error> {
        let s = &self.shared;
        let position = s.take_position();
        loop {
            let mut rx = s.changed.subscribe();
            s.check_fatal()?;
            let decision = s
                .state
                .lock()
                .expect("state lock")
                .decide_signal(position, name);
            let payload = match decision {
                SignalDecision::Replay(p) => p,
                SignalDecision::Consume(p) => {
                    s.append(vec![Event::SignalConsumed {
                        position,
                        name: name.to_owned(),
                    }])
                    .await?;
                    p
                }
                SignalDecision::Wait => {
                    if s.replay_only {
                        s.set_fatal(Fatal::ReplayEnd(format!("wait for signal {name:?}")));
                        return Err(workflow::Error::Engine(
                            "replay reached the end of the recorded history".into(),
                        ));
                    }
                    if let Some(why) = s.cancel_reason() {
                        return Err(workflow::Error::Cancelled(why));
                    }
                    let _ = rx.changed().await;
                    continue;
                }
                SignalDecision::Nondeterminism(r) => return Err(s.nondeterminism(r)),
            };
            return payload
                .decode()
                .map_err(|e| workflow::Error::Payload(format!("signal {name:?}: {e}")));
        }
    }

    /// Registers a compensation on its own (not tied to a step).
    pub async fn register_compensation<I: Serialize>(
        &self,
        activity: &str,
        input: &I,
        label: impl Into<String>,
    ) -> Result<(), workflow::Error> {
        let s = &self.shared;
        let position = s.take_position();
        s.check_fatal()?;
        let spec = CompensationSpec {
            activity: activity.to_owned(),
            input: Payload::encode(input).map_err(|e| workflow::Error::Payload(e.to_string()))?,
            label: label.into(),
        };
        let decision = s
            .state
            .lock()
            .expect("state lock")
            .decide_registration(position, &spec);
        match decision {
            Ok(true) => {
                s.append(vec![Event::CompensationRegistered {
                    position,
                    compensation: spec,
                }])
                .await?;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(r) => Err(s.nondeterminism(r)),
        }
    }

    /// Whether an operator has asked to cancel the run.
    pub fn is_cancel_requested(&self) -> bool {
        self.shared.cancel_reason().is_some()
    }
}

struct StepSpec<'a> {
    activity: &'a str,
    label: &'a str,
    input: &'a Payload,
    compensation: Option<&'a CompensationSpec>,
}

enum AttemptEnd {
    Failed(activity::Error),
    Cancelled,
}

/// Runs one step to its end: replays it, or starts (or resumes) its attempts with retries.
async fn execute(
    s: &Arc<RunShared>,
    step: StepRef,
    spec: &StepSpec<'_>,
    options: &StepOptions,
    cancellable: bool,
) -> Result<Payload, workflow::Error> {
    let decision = {
        let st = s.state.lock().expect("state lock");
        match step {
            StepRef::Workflow(p) => st.decide_step(p, spec.activity, spec.input),
            StepRef::Compensation(i) => st.decide_compensation(i),
        }
    };
    let step_failed = |error: String| workflow::Error::StepFailed {
        label: spec.label.to_owned(),
        activity: spec.activity.to_owned(),
        error,
    };
    let (mut schedule, mut attempt, mut failures, mut not_before, mut interrupted) = match decision
    {
        // A step cancelled by an operator gave the code `Cancelled`: replay gives it the same.
        StepDecision::Replay(Err(e)) if s.cancel_reason().as_ref() == Some(&e) => {
            return Err(workflow::Error::Cancelled(e));
        }
        StepDecision::Replay(r) => return r.map_err(step_failed),
        StepDecision::Abandoned => {
            // The code that recorded this history went on without the step: so does this one.
            if let (true, StepRef::Workflow(p)) = (s.replay_only, step) {
                s.replay_abandoned_waiting.store(p + 1, Ordering::SeqCst);
            }
            return futures::future::pending().await;
        }
        StepDecision::Nondeterminism(r) => return Err(s.nondeterminism(r)),
        StepDecision::Run {
            schedule,
            attempt,
            failures,
            not_before,
            interrupted,
        } => (schedule, attempt, failures, not_before, interrupted),
    };
    loop {
        if cancellable {
            if let Some(why) = s.cancel_reason() {
                return Err(abandon_cancelled(s, step, workflow::Error::Cancelled(why)).await);
            }
        }
        let mut events = Vec::with_capacity(3);
        if schedule {
            events.push(Event::StepScheduled {
                step,
                activity: spec.activity.to_owned(),
                label: spec.label.to_owned(),
                input: spec.input.clone(),
                compensation: spec.compensation.cloned(),
            });
            schedule = false;
        }
        if let Some(t) = not_before.take() {
            if !events.is_empty() {
                s.append(std::mem::take(&mut events)).await?;
            }
            if let Err(e) = s.wait_until(t, cancellable).await {
                return Err(abandon_cancelled(s, step, e).await);
            }
        }
        if let Err(e) = s.wait_unpaused(cancellable).await {
            if !events.is_empty() {
                // Cancelled before the step's first attempt: it never reaches the history.
                return Err(e);
            }
            return Err(abandon_cancelled(s, step, e).await);
        }
        if let Some(prev) = interrupted.take() {
            events.push(Event::AttemptInterrupted {
                step,
                attempt: prev,
            });
        }
        events.push(Event::AttemptStarted { step, attempt });
        s.append(events).await?;
        let scheduled_at = s
            .state
            .lock()
            .expect("state lock")
            .step(step)
            .map_or_else(Utc::now, |st| st.scheduled_at);
        match run_attempt(s, step, spec, options, attempt, scheduled_at, cancellable).await {
            Ok(output) => {
                s.append(vec![Event::StepCompleted {
                    step,
                    output: output.clone(),
                }])
                .await?;
                return Ok(output);
            }
            Err(AttemptEnd::Cancelled) => {
                let why = s.cancel_reason().unwrap_or_else(|| "cancelled".into());
                s.append(vec![
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
                ])
                .await?;
                return Err(workflow::Error::Cancelled(why));
            }
            Err(AttemptEnd::Failed(e)) => {
                failures += 1;
                let now = s.engine.clock.now();
                let delay = options.retry.delay_after(failures);
                let next = s.state.lock().expect("state lock").decide_retry(
                    step,
                    &options.retry,
                    failures,
                    e.retryable,
                    now,
                    delay,
                );
                let mut evs = vec![Event::AttemptFailed {
                    step,
                    attempt,
                    error: e.message.clone(),
                    retryable: e.retryable,
                    next_retry_at: next,
                }];
                if next.is_none() {
                    evs.push(Event::StepFailed {
                        step,
                        error: e.message.clone(),
                    });
                }
                s.append(evs).await?;
                match next {
                    None => return Err(step_failed(e.message)),
                    Some(t) => {
                        not_before = Some(t);
                        attempt += 1;
                    }
                }
            }
        }
    }
}

/// A step cancelled while it had no attempt running (waiting for its retry deadline, paused, or
/// resumed after a crash): journals its end (`AttemptInterrupted` for an attempt left open by a
/// crash, then `StepFailed` with the cancel reason) so that the history explains it, then gives
/// back `err`.
async fn abandon_cancelled(
    s: &Arc<RunShared>,
    step: StepRef,
    err: workflow::Error,
) -> workflow::Error {
    let workflow::Error::Cancelled(why) = &err else {
        return err;
    };
    let open = {
        let st = s.state.lock().expect("state lock");
        match st.step(step) {
            Some(state) if state.outcome.is_none() => Some(state.open_attempt),
            _ => None,
        }
    };
    let Some(open_attempt) = open else {
        return err;
    };
    let mut events = Vec::with_capacity(2);
    if let Some(attempt) = open_attempt {
        events.push(Event::AttemptInterrupted { step, attempt });
    }
    events.push(Event::StepFailed {
        step,
        error: why.clone(),
    });
    match s.append(events).await {
        Ok(_) => err,
        Err(e) => e,
    }
}

async fn run_attempt(
    s: &Arc<RunShared>,
    step: StepRef,
    spec: &StepSpec<'_>,
    options: &StepOptions,
    attempt: u32,
    scheduled_at: DateTime<Utc>,
    cancellable: bool,
) -> Result<Payload, AttemptEnd> {
    let Some(act) = s.engine.activities.get(spec.activity).cloned() else {
        return Err(AttemptEnd::Failed(activity::Error::fatal(format!(
            "no activity named {:?} is registered in this binary",
            spec.activity
        ))));
    };
    let heartbeat = Arc::new(activity::Heartbeat {
        sink: Some((step, spec.label.to_owned(), s.progress.clone())),
        ..activity::Heartbeat::new()
    });
    let ctx = activity::Context {
        run: s.run,
        step,
        attempt,
        scheduled_at,
        heartbeat: heartbeat.clone(),
        cancelled: s.cancel.subscribe(),
    };
    let input = spec.input.clone();
    let activity_name = spec.activity;
    // A panicking activity is a bug no retry fixes: a non-retryable failure of this attempt with
    // the panic's message, and the run goes on (compensates) like after any failure.
    let call = async move {
        let panicked = |p: Box<dyn std::any::Any + Send>| {
            activity::Error::fatal(format!(
                "{activity_name}: attempt {attempt} panicked: {} (a bug in the activity; not retried)",
                panic_message(p.as_ref())
            ))
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| act.call(ctx, input))) {
            Ok(fut) => AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| Err(panicked(p))),
            Err(p) => Err(panicked(p)),
        }
    };
    let timed = async {
        match options.start_to_close {
            Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
                Err(activity::Error::retryable(format!(
                    "{}: attempt {attempt} timed out after {d:?} (start-to-close limit)",
                    spec.activity
                )))
            }),
            None => call.await,
        }
    };
    let watchdog = async {
        let Some(limit) = options.heartbeat_timeout else {
            return futures::future::pending::<activity::Error>().await;
        };
        loop {
            let last = heartbeat.last.lock().expect("heartbeat lock").0;
            let Some(deadline) = last.checked_add(limit) else {
                return futures::future::pending::<activity::Error>().await;
            };
            if tokio::time::Instant::now() >= deadline {
                return activity::Error::retryable(format!(
                    "{}: attempt {attempt} sent no heartbeat for {limit:?} (heartbeat limit)",
                    spec.activity
                ));
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let cancelled = async {
        if cancellable {
            s.cancelled().await;
        } else {
            futures::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = timed => r.map_err(AttemptEnd::Failed),
        e = watchdog => Err(AttemptEnd::Failed(e)),
        () = cancelled => Err(AttemptEnd::Cancelled),
    }
}

/// Replay only: resolves (with the step's position) when the workflow code makes no progress any
/// more while a step that the history records as abandoned waits: the code waits for a result the
/// recorded run went on without. Replay does no IO, so a code that still runs makes calls or
/// returns within a few polls.
async fn waits_for_an_abandoned_step(s: &RunShared) -> u32 {
    loop {
        let waiting = s.replay_abandoned_waiting.load(Ordering::SeqCst);
        let calls = s.replay_calls.load(Ordering::SeqCst);
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        if waiting != 0
            && s.replay_abandoned_waiting.load(Ordering::SeqCst) == waiting
            && s.replay_calls.load(Ordering::SeqCst) == calls
        {
            return waiting - 1;
        }
    }
}

/// Calls the workflow code, turning a panic (while creating or polling its future) into `Err`
/// with the panic's message.
async fn call_catching_panics(
    wf: Arc<dyn DynWorkflow>,
    ctx: WorkflowContext,
    input: Payload,
) -> Result<Result<Payload, workflow::Error>, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| wf.call(ctx, input))) {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .map_err(|p| panic_message(p.as_ref())),
        Err(p) => Err(panic_message(p.as_ref())),
    }
}

/// Drives one run until it ends or cannot go on. `wf` is `None` when this binary lacks the run's
/// workflow version: only a cancel (compensations without the code) or the rest of a compensation
/// can then be driven.
async fn drive(s: Arc<RunShared>, wf: Option<Arc<dyn DynWorkflow>>) -> RunOutcome {
    let mut action = s.state.lock().expect("state lock").resume_action();
    if action == ResumeAction::ReplayWorkflow && wf.is_none() {
        action = ResumeAction::CancelWithoutCode;
    }
    match action {
        ResumeAction::Finished => {
            let st = s.state.lock().expect("state lock");
            return RunOutcome::from_status(&st.status)
                .unwrap_or(RunOutcome::Stopped("not finished".into()));
        }
        ResumeAction::CancelWithoutCode => {
            let events = s
                .state
                .lock()
                .expect("state lock")
                .cancel_without_code_events();
            let Some(events) = events else {
                return RunOutcome::Stopped(format!(
                    "run {} cannot be driven without its workflow code unless it is cancelled",
                    s.run
                ));
            };
            if let Err(e) = s.append(events).await {
                return RunOutcome::Stopped(e.to_string());
            }
        }
        ResumeAction::ReplayWorkflow => {
            let Some(wf) = wf else {
                return RunOutcome::Stopped("no workflow code".into());
            };
            let input = s.state.lock().expect("state lock").input.clone();
            let ctx = WorkflowContext { shared: s.clone() };
            let result = match call_catching_panics(wf, ctx, input).await {
                Ok(r) => r,
                Err(message) => {
                    s.set_fatal(Fatal::Suspend(SuspendReason::WorkflowPanicked { message }));
                    Err(workflow::Error::Engine("the workflow code panicked".into()))
                }
            };
            let issued = s.next_position.load(Ordering::SeqCst);
            if s.check_fatal().is_ok() {
                let check = s.state.lock().expect("state lock").check_finished(issued);
                if let Err(r) = check {
                    s.set_fatal(Fatal::Suspend(r));
                }
            }
            // Steps whose appends were dropped with them (a `join` that failed on a sibling)
            // still deliver their records: wait for them before reading the state.
            s.quiesce().await;
            let fatal = s.fatal.lock().expect("fatal lock").take();
            match fatal {
                Some(Fatal::Engine(e) | Fatal::ReplayEnd(e)) => return RunOutcome::Stopped(e),
                Some(Fatal::Suspend(reason)) => {
                    let already = matches!(&s.state.lock().expect("state lock").status,
                        RunStatus::Suspended(r) if *r == reason);
                    if !already
                        && s.append(vec![Event::RunSuspended {
                            reason: reason.clone(),
                        }])
                        .await
                        .is_err()
                    {
                        return RunOutcome::Stopped("could not record the suspension".into());
                    }
                    return RunOutcome::Suspended(reason);
                }
                None => {}
            }
            let returned = match result {
                Ok(output) => core::Returned::Completed(output),
                Err(workflow::Error::Refused(reasons)) => core::Returned::Refused(reasons),
                Err(e) => core::Returned::Failed(e.to_string()),
            };
            let (events, compensate) = loop {
                let mut rx = s.changed.subscribe();
                let ending = s
                    .state
                    .lock()
                    .expect("state lock")
                    .on_workflow_returned(&returned);
                match ending {
                    core::Ending::Append { events, compensate } => break (events, compensate),
                    // Held: nothing ends (no compensation begins) until `resume` or `cancel`.
                    core::Ending::Held => {
                        let _ = rx.changed().await;
                    }
                }
            };
            if let Err(e) = s.append(events).await {
                return RunOutcome::Stopped(e.to_string());
            }
            if !compensate {
                let st = s.state.lock().expect("state lock");
                return RunOutcome::from_status(&st.status)
                    .unwrap_or(RunOutcome::Stopped("not finished".into()));
            }
        }
        ResumeAction::Compensate => {}
    }
    compensate(&s).await
}

async fn compensate(s: &Arc<RunShared>) -> RunOutcome {
    let (plan, reason, cancelled) = {
        let st = s.state.lock().expect("state lock");
        let (reason, cancelled) = match &st.status {
            RunStatus::Compensating { reason, cancelled } => (reason.clone(), *cancelled),
            other => (format!("unexpected status {}", other.name()), false),
        };
        (st.compensation_plan(), reason, cancelled)
    };
    let options = compensation_options();
    let mut failed = Vec::new();
    for (i, c) in plan.iter().enumerate() {
        let spec = StepSpec {
            activity: &c.activity,
            label: &c.label,
            input: &c.input,
            compensation: None,
        };
        match execute(s, StepRef::Compensation(i as u32), &spec, &options, false).await {
            Ok(_) => {}
            Err(workflow::Error::StepFailed { label, error, .. }) => {
                failed.push(format!("{label}: {error}"));
            }
            Err(e) => return RunOutcome::Stopped(e.to_string()),
        }
    }
    let mut summary = reason;
    if !failed.is_empty() {
        summary = format!(
            "{summary}; COMPENSATION INCOMPLETE, operator action needed: {}",
            failed.join("; ")
        );
    }
    let event = if cancelled {
        Event::RunCancelled { reason: summary }
    } else {
        Event::RunFailed { error: summary }
    };
    if let Err(e) = s.append(vec![event]).await {
        return RunOutcome::Stopped(e.to_string());
    }
    let st = s.state.lock().expect("state lock");
    RunOutcome::from_status(&st.status).unwrap_or(RunOutcome::Stopped("not finished".into()))
}

struct ActiveRun {
    shared: Arc<RunShared>,
    outcome: watch::Receiver<Option<RunOutcome>>,
}

pub(crate) struct Inner {
    log: SharedLog,
    clock: SharedClock,
    workflows: HashMap<(String, u32), Arc<dyn DynWorkflow>>,
    activities: HashMap<String, Arc<dyn DynActivity>>,
    active: Mutex<HashMap<RunId, ActiveRun>>,
    shutdown: watch::Sender<bool>,
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    log: SharedLog,
    clock: SharedClock,
    workflows: HashMap<(String, u32), Arc<dyn DynWorkflow>>,
    activities: HashMap<String, Arc<dyn DynActivity>>,
}

impl EngineBuilder {
    /// Uses `clock` instead of the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Registers a workflow (several versions of one name may be registered).
    pub fn workflow<W: Workflow>(mut self, w: W) -> Self {
        self.workflows.insert(
            (W::NAME.to_owned(), W::VERSION),
            Arc::new(workflow::Typed(w)),
        );
        self
    }

    /// Registers a type-erased workflow.
    pub fn workflow_dyn(mut self, w: Arc<dyn DynWorkflow>) -> Self {
        self.workflows.insert((w.name().to_owned(), w.version()), w);
        self
    }

    /// Registers an activity.
    pub fn activity<A: Activity>(mut self, a: A) -> Self {
        self.activities
            .insert(A::NAME.to_owned(), Arc::new(activity::Typed(a)));
        self
    }

    /// Registers a closure as activity `name`.
    pub fn activity_fn<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(activity::Context, Payload) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Payload, activity::Error>> + Send + 'static,
    {
        self.activities
            .insert(name.to_owned(), Arc::new(FnActivity::new(f)));
        self
    }

    /// The engine.
    pub fn build(self) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                log: self.log,
                clock: self.clock,
                workflows: self.workflows,
                activities: self.activities,
                active: Mutex::new(HashMap::new()),
                shutdown: watch::channel(false).0,
            }),
        }
    }
}

/// What [`Engine::replay`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayReport {
    /// The run.
    pub run: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Version replayed.
    pub version: u32,
    /// Events in the history.
    pub events: usize,
    /// Commands the code issued during replay.
    pub positions: u32,
    /// The verdict.
    pub verdict: ReplayVerdict,
}

/// Whether the code reproduces the history.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayVerdict {
    /// Every command matched and the outcome is the recorded one.
    Deterministic,
    /// The run is still going: every recorded command matched; `next` is what comes next.
    InProgress {
        /// The first thing past the history.
        next: String,
    },
    /// The code issues something else than the history holds.
    Diverged(SuspendReason),
    /// Commands matched but the workflow's result differs.
    OutcomeDiffers {
        /// What the history says.
        recorded: String,
        /// What the code returned.
        replayed: String,
    },
}

/// What [`Engine::resume_all`] did.
#[derive(Debug, Default)]
pub struct ResumeReport {
    /// Runs now being driven.
    pub resumed: Vec<RunId>,
    /// Runs that could not be resumed, and why (they stay as they are in the log).
    pub refused: Vec<(RunId, Error)>,
}

/// The engine: starts, resumes, signals and follows runs. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine over `log`, with the system clock.
    pub fn builder(log: SharedLog) -> EngineBuilder {
        EngineBuilder {
            log,
            clock: Arc::new(SystemClock),
            workflows: HashMap::new(),
            activities: HashMap::new(),
        }
    }

    /// The log.
    pub fn log(&self) -> &SharedLog {
        &self.inner.log
    }

    fn latest(&self, name: &str) -> Result<Arc<dyn DynWorkflow>, Error> {
        self.inner
            .workflows
            .iter()
            .filter(|((n, _), _)| n == name)
            .max_by_key(|((_, v), _)| *v)
            .map(|(_, w)| w.clone())
            .ok_or_else(|| Error::UnknownWorkflow {
                name: name.to_owned(),
                known: self.known_workflows(),
            })
    }

    fn known_workflows(&self) -> String {
        let mut names: Vec<String> = self
            .inner
            .workflows
            .keys()
            .map(|(n, v)| format!("{n} v{v}"))
            .collect();
        names.sort();
        names.join(", ")
    }

    /// Starts a run of the newest registered version of workflow `W`.
    pub async fn start<W: Workflow>(
        &self,
        input: &W::Input,
        started_by: &str,
    ) -> Result<RunId, Error> {
        let payload = Payload::encode(input).map_err(|e| Error::Input(e.to_string()))?;
        self.start_named(W::NAME, payload, started_by).await
    }

    /// Starts a run of the newest registered version of the named workflow.
    pub async fn start_named(
        &self,
        workflow: &str,
        input: Payload,
        started_by: &str,
    ) -> Result<RunId, Error> {
        let wf = self.latest(workflow)?;
        let run = RunId::new();
        let records = self
            .inner
            .log
            .append(
                run,
                vec![Event::RunStarted {
                    workflow: wf.name().to_owned(),
                    version: wf.version(),
                    input,
                    started_by: started_by.to_owned(),
                }],
            )
            .await?;
        let state = RunState::from_records(&records)?;
        self.spawn(state, Some(wf));
        Ok(run)
    }

    /// Resumes every run the log has as unfinished (a run that ended, even one that needs an
    /// operator, is not open and is left alone).
    pub fn resume_all(&self) -> Result<ResumeReport, Error> {
        let mut report = ResumeReport::default();
        for run in self.inner.log.open_runs()? {
            match self.resume(run) {
                Ok(()) => report.resumed.push(run),
                Err(e) => report.refused.push((run, e)),
            }
        }
        Ok(report)
    }

    /// Resumes one unfinished run (a no-op if this engine already drives it).
    pub fn resume(&self, run: RunId) -> Result<(), Error> {
        if self
            .inner
            .active
            .lock()
            .expect("active lock")
            .contains_key(&run)
        {
            return Ok(());
        }
        let state = self.unfinished_state(run)?;
        // The code is needed only to replay the workflow: a cancelled run (suspended, or of a
        // version this binary lacks) and a run that was compensating go on without it.
        let wf = match state.resume_action() {
            ResumeAction::ReplayWorkflow => match self.workflow_for(&state) {
                Ok(wf) => Some(wf),
                Err(_) if state.cancel_requested.is_some() => None,
                Err(e) => return Err(e),
            },
            _ => self.workflow_for(&state).ok(),
        };
        self.spawn(state, wf);
        Ok(())
    }

    fn spawn(&self, state: RunState, wf: Option<Arc<dyn DynWorkflow>>) {
        let run = state.run;
        let shared = RunShared::new(self.inner.clone(), state, false);
        let (outcome_tx, outcome_rx) = watch::channel(None);
        self.inner.active.lock().expect("active lock").insert(
            run,
            ActiveRun {
                shared: shared.clone(),
                outcome: outcome_rx,
            },
        );
        let inner = self.inner.clone();
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            // The driver catches the workflow's and the activities' panics itself; this is the
            // last guard (a bug in the engine): whatever happens, the run stops being active,
            // so that resume and cancel work on it again, and the engine goes on.
            let driven = AssertUnwindSafe(drive(shared, wf)).catch_unwind();
            let outcome = tokio::select! {
                o = driven => o.unwrap_or_else(|p| RunOutcome::Stopped(format!(
                    "the driver of run {run} panicked: {}; resume the run to go on",
                    panic_message(p.as_ref())
                ))),
                _ = shutdown.wait_for(|s| *s) => RunOutcome::Stopped("engine shut down".into()),
            };
            inner.active.lock().expect("active lock").remove(&run);
            outcome_tx.send_replace(Some(outcome));
        });
    }

    /// Sends a signal (`approve`, `pause`, `resume`, `cancel`, or one the workflow waits for).
    /// It is journaled first; a run this engine drives sees it at once.
    pub async fn signal(
        &self,
        run: RunId,
        name: &str,
        payload: Payload,
        sent_by: &str,
    ) -> Result<(), Error> {
        let event = Event::SignalReceived {
            name: name.to_owned(),
            payload,
            sent_by: sent_by.to_owned(),
        };
        let shared = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .get(&run)
            .map(|a| a.shared.clone());
        if let Some(shared) = shared {
            shared
                .append(vec![event])
                .await
                .map_err(|e| Error::Log(log::Error::Storage(e.to_string())))?;
            return Ok(());
        }
        self.unfinished_state(run)?;
        self.inner.log.append(run, vec![event]).await?;
        if name == core::signals::CANCEL {
            // A run no driver can take any further (suspended, or of a version this binary
            // lacks) is cancelled without its code: its compensations run from the history.
            let state = self.unfinished_state(run)?;
            let stuck = matches!(state.status, RunStatus::Suspended(_))
                || self.workflow_for(&state).is_err();
            if stuck {
                self.resume(run)?;
            }
        }
        Ok(())
    }

    /// Records that operator `by` resolved a run that ended with its compensation incomplete
    /// (after checking or repairing the estate by hand), so that its cluster is free again.
    /// Refuses a run that does not need an operator (see [`RunState::needs_operator`]).
    pub async fn resolve(&self, run: RunId, by: &str, note: &str) -> Result<(), Error> {
        let state = self.state(run)?;
        if !state.needs_operator() {
            let detail = match &state.resolved {
                Some((who, _)) => format!("it was already resolved by {who}"),
                None => format!("it is {}", state.status.name()),
            };
            return Err(Error::NothingToResolve { run, detail });
        }
        self.inner
            .log
            .append(
                run,
                vec![Event::RunResolved {
                    by: by.to_owned(),
                    note: note.to_owned(),
                }],
            )
            .await?;
        Ok(())
    }

    /// Waits for a run's driver to stop and says how; for a run already ended, reads the log.
    pub async fn wait(&self, run: RunId) -> Result<RunOutcome, Error> {
        let rx = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .get(&run)
            .map(|a| a.outcome.clone());
        if let Some(mut rx) = rx {
            if let Ok(v) = rx.wait_for(Option::is_some).await {
                return Ok(v.clone().expect("checked is_some"));
            }
        }
        let state = self.state(run)?;
        RunOutcome::from_status(&state.status).ok_or(Error::NotActive(run))
    }

    /// A run's state, or `Finished` if it has ended.
    fn unfinished_state(&self, run: RunId) -> Result<RunState, Error> {
        let state = self.state(run)?;
        if state.status.is_terminal() {
            return Err(Error::Finished {
                run,
                status: state.status.name().to_owned(),
            });
        }
        Ok(state)
    }

    /// A run's state, folded from the log.
    pub fn state(&self, run: RunId) -> Result<RunState, Error> {
        let records = self.inner.log.read(run)?;
        Ok(RunState::from_records(&records)?)
    }

    /// Follows the records a run this engine drives appends from now on.
    pub fn subscribe(&self, run: RunId) -> Option<broadcast::Receiver<Record>> {
        self.inner
            .active
            .lock()
            .expect("active lock")
            .get(&run)
            .map(|a| {
                a.shared
                    .records
                    .lock()
                    .expect("records lock")
                    .get_or_insert_with(|| broadcast::channel(1024).0)
                    .subscribe()
            })
    }

    /// Follows the progress that the activities of a run this engine drives report.
    pub fn progress(&self, run: RunId) -> Option<watch::Receiver<Option<activity::Progress>>> {
        self.inner
            .active
            .lock()
            .expect("active lock")
            .get(&run)
            .map(|a| a.shared.progress.subscribe())
    }

    /// Runs this engine is driving now.
    pub fn active_runs(&self) -> Vec<RunId> {
        self.inner
            .active
            .lock()
            .expect("active lock")
            .keys()
            .copied()
            .collect()
    }

    /// Re-executes a run's workflow code against its recorded history, touching nothing (no
    /// activity is called, nothing is appended), and says whether the code reproduces the history.
    /// Used to audit past runs and to check a new build against old runs before deploying it.
    pub async fn replay(&self, run: RunId) -> Result<ReplayReport, Error> {
        let records = self.inner.log.read(run)?;
        let state = RunState::from_records(&records)?;
        let wf = self.workflow_for(&state)?;
        let shared = RunShared::new(self.inner.clone(), state.clone(), true);
        let call = call_catching_panics(
            wf,
            WorkflowContext {
                shared: shared.clone(),
            },
            state.input.clone(),
        );
        let result = tokio::select! {
            biased;
            r = call => match r {
                Ok(r) => r,
                Err(message) => {
                    shared.set_fatal(Fatal::Suspend(SuspendReason::WorkflowPanicked { message }));
                    Err(workflow::Error::Engine("the workflow code panicked".into()))
                }
            },
            position = waits_for_an_abandoned_step(&shared) => {
                shared.set_fatal(Fatal::Suspend(SuspendReason::Nondeterminism {
                    position,
                    recorded: "a step the run went on without (abandoned, no result)".into(),
                    new: "the code waits for its result".into(),
                }));
                Err(workflow::Error::Engine("replay waits for an abandoned step".into()))
            }
        };
        let issued = shared.next_position.load(Ordering::SeqCst);
        let fatal = shared.fatal.lock().expect("fatal lock").take();
        let finished_code = !matches!(state.status, RunStatus::Running | RunStatus::Suspended(_));
        let verdict = match fatal {
            Some(Fatal::Suspend(r)) => ReplayVerdict::Diverged(r),
            Some(Fatal::Engine(e)) => return Err(Error::Log(log::Error::Storage(e))),
            Some(Fatal::ReplayEnd(next)) if finished_code => {
                ReplayVerdict::Diverged(SuspendReason::Nondeterminism {
                    position: issued.saturating_sub(1),
                    recorded: "(the history ends here: the run finished without it)".into(),
                    new: next,
                })
            }
            Some(Fatal::ReplayEnd(next)) => ReplayVerdict::InProgress { next },
            None => {
                if let Err(r) = state.check_finished(issued) {
                    ReplayVerdict::Diverged(r)
                } else {
                    let replayed = match &result {
                        Ok(p) => format!("completed with {p}"),
                        Err(e) => format!("failed: {e}"),
                    };
                    let recorded = match &state.status {
                        RunStatus::Completed(p) => Some(format!("completed with {p}")),
                        RunStatus::Compensating {
                            reason,
                            cancelled: false,
                        } => Some(format!("failed: {reason}")),
                        RunStatus::Failed(e) => records
                            .iter()
                            .find_map(|r| match &r.event {
                                Event::CompensationStarted { reason, .. } => {
                                    Some(format!("failed: {reason}"))
                                }
                                _ => None,
                            })
                            .or_else(|| Some(format!("failed: {e}"))),
                        RunStatus::Refused(reasons) => Some(format!(
                            "failed: {}",
                            workflow::Error::Refused(reasons.clone())
                        )),
                        _ => None,
                    };
                    match recorded {
                        Some(rec) if rec != replayed => ReplayVerdict::OutcomeDiffers {
                            recorded: rec,
                            replayed,
                        },
                        _ => ReplayVerdict::Deterministic,
                    }
                }
            }
        };
        Ok(ReplayReport {
            run,
            workflow: state.workflow,
            version: state.version,
            events: records.len(),
            positions: issued,
            verdict,
        })
    }

    fn workflow_for(&self, state: &RunState) -> Result<Arc<dyn DynWorkflow>, Error> {
        self.inner
            .workflows
            .get(&(state.workflow.clone(), state.version))
            .cloned()
            .ok_or_else(|| Error::VersionMismatch {
                run: state.run,
                workflow: state.workflow.clone(),
                recorded: state.version,
                available: {
                    let mut v: Vec<String> = self
                        .inner
                        .workflows
                        .keys()
                        .filter(|(n, _)| *n == state.workflow)
                        .map(|(_, v)| v.to_string())
                        .collect();
                    v.sort();
                    if v.is_empty() {
                        "none".into()
                    } else {
                        v.join(", ")
                    }
                },
            })
    }

    /// Stops every driver where it stands, then journals each attempt that was in flight as
    /// interrupted (`AttemptInterrupted`), so the history says why it has no result; the next
    /// start resumes those steps with their next attempt, under the same idempotency key.
    pub async fn shutdown(&self) {
        // Take the list before signalling: a stopped driver removes itself from `active` at once,
        // and a run missing from the list would not get its in-flight attempt journaled.
        let receivers: Vec<(RunId, watch::Receiver<Option<RunOutcome>>)> = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .iter()
            .map(|(r, a)| (*r, a.outcome.clone()))
            .collect();
        self.inner.shutdown.send_replace(true);
        for (_, rx) in &receivers {
            let mut rx = rx.clone();
            let _ = rx.wait_for(Option::is_some).await;
        }
        for (run, _) in receivers {
            let Ok(state) = self.state(run) else { continue };
            let open: Vec<Event> = state
                .steps()
                .filter_map(|(step, s)| {
                    s.open_attempt.map(|attempt| Event::AttemptInterrupted {
                        step: *step,
                        attempt,
                    })
                })
                .collect();
            if !open.is_empty() {
                let _ = self.inner.log.append(run, open).await;
            }
        }
    }
}
