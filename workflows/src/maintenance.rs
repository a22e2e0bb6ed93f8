//! `yb-maintenance`: the seed runbook (`YugabyteDB` zone A/B maintenance) as a workflow. The body of
//! [`YbMaintenance::run`] reads like the runbook; each numbered method is one runbook step.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{
    DeregisterTarget, DeregisterTargetInput, ReadTrafficWeights, ReadTrafficWeightsInput,
    RegisterTarget, RegisterTargetInput, RegisterTargetOutput, SetTrafficWeights,
    SetTrafficWeightsInput, SetTrafficWeightsOutput, Weights,
};
use waymark_activities::k8s::{
    ReadReplicas, RestartInput as RolloutRestartInput, RolloutRestart, Scale, ScaleInput,
    WaitRollout, WaitRolloutInput,
};
use waymark_activities::ssh::{
    RestartInput as UnitRestartInput, ShowInput, SystemdRestart, SystemdShow, UnitState,
};
use waymark_activities::yb::{
    FindLeader, HealthCheck, HealthInput, HealthReport, LoadBalancerInput, ServerBackInput,
    ServerKind, WaitHealthy, WaitLoadBalancer, WaitServerBack,
};
use waymark_engine::workflow::{self, Workflow};
use waymark_engine::{Activity, RetryPolicy, WorkflowContext};

use crate::inventory::{Inventory, Node};

/// What a finished run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Traffic weights before the run (and after it: they are restored).
    pub traffic_before: BTreeMap<String, i32>,
    /// `MirrorMaker2` replica counts recorded before step 2 and restored in step 8.
    pub mirrormaker_replicas: BTreeMap<String, i32>,
    /// Nodes whose yb-master was restarted, in order.
    pub masters_restarted: Vec<String>,
    /// Nodes whose yb-tserver was restarted, in order.
    pub tservers_restarted: Vec<String>,
    /// The target registered in step 6 and its state.
    pub registered: String,
}

/// The seed runbook.
pub struct YbMaintenance;

impl Workflow for YbMaintenance {
    const NAME: &'static str = "yb-maintenance";
    const VERSION: u32 = 1;
    type Input = Inventory;
    type Output = Summary;

    async fn run(
        &self,
        ctx: WorkflowContext,
        inventory: Inventory,
    ) -> Result<Summary, workflow::Error> {
        let m = Maintenance {
            ctx,
            inv: inventory,
        };
        m.health_gate_before_any_change().await?;
        m.approval_if_required().await?;
        let traffic_before = m.step1_switch_traffic_to_zone_a().await?;
        let mirrormaker_replicas = m.step2_stop_mirrormaker().await?;
        let masters_restarted = m.step3_restart_masters_one_at_a_time_leader_last().await?;
        let tservers_restarted = m.step4_restart_tservers_one_at_a_time().await?;
        m.step5_wait_for_load_balancing().await?;
        let registered = m.step6_register_new_node_in_target_group().await?;
        m.step7_restart_fp_and_fp_async().await?;
        m.step8_start_mirrormaker_at_recorded_replicas(&mirrormaker_replicas)
            .await?;
        m.step9_switch_traffic_back_to_zone_b(&traffic_before)
            .await?;
        Ok(Summary {
            traffic_before: traffic_before.by_target_group,
            mirrormaker_replicas,
            masters_restarted,
            tservers_restarted,
            registered,
        })
    }
}

/// Step labels, shared with the plan and the demo's `--fail-at`.
pub mod steps {
    /// Every runbook step, numbered as in the runbook.
    pub const ALL: [(&str, &str); 9] = [
        ("1", "switch traffic to zone A"),
        ("2", "stop MirrorMaker2"),
        ("3", "restart yb-master on every node"),
        ("4", "restart yb-tserver on every node"),
        ("5", "wait for load balancing"),
        ("6", "register the new node in the target group"),
        ("7", "restart fp and fp-async"),
        ("8", "start MirrorMaker2 at the recorded replicas"),
        ("9", "switch traffic back to zone B"),
    ];
}

