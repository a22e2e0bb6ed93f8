//! `waymark plan yb-maintenance`: reads the live estate (only reads) and lists every action a run
//! would take, in order, with the current and the intended values, and whether the health gate
//! passes now.

use std::fmt;

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{ReadTrafficWeights, ReadTrafficWeightsInput};
use waymark_activities::k8s::ReadReplicas;
use waymark_activities::yb::{FindLeader, HealthCheck, HealthInput, HealthReport, ListTServers};
use waymark_engine::activity::{self, Context};
use waymark_engine::{Activity, RunId, StepRef};

use crate::inventory::Inventory;

/// One action of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Runbook step number.
    pub step: String,
    /// What it does.
    pub action: String,
    /// What the estate holds now.
    pub current: String,
    /// What it will hold after the action.
    pub intended: String,
}

/// What a run would do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Cluster name.
    pub cluster: String,
    /// The health gate now.
    pub health: Result<HealthReport, String>,
    /// The actions, in order.
    pub actions: Vec<Action>,
    /// What could not be read (the plan is then incomplete).
    pub unreadable: Vec<String>,
}

fn ctx() -> Context {
    Context::detached(RunId::new(), StepRef::Workflow(0), 1)
}

/// Reads the estate and builds the plan.
pub async fn plan(inv: &Inventory) -> Plan {
    let mut unreadable = Vec::new();
    let mut actions = Vec::new();
    let mut note = |e: activity::Error| {
        unreadable.push(e.message);
        "(unreadable)".to_owned()
    };
    let push = |actions: &mut Vec<Action>,
                step: &str,
                action: String,
                current: String,
                intended: String| {
        actions.push(Action {
            step: step.into(),
            action,
            current,
            intended,
        });
    };
    let health = HealthCheck
        .run(
            ctx(),
            HealthInput {
                masters: inv.masters(),
                min_uptime_seconds: inv.gates.min_uptime_seconds,
                timeout_secs: 0,
                poll_ms: 0,
            },
        )
        .await
        .map_err(|e| e.message);
    if inv.gates.require_approval {
        push(
            &mut actions,
            "0",
            "wait for an operator's `approve` signal".into(),
            "-".into(),
            "approved".into(),
        );
    }
    let weights = match inv.traffic_source() {
        Ok(source) => {
            ReadTrafficWeights
                .run(
                    ctx(),
                    ReadTrafficWeightsInput {
                        conn: inv.elb(),
                        source,
                    },
                )
                .await
        }
        Err(e) => Err(activity::Error::fatal(e.to_string())),
    };
    let a = &inv.traffic.zone_a_target_group_arn;
    let b = &inv.traffic.zone_b_target_group_arn;
    let current_weights = match &weights {
        Ok(w) => format!(
            "A={} B={}",
            w.by_target_group
                .get(a)
                .map_or("-".into(), ToString::to_string),
            w.by_target_group
                .get(b)
                .map_or("-".into(), ToString::to_string)
        ),
        Err(e) => note(e.clone()),
    };
    push(
        &mut actions,
        "1",
        "switch traffic to zone A".into(),
        current_weights.clone(),
        "A=100 B=0".into(),
    );
    let mut replicas = Vec::new();
    for name in &inv.mirrormaker.deployments {
        let n = match ReadReplicas.run(ctx(), inv.deployment(name)).await {
            Ok(n) => n.to_string(),
            Err(e) => note(e),
        };
        push(
            &mut actions,
            "2",
            format!(
                "scale {}/{name} to 0 (recording its replicas)",
                inv.kubernetes.namespace
            ),
            n.clone(),
            "0".into(),
        );
        replicas.push((name.clone(), n));
    }
    let leader = FindLeader.run(ctx(), inv.masters()).await;
    let mut masters: Vec<_> = inv
        .yugabyte
        .nodes
        .iter()
        .filter(|n| n.master_http.is_some())
        .collect();
    if let Ok(l) = &leader {
        masters.sort_by_key(|n| n.master_http.as_deref() == Some(l.as_str()));
    } else if let Err(e) = &leader {
        note(e.clone());
    }
    for n in masters {
        let is_leader = leader
            .as_ref()
            .is_ok_and(|l| n.master_http.as_deref() == Some(l.as_str()));
        push(
            &mut actions,
            "3",
            format!(
                "restart yb-master on {} ({}), wait until back, health gate",
                n.name, n.ssh
            ),
            if is_leader {
                "leader".into()
            } else {
                "follower".into()
            },
            "restarted once".into(),
        );
    }
    let tservers = ListTServers.run(ctx(), inv.masters()).await;
    for n in inv.yugabyte.nodes.iter().filter(|n| n.tserver) {
        let current = match &tservers {
            Ok(ts) => ts
                .iter()
                .find(|t| t.host == n.address)
                .map_or(NOT_IN_CLUSTER.into(), |t| {
                    format!(
                        "{} up {} s",
                        if t.alive { "ALIVE" } else { "DEAD" },
                        t.uptime_seconds
                    )
                }),
            Err(e) => note(e.clone()),
        };
        push(
            &mut actions,
            "4",
            format!(
                "restart yb-tserver on {} ({}), wait until back, health gate",
                n.name, n.ssh
            ),
            current,
            "restarted once".into(),
        );
    }
    push(
        &mut actions,
        "5",
        format!(
            "wait for load balancing (yb-admin via {})",
            inv.yugabyte
                .nodes
                .iter()
                .find(|n| n.master_http.is_some())
                .map_or("-", |n| n.name.as_str())
        ),
        "-".into(),
        "idle".into(),
    );
    push(
        &mut actions,
        "6",
        format!(
            "register {} in {}",
            inv.register.target_id, inv.register.target_group_arn
        ),
        "-".into(),
        "healthy".into(),
    );
    for name in &inv.services.deployments {
        push(
            &mut actions,
            "7",
            format!(
                "rollout restart {}/{name} and wait",
                inv.kubernetes.namespace
            ),
            "-".into(),
            "rolled out".into(),
        );
    }
    for (name, n) in replicas {
        push(
            &mut actions,
            "8",
            format!("scale {}/{name} back", inv.kubernetes.namespace),
            "0".into(),
            n,
        );
    }
    push(
        &mut actions,
        "9",
        "switch traffic back to zone B".into(),
        "A=100 B=0".into(),
        current_weights,
    );
    Plan {
        cluster: inv.cluster.name.clone(),
        health,
        actions,
        unreadable,
    }
}

