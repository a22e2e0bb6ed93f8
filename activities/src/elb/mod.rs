//! AWS Elastic Load Balancing v2 activities: register and deregister a target (waiting for it to
//! turn healthy), and read and set the weights of a listener's or rule's forward action.
//!
//! Every activity checks before it acts, so a retry after a crash never repeats an effect:
//!
//! | activity | checks first | acts | output |
//! |---|---|---|---|
//! | [`RegisterTarget`] (`elb.register_target`) | `DescribeTargetHealth` of the target | `RegisterTargets`, then polls `DescribeTargetHealth` until `healthy` | [`RegisterTargetOutput`] |
//! | [`DeregisterTarget`] (`elb.deregister_target`) | `DescribeTargetHealth` of the target | `DeregisterTargets` (not when unregistered, or healthy with `keep_if_healthy`) | [`DeregisterTargetOutput`] |
//! | [`ReadTrafficWeights`] (`elb.read_traffic_weights`) | — | `DescribeListeners` / `DescribeRules` | [`Weights`] |
//! | [`SetTrafficWeights`] (`elb.set_traffic_weights`) | the current weights | `DescribeTargetGroups` (they exist), `ModifyListener` / `ModifyRule`, then reads back | [`SetTrafficWeightsOutput`] |
//!
//! [`DeregisterTarget`] is the compensation of [`RegisterTarget`] ([`RegisterTargetInput::compensation`]);
//! a workflow reads the weights with [`ReadTrafficWeights`] before changing them and registers
//! [`SetTrafficWeights`] with the weights it read as the compensation of the change.
//!
//! Connection: the region and an optional endpoint URL come from the input ([`ElbConnection`]);
//! credentials come from the standard AWS chain (environment, profile, web identity, container,
//! instance metadata) and never appear in an input, an output or an error text. Tools and tests
//! that hold explicit credentials use [`ElbClient::with_credentials`] and the activities'
//! `run_with` methods. The HTTP client is hyper with rustls on ring.
//!
//! Retries: the SDK's own retries are turned off, so that every attempt is one the engine journals
//! and retries under its policy; [`Error`] says which failures are worth another attempt. Each HTTP
//! attempt is bounded by [`ElbConnection::call_timeout_ms`].
//!
//! Files: `error.rs` ([`Error`] and how an SDK failure maps to it), `client.rs` ([`ElbConnection`],
//! [`ElbClient`], the credential check, `elb.resolve_connection`), `targets.rs` (register,
//! deregister, target health) and `weights.rs` (weighted forwards of listeners and rules).

mod client;
mod error;
mod targets;
mod weights;

pub use client::{resolve_connection, Credentials, ElbClient, ElbConnection, ResolveConnection};
pub use error::Error;
pub use targets::{
    DeregisterTarget, DeregisterTargetInput, DeregisterTargetOutput, ReadTargetGroupHealth,
    ReadTargetGroupHealthInput, RegisterTarget, RegisterTargetInput, RegisterTargetOutput,
    TargetState,
};
pub use weights::{
    ReadTrafficWeights, ReadTrafficWeightsInput, SetTrafficWeights, SetTrafficWeightsInput,
    SetTrafficWeightsOutput, TrafficSource, Weights,
};

use waymark_engine::runtime::EngineBuilder;

/// The system named in every message.
const SYSTEM: &str = "ELBv2";

/// Registers every `ELBv2` activity.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    b.activity(RegisterTarget)
        .activity(ReadTargetGroupHealth)
        .activity(DeregisterTarget)
        .activity(ReadTrafficWeights)
        .activity(SetTrafficWeights)
        .activity(ResolveConnection)
}
