//! The driver: runs one run's workflow code on tokio, asks the core what each request means
//! against the history, appends the events the core decides and carries out its actions (calls
//! activities with their timeouts, heartbeats and cancellation, waits, compensates). It builds
//! no event itself.
//!
//! Invariants kept here: an attempt's activity is called only after the append that starts it
//! (`AttemptStarted`) is durable; a run's records reach its state and its followers in sequence
//! order, only once durable; a step with a recorded result is never called again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{broadcast, watch};

use crate::activity::{self, DynActivity};
use crate::clock::{self, SharedClock};
use crate::context::{compensation_options, Commands, Request, StepOptions, WorkflowContext};
use crate::core::{
    Action, Answer, AttemptResult, Command, Decision, ResumeAction, Returned, RunState, RunStatus,
    StepSpec,
};
use crate::entropy::Entropy;
use crate::event::{Event, Payload, Record, RunId, StepRef, SuspendReason};
use crate::log::SharedLog;
use crate::workflow::{self, DynWorkflow};

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
    pub(crate) fn from_status(status: &RunStatus) -> Option<Self> {
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

/// What every driver of an engine uses: the log, the clock, the source of random values, the
/// registered activities and the engine's tasks.
pub(crate) struct Services {
    pub(crate) log: SharedLog,
    pub(crate) clock: SharedClock,
    pub(crate) entropy: Entropy,
    pub(crate) activities: HashMap<String, Arc<dyn DynActivity>>,
    pub(crate) tasks: Tasks,
}

/// Every task the engine spawns (drivers, deliveries of appends), so that
/// [`crate::Engine::abort`] can drop them all at once. Finished tasks are forgotten lazily.
#[derive(Default)]
pub(crate) struct Tasks {
    list: Mutex<TaskList>,
}

#[derive(Default)]
struct TaskList {
    handles: Vec<tokio::task::AbortHandle>,
    /// Length at which finished handles are pruned next (amortised: twice the live ones).
    prune_at: usize,
    aborted: bool,
}

impl Tasks {
    /// Spawns `task` on the current runtime; after [`Tasks::abort_all`] the task is aborted
    /// before it is ever polled.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Under the lock: an `abort_all` on another thread cannot miss a task spawned meanwhile.
        let mut list = self.list.lock().expect("tasks lock");
        let handle = tokio::spawn(task);
        if list.aborted {
            handle.abort();
            return handle;
        }
        if list.handles.len() >= list.prune_at {
            list.handles.retain(|h| !h.is_finished());
            list.prune_at = (list.handles.len() * 2).max(64);
        }
        list.handles.push(handle.abort_handle());
        handle
    }

    /// Aborts every task spawned so far and every one spawned later. An aborted task is never
    /// polled again (tokio drops its future, with every activity in flight inside it).
    pub(crate) fn abort_all(&self) {
        let mut list = self.list.lock().expect("tasks lock");
        list.aborted = true;
        for h in &list.handles {
            h.abort();
        }
    }

    /// Whether [`Tasks::abort_all`] was called.
    pub(crate) fn aborted(&self) -> bool {
        self.list.lock().expect("tasks lock").aborted
    }

    /// Tasks spawned and not finished yet.
    pub(crate) fn running(&self) -> usize {
        self.list
            .lock()
            .expect("tasks lock")
            .handles
            .iter()
            .filter(|h| !h.is_finished())
            .count()
    }
}

pub(crate) enum Fatal {
    /// The run must wait for an operator: non-determinism, or the workflow code panicked.
    Suspend(SuspendReason),
    Engine(String),
    /// Replay-only mode: the code asked for something the history does not hold.
    ReplayEnd(String),
}

/// What one run's driver and its workflow code share.
pub(crate) struct RunShared {
    pub(crate) run: RunId,
    services: Arc<Services>,
    /// Everything decided so far, durable or not: the core decides each request on it. Lock
    /// order: `state`, then `pending`.
    pub(crate) state: Mutex<RunState>,
    /// Events decided (and folded into `state`) but not sent to the log yet: they go with the
    /// next append that must be durable (the one that starts an attempt, waits, or ends the run),
    /// or when the workflow code waits without asking for anything.
    pending: Mutex<Vec<Event>>,
    /// Every event decided and not delivered yet, with the sequence number this driver folded it
    /// at, in that order (locked only under `state`): a record delivered at such a number must be
    /// that event, else someone else wrote to the run and the driver's state is wrong.
    undelivered: Mutex<VecDeque<(u64, Event)>>,
    pub(crate) next_position: AtomicU32,
    pub(crate) fatal: Mutex<Option<Fatal>>,
    changed: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
    /// Followers of this run; created on the first `subscribe` (a broadcast buffer per run would
    /// cost memory for every resumed run).
    pub(crate) records: Mutex<Option<broadcast::Sender<Record>>>,
    replay_only: bool,
    pub(crate) progress: watch::Sender<Option<activity::Progress>>,
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
    replay_calls: AtomicU64,
    replay_abandoned_waiting: AtomicU32,
}

struct Delivery {
    next_seq: u64,
    pending: BTreeMap<u64, Record>,
}

/// Changes `tx`'s value with `change`, and wakes its receivers if `change` says the change
/// matters to them and any receiver exists. For the watches whose every receiver waits with
/// `wait_for`, which reads the current value once subscribed: a change made while no receiver
/// existed is seen by the next one all the same, and a wake-up (a lock on each of the watch's
/// eight wait lists) costs every step.
fn send_if_awaited<T>(tx: &watch::Sender<T>, change: impl FnOnce(&mut T) -> bool) {
    tx.send_if_modified(|v| change(v) && tx.receiver_count() > 0);
}

