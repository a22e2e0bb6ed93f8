//! The waymark CLI's library: everything but the command line itself, in layers that point one
//! way (each module uses only those listed before it):
//!
//! 1. [`secret_file`] (the owner-only check and write of files holding secrets), [`notify`] (webhook notifications: targets, transitions, payloads, the delivery
//!    journal and the notifier), [`schedule`] (the pure schedule core), [`exit`] (exit statuses), [`view`] (pure
//!    rendering of runs), [`paths`] (the data directory, its files, the operator), [`store`]
//!    (where runs are journaled: the data directory's log or a shared `PostgreSQL` store);
//! 2. [`follow`] and [`api`]: the API types and the data of every listing, shared by the daemon
//!    and direct mode;
//! 3. [`client`] (the CLI's side of the daemon API) and [`daemon`] (`prepare`, `serve`, its
//!    routes, the scheduler loop; inside it, `state` below `routes` and `schedules`).
//!
//! The `waymark` binary (`main.rs`, `args.rs`, `commands/`) sits on top.

pub mod secret_file;

pub mod notify;
pub mod schedule;

pub mod exit;
pub mod paths;
pub mod store;
pub mod view;

pub mod api;
pub mod follow;

pub mod client;
pub mod daemon;
