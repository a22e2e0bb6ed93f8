//! The invariant monitor: fed by the sandbox's own ground truth (which processes serve, which
//! pods are ready, which targets pass their health checks), never by what its APIs report. It is
//! updated after every change and on every tick of the estate's clock, persisted in `state.json`,
//! written to `DIR/invariants.json` (atomically, on every change of its content) and served on
//! the admin API (`GET /invariants`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What is true of the estate at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Primary-placement yb-tservers not serving (stopping, stopped, starting, bootstrapping).
    pub tservers_down: Vec<String>,
    /// yb-masters not serving.
    pub masters_down: Vec<String>,
    /// `LISTENER_OR_RULE -> TARGET_GROUP` forwards (weight above 0) to a group with no healthy
    /// target.
    pub unhealthy_forwards: Vec<String>,
    /// No `MirrorMaker2` pod is ready.
    pub mirrormaker_off: bool,
    /// The business's traffic is (partly) forwarded to zone B.
    pub traffic_in_b: bool,
}

/// The monitor's record, as written to `invariants.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Invariants {
    /// Largest number of primary yb-tservers not serving at the same moment.
    pub max_tservers_down: u32,
    /// Largest number of yb-masters not serving at the same moment.
    pub max_masters_down: u32,
    /// Moments a load balancer began to forward to a target group with no healthy target.
    pub forwards_to_unhealthy: u32,
    /// Moments `MirrorMaker2` was off (no ready pod) while traffic went to zone B.
    pub mirrormaker_off_while_traffic_in_b: u32,
    /// The tservers down when `max_tservers_down` was reached, and when.
    pub max_tservers_down_at: Option<Moment>,
    /// The masters down when `max_masters_down` was reached, and when.
    pub max_masters_down_at: Option<Moment>,
    /// Each violation as it began (the last 100).
    pub violations: Vec<Moment>,
    /// The truth at the last update.
    pub now: Truth,
    /// When it was last updated.
    pub updated_at: Option<DateTime<Utc>>,
}

/// One recorded moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moment {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub what: String,
}

impl Invariants {
    /// Takes in the truth at `at`; returns whether a counter or a current value changed.
    pub fn observe(&mut self, truth: &Truth, at: DateTime<Utc>) -> bool {
        if *truth == self.now && self.updated_at.is_some() {
            return false;
        }
        let moment = |what: String| Moment { at, what };
        let mut violations = Vec::new();
        let ts = truth.tservers_down.len() as u32;
        if ts > self.max_tservers_down {
            self.max_tservers_down = ts;
            self.max_tservers_down_at = Some(moment(truth.tservers_down.join(", ")));
            if ts >= 2 {
                violations.push(format!(
                    "{ts} yb-tservers down at once: {}",
                    truth.tservers_down.join(", ")
                ));
            }
        }
        let ms = truth.masters_down.len() as u32;
        if ms > self.max_masters_down {
            self.max_masters_down = ms;
            self.max_masters_down_at = Some(moment(truth.masters_down.join(", ")));
            if ms >= 2 {
                violations.push(format!(
                    "{ms} yb-masters down at once: {}",
                    truth.masters_down.join(", ")
                ));
            }
        }
        for f in &truth.unhealthy_forwards {
            if !self.now.unhealthy_forwards.contains(f) {
                self.forwards_to_unhealthy += 1;
                violations.push(format!(
                    "forward to a target group with no healthy target: {f}"
                ));
            }
        }
        let mm_bad = truth.mirrormaker_off && truth.traffic_in_b;
        let mm_was = self.now.mirrormaker_off && self.now.traffic_in_b && self.updated_at.is_some();
        if mm_bad && !mm_was {
            self.mirrormaker_off_while_traffic_in_b += 1;
            violations.push("MirrorMaker2 off while traffic goes to zone B".into());
        }
        for v in violations {
            self.violations.push(moment(v));
        }
        let excess = self.violations.len().saturating_sub(100);
        self.violations.drain(..excess);
        self.now = truth.clone();
        self.updated_at = Some(at);
        true
    }
}