/// The event decided at `seq`, taken out of `undelivered` (ordered by sequence number; the one
/// delivered next is almost always the first).
fn take_undelivered(undelivered: &mut VecDeque<(u64, Event)>, seq: u64) -> Option<Event> {
    if undelivered.front().is_some_and(|(s, _)| *s == seq) {
        return undelivered.pop_front().map(|(_, e)| e);
    }
    let at = undelivered.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
    undelivered.remove(at).map(|(_, e)| e)
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// What a replay would have appended next, for the replay report.
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
        Some(Event::SignalWaitStarted { name, deadline, .. }) => {
            format!("wait for signal {name:?} until {}", deadline.to_rfc3339())
        }
        Some(Event::SignalWaitTimedOut { position }) => {
            format!("time out the signal wait at position {position}")
        }
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

/// An append in flight and the delivery of its records, polled by the driver's own task: the
/// lone append's inline commit and the delivery then run where the driver runs, with no task
/// spawned and no wake-up of another task per step (a hand-off that cost the one-run figure
/// about a wake-up of the other worker thread every second step: BENCHMARKS.md). Dropped before
/// it ends (a `join` that dropped a sibling step, [`RunShared::flush_in_background`]), the rest
/// goes on in a task of its own, so that the records are still delivered in order and no hole
/// stalls the run's later records; after [`Tasks::abort_all`] that task is aborted, as every
/// task of the engine is.
pub(crate) struct AppendInFlight {
    rest: Option<BoxFuture<'static, Result<Vec<Record>, String>>>,
    tasks_of: Arc<RunShared>,
}

impl Future for AppendInFlight {
    type Output = Result<Vec<Record>, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(rest) = self.rest.as_mut() else {
            return std::task::Poll::Ready(Err("an append was polled after it ended".into()));
        };
        let out = std::task::ready!(rest.as_mut().poll(cx));
        self.rest = None;
        std::task::Poll::Ready(out)
    }
}

impl Drop for AppendInFlight {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take() {
            // Without a runtime (it is being torn down) no task can run it, nor any reader of
            // the run: the records stay in the log for the next start.
            if tokio::runtime::Handle::try_current().is_ok() {
                drop(self.tasks_of.services.tasks.spawn(rest));
            }
        }
    }
}

/// What the driver does after a decision's events are appended.
enum Next {
    Answer(Answer),
    AskAgain,
    Attempt(u32),
    Compensate,
    Finish,
}

impl RunShared {
    pub(crate) fn new(services: Arc<Services>, state: RunState, replay_only: bool) -> Arc<Self> {
        let next_seq = state.events;
        Arc::new(RunShared {
            run: state.run,
            services,
            cancel: watch::channel(state.cancel_requested.is_some()).0,
            state: Mutex::new(state),
            pending: Mutex::new(Vec::new()),
            undelivered: Mutex::new(VecDeque::new()),
            next_position: AtomicU32::new(0),
            fatal: Mutex::new(None),
            changed: watch::channel(0).0,
            records: Mutex::new(None),
            replay_only,
            progress: watch::channel(None).0,
            delivery: Mutex::new(Delivery {
                next_seq,
                pending: BTreeMap::new(),
            }),
            folded: watch::channel((next_seq, false)).0,
            appends_in_flight: watch::channel(0).0,
            replay_calls: AtomicU64::new(0),
            replay_abandoned_waiting: AtomicU32::new(0),
        })
    }

