//! The sandbox estate: simulated systems on loopback that speak the real protocols, so that the
//! real activity code runs unchanged against them (the demo and the end-to-end tests).
//!
//! - [`k8s`]: a Kubernetes API subset over HTTP for `apps/v1` Deployments.
//! - [`yb`]: yb-master HTTP endpoints, the cluster model that restarts act on, and the commands
//!   the nodes run.
//! - [`ssh`]: SSH hosts (a russh server) that run `systemctl` and `yb-admin` against the model.
//! - [`elb`]: an `ELBv2` subset speaking the AWS query protocol.
//!
//! All of them share one [`Shared`]: the estate's state (persisted to `DIR/state.json` after every
//! change, so a sandbox process can be restarted), the effect log (`DIR/effects.jsonl`, one JSON
//! line per mutating call), the injected faults ([`faults`]), and the invariant monitor
//! ([`monitor`], fed by the models' ground truth, written to `DIR/invariants.json`); in memory
//! ([`Options::in_memory`]) none of these files is written. Every duration is a real system's
//! ([`Timing`]) multiplied by the spec's time scale, and every timestamp is read from one
//! [`Clock`] (the wall clock, or tokio's time for a simulation on paused time).
//!
//! Layers, each file using only those above it in this list:
//! 1. plain data: [`spec`] (what to simulate), [`clock`], [`faults`] (fault kinds, rules, the
//!    catalogue), [`monitor`] (the invariant record);
//! 2. the models, on timestamps passed in: [`k8s::model`], [`yb::model`], [`elb::model`];
//! 3. [`estate`]: the models together, [`Shared`] (lock, clock, seeded generator, effects,
//!    faults, monitor), [`Options`], the scenario knobs;
//! 4. the servers on [`Shared`]: [`conn`] (the HTTP connections a fault breaks), [`k8s::server`],
//!    [`yb::server`], [`yb::commands`], [`ssh`], [`elb`]'s wire and handlers;
//! 5. [`server`] ([`Sandbox`]: binds and starts them on the caller's runtime) and [`describe`]
//!    (what a client needs to reach it, plain data). The sandbox does not depend on the
//!    workflows: that description becomes an `inventory.toml` on the workflows' side
//!    (`waymark_workflows::sandbox::write_inventory`, feature `sandbox`), called by whoever
//!    starts a sandbox.

pub mod clock;
pub mod conn;
pub mod describe;
pub mod elb;
pub mod estate;
pub mod faults;
pub mod k8s;
pub mod monitor;
pub mod server;
pub mod spec;
pub mod ssh;
pub mod yb;

pub use clock::Clock;
pub use describe::{Description, NodeAccess};
pub use estate::{
    read_effects, read_invariants, Effect, EffectHook, Endpoints, Options, Scenario, Shared,
};
pub use faults::{catalogue, Fault, FaultKind, Faults};
pub use monitor::{Invariants, Truth};
pub use server::Sandbox;
pub use spec::{NodeSpec, Spec, Timing, DEFAULT_TIME_SCALE};

/// Placeholder AWS credentials for the sandbox's `ELBv2`, which accepts any: the AWS SDK makes no
/// call without some. Never real; `waymark sandbox up` prints them for `waymark run`.
pub const PLACEHOLDER_AWS_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "waymark-sandbox"),
    ("AWS_SECRET_ACCESS_KEY", "waymark-sandbox-not-a-secret"),
    ("AWS_REGION", elb::REGION),
];

/// Sets each of [`PLACEHOLDER_AWS_CREDENTIALS`] that this process's environment lacks (one already
/// set is kept), for a process that talks to the sandbox in-process (`waymark demo`, `waymark
/// simulate`, the simulation's tests). The environment is process-wide: call it before any thread
/// that reads it starts.
pub fn use_placeholder_aws_credentials() {
    for (k, v) in PLACEHOLDER_AWS_CREDENTIALS {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The sandbox is plain data and simulated servers: it depends on no Waymark crate, so the
    /// engine's, the activities' and the workflows' builds never wait for it, and a build without
    /// the simulator leaves nothing of it behind. (Its inventory is written on the workflows'
    /// side: `waymark_workflows::sandbox`.)
    #[test]
    fn depends_on_no_waymark_crate() {
        let manifest = include_str!("../Cargo.toml");
        let waymark: Vec<&str> = manifest
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("waymark-"))
            .collect();
        assert!(
            waymark.is_empty(),
            "sandbox/Cargo.toml depends on {waymark:?}: turn what the sandbox needs into plain data \
             (describe.rs) and convert it on the other crate's side"
        );
    }
}
