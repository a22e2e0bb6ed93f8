//! Deterministic simulation of a workflow on its estate (issue 13): every place the engine
//! process can die and every fault each external system can show, explored on simulated time,
//! every execution checked against the invariants the runbook promises.
//!
//! - [`schedule`]: what one execution does differently (crashes at append boundaries, faults
//!   during steps) and its text form, which with the seed reproduces it.
//! - [`world`]: one execution: the sandbox in memory and the engine on a `SimLog`, on one
//!   current-thread tokio runtime with paused time; a crash aborts the engine and resumes on
//!   the durable records; the [`Subject`] trait (a workflow with its input and end state).
//! - [`check`]: the invariants read from the sandbox's ground truth (effects, monitor).
//! - [`subject`]: `yb-maintenance` as a subject ([`YbMaintenance`]).
//! - [`explore()`]: the explorer (enumeration, budget, shrinking) and its [`Report`].
//!
//! Layers point one way: `schedule` < `hooked` (the log's hooks) < `check` < `world` <
//! `subject` < `explore`. A test suite calls [`explore()`] with its own [`Subject`].

pub mod check;
pub mod explore;
mod hooked;
pub mod schedule;
pub mod subject;
pub mod world;

pub use explore::{
    explore, replay, shrink, Combined, CombinedCoverage, Crashes, ExploreOptions, FaultCoverage,
    FaultSteps, Faults, Finding, Report,
};
pub use schedule::{Crash, EstateChange, FaultPlan, Mark, Reproduction, Schedule};
pub use subject::YbMaintenance;
pub use world::{execute, End, Execution, ExecutionOptions, Subject, World, EPOCH};
