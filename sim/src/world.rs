//! One explored execution: a fresh estate (the sandbox, in memory, on a simulated clock) and a
//! fresh engine (on a [`SimLog`], the engine's [`TokioClock`], seeded ids), both on one
//! current-thread tokio runtime with paused time, so that the whole run, at the real systems'
//! durations, passes in simulated time and two executions of the same seed and schedule are the
//! same byte for byte. A crash is the log taking it at an append boundary, then
//! [`Engine::abort`] (the process dies: every task dropped, nothing journaled), then a new engine
//! on [`SimLog::restart`] (exactly the durable records) that resumes every unfinished run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use waymark_engine::clock::{SharedClock, TokioClock};
use waymark_engine::log::sim::SimLog;
use waymark_engine::log::EventLog;
use waymark_engine::runtime::{EngineBuilder, ReplayVerdict};
use waymark_engine::{Engine, Payload, Record, RunId, RunOutcome};
use waymark_sandbox::{Clock, Options, Sandbox, Scenario, Shared, Spec};

use crate::check;
use crate::hooked::{HookedLog, Hooks, Trace};
use crate::schedule::{Crash, EstateChange, Mark, Schedule};

/// Where every execution's clocks start (the engine's and the sandbox's): a fixed instant, so
/// that timestamps in histories do not depend on when the explorer ran.
pub const EPOCH: &str = "2026-01-05T02:00:00Z";

/// The estate's tick in simulated ms: every transition of the models is exact at a change (the
/// monitor's maxima are evaluated there); between changes the monitor looks this often. Real
/// health checks take 10 s and heartbeats 1 s, so 200 ms misses nothing a gate could see, and
/// costs 5 wakes per simulated second instead of 50.
pub const TICK_MS: u64 = 200;

/// The node whose tserver bootstraps slowly in [`EstateChange::SlowBootstrap`].
pub const SLOW_NODE: &str = "yb-a-2";

/// The epoch as a time.
pub fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(EPOCH)
        .expect("EPOCH is RFC 3339")
        .with_timezone(&Utc)
}

/// Errors of one execution that are not findings about the workflow: the estate or the
/// runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox did not start, or its folder could not be prepared.
    #[error("the simulated estate in {dir} could not start: {source}; check that the folder is writable")]
    Sandbox {
        /// The estate's folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The subject could not make its input from the estate.
    #[error("{workflow}: no input for the simulated estate: {detail}")]
    Input {
        /// The workflow.
        workflow: String,
        /// Why.
        detail: String,
    },
    /// The current-thread runtime could not be built.
    #[error("cannot start a tokio runtime for the simulation: {0}")]
    Runtime(std::io::Error),
}

/// The estate a subject sees when it makes its input and checks its end state.
pub struct World<'a> {
    /// The running sandbox.
    pub sandbox: &'a Sandbox,
    /// Its folder (`inventory.toml`, `kubeconfig`, `known_hosts`, the SSH keys).
    pub dir: &'a Path,
}

impl World<'_> {
    /// The sandbox's shared state (models, effects, faults, monitor).
    pub fn shared(&self) -> &Arc<Shared> {
        self.sandbox.shared()
    }
}

/// How the run ended (after every crash of the schedule and the restarts that followed).
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// The first append (`RunStarted`) was lost to a crash: the run never existed.
    NotStarted,
    /// Completed.
    Completed,
    /// Failed or cancelled, every compensation done.
    Compensated(String),
    /// Ended with COMPENSATION INCOMPLETE: holds its cluster for an operator.
    NeedsOperator(String),
    /// Refused before any change.
    Refused(Vec<String>),
    /// Suspended (non-determinism, a panic of the workflow code).
    Suspended(String),
    /// The driver stopped without an end.
    Stopped(String),
    /// Still going (`status`) when the execution's limit of simulated time passed.
    Stuck(String),
}

impl End {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            End::NotStarted => "not-started",
            End::Completed => "completed",
            End::Compensated(_) => "compensated",
            End::NeedsOperator(_) => "needs-operator",
            End::Refused(_) => "refused",
            End::Suspended(_) => "suspended",
            End::Stopped(_) => "stopped",
            End::Stuck(_) => "stuck",
        }
    }
}

/// A workflow under exploration, with its estate: what to register, what input to give, what
/// its end state must be. [`crate::YbMaintenance`] is the runbook's; a test suite implements it
/// for its own workflow (or a known-bad variant, to see the explorer find the flaw).
pub trait Subject: Send + Sync {
    /// The workflow's name (as registered).
    fn workflow(&self) -> &str;