struct Maintenance {
    ctx: WorkflowContext,
    inv: Inventory,
}

/// Margin added to a wait's own timeout for its attempt limit.
const MARGIN: Duration = Duration::from_secs(60);

impl Maintenance {
    /// A step calling activity `A`, with the inventory's retry policy.
    fn step<A: Activity>(&self, input: &A::Input) -> waymark_engine::runtime::StepCall<A::Output> {
        self.ctx.activity::<A>(input).retry(self.inv.retry_policy())
    }

    fn gates(&self) -> &crate::inventory::Gates {
        &self.inv.gates
    }

    fn health_input(&self) -> HealthInput {
        HealthInput {
            masters: self.inv.masters(),
            min_uptime_seconds: self.gates().min_uptime_seconds,
            timeout_secs: self.gates().health_timeout_secs,
            poll_ms: self.gates().poll_ms,
        }
    }

    /// A long wait: its attempt limit covers its own timeout, and it must heartbeat.
    fn wait_limits(&self, timeout_secs: u64) -> (Duration, Duration) {
        let poll = Duration::from_millis(self.gates().poll_ms);
        (
            Duration::from_secs(timeout_secs) + MARGIN,
            poll * 10 + Duration::from_secs(30),
        )
    }

    async fn health_gate_before_any_change(&self) -> Result<(), workflow::Error> {
        let report: HealthReport = self
            .step::<HealthCheck>(&HealthInput {
                timeout_secs: 0,
                ..self.health_input()
            })
            .label("health gate before any change")
            .await?;
        if !report.passed {
            return Err(workflow::Error::failed(format!(
                "cluster unhealthy, nothing was changed: {}",
                report.problems.join("; ")
            )));
        }
        Ok(())
    }

    async fn approval_if_required(&self) -> Result<(), workflow::Error> {
        if self.gates().require_approval {
            let _: serde_json::Value = self.ctx.wait_for_signal("approve").await?;
        }
        Ok(())
    }

    fn weights(&self, a: i32, b: i32) -> BTreeMap<String, i32> {
        BTreeMap::from([
            (self.inv.traffic.zone_a_target_group_arn.clone(), a),
            (self.inv.traffic.zone_b_target_group_arn.clone(), b),
        ])
    }

    async fn step1_switch_traffic_to_zone_a(&self) -> Result<Weights, workflow::Error> {
        let before: Weights = self
            .step::<ReadTrafficWeights>(&ReadTrafficWeightsInput {
                conn: self.inv.elb(),
                source: self.inv.traffic_source(),
            })
            .label("1. read traffic weights")
            .await?;
        let restore = SetTrafficWeightsInput {
            conn: self.inv.elb(),
            source: self.inv.traffic_source(),
            weights: before.by_target_group.clone(),
        };
        let _: SetTrafficWeightsOutput = self
            .step::<SetTrafficWeights>(&SetTrafficWeightsInput {
                conn: self.inv.elb(),
                source: self.inv.traffic_source(),
                weights: self.weights(100, 0),
            })
            .label("1. switch traffic to zone A")
            .compensate_with(
                SetTrafficWeights::NAME,
                &restore,
                "traffic back to zone B (the weights before the run)",
            )
            .await?;
        Ok(before)
    }

    async fn step2_stop_mirrormaker(&self) -> Result<BTreeMap<String, i32>, workflow::Error> {
        let mut recorded = BTreeMap::new();
        for name in &self.inv.mirrormaker.deployments {
            let d = self.inv.deployment(name);
            let replicas: i32 = self
                .step::<ReadReplicas>(&d)
                .label(format!("2. record {name} replicas"))
                .await?;
            let _: waymark_activities::k8s::ScaleOutput = self
                .step::<Scale>(&ScaleInput {
                    deployment: d.clone(),
                    replicas: 0,
                })
                .label(format!("2. scale {name} to 0"))
                .compensate_with(
                    Scale::NAME,
                    &ScaleInput {
                        deployment: d,
                        replicas,
                    },
                    format!("{name} back to {replicas} replicas"),
                )
                .await?;
            recorded.insert(name.clone(), replicas);
        }
        Ok(recorded)
    }

