//! Where a command works: through the daemon serving the data directory, or on the store itself
//! (the data directory's log, or the `PostgreSQL` store of `--store`) with an engine of this binary.

use std::path::Path;

use waymark_cli::client::Client;
use waymark_cli::store::{self, Opener, Store};
use waymark_engine::log::SharedLog;
use waymark_engine::Engine;

/// An engine with every workflow and activity of this binary.
pub fn engine(log: SharedLog) -> Engine {
    waymark_workflows::register(Engine::builder(log)).build()
}

/// Where a command's data comes from: the daemon serving the data directory, or the store.
pub enum Target {
    /// No daemon: the CLI opens the store itself (the data directory's log: holding its lock
    /// meanwhile; a shared store: beside the daemons, taking over nothing).
    Direct(SharedLog),
    /// A daemon answers on the directory's socket.
    Daemon(Client),
}

impl Target {
    /// The daemon if one answers, else the store.
    pub async fn open(data_dir: &Path, store: &Store) -> anyhow::Result<Target> {
        match Client::connect(data_dir).await? {
            Some(c) => Ok(Target::Daemon(c)),
            None => Ok(Target::Direct(
                store::open(data_dir, store, &Opener::Command)?.log,
            )),
        }
    }
}
