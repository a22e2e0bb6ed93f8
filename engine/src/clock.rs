//! Wall-clock time, injected so that tests can run on simulated time.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of wall-clock time. The engine reads time only through this.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that advances with tokio's clock, so that `tokio::time::pause()` and
/// `tokio::time::advance()` move it too: durable timers and retry deadlines can be tested without
/// waiting. Read outside the runtime (the log's writer thread stamps records with the engine's
/// clock), it reads the clock of the runtime it was made in: else it would read real time there
/// and paused time everywhere else.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin_wall: DateTime<Utc>,
    origin: tokio::time::Instant,
    runtime: Option<tokio::runtime::Handle>,
}

impl TokioClock {
    /// Starts at `origin_wall` now (made inside a tokio runtime, it follows that runtime's clock).
    pub fn starting_at(origin_wall: DateTime<Utc>) -> Self {
        TokioClock {
            origin_wall,
            origin: tokio::time::Instant::now(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let now = match (&self.runtime, tokio::runtime::Handle::try_current()) {
            (Some(runtime), Err(_)) => {
                let _inside = runtime.enter();
                tokio::time::Instant::now()
            }
            _ => tokio::time::Instant::now(),
        };
        let elapsed = now - self.origin;
        self.origin_wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

/// Now on tokio's clock: the monotonic time that timers, heartbeats and the activities' waits are
/// measured on (`tokio::time::pause()` stops it, `advance` and idle auto-advance move it). The
/// engine and the activities read it only through this function.
pub fn monotonic_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// Sleeps until `deadline` by `clock`'s reckoning.
pub async fn sleep_until(clock: &dyn Clock, deadline: DateTime<Utc>) {
    let remaining = (deadline - clock.now()).to_std().unwrap_or_default();
    if !remaining.is_zero() {
        tokio::time::sleep(remaining).await;
    }
}