    async fn step3_restart_masters_one_at_a_time_leader_last(
        &self,
    ) -> Result<Vec<String>, workflow::Error> {
        let leader: String = self
            .step::<FindLeader>(&self.inv.masters())
            .label("3. find the leader master")
            .await?;
        let mut order: Vec<&Node> = self
            .inv
            .yugabyte
            .nodes
            .iter()
            .filter(|n| n.master_http.is_some())
            .collect();
        order.sort_by_key(|n| n.master_http.as_deref() == Some(leader.as_str()));
        let mut done = Vec::new();
        for node in order {
            self.restart_on_node(node, "3", "yb-master", ServerKind::Master)
                .await?;
            done.push(node.name.clone());
        }
        Ok(done)
    }

    async fn step4_restart_tservers_one_at_a_time(&self) -> Result<Vec<String>, workflow::Error> {
        let mut done = Vec::new();
        for node in self.inv.yugabyte.nodes.iter().filter(|n| n.tserver) {
            self.restart_on_node(node, "4", "yb-tserver", ServerKind::TServer)
                .await?;
            done.push(node.name.clone());
        }
        Ok(done)
    }

    /// Record the unit's `InvocationID`, restart it (skipped if the ID changed meanwhile: it was
    /// already restarted before a crash), wait until the server is back, then the health gate.
    async fn restart_on_node(
        &self,
        node: &Node,
        n: &str,
        unit: &str,
        kind: ServerKind,
    ) -> Result<(), workflow::Error> {
        let target = self.inv.ssh_target(node);
        let name = &node.name;
        let before: UnitState = self
            .step::<SystemdShow>(&ShowInput {
                target: target.clone(),
                unit: unit.to_owned(),
                use_sudo: self.inv.ssh.use_sudo,
            })
            .label(format!("{n}. {unit} on {name}: record its InvocationID"))
            .await?;
        let (limit, beat) = self.wait_limits(self.gates().node_timeout_secs);
        let _: waymark_activities::ssh::RestartOutput = self
            .step::<SystemdRestart>(&UnitRestartInput {
                target,
                unit: unit.to_owned(),
                use_sudo: self.inv.ssh.use_sudo,
                expected_invocation_id: before.invocation_id,
                active_timeout_ms: self.gates().node_timeout_secs * 1000,
                poll_interval_ms: self.gates().poll_ms,
            })
            .label(format!("{n}. restart {unit} on {name}"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        let _: String = self
            .step::<WaitServerBack>(&ServerBackInput {
                masters: self.inv.masters(),
                host: node.address.clone(),
                kind,
                timeout_secs: self.gates().node_timeout_secs,
                poll_ms: self.gates().poll_ms,
            })
            .label(format!("{n}. wait until {unit} on {name} is back"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        let (limit, beat) = self.wait_limits(self.gates().health_timeout_secs);
        let _: HealthReport = self
            .step::<WaitHealthy>(&self.health_input())
            .label(format!("{n}. health gate after {unit} on {name}"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        Ok(())
    }

    async fn step5_wait_for_load_balancing(&self) -> Result<(), workflow::Error> {
        let node = self
            .inv
            .yugabyte
            .nodes
            .iter()
            .find(|n| n.master_http.is_some())
            .expect("validated: a master node exists");
        let (limit, beat) = self.wait_limits(self.gates().load_balancer_timeout_secs);
        let _: String = self
            .step::<WaitLoadBalancer>(&LoadBalancerInput {
                ssh: self.inv.ssh_target(node),
                yb_admin: self.inv.yugabyte.yb_admin.clone(),
                master_rpc: self.inv.master_rpc(),
                timeout_secs: self.gates().load_balancer_timeout_secs,
                poll_ms: self.gates().poll_ms,
            })
            .label("5. wait for load balancing to finish")
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        Ok(())
    }

    async fn step6_register_new_node_in_target_group(&self) -> Result<String, workflow::Error> {
        let r = &self.inv.register;
        let (limit, beat) = self.wait_limits(self.gates().target_healthy_timeout_secs);
        let out: RegisterTargetOutput = self
            .step::<RegisterTarget>(&RegisterTargetInput {
                conn: self.inv.elb(),
                target_group_arn: r.target_group_arn.clone(),
                target_id: r.target_id.clone(),
                port: r.port,
                availability_zone: r.availability_zone.clone(),
                healthy_timeout_secs: self.gates().target_healthy_timeout_secs,
                poll_interval_ms: self.gates().poll_ms,
            })
            .label(format!("6. register {} in the target group", r.target_id))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .compensate_with(
                DeregisterTarget::NAME,
                &DeregisterTargetInput {
                    conn: self.inv.elb(),
                    target_group_arn: r.target_group_arn.clone(),
                    target_id: r.target_id.clone(),
                    port: r.port,
                    availability_zone: r.availability_zone.clone(),
                    keep_if_healthy: true,
                },
                format!("deregister {} unless it became healthy", r.target_id),
            )
            .await?;
        Ok(format!("{} {}", r.target_id, out.state))
    }

    async fn step7_restart_fp_and_fp_async(&self) -> Result<(), workflow::Error> {
        // The annotation value comes from the recorded clock: a retried restart patches the same
        // value and starts no second rollout.
        let restarted_at = self
            .ctx
            .now()
            .await?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for name in &self.inv.services.deployments {
            let _: waymark_activities::k8s::RestartOutput = self
                .step::<RolloutRestart>(&RolloutRestartInput {
                    deployment: self.inv.deployment(name),
                    restarted_at: restarted_at.clone(),
                })
                .label(format!("7. rollout restart {name}"))
                .await?;
        }
        let (limit, beat) = self.wait_limits(self.gates().rollout_timeout_secs);
        let waits = self.inv.services.deployments.iter().map(|name| {
            self.step::<WaitRollout>(&WaitRolloutInput {
                deployment: self.inv.deployment(name),
                timeout_secs: self.gates().rollout_timeout_secs,
                poll_ms: self.gates().poll_ms,
            })
            .label(format!("7. wait for the {name} rollout"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .into_future()
        });
        futures::future::try_join_all(waits).await?;
        Ok(())
    }

    async fn step8_start_mirrormaker_at_recorded_replicas(
        &self,
        recorded: &BTreeMap<String, i32>,
    ) -> Result<(), workflow::Error> {
        for (name, replicas) in recorded {
            let _: waymark_activities::k8s::ScaleOutput = self
                .step::<Scale>(&ScaleInput {
                    deployment: self.inv.deployment(name),
                    replicas: *replicas,
                })
                .label(format!("8. scale {name} back to {replicas}"))
                .await?;
        }
        Ok(())
    }

    async fn step9_switch_traffic_back_to_zone_b(
        &self,
        before: &Weights,
    ) -> Result<(), workflow::Error> {
        let _: SetTrafficWeightsOutput = self
            .step::<SetTrafficWeights>(&SetTrafficWeightsInput {
                conn: self.inv.elb(),
                source: self.inv.traffic_source(),
                weights: before.by_target_group.clone(),
            })
            .label("9. switch traffic back to zone B")
            .retry(RetryPolicy {
                max_attempts: Some(self.inv.gates.retry_attempts + 1),
                ..self.inv.retry_policy()
            })
            .await?;
        Ok(())
    }
}
