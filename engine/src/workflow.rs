//! Workflows: ordinary async Rust over a [`WorkflowContext`], registered by name and version.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::context::Error;
use crate::context::WorkflowContext;
use crate::event::Payload;

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
