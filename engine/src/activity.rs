//! Activities: the idempotent units of work a workflow's steps call, and what they are given.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::{self, SharedClock, SystemClock};
use crate::event::{Payload, RunId, StepRef};

/// An activity's failure, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What went wrong, with the system and target named and what to check.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl Error {
    /// A failure another attempt may fix (timeouts, refused connections, 5xx, throttling).
    pub fn retryable(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (bad input, permission denied, a deadline exceeded).
    pub fn fatal(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retryable: false,
        }
    }
}

/// What an attempt knows about itself, and its channel back to the engine.
#[derive(Clone)]
pub struct Context {
    /// The run.
    pub run: RunId,
    /// The step.
    pub step: StepRef,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When the step was first scheduled (engine's clock).
    pub scheduled_at: DateTime<Utc>,
    /// The engine's clock: activities read the time only from it ([`Context::now`]) and from
    /// tokio's time, so that a simulation on paused time moves both.
    pub(crate) clock: SharedClock,
    pub(crate) heartbeat: Arc<Heartbeat>,
    pub(crate) cancelled: watch::Receiver<bool>,
}

/// Progress an activity reported, as followers of a run see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The step.
    pub step: StepRef,
    /// The step's label.
    pub label: String,
    /// What the activity said last (e.g. "load balancer 40% done").
    pub message: String,
}

/// Last heartbeat of an attempt.
pub(crate) struct Heartbeat {
    pub(crate) last: Mutex<(tokio::time::Instant, Option<String>)>,
    /// Where progress goes: the run's follower channel, with the step and its label.
    pub(crate) sink: Option<(StepRef, String, watch::Sender<Option<Progress>>)>,
}

impl Heartbeat {
    pub(crate) fn new() -> Self {
        Heartbeat {
            last: Mutex::new((clock::monotonic_now(), None)),
            sink: None,
        }
    }
}

impl Context {
    /// A context for calling an activity outside of the engine (tools, conformance tests), on
    /// the system clock, scheduled now.
    pub fn detached(run: RunId, step: StepRef, attempt: u32) -> Self {
        Self::detached_on(run, step, attempt, Arc::new(SystemClock))
    }

    /// As [`Context::detached`], on `clock` (e.g. a `TokioClock` in a test on paused time),
    /// scheduled at `clock`'s now.
    pub fn detached_on(run: RunId, step: StepRef, attempt: u32, clock: SharedClock) -> Self {
        Context {
            run,
            step,
            attempt,
            scheduled_at: clock.now(),
            clock,
            heartbeat: Arc::new(Heartbeat::new()),
            cancelled: watch::channel(false).1,
        }
    }

    /// Now, by the engine's clock (the clock the step's `scheduled_at` was read on).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Stable across retries and restarts of the same step: `run/step-N` or `run/compensation-N`.
    pub fn idempotency_key(&self) -> String {
        match self.step {
            StepRef::Workflow(p) => format!("{}/step-{p}", self.run),
            StepRef::Compensation(i) => format!("{}/compensation-{i}", self.run),
        }
    }

    /// Reports liveness, with optional progress (e.g. "load balancer 40% done"). An activity with a
    /// heartbeat timeout must call this more often than the timeout.
    pub fn heartbeat(&self, progress: Option<String>) {
        *self.heartbeat.last.lock().expect("heartbeat lock") =
            (clock::monotonic_now(), progress.clone());
        if let (Some(message), Some((step, label, tx))) = (progress, &self.heartbeat.sink) {
            tx.send_replace(Some(Progress {
                step: *step,
                label: label.clone(),
                message,
            }));
        }
    }

    /// The latest progress reported through [`Context::heartbeat`].
    pub fn last_progress(&self) -> Option<String> {
        self.heartbeat
            .last
            .lock()
            .expect("heartbeat lock")
            .1
            .clone()
    }

    /// Whether the run was cancelled; long activities should stop when it is.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Sleeps, but returns early (with `false`) if the run is cancelled meanwhile.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut rx = self.cancelled.clone();
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        tokio::select! {
            // In this order, not tokio's random one: a simulation replays the same choice.
            biased;
            () = &mut sleep => true,
            closed = async { rx.wait_for(|c| *c).await.is_err() } => {
                if !closed {
                    return false;
                }
                // No one can cancel any more (a detached context): just sleep.
                sleep.await;
                true
            }
        }
    }
}

/// An idempotent unit of work. Before acting it checks whether its effect already happened
/// (a retry after a crash calls it again with the same idempotency key).
pub trait Activity: Send + Sync + 'static {
    /// The name steps call it by, e.g. `k8s.scale`.
    const NAME: &'static str;
    /// Input.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Output.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Does the work.
    fn run(
        &self,
        ctx: Context,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

/// An activity with its types erased, as the engine stores it.
pub trait DynActivity: Send + Sync + 'static {
    /// Runs it on a JSON payload.
    fn call(
        self: Arc<Self>,
        ctx: Context,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, Error>>;
}

pub(crate) struct Typed<A>(pub(crate) A);

impl<A: Activity> DynActivity for Typed<A> {
    fn call(
        self: Arc<Self>,
        ctx: Context,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, Error>> {
        Box::pin(async move {
            let input: A::Input = input
                .decode()
                .map_err(|e| Error::fatal(format!("{}: input does not decode: {e}", A::NAME)))?;
            let out = self.0.run(ctx, input).await?;
            Payload::encode(&out)
                .map_err(|e| Error::fatal(format!("{}: output does not encode: {e}", A::NAME)))
        })
    }
}

/// An activity made of a closure, for tests, tools and small glue steps.
pub struct FnActivity<F> {
    f: F,
}

impl<F> FnActivity<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnActivity { f }
    }
}

impl<F, Fut> DynActivity for FnActivity<F>
where
    F: Fn(Context, Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, Error>> + Send + 'static,
{
    fn call(
        self: Arc<Self>,
        ctx: Context,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, Error>> {
        Box::pin((self.f)(ctx, input))
    }
}
