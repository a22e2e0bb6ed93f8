//! The `YugabyteDB` cluster model: yb-master HTTP endpoints answering as `../shared/domain.md`
//! describes, and the `systemctl` / `yb-admin` / `yb-ts-cli` commands the SSH hosts run against
//! the model.
//!
//! Timing (every duration is the spec's [`Timing`](crate::Timing), multiplied by the time scale):
//! - A stop (`systemctl stop`, or the stop half of `restart`) takes the graceful-stop time
//!   (`ActiveState` `deactivating`); the unit's command blocks for it unless `--no-block`.
//!   Heartbeats stop when the stop begins.
//! - A new process heartbeats `startup_ms` after it starts; a tserver then bootstraps its tablets
//!   one after the other (`bootstrap_ms_per_tablet` each, times the node's slow-bootstrap factor);
//!   its followers lag for `follower_lag_ms` after the last one runs.
//! - The leader master keeps a stopped tserver ALIVE, with its old uptime and a growing
//!   `time_since_hb_sec`, until `tserver_unresponsive_ms` without a heartbeat: only then DEAD.
//! - Tablets led by a stopped server are leaderless for `election_ms`, then led by another RUNNING
//!   replica; the master group likewise elects a new leader when its leader stops.
//! - The load balancer moves one leader every `load_balancer_move_ms`: off blacklisted servers,
//!   then back onto returned servers until the leaders are balanced; idle only then.
//!
//! Views: `/api/v1/tablet-under-replication` counts RUNNING replicas (it sees a bootstrapping
//! server); `/api/v1/health-check` counts replicas on DEAD servers (locations), as the real
//! master does. Ground truth (what the invariant monitor counts): a tserver serves once all its
//! tablets run; a master once it heartbeats again.
//!
//! - [`model`]: the cluster (servers, tablets, heartbeats, elections, bootstrap, blacklist, load
//!   balancer) and its views, on timestamps passed in (plain data, below the estate).
//! - [`commands`]: what `systemctl`, `yb-admin`, `yb-ts-cli` and `curl` do on a node, on the
//!   shared estate (the SSH hosts run them).
//! - [`server`]: a yb-master's HTTP API on the shared estate, faults answered first.

pub mod commands;
pub mod model;
pub mod server;

pub use commands::{exec, exec_nowait, shell_words, ExecOutput};
pub use model::*;
pub use server::serve_master;
