//! The estate's shared state, its persistence, the effect log, injected faults, and the
//! [`Sandbox`] that starts every simulated system on loopback.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::monitor::{Invariants, Truth};
use crate::{elb, k8s, ssh, yb};

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

/// Everything the simulated systems hold, persisted as `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Estate {
    /// The spec it was built from.
    pub spec: Spec,
    /// Kubernetes objects.
    pub k8s: k8s::State,
    /// `YugabyteDB` cluster.
    pub yb: yb::State,
    /// `ELBv2` resources.
    pub elb: elb::State,
    /// The invariant monitor's record.
    #[serde(default)]
    pub invariants: Invariants,
}

impl Estate {
    /// Moves every model to `now` (elections, load-balancer moves, drained targets).
    pub fn advance(&mut self, now_ms: i64) {
        self.yb.advance(now_ms);
        self.elb.advance(now_ms);
    }

    /// The ground truth at `now_ms`, from the models' own state (not from what their APIs say).
    pub fn truth(&self, now_ms: i64) -> Truth {
        let zone_b = self
            .elb
            .target_group_arn(&elb::target_group_name("B"))
            .unwrap_or_default()
            .to_owned();
        Truth {
            tservers_down: self.yb.tservers_down(now_ms),
            masters_down: self.yb.masters_down(now_ms),
            unhealthy_forwards: self.elb.unhealthy_forwards(now_ms),
            mirrormaker_off: self.k8s.mirrormaker_off(now_ms),
            traffic_in_b: self.elb.forwards_to(&zone_b),
        }
    }

    /// Applies a scenario knob.
    pub fn apply(&mut self, scenario: &Scenario, now_ms: i64) -> Result<(), String> {
        match scenario {
            Scenario::SlowBootstrap { node, factor } => self.yb.slow_bootstrap(node, *factor),
            Scenario::UnlistedNode { node, zone } => {
                self.yb.add_unlisted_tserver(node, zone, now_ms)
            }
            Scenario::StaleDeadReadReplica { node } => {
                self.yb.add_stale_dead_read_replica(node, now_ms)
            }
            Scenario::MasterDown { node } => self.yb.master_already_down(node, now_ms),
            Scenario::ZoneBUnhealthy => {
                let arn = self
                    .elb
                    .target_group_arn(&elb::target_group_name("B"))
                    .ok_or("no zone B target group")?
                    .to_owned();
                for id in self.elb.registered(&arn) {
                    self.elb.failing_targets.insert(id);
                }
                Ok(())
            }
            Scenario::MirrormakerNotReady => {
                let mut found = false;
                for d in self.k8s.deployments.values_mut() {
                    if d.name.starts_with("mirrormaker") {
                        d.never_ready = true;
                        found = true;
                    }
                }
                if found {
                    Ok(())
                } else {
                    Err("no mirrormaker* Deployment".into())
                }
            }
            Scenario::Tls { certs_dir } => {
                self.yb.tls_certs_dir = Some(certs_dir.clone());
                Ok(())
            }
        }
    }
}

/// Scenario knobs (admin API `POST /scenario`, JSON with a `knob` field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "knob", rename_all = "snake_case")]
pub enum Scenario {
    /// The tserver on `node` bootstraps `factor` times slower.
    SlowBootstrap {
        /// Node name.
        node: String,
        /// Slow-down factor (at least 1).
        factor: f64,
    },
    /// A serving tserver on `node` that the written inventory does not list.
    UnlistedNode {
        /// Node name (not one of the spec's).
        node: String,
        /// Its zone.
        zone: String,
    },
    /// A read-replica tserver on `node`, DEAD for a day.
    StaleDeadReadReplica {
        /// Node name (not one of the spec's).
        node: String,
    },
    /// The yb-master on `node` has been down for an hour.
    MasterDown {
        /// A master node.
        node: String,
    },
    /// Every target of zone B's traffic target group fails its health checks.
    ZoneBUnhealthy,
    /// `MirrorMaker2`'s pods added by a scale-up never become ready.
    MirrormakerNotReady,
    /// The cluster uses TLS: `yb-admin` and `yb-ts-cli` need `-certs_dir_name CERTS_DIR`.
    Tls {
        /// The directory clients must name.
        certs_dir: String,
    },
}