    /// The estate to simulate (default: the sandbox's, at the real systems' durations).
    fn spec(&self) -> Spec {
        Spec::default().with_time_scale(1.0)
    }

    /// Registers the workflow and every activity it calls.
    fn register(&self, builder: EngineBuilder) -> EngineBuilder;

    /// The run's input on this estate.
    fn input(&self, world: &World<'_>) -> Result<Payload, String>;

    /// What the subject needs to remember of the estate before the run (e.g. the traffic
    /// weights it must restore), given back to [`Subject::check_end`].
    fn before(&self, world: &World<'_>) -> serde_json::Value {
        let _ = world;
        serde_json::Value::Null
    }

    /// The subject's own end-state checks (beyond the explorer's: effects at most once, the
    /// monitor's invariants, the history, never stuck or suspended): one line per violation.
    fn check_end(&self, world: &World<'_>, end: &End, before: &serde_json::Value) -> Vec<String>;
}

/// What one execution did and what the checks found.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The seed.
    pub seed: u64,
    /// The schedule it ran.
    pub schedule: Schedule,
    /// The run (none when its start was lost).
    pub run: Option<RunId>,
    /// How it ended.
    pub end: End,
    /// Every invariant it broke (empty: all green).
    pub violations: Vec<String>,
    /// The run's durable history, decoded.
    pub records: Vec<Record>,
    /// The same records as stored (codec bytes), for byte-for-byte comparisons.
    pub encoded: Vec<Vec<u8>>,
    /// Steps the run scheduled, in order, with their activity.
    pub steps: Vec<(waymark_engine::StepRef, String)>,
    /// Appends each incarnation of the engine process made.
    pub appends: Vec<u64>,
    /// The estate's effects when each incarnation began (the last one's crash points inside
    /// activities are its effects from there to `effects`).
    pub effects_at_start: Vec<usize>,
    /// Per planned fault: whether it fired.
    pub fired: Vec<bool>,
    /// Simulated time from the estate's start to the run's end.
    pub simulated: Duration,
    /// Effects the estate recorded (its crash points inside activities are `e0` to one less).
    pub effects: usize,
    /// Where the first planned fault's step began (the append of its `StepScheduled`).
    pub fault_from: Option<Mark>,
    /// Where it ended (the append of its `StepCompleted`/`StepFailed`).
    pub fault_until: Option<Mark>,
    /// Where the first compensation began.
    pub compensation_from: Option<Mark>,
    /// Per step that ended, the systems that received a request while it was in flight.
    pub touched: Vec<(waymark_engine::StepRef, Vec<&'static str>)>,
}

/// Knobs of one execution.
#[derive(Clone, Debug)]
pub struct ExecutionOptions {
    /// The folder of the estate (emptied first; the same folder gives the same paths in the
    /// run's input, hence the same history).
    pub dir: PathBuf,
    /// Simulated time after which a run that has not ended is reported stuck.
    pub run_limit: Duration,
}

/// Runs `schedule` once on a fresh estate and engine, on a current-thread runtime with paused
/// time, and checks every invariant. Must not be called from inside a tokio runtime.
pub fn execute(
    subject: &dyn Subject,
    seed: u64,
    schedule: &Schedule,
    options: &ExecutionOptions,
) -> Result<Execution, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(drive(subject, seed, schedule, options))
}

fn build(subject: &dyn Subject, log: Arc<dyn EventLog>, clock: &SharedClock, seed: u64) -> Engine {
    subject
        .register(Engine::builder(log).clock(clock.clone()).seed(seed))
        .build()
}

/// Empties the estate's folder but for `endpoints.json`: the sandbox binds the same ports
/// again, so the inventory (the run's input) and with it the whole history are the same from one
/// execution to the next. Loopback ports chosen by the kernel would differ every time.
fn prepare_dir(dir: &Path) -> Result<(), Error> {
    let fail = |source| Error::Sandbox {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if path.file_name().is_some_and(|n| n == "endpoints.json") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(fail)?;
        } else {
            std::fs::remove_file(&path).map_err(fail)?;
        }
    }
    Ok(())
}

