//! `yb-maintenance`: the seed runbook (`YugabyteDB` zone A/B maintenance) as a workflow. The body of
//! [`YbMaintenance::run`] reads like the runbook; each numbered method is one runbook step.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{
    DeregisterTarget, DeregisterTargetInput, ElbConnection, ReadTargetGroupHealth,
    ReadTargetGroupHealthInput, ReadTrafficWeights, ReadTrafficWeightsInput, RegisterTarget,
    RegisterTargetInput, RegisterTargetOutput, ResolveConnection as ResolveAwsConnection,
    SetTrafficWeights, SetTrafficWeightsInput, SetTrafficWeightsOutput, TargetState, TrafficSource,
    Weights,
};
use waymark_activities::k8s::{
    Connection as KubeConnection, ReadReplicas, ResolveConnection as ResolveKubeConnection,
    RestartInput as RolloutRestartInput, RolloutRestart, ScaleAndWait, ScaleAndWaitInput,
    ScaleInput, WaitRollout, WaitRolloutInput,
};
use waymark_activities::preflight::{Preflight, Report};
use waymark_activities::ssh::{
    RestartInput as UnitRestartInput, ShowInput, SystemdRestart, SystemdShow, UnitState,
};
use waymark_activities::yb::{
    rpc_address, BlacklistInput, BlacklistOp, ChangeLeaderBlacklist, FindLeader, GateInput,
    GateReport, HealthCheck, HealthInput, HealthReport, ListMasters, LoadBalancerInput, MasterInfo,
    NewProcessInput, NodeGate, ServerBackInput, ServerKind, ServerReadyInput, WaitHealthy,
    WaitLeaderBlacklistDrained, WaitLoadBalancer, WaitNewProcess, WaitNodeGate, WaitServerBack,
    WaitServerReady,
};
use waymark_engine::workflow::{self, Workflow};
use waymark_engine::{Activity, RetryPolicy, WorkflowContext};

use crate::guard::{RestoreTrafficIfSafe, RestoreTrafficInput};
use crate::inventory::{Inventory, Node};

/// What a finished run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Traffic weights before the run (and after it: they are restored), by listener or rule
    /// (`listener ARN`, `rule ARN`).
    pub traffic_before: BTreeMap<String, BTreeMap<String, i32>>,
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
    /// 2: the run checks its input, resolves (journals) the Kubernetes context and the AWS
    /// profile first, and reads the traffic weights and every `MirrorMaker2` replica count
    /// before step 1 (the estate check). Version 1 histories replay differently: a binary with
    /// only this version refuses them (finish them with the binary that started them). The
    /// run re-checks its input with `Inventory::validate`: a stricter rule there is a change of
    /// this workflow too (bump the version).
    ///
    /// 3: the node gates (issue 11): before step 1 the strict node gate (masters, tservers,
    /// replication) and the yb tools check, and both traffic target groups must have a healthy
    /// target; per node a gate, the leader blacklist (tservers), `--no-block` restart, proof of
    /// the new process, `is_server_ready` and follower lag, a settle timer; step 5 several idle
    /// readings; `restart_zones`. Version 2 histories replay differently and are refused.
    ///
    /// 4: step 1's compensation looks first (issue 12): it moves traffic back to zone B only
    /// when the node gate passes, the services are Available, zone B's target group has a
    /// healthy target and the weights are still the ones step 1 set; otherwise it leaves traffic
    /// where it is and the run ends `needs-operator`. Step 2 waits until `MirrorMaker2`'s pods are
    /// gone; step 8 and step 2's compensation wait until it is Available again
    /// (`k8s.scale_and_wait`). Version 3 histories are refused.
    ///
    /// 5: run-level safety (issue 12): every listener and rule of `[traffic]` is switched (one
    /// step each, each with its own compensation); the read-only pre-flight before step 1 (a
    /// failure ends the run `refused`); the run's overall deadline (`[run]`); the approval's
    /// timeout and approver check. Version 4 histories are refused.
    ///
    /// 6: the pre-flight runs `yb-ts-cli is_server_ready` on every node whose tserver the run
    /// restarts, with the inventory's flags (the pre-flight's input changed). Version 5
    /// histories are refused.
    ///
    /// 7: the approval is one engine wait for a signal with a deadline (`SignalWaitStarted`),
    /// and `run.approver_must_differ` is enforced: the starter's own `approve` is ignored
    /// (journaled as a note). Every wait's input names its limits `timeout_secs` and `poll_ms`
    /// (`ssh.systemd_restart` had `active_timeout_ms`/`poll_interval_ms`, `elb.register_target`
    /// `healthy_timeout_secs`/`poll_interval_ms`). Version 6 histories are refused.
    const VERSION: u32 = 7;
    type Input = Inventory;
    type Output = Summary;

    async fn run(
        &self,
        ctx: WorkflowContext,
        inventory: Inventory,
    ) -> Result<Summary, workflow::Error> {
        // Whoever started the run (CLI, daemon, schedule, a test), the input obeys the same
        // rules as a loaded file: no number that overflows a deadline, nothing unquotable.
        // Pure and deterministic: no command is issued, nothing was changed.
        let invalid = |e: crate::inventory::Error| {
            workflow::Error::failed(format!(
                "invalid inventory, nothing was changed: {e}; fix the inventory and start a new run"
            ))
        };
        inventory
            .validate(std::path::Path::new("(the run's inventory)"))
            .map_err(invalid)?;
        let sources = inventory.traffic_sources().map_err(invalid)?;
        // The run's overall deadline, from its recorded start (section "Run-level safety").
        let started = ctx.now().await?;
        let deadline = RunDeadline::new(&inventory, started);
        let m = Maintenance::resolve_connections(ctx, inventory, sources, deadline).await?;
        // Nothing below changes anything until step 1: every check that fails refuses the run.
        m.within_deadline_before_any_change().await?;
        m.preflight_before_any_change().await?;
        if m.legacy() {
            m.health_gate_before_any_change().await?;
        } else {
            m.node_gate_before_any_change().await?;
        }
        if m.approval_if_required().await? {
            // Approval may have taken hours: the cluster is looked at again.
            if m.legacy() {
                m.health_gate_before_any_change().await?;
            } else {
                m.node_gate_before_any_change().await?;
            }
        }
        let normal = m.estate_looks_normal_before_any_change().await?;
        m.within_deadline_before_any_change().await?;
        let traffic_before = m.step1_switch_traffic_to_zone_a(normal.traffic).await?;
        m.within_deadline(STOP_MIRRORMAKER).await?;
        let r = m.step2_stop_mirrormaker(&normal.mirrormaker).await;
        let mirrormaker_replicas = m.deadline_as_cause(r).await?;
        let r = m.step3_restart_masters_one_at_a_time_leader_last().await;
        let masters_restarted = m.deadline_as_cause(r).await?;
        let r = m.step4_restart_tservers_one_at_a_time().await;
        let tservers_restarted = m.deadline_as_cause(r).await?;
        m.within_deadline(WAIT_FOR_LOAD_BALANCING).await?;
        let r = m.step5_wait_for_load_balancing().await;
        m.deadline_as_cause(r).await?;
        m.within_deadline(REGISTER_NEW_NODE).await?;
        let r = m.step6_register_new_node_in_target_group().await;
        let registered = m.deadline_as_cause(r).await?;
        m.within_deadline(RESTART_SERVICES).await?;
        let r = m.step7_restart_fp_and_fp_async().await;
        m.deadline_as_cause(r).await?;
        m.within_deadline(START_MIRRORMAKER).await?;
        let r = m
            .step8_start_mirrormaker_at_recorded_replicas(&mirrormaker_replicas)
            .await;
        m.deadline_as_cause(r).await?;
        // Step 9 runs whatever the clock says: it is what the compensation would do anyway.
        m.step9_switch_traffic_back_to_zone_b(&traffic_before)
            .await?;
        Ok(Summary {
            traffic_before: traffic_before
                .iter()
                .map(|(source, w)| (source.label(), w.by_target_group.clone()))
                .collect(),
            mirrormaker_replicas,
            masters_restarted,
            tservers_restarted,
            registered,
        })
    }
}