/// One mutating call a simulated system received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// When (sandbox clock).
    pub time: DateTime<Utc>,
    /// `k8s`, `yb`, `ssh`, `elb`.
    pub system: String,
    /// What it acted on (`prod/fp`, `yb-a-1/yb-master`, a target group ARN, ...).
    pub target: String,
    /// What it did (`scale`, `restart`, `register`, ...).
    pub action: String,
    /// The rest, as JSON.
    pub details: serde_json::Value,
}

/// An injected fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `k8s`, `yb`, `ssh`, `elb`.
    pub system: String,
    /// Applies when the request (HTTP method and path, AWS action, SSH command, node name) contains
    /// this text; empty matches everything of the system.
    pub matching: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many more times it fires; `None`: every time (a persistent fault).
    pub remaining: Option<u32>,
}

/// How a fault shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// Answer with this HTTP status (5xx, or 400 `Throttling` for AWS).
    Status(u16),
    /// AWS throttling: 400 with code `Throttling`.
    Throttle,
    /// Answer only after this many ms.
    Delay(u64),
    /// Close the connection without answering.
    Drop,
    /// SSH: the command exits with this status, printing the text on stderr.
    Exit(u32, String),
}

/// The injected faults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Rules, first match wins.
    pub rules: Vec<Fault>,
}

/// What the simulated servers share.
pub struct Shared {
    dir: PathBuf,
    state: Mutex<Estate>,
    effects: Mutex<std::fs::File>,
    faults: Mutex<Faults>,
}

impl Shared {
    fn open(dir: &Path, spec: &Spec) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state_path = dir.join("state.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!(
                    "{} is not a sandbox state: {e}",
                    state_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Estate {
                spec: spec.clone(),
                k8s: k8s::State::from_spec(spec),
                yb: yb::State::from_spec(spec, Utc::now()),
                elb: elb::State::from_spec(spec),
                invariants: Invariants::default(),
            },
            Err(e) => return Err(e),
        };
        let faults = match std::fs::read(dir.join("faults.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Faults::default(),
        };
        let effects = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("effects.jsonl"))?;
        let shared = Shared {
            dir: dir.to_owned(),
            state: Mutex::new(state),
            effects: Mutex::new(effects),
            faults: Mutex::new(faults),
        };
        {
            let mut st = shared.state.lock().expect("sandbox state lock");
            shared.observe(&mut st);
            shared.persist(&st)?;
        }
        Ok(shared)
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the state (moved to the present first).
    pub fn read<R>(&self, f: impl FnOnce(&Estate) -> R) -> R {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(Utc::now().timestamp_millis());
        f(&st)
    }

