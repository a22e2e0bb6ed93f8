//! The daemon's schedules: the API routes and the scheduler loop.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

/// Schedule routes.
pub fn routes() -> axum::Router<Arc<Daemon>> {
    axum::Router::new()
}

/// The scheduler loop.
pub async fn scheduler(d: Arc<Daemon>, tick: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = (d, tick);
    let _ = stop.wait_for(|s| *s).await;
}
