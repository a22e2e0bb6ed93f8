//! The invariants every explored execution must keep, read from the sandbox's ground truth (its
//! effect log and its invariant monitor, never its APIs) and from how the run ended. The
//! history's own checks (it verifies, it replays clean) are made where the log is
//! ([`crate::world`]); a subject adds its end state ([`crate::Subject::check_end`]).

use std::collections::BTreeMap;

use waymark_sandbox::{Effect, Invariants};

use crate::world::{End, World};

/// Effects that must happen at most `n` times per target (and, for the leader blacklist, per
/// server): a restart per unit, a rollout per Deployment, a register per target group; the
/// blacklist ADD and REMOVE once per server; `MirrorMaker2` scaled down and back; each traffic
/// forward moved to zone A and back.
fn limit(effect: &Effect) -> Option<(String, usize)> {
    let key = |what: &str| format!("{} {what} of {}", effect.system, effect.target);
    match effect.action.as_str() {
        "restart" | "stop" | "start" => Some((key("restart/stop/start"), 1)),
        "rollout" => Some((key("rollout"), 1)),
        "register" => Some((key("register"), 1)),
        "deregister" => Some((key("deregister"), 1)),
        a if a.starts_with("blacklist-") => Some((
            format!(
                "{a} of {}",
                effect.details["server"].as_str().unwrap_or("a server")
            ),
            1,
        )),
        "scale" => Some((key("scale"), 2)),
        a if a.starts_with("modify-") => Some((key(a), 2)),
        _ => None,
    }
}

/// What the monitor had counted before the run could act (an estate scenario may begin
/// unhealthy: zone B's targets failing), and, when an operator changed the traffic weights by
/// hand during the run, its record just before: the traffic invariants count only what the run
/// did, up to that change.
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    /// The record when the run started.
    pub at_start: Invariants,
    /// The record just before a change by hand, if any.
    pub before_by_hand: Option<Invariants>,
}

/// Every effect at most as often as the runbook allows, the monitor's invariants (beyond the
/// `baseline`), and an end that is an end (never stuck, suspended or silent).
pub fn estate(world: &World<'_>, end: &End, baseline: &Baseline) -> Vec<String> {
    let shared = world.shared();
    let effects = shared.effects();
    let mut violations = Vec::new();
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in &effects {
        if let Some((key, most)) = limit(e) {
            let entry = counts.entry(key).or_insert((0, most));
            entry.0 += 1;
        }
    }
    for (key, (n, most)) in counts {
        if n > most {
            violations.push(format!(
                "effect more than {}: {key} happened {n} times",
                if most == 1 {
                    "once".to_owned()
                } else {
                    format!("{most} times")
                }
            ));
        }
    }
    let inv = shared.invariants();
    if inv.max_tservers_down > 1 {
        violations.push(format!(
            "{} yb-tservers down at once ({})",
            inv.max_tservers_down,
            inv.max_tservers_down_at
                .as_ref()
                .map_or_else(String::new, |m| format!("{} at {}", m.what, m.at))
        ));
    }
    if inv.max_masters_down > 1 {
        violations.push(format!(
            "{} yb-masters down at once ({})",
            inv.max_masters_down,
            inv.max_masters_down_at
                .as_ref()
                .map_or_else(String::new, |m| format!("{} at {}", m.what, m.at))
        ));
    }
    let traffic = baseline.before_by_hand.as_ref().unwrap_or(&inv);
    let forwards = traffic
        .forwards_to_unhealthy
        .saturating_sub(baseline.at_start.forwards_to_unhealthy);
    let mirrormaker = traffic
        .mirrormaker_off_while_traffic_in_b
        .saturating_sub(baseline.at_start.mirrormaker_off_while_traffic_in_b);
    if forwards > 0 {
        violations.push(format!(
            "traffic forwarded to a target group without a healthy target ({forwards} times): {}",
            inv.violations
                .iter()
                .filter(|m| m.what.starts_with("forward"))
                .map(|m| format!("{} at {}", m.what, m.at))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if mirrormaker > 0 {
        violations.push(format!(
            "MirrorMaker2 off while traffic went to zone B ({mirrormaker} times)"
        ));
    }
    let changes = effects.iter().filter(|e| limit(e).is_some()).count();
    match end {
        End::Suspended(why) => violations.push(format!("the run is suspended: {why}")),
        End::Stopped(why) => violations.push(format!("the run stopped without an end: {why}")),
        End::Stuck(status) => violations.push(format!(
            "the run is stuck: still {status} when the simulation's limit passed"
        )),
        End::NeedsOperator(why) if why.trim().is_empty() => {
            violations.push("the run needs an operator but says nothing of why".into());
        }
        End::NotStarted | End::Refused(_) if changes > 0 => violations.push(format!(
            "the run {} but the estate changed ({changes} effects)",
            if matches!(end, End::NotStarted) {
                "never started"
            } else {
                "was refused"
            }
        )),
        _ => {}
    }
    violations
}