/// What `current` says of an inventory node the cluster does not list.
pub const NOT_IN_CLUSTER: &str = "not in the cluster";

impl Plan {
    /// The actions on inventory nodes the cluster does not list (the inventory disagrees with
    /// the cluster: a run would not restart what it should).
    pub fn mismatches(&self) -> Vec<&Action> {
        self.actions
            .iter()
            .filter(|a| a.current == NOT_IN_CLUSTER)
            .collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "yb-maintenance plan for cluster {} (nothing has been changed)",
            self.cluster
        )?;
        match &self.health {
            Ok(h) if h.passed => writeln!(f, "health gate: PASSES now")?,
            Ok(h) => writeln!(
                f,
                "health gate: FAILS now, a run would stop before any change: {}",
                h.problems.join("; ")
            )?,
            Err(e) => writeln!(f, "health gate: cannot be read: {e}")?,
        }
        let width = self
            .actions
            .iter()
            .map(|a| a.action.len())
            .max()
            .unwrap_or(0);
        for a in &self.actions {
            writeln!(
                f,
                "{:>2}. {:width$}  {} -> {}",
                a.step, a.action, a.current, a.intended
            )?;
        }
        for u in &self.unreadable {
            writeln!(f, "could not read: {u}")?;
        }
        Ok(())
    }
}