    /// Changes the state (moved to the present first), updates the invariant monitor and
    /// persists both before returning.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Estate) -> R) -> R {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(Utc::now().timestamp_millis());
        let r = f(&mut st);
        self.observe(&mut st);
        if let Err(e) = self.persist(&st) {
            tracing::error!("sandbox: cannot persist state: {e}");
        }
        r
    }

    /// One tick of the estate's clock: moves the models to the present and updates the monitor
    /// (persisting both when the monitor's record changed).
    pub fn tick(&self) {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(Utc::now().timestamp_millis());
        if self.observe(&mut st) {
            if let Err(e) = self.persist(&st) {
                tracing::error!("sandbox: cannot persist state: {e}");
            }
        }
    }

    /// Applies a scenario knob (and records it as an effect-free change of the estate).
    pub fn apply(&self, scenario: &Scenario) -> Result<(), String> {
        let now = Utc::now().timestamp_millis();
        self.mutate(|st| st.apply(scenario, now))
    }

    /// The invariant monitor's record.
    pub fn invariants(&self) -> Invariants {
        self.read(|st| st.invariants.clone())
    }

    /// Updates the monitor from the ground truth; writes `invariants.json` when it changed.
    fn observe(&self, st: &mut Estate) -> bool {
        let now = Utc::now();
        let truth = st.truth(now.timestamp_millis());
        let changed =
            st.invariants.observe(&truth, now) || !self.dir.join("invariants.json").exists();
        if changed {
            if let Err(e) = write_atomic(
                &self.dir.join("invariants.json"),
                &serde_json::to_vec_pretty(&st.invariants).expect("invariants serialise"),
            ) {
                tracing::error!("sandbox: cannot write invariants.json: {e}");
            }
        }
        changed
    }

    fn persist(&self, st: &Estate) -> std::io::Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec_pretty(st)?,
        )
    }

    /// Appends one line to `effects.jsonl`.
    pub fn record_effect(
        &self,
        system: &str,
        target: &str,
        action: &str,
        details: serde_json::Value,
    ) {
        let effect = Effect {
            time: Utc::now(),
            system: system.into(),
            target: target.into(),
            action: action.into(),
            details,
        };
        let mut line = serde_json::to_string(&effect).expect("effect serialises");
        line.push('\n');
        let mut f = self.effects.lock().expect("effects lock");
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::error!("sandbox: cannot record effect: {e}");
        }
    }

    /// Every effect recorded so far (across restarts of the sandbox).
    pub fn effects(&self) -> Vec<Effect> {
        read_effects(&self.dir)
    }

    /// Replaces the injected faults (persisted as `faults.json`).
    pub fn set_faults(&self, faults: Faults) {
        let _ = std::fs::write(
            self.dir.join("faults.json"),
            serde_json::to_vec_pretty(&faults).expect("faults serialise"),
        );
        *self.faults.lock().expect("faults lock") = faults;
    }

    /// The fault that applies to this request of `system`, if any (counting it down).
    pub fn fault_for(&self, system: &str, request: &str) -> Option<FaultKind> {
        let mut faults = self.faults.lock().expect("faults lock");
        let rule = faults.rules.iter_mut().find(|r| {
            r.system == system && request.contains(&r.matching) && r.remaining != Some(0)
        })?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.kind.clone())
    }
}

/// Writes `path` through a temporary file renamed over it (readers see the old or the new
/// content, never a part).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Reads `DIR/invariants.json` (the invariant monitor's record), if written.
pub fn read_invariants(dir: &Path) -> Option<Invariants> {
    serde_json::from_slice(&std::fs::read(dir.join("invariants.json")).ok()?).ok()
}