/// The runbook's steps, numbered as in the runbook: the one table the step labels, `waymark
/// plan` and the demo's `--fail-at` use.
pub mod steps {
    use std::fmt;

    /// One runbook step. Displays as its number (labels read `"{STEP}. what"`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Step {
        /// Its number in the runbook (1 to 9).
        pub number: u8,
        /// What it does.
        pub title: &'static str,
    }

    impl fmt::Display for Step {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.number)
        }
    }

    /// 1.
    pub const SWITCH_TO_ZONE_A: Step = Step {
        number: 1,
        title: "switch traffic to zone A",
    };
    /// 2.
    pub const STOP_MIRRORMAKER: Step = Step {
        number: 2,
        title: "stop MirrorMaker2",
    };
    /// 3.
    pub const RESTART_MASTERS: Step = Step {
        number: 3,
        title: "restart yb-master on every node",
    };
    /// 4.
    pub const RESTART_TSERVERS: Step = Step {
        number: 4,
        title: "restart yb-tserver on every node",
    };
    /// 5.
    pub const WAIT_FOR_LOAD_BALANCING: Step = Step {
        number: 5,
        title: "wait for load balancing",
    };
    /// 6.
    pub const REGISTER_NEW_NODE: Step = Step {
        number: 6,
        title: "register the new node in the target group",
    };
    /// 7.
    pub const RESTART_SERVICES: Step = Step {
        number: 7,
        title: "restart fp and fp-async",
    };
    /// 8.
    pub const START_MIRRORMAKER: Step = Step {
        number: 8,
        title: "start MirrorMaker2 at the recorded replicas",
    };
    /// 9.
    pub const SWITCH_BACK_TO_ZONE_B: Step = Step {
        number: 9,
        title: "switch traffic back to zone B",
    };

    /// Every runbook step, in order.
    pub const ALL: [Step; 9] = [
        SWITCH_TO_ZONE_A,
        STOP_MIRRORMAKER,
        RESTART_MASTERS,
        RESTART_TSERVERS,
        WAIT_FOR_LOAD_BALANCING,
        REGISTER_NEW_NODE,
        RESTART_SERVICES,
        START_MIRRORMAKER,
        SWITCH_BACK_TO_ZONE_B,
    ];

    /// The step numbered `number`.
    pub fn by_number(number: u8) -> Option<Step> {
        ALL.into_iter().find(|s| s.number == number)
    }
}

use steps::{
    Step, REGISTER_NEW_NODE, RESTART_MASTERS, RESTART_SERVICES, RESTART_TSERVERS,
    START_MIRRORMAKER, STOP_MIRRORMAKER, SWITCH_BACK_TO_ZONE_B, SWITCH_TO_ZONE_A,
    WAIT_FOR_LOAD_BALANCING,
};

struct Maintenance {
    ctx: WorkflowContext,
    /// The inventory, its Kubernetes connection resolved (context named) at the start.
    inv: Inventory,
    /// The AWS connection, its profile resolved at the start.
    elb: ElbConnection,
    /// Every listener and rule carrying the zone weights.
    sources: Vec<TrafficSource>,
    /// The run's overall deadline.
    deadline: RunDeadline,
    /// Seconds left before the deadline at the last look on the recorded clock
    /// ([`Maintenance::within_deadline`]); every forward wait's timeout is cut to it.
    left_secs: AtomicU64,
}

/// The run's overall deadline: its recorded start plus `run.max_duration_secs` (default: a
/// multiple of the plan's estimate), or `run.finish_by` when that is earlier.
#[derive(Clone, Debug)]
struct RunDeadline {
    at: DateTime<Utc>,
    why: String,
}