async fn drive(
    subject: &dyn Subject,
    seed: u64,
    schedule: &Schedule,
    options: &ExecutionOptions,
) -> Result<Execution, Error> {
    let dir = options.dir.as_path();
    prepare_dir(dir)?;
    let start = tokio::time::Instant::now();
    let sandbox_options = Options {
        clock: Clock::simulated(epoch()),
        seed: Some(seed),
        in_memory: true,
        tick_ms: Some(TICK_MS),
    };
    let mut started = Sandbox::start_with(dir, &subject.spec(), &sandbox_options).await;
    // Another process may have taken one of this folder's ports since the last execution (a
    // port freed between executions is fair game for any bind to port 0 on the machine). Then
    // the estate moves to ports the kernel chooses: the inventory, and so the bytes of this
    // folder's later histories, change with them; no verdict depends on a port.
    for _ in 0..3 {
        match &started {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let _ = std::fs::remove_file(dir.join("endpoints.json"));
                prepare_dir(dir)?;
                started = Sandbox::start_with(dir, &subject.spec(), &sandbox_options).await;
            }
            _ => break,
        }
    }
    let sandbox = started.map_err(|source| Error::Sandbox {
        dir: dir.to_owned(),
        source,
    })?;
    waymark_workflows::sandbox::write_inventory(dir, sandbox.description()).map_err(|source| {
        Error::Sandbox {
            dir: dir.to_owned(),
            source,
        }
    })?;
    let world = World {
        sandbox: &sandbox,
        dir,
    };
    let mut violations = Vec::new();
    let input = subject.input(&world).map_err(|detail| Error::Input {
        workflow: subject.workflow().to_owned(),
        detail,
    })?;
    let before = subject.before(&world);
    for change in &schedule.estate {
        let knob = match change {
            EstateChange::SlowBootstrap => Scenario::SlowBootstrap {
                node: SLOW_NODE.into(),
                factor: 5.0,
            },
            EstateChange::ZoneBUnhealthy => Scenario::ZoneBUnhealthy,
            EstateChange::WeightsByHand(_) => continue,
        };
        if let Err(e) = sandbox.shared().apply(&knob) {
            violations.push(format!("the estate change {change} could not be made: {e}"));
        }
    }
    let at_start = sandbox.shared().invariants();
    let hooks = Hooks::new(
        sandbox.shared().clone(),
        schedule.faults.clone(),
        &schedule.estate,
    );
    let clock: SharedClock = Arc::new(TokioClock::starting_at(epoch()));
    let mut crashes = schedule.crashes.iter().copied();

    let landed = Arc::downgrade(&hooks);
    sandbox.shared().on_effect(Some(Arc::new(move |index, _| {
        if let Some(hooks) = landed.upgrade() {
            hooks.effect_landed(index);
        }
    })));
    let arm = |sim: &SimLog, crash: Option<Crash>| {
        sim.set_crash(crash.and_then(Crash::at_append));
        hooks.crash_after_effect(crash.and_then(Crash::after_effect));
    };

    let sim = SimLog::new();
    arm(&sim, crashes.next());
    let mut sim = sim;
    let mut engine = build(
        subject,
        HookedLog::new(sim.clone(), hooks.clone()),
        &clock,
        seed,
    );
    let mut crash = hooks.crash_announced();
    let limit = tokio::time::Instant::now() + options.run_limit;
    let mut run = tokio::select! {
        started = engine.start_named(subject.workflow(), input, "waymark simulate") => match started {
            Ok(run) => Some(run),
            Err(e) => {
                violations.push(format!("the run could not start: {e}"));
                None
            }
        },
        _ = crash.wait_for(|c| *c) => None,
    };
    let outcome = loop {
        if *crash.borrow() {
            // The process dies here: every task dropped, nothing more journaled. A new one opens
            // the durable records and resumes what is unfinished.
            engine.abort();
            sim = sim.restart();
            engine = build(
                subject,
                HookedLog::new(sim.clone(), hooks.clone()),
                &clock,
                seed,
            );
            crash = hooks.crash_announced();
            arm(&sim, crashes.next());
            if run.is_none() {
                run = sim.runs().ok().and_then(|r| r.first().copied());
            }
            match engine.resume_all() {
                Ok(report) => {
                    for (r, e) in report.refused {
                        violations.push(format!("after a crash, run {r} could not resume: {e}"));
                    }
                }
                Err(e) => violations.push(format!(
                    "after a crash, the log could not list its runs: {e}"
                )),
            }
        }
        let Some(r) = run else { break None };
        tokio::select! {
            biased;
            _ = crash.wait_for(|c| *c) => {}
            o = engine.wait(r) => break Some(o),
            () = tokio::time::sleep_until(limit) => break None,
        }
    };
    let simulated = start.elapsed();
    engine.abort();
    sandbox.shared().on_effect(None);
    hooks.finish();

    let end = match (run, outcome) {
        (None, _) => End::NotStarted,
        (Some(r), Some(Ok(o))) => end_of(&engine, r, o),
        (Some(_), Some(Err(e))) => End::Stopped(e.to_string()),
        (Some(r), None) => End::Stuck(
            engine
                .state(r)
                .map_or_else(|e| e.to_string(), |s| s.status.name().to_owned()),
        ),
    };
    let (records, encoded) = match run {
        Some(r) => match sim.read(r) {
            Ok(records) => (records, sim.encoded(r)),
            Err(e) => {
                violations.push(format!("the history does not verify: {e}"));
                (Vec::new(), sim.encoded(r))
            }
        },
        None => (Vec::new(), Vec::new()),
    };
    if let Some(r) = run {
        // A fresh process with the workflow code, replaying the durable history.
        let auditor = build(subject, sim.restart(), &clock, seed);
        match auditor.replay(r).await {
            Ok(report) => match report.verdict {
                ReplayVerdict::Deterministic => {}
                ReplayVerdict::InProgress { next } if matches!(end, End::Stuck(_)) => {
                    let _ = next;
                }
                other => violations.push(format!("the history does not replay clean: {other:?}")),
            },
            Err(e) => violations.push(format!("the history cannot be replayed: {e}")),
        }
    }
    let baseline = check::Baseline {
        at_start,
        before_by_hand: hooks.before_by_hand.lock().expect("by-hand lock").clone(),
    };
    violations.extend(check::estate(&world, &end, &baseline));
    violations.extend(subject.check_end(&world, &end, &before));
    let trace: Trace = std::mem::take(&mut *hooks.trace.lock().expect("trace lock"));
    let sandbox_effects = sandbox.shared().effects().len();
    sandbox.stop();
    Ok(Execution {
        seed,
        schedule: schedule.clone(),
        run,
        end,
        violations,
        records,
        encoded,
        steps: trace.steps,
        appends: trace.appends,
        effects_at_start: trace.effects_at_start,
        fired: trace.fired,
        simulated,
        effects: sandbox_effects,
        fault_from: trace.fault_from,
        fault_until: trace.fault_until,
        compensation_from: trace.compensation_from,
        touched: trace.touched,
    })
}

