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
    /// How long a restarted yb server stays DEAD, ms.
    pub restart_down_ms: u64,
    /// How long tablets stay under-replicated after a tserver restart, ms.
    pub under_replicated_ms: u64,
    /// How long the load balancer moves tablets after a tserver restart, ms.
    pub load_balance_ms: u64,
    /// How long a Deployment rollout takes per replica, ms.
    pub rollout_ms_per_replica: u64,
    /// The address registered in step 6 (an IP target).
    pub new_target: String,
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
            restart_down_ms: 1200,
            under_replicated_ms: 1500,
            load_balance_ms: 2500,
            rollout_ms_per_replica: 400,
            new_target: "10.20.2.14".into(),
        }
    }
}

impl Spec {
    /// The same estate with every delay divided by `factor` (tests use fast estates).
    pub fn faster(mut self, factor: u64) -> Self {
        let f = factor.max(1);
        self.restart_down_ms /= f;
        self.under_replicated_ms /= f;
        self.load_balance_ms /= f;
        self.rollout_ms_per_replica /= f;
        self
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
        shared.persist(&shared.state.lock().expect("sandbox state lock"))?;
        Ok(shared)
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the state.
    pub fn read<R>(&self, f: impl FnOnce(&Estate) -> R) -> R {
        f(&self.state.lock().expect("sandbox state lock"))
    }

    /// Changes the state and persists it before returning.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Estate) -> R) -> R {
        let mut st = self.state.lock().expect("sandbox state lock");
        let r = f(&mut st);
        if let Err(e) = self.persist(&st) {
            tracing::error!("sandbox: cannot persist state: {e}");
        }
        r
    }

    fn persist(&self, st: &Estate) -> std::io::Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
        std::fs::rename(tmp, self.dir.join("state.json"))
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

/// Writes `DIR/kubeconfig`: context `sandbox` pointing at the simulated API server.
fn write_kubeconfig(dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: sandbox\n  user: {{}}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    \
         user: sandbox\n    namespace: prod\ncurrent-context: sandbox\n"
    );
    std::fs::write(dir.join("kubeconfig"), text)
}

/// `GET /faults`, `PUT /faults` (JSON [`Faults`]), `GET /effects` (JSON lines), `GET /state`.
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
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("sandbox admin server stopped: {e}");
    }
}
