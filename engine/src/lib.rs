//! Waymark's durable execution engine: workflows whose every step is journaled to an event log,
//! so that a run killed at any instant resumes where it stopped and never repeats a finished step.
//!
//! - [`event`]: what a history is made of; [`codec`]: how a record is stored.
//! - [`log`]: the event log trait, its group-commit writer, sled and memory backends.
//! - [`core`]: the deterministic core (history in, decisions out; no IO).
//! - [`runtime`]: the [`Engine`] API; `driver` (private): one task per run that appends what the
//!   core decides and carries out its actions.
//! - [`workflow`], [`context`], [`activity`]: what users write and what workflow code sees.
//!   [`retry`], [`clock`]: policies and time.
//! - [`testing`]: a history builder and canned histories for tests.

pub mod activity;
pub mod clock;
pub mod codec;
pub mod context;
pub mod core;
mod driver;
mod entropy;
pub mod event;
pub mod log;
pub mod retry;
pub mod runtime;
pub mod testing;
pub mod workflow;

pub use activity::Activity;
pub use event::{Event, Payload, Record, RunId, StepRef};
pub use retry::RetryPolicy;
pub use runtime::{Engine, RunOutcome, StepOptions, WorkflowContext};
pub use workflow::Workflow;

use std::path::Path;
use std::sync::Arc;

/// The durable event log on disk: the embedded default store of the CLI and the daemon.
pub type DurableLog = log::Log<log::segment::SegmentBackend>;

/// Opens the durable event log under `dir` (the embedded default store).
pub fn open_log(dir: &Path) -> Result<Arc<DurableLog>, log::Error> {
    Ok(Arc::new(log::Log::new(log::segment::SegmentBackend::open(
        dir,
    )?)))
}

/// A fresh in-memory event log.
pub fn memory_log() -> Arc<log::Log<log::memory::MemoryBackend>> {
    Arc::new(log::Log::new(log::memory::MemoryBackend::new()))
}