fn end_of(engine: &Engine, run: RunId, outcome: RunOutcome) -> End {
    let needs_operator = engine.state(run).is_ok_and(|s| s.needs_operator());
    match outcome {
        RunOutcome::Completed(_) => End::Completed,
        RunOutcome::Failed(e) | RunOutcome::Cancelled(e) if needs_operator => End::NeedsOperator(e),
        RunOutcome::Failed(e) | RunOutcome::Cancelled(e) => End::Compensated(e),
        RunOutcome::Refused(r) => End::Refused(r),
        RunOutcome::Suspended(r) => End::Suspended(format!("{r:?}")),
        RunOutcome::Stopped(s) => End::Stopped(s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Simulated time spent on `trips` one-byte round trips over loopback TCP on a paused
    /// current-thread runtime, with one other timer pending `other_timer` away.
    fn round_trips(trips: usize, other_timer: Duration, tick: Option<Duration>) -> Duration {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() {
                    if s.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(tokio::time::sleep(other_timer));
            if let Some(every) = tick {
                tokio::spawn(async move {
                    let mut i = tokio::time::interval(every);
                    loop {
                        i.tick().await;
                    }
                });
            }
            // The client is a spawned task too, as every activity of the engine is (the
            // `block_on` future's own waker would unpark the driver).
            tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let start = tokio::time::Instant::now();
                let mut b = [0u8; 1];
                for _ in 0..trips {
                    c.write_all(b"x").await.unwrap();
                    c.read_exact(&mut b).await.unwrap();
                }
                start.elapsed()
            })
            .await
            .unwrap()
        })
    }

    /// What the explorer's design rests on, measured (tokio 1.54): a request in flight on
    /// loopback between two tasks of one current-thread runtime does not let paused time jump.
    /// When every task waits, the time driver first polls the sockets without waiting; a task
    /// woken by that poll is scheduled locally and marks the driver woken (`unpark_self`), so
    /// the clock does not move to the next timer. The bytes are in the peer's socket when
    /// `write` returns on loopback, so that poll sees them: ten round trips with a timer an hour
    /// away take no simulated time at all, every time.
    #[test]
    fn a_loopback_round_trip_is_work_to_paused_time_and_takes_no_simulated_time() {
        let far = round_trips(10, Duration::from_secs(3600), None);
        assert_eq!(
            far,
            Duration::ZERO,
            "the clock jumped while a request was in flight"
        );
        let tick = Duration::from_millis(super::TICK_MS);
        for _ in 0..3 {
            assert_eq!(
                round_trips(10, Duration::from_secs(3600), Some(tick)),
                Duration::ZERO
            );
        }
    }
}
