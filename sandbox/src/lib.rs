//! The sandbox estate: simulated systems on loopback that speak the real protocols, so that the
//! real activity code runs unchanged against them (the demo and the end-to-end tests).
//!
//! - [`k8s`]: a Kubernetes API subset over HTTP for `apps/v1` Deployments.
//! - [`yb`]: yb-master HTTP endpoints, and the cluster model that restarts act on.
//! - [`ssh`]: SSH hosts (a russh server) that run `systemctl` and `yb-admin` against the model.
//! - [`elb`]: an `ELBv2` subset speaking the AWS query protocol.
//!
//! All of them share one [`Shared`]: the estate's state (persisted to `DIR/state.json` after every
//! change, so a sandbox process can be restarted), the effect log (`DIR/effects.jsonl`, one JSON
//! line per mutating call), the injected faults, and the invariant monitor ([`monitor`], fed by the
//! models' ground truth, written to `DIR/invariants.json`). Every duration is a real system's
//! ([`Timing`]) multiplied by the spec's time scale.
//!
//! Layers, each using only those below it: [`spec`] (what to simulate, plain data); the models
//! (`elb::model`, and the `State` types of [`k8s`] and [`yb`]); [`estate`] (the models together,
//! [`Shared`], effects, faults, scenario knobs) and [`monitor`]; the servers ([`elb`]'s handlers,
//! [`k8s`], [`yb`], [`ssh`]); [`server`] ([`Sandbox`]: binds and starts them) and [`inventory`].

pub mod clock;
pub mod conn;
pub mod elb;
pub mod estate;
pub mod faults;
pub mod inventory;
pub mod k8s;
pub mod monitor;
pub mod server;
pub mod spec;
pub mod ssh;
pub mod yb;

pub use clock::Clock;
pub use estate::{read_effects, read_invariants, Effect, Endpoints, Options, Scenario, Shared};
pub use faults::{catalogue, Fault, FaultKind, Faults};
pub use monitor::{Invariants, Truth};
pub use server::Sandbox;
pub use spec::{NodeSpec, Spec, Timing, DEFAULT_TIME_SCALE};
