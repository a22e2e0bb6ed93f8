//! Shared helpers for the integration tests, the crash-test child and the benchmark: an
//! idempotent effect sink that records every call, the crash-test workflow, and a log decorator
//! that kills the process at a chosen append.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::IntoFuture;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};
use waymark_engine::log::{self, EventLog, SharedLog};
use waymark_engine::workflow::{self, Workflow};
use waymark_engine::{Event, Record, RetryPolicy, RunId, WorkflowContext};

/// An effect store in a directory, standing for "the world": `calls.log` gets a line for every
/// activity call (`key attempt`), `effects.log` a line for every effect actually applied (`key`).
/// An activity checks `effects.log` before acting, as a real idempotent activity checks the
/// estate. Each line is one `write` to an `O_APPEND` file, so SIGKILL cannot tear it.
#[derive(Clone, Debug)]
pub struct EffectSink {
    dir: PathBuf,
}

impl EffectSink {
    /// A sink in `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(EffectSink {
            dir: dir.to_owned(),
        })
    }

    fn append_line(&self, file: &str, line: &str) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file))?;
        f.write_all(line.as_bytes())
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Applies the effect for `key` unless it already happened; records the call either way.
    /// Returns whether the effect was applied by this call.
    pub fn apply(&self, key: &str, attempt: u32) -> std::io::Result<bool> {
        self.append_line("calls.log", &format!("{key} {attempt}\n"))?;
        if self.lines("effects.log").iter().any(|l| l == key) {
            return Ok(false);
        }
        self.append_line("effects.log", &format!("{key}\n"))?;
        Ok(true)
    }

    /// How many times each effect was applied.
    pub fn effect_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in self.lines("effects.log") {
            *m.entry(l).or_insert(0) += 1;
        }
        m
    }

    /// Every call: key and attempt number.
    pub fn calls(&self) -> Vec<(String, u32)> {
        self.lines("calls.log")
            .into_iter()
            .filter_map(|l| {
                let (k, a) = l.rsplit_once(' ')?;
                Some((k.to_owned(), a.parse().ok()?))
            })
            .collect()
    }
}

/// Input of [`SinkEffect`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EffectInput {
    /// A label that makes each step's input distinct.
    pub name: String,
    /// How long the activity takes, in milliseconds (so that random kills land inside it).
    pub work_ms: u64,
}

/// An activity that applies one effect to the [`EffectSink`], idempotently.
pub struct SinkEffect {
    /// The sink.
    pub sink: EffectSink,
}

impl Activity for SinkEffect {
    const NAME: &'static str = "sink.effect";
    type Input = EffectInput;
    type Output = String;

    async fn run(&self, ctx: Context, input: EffectInput) -> Result<String, activity::Error> {
        tokio::time::sleep(Duration::from_millis(input.work_ms)).await;
        let key = ctx.idempotency_key();
        let applied = self
            .sink
            .apply(&key, ctx.attempt)
            .map_err(|e| activity::Error::retryable(format!("sink: {e}")))?;
        Ok(format!(
            "{}:{}",
            input.name,
            if applied { "applied" } else { "already" }
        ))
    }
}

/// Input of [`CrashWorkflow`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrashInput {
    /// Sequential steps before and after the parallel pair.
    pub steps: u32,
    /// Activity duration, ms.
    pub work_ms: u64,
    /// Durable timer, ms.
    pub sleep_ms: u64,
}

/// The crash-test workflow: a recorded `now()` and `uuid()`, `steps` sequential effects, two
/// effects in parallel, a durable timer, then `steps` more effects. Each effect step registers a
/// compensation (never run here: the run succeeds).
pub struct CrashWorkflow;

impl Workflow for CrashWorkflow {
    const NAME: &'static str = "crash-test";
    const VERSION: u32 = 1;
    type Input = CrashInput;
    type Output = Vec<String>;

    async fn run(
        &self,
        ctx: WorkflowContext,
        input: CrashInput,
    ) -> Result<Vec<String>, workflow::Error> {
        let started = ctx.now().await?;
        let token = ctx.uuid().await?;
        let mut out = vec![format!("{token}@{}", started.timestamp())];
        let effect = |name: String| {
            ctx.activity::<SinkEffect>(&EffectInput {
                name,
                work_ms: input.work_ms,
            })
            .retry(RetryPolicy::default().initial_interval(Duration::from_millis(10)))
        };
        for i in 0..input.steps {
            out.push(effect(format!("before-{i}")).await?);
        }
        let (a, b) = futures::future::join(
            effect("left".into()).into_future(),
            effect("right".into()).into_future(),
        )
        .await;
        out.push(a?);
        out.push(b?);
        ctx.sleep(Duration::from_millis(input.sleep_ms)).await?;
        for i in 0..input.steps {
            out.push(effect(format!("after-{i}")).await?);
        }
        Ok(out)
    }
}

/// How many effect steps one [`CrashWorkflow`] run has.
pub fn crash_effects_per_run(input: &CrashInput) -> u32 {
    input.steps * 2 + 2
}

/// An [`EventLog`] that kills its own process with SIGKILL right after its `n`-th append is
/// durable, before the engine learns of it: the crash test's "kill at every event boundary".
pub struct CrashingLog {
    inner: SharedLog,
    appends: Arc<AtomicU64>,
    kill_after: u64,
}

impl CrashingLog {
    /// Wraps `inner`.
    pub fn new(inner: SharedLog, kill_after: u64) -> Self {
        CrashingLog {
            inner,
            appends: Arc::new(AtomicU64::new(0)),
            kill_after,
        }
    }
}

/// Kills this process with SIGKILL: no destructor, no flush, exactly like `kill -9`.
pub fn sigkill_self() -> ! {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory-safety impact.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL does not return")
}

impl EventLog for CrashingLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
        let fut = self.inner.append(run, events);
        let appends = self.appends.clone();
        let kill_after = self.kill_after;
        Box::pin(async move {
            let r = fut.await;
            if appends.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                sigkill_self();
            }
            r
        })
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

/// A small deterministic generator (splitmix64) for randomised tests: the seed is printed, so a
/// failure can be replayed.
#[derive(Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What both crash-test children do on their log: resume every unfinished run, start `runs` in
/// all (counting those already in the log), and wait until each has completed.
pub async fn drive_crash_runs(
    log: SharedLog,
    sink: EffectSink,
    runs: usize,
    input: &CrashInput,
) -> anyhow::Result<()> {
    let engine = waymark_engine::Engine::builder(log.clone())
        .workflow(CrashWorkflow)
        .activity(SinkEffect { sink })
        .build();
    let report = engine.resume_all()?;
    anyhow::ensure!(report.refused.is_empty(), "refused: {:?}", report.refused);
    let mut all = report.resumed;
    let existing = log.runs()?.len();
    for _ in existing..runs {
        all.push(engine.start::<CrashWorkflow>(input, "crash-test").await?);
    }
    for run in all {
        match engine.wait(run).await? {
            waymark_engine::RunOutcome::Completed(_) => {}
            other => anyhow::bail!("run {run} ended as {other:?}"),
        }
    }
    Ok(())
}
