//! The sandbox's clock: every timestamp the simulated systems report or act on (uptimes,
//! heartbeat ages, effects, the monitor's moments) is read from one [`Clock`]. By default the
//! wall clock; [`Clock::simulated`] follows tokio's time (`tokio::time::pause`, `advance`, or
//! the auto-advance of a paused runtime), so a whole estate runs in simulated time.

use chrono::{DateTime, TimeDelta, Utc};

/// Where the sandbox reads the time.
#[derive(Clone, Debug, Default)]
pub struct Clock(Source);

#[derive(Clone, Debug, Default)]
enum Source {
    /// `Utc::now()`.
    #[default]
    Wall,
    /// `epoch` plus the tokio time elapsed since `origin`.
    Simulated {
        epoch: DateTime<Utc>,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// The wall clock (the default).
    pub fn wall() -> Clock {
        Clock(Source::Wall)
    }

    /// A clock that reads `epoch` now and moves with tokio's time from here on (paused time
    /// moves it only when tokio's clock advances). Call it inside the runtime whose time it
    /// follows.
    pub fn simulated(epoch: DateTime<Utc>) -> Clock {
        Clock(Source::Simulated {
            epoch,
            origin: tokio::time::Instant::now(),
        })
    }

    /// Whether this is a simulated clock.
    pub fn is_simulated(&self) -> bool {
        matches!(self.0, Source::Simulated { .. })
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Source::Wall => Utc::now(),
            Source::Simulated { epoch, origin } => {
                let elapsed = TimeDelta::from_std(origin.elapsed()).unwrap_or(TimeDelta::MAX);
                epoch.checked_add_signed(elapsed).unwrap_or(*epoch)
            }
        }
    }

    /// The time now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_clock_moves_only_with_tokio_time() {
        let epoch = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::simulated(epoch);
        assert_eq!(clock.now(), epoch);
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert_eq!(clock.now(), epoch + TimeDelta::seconds(61));
        assert!(clock.is_simulated());
        assert!(!Clock::default().is_simulated());
    }
}
