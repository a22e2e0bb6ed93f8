//! Workflows: ordinary async Rust over a [`crate::runtime::WorkflowContext`], registered by name
//! and version.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::{Payload, SuspendReason};
use crate::runtime::WorkflowContext;

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

/// A workflow: its name and version are recorded in every run it starts.
pub trait Workflow: Send + Sync + 'static {
    /// Registered name, e.g. `yb-maintenance`.
    const NAME: &'static str;
    /// Bump on any change that would replay an existing history differently.
    const VERSION: u32;
    /// Input.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Output.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The workflow body. Everything it does to the world goes through `ctx`.
    fn run(
        &self,
        ctx: WorkflowContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

/// A workflow with its types erased.
pub trait DynWorkflow: Send + Sync + 'static {
    /// Name.
    fn name(&self) -> &str;
    /// Version.
    fn version(&self) -> u32;
    /// Runs it on a JSON input.
    fn call(
        self: Arc<Self>,
        ctx: WorkflowContext,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, Error>>;
}

pub(crate) struct Typed<W>(pub(crate) W);

impl<W: Workflow> DynWorkflow for Typed<W> {
    fn name(&self) -> &str {
        W::NAME
    }
    fn version(&self) -> u32 {
        W::VERSION
    }
    fn call(
        self: Arc<Self>,
        ctx: WorkflowContext,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, Error>> {
        Box::pin(async move {
            let input: W::Input = input
                .decode()
                .map_err(|e| Error::Payload(format!("{} input: {e}", W::NAME)))?;
            let out = self.0.run(ctx, input).await?;
            Payload::encode(&out).map_err(|e| Error::Payload(format!("{} output: {e}", W::NAME)))
        })
    }
}
