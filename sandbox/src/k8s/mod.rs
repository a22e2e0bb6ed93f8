//! A Kubernetes API subset over HTTP for `apps/v1` Deployments: get, list, patch (JSON merge and
//! strategic merge, which agree for the fields used here), and the `scale` subresource. A
//! simulated controller moves `status` through a rollout the way the Deployment controller does:
//! `observedGeneration` lags the spec briefly, new replicas come up one at a time, old ones
//! terminate, and a rollout marked stuck (fault `stuck NS/NAME`) ends in `ProgressDeadlineExceeded`.
//! A scale-up is Available only once the new pods are ready (the pod start-up time); a scale-down
//! makes the removed pods unready at once and terminates them one by one over the grace period
//! (`status.replicas` falls, `status.terminatingReplicas` counts them).
//!
//! - [`model`]: the Deployments and the simulated controller (plain data, below the estate).
//! - [`server`]: the HTTP API on the shared estate (above it), faults answered first.

pub mod model;
pub mod server;

pub use model::*;
pub use server::serve;
