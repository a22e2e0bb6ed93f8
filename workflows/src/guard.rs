//! The compensation of step 1 that looks before it acts (issue 12): traffic goes back to zone B
//! only when zone B can take it and nobody changed the weights since step 1.
//!
//! [`RestoreTrafficIfSafe`] (`yb-maintenance.restore_traffic_if_safe`) checks, in one attempt:
//! the weights are still the ones step 1 set (or already the ones before the run: a retry after
//! a crash that had restored them), the node gate passes, every service Deployment (`fp`,
//! `fp-async`) is rolled out and Available, and zone B's target group has a healthy target. Only
//! then does it set the weights of before the run (through [`SetTrafficWeights`]). When a check
//! fails it changes nothing and fails, not retryable, with a snapshot of what it saw (the checks
//! that failed, the current weights, the node states): the compensation is then incomplete, so
//! the run ends `needs-operator` with traffic where it is, and its cluster stays locked until
//! `waymark resolve`. The snapshot is the failure's message, journaled with the attempt.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{
    ElbClient, ElbConnection, SetTrafficWeights, SetTrafficWeightsInput, SetTrafficWeightsOutput,
    TrafficSource,
};
use waymark_activities::k8s::{DeploymentRef, RolloutStatus};
use waymark_activities::yb::GateInput;
use waymark_engine::activity::{self, Activity, Context};

/// Input of [`RestoreTrafficIfSafe`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTrafficInput {
    /// How to reach `ELBv2`.
    pub conn: ElbConnection,
    /// The listener or rule carrying the zone weights.
    pub source: TrafficSource,
    /// The weights before the run (what is restored).
    pub restore: BTreeMap<String, i32>,
    /// The weights step 1 set: anything else means someone changed them by hand.
    pub set_by_step_1: BTreeMap<String, i32>,
    /// Zone A's traffic target group (named in messages).
    pub zone_a_target_group_arn: String,
    /// Zone B's traffic target group: it must have a healthy target.
    pub zone_b_target_group_arn: String,
    /// The node gate (one look).
    pub gate: GateInput,
    /// The services that must be Available (`fp`, `fp-async`).
    pub services: Vec<DeploymentRef>,
}

/// Output of [`RestoreTrafficIfSafe`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTrafficOutput {
    /// The weights found.
    pub found: BTreeMap<String, i32>,
    /// Whether the weights were changed by this attempt (false: they already were restored).
    pub changed: bool,
}

/// `yb-maintenance.restore_traffic_if_safe`: see the module documentation.
pub struct RestoreTrafficIfSafe;

impl RestoreTrafficInput {
    fn zones(&self, w: &BTreeMap<String, i32>) -> String {
        let of = |arn: &str| {
            w.get(arn)
                .map_or_else(|| "absent".to_owned(), ToString::to_string)
        };
        let mut text = format!(
            "zone A={} zone B={}",
            of(&self.zone_a_target_group_arn),
            of(&self.zone_b_target_group_arn)
        );
        for (arn, weight) in w {
            if *arn != self.zone_a_target_group_arn && *arn != self.zone_b_target_group_arn {
                text.push_str(&format!(" {arn}={weight}"));
            }
        }
        text
    }
}

impl Activity for RestoreTrafficIfSafe {
    const NAME: &'static str = "yb-maintenance.restore_traffic_if_safe";
    type Input = RestoreTrafficInput;
    type Output = RestoreTrafficOutput;

    async fn run(
        &self,
        ctx: Context,
        input: RestoreTrafficInput,
    ) -> Result<RestoreTrafficOutput, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        let found = client.weights(&input.source).await?.by_target_group;
        if found == input.restore {
            return Ok(RestoreTrafficOutput {
                found,
                changed: false,
            });
        }
        let mut failed = Vec::new();
        if found != input.set_by_step_1 {
            failed.push(format!(
                "weights: {} is not what step 1 set ({}): someone changed them by hand since",
                input.zones(&found),
                input.zones(&input.set_by_step_1)
            ));
        }
        // The gate may still be settling after the failure (a server restarting): it is waited
        // for, up to its one deadline (`gate.timeout_secs`), then judged.
        let deadline = Duration::from_secs(input.gate.timeout_secs);
        let start = waymark_engine::clock::monotonic_now();
        loop {
            let last = match input.gate.masters.node_gate(&input.gate).await {
                Ok(r) if r.passed => None,
                Ok(r) => Some(format!("node gate: {}", r.all().join("; "))),
                Err(e) => Some(format!("node gate: could not be read: {e}")),
            };
            let Some(problem) = last else { break };
            if start.elapsed() >= deadline {
                failed.push(format!(
                    "{problem} (still failing after {} s)",
                    input.gate.timeout_secs
                ));
                break;
            }
            ctx.heartbeat(Some(format!("waiting for the node gate: {problem}")));
            if !ctx
                .sleep(Duration::from_millis(input.gate.poll_ms.max(10)))
                .await
            {
                return Err(activity::Error::fatal(
                    "cancelled while waiting for the node gate; traffic was not moved",
                ));
            }
        }
        for d in &input.services {
            match d.read_rollout_status().await {
                Ok(RolloutStatus::Done(_)) => {}
                Ok(RolloutStatus::Waiting(m) | RolloutStatus::Failed(m)) => failed.push(format!(
                    "service {}/{} is not Available: {m}",
                    d.namespace, d.name
                )),
                Err(e) => failed.push(format!(
                    "service {}/{}: could not be read: {e}",
                    d.namespace, d.name
                )),
            }
        }
        match client.group_health(&input.zone_b_target_group_arn).await {
            Ok(states) if states.iter().any(|t| t.state == "healthy") => {}
            Ok(states) => failed.push(format!(
                "zone B's target group {} has no healthy target ({})",
                input.zone_b_target_group_arn,
                if states.is_empty() {
                    "no target".to_owned()
                } else {
                    states
                        .iter()
                        .map(|t| format!("{} {}", t.id, t.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Err(e) => failed.push(format!(
                "zone B's target group {}: health could not be read: {e}",
                input.zone_b_target_group_arn
            )),
        }
        if failed.is_empty() {
            let out: SetTrafficWeightsOutput = SetTrafficWeights
                .run_with(
                    &client,
                    &ctx,
                    &SetTrafficWeightsInput {
                        conn: input.conn.clone(),
                        source: input.source.clone(),
                        weights: input.restore.clone(),
                    },
                )
                .await?;
            return Ok(RestoreTrafficOutput {
                found,
                changed: out.changed,
            });
        }
        let nodes = match input.gate.masters.tservers().await {
            Ok(ts) => ts
                .iter()
                .map(|t| format!("{} {}", t.host, if t.alive { "ALIVE" } else { "DEAD" }))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("unknown ({e})"),
        };
        let snapshot = format!(
            "traffic NOT moved back to zone B, left as it is ({} on {}): checks failed: {}; tservers: {nodes}; check zone B, then set the weights by hand ({} before the run) or leave them, and run `waymark resolve RUN --note \"...\"` to free the cluster",
            input.zones(&found),
            input.source.label(),
            failed.join("; "),
            input.zones(&input.restore),
        );
        ctx.heartbeat(Some(snapshot.clone()));
        Err(activity::Error::fatal(snapshot))
    }
}