/// Reads `DIR/effects.jsonl` (skipping a torn last line).
pub fn read_effects(dir: &Path) -> Vec<Effect> {
    std::fs::read_to_string(dir.join("effects.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Where each simulated system listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Kubernetes API (plain HTTP).
    pub k8s: SocketAddr,
    /// yb-master web UI/API per master node name.
    pub yb_masters: BTreeMap<String, SocketAddr>,
    /// SSH per node name.
    pub ssh: BTreeMap<String, SocketAddr>,
    /// `ELBv2` query API.
    pub elb: SocketAddr,
    /// Sandbox control API (faults).
    pub admin: SocketAddr,
}

/// A running sandbox estate.
pub struct Sandbox {
    shared: Arc<Shared>,
    endpoints: Endpoints,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(previous: Option<SocketAddr>) -> std::io::Result<TcpListener> {
    match previous {
        Some(addr) => TcpListener::bind(addr).await,
        None => TcpListener::bind("127.0.0.1:0").await,
    }
}

impl Sandbox {
    /// Starts (or restarts, from `DIR/state.json` and on the ports in `DIR/endpoints.json`) every
    /// simulated system.
    pub async fn start(dir: &Path, spec: &Spec) -> std::io::Result<Sandbox> {
        let shared = Arc::new(Shared::open(dir, spec)?);
        let previous: Option<Endpoints> = std::fs::read(dir.join("endpoints.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (nodes, masters): (Vec<String>, Vec<String>) = shared.read(|s| {
            (
                s.spec.nodes.iter().map(|n| n.name.clone()).collect(),
                s.spec
                    .nodes
                    .iter()
                    .filter(|n| n.master)
                    .map(|n| n.name.clone())
                    .collect(),
            )
        });
        let mut tasks = Vec::new();
        let k8s_l = bind(previous.as_ref().map(|p| p.k8s)).await?;
        let elb_l = bind(previous.as_ref().map(|p| p.elb)).await?;
        let admin_l = bind(previous.as_ref().map(|p| p.admin)).await?;
        let mut endpoints = Endpoints {
            k8s: k8s_l.local_addr()?,
            yb_masters: BTreeMap::new(),
            ssh: BTreeMap::new(),
            elb: elb_l.local_addr()?,
            admin: admin_l.local_addr()?,
        };
        tasks.push(tokio::spawn(k8s::serve(k8s_l, shared.clone())));
        tasks.push(tokio::spawn(elb::serve(elb_l, shared.clone())));
        tasks.push(tokio::spawn(serve_admin(admin_l, shared.clone())));
        tasks.push(tokio::spawn(tick(shared.clone())));
        for m in masters {
            let l = bind(
                previous
                    .as_ref()
                    .and_then(|p| p.yb_masters.get(&m).copied()),
            )
            .await?;
            endpoints.yb_masters.insert(m.clone(), l.local_addr()?);
            tasks.push(tokio::spawn(yb::serve_master(l, shared.clone(), m)));
        }
        let keys = ssh::HostKeys::load_or_create(dir)?;
        for n in nodes {
            let l = bind(previous.as_ref().and_then(|p| p.ssh.get(&n).copied())).await?;
            endpoints.ssh.insert(n.clone(), l.local_addr()?);
            tasks.push(tokio::spawn(ssh::serve(l, shared.clone(), n, keys.clone())));
        }
        keys.write_known_hosts(dir, endpoints.ssh.values())?;
        write_kubeconfig(dir, endpoints.k8s)?;
        let inv = shared.read(|st| crate::inventory::inventory(st, &endpoints));
        crate::inventory::write(dir, &inv)?;
        std::fs::write(
            dir.join("endpoints.json"),
            serde_json::to_vec_pretty(&endpoints).map_err(std::io::Error::other)?,
        )?;
        Ok(Sandbox {
            shared,
            endpoints,
            tasks,
        })
    }

    /// Where everything listens.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The shared state (for in-process tests and the demo's display).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops every server.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Moves the estate's clock: often enough that no transition of the ground truth (heartbeats,
/// bootstraps, drains, pod terminations) goes unobserved for long.
async fn tick(shared: Arc<Shared>) {
    let every = shared.read(|st| st.yb.timing.heartbeat_ms).clamp(5, 20);
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(every as u64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        shared.tick();
    }
}

/// Writes `DIR/kubeconfig`: context `sandbox` pointing at the simulated API server.
fn write_kubeconfig(dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: sandbox\n  user: {{}}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    \
         user: sandbox\n    namespace: prod\ncurrent-context: sandbox\n"
    );
    std::fs::write(dir.join("kubeconfig"), text)
}

/// `GET /faults`, `PUT /faults` (JSON [`Faults`]), `GET /state`, `GET /invariants` (the
/// monitor's record), `GET /truth` (the ground truth now), `POST /scenario` (JSON [`Scenario`]).
async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    use axum::extract::State;
    use axum::routing::get;
    use axum::Json;
    let app = axum::Router::new()
        .route(
            "/faults",
            get(|State(s): State<Arc<Shared>>| async move {
                Json(s.faults.lock().expect("faults lock").clone())
            })
            .put(
                |State(s): State<Arc<Shared>>, Json(f): Json<Faults>| async move {
                    s.set_faults(f);
                    "ok"
                },
            ),
        )
        .route(
            "/state",
            get(|State(s): State<Arc<Shared>>| async move { Json(s.read(Clone::clone)) }),
        )
        .route(
            "/invariants",
            get(|State(s): State<Arc<Shared>>| async move { Json(s.invariants()) }),
        )
        .route(
            "/truth",
            get(|State(s): State<Arc<Shared>>| async move {
                Json(s.read(|st| st.truth(Utc::now().timestamp_millis())))
            }),
        )
        .route(
            "/scenario",
            axum::routing::post(
                |State(s): State<Arc<Shared>>, Json(knob): Json<Scenario>| async move {
                    match s.apply(&knob) {
                        Ok(()) => (axum::http::StatusCode::OK, format!("applied {knob:?}\n")),
                        Err(e) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            format!("scenario {knob:?} not applied: {e}\n"),
                        ),
                    }
                },
            ),
        )
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("sandbox admin server stopped: {e}");
    }
}