impl RunDeadline {
    fn new(inv: &Inventory, started: DateTime<Utc>) -> Self {
        let max = inv.max_duration_secs();
        let by_duration = waymark_engine::core::saturating_add(started, Duration::from_secs(max));
        let source = if inv.run.max_duration_secs.is_some() {
            format!("run.max_duration_secs = {max} from the start at {started}")
        } else {
            format!(
                "the default run.max_duration_secs ({max} s: {} x the plan's estimate, at least {} s) from the start at {started}",
                crate::inventory::RunLimits::DEFAULT_FACTOR,
                crate::inventory::RunLimits::DEFAULT_FLOOR_SECS
            )
        };
        match inv.run.finish_by {
            Some(f) if f < by_duration => RunDeadline {
                at: f,
                why: "run.finish_by (a schedule's window sets it)".to_owned(),
            },
            _ => RunDeadline {
                at: by_duration,
                why: source,
            },
        }
    }
}

/// What the estate check read before any change.
struct NormalEstate {
    /// The traffic weights of each listener and rule (restored by the compensations of step 1
    /// and by step 9).
    traffic: Vec<(TrafficSource, Weights)>,
    /// `MirrorMaker2` replicas by Deployment (restored by the compensations of step 2 and by step 8).
    mirrormaker: BTreeMap<String, i32>,
}

/// Margin added to a wait's own timeout for its attempt limit.
const MARGIN: Duration = Duration::from_secs(60);

/// What an operator should look at when the estate is not in its normal state.
const HALF_SWITCHED_HINT: &str = "an earlier run may have left the estate half-switched: see `waymark ls --state needs-operator`, finish or compensate that run, or restore the estate by hand, then start again";

impl Maintenance {
    /// Resolves the connections once, as the run's first steps (journaled: every later step,
    /// retry, resume and compensation uses the same Kubernetes context and AWS profile, whatever
    /// the kubeconfig's current context or the environment say by then).
    async fn resolve_connections(
        ctx: WorkflowContext,
        mut inv: Inventory,
        sources: Vec<TrafficSource>,
        deadline: RunDeadline,
    ) -> Result<Self, workflow::Error> {
        let policy = inv.retry_policy();
        let kube: KubeConnection = ctx
            .activity::<ResolveKubeConnection>(&inv.kube())
            .retry(policy.clone())
            .label("resolve the Kubernetes context for this run")
            .await?;
        inv.kubernetes.kubeconfig = kube.kubeconfig;
        inv.kubernetes.context = kube.context;
        let elb: ElbConnection = ctx
            .activity::<ResolveAwsConnection>(&inv.elb())
            .retry(policy)
            .label("resolve the AWS region and profile for this run")
            .await?;
        Ok(Maintenance {
            ctx,
            inv,
            elb,
            sources,
            deadline,
            left_secs: AtomicU64::new(u64::MAX),
        })
    }

    /// A step calling activity `A`, with the inventory's retry policy.
    fn step<A: Activity>(&self, input: &A::Input) -> waymark_engine::runtime::StepCall<A::Output> {
        self.ctx.activity::<A>(input).retry(self.inv.retry_policy())
    }

    /// The gates, every wait's timeout cut to what is left of the run's deadline (at the last
    /// look, [`Maintenance::within_deadline`]): a forward wait never outlives the run. The
    /// compensations' inputs use the inventory's own timeouts (`self.inv.gates`).
    fn gates(&self) -> crate::inventory::Gates {
        let left = self.left_secs.load(Ordering::Relaxed).max(1);
        let mut g = self.inv.gates.clone();
        for t in [
            &mut g.node_timeout_secs,
            &mut g.health_timeout_secs,
            &mut g.load_balancer_timeout_secs,
            &mut g.rollout_timeout_secs,
            &mut g.target_healthy_timeout_secs,
        ] {
            *t = (*t).min(left);
        }
        g
    }

    /// Looks at the recorded clock: the seconds left before the run's deadline, or an error
    /// naming it when it passed.
    async fn left_before_deadline(&self, before: &str) -> Result<u64, String> {
        let now = self.ctx.now().await.map_err(|e| e.to_string())?;
        let left = (self.deadline.at - now).num_seconds();
        if left <= 0 {
            return Err(format!(
                "the run's deadline {} ({}) passed before {before}",
                self.deadline.at.to_rfc3339(),
                self.deadline.why
            ));
        }
        let left = u64::try_from(left).unwrap_or(0);
        self.left_secs.store(left, Ordering::Relaxed);
        Ok(left)
    }

    /// Before any change: a run whose deadline already passed (a schedule's window closed while
    /// it waited for approval, say) is refused.
    async fn within_deadline_before_any_change(&self) -> Result<(), workflow::Error> {
        match self.left_before_deadline("step 1").await {
            Ok(_) => Ok(()),
            Err(e) => Err(refuse(vec![format!(
                "{e}; nothing was changed: start a new run (a scheduled run: in its next window)"
            )])),
        }
    }

    /// Before runbook step `n` (and before each node of steps 3 and 4): once the run's deadline
    /// passed, the run fails here and compensates (durable: the deadline comes from the recorded
    /// start, each look from the recorded clock).
    async fn within_deadline(&self, n: impl std::fmt::Display) -> Result<(), workflow::Error> {
        self.left_before_deadline(&format!("step {n}"))
            .await
            .map(|_| ())
            .map_err(|e| {
                workflow::Error::failed(format!(
                    "{e}: the run stops and compensates; raise run.max_duration_secs (or the schedule's window) if the estate needs longer"
                ))
            })
    }

    /// A step that failed while the run's deadline cut its waits: when the deadline has passed
    /// by now (recorded clock), the run's deadline is named as the cause, with the step's error.
    async fn deadline_as_cause<T>(
        &self,
        result: Result<T, workflow::Error>,
    ) -> Result<T, workflow::Error> {
        match result {
            Err(e @ workflow::Error::StepFailed { .. })
                if self.left_secs.load(Ordering::Relaxed) != u64::MAX =>
            {
                match self.left_before_deadline("the step ended").await {
                    Ok(_) => Err(e),
                    Err(passed) => Err(workflow::Error::failed(format!(
                        "{passed}: {e}; the run stops and compensates; raise run.max_duration_secs (or the schedule's window) if the estate needs longer"
                    ))),
                }
            }
            other => other,
        }
    }

