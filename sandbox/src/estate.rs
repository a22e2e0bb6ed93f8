//! The estate's shared state ([`Estate`]: the models of every simulated system), its
//! persistence, the effect log, injected faults and scenario knobs. Below the servers, which act
//! on it through [`Shared`]; [`crate::server::Sandbox`] starts them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::monitor::{Invariants, Truth};
pub use crate::spec::{NodeSpec, Spec, Timing, DEFAULT_TIME_SCALE};
use crate::{elb, k8s, yb};

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
            Scenario::CertsMissing { node } => {
                if !self.yb.servers.iter().any(|s| &s.node == node) {
                    return Err(format!("no yb server on node {node:?}"));
                }
                self.yb.certs_missing_on.insert(node.clone());
                Ok(())
            }
            Scenario::RbacDenied {
                verb,
                deployment,
                subresource,
            } => {
                if !self.k8s.deployments.values().any(|d| &d.name == deployment) {
                    return Err(format!("no Deployment {deployment:?}"));
                }
                self.k8s.denied.push(k8s::Denial {
                    verb: verb.clone(),
                    deployment: deployment.clone(),
                    subresource: subresource.clone(),
                });
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
    /// The TLS certificates directory is missing on `node`: a yb tool run there with
    /// `-certs_dir_name` fails to load the CA certificate (other nodes are fine).
    CertsMissing {
        /// Node name.
        node: String,
    },
    /// Kubernetes RBAC does not let the run's user `verb` Deployment `deployment` (its
    /// `subresource`, e.g. `scale`): access reviews answer `allowed: false`, calls get 403.
    RbacDenied {
        /// `get`, `patch`, `update`.
        verb: String,
        /// The Deployment's name.
        deployment: String,
        /// `scale`, or none for the Deployment itself.
        #[serde(default)]
        subresource: Option<String>,
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
    pub(crate) fn open(dir: &Path, spec: &Spec) -> std::io::Result<Self> {
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

    /// The injected faults.
    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").clone()
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
