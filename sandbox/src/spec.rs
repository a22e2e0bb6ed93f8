//! What estate to simulate ([`Spec`], its nodes) and the real systems' durations ([`Timing`])
//! scaled by the time scale: plain data, below the models that are built from it.

use serde::{Deserialize, Serialize};

/// What estate to simulate. The default is the seed runbook's: zones A and B with three nodes each,
/// three yb-masters, `MirrorMaker2`, `fp` and `fp-async` in namespace `prod`, and the zone target
/// groups behind one listener with all traffic in zone B.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Nodes: name, zone, whether it runs a yb-master (every node runs a yb-tserver).
    pub nodes: Vec<NodeSpec>,
    /// Kubernetes namespace of every Deployment.
    pub namespace: String,
    /// Deployments and their replica counts.
    pub deployments: Vec<(String, u32)>,
    /// The address registered in step 6 (an IP target).
    pub new_target: String,
    /// Every duration of [`Spec::timing`] is multiplied by this factor (1.0: the real systems'
    /// durations; [`DEFAULT_TIME_SCALE`] by default).
    #[serde(default = "default_time_scale")]
    pub time_scale: f64,
    /// The durations of the real systems, before scaling.
    #[serde(default)]
    pub timing: Timing,
}

/// The default time scale (of the demo and of `waymark sandbox up`): a 60 s timeout lasts 1.2 s.
pub const DEFAULT_TIME_SCALE: f64 = 0.02;

fn default_time_scale() -> f64 {
    DEFAULT_TIME_SCALE
}

/// Durations of the real systems (ms at time scale 1.0). The sandbox multiplies each by the
/// time scale ([`Timing::scaled`]); what it reports (uptimes, heartbeat ages, timestamps) is wall
/// clock, as the real systems report it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    /// A tserver heartbeats to the leader master this often (`heartbeat_interval_ms`).
    pub heartbeat_ms: i64,
    /// The master marks a tserver DEAD after this long without a heartbeat
    /// (`tserver_unresponsive_timeout_ms`).
    pub tserver_unresponsive_ms: i64,
    /// Graceful stop of a yb-tserver (`systemctl stop`/`restart` block for it).
    pub tserver_stop_ms: i64,
    /// Graceful stop of a yb-master.
    pub master_stop_ms: i64,
    /// From process start to its first heartbeat (a master: to joining its Raft group).
    pub startup_ms: i64,
    /// A restarted tserver bootstraps its tablets one after the other, each taking this long.
    pub bootstrap_ms_per_tablet: i64,
    /// After its last tablet runs, a returned tserver's followers lag this long.
    pub follower_lag_ms: i64,
    /// Tablets (and the master group) whose leader stopped elect a new one after this long.
    pub election_ms: i64,
    /// The load balancer moves one leader this often.
    pub load_balancer_move_ms: i64,
    /// A new pod is ready this long after it was created.
    pub pod_ready_ms: i64,
    /// A deleted pod terminates within this grace period.
    pub pod_termination_ms: i64,
    /// Target group health check interval (`HealthCheckIntervalSeconds`), ms.
    pub health_check_interval_ms: i64,
    /// Consecutive passing checks before `healthy` (`HealthyThresholdCount`).
    pub healthy_threshold: i64,
    /// A deregistered target drains this long (`deregistration_delay.timeout_seconds`).
    pub deregistration_delay_ms: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 1000,
            tserver_unresponsive_ms: 60_000,
            tserver_stop_ms: 5000,
            master_stop_ms: 3000,
            startup_ms: 3000,
            bootstrap_ms_per_tablet: 4000,
            follower_lag_ms: 10_000,
            election_ms: 2000,
            load_balancer_move_ms: 2000,
            pod_ready_ms: 20_000,
            pod_termination_ms: 30_000,
            health_check_interval_ms: 10_000,
            healthy_threshold: 3,
            deregistration_delay_ms: 300_000,
        }
    }
}

impl Timing {
    /// Every duration multiplied by `scale` (at least 1 ms; the threshold is a count, kept).
    #[must_use]
    pub fn scaled(&self, scale: f64) -> Timing {
        let f = |ms: i64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let v = (ms as f64 * scale).round() as i64;
            v.max(1)
        };
        Timing {
            heartbeat_ms: f(self.heartbeat_ms),
            tserver_unresponsive_ms: f(self.tserver_unresponsive_ms),
            tserver_stop_ms: f(self.tserver_stop_ms),
            master_stop_ms: f(self.master_stop_ms),
            startup_ms: f(self.startup_ms),
            bootstrap_ms_per_tablet: f(self.bootstrap_ms_per_tablet),
            follower_lag_ms: f(self.follower_lag_ms),
            election_ms: f(self.election_ms),
            load_balancer_move_ms: f(self.load_balancer_move_ms),
            pod_ready_ms: f(self.pod_ready_ms),
            pod_termination_ms: f(self.pod_termination_ms),
            health_check_interval_ms: f(self.health_check_interval_ms),
            healthy_threshold: self.healthy_threshold,
            deregistration_delay_ms: f(self.deregistration_delay_ms),
        }
    }
}

/// One VM of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Host name (also the yb web address host).
    pub name: String,
    /// Zone, `A` or `B`.
    pub zone: String,
    /// Runs a yb-master.
    pub master: bool,
}

impl Default for Spec {
    fn default() -> Self {
        let node = |name: &str, zone: &str, master: bool| NodeSpec {
            name: name.into(),
            zone: zone.into(),
            master,
        };
        Spec {
            nodes: vec![
                node("yb-a-1", "A", true),
                node("yb-a-2", "A", false),
                node("yb-a-3", "A", false),
                node("yb-b-1", "B", true),
                node("yb-b-2", "B", true),
                node("yb-b-3", "B", false),
            ],
            namespace: "prod".into(),
            deployments: vec![
                ("mirrormaker2".into(), 2),
                ("fp".into(), 3),
                ("fp-async".into(), 2),
            ],
            new_target: "10.20.2.14".into(),
            time_scale: DEFAULT_TIME_SCALE,
            timing: Timing::default(),
        }
    }
}

impl Spec {
    /// The same estate at [`DEFAULT_TIME_SCALE`] divided by `factor` (the `--faster` shorthand:
    /// `faster(10)` is time scale 0.002, a 60 s timeout lasting 120 ms).
    #[must_use]
    pub fn faster(self, factor: u64) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let f = factor.max(1) as f64;
        self.with_time_scale(DEFAULT_TIME_SCALE / f)
    }

    /// The same estate with every duration multiplied by `scale` (1.0: real durations).
    #[must_use]
    pub fn with_time_scale(mut self, scale: f64) -> Self {
        self.time_scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            DEFAULT_TIME_SCALE
        };
        self
    }

    /// The durations in effect: [`Spec::timing`] times [`Spec::time_scale`].
    pub fn scaled(&self) -> Timing {
        self.timing.scaled(self.time_scale)
    }
}