    /// The read-only pre-flight (`preflight.check`): every prerequisite of the run, each pass or
    /// fail; any failure refuses the run with the list.
    async fn preflight_before_any_change(&self) -> Result<(), workflow::Error> {
        let input = crate::preflight::input(&self.inv).map_err(|e| {
            workflow::Error::failed(format!(
                "invalid inventory, nothing was changed: {e}; fix the inventory and start a new run"
            ))
        })?;
        let report: Report = self
            .step::<Preflight>(&input)
            .label("0. pre-flight (read-only): SSH, sudo, units, yb tools, yb-master API, Kubernetes RBAC, traffic forwards, zone A health, register target, MirrorMaker2")
            .await?;
        if report.passed() {
            Ok(())
        } else {
            Err(refuse(report.failures()))
        }
    }

    /// TEST ONLY: the version-2 gates (see `Gates::legacy_unsafe_gates_for_tests`).
    fn legacy(&self) -> bool {
        self.inv.gates.legacy_unsafe_gates_for_tests
    }

    fn gate_input(&self, timeout_secs: u64) -> GateInput {
        GateInput {
            masters: self.inv.masters(),
            expected_masters: self.inv.master_hosts(),
            expected_tservers: self.inv.tserver_hosts(),
            ignored_tservers: self.inv.yugabyte.ignore_tservers.clone(),
            timeout_secs,
            poll_ms: self.gates().poll_ms,
        }
    }

    fn admin(&self) -> Result<(&Node, waymark_activities::yb::YbAdmin), workflow::Error> {
        self.inv.yb_admin().ok_or_else(|| {
            workflow::Error::failed(
                "no node of the inventory runs a yb-master: give master_http and master_rpc on the master nodes",
            )
        })
    }

    /// Before any change: the strict node gate (one look: every master LEADER or FOLLOWER with no
    /// error, the master and tserver sets equal to the inventory's, no DEAD tserver, nothing
    /// under-replicated or leaderless), then `yb-admin` and `yb-ts-cli` answer with the
    /// inventory's settings (a TLS cluster refuses them without `certs_dir`).
    async fn node_gate_before_any_change(&self) -> Result<(), workflow::Error> {
        let report: GateReport = self
            .step::<NodeGate>(&self.gate_input(0))
            .label("node gate before any change (masters, tservers, replication)")
            .await?;
        if !report.passed {
            return Err(refuse(vec![format!(
                "the cluster fails the node gate, nothing was changed: {}",
                report.all().join("; ")
            )]));
        }
        Ok(())
    }

