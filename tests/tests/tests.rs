//! The one integration-test binary: every suite is a module here, sharing `util`.

mod core_replay;
mod crash;
mod daemon;
mod elb;
mod engine_behaviour;
mod fixtures;
mod k8s;
mod log_conformance;
mod log_damage;
mod maintenance;
mod node_gates;
mod notify;
mod power_loss;
mod regression;
mod regression_daemon;
mod regression_engine;
mod regression_workflow;
mod run_safety;
mod sandbox_realism;
mod schedule;
mod simulate;
mod ssh;
mod terminal;
mod util;
mod web;
mod yb;
