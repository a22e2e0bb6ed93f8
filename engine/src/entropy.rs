//! Every random value the engine draws: run ids, `ctx.uuid()` values and retry jitter. Random by
//! default; drawn from a seed (`EngineBuilder::seed`) for deterministic simulation, so that two
//! runs with the same seed, clock and inputs produce the same history byte for byte.
//!
//! Seeded values are UUID v7 whose time part is the engine clock's and whose random part is a
//! hash of the seed and of what the value is for (the run and command position of a uuid, the
//! run, step and failure count of a jitter), not of the order values are drawn in: concurrent
//! runs and steps cannot make one draw depend on another's timing.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::{RunId, StepRef};

/// Where random values come from.
pub(crate) enum Entropy {
    /// The operating system's randomness (the default).
    Random,
    /// A seed; `next_run` numbers the runs this engine starts.
    Seeded {
        /// The seed.
        seed: u64,
        /// Index of the next run started (begins at the number of runs in the log, so that an
        /// engine restarted on the same log never draws a run id again).
        next_run: AtomicU64,
    },
}

const RUN_ID: u64 = 1;
const UUID: u64 = 2;
const JITTER: u64 = 3;

/// The finaliser of `SplitMix64`: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |h, p| mix(h ^ *p))
}

fn run_parts(run: RunId) -> [u64; 2] {
    let v = run.0.as_u128();
    #[allow(clippy::cast_possible_truncation)]
    [(v >> 64) as u64, v as u64]
}

fn step_part(step: StepRef) -> u64 {
    match step {
        StepRef::Workflow(p) => u64::from(p),
        StepRef::Compensation(i) => (1 << 32) | u64::from(i),
    }
}

/// A UUID v7 at `at` whose 10 random bytes come from `seed` and `parts`.
fn v7(at: DateTime<Utc>, seed: u64, parts: &[u64]) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let a = hash(seed, parts).to_le_bytes();
    let b = hash(seed ^ 0x5EED, parts).to_le_bytes();
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&a);
    random[8..].copy_from_slice(&b[..2]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

impl Entropy {
    /// Seeded, numbering runs from `runs_in_log`.
    pub(crate) fn seeded(seed: u64, runs_in_log: u64) -> Self {
        Entropy::Seeded {
            seed,
            next_run: AtomicU64::new(runs_in_log),
        }
    }

    /// The id of a new run started at `now`.
    pub(crate) fn run_id(&self, now: DateTime<Utc>) -> RunId {
        match self {
            Entropy::Random => RunId::new(),
            Entropy::Seeded { seed, next_run } => {
                let n = next_run.fetch_add(1, Ordering::SeqCst);
                RunId(v7(now, *seed, &[RUN_ID, n]))
            }
        }
    }

    /// The value of `ctx.uuid()` at `position` of `run`, drawn at `now`.
    pub(crate) fn uuid(&self, run: RunId, position: u32, now: DateTime<Utc>) -> Uuid {
        match self {
            Entropy::Random => Uuid::new_v4(),
            Entropy::Seeded { seed, .. } => {
                let [hi, lo] = run_parts(run);
                v7(now, *seed, &[UUID, hi, lo, u64::from(position)])
            }
        }
    }

    /// A uniform draw in `[0, 1)` for the jitter of the delay after the `failures`-th failure of
    /// `step`; `None` when random (the retry policy draws its own).
    pub(crate) fn jitter(&self, run: RunId, step: StepRef, failures: u32) -> Option<f64> {
        match self {
            Entropy::Random => None,
            Entropy::Seeded { seed, .. } => {
                let [hi, lo] = run_parts(run);
                let h = hash(
                    *seed,
                    &[JITTER, hi, lo, step_part(step), u64::from(failures)],
                );
                #[allow(clippy::cast_precision_loss)]
                Some((h >> 11) as f64 / (1u64 << 53) as f64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn seeded_values_depend_on_the_seed_and_purpose_only() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let a = Entropy::seeded(7, 0);
        let b = Entropy::seeded(7, 0);
        let c = Entropy::seeded(8, 0);
        let run = a.run_id(at);
        assert_eq!(run, b.run_id(at));
        assert_ne!(run, c.run_id(at));
        assert_ne!(run, a.run_id(at), "each run gets its own id");
        assert_eq!(run.0.get_version_num(), 7);
        assert_eq!(
            run.0.get_timestamp().unwrap().to_unix(),
            (1_700_000_000, 123_000_000),
            "the time part is the clock's"
        );
        assert_eq!(a.uuid(run, 3, at), b.uuid(run, 3, at));
        assert_ne!(a.uuid(run, 3, at), a.uuid(run, 4, at));
        let j = a.jitter(run, StepRef::Workflow(1), 2).unwrap();
        assert!((0.0..1.0).contains(&j));
        assert_eq!(Some(j), b.jitter(run, StepRef::Workflow(1), 2));
        assert!(Entropy::Random
            .jitter(run, StepRef::Workflow(1), 2)
            .is_none());
    }

    #[test]
    fn a_restarted_engine_numbers_runs_after_those_in_the_log() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let first = Entropy::seeded(1, 0);
        let ids = [first.run_id(at), first.run_id(at)];
        let restarted = Entropy::seeded(1, 2);
        assert!(!ids.contains(&restarted.run_id(at)));
    }
}