    /// Both traffic target groups have a healthy target (a run forwards traffic to each in turn).
    async fn traffic_groups_healthy(&self) -> Result<Vec<String>, workflow::Error> {
        let mut problems = Vec::new();
        for (zone, arn) in [
            ("A", &self.inv.traffic.zone_a_target_group_arn),
            ("B", &self.inv.traffic.zone_b_target_group_arn),
        ] {
            let states: Vec<TargetState> = self
                .step::<ReadTargetGroupHealth>(&ReadTargetGroupHealthInput {
                    conn: self.elb.clone(),
                    target_group_arn: arn.clone(),
                })
                .label(format!(
                    "{SWITCH_TO_ZONE_A}. read zone {zone}'s target health"
                ))
                .await?;
            if !states.iter().any(|t| t.state == "healthy") {
                problems.push(format!(
                    "zone {zone}'s target group {arn} has no healthy target ({}): the run would forward traffic to it",
                    if states.is_empty() {
                        "no target".to_owned()
                    } else {
                        states
                            .iter()
                            .map(|t| format!("{} {}", t.id, t.state))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
        }
        Ok(problems)
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
        wait_limits(timeout_secs, self.gates().poll_ms)
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
            return Err(refuse(vec![format!(
                "cluster unhealthy, nothing was changed: {}",
                report.problems.join("; ")
            )]));
        }
        Ok(())
    }

    /// With `gates.require_approval`: waits for an operator's `approve`, at most
    /// `run.approval_timeout_secs`; then the run is refused (nothing was changed). Returns
    /// whether it waited (the caller then looks at the cluster again).
    ///
    /// The wait is one engine command (`wait_for_signal_by`): the core decides signal or
    /// deadline from the history, so replay takes the same path. With
    /// `run.approver_must_differ`, an `approve` sent by the operator who started the run
    /// (`started_by()`) is journaled as ignored (a recorded note naming who and why) and the run
    /// waits on, until the same deadline.
    async fn approval_if_required(&self) -> Result<bool, workflow::Error> {
        if !self.inv.gates.require_approval {
            return Ok(false);
        }
        let secs = self.inv.run.approval_timeout_secs;
        let must_differ = self.inv.run.approver_must_differ;
        let starter = self.ctx.started_by();
        let deadline =
            waymark_engine::core::saturating_add(self.ctx.now().await?, Duration::from_secs(secs));
        loop {
            match self
                .ctx
                .wait_for_signal_by::<serde_json::Value>("approve", deadline)
                .await?
            {
                Some((_, by)) if must_differ && same_operator(&by, &starter) => {
                    self.ctx
                        .note(format!(
                            "approve from {by} ignored: run.approver_must_differ is set and the same operator ({starter}) started the run; waiting for another operator's approve until {}",
                            deadline.to_rfc3339()
                        ))
                        .await?;
                }
                Some(_) => return Ok(true),
                None => {
                    let who = if must_differ {
                        format!(" other than {starter} (run.approver_must_differ)")
                    } else {
                        String::new()
                    };
                    return Err(refuse(vec![format!(
                        "no operator{who} approved the run within run.approval_timeout_secs ({secs} s); nothing was changed: start a new run and approve it (`waymark signal RUN approve`) in time"
                    )]));
                }
            }
        }
    }

    fn weights(&self, a: i32, b: i32) -> BTreeMap<String, i32> {
        BTreeMap::from([
            (self.inv.traffic.zone_a_target_group_arn.clone(), a),
            (self.inv.traffic.zone_b_target_group_arn.clone(), b),
        ])
    }

    /// Before any change, the estate must look normal: zone B carries traffic (its target
    /// group is in the forward action with a weight above 0, so not 100/0 toward zone A) and
    /// every `MirrorMaker2` Deployment has replicas. Otherwise an earlier run may have stopped
    /// half-way, and taking that state as "before" would make this run "restore" it at the end:
    /// refuse, with what was seen. Only reads; the values read are the ones the run restores.
    async fn estate_looks_normal_before_any_change(&self) -> Result<NormalEstate, workflow::Error> {
        let mut traffic = Vec::new();
        for source in &self.sources {
            let weights: Weights = self
                .step::<ReadTrafficWeights>(&ReadTrafficWeightsInput {
                    conn: self.elb.clone(),
                    source: source.clone(),
                })
                .label(format!(
                    "{SWITCH_TO_ZONE_A}. read traffic weights of {}",
                    source.label()
                ))
                .await?;
            traffic.push((source.clone(), weights));
        }
        let mut mirrormaker = BTreeMap::new();
        for name in &self.inv.mirrormaker.deployments {
            let replicas: i32 = self
                .step::<ReadReplicas>(&self.inv.deployment(name))
                .label(format!("{STOP_MIRRORMAKER}. record {name} replicas"))
                .await?;
            mirrormaker.insert(name.clone(), replicas);
        }
        let mut problems = Vec::new();
        for (source, weights) in &traffic {
            problems.extend(
                abnormal_traffic(
                    &weights.by_target_group,
                    &self.inv.traffic.zone_a_target_group_arn,
                    &self.inv.traffic.zone_b_target_group_arn,
                )
                .into_iter()
                .map(|p| format!("{}: {p}", source.label())),
            );
        }
        problems.extend(abnormal_mirrormaker(&mirrormaker));
        if !problems.is_empty() {
            return Err(refuse(vec![format!(
                "the estate does not look normal, nothing was changed: {}; {HALF_SWITCHED_HINT}",
                problems.join("; ")
            )]));
        }
        if !self.legacy() {
            let unhealthy = self.traffic_groups_healthy().await?;
            if !unhealthy.is_empty() {
                return Err(refuse(vec![format!(
                    "traffic target group health check failed, nothing was changed: {}; restore the targets' health first",
                    unhealthy.join("; ")
                )]));
            }
        }
        Ok(NormalEstate {
            traffic,
            mirrormaker,
        })
    }

    /// Every listener and rule to zone A, one step each; each registers its own compensation,
    /// which looks first (v4): back to zone B only when zone B can take it and nobody changed
    /// that source's weights; otherwise traffic stays and the run needs an operator.
    async fn step1_switch_traffic_to_zone_a(
        &self,
        before: Vec<(TrafficSource, Weights)>,
    ) -> Result<Vec<(TrafficSource, Weights)>, workflow::Error> {
        let zone_a = self.weights(100, 0);
        for (source, weights) in &before {
            let restore = RestoreTrafficInput {
                conn: self.elb.clone(),
                source: source.clone(),
                restore: weights.by_target_group.clone(),
                set_by_step_1: zone_a.clone(),
                zone_a_target_group_arn: self.inv.traffic.zone_a_target_group_arn.clone(),
                zone_b_target_group_arn: self.inv.traffic.zone_b_target_group_arn.clone(),
                gate: self.gate_input(self.inv.gates.health_timeout_secs),
                services: self
                    .inv
                    .services
                    .deployments
                    .iter()
                    .map(|name| self.inv.deployment(name))
                    .collect(),
            };
            let _: SetTrafficWeightsOutput = self
                .step::<SetTrafficWeights>(&SetTrafficWeightsInput {
                    conn: self.elb.clone(),
                    source: source.clone(),
                    weights: zone_a.clone(),
                })
                .label(format!("{SWITCH_TO_ZONE_A}. switch traffic to zone A on {}", source.label()))
                .compensate_with(
                    RestoreTrafficIfSafe::NAME,
                    &restore,
                    format!(
                        "traffic back to zone B on {} (the weights before the run) if zone B can take it",
                        source.label()
                    ),
                )
                .await?;
        }
        Ok(before)
    }

    /// `MirrorMaker2` to 0, waiting until its pods are gone (its compensation scales it back and
    /// waits until every replica is Available).
    async fn step2_stop_mirrormaker(
        &self,
        recorded: &BTreeMap<String, i32>,
    ) -> Result<BTreeMap<String, i32>, workflow::Error> {
        let g = self.gates();
        let (limit, beat) = self.wait_limits(g.rollout_timeout_secs);
        for (name, &replicas) in recorded {
            let d = self.inv.deployment(name);
            let _: waymark_activities::k8s::ScaleOutput = self
                .step::<ScaleAndWait>(&self.scale_and_wait(d.clone(), 0))
                .label(format!(
                    "{STOP_MIRRORMAKER}. scale {name} to 0 and wait until its pods are gone"
                ))
                .start_to_close(limit)
                .heartbeat_timeout(beat)
                .compensate_with(
                    ScaleAndWait::NAME,
                    &ScaleAndWaitInput {
                        // A compensation waits the inventory's own time, deadline or not.
                        timeout_secs: self.inv.gates.rollout_timeout_secs,
                        ..self.scale_and_wait(d, replicas)
                    },
                    format!("{name} back to {replicas} replicas, Available"),
                )
                .await?;
        }
        Ok(recorded.clone())
    }

    fn scale_and_wait(
        &self,
        deployment: waymark_activities::k8s::DeploymentRef,
        replicas: i32,
    ) -> ScaleAndWaitInput {
        ScaleAndWaitInput {
            scale: ScaleInput {
                deployment,
                replicas,
            },
            timeout_secs: self.gates().rollout_timeout_secs,
            poll_ms: self.gates().poll_ms,
        }
    }

    async fn step3_restart_masters_one_at_a_time_leader_last(
        &self,
    ) -> Result<Vec<String>, workflow::Error> {
        let leader: String = self
            .step::<FindLeader>(&self.inv.masters())
            .label(format!("{RESTART_MASTERS}. find the leader master"))
            .await?;
        let mut order: Vec<&Node> = self
            .inv
            .yugabyte
            .nodes
            .iter()
            .filter(|n| n.master_http.is_some() && self.inv.restarts(n))
            .collect();
        order.sort_by_key(|n| n.master_http.as_deref() == Some(leader.as_str()));
        let mut done = Vec::new();
        for node in order {
            self.restart_node(node, RESTART_MASTERS, "yb-master", ServerKind::Master)
                .await?;
            done.push(node.name.clone());
        }
        Ok(done)
    }

    async fn step4_restart_tservers_one_at_a_time(&self) -> Result<Vec<String>, workflow::Error> {
        let mut done = Vec::new();
        for node in self
            .inv
            .yugabyte
            .nodes
            .iter()
            .filter(|n| n.tserver && self.inv.restarts(n))
        {
            self.restart_node(node, RESTART_TSERVERS, "yb-tserver", ServerKind::TServer)
                .await?;
            done.push(node.name.clone());
        }
        Ok(done)
    }

    async fn restart_node(
        &self,
        node: &Node,
        n: Step,
        unit: &str,
        kind: ServerKind,
    ) -> Result<(), workflow::Error> {
        self.within_deadline(format!("{n} ({unit} on {})", node.name))
            .await?;
        if self.legacy() {
            self.legacy_restart_on_node(node, n, unit, kind).await
        } else {
            self.gated_restart_on_node(node, n, unit, kind).await
        }
    }

    /// One node, one server, as `YugabyteDB` Anywhere's rolling restart and stricter:
    /// 1. the node gate (waits until it passes; a cluster that disagrees with the inventory fails);
    /// 2. tservers: leader blacklist ADD (compensated by REMOVE), wait until its leaders left;
    /// 3. record the unit's `InvocationID` (masters: also their `instance_seqno`) and the time;
    /// 4. `systemctl --no-block restart`, polled until active under a new `InvocationID`;
    /// 5. the cluster shows the *new* process serving (uptime and heartbeat younger than the
    ///    restart; masters a new `instance_seqno`);
    /// 6. tservers: `is_server_ready` 0 tablets not running, follower lag within the bound, then
    ///    leader blacklist REMOVE;
    /// 7. the settle time (a durable timer); only then the next node.
    async fn gated_restart_on_node(
        &self,
        node: &Node,
        n: Step,
        unit: &str,
        kind: ServerKind,
    ) -> Result<(), workflow::Error> {
        let name = &node.name;
        let g = self.gates().clone();
        let (glimit, gbeat) = self.wait_limits(g.health_timeout_secs);
        let _: GateReport = self
            .step::<WaitNodeGate>(&self.gate_input(g.health_timeout_secs))
            .label(format!("{n}. node gate before {unit} on {name}"))
            .start_to_close(glimit)
            .heartbeat_timeout(gbeat)
            .await?;
        let (limit, beat) = self.wait_limits(g.node_timeout_secs);
        let blacklist = if kind == ServerKind::TServer {
            let (_, admin) = self.admin()?;
            Some(BlacklistInput {
                admin,
                op: BlacklistOp::Add,
                server: rpc_address(&node.address, 9100),
                timeout_secs: g.node_timeout_secs,
                poll_ms: g.poll_ms,
            })
        } else {
            None
        };
        if let Some(add) = &blacklist {
            let remove = BlacklistInput {
                op: BlacklistOp::Remove,
                // A compensation waits the inventory's own time, deadline or not.
                timeout_secs: self.inv.gates.node_timeout_secs,
                ..add.clone()
            };
            let _: String = self
                .step::<ChangeLeaderBlacklist>(add)
                .label(format!("{n}. leader blacklist ADD {} ({name})", add.server))
                .compensate_with(
                    ChangeLeaderBlacklist::NAME,
                    &remove,
                    format!("leader blacklist REMOVE {} ({name})", add.server),
                )
                .await?;
            let _: String = self
                .step::<WaitLeaderBlacklistDrained>(add)
                .label(format!("{n}. wait until the leaders left {name}"))
                .start_to_close(limit)
                .heartbeat_timeout(beat)
                .await?;
        }
        let master_host = node
            .master_rpc
            .as_deref()
            .and_then(|r| crate::inventory::parse_host_port(r).ok())
            .map_or_else(|| node.address.clone(), |(h, _)| h);
        let old_instance_seqno = if kind == ServerKind::Master {
            let masters: Vec<MasterInfo> = self
                .step::<ListMasters>(&self.inv.masters())
                .label(format!("{n}. record the yb-master instance on {name}"))
                .await?;
            masters
                .iter()
                .find(|m| m.host == master_host)
                .map(|m| m.instance_seqno)
                .ok_or_else(|| {
                    workflow::Error::failed(format!(
                        "{n}. master {master_host} ({name}) is not in /api/v1/masters; fix the inventory"
                    ))
                })?
        } else {
            0
        };
        let target = self.inv.ssh_target(node);
        let before: UnitState = self
            .step::<SystemdShow>(&ShowInput {
                target: target.clone(),
                unit: unit.to_owned(),
                use_sudo: self.inv.ssh.use_sudo,
            })
            .label(format!("{n}. {unit} on {name}: record its InvocationID"))
            .await?;
        let restarted_at = self.ctx.now().await?;
        let out: waymark_activities::ssh::RestartOutput = self
            .step::<SystemdRestart>(&UnitRestartInput {
                target: target.clone(),
                unit: unit.to_owned(),
                use_sudo: self.inv.ssh.use_sudo,
                expected_invocation_id: before.invocation_id.clone(),
                timeout_secs: g.node_timeout_secs,
                poll_ms: g.poll_ms,
            })
            .label(format!("{n}. restart {unit} on {name}"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        if out.invocation_id_after == before.invocation_id {
            return Err(workflow::Error::failed(format!(
                "{n}. {unit} on {name}: the InvocationID did not change ({}) after the restart; check the unit on the node",
                before.invocation_id
            )));
        }
        let host = if kind == ServerKind::Master {
            master_host
        } else {
            node.address.clone()
        };
        let _: String = self
            .step::<WaitNewProcess>(&NewProcessInput {
                masters: self.inv.masters(),
                host: host.clone(),
                kind,
                restarted_at_ms: restarted_at.timestamp_millis(),
                old_instance_seqno,
                timeout_secs: g.node_timeout_secs,
                poll_ms: g.poll_ms,
            })
            .label(format!("{n}. wait until the new {unit} on {name} serves"))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .await?;
        if let Some(add) = &blacklist {
            let _: String = self
                .step::<WaitServerReady>(&ServerReadyInput {
                    ssh: target,
                    yb_ts_cli: self.inv.yb_ts_cli(),
                    certs_dir: self.inv.yugabyte.certs_dir.clone(),
                    host,
                    max_follower_lag_ms: g.max_follower_lag_ms,
                    timeout_secs: g.node_timeout_secs,
                    poll_ms: g.poll_ms,
                })
                .label(format!(
                    "{n}. wait until {unit} on {name} is ready (is_server_ready, follower lag)"
                ))
                .start_to_close(limit)
                .heartbeat_timeout(beat)
                .await?;
            let _: String = self
                .step::<ChangeLeaderBlacklist>(&BlacklistInput {
                    op: BlacklistOp::Remove,
                    ..add.clone()
                })
                .label(format!(
                    "{n}. leader blacklist REMOVE {} ({name})",
                    add.server
                ))
                .await?;
        }
        if g.settle_ms > 0 {
            self.ctx.sleep(Duration::from_millis(g.settle_ms)).await?;
        }
        Ok(())
    }

    /// TEST ONLY (version-2 gates): record the unit's `InvocationID`, restart it, wait until the
    /// master says the server is back, then the one-look health gate.
    async fn legacy_restart_on_node(
        &self,
        node: &Node,
        n: Step,
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
                timeout_secs: self.gates().node_timeout_secs,
                poll_ms: self.gates().poll_ms,
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
            .ok_or_else(|| {
                workflow::Error::failed(format!(
                    "{WAIT_FOR_LOAD_BALANCING}. no node of the inventory runs a yb-master: give master_http and master_rpc on the master nodes",
                ))
            })?;
        let (limit, beat) = self.wait_limits(self.gates().load_balancer_timeout_secs);
        let legacy = self.legacy();
        let _: String = self
            .step::<WaitLoadBalancer>(&LoadBalancerInput {
                ssh: self.inv.ssh_target(node),
                yb_admin: self.inv.yugabyte.yb_admin.clone(),
                master_rpc: self.inv.master_rpc(),
                timeout_secs: self.gates().load_balancer_timeout_secs,
                poll_ms: self.gates().poll_ms,
                certs_dir: self.inv.yugabyte.certs_dir.clone(),
                idle_readings: if legacy {
                    1
                } else {
                    self.gates().idle_readings
                },
                masters: (!legacy).then(|| self.inv.masters()),
            })
            .label(format!(
                "{WAIT_FOR_LOAD_BALANCING}. wait for load balancing to finish"
            ))
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
                conn: self.elb.clone(),
                target_group_arn: r.target_group_arn.clone(),
                target_id: r.target_id.clone(),
                port: r.port,
                availability_zone: r.availability_zone.clone(),
                timeout_secs: self.gates().target_healthy_timeout_secs,
                poll_ms: self.gates().poll_ms,
            })
            .label(format!(
                "{REGISTER_NEW_NODE}. register {} in the target group",
                r.target_id
            ))
            .start_to_close(limit)
            .heartbeat_timeout(beat)
            .compensate_with(
                DeregisterTarget::NAME,
                &DeregisterTargetInput {
                    conn: self.elb.clone(),
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
                .label(format!("{RESTART_SERVICES}. rollout restart {name}"))
                .await?;
        }
        let (limit, beat) = self.wait_limits(self.gates().rollout_timeout_secs);
        let waits = self.inv.services.deployments.iter().map(|name| {
            self.step::<WaitRollout>(&WaitRolloutInput {
                deployment: self.inv.deployment(name),
                timeout_secs: self.gates().rollout_timeout_secs,
                poll_ms: self.gates().poll_ms,
            })
            .label(format!("{RESTART_SERVICES}. wait for the {name} rollout"))
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
        let (limit, beat) = self.wait_limits(self.gates().rollout_timeout_secs);
        for (name, replicas) in recorded {
            let _: waymark_activities::k8s::ScaleOutput = self
                .step::<ScaleAndWait>(&self.scale_and_wait(self.inv.deployment(name), *replicas))
                .label(format!(
                    "{START_MIRRORMAKER}. scale {name} back to {replicas} and wait until Available"
                ))
                .start_to_close(limit)
                .heartbeat_timeout(beat)
                .await?;
        }
        Ok(())
    }

    async fn step9_switch_traffic_back_to_zone_b(
        &self,
        before: &[(TrafficSource, Weights)],
    ) -> Result<(), workflow::Error> {
        for (source, weights) in before {
            let _: SetTrafficWeightsOutput = self
                .step::<SetTrafficWeights>(&SetTrafficWeightsInput {
                    conn: self.elb.clone(),
                    source: source.clone(),
                    weights: weights.by_target_group.clone(),
                })
                .label(format!(
                    "{SWITCH_BACK_TO_ZONE_B}. switch traffic back to zone B on {}",
                    source.label()
                ))
                .retry(RetryPolicy {
                    max_attempts: Some(self.inv.gates.retry_attempts.saturating_add(1)),
                    ..self.inv.retry_policy()
                })
                .await?;
        }
        Ok(())
    }
}

/// The run refuses to go on before it changed anything: it ends `refused` with `reasons`.
fn refuse(reasons: Vec<String>) -> workflow::Error {
    workflow::Error::refused(reasons)
}

/// A long wait's attempt limit (its own timeout plus a margin) and heartbeat limit (ten polls
/// plus 30 s), saturating: no inventory value can make them overflow.
pub fn wait_limits(timeout_secs: u64, poll_ms: u64) -> (Duration, Duration) {
    let poll = Duration::from_millis(poll_ms);
    (
        Duration::from_secs(timeout_secs).saturating_add(MARGIN),
        poll.saturating_mul(10)
            .saturating_add(Duration::from_secs(30)),
    )
}

/// What is not normal about the estate before a run changes anything (empty: normal): zone B's
/// target group must carry traffic (be in the forward action with a weight above 0) and zone A's
/// must be in it too; every `MirrorMaker2` Deployment must have replicas.
pub fn abnormal_estate(
    weights: &BTreeMap<String, i32>,
    arn_of_zone_a: &str,
    arn_of_zone_b: &str,
    mirrormaker: &BTreeMap<String, i32>,
) -> Vec<String> {
    let mut problems = abnormal_traffic(weights, arn_of_zone_a, arn_of_zone_b);
    problems.extend(abnormal_mirrormaker(mirrormaker));
    problems
}

/// What is not normal about one listener's or rule's weights (see [`abnormal_estate`]).
pub fn abnormal_traffic(
    weights: &BTreeMap<String, i32>,
    arn_of_zone_a: &str,
    arn_of_zone_b: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let seen = || {
        let a = weights
            .get(arn_of_zone_a)
            .map_or_else(|| "absent".to_owned(), ToString::to_string);
        let b = weights
            .get(arn_of_zone_b)
            .map_or_else(|| "absent".to_owned(), ToString::to_string);
        format!("traffic weights are zone A={a} zone B={b}")
    };
    match weights.get(arn_of_zone_b) {
        Some(b) if *b > 0 => {
            if !weights.contains_key(arn_of_zone_a) {
                problems.push(format!(
                    "{}: zone A's target group {arn_of_zone_a} is not in the forward action",
                    seen()
                ));
            }
        }
        _ => problems.push(format!(
            "{}: zone B carries no traffic (the run expects zone B's target group {arn_of_zone_b} weighted above 0 before it moves traffic to zone A)",
            seen()
        )),
    }
    problems
}

/// Every `MirrorMaker2` Deployment must have replicas (a run records them as what to restore).
pub fn abnormal_mirrormaker(mirrormaker: &BTreeMap<String, i32>) -> Vec<String> {
    mirrormaker
        .iter()
        .filter(|(_, replicas)| **replicas <= 0)
        .map(|(name, replicas)| {
            format!("MirrorMaker2 Deployment {name} has {replicas} replicas (expected more than 0)")
        })
        .collect()
}

/// Whether two recorded operators are the same person for `run.approver_must_differ`: the same
/// name and uid whether through the CLI or the web page (`alice (uid 1000)` is `alice (uid 1000)
/// via web session 3 from 10.0.0.5`); a bare `uid N` (no user name known) is anyone of that uid;
/// every holder of the daemon's one TCP token is `token holder`, whatever its address.
pub fn same_operator(a: &str, b: &str) -> bool {
    let (a, b) = (operator_identity(a), operator_identity(b));
    if a == b {
        return true;
    }
    if a.starts_with("uid ") || b.starts_with("uid ") {
        return uid_of(a).is_some() && uid_of(a) == uid_of(b);
    }
    false
}

/// The operator without where it came from.
fn operator_identity(operator: &str) -> &str {
    let cut = [" via ", " from ", " at "]
        .iter()
        .filter_map(|sep| operator.find(sep))
        .min()
        .unwrap_or(operator.len());
    operator[..cut].trim()
}

fn uid_of(operator: &str) -> Option<&str> {
    let rest = operator.strip_prefix("uid ").or_else(|| {
        let start = operator.find("(uid ")?;
        operator[start + 5..].strip_suffix(')')
    })?;
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::{same_operator, steps};

    /// One person through the CLI, the web page or another TCP connection is the same approver;
    /// another uid is not.
    #[test]
    fn an_operator_is_the_same_across_cli_web_and_tcp_connections() {
        assert!(same_operator(
            "alice (uid 1000)",
            "alice (uid 1000) via web session 3 from 10.0.0.5"
        ));
        assert!(same_operator("uid 1000", "alice (uid 1000)"));
        assert!(!same_operator("uid 1001", "alice (uid 1000)"));
        assert!(!same_operator("alice (uid 1000)", "bob (uid 1001)"));
        // Two people sharing one account are told apart by their names.
        assert!(!same_operator(
            "alice (uid 0)",
            "bob (uid 0) via web session 1 from ::1"
        ));
        assert!(same_operator(
            "token holder from 10.0.0.5:41234",
            "token holder from 10.0.0.9:50000"
        ));
        assert!(!same_operator(
            "token holder from 10.0.0.5:1",
            "root (uid 0)"
        ));
        assert!(same_operator("scheduler", "scheduler"));
    }

    #[test]
    fn the_step_table_numbers_the_runbook_once_in_order() {
        let numbers: Vec<u8> = steps::ALL.iter().map(|s| s.number).collect();
        assert_eq!(numbers, (1..=9).collect::<Vec<u8>>());
        for s in steps::ALL {
            assert_eq!(steps::by_number(s.number), Some(s));
            assert_eq!(format!("{s}. x"), format!("{}. x", s.number));
        }
        assert_eq!(steps::by_number(0), None);
        assert_eq!(steps::by_number(10), None);
    }

    /// `run.finish_by` (a schedule's window) wins when it is earlier than the start plus
    /// `run.max_duration_secs`, and the deadline names which of the two it is.
    #[test]
    fn the_run_deadline_is_the_earlier_of_finish_by_and_max_duration() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.toml"),
        )
        .unwrap();
        let mut inv =
            crate::inventory::Inventory::parse(std::path::Path::new("inv.toml"), &text).unwrap();
        let start: chrono::DateTime<chrono::Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        inv.run.max_duration_secs = Some(600);
        inv.run.finish_by = Some("2026-12-01T02:05:00Z".parse().unwrap());
        let d = super::RunDeadline::new(&inv, start);
        assert_eq!(d.at.to_rfc3339(), "2026-12-01T02:05:00+00:00");
        assert!(d.why.contains("run.finish_by"), "{}", d.why);
        inv.run.finish_by = Some("2026-12-01T03:00:00Z".parse().unwrap());
        let d = super::RunDeadline::new(&inv, start);
        assert_eq!(d.at.to_rfc3339(), "2026-12-01T02:10:00+00:00");
        assert!(d.why.contains("run.max_duration_secs = 600"), "{}", d.why);
    }
}
