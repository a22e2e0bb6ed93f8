//! The runbook as a [`Subject`]: `yb-maintenance` on the sandbox's estate at the real systems'
//! durations, and its end states (issue 13): completed with the estate as the runbook says;
//! compensated with traffic back in zone B at the recorded weights and `MirrorMaker2` at its
//! recorded replicas; or needing an operator with traffic where it is safe (the monitor's
//! invariants, checked for every execution, say it never went anywhere unsafe).

use std::collections::BTreeMap;

use serde_json::json;
use waymark_engine::runtime::EngineBuilder;
use waymark_engine::Payload;
use waymark_sandbox::elb::{target_group_name, yb_target_group_name, LOAD_BALANCER, RULE_PRIORITY};
use waymark_sandbox::estate::Estate;
use waymark_workflows::Inventory;

use crate::world::{End, Subject, World};

/// `yb-maintenance` on the sandbox estate.
#[derive(Clone, Debug, Default)]
pub struct YbMaintenance;

/// The real default of `gates.poll_ms` (the sandbox's inventory polls faster, for its
/// wall-clock demos; in simulated time the real cadence costs nothing and shows the real run).
const POLL_MS: u64 = 2000;

/// The sandbox's inventory as the runbook loads it, polling at the real default cadence.
pub fn sandbox_inventory(world: &World<'_>) -> Result<Inventory, String> {
    let mut inv = Inventory::load(&world.dir.join("inventory.toml")).map_err(|e| e.to_string())?;
    inv.gates.poll_ms = POLL_MS;
    Ok(inv)
}

/// Every traffic forward (the listener and its `/waymark/*` rule) with its weights, and the
/// `MirrorMaker2` replicas.
fn traffic(st: &Estate) -> (BTreeMap<String, BTreeMap<String, i32>>, u32) {
    let mut forwards = BTreeMap::new();
    if let Some(listener) = st.elb.listener_arn(LOAD_BALANCER) {
        forwards.insert(
            "listener".to_owned(),
            st.elb.weights(listener).unwrap_or_default(),
        );
        if let Some(rule) = st.elb.rule_arn(listener, RULE_PRIORITY) {
            forwards.insert("rule".to_owned(), st.elb.weights(rule).unwrap_or_default());
        }
    }
    let replicas = st
        .k8s
        .deployments
        .values()
        .find(|d| d.name.starts_with("mirrormaker"))
        .map_or(0, |d| d.replicas);
    (forwards, replicas)
}

impl Subject for YbMaintenance {
    fn workflow(&self) -> &'static str {
        "yb-maintenance"
    }

    fn register(&self, builder: EngineBuilder) -> EngineBuilder {
        waymark_workflows::register(builder)
    }

    fn input(&self, world: &World<'_>) -> Result<Payload, String> {
        Payload::encode(&sandbox_inventory(world)?).map_err(|e| e.to_string())
    }

    fn before(&self, world: &World<'_>) -> serde_json::Value {
        let (forwards, replicas) = world.shared().read(traffic);
        json!({ "forwards": forwards, "mirrormaker": replicas })
    }

    fn check_end(&self, world: &World<'_>, end: &End, before: &serde_json::Value) -> Vec<String> {
        let shared = world.shared();
        let (forwards, replicas, blacklist, registered, nodes, zone_b) = shared.read(|st| {
            let (f, r) = traffic(st);
            let yb_b = st
                .elb
                .target_group_arn(&yb_target_group_name("B"))
                .map(|arn| st.elb.registered(arn))
                .unwrap_or_default();
            let zone_b = st
                .elb
                .target_group_arn(&target_group_name("B"))
                .unwrap_or_default()
                .to_owned();
            (
                f,
                r,
                st.yb.blacklist.clone(),
                yb_b.contains(&st.spec.new_target),
                st.spec.nodes.clone(),
                zone_b,
            )
        });
        let recorded_forwards: BTreeMap<String, BTreeMap<String, i32>> =
            serde_json::from_value(before["forwards"].clone()).unwrap_or_default();
        let recorded_replicas = before["mirrormaker"].as_u64().unwrap_or(0) as u32;
        let mut violations = Vec::new();
        let traffic_restored = |violations: &mut Vec<String>, how: &str| {
            if forwards != recorded_forwards {
                violations.push(format!(
                    "{how}, but the traffic weights are {forwards:?}, not the recorded {recorded_forwards:?}"
                ));
            }
            if replicas != recorded_replicas {
                violations.push(format!(
                    "{how}, but MirrorMaker2 has {replicas} replicas, not the recorded {recorded_replicas}"
                ));
            }
            if !blacklist.is_empty() {
                violations.push(format!(
                    "{how}, but the leader blacklist still holds {blacklist:?}"
                ));
            }
        };
        match end {
            End::Completed => {
                traffic_restored(&mut violations, "the run completed");
                if !forwards
                    .values()
                    .all(|w| w.get(&zone_b).copied().unwrap_or(0) > 0)
                {
                    violations.push(format!(
                        "the run completed, but not every forward sends traffic to zone B: {forwards:?}"
                    ));
                }
                if !registered {
                    violations.push("the run completed, but the new node is not registered".into());
                }
                let effects = shared.effects();
                for n in &nodes {
                    let units = if n.master {
                        vec!["yb-master", "yb-tserver"]
                    } else {
                        vec!["yb-tserver"]
                    };
                    for unit in units {
                        let target = format!("{}/{unit}", n.name);
                        let restarts = effects
                            .iter()
                            .filter(|e| {
                                e.system == "ssh" && e.target == target && e.action == "restart"
                            })
                            .count();
                        if restarts != 1 {
                            violations.push(format!(
                                "the run completed, but {target} was restarted {restarts} times, not once"
                            ));
                        }
                    }
                }
            }
            End::Compensated(_) => traffic_restored(&mut violations, "the run was compensated"),
            End::NotStarted | End::Refused(_) => {
                traffic_restored(&mut violations, "the run changed nothing");
            }
            // Needs operator: where traffic may be is the monitor's to judge (never to a group
            // without a healthy target, never zone B without MirrorMaker2), at every moment.
            End::NeedsOperator(_) | End::Suspended(_) | End::Stopped(_) | End::Stuck(_) => {}
        }
        violations
    }
}