    pub(crate) fn set_fatal(&self, f: Fatal) {
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

    /// Asks the core with the run's state as folded so far.
    fn decide<T>(&self, f: impl FnOnce(&RunState) -> T) -> T {
        f(&self.state.lock().expect("state lock"))
    }

    fn now(&self) -> DateTime<Utc> {
        self.services.clock.now()
    }

    /// Replay only: what the code would record next ends the replay.
    fn replay_end(&self, events: &[Event]) -> workflow::Error {
        let what = events.first().map_or("nothing", Event::kind);
        self.set_fatal(Fatal::ReplayEnd(describe_events(events)));
        workflow::Error::Engine(format!(
            "replay reached the end of the recorded history (the code would now record {what})"
        ))
    }

    /// Folds decided events into the state (under its lock) and queues them as pending.
    fn decided(&self, st: &mut RunState, events: Vec<Event>) -> Result<(), workflow::Error> {
        let at = self.now();
        let mut undelivered = self.undelivered.lock().expect("undelivered lock");
        for e in &events {
            let seq = st.events;
            if let Err(err) = st.apply_decided(at, e) {
                let msg = err.to_string();
                self.set_fatal(Fatal::Engine(msg.clone()));
                return Err(workflow::Error::Engine(msg));
            }
            undelivered.push_back((seq, e.clone()));
        }
        drop(undelivered);
        self.pending.lock().expect("pending lock").extend(events);
        Ok(())
    }

    /// Wakes whoever waits for the run's state to change (and its activities, on a cancel).
    fn notify(&self) {
        if self.cancel_reason().is_some() {
            self.cancel.send_replace(true);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Decides events without making them durable yet: folded now, sent to the log with the
    /// next append. For what does not leave the process (a step's result the code goes on with,
    /// a recorded value, a consumed signal): a crash before the flush that covers them loses
    /// them with everything decided after them, and nothing of that was seen outside.
    fn buffer(&self, events: Vec<Event>) -> Result<(), workflow::Error> {
        if events.is_empty() {
            return Ok(());
        }
        if self.replay_only {
            return Err(self.replay_end(&events));
        }
        {
            let mut st = self.state.lock().expect("state lock");
            self.decided(&mut st, events)?;
        }
        self.notify();
        Ok(())
    }

    /// Sends everything pending to the log (one append: one group commit). Called with the state
    /// lock held, so that appends reach the writer in the order they were decided.
    fn submit(self: &Arc<Self>, _st: &RunState) -> Option<AppendInFlight> {
        let events = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        if events.is_empty() {
            return None;
        }
        let written = self.services.log.append(self.run, events);
        // Nobody waits for more appends in flight (`quiesce` waits for none).
        send_if_awaited(&self.appends_in_flight, |n| {
            *n += 1;
            false
        });
        let me = self.clone();
        let run = self.run;
        let delivery = async move {
            let result = match written.await {
                Ok(records) => me.deliver(&records).map(|()| records),
                Err(e) => {
                    me.folded.send_modify(|(_, broken)| *broken = true);
                    Err(e.to_string())
                }
            };
            if let Err(msg) = &result {
                me.set_fatal(Fatal::Engine(msg.clone()));
            }
            let mut last = false;
            send_if_awaited(&me.appends_in_flight, |n| {
                *n -= 1;
                last = *n == 0;
                last
            });
            if last && result.is_ok() {
                me.fill_gap();
            }
            result
        };
        let delivery = AssertUnwindSafe(delivery).catch_unwind().map(move |r| {
            r.unwrap_or_else(|p| {
                Err(format!(
                    "the append of run {run} failed: it panicked: {}",
                    panic_message(p.as_ref())
                ))
            })
        });
        Some(AppendInFlight {
            rest: Some(Box::pin(delivery)),
            tasks_of: self.clone(),
        })
    }

    /// Sends what is pending without waiting for it: the workflow code waits for something else
    /// (a sibling step in flight), so nothing it decided should wait in memory.
    fn flush_in_background(self: &Arc<Self>) {
        if self.replay_only {
            return;
        }
        let st = self.state.lock().expect("state lock");
        drop(self.submit(&st));
    }

    /// Appends durably (with everything pending before them), folds into the state, wakes
    /// waiters; the records reach the followers once durable. Records are delivered in sequence
    /// order, whatever order the appends' tasks wake in; the delivery runs in its own task, so a
    /// caller dropped mid-append (a `join` that dropped a sibling) cannot leave a hole that would
    /// stall the run's later records.
    pub(crate) async fn append(
        self: &Arc<Self>,
        events: Vec<Event>,
    ) -> Result<Vec<Record>, workflow::Error> {
        if self.replay_only {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            return Err(self.replay_end(&events));
        }
        let decided_any = !events.is_empty();
        let handle = {
            let mut st = self.state.lock().expect("state lock");
            self.decided(&mut st, events)?;
            self.submit(&st)
        };
        // Only a change wakes the waiters: two waits in parallel (a signal and a timer) that
        // woke each other on every empty append would never sleep.
        if decided_any {
            self.notify();
        }
        let Some(handle) = handle else {
            return Ok(Vec::new());
        };
        let records = match handle.await {
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
        let in_order = d.pending.is_empty()
            && records.first().is_some_and(|r| r.seq == d.next_seq)
            && records.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let reordered;
        let ready: &[Record] = if in_order {
            // The usual case (one append in flight): the records are the next ones, in order.
            d.next_seq += records.len() as u64;
            records
        } else {
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
            reordered = ready;
            &reordered
        };
        if ready.is_empty() {
            return Ok(());
        }
        {
            // Our own events were folded when decided; a record beyond them was appended to the
            // log by someone else (not through this driver) and is folded now.
            let mut st = self.state.lock().expect("state lock");
            let mut undelivered = self.undelivered.lock().expect("undelivered lock");
            for r in ready {
                let failed = if r.seq < st.events {
                    match take_undelivered(&mut undelivered, r.seq) {
                        Some(decided) if decided == r.event => {
                            st.confirm(r);
                            None
                        }
                        decided => Some(format!(
                            "run {}: the log holds {} at #{}, where this driver decided {}: \
                             something appended to the run beside its driver, so the driver's \
                             state is not the log's; the run stops here, resume it to go on \
                             from its history",
                            self.run,
                            r.event.kind(),
                            r.seq,
                            decided.as_ref().map_or("nothing", Event::kind),
                        )),
                    }
                } else {
                    st.apply(r).err().map(|e| e.to_string())
                };
                if let Some(msg) = failed {
                    drop(undelivered);
                    drop(st);
                    // Before waking the waiters: this is why the run stops.
                    self.set_fatal(Fatal::Engine(msg.clone()));
                    self.folded.send_modify(|(_, broken)| *broken = true);
                    return Err(msg);
                }
            }
        }
        if self.cancel_reason().is_some() {
            self.cancel.send_replace(true);
        }
        if let Some(tx) = &*self.records.lock().expect("records lock") {
            for r in ready {
                let _ = tx.send(r.clone());
            }
        }
        let next = d.next_seq;
        send_if_awaited(&self.folded, |(n, _)| {
            *n = next;
            true
        });
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
            .services
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

    async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    fn nondeterminism(&self, reason: SuspendReason) -> workflow::Error {
        self.set_fatal(Fatal::Suspend(reason.clone()));
        workflow::Error::Nondeterminism(reason)
    }

    /// Appends a decision's events and carries out its wait, if it has one. `rx` was subscribed
    /// to the run's changes before the decision was taken, so no change is missed; `what` names
    /// the request for a replay that ends at a wait.
    async fn settle(
        self: &Arc<Self>,
        decision: Decision,
        rx: &mut watch::Receiver<u64>,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<Next, workflow::Error> {
        let (events, then) = match decision {
            Decision::Replay(answer) => return Ok(Next::Answer(answer)),
            Decision::Suspend(reason) => return Err(self.nondeterminism(reason)),
            Decision::Append { events, then } => (events, then),
        };
        let waits = matches!(
            then,
            Action::WaitUntil(_) | Action::WaitWhileHeld | Action::WaitForSignal
        );
        if self.replay_only && events.is_empty() && waits {
            self.set_fatal(Fatal::ReplayEnd(what()));
            return Err(workflow::Error::Engine(
                "replay reached the end of the recorded history".into(),
            ));
        }
        if matches!(then, Action::Answer(_)) {
            // The code goes on with the answer at once: the events go with the next append that
            // must be durable (one flush per step: a step's result shares the next step's).
            self.buffer(events)?;
        } else {
            // Starting an attempt, waiting, compensating or ending: durable first, with
            // everything pending.
            self.append(events).await?;
        }
        Ok(match then {
            Action::Answer(answer) => Next::Answer(answer),
            Action::RunAttempt { attempt } => Next::Attempt(attempt),
            Action::Compensate => Next::Compensate,
            Action::Finish => Next::Finish,
            Action::WaitUntil(t) => {
                tokio::select! {
                    // In this order, not tokio's random one: a simulation replays the same choice.
                    biased;
                    () = clock::sleep_until(self.services.clock.as_ref(), t) => {}
                    _ = rx.changed() => {}
                }
                Next::AskAgain
            }
            Action::WaitWhileHeld | Action::WaitForSignal => {
                let _ = rx.changed().await;
                Next::AskAgain
            }
        })
    }

    /// Asks the core (`decide`) until it gives an answer, carrying out its waits.
    async fn answer(
        self: &Arc<Self>,
        what: &(dyn Fn() -> String + Sync),
        decide: &(dyn Fn(&RunState, DateTime<Utc>) -> Decision + Sync),
    ) -> Result<Answer, workflow::Error> {
        loop {
            let mut rx = self.changed.subscribe();
            self.check_fatal()?;
            let decision = self.decide(|st| decide(st, self.now()));
            match self.settle(decision, &mut rx, what).await? {
                Next::Answer(a) => return Ok(a),
                Next::AskAgain => {}
                Next::Attempt(_) | Next::Compensate | Next::Finish => {
                    return Err(workflow::Error::Engine(
                        "the core asked for an attempt outside a step".into(),
                    ))
                }
            }
        }
    }
}

impl Commands for RunShared {
    fn run_id(&self) -> RunId {
        self.run
    }

    fn take_position(&self) -> u32 {
        self.replay_calls.fetch_add(1, Ordering::SeqCst);
        self.next_position.fetch_add(1, Ordering::SeqCst)
    }

    fn now(&self) -> DateTime<Utc> {
        self.services.clock.now()
    }

    fn cancel_requested(&self) -> bool {
        self.cancel_reason().is_some()
    }

    fn started_by(&self) -> String {
        self.state.lock().expect("state lock").started_by.clone()
    }

    fn fresh_uuid(&self, position: u32) -> uuid::Uuid {
        self.services.entropy.uuid(self.run, position, self.now())
    }

    fn issue(
        self: Arc<Self>,
        position: u32,
        request: Request,
    ) -> BoxFuture<'static, Result<Answer, workflow::Error>> {
        // One of these is allocated per step. At 1,376 bytes it was past glibc's per-thread cache
        // (requests up to 1,032 bytes), and every such allocation made glibc consolidate its
        // free lists; with `run_attempt`'s watchdog and cancel boxed it is 1,008 bytes (rustc
        // 1.95, x86-64), and a no-op step's CPU went from 5.3 to 4.3 µs (BENCHMARKS.md).
        Box::pin(async move {
            let answer = match request {
                Request::Step { spec, options } => {
                    return execute(&self, StepRef::Workflow(position), &spec, &options, true)
                        .await
                        .map(|output| Answer::Step(Ok(output)));
                }
                Request::Sleep(duration) => {
                    self.answer(&|| Command::Sleep.describe(), &|st, now| {
                        st.decide_sleep(position, duration, now)
                    })
                    .await?
                }
                Request::Record { kind, fresh } => {
                    let fresh = Mutex::new(Some(fresh));
                    self.answer(&|| Command::Record(kind).describe(), &|st, _| {
                        st.decide_value(position, kind, || {
                            fresh
                                .lock()
                                .expect("fresh lock")
                                .take()
                                .map_or_else(String::new, |f| f())
                        })
                    })
                    .await?
                }
                Request::Register(spec) => {
                    self.answer(
                        &|| Command::RegisterCompensation(spec.clone()).describe(),
                        &|st, _| st.decide_registration(position, &spec),
                    )
                    .await?
                }
                Request::Signal(name) => {
                    self.answer(
                        &|| Command::WaitForSignal(name.clone()).describe(),
                        &|st, _| st.decide_signal(position, &name),
                    )
                    .await?
                }
                Request::SignalUntil { name, deadline } => {
                    self.answer(
                        &|| Command::WaitForSignalUntil(name.clone()).describe(),
                        &|st, now| st.decide_signal_until(position, &name, deadline, now),
                    )
                    .await?
                }
            };
            match answer {
                Answer::Cancelled(why) => Err(workflow::Error::Cancelled(why)),
                other => Ok(other),
            }
        })
    }
}

/// Runs one step to its end: replays it, or starts (or resumes) its attempts, each decided by the
/// core, with retries.
async fn execute(
    s: &Arc<RunShared>,
    step: StepRef,
    spec: &StepSpec,
    options: &StepOptions,
    cancellable: bool,
) -> Result<Payload, workflow::Error> {
    let what = || {
        Command::Step {
            activity: spec.activity.clone(),
            input: spec.input.clone(),
        }
        .describe()
    };
    loop {
        let mut rx = s.changed.subscribe();
        s.check_fatal()?;
        let mut decision = s.decide(|st| st.step_next(step, spec, s.now(), cancellable));
        loop {
            match s.settle(decision, &mut rx, &what).await? {
                Next::AskAgain => break,
                Next::Answer(answer) => return step_answer(s, step, spec, answer).await,
                Next::Attempt(attempt) => {
                    let scheduled_at = s.decide(|st| st.step(step).map(|x| x.scheduled_at));
                    let result = run_attempt(
                        s,
                        step,
                        spec,
                        options,
                        attempt,
                        scheduled_at.unwrap_or_else(|| s.now()),
                        cancellable,
                    )
                    .await;
                    rx = s.changed.subscribe();
                    let now = s.now();
                    decision = s.decide(|st| {
                        // Only a failure waits for a retry: a completed attempt draws no delay
                        // (drawing one builds a backoff and its random jitter every step).
                        let delay = if matches!(result, AttemptResult::Failed { .. }) {
                            let failures = st.step(step).map_or(0, |x| x.failures) + 1;
                            match s.services.entropy.jitter(s.run, step, failures) {
                                Some(unit) => options.retry.delay_with_jitter(failures, unit),
                                None => options.retry.delay_after(failures),
                            }
                        } else {
                            Duration::ZERO
                        };
                        st.on_attempt_end(step, attempt, result, &options.retry, now, delay)
                    });
                }
                Next::Compensate | Next::Finish => {
                    return Err(workflow::Error::Engine(format!(
                        "the core ended the run in the middle of {step}"
                    )))
                }
            }
        }
    }
}

/// What the code gets for a step's answer: its output, the step's failure, or the cancellation; a
/// step the recorded run went on without never resolves.
async fn step_answer(
    s: &Arc<RunShared>,
    step: StepRef,
    spec: &StepSpec,
    answer: Answer,
) -> Result<Payload, workflow::Error> {
    match answer {
        Answer::Step(Ok(output)) => Ok(output),
        Answer::Step(Err(error)) => Err(workflow::Error::StepFailed {
            label: spec.label.clone(),
            activity: spec.activity.clone(),
            error,
        }),
        Answer::Cancelled(why) => Err(workflow::Error::Cancelled(why)),
        Answer::Never => {
            // The code that recorded this history went on without the step: so does this one.
            if let (true, StepRef::Workflow(p)) = (s.replay_only, step) {
                s.replay_abandoned_waiting.store(p + 1, Ordering::SeqCst);
            }
            futures::future::pending().await
        }
        other => Err(workflow::Error::Engine(format!(
            "unexpected answer for {step}: {other:?}"
        ))),
    }
}

async fn run_attempt(
    s: &Arc<RunShared>,
    step: StepRef,
    spec: &StepSpec,
    options: &StepOptions,
    attempt: u32,
    scheduled_at: DateTime<Utc>,
    cancellable: bool,
) -> AttemptResult {
    let Some(act) = s.services.activities.get(&spec.activity).cloned() else {
        return AttemptResult::Failed {
            message: format!(
                "no activity named {:?} is registered in this binary",
                spec.activity
            ),
            retryable: false,
        };
    };
    let heartbeat = Arc::new(activity::Heartbeat {
        sink: Some((step, spec.label.clone(), s.progress.clone())),
        ..activity::Heartbeat::new()
    });
    let ctx = activity::Context {
        run: s.run,
        step,
        attempt,
        scheduled_at,
        clock: s.services.clock.clone(),
        heartbeat: heartbeat.clone(),
        cancelled: s.cancel.subscribe(),
    };
    let input = spec.input.clone();
    let activity_name = spec.activity.as_str();
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
    // Boxed, and only with a heartbeat limit: its timer inline would make every step's future
    // larger than glibc's per-thread cache serves (see `issue`).
    let watchdog: BoxFuture<'_, activity::Error> = match options.heartbeat_timeout {
        None => Box::pin(futures::future::pending()),
        Some(limit) => {
            let heartbeat = &heartbeat;
            Box::pin(async move {
                loop {
                    let last = heartbeat.last.lock().expect("heartbeat lock").0;
                    let Some(deadline) = last.checked_add(limit) else {
                        return futures::future::pending::<activity::Error>().await;
                    };
                    if clock::monotonic_now() >= deadline {
                        return activity::Error::retryable(format!(
                            "{}: attempt {attempt} sent no heartbeat for {limit:?} (heartbeat limit)",
                            spec.activity
                        ));
                    }
                    tokio::time::sleep_until(deadline).await;
                }
            })
        }
    };
    // Boxed for the same reason as the watchdog.
    let cancelled: BoxFuture<'_, ()> = if cancellable {
        Box::pin(s.cancelled())
    } else {
        Box::pin(futures::future::pending())
    };
    let failed = |e: activity::Error| AttemptResult::Failed {
        message: e.message,
        retryable: e.retryable,
    };
    tokio::select! {
        // In this order, not tokio's random one: a simulation replays the same choice.
        biased;
        r = timed => r.map_or_else(failed, AttemptResult::Completed),
        e = watchdog => failed(e),
        () = cancelled => AttemptResult::Cancelled,
    }
}

/// Replay only: resolves (with the step's position) when the workflow code makes no progress any
/// more while a step that the history records as abandoned waits: the code waits for a result the
/// recorded run went on without. Replay does no IO, so a code that still runs makes calls or
/// returns within a few polls.
pub(crate) async fn waits_for_an_abandoned_step(s: &RunShared) -> u32 {
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
pub(crate) async fn call_catching_panics(
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

/// Appends what the core decides (`decide`) for the end of a phase, waiting while it says so
/// (a hold), and says whether compensations follow.
async fn conclude(
    s: &Arc<RunShared>,
    decide: &(dyn Fn(&RunState) -> Decision + Sync),
) -> Result<bool, RunOutcome> {
    loop {
        let mut rx = s.changed.subscribe();
        let decision = s.decide(decide);
        match s
            .settle(decision, &mut rx, &|| "end the run".to_owned())
            .await
        {
            Ok(Next::Compensate) => return Ok(true),
            Ok(Next::Finish) => return Ok(false),
            Ok(Next::AskAgain) => {}
            Ok(Next::Answer(_) | Next::Attempt(_)) => {
                return Err(RunOutcome::Stopped(
                    "the core answered the end of a run with a step".into(),
                ))
            }
            Err(e) => return Err(RunOutcome::Stopped(e.to_string())),
        }
    }
}

fn outcome_now(s: &RunShared) -> RunOutcome {
    let st = s.state.lock().expect("state lock");
    RunOutcome::from_status(&st.status).unwrap_or(RunOutcome::Stopped("not finished".into()))
}

/// Drives one run until it ends or cannot go on. `wf` is `None` when this binary lacks the run's
/// workflow version: only a cancel (compensations without the code) or the rest of a compensation
/// can then be driven.
pub(crate) async fn drive(s: Arc<RunShared>, wf: Option<Arc<dyn DynWorkflow>>) -> RunOutcome {
    let mut action = s.decide(RunState::resume_action);
    if action == ResumeAction::ReplayWorkflow && wf.is_none() {
        action = ResumeAction::CancelWithoutCode;
    }
    match action {
        ResumeAction::Finished => return outcome_now(&s),
        ResumeAction::CancelWithoutCode => {
            let Some(events) = s.decide(RunState::cancel_without_code_events) else {
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
            let input = s.decide(|st| st.input.clone());
            let ctx = WorkflowContext::new(s.clone());
            let mut code = std::pin::pin!(call_catching_panics(wf, ctx, input));
            // Whenever the code waits for something other than an append of its own (a sibling
            // step in flight), what it decided so far goes to the log.
            let code = futures::future::poll_fn(|cx| {
                let polled = code.as_mut().poll(cx);
                if polled.is_pending() {
                    s.flush_in_background();
                }
                polled
            });
            let result = match code.await {
                Ok(r) => r,
                Err(message) => {
                    s.set_fatal(Fatal::Suspend(SuspendReason::WorkflowPanicked { message }));
                    Err(workflow::Error::Engine("the workflow code panicked".into()))
                }
            };
            let issued = s.next_position.load(Ordering::SeqCst);
            if s.check_fatal().is_ok() {
                if let Err(r) = s.decide(|st| st.check_finished(issued)) {
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
                    return match conclude(&s, &|st| st.on_suspended(reason.clone())).await {
                        Ok(_) => RunOutcome::Suspended(reason),
                        Err(_) => RunOutcome::Stopped("could not record the suspension".into()),
                    };
                }
                None => {}
            }
            let returned = match result {
                Ok(output) => Returned::Completed(output),
                Err(workflow::Error::Refused(reasons)) => Returned::Refused(reasons),
                Err(e) => Returned::Failed(e.to_string()),
            };
            match conclude(&s, &|st| st.on_workflow_returned(&returned)).await {
                Ok(true) => {}
                Ok(false) => return outcome_now(&s),
                Err(stopped) => return stopped,
            }
        }
        ResumeAction::Compensate => {}
    }
    compensate(&s).await
}

/// Runs the compensation plan (newest registration first), then ends the run as the core
/// decides.
async fn compensate(s: &Arc<RunShared>) -> RunOutcome {
    let options = compensation_options();
    let mut index = 0;
    while let Some(spec) = s.decide(|st| st.compensation_step(index)) {
        let step = StepRef::Compensation(u32::try_from(index).unwrap_or(u32::MAX));
        match execute(s, step, &spec, &options, false).await {
            Ok(_) | Err(workflow::Error::StepFailed { .. }) => {}
            Err(e) => return RunOutcome::Stopped(e.to_string()),
        }
        index += 1;
    }
    match conclude(s, &RunState::on_compensations_done).await {
        Ok(_) => outcome_now(s),
        Err(stopped) => stopped,
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use crate::event::{Event, Payload, Record, RunId};
    use crate::log::{self, EventLog, SharedLog};
    use crate::workflow::{self, Workflow};
    use crate::{Engine, RunOutcome, WorkflowContext};

    type AppendHook = dyn Fn(&SharedLog, RunId, Vec<Event>) -> BoxFuture<'static, Result<Vec<Record>, log::Error>>
        + Send
        + Sync;

    /// The memory log with `hook` in front of its appends (each test's own: counting,
    /// intruding, gating, recording the polling task); reads go straight to it.
    struct Hooked {
        inner: SharedLog,
        hook: Box<AppendHook>,
    }

    impl Hooked {
        fn log(
            inner: SharedLog,
            hook: impl Fn(
                    &SharedLog,
                    RunId,
                    Vec<Event>,
                ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>>
                + Send
                + Sync
                + 'static,
        ) -> SharedLog {
            Arc::new(Hooked {
                inner,
                hook: Box::new(hook),
            })
        }
    }

    impl EventLog for Hooked {
        fn append(
            &self,
            run: RunId,
            events: Vec<Event>,
        ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
            (self.hook)(&self.inner, run, events)
        }
        fn read(&self, run: RunId) -> Result<Vec<Record>, log::Error> {
            self.inner.read(run)
        }
        fn open_runs(&self) -> Result<Vec<RunId>, log::Error> {
            self.inner.open_runs()
        }
        fn runs(&self) -> Result<Vec<RunId>, log::Error> {
            self.inner.runs()
        }
    }

    /// A record at a number the driver decided one of its events at must be that event: a
    /// record appended beside the driver there stops the run loudly, naming both, instead of
    /// being skipped as the driver's own (which applied the driver's own event twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_record_where_the_driver_decided_stops_the_run_loudly() {
        let memory: SharedLog = crate::memory_log();
        // On the run's first append after `RunStarted`, the log first appends a signal of its
        // own: a writer beside the driver, taking the number the driver decided its next event at.
        let appends = AtomicU64::new(0);
        let log = Hooked::log(memory.clone(), move |inner, run, events| {
            if appends.fetch_add(1, Ordering::SeqCst) != 1 {
                return inner.append(run, events);
            }
            let inner = inner.clone();
            let foreign = crate::core::signal_received("note", Payload::null(), "intruder");
            Box::pin(async move {
                inner.append(run, vec![foreign]).await?;
                inner.append(run, events).await
            })
        });
        let engine = Engine::builder(log)
            .workflow(Steps)
            .activity_fn("noop", |_, input| async move { Ok(input) })
            .build();
        let run = engine.start::<Steps>(&2, "t").await.unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), engine.wait(run))
            .await
            .expect("the driver stops")
            .unwrap();
        let RunOutcome::Stopped(why) = &out else {
            panic!("the run stops for an engine error: {out:?}")
        };
        assert!(
            why.contains("SignalReceived at #1, where this driver decided StepScheduled")
                && why.contains("resume it"),
            "{why}"
        );
        let records = memory.read(run).unwrap();
        crate::core::RunState::from_records(&records).expect("the log's history stays valid");
    }

    /// `resume_all` between a start's durable `RunStarted` and the start's own driver (a
    /// daemon resuming while a run is started beside it) resumes the new run; the start then
    /// leaves it to that driver. Before, the start spawned a second driver and the history had
    /// every step scheduled twice ("invalid history: step 0 scheduled twice").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_between_a_starts_append_and_its_driver_drives_the_run_once() {
        let memory: SharedLog = crate::memory_log();
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        // The first append (the start's `RunStarted`) is durable at once, but its future says
        // so only after the test lets it go: the window between a start's append and its driver.
        let gate = std::sync::Mutex::new(Some((durable_tx, go_rx)));
        let log = Hooked::log(memory.clone(), move |inner, run, events| {
            let gate = gate.lock().expect("gate lock").take();
            let written = inner.append(run, events);
            Box::pin(async move {
                let out = written.await;
                if let Some((durable, go)) = gate {
                    let _ = durable.send(());
                    let _ = go.await;
                }
                out
            })
        });
        let engine = Engine::builder(log)
            .workflow(Steps)
            .activity_fn("noop", |_, input| async move { Ok(input) })
            .build();
        let starting = tokio::spawn({
            let engine = engine.clone();
            async move { engine.start::<Steps>(&3, "t").await }
        });
        durable_rx.await.expect("the start's RunStarted is durable");
        let report = engine.resume_all().unwrap();
        assert_eq!(report.resumed.len(), 1, "the new run is open: resumed");
        go_tx.send(()).expect("the start waits");
        let run = starting.await.unwrap().unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), engine.wait(run))
            .await
            .expect("the run ends")
            .unwrap();
        assert!(matches!(out, RunOutcome::Completed(_)), "{out:?}");
        let records = memory.read(run).unwrap();
        crate::core::RunState::from_records(&records).expect("the history is valid");
        let scheduled = records
            .iter()
            .filter(|r| matches!(r.event, Event::StepScheduled { .. }))
            .count();
        assert_eq!(scheduled, 3, "each step scheduled once");
    }

    struct Steps;

    impl Workflow for Steps {
        const NAME: &'static str = "steps";
        const VERSION: u32 = 1;
        type Input = u32;
        type Output = u32;
        async fn run(&self, ctx: WorkflowContext, n: u32) -> Result<u32, workflow::Error> {
            for i in 0..n {
                let _: u32 = ctx.step("noop", &i).await?;
            }
            Ok(n)
        }
    }

    struct SignalOrTimer(Arc<AtomicU64>);

    impl Workflow for SignalOrTimer {
        const NAME: &'static str = "signal-or-timer";
        const VERSION: u32 = 1;
        type Input = ();
        type Output = bool;
        async fn run(&self, ctx: WorkflowContext, (): ()) -> Result<bool, workflow::Error> {
            let polls = self.0.clone();
            let signal = ctx.wait_for_signal::<Payload>("approve");
            let timer = ctx.sleep(std::time::Duration::from_millis(200));
            let mut signal = std::pin::pin!(signal);
            let mut timer = std::pin::pin!(timer);
            std::future::poll_fn(|cx| {
                // On paused time a busy loop would never let the clock reach the timer: fail
                // instead of hanging.
                if polls.fetch_add(1, Ordering::SeqCst) > 1000 {
                    return std::task::Poll::Ready(Err(workflow::Error::failed(
                        "polled over 1000 times: the waits wake each other in a busy loop",
                    )));
                }
                match (signal.as_mut().poll(cx), timer.as_mut().poll(cx)) {
                    (std::task::Poll::Ready(r), _) => std::task::Poll::Ready(r.map(|_| true)),
                    (_, std::task::Poll::Ready(r)) => std::task::Poll::Ready(r.map(|()| false)),
                    _ => std::task::Poll::Pending,
                }
            })
            .await
        }
    }

    /// Two waits in parallel (an approval with a timeout) sleep until one of them ends: the
    /// empty appends of their waits wake nobody (they woke each other in a busy loop). On paused
    /// time, with the simulation log: the 200 ms timer passes in simulated time.
    #[tokio::test(start_paused = true)]
    async fn parallel_waits_sleep_until_one_ends() {
        let polls = Arc::new(AtomicU64::new(0));
        let log = crate::log::sim::SimLog::new();
        let engine = Engine::builder(log.clone())
            .clock(Arc::new(crate::clock::TokioClock::starting_at(
                chrono::DateTime::UNIX_EPOCH,
            )))
            .workflow(SignalOrTimer(polls.clone()))
            .build();
        let start = crate::clock::monotonic_now();
        let run = engine.start::<SignalOrTimer>(&(), "t").await.unwrap();
        let out = engine.wait(run).await.unwrap();
        assert_eq!(out, RunOutcome::Completed(Payload("false".into())));
        assert_eq!(
            start.elapsed(),
            std::time::Duration::from_millis(200),
            "the timer ended the waits, in simulated time"
        );
        let polls = polls.load(Ordering::SeqCst);
        assert!(
            polls < 50,
            "the workflow was polled {polls} times in 200 ms of waiting"
        );
    }

    /// Issue 10: a step's result shares its flush with the next step's scheduling: a run of `n`
    /// steps makes `n + 2` appends (`RunStarted`; each step's start carrying the previous step's
    /// result; `RunCompleted` with the last result), where two flushes per step made `2n + 2`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_append_per_step_and_every_event_in_order() {
        let appends = Arc::new(AtomicU64::new(0));
        let memory: SharedLog = crate::memory_log();
        let counted = appends.clone();
        let log = Hooked::log(memory.clone(), move |inner, run, events| {
            counted.fetch_add(1, Ordering::SeqCst);
            inner.append(run, events)
        });
        let engine = Engine::builder(log)
            .workflow(Steps)
            .activity_fn("noop", |_, input| async move { Ok(input) })
            .build();
        let run = engine.start::<Steps>(&50, "t").await.unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), engine.wait(run))
            .await
            .expect("the run finishes")
            .unwrap();
        assert_eq!(out, RunOutcome::Completed(Payload("50".into())));
        assert_eq!(appends.load(Ordering::SeqCst), 52);
        let kinds: Vec<&str> = memory
            .read(run)
            .unwrap()
            .iter()
            .map(|r| r.event.kind())
            .collect();
        assert_eq!(kinds.len(), 2 + 3 * 50);
        for (i, w) in kinds[1..151].chunks(3).enumerate() {
            assert_eq!(
                w,
                ["StepScheduled", "AttemptStarted", "StepCompleted"],
                "step {i}"
            );
        }
        assert_eq!(kinds.last(), Some(&"RunCompleted"));
    }

    /// A run's appends are polled by its driver's own task, the one that calls its activities:
    /// no task per append, so no hand-off to another task and back per step (a task per append
    /// cost a wake-up of the other worker thread every second step: BENCHMARKS.md). On a
    /// multi-thread runtime, as the engine runs in production.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runs_appends_are_polled_by_its_drivers_own_task() {
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Records which tokio task polls each append (and each activity call).
        let recorded = tasks.clone();
        let log = Hooked::log(crate::memory_log(), move |inner, run, events| {
            let written = inner.append(run, events);
            let tasks = recorded.clone();
            Box::pin(async move {
                tasks.lock().unwrap().push(tokio::task::try_id());
                written.await
            })
        });
        let in_activity = tasks.clone();
        let engine = Engine::builder(log)
            .workflow(Steps)
            .activity_fn("noop", move |_, input| {
                in_activity.lock().unwrap().push(tokio::task::try_id());
                async move { Ok(input) }
            })
            .build();
        let run = engine.start::<Steps>(&50, "t").await.unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), engine.wait(run))
            .await
            .expect("the run finishes")
            .unwrap();
        assert_eq!(out, RunOutcome::Completed(Payload("50".into())));
        let tasks = tasks.lock().unwrap();
        // `start` appends `RunStarted` itself, from the caller's task; the driver does the rest.
        let driver: std::collections::BTreeSet<_> = tasks[1..].iter().collect();
        assert_eq!(tasks.len(), 1 + 51 + 50, "{tasks:?}");
        assert_eq!(
            driver.len(),
            1,
            "the driver's appends and activity calls ran in {} tasks: {driver:?}",
            driver.len()
        );
        assert!(driver.iter().all(|t| t.is_some()), "{driver:?}");
    }
}
