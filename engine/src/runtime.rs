//! The `Engine` API: build an engine, then start, resume, signal, wait for, follow, replay,
//! resolve and shut down runs. Each run is driven by its own task ([`crate::driver`]); what
//! workflow code sees is in [`crate::context`], re-exported here.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::{broadcast, watch};

use crate::activity::{self, Activity, DynActivity, FnActivity};
use crate::clock::{SharedClock, SystemClock};
use crate::core::{self, ResumeAction, RunState, RunStatus};
use crate::driver::{self, Fatal, RunShared, Services, Tasks};
use crate::entropy::Entropy;
use crate::event::{Event, Payload, Record, RunId, SuspendReason};
use crate::log::{self, SharedLog};
use crate::workflow::{self, DynWorkflow, Workflow};

pub use crate::context::{compensation_options, StepCall, StepOptions, WorkflowContext};
pub use crate::driver::RunOutcome;

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
    /// The engine was aborted ([`Engine::abort`]): it takes no more work.
    #[error(
        "this engine was aborted (a simulated process death) and takes no more work; build a new \
         engine on the log to go on"
    )]
    Aborted,
    /// The run has ended; signals no longer apply.
    #[error("run {run} has already ended ({status})")]
    Finished {
        /// The run.
        run: RunId,
        /// How it ended.
        status: String,
    },
}

struct ActiveRun {
    shared: Arc<RunShared>,
    outcome: watch::Receiver<Option<RunOutcome>>,
    /// Set by [`Engine::relinquish`]: the driver's task drops the driver where it stands.
    relinquish: Arc<watch::Sender<Option<String>>>,
}

/// Direct writes of signals to one run in flight, and whether a resume waits for them.
#[derive(Default)]
struct DirectWrites {
    writers: usize,
    resume_wanted: bool,
}

/// One signal written directly: when the last of a run's ends (written, failed or dropped), the
/// resume asked meanwhile starts the driver, from the log as it is then.
struct DirectWrite {
    engine: Engine,
    run: RunId,
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        let resume = {
            let mut direct = self.engine.inner.direct.lock().expect("direct lock");
            let entry = direct.entry(self.run).or_default();
            entry.writers = entry.writers.saturating_sub(1);
            if entry.writers == 0 {
                direct.remove(&self.run).is_some_and(|e| e.resume_wanted)
            } else {
                false
            }
        };
        if resume {
            if let Err(e) = self.engine.resume(self.run) {
                tracing::warn!(run = %self.run, error = %e,
                    "a resume asked while a signal was being written could not start the run");
            }
        }
    }
}

/// A run being started ([`Inner::starting`]) until dropped: by its start under the `active`
/// lock just before it spawns the driver, or when the start failed (a later resume finds the
/// run if its `RunStarted` became durable after all).
struct Starting<'a> {
    inner: &'a Inner,
    run: RunId,
}

impl<'a> Starting<'a> {
    fn new(inner: &'a Inner, run: RunId) -> Self {
        inner.starting.lock().expect("starting lock").insert(run);
        Starting { inner, run }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.inner
            .starting
            .lock()
            .expect("starting lock")
            .remove(&self.run);
    }
}

struct Inner {
    services: Arc<Services>,
    workflows: HashMap<(String, u32), Arc<dyn DynWorkflow>>,
    /// Runs driven by this engine. Lock order: `active`, then `starting`, then `direct`.
    active: Mutex<HashMap<RunId, ActiveRun>>,
    /// Runs being started: their `RunStarted` is being appended, and their start spawns their
    /// driver; a resume meanwhile (the run is open in the log) leaves them to it.
    starting: Mutex<HashSet<RunId>>,
    /// Signals being written to the log directly (their run had no driver when they were sent),
    /// per run; no driver of that run starts before they are durable (see [`Engine::resume`]).
    direct: Mutex<HashMap<RunId, DirectWrites>>,
    shutdown: watch::Sender<bool>,
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    log: SharedLog,
    clock: SharedClock,
    seed: Option<u64>,
    workflows: HashMap<(String, u32), Arc<dyn DynWorkflow>>,
    activities: HashMap<String, Arc<dyn DynActivity>>,
}

