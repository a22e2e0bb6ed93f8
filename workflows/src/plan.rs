//! `waymark plan yb-maintenance`: reads the live estate (only reads) and lists every action a run
//! would take, in order (which nodes, by `restart_zones`; masters leader last), with the current
//! and the intended values, the gates each node passes, the expected duration, and whether the
//! node gate passes now.

use std::fmt;

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{ReadTrafficWeights, ReadTrafficWeightsInput};
use waymark_activities::k8s::ReadReplicas;
use waymark_activities::preflight::{Preflight, Report};
use waymark_activities::yb::{
    FindLeader, GateInput, GateReport, HealthCheck, HealthInput, HealthReport, ListTServers,
    NodeGate,
};
use waymark_engine::activity::{self, Context};
use waymark_engine::{Activity, RunId, StepRef};

use crate::inventory::Inventory;
use crate::maintenance::steps::{
    REGISTER_NEW_NODE, RESTART_MASTERS, RESTART_SERVICES, RESTART_TSERVERS, START_MIRRORMAKER,
    STOP_MIRRORMAKER, SWITCH_BACK_TO_ZONE_B, SWITCH_TO_ZONE_A, WAIT_FOR_LOAD_BALANCING,
};

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
    /// The node gate now (a run checks it before any change).
    pub node_gate: Result<GateReport, String>,
    /// The pre-flight now (a run refuses to start when a check fails).
    pub preflight: Result<Report, String>,
    /// The run's overall deadline, in words (`[run]`).
    pub deadline: String,
    /// The nodes a run restarts, in order (`yb-master on N`, then `yb-tserver on N`).
    pub order: Vec<String>,
    /// Nodes a run leaves alone (their zone is not in `restart_zones`).
    pub skipped: Vec<String>,
    /// The gates, in the order a run passes them.
    pub gates: Vec<String>,
    /// The expected duration of a run, in words (lower bound and the timeouts' upper bound).
    pub expected_duration: String,
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
    let node_gate = NodeGate
        .run(
            ctx(),
            GateInput {
                masters: inv.masters(),
                expected_masters: inv.master_hosts(),
                expected_tservers: inv.tserver_hosts(),
                ignored_tservers: inv.yugabyte.ignore_tservers.clone(),
                timeout_secs: 0,
                poll_ms: 0,
            },
        )
        .await
        .map_err(|e| e.message);
    let preflight = match crate::preflight::input(inv) {
        Ok(input) => Preflight.run(ctx(), input).await.map_err(|e| e.message),
        Err(e) => Err(e.to_string()),
    };
    if inv.gates.require_approval {
        push(
            &mut actions,
            "0",
            "wait for an operator's `approve` signal".into(),
            "-".into(),
            "approved".into(),
        );
    }
    let a = &inv.traffic.zone_a_target_group_arn;
    let b = &inv.traffic.zone_b_target_group_arn;
    let sources = match inv.traffic_sources() {
        Ok(s) => s,
        Err(e) => {
            note(activity::Error::fatal(e.to_string()));
            Vec::new()
        }
    };
    let mut traffic = Vec::new();
    for source in sources {
        let weights = ReadTrafficWeights
            .run(
                ctx(),
                ReadTrafficWeightsInput {
                    conn: inv.elb(),
                    source: source.clone(),
                },
            )
            .await;
        let current = match &weights {
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
            &SWITCH_TO_ZONE_A.to_string(),
            format!("{} on {}", SWITCH_TO_ZONE_A.title, source.label()),
            current.clone(),
            "A=100 B=0".into(),
        );
        traffic.push((source, current));
    }
    let mut replicas = Vec::new();
    for name in &inv.mirrormaker.deployments {
        let n = match ReadReplicas.run(ctx(), inv.deployment(name)).await {
            Ok(n) => n.to_string(),
            Err(e) => note(e),
        };
        push(
            &mut actions,
            &STOP_MIRRORMAKER.to_string(),
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
        .filter(|n| n.master_http.is_some() && inv.restarts(n))
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
            &RESTART_MASTERS.to_string(),
            format!(
                "restart yb-master on {} ({}): node gate, --no-block restart, new process serving, settle",
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
    for n in inv
        .yugabyte
        .nodes
        .iter()
        .filter(|n| n.tserver && inv.restarts(n))
    {
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
            &RESTART_TSERVERS.to_string(),
            format!(
                "restart yb-tserver on {} ({}): node gate, leader blacklist and drain, --no-block restart, new process serving, is_server_ready and follower lag, blacklist removed, settle",
                n.name, n.ssh
            ),
            current,
            "restarted once".into(),
        );
    }
    push(
        &mut actions,
        &WAIT_FOR_LOAD_BALANCING.to_string(),
        format!(
            "{} (yb-admin via {})",
            WAIT_FOR_LOAD_BALANCING.title,
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
        &REGISTER_NEW_NODE.to_string(),
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
            &RESTART_SERVICES.to_string(),
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
            &START_MIRRORMAKER.to_string(),
            format!("scale {}/{name} back", inv.kubernetes.namespace),
            "0".into(),
            n,
        );
    }
    for (source, current) in traffic {
        push(
            &mut actions,
            &SWITCH_BACK_TO_ZONE_B.to_string(),
            format!("{} on {}", SWITCH_BACK_TO_ZONE_B.title, source.label()),
            "A=100 B=0".into(),
            current,
        );
    }
    let order: Vec<String> = actions
        .iter()
        .filter(|a| a.step == RESTART_MASTERS.to_string() || a.step == RESTART_TSERVERS.to_string())
        .filter_map(|a| {
            let rest = a.action.strip_prefix("restart ")?;
            let (what, _) = rest.split_once(" (")?;
            Some(what.to_owned())
        })
        .collect();
    let skipped: Vec<String> = inv
        .yugabyte
        .nodes
        .iter()
        .filter(|n| !inv.restarts(n))
        .map(|n| format!("{} (zone {})", n.name, n.zone))
        .collect();
    let expected_duration = expected_duration(inv, &order);
    let deadline = match (inv.run.max_duration_secs, inv.run.finish_by) {
        (_, Some(f)) => format!(
            "{} s after the start ({}), or {f} if earlier (run.finish_by); then the run stops before its next step and compensates",
            inv.max_duration_secs(),
            if inv.run.max_duration_secs.is_some() { "run.max_duration_secs" } else { "default" }
        ),
        (Some(m), None) => format!(
            "{m} s after the start (run.max_duration_secs); then the run stops before its next step and compensates"
        ),
        (None, None) => format!(
            "{} s after the start (default: {} x the estimate, at least {} s); then the run stops before its next step and compensates",
            inv.max_duration_secs(),
            crate::inventory::RunLimits::DEFAULT_FACTOR,
            crate::inventory::RunLimits::DEFAULT_FLOOR_SECS
        ),
    };
    Plan {
        cluster: inv.cluster.name.clone(),
        health,
        node_gate,
        preflight,
        deadline,
        order,
        skipped,
        gates: gate_descriptions(inv),
        expected_duration,
        actions,
        unreadable,
    }
}

/// The gates of a run, in order, with the inventory's settings.
pub fn gate_descriptions(inv: &Inventory) -> Vec<String> {
    let g = &inv.gates;
    if g.legacy_unsafe_gates_for_tests {
        return vec![
            "TEST ONLY legacy_unsafe_gates_for_tests: the version-2 gates (one health look per node); never on a real estate".into(),
        ];
    }
    let mut out = vec![
        "before any change, the read-only pre-flight: SSH to every node (host key known, login, sudo -n systemctl allowed, the units exist), yb-admin and yb-ts-cli with the inventory's flags, the yb-master API, Kubernetes RBAC (get/patch, get/patch scale) on every Deployment, every traffic listener and rule forwards to exactly zone A's and zone B's target groups, zone A has a healthy target, the register target is an ALIVE tserver, MirrorMaker2 has replicas; a failure refuses the run".to_owned(),
        "before any change: every master LEADER or FOLLOWER with no error, masters and tservers exactly the inventory's, no DEAD tserver, 0 under-replicated (tablet-under-replication), 0 leaderless (tablet-replication); yb-admin and yb-ts-cli answer; both traffic target groups have a healthy target".to_owned(),
        format!(
            "before each node: the same node gate, waited for up to {} s",
            g.health_timeout_secs
        ),
        format!(
            "each tserver: leader blacklist ADD, leaders drained (get_leader_blacklist_completion 100%), up to {} s",
            g.node_timeout_secs
        ),
        format!(
            "each node: systemctl --no-block restart, active under a new InvocationID, then the new process serving (uptime and heartbeat younger than the restart; masters a new instance_seqno), up to {} s each",
            g.node_timeout_secs
        ),
        format!(
            "each tserver: is_server_ready 0 tablets not running and follower lag at most {} ms, then leader blacklist REMOVE (also on compensation)",
            g.max_follower_lag_ms
        ),
        format!("each node: settle {} ms before the next", g.settle_ms),
        format!(
            "step 5: {} consecutive idle readings with no load move left and balanced leaders, up to {} s",
            g.idle_readings, g.load_balancer_timeout_secs
        ),
    ];
    if let Some(d) = &inv.yugabyte.certs_dir {
        out.push(format!(
            "TLS: every yb-admin and yb-ts-cli call gets -certs_dir_name {d}"
        ));
    }
    out
}

/// The plan's estimate of a run, seconds: about a minute per server restart (a real server
/// stops, starts and bootstraps) plus its settle time. The default overall deadline of a run is
/// a multiple of it (`Inventory::max_duration_secs`).
pub fn estimate_secs(restarts: u64, settle_ms: u64) -> u64 {
    restarts.saturating_mul(60u64.saturating_add(settle_ms / 1000))
}

/// A lower bound (settle times plus about a minute per node restart, as a real server takes
/// to stop, start and bootstrap) and the upper bound the timeouts allow.
fn expected_duration(inv: &Inventory, order: &[String]) -> String {
    let g = &inv.gates;
    let nodes = u64::try_from(order.len()).unwrap_or(u64::MAX);
    let low_secs = estimate_secs(nodes, g.settle_ms);
    let per_node = g
        .health_timeout_secs
        .saturating_add(g.node_timeout_secs.saturating_mul(4))
        .saturating_add(g.settle_ms / 1000);
    let high_secs = nodes
        .saturating_mul(per_node)
        .saturating_add(g.load_balancer_timeout_secs)
        .saturating_add(g.target_healthy_timeout_secs)
        .saturating_add(g.rollout_timeout_secs);
    format!(
        "{nodes} node restarts: about {} min or more (about 1 min per restart plus {} s settle each), at most {} h by the timeouts",
        low_secs.div_ceil(60),
        g.settle_ms / 1000,
        high_secs.div_ceil(3600)
    )
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
        match &self.node_gate {
            Ok(g) if g.passed => writeln!(f, "node gate: PASSES now")?,
            Ok(g) => writeln!(
                f,
                "node gate: FAILS now, a run would stop before any change: {}",
                g.all().join("; ")
            )?,
            Err(e) => writeln!(f, "node gate: cannot be read: {e}")?,
        }
        match &self.preflight {
            Ok(p) if p.passed() => write!(f, "pre-flight: PASSES now\n{p}")?,
            Ok(p) => write!(
                f,
                "pre-flight: FAILS now, a run would be refused before any change:\n{p}"
            )?,
            Err(e) => writeln!(f, "pre-flight: cannot be run: {e}")?,
        }
        writeln!(f, "order: {}", self.order.join(", "))?;
        if !self.skipped.is_empty() {
            writeln!(
                f,
                "not restarted (zone not in restart_zones): {}",
                self.skipped.join(", ")
            )?;
        }
        writeln!(f, "gates:")?;
        for g in &self.gates {
            writeln!(f, "  - {g}")?;
        }
        writeln!(f, "expected duration: {}", self.expected_duration)?;
        writeln!(f, "deadline: {}", self.deadline)?;
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
