//! The server wiring, above the state and the models: [`Sandbox::start`] binds every simulated
//! system on loopback (the ports of a previous run when it restarts), spawns their servers, the
//! estate's clock tick and the admin API, and writes `kubeconfig`, `known_hosts` and
//! `endpoints.json` into the sandbox folder (`inventory.toml` is the caller's to write from
//! [`Sandbox::description`]: `waymark_workflows::sandbox::write_inventory`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::describe::Description;
use crate::estate::{Endpoints, Faults, Options, Scenario, Shared};
use crate::spec::Spec;
use crate::{elb, k8s, ssh, yb};

/// A running sandbox estate.
pub struct Sandbox {
    shared: Arc<Shared>,
    endpoints: Endpoints,
    description: Box<Description>,
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
    /// simulated system, on the wall clock, persisted ([`Options::default`]).
    pub async fn start(dir: &Path, spec: &Spec) -> std::io::Result<Sandbox> {
        Sandbox::start_with(dir, spec, &Options::default()).await
    }

    /// Starts every simulated system as `options` say, each server a task of the current tokio
    /// runtime (no thread of its own, no blocking wait): on a [`crate::Clock::simulated`] clock
    /// under paused time the whole estate moves only with tokio's time. In memory too, the ports
    /// of a previous `DIR/endpoints.json` are bound again when the folder has one (the simulation
    /// keeps it so that every execution's inventory, hence its history, names the same ports).
    pub async fn start_with(
        dir: &Path,
        spec: &Spec,
        options: &Options,
    ) -> std::io::Result<Sandbox> {
        let shared = Arc::new(Shared::open(dir, spec, options)?);
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
        tasks.push(tokio::spawn(tick(shared.clone(), options.tick_ms)));
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
        let keys = ssh::HostKeys::load_or_create(dir, options.seed)?;
        for n in nodes {
            let l = bind(previous.as_ref().and_then(|p| p.ssh.get(&n).copied())).await?;
            endpoints.ssh.insert(n.clone(), l.local_addr()?);
            tasks.push(tokio::spawn(ssh::serve(l, shared.clone(), n, keys.clone())));
        }
        keys.write_known_hosts(dir, endpoints.ssh.values())?;
        write_kubeconfig(dir, endpoints.k8s)?;
        let description = shared.read(|st| crate::describe::describe(st, &endpoints));
        std::fs::write(
            dir.join("endpoints.json"),
            serde_json::to_vec_pretty(&endpoints).map_err(std::io::Error::other)?,
        )?;
        Ok(Sandbox {
            shared,
            endpoints,
            description: Box::new(description),
            tasks,
        })
    }

    /// Where everything listens.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// What a client needs to reach it, as plain data (what `inventory.toml` is written from, by
    /// `waymark_workflows::sandbox::write_inventory`).
    pub fn description(&self) -> &Description {
        &self.description
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
/// bootstraps, drains, pod terminations) goes unobserved for long. On tokio's time, so paused
/// time moves it too.
async fn tick(shared: Arc<Shared>, every_ms: Option<u64>) {
    let every = every_ms.unwrap_or_else(|| {
        shared
            .read(|st| st.yb.timing.heartbeat_ms)
            .clamp(5, 20)
            .unsigned_abs()
    });
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(every.max(1)));
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
            get(|State(s): State<Arc<Shared>>| async move { Json(s.faults()) }).put(
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
            get(|State(s): State<Arc<Shared>>| async move { Json(s.truth()) }),
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