impl EngineBuilder {
    /// Uses `clock` instead of the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Draws run ids, `ctx.uuid()` values and retry jitter from `seed` instead of the operating
    /// system's randomness (UUID v7 whose time part is the engine clock's): two runs with the
    /// same seed, clock and inputs produce the same history byte for byte (on paused time, with
    /// a `TokioClock`). For deterministic simulation; never for production runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
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
        // The log stamps its records with the engine's clock.
        self.log.use_clock(self.clock.clone());
        let entropy = match self.seed {
            None => Entropy::Random,
            Some(seed) => {
                let runs = self.log.runs().map_or(0, |r| r.len() as u64);
                Entropy::seeded(seed, runs)
            }
        };
        Engine {
            inner: Arc::new(Inner {
                services: Arc::new(Services {
                    log: self.log,
                    clock: self.clock,
                    entropy,
                    activities: self.activities,
                    tasks: Tasks::default(),
                }),
                workflows: self.workflows,
                active: Mutex::new(HashMap::new()),
                starting: Mutex::new(HashSet::new()),
                direct: Mutex::new(HashMap::new()),
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
            seed: None,
            workflows: HashMap::new(),
            activities: HashMap::new(),
        }
    }

    /// The log.
    pub fn log(&self) -> &SharedLog {
        &self.inner.services.log
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
        self.check_not_aborted()?;
        let wf = self.latest(workflow)?;
        let run = self
            .inner
            .services
            .entropy
            .run_id(self.inner.services.clock.now());
        // From before its `RunStarted` is appended until its driver runs, the run is this
        // start's: a resume meanwhile (`resume_all` finds it open in the log) leaves it, so
        // that one driver, not two, decides its events.
        let starting = Starting::new(&self.inner, run);
        let records = self
            .inner
            .services
            .log
            .append(
                run,
                vec![core::run_started(
                    wf.name(),
                    wf.version(),
                    input,
                    started_by,
                )],
            )
            .await?;
        let state = RunState::from_records(&records)?;
        let mut active = self.inner.active.lock().expect("active lock");
        drop(starting);
        self.spawn_locked(&mut active, state, Some(wf));
        Ok(run)
    }

    /// Resumes every run the log has as unfinished (a run that ended, even one that needs an
    /// operator, is not open and is left alone).
    pub fn resume_all(&self) -> Result<ResumeReport, Error> {
        self.check_not_aborted()?;
        let mut report = ResumeReport::default();
        for run in self.inner.services.log.open_runs()? {
            match self.resume(run) {
                Ok(()) => report.resumed.push(run),
                Err(e) => report.refused.push((run, e)),
            }
        }
        Ok(report)
    }

    /// Resumes one unfinished run (a no-op if this engine already drives it). The run's state is
    /// read from the log under the engine's lock of its runs, so no signal written directly can
    /// land between that read and the driver's start; while such a write is in flight, the driver
    /// starts once it is durable (and its read includes it).
    pub fn resume(&self, run: RunId) -> Result<(), Error> {
        self.check_not_aborted()?;
        let mut active = self.inner.active.lock().expect("active lock");
        if active.contains_key(&run)
            || self
                .inner
                .starting
                .lock()
                .expect("starting lock")
                .contains(&run)
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
        {
            let mut direct = self.inner.direct.lock().expect("direct lock");
            if let Some(writes) = direct.get_mut(&run) {
                writes.resume_wanted = true;
                return Ok(());
            }
        }
        self.spawn_locked(&mut active, state, wf);
        Ok(())
    }

    fn spawn_locked(
        &self,
        active: &mut HashMap<RunId, ActiveRun>,
        state: RunState,
        wf: Option<Arc<dyn DynWorkflow>>,
    ) {
        let run = state.run;
        let shared = RunShared::new(self.inner.services.clone(), state, false);
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let relinquish = Arc::new(watch::channel(None).0);
        let shared_for_removal = shared.clone();
        let mut relinquished = relinquish.subscribe();
        // Kept by the task too: the channel stays open while the driver runs, whoever drops
        // the run's entry.
        let relinquish_kept = relinquish.clone();
        active.insert(
            run,
            ActiveRun {
                shared: shared.clone(),
                outcome: outcome_rx,
                relinquish,
            },
        );
        let inner = self.inner.clone();
        let mut shutdown = self.inner.shutdown.subscribe();
        self.inner.services.tasks.spawn(async move {
            // The driver catches the workflow's and the activities' panics itself; this is the
            // last guard (a bug in the engine): whatever happens, the run stops being active,
            // so that resume and cancel work on it again, and the engine goes on.
            let driven = AssertUnwindSafe(driver::drive(shared, wf)).catch_unwind();
            let outcome = tokio::select! {
                // In this order, not tokio's random one: a simulation replays the same choice.
                biased;
                o = driven => o.unwrap_or_else(|p| RunOutcome::Stopped(format!(
                    "the driver of run {run} panicked: {}; resume the run to go on",
                    driver::panic_message(p.as_ref())
                ))),
                _ = shutdown.wait_for(|s| *s) => RunOutcome::Stopped("engine shut down".into()),
                why = relinquished.wait_for(Option::is_some) => RunOutcome::Stopped(
                    why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default(),
                ),
            };
            drop(relinquish_kept);
            {
                // Only this driver's entry: after a relinquish, a new driver of the run may
                // have been started meanwhile.
                let mut active = inner.active.lock().expect("active lock");
                if active
                    .get(&run)
                    .is_some_and(|a| Arc::ptr_eq(&a.shared, &shared_for_removal))
                {
                    active.remove(&run);
                }
            }
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
        self.check_not_aborted()?;
        let event = core::signal_received(name, payload, sent_by);
        // Whether a driver takes the signal, or it is written directly, is decided under the
        // lock of the engine's runs: a driver starting meanwhile would decide its own events at
        // the sequence number the direct write takes.
        let (shared, _direct) = {
            let active = self.inner.active.lock().expect("active lock");
            if let Some(a) = active.get(&run) {
                (Some(a.shared.clone()), None)
            } else {
                self.inner
                    .direct
                    .lock()
                    .expect("direct lock")
                    .entry(run)
                    .or_default()
                    .writers += 1;
                let write = DirectWrite {
                    engine: self.clone(),
                    run,
                };
                (None, Some(write))
            }
        };
        if let Some(shared) = shared {
            shared
                .append(vec![event])
                .await
                .map_err(|e| Error::Log(log::Error::Storage(e.to_string())))?;
            return Ok(());
        }
        self.unfinished_state(run)?;
        self.inner.services.log.append(run, vec![event]).await?;
        if name == core::signals::CANCEL {
            // A run no driver can take any further (suspended, or of a version this binary
            // lacks) is cancelled without its code: its compensations run from the history.
            // Its driver starts when this write (and any other direct one) has ended.
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
        self.check_not_aborted()?;
        let event = self
            .state(run)?
            .resolution(by, note)
            .map_err(|detail| Error::NothingToResolve { run, detail })?;
        self.inner.services.log.append(run, vec![event]).await?;
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
        let records = self.inner.services.log.read(run)?;
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
        let records = self.inner.services.log.read(run)?;
        let state = RunState::from_records(&records)?;
        let wf = self.workflow_for(&state)?;
        let shared = RunShared::new(self.inner.services.clone(), state.clone(), true);
        let call = driver::call_catching_panics(
            wf,
            WorkflowContext::new(shared.clone()),
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
            position = driver::waits_for_an_abandoned_step(&shared) => {
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

    /// The simulated death of the process: every driver task and every activity in flight is
    /// dropped at once (each aborted task is never polled again), nothing is appended or
    /// journaled (unlike [`Engine::shutdown`]), and the engine refuses further work
    /// ([`Error::Aborted`]). What the log made durable stays; a new engine on it resumes the runs
    /// (attempts in flight are re-attempted under their idempotency keys). Tasks the activities
    /// spawned themselves are theirs to end.
    pub fn abort(&self) {
        self.inner.services.tasks.abort_all();
        self.inner.active.lock().expect("active lock").clear();
        self.inner.direct.lock().expect("direct lock").clear();
    }

    /// Stops driving `run` here without appending anything: its driver is dropped where it
    /// stands, with every activity in flight inside it (their futures are dropped, as at a
    /// process death), and the run is no longer active, so [`Engine::shutdown`] journals nothing
    /// for it. For a daemon that lost the run's lease to another daemon, which now owns the
    /// history: an append from here would be refused by the store's fence anyway, and an
    /// `AttemptInterrupted` is the new owner's to write. Appends already handed to the log
    /// before this call are not recalled (the fence decides them). `why` becomes the
    /// [`RunOutcome::Stopped`] reason of those waiting for the run. Returns whether a driver
    /// was stopped (false: this engine was not driving the run).
    pub fn relinquish(&self, run: RunId, why: &str) -> bool {
        let Some(a) = self.inner.active.lock().expect("active lock").remove(&run) else {
            return false;
        };
        a.relinquish.send_replace(Some(why.to_owned()));
        true
    }

    /// Tasks of this engine (drivers, deliveries of appends) not finished yet: 0 once every run
    /// has ended, or after [`Engine::abort`] once the runtime has dropped them.
    pub fn running_tasks(&self) -> usize {
        self.inner.services.tasks.running()
    }

    fn check_not_aborted(&self) -> Result<(), Error> {
        if self.inner.services.tasks.aborted() {
            Err(Error::Aborted)
        } else {
            Ok(())
        }
    }

    /// Stops every driver where it stands, then journals each attempt that was in flight as
    /// interrupted (`AttemptInterrupted`), so the history says why it has no result; the next
    /// start resumes those steps with their next attempt, under the same idempotency key.
    pub async fn shutdown(&self) {
        if self.inner.services.tasks.aborted() {
            return;
        }
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
            let open = state.shutdown_events();
            if !open.is_empty() {
                let _ = self.inner.services.log.append(run, open).await;
            }
        }
    }
}
