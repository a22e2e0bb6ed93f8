//! Where a command works: through the daemon serving the data directory, or on the directory
//! itself with an engine of this binary.

use std::path::Path;
use std::sync::Arc;

use waymark_cli::client::Client;
use waymark_cli::paths::open_log;
use waymark_engine::{DurableLog, Engine};

/// An engine with every workflow and activity of this binary.
pub fn engine(log: Arc<DurableLog>) -> Engine {
    waymark_workflows::register(Engine::builder(log)).build()
}

/// Where a command's data comes from: the daemon serving the data directory, or the directory.
pub enum Target {
    /// No daemon: the CLI opens the log itself (and holds its lock meanwhile).
    Direct(Arc<DurableLog>),
    /// A daemon answers on the directory's socket.
    Daemon(Client),
}

impl Target {
    /// The daemon if one answers, else the directory.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Target> {
        match Client::connect(data_dir).await? {
            Some(c) => Ok(Target::Daemon(c)),
            None => Ok(Target::Direct(open_log(data_dir)?)),
        }
    }
}
